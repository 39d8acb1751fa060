"""``editor_lora``: flow-matching LoRA finetuning of an instruction editor (FLUX.1-Kontext, Qwen-Image-Edit;
``ggt_ir/generative/editor.py``).

One loss, ``l_flow`` (the rectified-flow velocity MSE). Validation runs the full sampler
(``network_g.num_inference_steps``, guidance) on the LQ image with the instruction.

Distributed (``ggt_ir/generative/sharding.py``): DDP; FSDP2 (the transformer's blocks sharded before they
reach the GPU, RAM-efficient loading on meta for ranks > 0, ``restore`` through the FSDP root); DeepSpeed
ZeRO-2/3 (batch figures from the options). The LoRA tensors are gathered on every rank before an export
(:meth:`EditorLoRAStep.before_export`, called by the trainer on all ranks).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ggt_ir.config import OptionsError
from ggt_ir.train.step_api import NONFINITE, Step
from ggt_ir.utils.fs import atomic_dir


class EditorLoRAStep(Step):
    network_type = "EditorLoRA"
    own_loss = "the flow-matching loss only"

    @classmethod
    def check_options(cls, opt, src: str) -> None:
        super().check_options(opt, src)
        from ggt_ir.generative.sharding import launched_with

        refusal = cls.refusal(launched_with(), opt)
        if refusal:
            raise OptionsError(f"{src}: {refusal}")

    @staticmethod
    def refusal(launch: str, opt) -> str | None:
        """Why this launch cannot train these options (one line naming what to change), or None."""
        if launch in ("fsdp", "deepspeed") and opt.train.ema_decay > 0:
            return ("train.ema_decay > 0 is not supported with FSDP/DeepSpeed (the EMA would hold shards); "
                    "set train.ema_decay: 0")
        if launch == "deepspeed" and opt.network_g.get("quantize", "none") != "none":
            return ("network_g.quantize with DeepSpeed: DeepSpeed casts the module's weights to its dtype, which "
                    "undoes the quantized base; use FSDP (options/accelerate/fsdp_bf16_8gpu.yaml) or DDP")
        return None

    @staticmethod
    def preflight(opt) -> list[str]:
        """Every weight file the run will read that is missing, at once."""
        from ggt_ir.generative.editors import FAMILIES
        from ggt_ir.generative.pretrained import preflight

        g = opt.network_g
        family = FAMILIES.get(g.get("family", "flux_kontext"))
        kinds = {"tokenizer": "tokenizer", "tokenizer_2": "tokenizer", "scheduler": "scheduler", "processor": "processor"}
        comps = {sub: kinds.get(sub, "network") for sub in family.subfolders}
        missing = preflight(g["pretrained"], comps, revision=g.get("revision"), variant=g.get("variant"),
                            allow_download=g.get("allow_download", False))
        for src in (g.get("adapters"), opt.path.pretrain_network_g):
            if src and not (Path(src) / "ggt_ir_adapter.json").is_file():
                missing.append(f"{src}/ggt_ir_adapter.json (an exported adapter folder, models/net_g_<iter>)")
        return missing

    def __init__(self, opt, accelerator, log):
        from ggt_ir.generative import sharding
        from ggt_ir.generative.editor import EditorLoRA
        from ggt_ir.generative.pretrained import PretrainedNotFoundError, preflight_error

        self.opt, self.acc, self.log, t = opt, accelerator, log, opt.train
        self.launch = sharding.kind(accelerator)
        self.sharded = self.launch in ("fsdp", "deepspeed")
        refusal = self.refusal(self.launch, opt)
        if refusal:  # a launch the environment did not reveal at option-load time
            raise ValueError(refusal)
        missing = self.preflight(opt)
        if missing:
            raise PretrainedNotFoundError(preflight_error(missing))
        kwargs = {k: v for k, v in opt.network_g.items() if k != "type"}
        if opt.path.pretrain_network_g:
            kwargs["adapters"] = opt.path.pretrain_network_g
        net = EditorLoRA(**kwargs, _mixed_precision=t.mixed_precision,
                         _transformer_on_meta=sharding.load_on_meta(accelerator))
        if net.num_trainable == 0:
            raise ValueError("EditorLoRA: no trainable LoRA tensors (network_g.lora_rank: 0 and no adapters)")
        if self.launch == "deepspeed":
            sharding.configure_deepspeed(accelerator, opt.datasets["train"].batch_size_per_gpu,
                                         t.gradient_accumulation_steps, t.grad_clip)
        net.move_helpers(accelerator.device)
        net.precompute_instructions()  # before the transformer arrives (text_encoders: offload never overlaps it)
        if self.sharded:  # the transformer is placed (and sharded) by FSDP / DeepSpeed, never whole on each GPU
            sharding.partition_zero3(net.transformer, accelerator)
        else:
            net.to(accelerator.device)
        with sharding.prepare_trained(net):  # FSDP's RAM-efficient loading reloads the whole state dict
            self.prepare_generator(net)
        sharding.register_inference(self.net_g, accelerator)
        self.zero3 = sharding.zero_stage(accelerator) == 3
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
                "frozen weights": str(net.dtype_).replace("torch.", "")
                                  + (f", transformer quantized {net.quantize}" if net.quantize != "none" else ""),
                "text encoders": net.editor.text.placement,
                "distributed": self.launch + (f" (ZeRO-{3 if self.zero3 else 2})" if self.launch == "deepspeed" else ""),
                "instruction": f"{net.prompt_mode} {net.prompt!r}",
                "flow matching": f"weighting {net.weighting['weighting_scheme']}, train guidance {net.train_guidance}",
                "buckets": (f"{net.buckets} (area {net.bucket_area}, train resize {net.bucket_train})"
                            if net.buckets == "model" else "none (pad to a multiple of %d)" % net.multiple),
                "inference": f"{net.num_inference_steps} steps, guidance {net.guidance_scale}, "
                             f"true CFG {net.true_cfg_scale}",
                "EMA": f"decay {self.ema.decay} (LoRA tensors)" if self.ema else "off"}

    def train_step(self, batch: dict, it: int) -> dict:
        with self.acc.accumulate(self.net_g):
            losses = {"l_flow": self.net_g(batch["lq"], batch["gt"], batch.get("prompt"))}
            if not self.losses_finite(losses, it):
                return NONFINITE
            self.optimizer_step(losses["l_flow"], self.optimizer, self.scheduler, self.net_g.parameters())
        self.update_ema()
        return {k: v.detach() for k, v in losses.items()}

    def restore(self, lq: torch.Tensor, sample: dict | None = None) -> torch.Tensor:
        from ggt_ir.inference.loader import sample_prompts

        with self.inference_network() as net:
            return net.restore(lq, sample_prompts(sample)).float().clamp(0, 1)

    def before_export(self) -> None:
        """Collective (all ranks): gather the sharded LoRA tensors for the main process's export (ZeRO-3: the
        LoRA tensors only, not a 16-bit copy of the whole model)."""
        if self.zero3:
            from ggt_ir.generative.sharding import gather_lora_zero3

            self._gathered = gather_lora_zero3(self.acc.unwrap_model(self.net_g))
        elif self.sharded:
            state = self.acc.get_state_dict(self.net_g)
            self._gathered = {k: v for k, v in state.items() if ".lora_" in k} if state is not None else None

    def export(self, path_stem, it: int) -> list[str]:
        """``<stem>/``: ``pytorch_lora_weights.safetensors`` (diffusers), ``transformer.default/`` (peft),
        ``ggt_ir_adapter.json`` (the EMA weights when EMA is on)."""
        net = self.acc.unwrap_model(self.net_g)
        extra = {"ema": self.ema is not None, "experiment": self.opt.name}
        with self.ema_weights(net):
            atomic_dir(Path(path_stem), lambda tmp: net.export_adapters(tmp, it, extra, lora_state=self._gathered))
        return [str(path_stem)]
