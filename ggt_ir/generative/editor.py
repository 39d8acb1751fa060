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

Families (``family``): ``flux_kontext`` (FluxTransformer2DModel, AutoencoderKL, CLIP + T5) and
``qwen_image_edit`` (QwenImageTransformer2DModel, AutoencoderKLQwenImage, Qwen2.5-VL which also
sees the input image). Constructor arguments are the ``network_g`` options.
"""
from __future__ import annotations

import collections
import contextlib
import json
import math
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ggt_ir.generative import lora as L
from ggt_ir.generative.onestep_sd import ADAPTER_JSON, resolve_dtype

FAMILIES = ("flux_kontext", "qwen_image_edit")
SUBFOLDERS = {
    "flux_kontext": ["transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"],
    "qwen_image_edit": ["transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler"],
}
# diffusers' LoRA scripts: FLUX(-Kontext) attention + feed-forward layers; Qwen-Image attention projections
LORA_TARGETS = {
    "flux_kontext": ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj", "attn.add_q_proj",
                     "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                     "ff_context.net.2", "proj_mlp"],
    "qwen_image_edit": ["to_k", "to_q", "to_v", "to_out.0"],
}
DEFAULT_PROMPT = "Restore this photo: remove the degradation (noise, blur, rain, haze, low light) and keep the content."
PIPELINES = {"flux_kontext": "FluxKontextPipeline", "qwen_image_edit": "QwenImageEditPipeline"}


def _zero3_init_disabled():
    """Frozen helpers must not be partitioned by DeepSpeed ZeRO-3's init hook (they are never prepared)."""
    try:
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state:
            plugin = AcceleratorState().deepspeed_plugin
            if plugin is not None:
                return plugin.zero3_init_context_manager(enable=False)
    except Exception:  # noqa: BLE001 - accelerate not initialised / no DeepSpeed
        pass
    return contextlib.nullcontext()


def pack(z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): the 2x2 patch sequence both families use."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    b, _, d = x.shape
    return x.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


