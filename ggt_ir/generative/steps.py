"""Trainer steps for generative restorers (see the step contract in ``ggt_ir/train/steps.py``).

``onestep_sd``: :class:`OneStepSDStep` -- one-step SD restorer with LoRA; losses from the options
(``train.pixel_opt``/``train.losses`` e.g. MSELoss = L2, ``train.lpips_opt``, ``train.vsd_opt``).
With VSD there are two trained modules (generator, fake-score UNet) and two optimizers; both
modules are inside ``accelerator.accumulate(...)`` and both optimizers and schedules are
checkpointed by ``accelerator.save_state``.

``editor_lora``: :class:`EditorLoRAStep` -- flow-matching LoRA finetuning of an instruction editor
(FLUX.1-Kontext, Qwen-Image-Edit; ``editor.py``).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ggt_ir.train.steps import check_finite
from ggt_ir.utils.fs import atomic_dir


def _ema_ctx(step, net):
    """Inside: the network carries its EMA weights (validation and exports use them)."""
    return step.ema.swapped_in(net) if step.ema is not None else contextlib.nullcontext()


@torch.no_grad()
def _restore(step, lq: torch.Tensor, sample: dict | None) -> torch.Tensor:
    """Validation inference shared by the generative steps: EMA weights, the sample's prompt(s)."""
    net = step.acc.unwrap_model(step.net_g)
    prompts = None
    if sample is not None and sample.get("prompt") is not None:
        p = sample["prompt"]
        prompts = [p] if isinstance(p, str) else list(p)
    was = net.training
    net.eval()
    with _ema_ctx(step, net), step.acc.autocast():
        out = net.restore(lq, prompts)
    net.train(was)
    return out.float().clamp(0, 1)


