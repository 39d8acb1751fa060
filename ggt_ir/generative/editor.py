"""Instruction image-editor LoRA finetuning: FLUX.1-Kontext and Qwen-Image-Edit as restorers.

    LQ --VAE--> cond latents ─┐
    HQ --VAE--> x0            ├─ x_sigma = (1 - sigma) x0 + sigma noise ─ transformer(+LoRA)([x_sigma | cond], sigma, text)
    instruction --text encoder(s)--> text ┘                                  -> velocity, target = noise - x0

Training is rectified-flow matching as in diffusers' own LoRA scripts for these models
(``examples/dreambooth/train_dreambooth_lora_flux_kontext.py``, ``train_dreambooth_lora_qwen_image.py``):
sigma from ``weighting_scheme`` (uniform / logit_normal / mode / cosmap), the scheduler's training
timesteps, SD3 loss weighting, the LQ latents appended to the sequence as the edit condition (FLUX:
position ids with first coordinate 1; Qwen: a second entry in ``img_shapes``).
Inference is the pipelines' own loop (flow-match Euler, ``sigmas = linspace(1, 1/N, N)``,
resolution-dependent shift ``mu``), ``num_inference_steps`` steps, embedded ``guidance_scale``
(guidance-distilled FLUX) and/or "true" CFG (``true_cfg_scale`` with ``negative_prompt``).
With the same seed it reproduces ``FluxKontextPipeline``/``QwenImageEditPipeline`` (tested for FLUX).

Only the transformer is a registered sub-module (LoRA, trained, prepared by accelerate -- DDP, FSDP or
DeepSpeed shard it alone); the VAE and text encoder(s) are frozen helpers moved along with ``.to()``
and never wrapped, so ``state_dict()`` holds exactly the LoRA tensors.

Families (``family``, the table in ``editors/__init__.py``, one file each in ``editors/``): ``flux_kontext``
(FluxTransformer2DModel, AutoencoderKL, CLIP + T5) and ``qwen_image_edit`` (QwenImageTransformer2DModel,
AutoencoderKLQwenImage, Qwen2.5-VL which also sees the input image). The family object (``self.editor``)
loads the components and does what differs (latent normalisation, instruction encoding, the transformer
call with the LQ condition, buckets, CFG); this class does the rest. Constructor arguments are the
``network_g`` options.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ggt_ir.generative import lora as L
from ggt_ir.generative.adapters import read_export_record, rebuild_arguments, write_export_record
from ggt_ir.generative.editors import FAMILIES
from ggt_ir.generative.memory import set_attention, set_vae_memory
from ggt_ir.generative.onestep_sd import resolve_dtype

DEFAULT_PROMPT = "Restore this photo: remove the degradation (noise, blur, rain, haze, low light) and keep the content."


@contextlib.contextmanager
def _zero3_init_disabled():
    """Frozen helpers must not be partitioned by DeepSpeed ZeRO-3's init hook (they are never prepared).
    accelerate's ``zero3_init_context_manager(enable=False)`` keeps transformers' ZeRO-3 config (stage 3), which
    transformers 5 still reads as "partition at init"; so the config is unset here and set back after."""
    plugin = None
    try:
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state:
            plugin = AcceleratorState().deepspeed_plugin
    except Exception:  # noqa: BLE001 - accelerate not initialised / no DeepSpeed
        plugin = None
    if plugin is None or int(plugin.zero_stage) != 3:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()


def calculate_shift(seq_len: int, cfg) -> float:
    """The pipelines' resolution-dependent timestep shift ``mu`` (linear in the token count)."""
    base, mx = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    b_shift, m_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    m = (m_shift - b_shift) / (mx - base)
    return seq_len * m + (b_shift - m * base)