def flux_ids(h: int, w: int, first: float, device, dtype) -> torch.Tensor:
    """FLUX position ids of a packed (h/2 x w/2) grid: (first, row, col)."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 0] = first
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def calculate_shift(seq_len: int, cfg) -> float:
    base, mx = cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096)
    b_shift, m_shift = cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15)
    m = (m_shift - b_shift) / (mx - base)
    return seq_len * m + (b_shift - m * base)


class EditorLoRA(nn.Module):
    model_type = "editor_lora"  # the trainer step that trains it (ggt_ir/train/steps/)

    def __init__(
        self,
        pretrained: str,
        family: str = "flux_kontext",  # flux_kontext | qwen_image_edit
        revision: Optional[str] = None,
        variant: Optional[str] = None,
        allow_download: bool = False,
        prompt_mode: str = "fixed",  # fixed | batch (per-sample instruction from the data; empty -> prompt)
        prompt: str = DEFAULT_PROMPT,
        max_sequence_length: int = 512,  # FLUX T5 tokens
        max_cached_prompts: int = 1024,
        lora_rank: int = 16,
        lora_alpha: Optional[float] = None,  # default: = rank
        lora_targets: Optional[List[str]] = None,  # layer-name suffixes; default LORA_TARGETS[family]
        lora_init: str = "gaussian",
        lora_dropout: float = 0.0,
        adapters: Optional[str] = None,  # start from an exported adapter folder
        weight_dtype: str = "auto",  # frozen weights: auto (from train.mixed_precision) | fp32 | bf16 | fp16
        gradient_checkpointing: bool = False,
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
    ):
        super().__init__()
        if family not in FAMILIES:
            raise ValueError(f"network_g.family must be one of {', '.join(FAMILIES)}; got {family!r}")
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
        self._frozen: dict = {}
        with _zero3_init_disabled():
            self._load(pretrained, revision, variant, allow_download)
        self.transformer.requires_grad_(False)
        for m in self._frozen_modules():
            m.requires_grad_(False).eval()
        self.scheduler_config = dict(self.scheduler.config)
        self.train_timesteps = self.scheduler.timesteps.float().clone()  # num_train_timesteps, descending
        self.train_sigmas = self.scheduler.sigmas.float().clone()
        self.prompt_mode, self.prompt = prompt_mode, prompt
        self.max_sequence_length = max_sequence_length
        self.weighting = dict(weighting_scheme=weighting_scheme, logit_mean=logit_mean, logit_std=logit_std,
                              mode_scale=mode_scale)
        self.train_guidance = train_guidance
        self.buckets, self.bucket_area, self.bucket_train = buckets, bucket_area, bucket_train
        self.num_inference_steps, self.guidance_scale = num_inference_steps, guidance_scale
        self.true_cfg_scale, self.negative_prompt, self.inference_seed = true_cfg_scale, negative_prompt, inference_seed
        self.multiple = self.vae_factor * 2

        if adapters:
            self.load_adapters(adapters)
        elif lora_rank > 0:
            from peft import LoraConfig

            names = L.find_targets(self.transformer, lora_targets or LORA_TARGETS[family])
            if not names:
                raise ValueError(f"network_g.lora_targets {lora_targets} match no Linear layer of the transformer")
            cfg = LoraConfig(r=lora_rank, lora_alpha=lora_alpha if lora_alpha is not None else lora_rank,
                             init_lora_weights=lora_init, lora_dropout=lora_dropout, target_modules=names)
            self.transformer.add_adapter(cfg, adapter_name="default")
        self.num_trainable = L.mark_only_lora_trainable(self)
        L.keep_lora_state_only(self)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self._prompt_cache: collections.OrderedDict = collections.OrderedDict()
        self.max_cached_prompts = max_cached_prompts

    # ------------------------------------------------------------------ components
    def _load(self, pretrained, revision, variant, allow_download):
        from diffusers import FlowMatchEulerDiscreteScheduler

        from ggt_ir.generative.pretrained import load_component

        load = dict(revision=revision, variant=variant, allow_download=allow_download,
                    all_subfolders=SUBFOLDERS[self.family])
        plain = {**load, "variant": None}
        dt = self.dtype_
        if self.family == "flux_kontext":
            from diffusers import AutoencoderKL, FluxTransformer2DModel
            from transformers import CLIPTextModel, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

            self.transformer = load_component(FluxTransformer2DModel, pretrained, "transformer", torch_dtype=dt, **load)
            vae = load_component(AutoencoderKL, pretrained, "vae", torch_dtype=dt, **load)
            self._frozen.update(
                vae=vae,
                text_encoder=load_component(CLIPTextModel, pretrained, "text_encoder", torch_dtype=dt, **load),
                text_encoder_2=load_component(T5EncoderModel, pretrained, "text_encoder_2", torch_dtype=dt, **load))
            self.tokenizer = load_component(CLIPTokenizer, pretrained, "tokenizer", **plain)
            self.tokenizer_2 = load_component(T5TokenizerFast, pretrained, "tokenizer_2", **plain)
            self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
            self.latent_channels = vae.config.latent_channels
        else:
            from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
            from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor

            self.transformer = load_component(QwenImageTransformer2DModel, pretrained, "transformer", torch_dtype=dt,
                                              **load)
            vae = load_component(AutoencoderKLQwenImage, pretrained, "vae", torch_dtype=dt, **load)
            self._frozen.update(vae=vae, text_encoder=load_component(
                Qwen2_5_VLForConditionalGeneration, pretrained, "text_encoder", torch_dtype=dt, **load))
            self.tokenizer = load_component(Qwen2Tokenizer, pretrained, "tokenizer", **plain)
            self.processor = load_component(Qwen2VLProcessor, pretrained, "processor", **plain)
            self.vae_factor = 2 ** len(vae.temperal_downsample)
            self.latent_channels = vae.config.z_dim
        self.scheduler = load_component(FlowMatchEulerDiscreteScheduler, pretrained, "scheduler", **plain)

    def _frozen_modules(self):
        return list(self._frozen.values())

    def __getattr__(self, name):
        frozen = self.__dict__.get("_frozen")
        if frozen is not None and name in frozen:
            return frozen[name]
        return super().__getattr__(name)

    def _apply(self, fn, *args, **kwargs):  # .to(device) / .cuda() move the frozen helpers too
        super()._apply(fn, *args, **kwargs)
        for m in self._frozen_modules():
            m._apply(fn, *args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    # ------------------------------------------------------------------ sizes and buckets
    def bucket_for(self, h: int, w: int) -> tuple[int, int]:
        """(height, width) the model runs at for an input of h x w."""
        m = self.multiple
        if self.buckets == "none":
            return -(-h // m) * m, -(-w // m) * m
        ratio = w / h
        scale = math.sqrt(self.bucket_area / (1024 * 1024))
        if self.family == "flux_kontext":
            from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

            _, bw, bh = min((abs(ratio - bw / bh), bw, bh) for bw, bh in PREFERRED_KONTEXT_RESOLUTIONS)
            bw, bh = bw * scale, bh * scale
        else:  # QwenImageEditPipeline's calculate_dimensions (target area, aspect ratio, multiples of 32)
            bw = math.sqrt(self.bucket_area * ratio)
            bh = bw / ratio
            bw, bh = round(bw / 32) * 32, round(bh / 32) * 32
        return max(m, int(bh) // m * m), max(m, int(bw) // m * m)

    def to_model_size(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == tuple(size):
            return x
        if self.buckets == "none":
            return F.pad(x, (0, size[1] - w, 0, size[0] - h), mode="replicate")
        return F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)

    # ------------------------------------------------------------------ VAE
    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 3, H, W) -> normalised latents (B, C, H/f, W/f), as the pipelines do."""
        vae = self.vae
        x = (x * 2 - 1).to(self.device, vae.dtype)
        if self.family == "flux_kontext":
            z = vae.encode(x).latent_dist.mode()
            return (z - vae.config.shift_factor) * vae.config.scaling_factor
        z = vae.encode(x.unsqueeze(2)).latent_dist.mode()[:, :, 0]
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1).to(z)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1).to(z)
        return (z - mean) / std

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = z.to(vae.dtype)
        if self.family == "flux_kontext":
            x = vae.decode(z / vae.config.scaling_factor + vae.config.shift_factor).sample
        else:
            mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1).to(z)
            std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1).to(z)
            x = vae.decode((z * std + mean).unsqueeze(2)).sample[:, :, 0]
        return (x.float().clamp(-1, 1) + 1) / 2

    # ------------------------------------------------------------------ text
    def prompts_for(self, batch_prompts, n: int) -> list[str]:
        if self.prompt_mode == "batch" and batch_prompts is not None:
            return [p if p else self.prompt for p in batch_prompts]
        return [self.prompt] * n

    @torch.no_grad()
    def encode_text(self, prompts: list[str], images: torch.Tensor | None = None) -> dict:
        """Conditioning for the transformer. FLUX: cached per prompt. Qwen: the VL encoder sees each image."""
        if self.family == "qwen_image_edit":
            return self._encode_qwen(prompts, images)
        new = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if new:
            dev = self.device
            te, te2 = self.text_encoder, self.text_encoder_2
            ids = self.tokenizer(new, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            pooled = te(ids.to(dev), output_hidden_states=False).pooler_output
            ids2 = self.tokenizer_2(new, padding="max_length", max_length=self.max_sequence_length, truncation=True,
                                    return_tensors="pt").input_ids
            emb = te2(ids2.to(dev), output_hidden_states=False)[0]
            for p, e, q in zip(new, emb, pooled):
                self._prompt_cache[p] = (e.detach(), q.detach())
        for p in prompts:
            self._prompt_cache.move_to_end(p)
        while len(self._prompt_cache) > self.max_cached_prompts:
            self._prompt_cache.popitem(last=False)
        emb = torch.stack([self._prompt_cache[p][0] for p in prompts]).to(self.device)
        pooled = torch.stack([self._prompt_cache[p][1] for p in prompts]).to(self.device)
        return {"emb": emb, "pooled": pooled}

    QWEN_TEMPLATE = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
                     "objects, background), then explain how the user's text instruction should alter or modify the "
                     "image. Generate a new image that meets the user's requirements while maintaining consistency "
                     "with the original input where appropriate.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                     "<|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n")
    QWEN_DROP = 64  # template tokens dropped from the hidden states (QwenImageEditPipeline)

    def _encode_qwen(self, prompts, images):
        from PIL import Image

        pil = [Image.fromarray((im.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round()
                               .astype("uint8")) for im in images]
        inputs = self.processor(text=[self.QWEN_TEMPLATE.format(p) for p in prompts], images=pil, padding=True,
                                return_tensors="pt").to(self.device)
        out = self.text_encoder(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                pixel_values=inputs.get("pixel_values"), image_grid_thw=inputs.get("image_grid_thw"),
                                output_hidden_states=True)
        mask = inputs["attention_mask"].bool()
        hidden = out.hidden_states[-1]
        parts = [h[m][self.QWEN_DROP:] for h, m in zip(hidden, mask)]
        n = max(p.shape[0] for p in parts)
        emb = torch.stack([torch.cat([p, p.new_zeros(n - p.shape[0], p.shape[1])]) for p in parts])
        m = torch.stack([torch.cat([torch.ones(p.shape[0], dtype=torch.long), torch.zeros(n - p.shape[0],
                                   dtype=torch.long)]) for p in parts]).to(self.device)
        return {"emb": emb.to(self.dtype_), "mask": None if bool(m.all()) else m}

    # ------------------------------------------------------------------ transformer
    def velocity(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, text: dict, h: int, w: int,
                 guidance: float | None) -> torch.Tensor:
        """Transformer prediction for the packed noisy latents ``x`` given the packed LQ latents ``cond``."""
        tr, dt = self.transformer, self.dtype_
        b, n = x.shape[:2]
        hidden = torch.cat([x, cond], dim=1).to(dt)
        g = None
        if tr.config.guidance_embeds and guidance is not None:
            g = torch.full((b,), float(guidance), device=x.device, dtype=torch.float32)
        if self.family == "flux_kontext":
            ids = torch.cat([flux_ids(h, w, 0, x.device, dt), flux_ids(h, w, 1, x.device, dt)])
            txt_ids = torch.zeros(text["emb"].shape[1], 3, device=x.device, dtype=dt)
            out = tr(hidden_states=hidden, timestep=t.to(dt), guidance=g, pooled_projections=text["pooled"].to(dt),
                     encoder_hidden_states=text["emb"].to(dt), txt_ids=txt_ids, img_ids=ids, return_dict=False)[0]
        else:
            shapes = [[(1, h // 2, w // 2), (1, h // 2, w // 2)]] * b
            out = tr(hidden_states=hidden, timestep=t.to(dt), guidance=g, encoder_hidden_states=text["emb"].to(dt),
                     encoder_hidden_states_mask=text["mask"], img_shapes=shapes, return_dict=False)[0]
        return out[:, :n]

    def forward(self, lq: torch.Tensor, gt: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        """Flow-matching loss of one batch (the training step)."""
        from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

        H, W = gt.shape[-2:]
        if self.bucket_train:
            size = self.bucket_for(H, W)
            lq, gt = self.to_model_size(lq, size), self.to_model_size(gt, size)
        elif H % self.multiple or W % self.multiple:
            raise ValueError(f"EditorLoRA: training crops {H}x{W} must be multiples of {self.multiple} "
                             "(set datasets.train.gt_size accordingly, or network_g.bucket_train: true)")
        b = gt.shape[0]
        text = self.encode_text(self.prompts_for(prompts, b), lq)
        with torch.no_grad():
            x0 = self.encode_image(gt).float()
            cond = pack(self.encode_image(lq))
        h, w = x0.shape[-2:]
        u = compute_density_for_timestep_sampling(batch_size=b, **self.weighting)
        idx = (u * len(self.train_timesteps)).long().clamp(max=len(self.train_timesteps) - 1)
        t = self.train_timesteps[idx].to(x0.device)
        sigma = self.train_sigmas[idx].to(x0.device).view(-1, 1, 1, 1)
        noise = torch.randn_like(x0)
        xt = (1 - sigma) * x0 + sigma * noise
        pred = unpack(self.velocity(pack(xt), cond, t / 1000, text, h, w, self.train_guidance).float(), h, w)
        weight = compute_loss_weighting_for_sd3(self.weighting["weighting_scheme"], sigma).float()
        return (weight * (pred - (noise - x0)) ** 2).reshape(b, -1).mean(1).mean()

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def restore(self, lq: torch.Tensor, prompts: list[str] | None = None, *, num_inference_steps: int | None = None,
                guidance_scale: float | None = ..., true_cfg_scale: float | None = None,
                negative_prompt: str | None = None, seed: int | None = None, output_size: str = "input"):
        """Edit ``lq`` (B, 3, H, W) in [0, 1] with the instruction; the output is resized back to H x W
        (``output_size="input"``) or left at the model's bucket size (``"model"``). Arguments left out use
        the ``network_g`` values (``guidance_scale=None`` switches embedded guidance off)."""
        import numpy as np
        from diffusers import FlowMatchEulerDiscreteScheduler

        N = num_inference_steps or self.num_inference_steps
        g = self.guidance_scale if guidance_scale is ... else guidance_scale
        cfg = self.true_cfg_scale if true_cfg_scale is None else true_cfg_scale
        neg = self.negative_prompt if negative_prompt is None else negative_prompt
        seed = self.inference_seed if seed is None else seed
        H, W = lq.shape[-2:]
        b = lq.shape[0]
        size = self.bucket_for(H, W)
        x = self.to_model_size(lq.float(), size).to(self.device)
        text = self.encode_text(self.prompts_for(prompts, b), x)
        neg_text = self.encode_text([neg] * b, x) if cfg > 1 else None
        cond = pack(self.encode_image(x))
        h, w = size[0] // self.vae_factor, size[1] // self.vae_factor
        gen = torch.Generator("cpu").manual_seed(seed)
        shape = (b, self.latent_channels, h, w) if self.family == "flux_kontext" else (b, 1, self.latent_channels, h, w)
        latents = pack(torch.randn(shape, generator=gen).view(b, self.latent_channels, h, w)).to(self.device, self.dtype_)
        sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
        sigmas = np.linspace(1.0, 1 / N, N)
        mu = calculate_shift(latents.shape[1], self.scheduler_config)
        sched.set_timesteps(sigmas=sigmas, mu=mu, device=self.device)
        sched.set_begin_index(0)
        for t in sched.timesteps:
            tt = t.expand(b).to(latents.dtype) / 1000
            v = self.velocity(latents, cond, tt, text, h, w, g)
            if neg_text is not None:
                vn = self.velocity(latents, cond, tt, neg_text, h, w, g)
                comb = vn + cfg * (v - vn)
                if self.family == "qwen_image_edit":  # QwenImageEditPipeline rescales to the conditional norm
                    comb = comb * (v.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))
                v = comb
            latents = sched.step(v, t, latents, return_dict=False)[0]
        out = self.decode_latents(unpack(latents, h, w))
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
            getattr(diffusers, PIPELINES[self.family]).save_lora_weights(
                str(folder), transformer_lora_layers=tensors, safe_serialization=True,
                transformer_lora_adapter_metadata=meta)
        info = {
            "format": "ggt-ir LoRA adapters (peft layout; diffusers pipeline file for the transformer)",
            "network": "EditorLoRA",
            "family": self.family,
            "diffusers_pipeline": PIPELINES[self.family],
            "base_model": self.config["pretrained"],
            "revision": self.config["revision"],
            "variant": self.config["variant"],
            "step": step,
            "adapters": listing,
            "ranks_targets": self.adapter_info(),
            "inference": {"num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale,
                          "true_cfg_scale": self.true_cfg_scale, "negative_prompt": self.negative_prompt,
                          "prompt": self.prompt, "buckets": self.buckets, "bucket_area": self.bucket_area},
            "network_g": {"type": "EditorLoRA", **{k: v for k, v in self.config.items() if k != "adapters"}},
            **(extra or {}),
        }
        L.write_json(folder / ADAPTER_JSON, info)
        return folder

    @classmethod
    def from_export(cls, folder: str | Path, **overrides) -> "EditorLoRA":
        info = json.loads((Path(folder) / ADAPTER_JSON).read_text())
        if info.get("network") != "EditorLoRA":
            raise ValueError(f"{folder}: not an EditorLoRA export (network {info.get('network')!r})")
        kwargs = {k: v for k, v in info["network_g"].items() if k != "type"}
        kwargs.update(adapters=str(folder), **overrides)
        return cls(**kwargs)

    def load_adapters(self, folder: str | Path) -> None:
        folder = Path(folder)
        if not (folder / ADAPTER_JSON).is_file():
            raise FileNotFoundError(f"{folder}: no {ADAPTER_JSON}; expected a folder written by an EditorLoRA "
                                    "export (experiments/<name>/models/net_g_<iter>)")
        info = json.loads((folder / ADAPTER_JSON).read_text())
        if info.get("family", self.family) != self.family:
            raise ValueError(f"{folder}: adapters for {info.get('family')}, but network_g.family is {self.family}")
        for sub, entry in info["adapters"].items():
            L.load_peft_adapter(self.transformer, folder / sub, entry["adapter"])
        L.activate(self.transformer, ["default"])
        self.transformer.to(self.dtype_)
        L.mark_only_lora_trainable(self)