class OneStepSDStep:
    def __init__(self, opt, accelerator, log):
        from ggt_ir.generative.lora import LoraEMA
        from ggt_ir.generative.onestep_sd import OneStepSD
        from ggt_ir.losses import build_losses
        from ggt_ir.train.optim import LRFactor, build_optimizer, build_scheduler

        self.opt, self.acc, self.log, t = opt, accelerator, log, opt.train
        kwargs = dict(opt.network_g)
        if kwargs.pop("type") != "OneStepSD":
            raise ValueError("model_type onestep_sd needs network_g.type: OneStepSD")
        if opt.path.pretrain_network_g:  # exported adapters to start from
            kwargs["adapters"] = opt.path.pretrain_network_g
        net = OneStepSD(**kwargs, _mixed_precision=t.mixed_precision)
        self.losses = {}
        if t.pixel_opt or t.losses:
            self.losses = {k: m.to(accelerator.device) for k, m in build_losses(t).items()}
        self.lpips = None
        if t.lpips_opt is not None:
            from ggt_ir.generative.lpips import LPIPSVGG

            lo = t.lpips_opt
            self.lpips = LPIPSVGG(lo.weights_dir, lo.vgg_path, lo.lin_path).to(accelerator.device)
        if not self.losses and self.lpips is None and t.vsd_opt is None:
            raise ValueError("onestep_sd: no loss configured; set train.pixel_opt {type: MSELoss} "
                             "and/or train.lpips_opt / train.vsd_opt")
        optimizer = build_optimizer(net.parameters(), t.optim_g)
        self.scheduler = build_scheduler(optimizer, t)
        self.ema = LoraEMA(net, t.ema_decay).to(accelerator.device) if t.ema_decay > 0 else None
        self.vsd = t.vsd_opt
        if self.vsd is not None:
            from ggt_ir.generative.vsd import VSDRegularizer

            reg = VSDRegularizer(net, self.vsd)
            opt_r = build_optimizer(reg.parameters(), self.vsd.optim)
            self.scheduler_r = torch.optim.lr_scheduler.LambdaLR(opt_r, LRFactor(t, self.vsd.optim.lr))
            self.net_g, self.optimizer, self.reg, self.optimizer_r = accelerator.prepare(net, optimizer, reg, opt_r)
            accelerator.register_for_checkpointing(self.scheduler_r)
            self.num_reg = reg.num_trainable
        else:
            self.net_g, self.optimizer = accelerator.prepare(net, optimizer)
            self.reg = None
        accelerator.register_for_checkpointing(self.scheduler)
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)
        self.num_params = sum(p.numel() for p in net.parameters())
        self.num_trainable = net.num_trainable

    # ------------------------------------------------------------------ contract
    def describe(self) -> dict:
        net = self.acc.unwrap_model(self.net_g)
        info = net.adapter_info()
        lora = "; ".join(f"{c}.{a} r{v['rank']} ({v['num_targets']} layers)" for c, d in info.items() for a, v in d.items())
        out = {"network_g": f"OneStepSD from {net.config['pretrained']}, {self.num_params / 1e6:.3f} M parameters, "
                            f"{self.num_trainable / 1e6:.3f} M trainable (LoRA)",
               "LoRA": lora or "none",
               "frozen weights": str(net.dtype_).replace("torch.", ""),
               "prompt": f"{net.prompt_mode} {net.prompt!r}" if net.prompt_mode != "empty" else "empty",
               "losses": ", ".join([*self.losses, *(["l_lpips"] if self.lpips else []), *(["l_vsd"] if self.vsd else [])]),
               "EMA": f"decay {self.ema.decay} (LoRA tensors)" if self.ema else "off"}
        if self.vsd is not None:
            out["VSD"] = (f"fake-score LoRA r{self.vsd.lora_rank} ({self.num_reg / 1e6:.3f} M), cfg {self.vsd.cfg}, "
                          f"lr {self.vsd.optim.lr}, from iter {self.vsd.start_iter}")
        return out

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, batch: dict, it: int) -> dict:
        acc, t = self.acc, self.opt.train
        gen = acc.unwrap_model(self.net_g)
        modules = [self.net_g] + ([self.reg] if self.reg is not None else [])
        with acc.accumulate(*modules):
            out, z0, emb = self.net_g(batch["lq"], batch.get("prompt"))
            gt = batch["gt"]
            losses = {name: fn(out, gt) for name, fn in self.losses.items()}
            if self.lpips is not None:
                losses["l_lpips"] = t.lpips_opt.loss_weight * self.lpips(out, gt).mean()
            use_vsd = self.reg is not None and it > self.vsd.start_iter
            if use_vsd:
                neg = gen.encode_prompts([self.vsd.neg_prompt] * z0.shape[0])
                losses["l_vsd"] = self.vsd.loss_weight * acc.unwrap_model(self.reg).vsd_loss(z0, emb, neg)
            if not check_finite(acc, losses, it, t.skip_nonfinite):
                self.optimizer.zero_grad(set_to_none=True)
                if self.reg is not None:
                    self.optimizer_r.zero_grad(set_to_none=True)
                return {"nonfinite": torch.ones(())}
            acc.backward(sum(losses.values()))
            if acc.sync_gradients and t.grad_clip > 0:
                acc.clip_grad_norm_(self.net_g.parameters(), t.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                self.scheduler.step()
            if self.reg is not None:  # the fake score follows the generator's current output distribution
                l_diff = self.vsd.diffusion_weight * self.reg(z0, emb)
                acc.backward(l_diff)
                if acc.sync_gradients and t.grad_clip > 0:
                    acc.clip_grad_norm_(self.reg.parameters(), t.grad_clip)
                self.optimizer_r.step()
                self.optimizer_r.zero_grad(set_to_none=True)
                if acc.sync_gradients:
                    self.scheduler_r.step()
                losses["l_vsd_fake"] = l_diff
        if acc.sync_gradients and self.ema is not None:
            self.ema.update(gen)
        return {k: v.detach() for k, v in losses.items()}

    def _ema_ctx(self, net):
        return _ema_ctx(self, net)

    def restore(self, lq: torch.Tensor, sample: dict | None = None) -> torch.Tensor:
        return _restore(self, lq, sample)

    def export(self, path_stem, it: int) -> list[str]:
        """``<stem>/``: peft adapter folders, diffusers ``pytorch_lora_weights.safetensors``, ``ggt_ir_adapter.json``
        (the EMA weights when EMA is on)."""
        net = self.acc.unwrap_model(self.net_g)
        folder = Path(path_stem)
        extra = {"ema": self.ema is not None, "experiment": self.opt.name}
        with self._ema_ctx(net):
            atomic_dir(folder, lambda tmp: net.export_adapters(tmp, it, extra))
        return [str(folder)]


class EditorLoRAStep:
    """``editor_lora``: flow-matching LoRA finetuning of an instruction editor (FLUX.1-Kontext, Qwen-Image-Edit).

    One loss, ``l_flow`` (the rectified-flow velocity MSE, see ``editor.py``). Validation runs the full
    sampler (``network_g.num_inference_steps``, guidance) on the LQ image with the instruction.
    Under FSDP / DeepSpeed the LoRA tensors are gathered on every rank before an export
    (:meth:`before_export`, called by the trainer on all ranks) -- unchecked on GPUs, see docs/generative.md.
    """

    def __init__(self, opt, accelerator, log):
        from accelerate.utils import DistributedType

        from ggt_ir.generative.editor import EditorLoRA
        from ggt_ir.generative.lora import LoraEMA
        from ggt_ir.train.optim import build_optimizer, build_scheduler

        self.opt, self.acc, self.log, t = opt, accelerator, log, opt.train
        kwargs = dict(opt.network_g)
        if kwargs.pop("type") != "EditorLoRA":
            raise ValueError("model_type editor_lora needs network_g.type: EditorLoRA")
        if opt.path.pretrain_network_g:
            kwargs["adapters"] = opt.path.pretrain_network_g
        if t.pixel_opt or t.losses or t.lpips_opt or t.vsd_opt:
            raise ValueError("editor_lora trains with the flow-matching loss only; remove train.pixel_opt / "
                             "train.losses / train.lpips_opt / train.vsd_opt")
        self.sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
        if self.sharded and t.ema_decay > 0:
            raise ValueError("train.ema_decay > 0 is not supported with FSDP/DeepSpeed (the EMA would hold "
                             "shards); set train.ema_decay: 0")
        net = EditorLoRA(**kwargs, _mixed_precision=t.mixed_precision)
        if net.num_trainable == 0:
            raise ValueError("EditorLoRA: no trainable LoRA tensors (network_g.lora_rank: 0 and no adapters)")
        net.to(accelerator.device)
        optimizer = build_optimizer([p for p in net.parameters() if p.requires_grad], t.optim_g)
        self.scheduler = build_scheduler(optimizer, t)
        self.ema = LoraEMA(net, t.ema_decay).to(accelerator.device) if t.ema_decay > 0 else None
        self.net_g, self.optimizer = accelerator.prepare(net, optimizer)
        accelerator.register_for_checkpointing(self.scheduler)
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)
        self.num_params = sum(p.numel() for p in net.parameters())
        self.num_frozen_helpers = sum(p.numel() for m in net._frozen_modules() for p in m.parameters())
        self.num_trainable = net.num_trainable
        self._gathered = None

    def describe(self) -> dict:
        net = self.acc.unwrap_model(self.net_g)
        info = net.adapter_info()["transformer"]
        lora = "; ".join(f"transformer.{a} r{v['rank']} alpha {v['alpha']} ({v['num_targets']} layers)"
                         for a, v in info.items())
        return {"network_g": f"EditorLoRA ({net.family}) from {net.config['pretrained']}: transformer "
                             f"{self.num_params / 1e6:.3f} M parameters + {self.num_frozen_helpers / 1e6:.3f} M frozen "
                             f"(VAE, text encoders), {self.num_trainable / 1e6:.3f} M trainable (LoRA)",
                "LoRA": lora or "none",
                "frozen weights": str(net.dtype_).replace("torch.", ""),
                "instruction": f"{net.prompt_mode} {net.prompt!r}",
                "flow matching": f"weighting {net.weighting['weighting_scheme']}, train guidance {net.train_guidance}",
                "buckets": (f"{net.buckets} (area {net.bucket_area}, train resize {net.bucket_train})"
                            if net.buckets == "model" else "none (pad to a multiple of %d)" % net.multiple),
                "inference": f"{net.num_inference_steps} steps, guidance {net.guidance_scale}, "
                             f"true CFG {net.true_cfg_scale}",
                "EMA": f"decay {self.ema.decay} (LoRA tensors)" if self.ema else "off"}

    def current_lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def train_step(self, batch: dict, it: int) -> dict:
        acc, t = self.acc, self.opt.train
        with acc.accumulate(self.net_g):
            losses = {"l_flow": self.net_g(batch["lq"], batch["gt"], batch.get("prompt"))}
            if not check_finite(acc, losses, it, t.skip_nonfinite):
                self.optimizer.zero_grad(set_to_none=True)
                return {"nonfinite": torch.ones(())}
            acc.backward(losses["l_flow"])
            if acc.sync_gradients and t.grad_clip > 0:
                acc.clip_grad_norm_(self.net_g.parameters(), t.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if acc.sync_gradients:
                self.scheduler.step()
        if acc.sync_gradients and self.ema is not None:
            self.ema.update(acc.unwrap_model(self.net_g))
        return {k: v.detach() for k, v in losses.items()}

    def _ema_ctx(self, net):
        return _ema_ctx(self, net)

    def restore(self, lq: torch.Tensor, sample: dict | None = None) -> torch.Tensor:
        return _restore(self, lq, sample)

    def before_export(self) -> None:
        """Collective (all ranks): gather the sharded LoRA tensors for the main process's export."""
        if self.sharded:
            state = self.acc.get_state_dict(self.net_g)
            self._gathered = {k: v for k, v in state.items() if ".lora_" in k} if state is not None else None

    def export(self, path_stem, it: int) -> list[str]:
        """``<stem>/``: ``pytorch_lora_weights.safetensors`` (diffusers), ``transformer.default/`` (peft),
        ``ggt_ir_adapter.json`` (the EMA weights when EMA is on)."""
        net = self.acc.unwrap_model(self.net_g)
        folder = Path(path_stem)
        extra = {"ema": self.ema is not None, "experiment": self.opt.name}
        with self._ema_ctx(net):
            atomic_dir(folder, lambda tmp: net.export_adapters(tmp, it, extra, lora_state=self._gathered))
        return [str(folder)]
