"""One-step Stable-Diffusion restorer (OSEDiff-style), built from diffusers components.

    LQ --VAE encoder (+LoRA)--> z --UNet (+LoRA) at timestep t with the prompt embedding--> prediction
       --one scheduler step (x0 from the prediction: epsilon / v_prediction / sample)--> z0 --VAE decoder--> output

Components come from ``pretrained`` (a diffusers folder or a Hub id, see ``pretrained.py``).
LoRA (peft) on the UNet as separate adapters per region (``default_encoder`` = down blocks,
``default_decoder`` = up blocks, ``default_others`` = mid block and the rest) and one adapter on the
VAE encoder (``default_encoder``, incl. ``quant_conv``). Only LoRA tensors train (fp32); frozen
weights are held in ``weight_dtype``. ``state_dict()`` holds the LoRA tensors only (see ``lora.py``).

Constructor arguments are the ``network_g`` options (validated against this signature).
"""
from __future__ import annotations

import collections
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ggt_ir.generative import lora as L
from ggt_ir.generative.adapters import ADAPTER_JSON  # noqa: F401 - merge.py reads the name from here
from ggt_ir.generative.adapters import read_export_record, rebuild_arguments, write_export_record
from ggt_ir.generative.color_fix import COLOR_FIXES, color_fix
from ggt_ir.utils.tiling import tiled_apply

SD_SUBFOLDERS = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(weight_dtype: str, mixed_precision: str = "no") -> torch.dtype:
    if weight_dtype == "auto":
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)
    if weight_dtype not in DTYPES:
        raise ValueError(f"weight_dtype must be auto, {', '.join(DTYPES)}; got {weight_dtype!r}")
    return DTYPES[weight_dtype]


