"""Vision-language models: they write adaptive prompts from the LQ and judge candidates in QC stage 2.

One interface, ``chat(images, text, seed=0, want_json=False) -> VLMReply``. ``QwenVL`` runs a local model
through transformers (Qwen2.5-VL, Qwen3-VL: any ``AutoModelForImageTextToText`` with a chat-template
processor); ``GeminiVLM`` calls ``generateContent`` (text reply). The table is ``ggt_ir.synth.VLMS``.
"""
from __future__ import annotations

import base64
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ggt_ir.synth.generators.base import GenContext, output_options, to_png_bytes


@dataclass
class VLMReply:
    text: str
    cost_usd: float = 0.0
    meta: dict = field(default_factory=dict)


class VLM:
    kind = "local"

    def __init__(self, opts, ctx: GenContext):
        self.opts, self.ctx = opts, ctx
        self.name = getattr(opts, "name", None) or opts.type

    def identity(self) -> dict:
        return output_options(self.opts)

    def chat(self, images: list[np.ndarray], text: str, *, seed: int = 0,
             want_json: bool = False) -> VLMReply:  # pragma: no cover - interface
        raise NotImplementedError


# --------------------------------------------------------------------------- local (transformers)
@dataclass
class QwenVLOptions:
    type: str = "QwenVL"
    name: Optional[str] = None
    pretrained: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # a folder (save_pretrained layout) or a Hub id
    revision: Optional[str] = None
    allow_download: bool = False
    device: str = "auto"
    weight_dtype: str = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    max_new_tokens: int = 160
    do_sample: bool = False
    temperature: float = 0.7  # with do_sample
    max_pixels: Optional[int] = None  # the processor's image budget (None: the processor's own)
    cost_per_gpu_hour: float = 0.0


def _chat_text(processor, n_images: int, text: str) -> str:
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    vision = "<|vision_start|><|image_pad|><|vision_end|>" * n_images  # Qwen's template, without a saved one
    return f"<|im_start|>user\n{vision}{text}<|im_end|>\n<|im_start|>assistant\n"


class QwenVL(VLM):
    Options = QwenVLOptions
    kind = "local"

    def __init__(self, opts: QwenVLOptions, ctx: GenContext):
        super().__init__(opts, ctx)
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from ggt_ir.synth.generators.local import _dtype

        self.device = ctx.device if opts.device == "auto" else opts.device
        local = Path(opts.pretrained).expanduser().is_dir()
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        kw = {} if local else {"revision": opts.revision, "local_files_only": not opts.allow_download or offline}
        pkw = {"max_pixels": opts.max_pixels} if opts.max_pixels else {}
        try:
            self.processor = AutoProcessor.from_pretrained(opts.pretrained, **kw, **pkw)
            self.model = AutoModelForImageTextToText.from_pretrained(
                opts.pretrained, dtype=_dtype(opts.weight_dtype, self.device), **kw)
        except (OSError, ValueError) as e:
            if local:
                raise OSError(f"VLM {opts.pretrained}: not a loadable transformers folder ({str(e).splitlines()[0]})")
            name = opts.pretrained.split("/")[-1]
            raise OSError(f"VLM {opts.pretrained!r} is not on this machine ({str(e).splitlines()[0][:120]}); ggt-ir "
                          f"never downloads silently: `hf download {opts.pretrained} --local-dir /path/to/{name}` and "
                          "set the VLM's pretrained to that folder, or set allow_download: true") from None
        self.model.to(self.device).eval()
        self._lock = threading.Lock()
        self.torch = torch

    def chat(self, images, text, *, seed=0, want_json=False) -> VLMReply:
        from PIL import Image

        o = self.opts
        pil = [Image.fromarray((np.clip(im, 0, 1) * 255).round().astype(np.uint8)) for im in images]
        t0 = time.monotonic()
        with self._lock, self.torch.inference_mode():
            inputs = self.processor(text=[_chat_text(self.processor, len(pil), text)], images=pil or None,
                                    return_tensors="pt").to(self.device)
            gen = dict(max_new_tokens=o.max_new_tokens, do_sample=o.do_sample)
            if o.do_sample:
                self.torch.manual_seed(seed)
                gen["temperature"] = o.temperature
            out = self.model.generate(**inputs, **gen)
        new = out[:, inputs["input_ids"].shape[1]:]
        reply = self.processor.batch_decode(new, skip_special_tokens=True)[0]
        elapsed = time.monotonic() - t0
        return VLMReply(reply, cost_usd=elapsed / 3600 * o.cost_per_gpu_hour,
                        meta={"new_tokens": int(new.shape[1]), "elapsed_s": round(elapsed, 3)})