class EditorLoRA(nn.Module):
    model_type = "editor_lora"  # the trainer step that trains it (ggt_ir/train/steps/)

    def __init__(
        self,
        pretrained: str,
        family: str = "flux_kontext",  # a name in editors.FAMILIES: flux_kontext | qwen_image_edit
        revision: Optional[str] = None,
        variant: Optional[str] = None,
        allow_download: bool = False,
        prompt_mode: str = "fixed",  # fixed | batch (per-sample instruction from the data; empty -> prompt)
        prompt: str = DEFAULT_PROMPT,
        max_sequence_length: int = 512,  # FLUX T5 tokens
        max_cached_prompts: int = 1024,
        lora_rank: int = 16,
        lora_alpha: Optional[float] = None,  # default: = rank
        lora_targets: Optional[List[str]] = None,  # layer-name suffixes; default: the family's lora_targets
        lora_init: str = "gaussian",
        lora_dropout: float = 0.0,
        adapters: Optional[str] = None,  # start from an exported adapter folder
        weight_dtype: str = "auto",  # frozen weights: auto (from train.mixed_precision) | fp32 | bf16 | fp16
        gradient_checkpointing: bool = False,
        # memory
        quantize: str = "none",  # frozen transformer: none | nf4 (bitsandbytes, CUDA) | int8 | fp8 (torchao)
        quantize_text_encoders: bool = False,  # the same quantization for the text encoder(s)
        text_encoders: str = "gpu",  # gpu | offload (CPU RAM; on the GPU only while encoding) | cpu
        attention: str = "sdpa",  # sdpa | flash | xformers | sage | ... (diffusers' attention backends)
        vae_tiling: bool = False,  # diffusers' tiled VAE encode/decode
        vae_slicing: bool = False,  # diffusers' per-image VAE passes over a batch
        # flow-matching training
        weighting_scheme: str = "none",  # none (uniform sigma) | logit_normal | mode | cosmap | sigma_sqrt
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        mode_scale: float = 1.29,
        train_guidance: float = 1.0,  # embedded guidance fed while training (guidance-distilled FLUX only)
        # resolution buckets
        buckets: str = "model",  # model (the family's own buckets) | none (keep size, pad to the multiple)
        bucket_area: int = 1024 * 1024,  # pixel area the family's buckets are scaled to
        bucket_train: bool = False,  # also resize training crops to their bucket (else: crops must be multiples)
        # inference
        num_inference_steps: int = 28,
        guidance_scale: Optional[float] = 2.5,  # embedded guidance (FLUX.1-Kontext-dev); ignored if not distilled
        true_cfg_scale: float = 1.0,  # > 1 with negative_prompt: classifier-free guidance (2 passes per step)
        negative_prompt: str = " ",
        inference_seed: int = 0,
        _mixed_precision: str = "no",
        _transformer_on_meta: bool = False,  # FSDP RAM-efficient loading: ranks > 0 build it on meta (sharding.py)
    ):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"network_g.family must be one of {', '.join(FAMILIES.names())}; got {family!r}")
        if prompt_mode not in ("fixed", "batch"):
            raise ValueError(f"network_g.prompt_mode must be fixed or batch; got {prompt_mode!r}")
        if buckets not in ("model", "none"):
            raise ValueError(f"network_g.buckets must be model or none; got {buckets!r}")
        if weighting_scheme not in ("none", "logit_normal", "mode", "cosmap", "sigma_sqrt"):
            raise ValueError(f"network_g.weighting_scheme: unknown {weighting_scheme!r}")
        if num_inference_steps < 1:
            raise ValueError("network_g.num_inference_steps must be >= 1")
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__") and not k.startswith("_")}
        self.family = family
        self.dtype_ = resolve_dtype(weight_dtype, _mixed_precision)
        # the family's components and conventions (a plain object: its helpers are not sub-modules)
        self.editor = FAMILIES.get(family)(self.dtype_, max_sequence_length=max_sequence_length,
                                           max_cached_prompts=max_cached_prompts, text_encoders=text_encoders)
        with _zero3_init_disabled():
            self.transformer = self.editor.load(pretrained, revision=revision, variant=variant,
                                                allow_download=allow_download, quantize=quantize,
                                                quantize_text_encoders=quantize_text_encoders,
                                                transformer_on_meta=_transformer_on_meta)
        self.quantize = quantize
        # FSDP's transformer-based auto-wrap shards the transformer's own blocks (no class names in the config)
        self._no_split_modules = list(getattr(self.transformer, "_no_split_modules", None) or [])
        self.transformer.requires_grad_(False)
        for m in self._frozen_modules():
            m.requires_grad_(False).eval()
        scheduler = self.editor.scheduler
        self.scheduler_config = dict(scheduler.config)
        self.train_timesteps = scheduler.timesteps.float().clone()  # num_train_timesteps, descending
        self.train_sigmas = scheduler.sigmas.float().clone()
        self.prompt_mode, self.prompt = prompt_mode, prompt
        self.weighting = dict(weighting_scheme=weighting_scheme, logit_mean=logit_mean, logit_std=logit_std,
                              mode_scale=mode_scale)
        self.train_guidance = train_guidance
        self.buckets, self.bucket_area, self.bucket_train = buckets, bucket_area, bucket_train
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        self.true_cfg_scale, self.negative_prompt, self.inference_seed = true_cfg_scale, negative_prompt, inference_seed
        self.multiple = self.editor.multiple

        if adapters:
            self.load_adapters(adapters)
        elif lora_rank > 0:
            from peft import LoraConfig

            names = L.find_targets(self.transformer, lora_targets or list(self.editor.lora_targets))
            if not names:
                raise ValueError(f"network_g.lora_targets {lora_targets} match no Linear layer of the transformer")
            cfg = LoraConfig(r=lora_rank, lora_alpha=lora_alpha if lora_alpha is not None else lora_rank,
                             init_lora_weights=lora_init, lora_dropout=lora_dropout, target_modules=names)
            self.transformer.add_adapter(cfg, adapter_name="default")
        self.num_trainable = L.mark_only_lora_trainable(self)
        if _transformer_on_meta:
            # the trained tensors get real (CPU) storage: their values come from rank 0 during prepare, but
            # accelerate maps optimizer parameters to the sharded ones by storage address (0 on meta for all)
            for mod in self.modules():
                for k, q in list(mod._parameters.items()):
                    if q is not None and q.requires_grad and q.is_meta:
                        mod._parameters[k] = nn.Parameter(torch.zeros(q.shape, dtype=q.dtype))
        L.keep_lora_state_only(self)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        set_attention(self.transformer, attention)
        set_vae_memory(self.editor.vae, vae_tiling, vae_slicing)

    # ------------------------------------------------------------------ components
    def _frozen_modules(self):
        return list(self.editor.frozen.values())

    def __getattr__(self, name):  # net.vae, net.text_encoder, ...: the family's frozen helpers
        editor = self.__dict__.get("editor")
        if editor is not None and name in editor.frozen:
            return editor.frozen[name]
        return super().__getattr__(name)

    def _apply(self, fn, *args, **kwargs):
        """.to(device) / .cuda() move the frozen helpers too -- not to ``meta`` (FSDP's RAM-efficient loading
        moves the sharded module there; the helpers stay), and not the text encoders unless placed on the GPU."""
        super()._apply(fn, *args, **kwargs)
        if fn(torch.zeros(0)).device.type == "meta":
            return self
        for m in self.helpers_on_device():
            m._apply(fn, *args, **kwargs)
        return self

    def helpers_on_device(self) -> list:
        """The frozen helpers that live on the compute device (the VAE, and the text encoders placed ``gpu``)."""
        off = set(self.editor.text_encoder_names) if self.editor.text.stays_on_cpu else set()
        return [m for k, m in self.editor.frozen.items() if k not in off]

    def move_helpers(self, device) -> None:
        """Put the frozen helpers on ``device`` (the trained module is placed by accelerate / FSDP / DeepSpeed)."""
        for m in self.helpers_on_device():
            m.to(device)

    @property
    def device(self) -> torch.device:
        return self.editor.device  # the VAE's: the transformer's parameters may be sharded or quantized

    def precompute_instructions(self) -> list[str]:
        """Encode the instructions known before training -- ``prompt`` and, with true CFG, ``negative_prompt`` -- into
        the family's prompt cache, on the helpers' device. Called by the step before the transformer is placed: with
        ``text_encoders: offload`` the encoders then never share the GPU with the transformer for a fixed
        instruction. Nothing for a family whose encoder sees the image (Qwen-Image-Edit encodes every step)."""
        if self.editor.text_sees_image:
            return []
        prompts = [self.prompt] + ([self.negative_prompt] if self.true_cfg_scale > 1 else [])
        self.editor.encode_text(prompts, None)
        return prompts

    # ------------------------------------------------------------------ sizes and buckets
    def bucket_for(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) the model runs at for an input of h x w."""
        m = self.multiple
        if self.buckets == "none":
            return -(-h // m) * m, -(-w // m) * m
        bw, bh = self.editor.bucket(w / h, self.bucket_area)
        return max(m, int(bh) // m * m), max(m, int(bw) // m * m)

    def to_model_size(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == tuple(size):
            return x
        if self.buckets == "none":
            return F.pad(x, (0, size[1] - w, 0, size[0] - h), mode="replicate")
        return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)

    # ------------------------------------------------------------------ text
    def prompts_for(self, batch_prompts, n: int) -> list[str]:
        if self.prompt_mode == "batch" and batch_prompts is not None:
            return [p if p else self.prompt for p in batch_prompts]
        return [self.prompt] * n

    # ------------------------------------------------------------------ transformer
    def velocity(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, text: dict, h: int, w: int,
                 guidance: float | None) -> torch.Tensor:
        """Transformer prediction for the packed noisy latents ``x`` given the packed LQ latents ``cond``
        (appended to the sequence)."""
        dt = self.dtype_
        b, n = x.shape[:2]
        hidden = torch.cat([x, cond], dim=1).to(dt)
        g = None
        if self.transformer.config.guidance_embeds and guidance is not None:
            g = torch.full((b,), float(guidance), device=x.device, dtype=torch.float32)
        return self.editor.predict(self.transformer, hidden, t.to(dt), g, text, h, w)[:, :n]

    def forward(self, lq: torch.Tensor, gt: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """Flow-matching loss of one batch (the training step)."""
        from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

        ed = self.editor
        H, W = gt.shape[-2:]
        if self.bucket_train:
            size = self.bucket_for(H, W)
            lq, gt = self.to_model_size(lq, size), self.to_model_size(gt, size)
        elif H % self.multiple or W % self.multiple:
            raise ValueError(f"EditorLoRA: training crops {H}x{W} must be multiples of {self.multiple} "
                             "(set datasets.train.gt_size accordingly, or network_g.bucket_train: true)")
        b = gt.shape[0]
        text = ed.encode_text(self.prompts_for(prompts, b), lq)
        with torch.no_grad():
            x0 = ed.encode_image(gt).float()
            cond = ed.pack(ed.encode_image(lq))
        h, w = x0.shape[-2:]
        u = compute_density_for_timestep_sampling(batch_size=b, **self.weighting)
        idx = (u * len(self.train_timesteps)).long().clamp(max=len(self.train_timesteps) - 1)
        t = self.train_timesteps[idx].to(x0.device)
        sigma = self.train_sigmas[idx].to(x0.device).view(-1, 1, 1, 1)
        noise = torch.randn_like(x0)
        xt = (1 - sigma) * x0 + sigma * noise
        pred = ed.unpack(self.velocity(ed.pack(xt), cond, t / 1000, text, h, w, self.train_guidance).float(), h, w)
        weight = compute_loss_weighting_for_sd3(self.weighting["weighting_scheme"], sigma).float()
        return (weight * (pred - (noise - x0)) ** 2).reshape(b, -1).mean(1).mean()

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def restore(self, lq: torch.Tensor, prompts: list[str] | None = None, *, num_inference_steps: int | None = None,
                guidance_scale: float | None = ..., true_cfg_scale: float | None = None,
                negative_prompt: str | None = None, seed: int | list[int] | None = None, output_size: str = "input"):
        """Edit ``lq`` (B, 3, H, W) in [0, 1] with the instruction; the output is resized back to H x W
        (``output_size="input"``) or left at the model's bucket size (``"model"``). Arguments left out use
        the ``network_g`` values (``guidance_scale=None`` switches embedded guidance off). ``seed``: one for
        every image or one per image; each image's noise comes from its own generator, so an image's output
        does not depend on what else is in the batch."""
        import numpy as np
        from diffusers import FlowMatchEulerDiscreteScheduler

        ed = self.editor
        N = num_inference_steps or self.num_inference_steps
        g = self.guidance_scale if guidance_scale is ... else guidance_scale
        cfg = self.true_cfg_scale if true_cfg_scale is None else true_cfg_scale
        neg = self.negative_prompt if negative_prompt is None else negative_prompt
        seed = self.inference_seed if seed is None else seed
        H, W = lq.shape[-2:]
        b = lq.shape[0]
        size = self.bucket_for(H, W)
        x = self.to_model_size(lq.float(), size).to(self.device)
        text = ed.encode_text(self.prompts_for(prompts, b), x)
        neg_text = ed.encode_text([neg] * b, x) if cfg > 1 else None
        cond = ed.pack(ed.encode_image(x))
        h, w = size[0] // ed.vae_factor, size[1] // ed.vae_factor
        seeds = [seed] * b if isinstance(seed, int) else list(seed)
        if len(seeds) != b:
            raise ValueError(f"EditorLoRA.restore: {len(seeds)} seeds for {b} images")
        noise = torch.cat([torch.randn(ed.noise_shape(1, h, w), generator=torch.Generator("cpu").manual_seed(s))
                           for s in seeds]).view(b, ed.latent_channels, h, w)
        latents = ed.pack(noise).to(self.device, self.dtype_)
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        sigmas = np.linspace(1.0, 1 / N, N)
        mu = calculate_shift(latents.shape[1], self.scheduler_config)
        sched.set_timesteps(sigmas=sigmas, mu=mu, device=self.device)
        sched.set_begin_index(0)
        for t in sched.timesteps:
            tt = t.expand(b).to(latents.dtype) / 1000
            v = self.velocity(latents, cond, tt, text, h, w, g)
            if neg_text is not None:
                v = ed.guide(v, self.velocity(latents, cond, tt, neg_text, h, w, g), cfg)
            latents = sched.step(v, t, latents, return_dict=False)[0]
        out = ed.decode_latents(ed.unpack(latents, h, w))
        if output_size == "input" and out.shape[-2:] != (H, W):
            if self.buckets == "none":
                out = out[..., :H, :W]
            else:
                out = F.interpolate(out, size=(H, W), mode="bicubic", antialias=True, align_corners=False)
        return out.clamp(0, 1)

    # ------------------------------------------------------------------ adapters
    def adapter_info(self) -> dict:
        return {"transformer": L.adapter_summary(self.transformer)}

    def export_adapters(self, folder: str | Path, step: int, extra: dict | None = None,
                        lora_state: dict | None = None) -> Path:
        """``transformer.default/`` (peft layout), ``pytorch_lora_weights.safetensors`` (diffusers:
        ``FluxKontextPipeline``/``QwenImageEditPipeline.load_lora_weights(folder)``), ``ggt_ir_adapter.json``.

        ``lora_state``: the LoRA tensors gathered from sharded (FSDP/ZeRO-3) ranks; default: this module's."""
        import diffusers
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = lora_state if lora_state is not None else self.state_dict()
        # "transformer.<layer>.lora_A.default.weight" -> "<layer>.lora_A.weight" (peft's saved key layout)
        tensors = {k.removeprefix("transformer.").replace(".default.", "."): v.detach().float().cpu().contiguous()
                   for k, v in state.items() if ".lora_" in k and ".default." in k}
        cfg = self.transformer.peft_config.get("default") if hasattr(self.transformer, "peft_config") else None
        listing = {}
        if cfg is not None and tensors:
            sub = folder / "transformer.default"
            sub.mkdir(exist_ok=True)
            save_file({"base_model.model." + k: v for k, v in tensors.items()}, str(sub / "adapter_model.safetensors"),
                      metadata={"format": "pt"})
            cfg.save_pretrained(str(sub))
            listing["transformer.default"] = {"component": "transformer", "adapter": "default"}
            meta = {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules)}
            getattr(diffusers, self.editor.pipeline).save_lora_weights(
                str(folder), transformer_lora_layers=tensors, safe_serialization=True,
                transformer_lora_adapter_metadata=meta)
        write_export_record(
            folder, self, network="EditorLoRA", step=step, adapters=listing, extra=extra,
            fmt="ggt-ir LoRA adapters (peft layout; diffusers pipeline file for the transformer)",
            family=self.family, diffusers_pipeline=self.editor.pipeline,
            inference={"num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                       "true_cfg_scale": self.true_cfg_scale, "negative_prompt": self.negative_prompt,
                       "prompt": self.prompt, "buckets": self.buckets, "bucket_area": self.bucket_area})
        return folder

    @classmethod
    def from_export(cls, folder: str | Path, **overrides) -> "EditorLoRA":
        """Rebuild the trained editor from an export folder (its recorded ``network_g`` + adapters)."""
        return cls(**rebuild_arguments(folder, "EditorLoRA", overrides))

    def load_adapters(self, folder: str | Path) -> None:
        folder = Path(folder)
        info = read_export_record(folder, "EditorLoRA")
        if info.get("family", self.family) != self.family:
            raise ValueError(f"{folder}: adapters for {info.get('family')}, but network_g.family is {self.family}")
        for sub, entry in info["adapters"].items():
            L.load_peft_adapter(self.transformer, folder / sub, entry["adapter"])
        L.activate(self.transformer, ["default"])
        L.mark_only_lora_trainable(self)  # LoRA fp32 as exported (a cast to a bf16 weight_dtype would round it)