class OneStepSD(nn.Module):
    model_type = "onestep_sd"  # the trainer step that trains it (ggt_ir/train/steps/)

    def __init__(
        self,
        pretrained: str,
        revision: Optional[str] = None,
        variant: Optional[str] = None,
        allow_download: bool = False,
        timestep: int = 999,
        prompt_mode: str = "fixed",  # fixed | batch (per-sample prompts from the data) | empty
        prompt: str = "",
        max_cached_prompts: int = 4096,
        lora_rank_unet: int = 4,
        lora_alpha_unet: Optional[float] = None,  # default: = rank
        lora_rank_vae: int = 4,
        lora_alpha_vae: Optional[float] = None,
        unet_lora_targets: Optional[List[str]] = None,  # name suffixes; default lora.UNET_TARGETS
        vae_lora_targets: Optional[List[str]] = None,  # default lora.VAE_ENCODER_TARGETS
        unet_lora_regions: bool = True,  # separate encoder/decoder/others adapters (OSEDiff)
        lora_init: str = "gaussian",
        adapters: Optional[str] = None,  # start from exported adapters (a models/net_g_* folder)
        weight_dtype: str = "auto",  # auto (from train.mixed_precision) | fp32 | bf16 | fp16
        gradient_checkpointing: bool = False,
        attention: str = "sdpa",  # sdpa | xformers
        vae_tile: int = 0,  # inference: VAE tile in pixels (0 = whole image)
        latent_tile: int = 0,  # inference: UNet tile in latent pixels (0 = whole latent)
        tile_overlap: float = 0.25,  # fraction of a tile
        color_fix: str = "none",  # inference: none | adain | wavelet
        _mixed_precision: str = "no",
    ):
        super().__init__()
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        from ggt_ir.generative.pretrained import load_component

        if prompt_mode not in ("fixed", "batch", "empty"):
            raise ValueError(f"network_g.prompt_mode must be fixed, batch or empty; got {prompt_mode!r}")
        if color_fix not in COLOR_FIXES:
            raise ValueError(f"network_g.color_fix must be one of {', '.join(COLOR_FIXES)}; got {color_fix!r}")
        if attention not in ("sdpa", "xformers"):
            raise ValueError(f"network_g.attention must be sdpa or xformers; got {attention!r}")
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__") and not k.startswith("_")
                       and k not in ("AutoencoderKL", "DDPMScheduler", "UNet2DConditionModel", "CLIPTextModel",
                                     "CLIPTokenizer", "load_component")}
        self.dtype_ = resolve_dtype(weight_dtype, _mixed_precision)
        load = dict(revision=revision, variant=variant, allow_download=allow_download, all_subfolders=SD_SUBFOLDERS)
        self.unet = load_component(UNet2DConditionModel, pretrained, "unet", torch_dtype=self.dtype_, **load)
        self.vae = load_component(AutoencoderKL, pretrained, "vae", torch_dtype=self.dtype_, **load)
        self.text_encoder = load_component(CLIPTextModel, pretrained, "text_encoder", torch_dtype=self.dtype_, **load)
        self.tokenizer = load_component(CLIPTokenizer, pretrained, "tokenizer", **{**load, "variant": None})
        sched = load_component(DDPMScheduler, pretrained, "scheduler", **{**load, "variant": None})
        self.register_buffer("alphas_cumprod", sched.alphas_cumprod.float().clone(), persistent=False)
        self.prediction_type = sched.config.prediction_type
        if not 0 <= timestep < len(sched.alphas_cumprod):
            raise ValueError(f"network_g.timestep must be in [0, {len(sched.alphas_cumprod) - 1}], got {timestep}")
        self.timestep, self.prompt_mode, self.prompt = timestep, prompt_mode, prompt
        self.vae_tile, self.latent_tile, self.tile_overlap, self.color_fix = vae_tile, latent_tile, tile_overlap, color_fix
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.unet_factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        for m in (self.unet, self.vae, self.text_encoder):
            m.requires_grad_(False)
        self.text_encoder.eval()

        # LoRA
        if adapters:
            self.load_adapters(adapters)
        else:
            if lora_rank_unet > 0:
                names = L.find_targets(self.unet, unet_lora_targets or L.UNET_TARGETS)
                L.add_adapters(self.unet, L.unet_regions(names, unet_lora_regions), lora_rank_unet, lora_alpha_unet, lora_init)
            if lora_rank_vae > 0:
                names = L.find_targets(self.vae, vae_lora_targets or L.VAE_ENCODER_TARGETS, ("encoder.", "quant_conv"))
                L.add_adapters(self.vae, {"default_encoder": names}, lora_rank_vae, lora_alpha_vae, lora_init)
        self.num_trainable = L.mark_only_lora_trainable(self)
        L.keep_lora_state_only(self)

        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()
        if attention == "xformers":
            try:
                self.unet.enable_xformers_memory_efficient_attention()
                self.vae.enable_xformers_memory_efficient_attention()
            except Exception as e:  # noqa: BLE001 - diffusers raises several kinds
                raise RuntimeError(f"network_g.attention: xformers is not usable here ({e}); "
                                   "use attention: sdpa (PyTorch's fused attention, the default)") from e
        self._prompt_cache: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        self.max_cached_prompts = max_cached_prompts

    # ------------------------------------------------------------------ prompts
    def prompts_for(self, batch_prompts: list[str] | None, n: int) -> list[str]:
        if self.prompt_mode == "empty":
            return [""] * n
        if self.prompt_mode == "batch" and batch_prompts is not None:
            return [p if p else self.prompt for p in batch_prompts]
        return [self.prompt] * n

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states (B, 77, D), cached per prompt (the encoder is frozen)."""
        device = self.text_encoder.device
        new = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if new:
            ids = self.tokenizer(new, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids.to(device)
            emb = self.text_encoder(ids)[0]
            for p, e in zip(new, emb):
                self._prompt_cache[p] = e.detach()
        for p in prompts:
            self._prompt_cache.move_to_end(p)
        while len(self._prompt_cache) > self.max_cached_prompts:
            self._prompt_cache.popitem(last=False)
        return torch.stack([self._prompt_cache[p].to(device) for p in prompts])

    # ------------------------------------------------------------------ pieces
    def x0_from_prediction(self, pred: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod.to(z.device)[t].float().view(-1, 1, 1, 1)
        if self.prediction_type == "epsilon":
            return (z.float() - (1 - a).sqrt() * pred.float()) / a.sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * z.float() - (1 - a).sqrt() * pred.float()
        return pred.float()

    def encode(self, lq: torch.Tensor) -> torch.Tensor:
        x = (lq * 2 - 1).to(self.dtype_)
        return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    def denoise(self, z: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        t = torch.full((z.shape[0],), self.timestep, device=z.device, dtype=torch.long)
        pred = self.unet(z.to(self.dtype_), t, encoder_hidden_states=emb.to(self.dtype_)).sample
        return self.x0_from_prediction(pred, z, t)

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        x = self.vae.decode((z0 / self.vae.config.scaling_factor).to(self.dtype_)).sample
        return (x.float().clamp(-1, 1) + 1) / 2

    def forward(self, lq: torch.Tensor, prompts: list[str] | None = None):
        """Training forward: returns (output image in [0, 1], x0 latents, prompt embeddings)."""
        m = self.vae_factor * self.unet_factor
        if lq.shape[-1] % m or lq.shape[-2] % m:
            raise ValueError(f"OneStepSD: input {tuple(lq.shape[-2:])} must be a multiple of {m} "
                             "(set datasets.train.gt_size accordingly)")
        emb = self.encode_prompts(self.prompts_for(prompts, lq.shape[0]))
        z0 = self.denoise(self.encode(lq), emb)
        return self.decode(z0), z0, emb

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def restore(self, lq: torch.Tensor, prompts: list[str] | None = None, *, vae_tile: int | None = None,
                latent_tile: int | None = None, color_fix_: str | None = None) -> torch.Tensor:
        """Any size: pad to a multiple of the model's factor, tiled VAE / latent when set, colour fix."""
        vae_tile = self.vae_tile if vae_tile is None else vae_tile
        latent_tile = self.latent_tile if latent_tile is None else latent_tile
        fix = self.color_fix if color_fix_ is None else color_fix_
        H, W = lq.shape[-2:]
        m = self.vae_factor * self.unet_factor
        ph, pw = (-H) % m, (-W) % m
        x = F.pad(lq, (0, pw, 0, ph), mode="replicate") if ph or pw else lq
        emb = self.encode_prompts(self.prompts_for(prompts, lq.shape[0]))
        f = self.vae_factor

        def snap(tile, mult):  # tiles must be multiples of what the networks need
            return 0 if tile <= 0 else max(mult, tile // mult * mult)

        vt, lt = snap(vae_tile, m), snap(latent_tile, self.unet_factor)
        z = tiled_apply(self.encode, x, vt, snap(int(vt * self.tile_overlap), m), scale=1 / f)
        z0 = tiled_apply(lambda t: self.denoise(t, emb), z, lt, snap(int(lt * self.tile_overlap), self.unet_factor))
        out = tiled_apply(self.decode, z0, vt // f, snap(int(vt * self.tile_overlap), m) // f, scale=f)
        out = out[..., :H, :W]
        return color_fix(out, lq, fix).float().clamp(0, 1)

    # ------------------------------------------------------------------ adapters
    def adapter_models(self) -> dict:
        return {"unet": self.unet, "vae": self.vae}

    def adapter_info(self) -> dict:
        return {k: L.adapter_summary(m) for k, m in self.adapter_models().items()}

    def export_adapters(self, folder: str | Path, step: int, extra: dict | None = None) -> Path:
        """peft folders per adapter (``unet.default_encoder/`` ...), the UNet LoRA in diffusers' SD-pipeline
        format (``pytorch_lora_weights.safetensors``, for ``pipe.load_lora_weights``) and ``ggt_ir_adapter.json``."""
        from diffusers import StableDiffusionPipeline
        from peft import get_peft_model_state_dict

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        listing = {}
        for comp, model in self.adapter_models().items():
            for name in getattr(model, "peft_config", {}):
                L.export_peft_adapter(model, name, folder / f"{comp}.{name}")
                listing[f"{comp}.{name}"] = {"component": comp, "adapter": name}
        unet_cfgs = getattr(self.unet, "peft_config", {})
        if unet_cfgs:
            sd = {}
            for name in unet_cfgs:
                sd.update(get_peft_model_state_dict(self.unet, adapter_name=name))
            ranks = {c.r for c in unet_cfgs.values()}
            alphas = {c.lora_alpha for c in unet_cfgs.values()}
            meta = None
            if len(ranks) == 1 and len(alphas) == 1:
                targets = sorted({t for c in unet_cfgs.values() for t in c.target_modules})
                meta = {"r": ranks.pop(), "lora_alpha": alphas.pop(), "target_modules": targets}
            StableDiffusionPipeline.save_lora_weights(
                str(folder), unet_lora_layers={k: v.detach().float().cpu() for k, v in sd.items()},
                safe_serialization=True, unet_lora_adapter_metadata=meta)
        write_export_record(
            folder, self, network="OneStepSD", step=step, adapters=listing, extra=extra,
            fmt="ggt-ir LoRA adapters (peft layout per adapter; diffusers SD-pipeline file for the UNet)")
        return folder

    @classmethod
    def from_export(cls, folder: str | Path, **overrides) -> "OneStepSD":
        """Rebuild the trained restorer from an export folder (its recorded ``network_g`` + adapters)."""
        return cls(**rebuild_arguments(folder, "OneStepSD", overrides))

    def load_adapters(self, folder: str | Path) -> None:
        folder = Path(folder)
        info = read_export_record(folder, "OneStepSD")
        models = self.adapter_models()
        names = collections.defaultdict(list)
        for sub, entry in info["adapters"].items():
            L.load_peft_adapter(models[entry["component"]], folder / sub, entry["adapter"])
            names[entry["component"]].append(entry["adapter"])
        for comp, ns in names.items():
            L.activate(models[comp], ns)
        for m in models.values():
            m.to(self.dtype_)
        L.mark_only_lora_trainable(self)

    def merge_lora(self) -> int:
        return sum(L.merge_and_strip(m) for m in self.adapter_models().values())
