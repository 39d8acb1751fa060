"""Local generators through diffusers: FLUX.1-Kontext, Qwen-Image-Edit and Qwen-Image-Edit-2509/2511 ("Plus").

FLUX.1-Kontext and Qwen-Image-Edit run through our own :class:`ggt_ir.generative.editor.EditorLoRA` (the class
the trainer finetunes), so an adapter exported by ``model_type: editor_lora`` is a generator as it is:
``adapter: experiments/<run>/models/net_g_latest`` (synthesize -> train -> synthesize better). The 2509/2511
releases use a different prompt template and condition sizes, implemented by diffusers'
``QwenImageEditPlusPipeline``; our exported ``pytorch_lora_weights.safetensors`` loads into it with
``load_lora_weights``.

Every local editor is built by ONE function, :func:`load_local_editor` (the seam where
``ggt_ir.inference.loader.load_restorer`` can take over). It returns an object with
``restore(lq, prompts, seed=, num_inference_steps=, guidance_scale=, true_cfg_scale=, negative_prompt=)``.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ggt_ir.synth.generators.base import GenContext, GenResult, Generator

HUB_IDS = {"flux_kontext": "black-forest-labs/FLUX.1-Kontext-dev", "qwen_image_edit": "Qwen/Qwen-Image-Edit",
           "qwen_image_edit_plus": "Qwen/Qwen-Image-Edit-2509"}


def _dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"weight_dtype must be auto, fp32, bf16 or fp16; got {name!r}")
    return table[name]


class PlusPipelineEditor:
    """Qwen-Image-Edit-2509/2511 through diffusers' ``QwenImageEditPlusPipeline`` (its own template and sizes)."""

    def __init__(self, pretrained: str, adapter: str | None, *, device: str, dtype, revision=None, variant=None,
                 allow_download: bool = False, bucket_area: int = 1024 * 1024, num_inference_steps: int = 40,
                 true_cfg_scale: float = 4.0, guidance_scale: float | None = 1.0, negative_prompt: str = " "):
        from diffusers import QwenImageEditPlusPipeline

        from ggt_ir.generative.editors.qwen_image_edit import QwenImageEdit
        from ggt_ir.generative.pretrained import PretrainedNotFoundError, missing_message, resolve

        src, local = resolve(pretrained, list(QwenImageEdit.subfolders), revision)
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        kw = {} if local else {"revision": revision, "local_files_only": not allow_download or offline}
        if variant:
            kw["variant"] = variant
        try:
            self.pipe = QwenImageEditPlusPipeline.from_pretrained(src, torch_dtype=dtype, **kw)
        except (OSError, ValueError) as e:
            if local:
                raise
            raise PretrainedNotFoundError(missing_message(pretrained, revision, "QwenImageEditPlusPipeline",
                                                          list(QwenImageEdit.subfolders), str(e).splitlines()[0]))
        if adapter:
            self.pipe.load_lora_weights(adapter)
        self.pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.device, self.bucket_area = device, bucket_area
        self.defaults = dict(num_inference_steps=num_inference_steps, true_cfg_scale=true_cfg_scale,
                             guidance_scale=guidance_scale, negative_prompt=negative_prompt)

    def bucket_for(self, h: int, w: int) -> tuple[int, int]:
        a = w / h
        bw = max(32, round((self.bucket_area * a) ** 0.5 / 32) * 32)
        bh = max(32, round(bw / a / 32) * 32)
        return bh, bw

    def restore(self, lq, prompts, *, seed: int = 0, num_inference_steps=None, guidance_scale=None,
                true_cfg_scale=None, negative_prompt=None):
        import torch
        from PIL import Image

        arr = (lq[0].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        h, w = self.bucket_for(*arr.shape[:2])
        d = self.defaults
        out = self.pipe(image=[Image.fromarray(arr)], prompt=prompts[0],
                        negative_prompt=d["negative_prompt"] if negative_prompt is None else negative_prompt,
                        true_cfg_scale=d["true_cfg_scale"] if true_cfg_scale is None else true_cfg_scale,
                        guidance_scale=d["guidance_scale"] if guidance_scale is None else guidance_scale,
                        num_inference_steps=num_inference_steps or d["num_inference_steps"], height=h, width=w,
                        generator=torch.Generator("cpu").manual_seed(seed), output_type="pt")
        return out.images[:1].float().clamp(0, 1)


def load_local_editor(family: str, pretrained: str | None = None, adapter: str | None = None, *,
                      device: str = "cpu", weight_dtype: str = "auto", revision: str | None = None,
                      variant: str | None = None, allow_download: bool = False, bucket_area: int = 1024 * 1024,
                      **inference):
    """Build a local editor: ``family`` flux_kontext | qwen_image_edit (our EditorLoRA, optionally with an
    exported adapter folder) | qwen_image_edit_plus (2509/2511, diffusers' pipeline). ``pretrained`` is a
    folder in diffusers layout or a Hub id (read from the local cache unless ``allow_download``); it defaults to
    the adapter's recorded base model, then to the family's Hub id. ``inference`` holds sampler settings left
    ``None`` for the model's defaults."""
    inference = {k: v for k, v in inference.items() if v is not None}
    dtype = _dtype(weight_dtype, device)
    if family == "qwen_image_edit_plus":
        return PlusPipelineEditor(pretrained or HUB_IDS[family], adapter, device=device, dtype=dtype,
                                  revision=revision, variant=variant, allow_download=allow_download,
                                  bucket_area=bucket_area, **inference)
    from ggt_ir.generative.adapters import ADAPTER_JSON
    from ggt_ir.inference.loader import load_restorer

    dt = {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}[str(dtype)]
    # prompt_mode batch: restore() follows the prompt it is given (fixed mode would use the training prompt)
    common = dict(weight_dtype=dt, bucket_area=bucket_area, allow_download=allow_download, prompt_mode="batch",
                  **inference)
    if adapter:
        info_file = Path(adapter) / ADAPTER_JSON
        if not info_file.is_file():
            raise FileNotFoundError(f"adapter {adapter}: no {ADAPTER_JSON}; expected a folder exported by an "
                                    "editor_lora run (experiments/<name>/models/net_g_<iter>)")
        recorded = json.loads(info_file.read_text()).get("family")
        if recorded and recorded != family:
            raise ValueError(f"adapter {adapter} was trained for {recorded}, but this generator is {family}; use "
                             f"the generator type for {recorded}")
        extra = {"pretrained": pretrained} if pretrained else {}
        if revision or variant:
            extra.update(revision=revision, variant=variant)
        restorer = load_restorer(adapter, overrides={**extra, **common}, device=device)
    else:
        restorer = load_restorer(network_g={"type": "EditorLoRA", "pretrained": pretrained or HUB_IDS[family],
                                            "family": family, "revision": revision, "variant": variant,
                                            "lora_rank": 0}, overrides=common, device=device)
    editor = restorer.model  # the one loader builds every restorer; synthesis drives the editor's sampler itself
    return editor.to(device).eval()


@dataclass
class EditorOptions:
    type: str = "FluxKontext"
    name: Optional[str] = None
    candidates: Optional[int] = None  # seeds for this generator (default candidates.per_generator)
    pretrained: Optional[str] = None  # diffusers folder or Hub id; default: the adapter's base, else the release
    adapter: Optional[str] = None  # an exported EditorLoRA folder (experiments/<run>/models/net_g_<iter>)
    revision: Optional[str] = None
    variant: Optional[str] = None
    allow_download: bool = False
    weight_dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU | fp32 | bf16 | fp16
    bucket_area: int = 1024 * 1024  # the model works at about this many pixels (the output is resized back)
    num_inference_steps: Optional[int] = None  # None: the model's / adapter's default
    guidance_scale: Optional[float] = None
    true_cfg_scale: Optional[float] = None
    negative_prompt: Optional[str] = None
    device: str = "auto"  # auto: this process's accelerator
    cost_per_gpu_hour: float = 0.0  # USD; the candidate's cost is its wall time at this rate


class _EditorGenerator(Generator):
    family = "flux_kontext"
    kind = "local"

    def __init__(self, opts, ctx: GenContext):
        super().__init__(opts, ctx)
        device = ctx.device if opts.device == "auto" else opts.device
        self.device = device
        self.editor = load_local_editor(
            self.family, opts.pretrained, opts.adapter, device=device, weight_dtype=opts.weight_dtype,
            revision=opts.revision, variant=opts.variant, allow_download=opts.allow_download,
            bucket_area=opts.bucket_area, num_inference_steps=opts.num_inference_steps,
            guidance_scale=opts.guidance_scale, true_cfg_scale=opts.true_cfg_scale,
            negative_prompt=opts.negative_prompt)

    def identity(self) -> dict:
        d = super().identity()
        d["family"] = self.family
        return d

    def generate(self, lq: np.ndarray, prompt: str, seed: int) -> GenResult:
        import torch

        o = self.opts
        x = torch.from_numpy(np.ascontiguousarray(lq.transpose(2, 0, 1)))[None].to(self.device)
        t0 = time.monotonic()
        kw = {k: getattr(o, k) for k in ("num_inference_steps", "true_cfg_scale", "negative_prompt")
              if getattr(o, k) is not None}
        if o.guidance_scale is not None:
            kw["guidance_scale"] = o.guidance_scale
        with torch.inference_mode():
            out = self.editor.restore(x, [prompt], seed=seed, **kw)
        img = out[0].float().cpu().permute(1, 2, 0).numpy()
        elapsed = time.monotonic() - t0
        h, w = img.shape[:2]
        return GenResult(image=np.ascontiguousarray(img), cost_usd=elapsed / 3600 * o.cost_per_gpu_hour,
                         meta={"device": str(self.device), "family": self.family, "output_size": [h, w]},
                         expected_aspect=w / h)


@dataclass
class FluxKontextOptions(EditorOptions):
    type: str = "FluxKontext"


@dataclass
class QwenImageEditOptions(EditorOptions):
    type: str = "QwenImageEdit"


@dataclass
class QwenImageEditPlusOptions(EditorOptions):
    type: str = "QwenImageEditPlus"


class FluxKontextGenerator(_EditorGenerator):
    """FLUX.1-Kontext-dev (FLUX.1 [dev] Non-Commercial License; docs/synthesis.md, "Generators")."""

    Options = FluxKontextOptions
    family = "flux_kontext"


class QwenImageEditGenerator(_EditorGenerator):
    """Qwen-Image-Edit (Apache-2.0)."""

    Options = QwenImageEditOptions
    family = "qwen_image_edit"


class QwenImageEditPlusGenerator(_EditorGenerator):
    """Qwen-Image-Edit-2509 / -2511 (Apache-2.0), through QwenImageEditPlusPipeline."""

    Options = QwenImageEditPlusOptions
    family = "qwen_image_edit_plus"
