"""``onestep_sd``: a one-step SD restorer (OSEDiff-style) finetuned with LoRA (``ggt_ir/generative/onestep_sd.py``).

Losses from the options: ``train.pixel_opt``/``train.losses`` (e.g. MSELoss = L2), ``train.lpips_opt``
(LPIPS-VGG from local files) and ``train.vsd_opt`` (variational score distillation). With VSD there are
two trained modules (generator, fake-score UNet) and two optimizers; both modules are inside
``accelerator.accumulate(...)`` and both optimizers and schedules are checkpointed by ``save_state``.

The loss scales are OSEDiff's (cswry/OSEDiff train_osediff.py:277-285, osediff.py:241): the pixel losses
are taken on images in [-1, 1] (``train.pixel_loss_range: signed``; ``unit`` = [0, 1], a quarter of the MSE),
LPIPS on the same range, VSD without a 1/2, so ``loss_weight`` 1 : 2 : 1 is OSEDiff's lambda_l2 : lambda_lpips
: lambda_vsd.

Distributed: DDP for everything; FSDP for OneStepSD without VSD; DeepSpeed is refused (two trained modules
with VSD, fp32 x0 layers without), at option-load time when ``accelerate launch`` says so, else at start.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import torch

from ggt_ir.config import OptionsError, at_least, choice, in_range
from ggt_ir.train.options import OptimOptions, Options, TrainOptions
from ggt_ir.train.step_api import NONFINITE, Step
from ggt_ir.utils.fs import atomic_dir


@dataclass
class LPIPSOptions:
    """LPIPS (VGG) loss; weights from local files (ggt_ir/generative/lpips.py)."""

    loss_weight: float = at_least(1.0, 0.0)
    weights_dir: Optional[str] = None  # folder with checkpoints/vgg16-397923af.pth + pyiqa/LPIPS_v0.1_vgg-a78928a0.pth
    vgg_path: Optional[str] = None  # explicit file paths (override weights_dir)
    lin_path: Optional[str] = None


@dataclass
class VSDOptions:
    """Variational score distillation (OSEDiff): frozen UNet + a LoRA "fake score" UNet with its own optimizer."""

    loss_weight: float = at_least(1.0, 0.0)  # lambda_vsd (generator)
    diffusion_weight: float = at_least(1.0, 0.0)  # lambda_vsd_lora (fake-score diffusion loss)
    lora_rank: int = at_least(4, 1)
    lora_alpha: Optional[float] = None
    lora_targets: Optional[List[str]] = None  # default: attention projections + convolutions of the UNet
    cfg: float = at_least(7.5, 0.0)  # classifier-free guidance of the frozen (real score) UNet
    neg_prompt: str = ""
    min_timestep: int = in_range(20, 0, 999)  # VSD (generator) t in [min, max): OSEDiff osediff.py:208
    max_timestep: int = in_range(980, 1, 1000)
    diffusion_min_timestep: int = in_range(0, 0, 999)  # fake-score diffusion loss t: OSEDiff osediff.py:183
    diffusion_max_timestep: int = in_range(1000, 1, 1000)
    start_iter: int = at_least(0, 0)  # add the VSD term to the generator loss from this iteration on
    optim: OptimOptions = field(default_factory=lambda: OptimOptions(lr=5e-5))


@dataclass
class OneStepSDTrainOptions(TrainOptions):
    lpips_opt: Optional[LPIPSOptions] = None
    vsd_opt: Optional[VSDOptions] = None
    # pixel losses on images in [-1, 1] (signed: the VAE's range, OSEDiff train_osediff.py:277) or [0, 1] (unit)
    pixel_loss_range: str = choice("signed", "signed", "unit")


@dataclass
class OneStepSDOptions(Options):
    train: OneStepSDTrainOptions = field(default_factory=OneStepSDTrainOptions)


class OneStepSDStep(Step):
    options = OneStepSDOptions
    network_type = "OneStepSD"

    @classmethod
    def check_options(cls, opt, src: str) -> None:
        t = opt.train
        if not (t.pixel_opt or t.losses or t.lpips_opt or t.vsd_opt):
            raise OptionsError(f"{src}: model_type onestep_sd: no loss configured; set train.pixel_opt "
                               "{type: MSELoss} and/or train.lpips_opt / train.vsd_opt")
        v = t.vsd_opt
        if v is not None and v.min_timestep >= v.max_timestep:
            raise OptionsError(f"{src}: train.vsd_opt.min_timestep ({v.min_timestep}) must be below "
                               f"max_timestep ({v.max_timestep})")
        if v is not None and v.diffusion_min_timestep >= v.diffusion_max_timestep:
            raise OptionsError(f"{src}: train.vsd_opt.diffusion_min_timestep ({v.diffusion_min_timestep}) must be "
                               f"below diffusion_max_timestep ({v.diffusion_max_timestep})")
        from ggt_ir.generative.sharding import launched_with

        refusal = cls.refusal(launched_with(), v is not None, t.ema_decay)
        if refusal:
            raise OptionsError(f"{src}: {refusal}")

    @staticmethod
    def refusal(launch: str, vsd: bool, ema_decay: float) -> str | None:
        """Why this launch cannot train these options (one line naming the alternative), or None."""
        if launch == "deepspeed":
            what = ("train.vsd_opt trains two modules (generator and fake score) with two optimizers, which "
                    "accelerate's DeepSpeed integration does not support" if vsd else
                    "DeepSpeed casts every weight to its dtype, which undoes network_g.precise_x0's fp32 x0 layers")
            return (f"model_type onestep_sd with DeepSpeed: {what}; launch with DDP "
                    "(accelerate launch --multi_gpu --num_processes N train.py ...; SD-2.1 + LoRA fits one GPU)"
                    + ("" if vsd else " or FSDP (--config_file options/accelerate/fsdp_bf16_8gpu.yaml)"))
        if launch == "fsdp" and vsd:
            return ("model_type onestep_sd with FSDP: train.vsd_opt (a second trained module with its own "
                    "optimizer) is trained with DDP only; launch with DDP (accelerate launch --multi_gpu "
                    "--num_processes N train.py ...; SD-2.1 + LoRA fits one GPU) or remove train.vsd_opt")
        if launch in ("fsdp", "deepspeed") and ema_decay > 0:
            return "train.ema_decay > 0 is not supported with FSDP/DeepSpeed (the EMA would hold shards); set train.ema_decay: 0"
        return None

    @staticmethod
    def preflight(opt) -> list[str]:
        """Every weight file the run will read that is missing (base components, LPIPS, adapters), at once."""
        from ggt_ir.generative.lpips import lpips_files, LPIPS_URL, VGG_URL
        from ggt_ir.generative.pretrained import preflight

        g, t = opt.network_g, opt.train
        comps = {"unet": "network", "vae": "network", "text_encoder": "network", "tokenizer": "tokenizer",
                 "scheduler": "scheduler"}
        missing = preflight(g["pretrained"], comps, revision=g.get("revision"), variant=g.get("variant"),
                            allow_download=g.get("allow_download", False))
        if t.lpips_opt is not None:
            lo = t.lpips_opt
            for f, url in zip(lpips_files(lo.weights_dir, lo.vgg_path, lo.lin_path), (VGG_URL, LPIPS_URL)):
                if not f.is_file():
                    missing.append(f"LPIPS {f} (download {url}; or set train.lpips_opt.weights_dir / $GGT_IR_WEIGHTS)")
        for src in (g.get("adapters"), opt.path.pretrain_network_g):
            if src and not (Path(src) / "ggt_ir_adapter.json").is_file():
                missing.append(f"{src}/ggt_ir_adapter.json (an exported adapter folder, models/net_g_<iter>)")
        return missing

    def __init__(self, opt, accelerator, log):
        from ggt_ir.generative import sharding
        from ggt_ir.generative.onestep_sd import OneStepSD
        from ggt_ir.generative.pretrained import PretrainedNotFoundError, preflight_error
        from ggt_ir.losses import build_losses
        from ggt_ir.train.optim import LRFactor, build_optimizer

        self.opt, self.acc, self.log, t = opt, accelerator, log, opt.train
        refusal = self.refusal(sharding.kind(accelerator), t.vsd_opt is not None, t.ema_decay)
        if refusal:  # a launch the environment did not reveal at option-load time
            raise ValueError(refusal)
        missing = self.preflight(opt)
        if missing:
            raise PretrainedNotFoundError(preflight_error(missing))
        kwargs = {k: v for k, v in opt.network_g.items() if k != "type"}
        if opt.path.pretrain_network_g:  # exported adapters to start from
            kwargs["adapters"] = opt.path.pretrain_network_g
        net = OneStepSD(**kwargs, _mixed_precision=t.mixed_precision)
        self.signed = t.pixel_loss_range == "signed"
        self.losses = {}
        if t.pixel_opt or t.losses:
            self.losses = {k: m.to(accelerator.device) for k, m in build_losses(t).items()}
        self.lpips = None
        if t.lpips_opt is not None:
            from ggt_ir.generative.lpips import LPIPSVGG

            lo = t.lpips_opt
            self.lpips = LPIPSVGG(lo.weights_dir, lo.vgg_path, lo.lin_path).to(accelerator.device)
        self.vsd, self.reg = t.vsd_opt, None
        if self.vsd is None:
            with sharding.prepare_trained(net):  # FSDP's RAM-efficient loading reloads the whole state dict
                self.prepare_generator(net)
            sharding.register_inference(self.net_g, accelerator)
            if sharding.kind(accelerator) == "fsdp" and not net.text_placement.stays_on_cpu:
                net.text_encoder.to(accelerator.device)  # a helper outside the sharded tree
        else:
            from ggt_ir.generative.vsd import VSDRegularizer

            reg = VSDRegularizer(net, self.vsd)
            opt_r = build_optimizer(reg.parameters(), self.vsd.optim)
            self.scheduler_r = torch.optim.lr_scheduler.LambdaLR(opt_r, LRFactor(t, self.vsd.optim.lr))
            self.reg, self.optimizer_r = self.prepare_generator(net, reg, opt_r)
            accelerator.register_for_checkpointing(self.scheduler_r)
            self.num_reg = reg.num_trainable
        self.num_params = sum(p.numel() for p in net.parameters())
        self.num_trainable = net.num_trainable

    def trained_optimizers(self) -> list:
        return [self.optimizer] + ([self.optimizer_r] if self.reg is not None else [])

    def describe(self) -> dict:
        net = self.acc.unwrap_model(self.net_g)
        info = net.adapter_info()
        lora = "; ".join(f"{c}.{a} r{v['rank']} ({v['num_targets']} layers)" for c, d in info.items() for a, v in d.items())
        out = {"network_g": f"OneStepSD from {net.config['pretrained']}, {self.num_params / 1e6:.3f} M parameters, "
                            f"{self.num_trainable / 1e6:.3f} M trainable (LoRA)",
               "LoRA": lora or "none",
               "frozen weights": str(net.dtype_).replace("torch.", "") + (
                   "; z, UNet output and x0 in fp32 (precise_x0)" if net.precise_x0 else ""),
               "trained fully": ", ".join(p.rstrip(".") for p in net.full_trained) or "none",
               "VAE posterior": {"train": "sampled in training, mode at inference", "always": "always sampled",
                                 "never": "mode"}[net.vae_sample],
               "pixel losses on": "[-1, 1]" if self.signed else "[0, 1]",
               "text encoder": net.text_placement.placement,
               "prompt": f"{net.prompt_mode} {net.prompt!r}" if net.prompt_mode != "empty" else "empty",
               "losses": ", ".join([*self.losses, *(["l_lpips"] if self.lpips else []), *(["l_vsd"] if self.vsd else [])]),
               "EMA": f"decay {self.ema.decay} (LoRA tensors)" if self.ema else "off"}
        if self.vsd is not None:
            out["VSD"] = (f"fake-score LoRA r{self.vsd.lora_rank} ({self.num_reg / 1e6:.3f} M), cfg {self.vsd.cfg}, "
                          f"lr {self.vsd.optim.lr}, from iter {self.vsd.start_iter}")
        return out

    def train_step(self, batch: dict, it: int) -> dict:
        acc, t = self.acc, self.opt.train
        gen = acc.unwrap_model(self.net_g)
        modules = [self.net_g] + ([self.reg] if self.reg is not None else [])
        with acc.accumulate(*modules):
            out, z0, emb = self.net_g(batch["lq"], batch.get("prompt"))
            gt = batch["gt"]
            # OSEDiff's L2 is on [-1, 1] images (train_osediff.py:277); LPIPS maps [0, 1] to [-1, 1] itself
            po, pg = (out * 2 - 1, gt * 2 - 1) if self.signed else (out, gt)
            losses = {name: fn(po, pg) for name, fn in self.losses.items()}
            if self.lpips is not None:
                losses["l_lpips"] = t.lpips_opt.loss_weight * self.lpips(out, gt).mean()
            if self.reg is not None and it > self.vsd.start_iter:
                neg = gen.encode_prompts([self.vsd.neg_prompt] * z0.shape[0])
                losses["l_vsd"] = self.vsd.loss_weight * acc.unwrap_model(self.reg).vsd_loss(z0, emb, neg)
            if not self.losses_finite(losses, it):
                return NONFINITE
            self.optimizer_step(sum(losses.values()), self.optimizer, self.scheduler, self.net_g.parameters())
            if self.reg is not None:  # the fake score follows the generator's current output distribution
                l_diff = self.vsd.diffusion_weight * self.reg(z0, emb)
                self.optimizer_step(l_diff, self.optimizer_r, self.scheduler_r, self.reg.parameters())
                losses["l_vsd_fake"] = l_diff
        self.update_ema()
        return {k: v.detach() for k, v in losses.items()}

    def restore(self, lq: torch.Tensor, sample: dict | None = None) -> torch.Tensor:
        from ggt_ir.inference.loader import sample_prompts

        with self.inference_network() as net:
            return net.restore(lq, sample_prompts(sample)).float().clamp(0, 1)

    def before_export(self) -> None:
        """Collective (all ranks): under FSDP gather the trained tensors (LoRA + conv_in) for the export."""
        from ggt_ir.generative.sharding import kind

        self._gathered = self.acc.get_state_dict(self.net_g) if kind(self.acc) == "fsdp" else None

    def export(self, path_stem, it: int) -> list[str]:
        """``<stem>/``: peft adapter folders, diffusers ``pytorch_lora_weights.safetensors``, the trained conv_in,
        ``ggt_ir_adapter.json`` (the EMA weights when EMA is on)."""
        net = self.acc.unwrap_model(self.net_g)
        extra = {"ema": self.ema is not None, "experiment": self.opt.name}
        state = getattr(self, "_gathered", None)
        with self.ema_weights(net):
            atomic_dir(Path(path_stem), lambda tmp: net.export_adapters(tmp, it, extra, state=state))
        return [str(path_stem)]

