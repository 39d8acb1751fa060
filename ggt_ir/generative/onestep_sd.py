"""One-step Stable-Diffusion restorer (OSEDiff-style), built from diffusers components.

    LQ --VAE encoder (+LoRA)--> z --UNet (+LoRA) at timestep t with the prompt embedding--> prediction
       --one scheduler step (x0 from the prediction: epsilon / v_prediction / sample)--> z0 --VAE decoder--> output

Components come from ``pretrained`` (a diffusers folder or a Hub id, see ``pretrained.py``).
LoRA (peft) on the UNet as separate adapters per region (``default_encoder`` = down blocks + ``conv_in``,
``default_decoder`` = up blocks + ``conv_out``, ``default_others`` = mid block and the rest) and one adapter
on the VAE encoder (``default_encoder``, incl. ``quant_conv``), as OSEDiff (cswry/OSEDiff osediff.py:17-67).
The LoRA tensors train (fp32), and with ``train_conv_in`` the UNet's ``conv_in`` trains fully, as OSEDiff
(osediff.py:97, train_osediff.py:194); frozen weights are held in ``weight_dtype``. ``state_dict()`` holds
the trained tensors only (see ``lora.py``).

Precision (``precise_x0``): at t = 999, x0 = (z - 0.9977 eps) / 0.0683 multiplies the rounding of z and eps by
~14.6, so the layers that produce them (the UNet's ``conv_out``, the VAE encoder's ``conv_out`` and
``quant_conv``) are held and run in fp32 and x0 is computed in fp32, whatever ``weight_dtype`` and autocast.
The text encoder is a frozen helper outside the module tree (``text_encoders``: gpu | offload | cpu); prompt
embeddings are cached.

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
from ggt_ir.generative.memory import TextEncoders, run_in_fp32, set_attention, set_vae_memory
from ggt_ir.utils.tiling import tiled_apply

SD_SUBFOLDERS = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
VAE_SAMPLE = ("train", "always", "never")  # when the VAE posterior is sampled (else its mode is used)
CONV_IN_FILE = "unet_conv_in.safetensors"
LORA_MARK_ = L.LORA_MARK  # the fully trained conv_in of an export (train_conv_in)
# the layers whose outputs feed x0 (precise_x0): held and run in fp32
FP32_LAYERS = {"unet": ("conv_out",), "vae": ("encoder.conv_out", "quant_conv")}
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
        train_conv_in: bool = True,  # train the UNet's conv_in fully, as OSEDiff (osediff.py:97)
        adapters: Optional[str] = None,  # start from exported adapters (a models/net_g_* folder)
        weight_dtype: str = "auto",  # auto (from train.mixed_precision) | fp32 | bf16 | fp16
        precise_x0: bool = True,  # z, the UNet output and x0 in fp32 whatever weight_dtype (see module doc)
        vae_sample: str = "train",  # train (sample in training, mode at inference) | always (OSEDiff) | never
        gradient_checkpointing: bool = False,
        attention: str = "sdpa",  # sdpa | xformers
        vae_tiling: bool = False,  # diffusers' tiled VAE encode/decode (training and inference)
        vae_slicing: bool = False,  # diffusers' per-image VAE passes over a batch
        text_encoders: str = "gpu",  # gpu | offload (CPU between cache misses) | cpu
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
        if vae_sample not in VAE_SAMPLE:
            raise ValueError(f"network_g.vae_sample must be one of {', '.join(VAE_SAMPLE)}; got {vae_sample!r}")
        self.config = {k: v for k, v in locals().items() if k not in ("self", "__class__") and not k.startswith("_")
                       and k not in ("AutoencoderKL", "DDPMScheduler", "UNet2DConditionModel", "CLIPTextModel",
                                     "CLIPTokenizer", "load_component")}
        self.dtype_ = resolve_dtype(weight_dtype, _mixed_precision)
        self.text_placement = TextEncoders(text_encoders)
        load = dict(revision=revision, variant=variant, allow_download=allow_download, all_subfolders=SD_SUBFOLDERS)
        self.unet = load_component(UNet2DConditionModel, pretrained, "unet", torch_dtype=self.dtype_, **load)
        self.vae = load_component(AutoencoderKL, pretrained, "vae", torch_dtype=self.dtype_, **load)
        # a frozen helper, not a sub-module: never wrapped or sharded, placed by text_encoders
        self._helpers = {"text_encoder": load_component(CLIPTextModel, pretrained, "text_encoder",
                                                        torch_dtype=self.dtype_, **load)}
        self.tokenizer = load_component(CLIPTokenizer, pretrained, "tokenizer", **{**load, "variant": None})
        sched = load_component(DDPMScheduler, pretrained, "scheduler", **{**load, "variant": None})
        self.register_buffer("alphas_cumprod", sched.alphas_cumprod.float().clone(), persistent=False)
        self.prediction_type = sched.config.prediction_type
        if not 0 <= timestep < len(sched.alphas_cumprod):
            raise ValueError(f"network_g.timestep must be in [0, {len(sched.alphas_cumprod) - 1}], got {timestep}")
        self.timestep, self.prompt_mode, self.prompt = timestep, prompt_mode, prompt
        self.vae_sample, self.precise_x0 = vae_sample, precise_x0
        self.vae_tile, self.latent_tile, self.tile_overlap, self.color_fix = vae_tile, latent_tile, tile_overlap, color_fix
        self.full_trained = ("unet.conv_in.",) if train_conv_in else ()
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
        if precise_x0:
            fp32_layers(self.adapter_models())
        if train_conv_in:  # trained, so fp32 like every trained tensor; its output back in the network's dtype
            run_in_fp32(self.unet.conv_in, output="input")
        self.num_trainable = L.mark_only_lora_trainable(self, full=self.full_trained)
        L.keep_lora_state_only(self, full=self.full_trained)

        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            self.vae.enable_gradient_checkpointing()
        for m in (self.unet, self.vae):
            set_attention(m, attention, dispatcher=False)
        set_vae_memory(self.vae, vae_tiling, vae_slicing)
        # FSDP's transformer-based auto-wrap shards the UNet's (and VAE's) blocks
        self._no_split_modules = list(getattr(self.unet, "_no_split_modules", None) or [])
        self._prompt_cache: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        self.max_cached_prompts = max_cached_prompts

    # ------------------------------------------------------------------ helpers
    @property
    def text_encoder(self):
        return self._helpers["text_encoder"]

    def _apply(self, fn, *args, **kwargs):  # .to(device) / .cuda() move the text encoder too (not to meta)
        super()._apply(fn, *args, **kwargs)
        if not self.text_placement.stays_on_cpu and fn(torch.zeros(0)).device.type != "meta":
            self.text_encoder._apply(fn, *args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # ------------------------------------------------------------------ prompts
    def prompts_for(self, batch_prompts: list[str] | None, n: int) -> list[str]:
        if self.prompt_mode == "empty":
            return [""] * n
        if self.prompt_mode == "batch" and batch_prompts is not None:
            return [p if p else self.prompt for p in batch_prompts]
        return [self.prompt] * n

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states (B, 77, D), cached per prompt (the encoder is frozen); on the UNet's device."""
        device = self.device
        new = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if new:
            with self.text_placement.ready([self.text_encoder], device) as dev:
                ids = self.tokenizer(new, padding="max_length", max_length=self.tokenizer.model_max_length,
                                     truncation=True, return_tensors="pt").input_ids.to(dev)
                emb = self.text_encoder(ids)[0].to(device)
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

    def encode(self, lq: torch.Tensor, sample: bool = False) -> torch.Tensor:
        """Scaled latents: the posterior's sample or its mode. fp32 with ``precise_x0``."""
        x = (lq * 2 - 1).to(self.dtype_)
        dist = self.vae.encode(x).latent_dist
        return (dist.sample() if sample else dist.mode()) * self.vae.config.scaling_factor

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
        # the training forward samples the posterior (vae_sample train/always), as OSEDiff (osediff.py:119)
        z0 = self.denoise(self.encode(lq, sample=self.vae_sample != "never"), emb)
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
        sample = self.vae_sample == "always"  # OSEDiff samples at test time too (osediff.py:323); default: the mode
        z = tiled_apply(lambda t: self.encode(t, sample), x, vt, snap(int(vt * self.tile_overlap), m), scale=1 / f)
        z0 = tiled_apply(lambda t: self.denoise(t, emb), z, lt, snap(int(lt * self.tile_overlap), self.unet_factor))
        out = tiled_apply(self.decode, z0, vt // f, snap(int(vt * self.tile_overlap), m) // f, scale=f)
        out = out[..., :H, :W]
        return color_fix(out, lq, fix).float().clamp(0, 1)

    # ------------------------------------------------------------------ adapters
    def adapter_models(self) -> dict:
        return {"unet": self.unet, "vae": self.vae}

    def conv_in_state(self) -> dict:
        """The trained conv_in as diffusers UNet keys (``conv_in.weight``, ``conv_in.bias``)."""
        layer = self.unet.conv_in
        layer = getattr(layer, "base_layer", layer)
        return {f"conv_in.{k}": v.detach().float().cpu().contiguous() for k, v in layer.state_dict().items()}

    def adapter_info(self) -> dict:
        return {k: L.adapter_summary(m) for k, m in self.adapter_models().items()}

    def export_adapters(self, folder: str | Path, step: int, extra: dict | None = None,
                        state: dict | None = None) -> Path:
        """peft folders per adapter (``unet.default_encoder/`` ...), the UNet LoRA in diffusers' SD-pipeline
        format (``pytorch_lora_weights.safetensors``, for ``pipe.load_lora_weights``), the trained conv_in and
        ``ggt_ir_adapter.json``. ``state``: the trained tensors gathered from sharded (FSDP) ranks, keyed as this
        module's ``state_dict``; default: the module's own."""
        from diffusers import StableDiffusionPipeline
        from peft import get_peft_model_state_dict

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)

        def part(comp):  # a component's share of the gathered state, keyed as its own state_dict
            return None if state is None else {k[len(comp) + 1:]: v for k, v in state.items() if k.startswith(comp + ".")}

        listing = {}
        for comp, model in self.adapter_models().items():
            for name in getattr(model, "peft_config", {}):
                L.export_peft_adapter(model, name, folder / f"{comp}.{name}", state=part(comp))
                listing[f"{comp}.{name}"] = {"component": comp, "adapter": name}
        unet_cfgs = getattr(self.unet, "peft_config", {})
        if unet_cfgs:
            sd = {}
            for name in unet_cfgs:
                sd.update(get_peft_model_state_dict(self.unet, state_dict=part("unet"), adapter_name=name))
            ranks = {c.r for c in unet_cfgs.values()}
            alphas = {c.lora_alpha for c in unet_cfgs.values()}
            meta = None
            if len(ranks) == 1 and len(alphas) == 1:
                targets = sorted({t for c in unet_cfgs.values() for t in c.target_modules})
                meta = {"r": ranks.pop(), "lora_alpha": alphas.pop(), "target_modules": targets}
            StableDiffusionPipeline.save_lora_weights(
                str(folder), unet_lora_layers={k: v.detach().float().cpu() for k, v in sd.items()},
                safe_serialization=True, unet_lora_adapter_metadata=meta)
        trained = {}
        if self.full_trained:
            from safetensors.torch import save_file

            conv_in = self.conv_in_state() if state is None else {
                "conv_in." + k.rsplit(".", 1)[1]: v.detach().float().cpu().contiguous()
                for k, v in state.items() if k.startswith("unet.conv_in.") and LORA_MARK_ not in k}
            save_file(conv_in, str(folder / CONV_IN_FILE), metadata={"format": "pt"})
            trained["unet.conv_in"] = CONV_IN_FILE
        write_export_record(
            folder, self, network="OneStepSD", step=step, adapters=listing, extra=extra, trained_modules=trained,
            fmt="ggt-ir LoRA adapters (peft layout per adapter; diffusers SD-pipeline file for the UNet; "
                "the fully trained UNet conv_in in " + CONV_IN_FILE + ")")
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
        # the LoRA tensors stay fp32 as exported (a cast to a bf16 weight_dtype here would round them)
        conv_in = info.get("trained_modules", {}).get("unet.conv_in")
        if conv_in:
            if self.full_trained:  # held in fp32 when trained (run_in_fp32): load the exported values unrounded
                getattr(self.unet.conv_in, "base_layer", self.unet.conv_in).float()
            load_conv_in(self.unet, folder / conv_in)
        L.mark_only_lora_trainable(self, full=self.full_trained)

    def merge_lora(self) -> int:
        return sum(L.merge_and_strip(m) for m in self.adapter_models().values())


def fp32_layers(models: dict) -> list[str]:
    """Hold and run the layers that feed x0 in fp32 (:data:`FP32_LAYERS`); their names."""
    done = []
    for comp, names in FP32_LAYERS.items():
        for name in names:
            run_in_fp32(models[comp].get_submodule(name))
            done.append(f"{comp}.{name}")
    return done


def load_conv_in(unet, path: str | Path) -> None:
    """Put an exported, fully trained conv_in (:data:`CONV_IN_FILE`) into ``unet`` (peft-wrapped or not):
    also for diffusers' pipeline, after ``pipe.load_lora_weights(folder)``: ``load_conv_in(pipe.unet, file)``."""
    from safetensors.torch import load_file

    state = {k.removeprefix("conv_in."): v for k, v in load_file(str(path)).items()}
    layer = getattr(unet.conv_in, "base_layer", unet.conv_in)
    with torch.no_grad():
        for k, v in state.items():
            getattr(layer, k).copy_(v)