# --------------------------------------------------------------------------- Gemini (REST)
@dataclass
class GeminiVLMOptions:
    type: str = "GeminiVLM"
    name: Optional[str] = None
    model: str = "gemini-2.5-flash"
    base_url: str = "https://generativelanguage.googleapis.com"
    api_key_env: str = "GEMINI_API_KEY"
    temperature: Optional[float] = 0.2
    max_output_tokens: int = 1024
    thinking_budget: Optional[int] = 0  # generationConfig.thinkingConfig.thinkingBudget (0 = off on 2.5 Flash)
    timeout: float = 120.0
    max_retries: int = 5
    backoff: float = 2.0
    requests_per_minute: float = 0.0
    # USD per 1M tokens; defaults: Google's Gemini API price list for gemini-2.5-flash (docs/synthesis.md, "Cost")
    input_per_mtok: float = 0.30
    output_per_mtok: float = 2.50


class GeminiVLM(VLM):
    Options = GeminiVLMOptions
    kind = "api"

    def __init__(self, opts: GeminiVLMOptions, ctx: GenContext):
        super().__init__(opts, ctx)
        from ggt_ir.synth.http import HTTPClient, api_key

        self.key = api_key(opts.api_key_env, f"VLM {self.name!r} ({opts.type})", "api_key_env")
        self.http = HTTPClient(f"gemini:{opts.model}", secrets=[self.key], timeout=(10.0, opts.timeout),
                               max_retries=opts.max_retries, backoff=opts.backoff,
                               requests_per_minute=opts.requests_per_minute, log_path=ctx.api_log)
        self.url = f"{opts.base_url.rstrip('/')}/v1beta/models/{opts.model}:generateContent"

    def chat(self, images, text, *, seed=0, want_json=False) -> VLMReply:
        from ggt_ir.synth.http import APIError

        o = self.opts
        parts = [{"text": text}] + [{"inline_data": {"mime_type": "image/png",
                                                     "data": base64.b64encode(to_png_bytes(im)).decode()}}
                                    for im in images]
        gen: dict = {"maxOutputTokens": o.max_output_tokens, "seed": int(seed)}
        if o.temperature is not None:
            gen["temperature"] = o.temperature
        if want_json:
            gen["responseMimeType"] = "application/json"
        if o.thinking_budget is not None:
            gen["thinkingConfig"] = {"thinkingBudget": o.thinking_budget}
        body = {"contents": [{"role": "user", "parts": parts}], "generationConfig": gen}
        reply, info = self.http.post(self.url, headers={"x-goog-api-key": self.key,
                                                        "Content-Type": "application/json"}, json_body=body)
        usage = reply.get("usageMetadata") or {}
        cost = (usage.get("promptTokenCount", 0) * o.input_per_mtok + (usage.get("candidatesTokenCount", 0)
                + usage.get("thoughtsTokenCount", 0)) * o.output_per_mtok) / 1e6
        from ggt_ir.synth.generators.gemini import gemini_parts

        parts_out, why = gemini_parts(reply)
        texts = [p["text"] for p in parts_out if p.get("text") and not p.get("thought")]
        if not texts:
            raise APIError(f"VLM {self.name!r}: the reply holds no text ({why})")
        return VLMReply("".join(texts), cost_usd=cost, meta={"usage": usage, "attempts": info["attempts"],
                                                             "api_elapsed_s": info["elapsed_s"],
                                                             "model": reply.get("modelVersion", o.model)})
