"""OpenAI's image edit endpoint for the GPT-Image family (``gpt-image-2``, ``gpt-image-1.5``, ``gpt-image-1``).

Request: ``POST {base_url}/v1/images/edits``, ``Authorization: Bearer $OPENAI_API_KEY``, multipart/form-data
with the file part ``image`` (PNG) and the fields ``model``, ``prompt``, ``n`` (1), ``size``, ``quality``,
``output_format`` and, where the model takes it, ``input_fidelity``. Response::

    {"created": 1713833628, "data": [{"b64_json": "..."}], "output_format": "png", "quality": "medium",
     "size": "1536x1024", "usage": {"input_tokens": ..., "input_tokens_details": {"image_tokens": ...,
     "text_tokens": ...}, "output_tokens": ..., "total_tokens": ...}}

The endpoint has no seed: candidates of one prompt differ by sampling only (the manifest records the candidate
index as the seed, with ``seeded: false``). Errors are ``{"error": {"message", "type", "param", "code"}}``; a
429 with ``insufficient_quota`` is a billing problem and is not retried. Shapes in tests/data/synth/openai_*.json.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ggt_ir.synth.generators.base import (GenContext, GenResult, Generator, decode_image_bytes, nearest_aspect,
                                          to_png_bytes)
from ggt_ir.synth.http import GenerationRefused, HTTPClient, api_key

OPENAI_BASE_URL = "https://api.openai.com"
SIZES = {"1024x1024": 1.0, "1536x1024": 1.5, "1024x1536": 2 / 3}  # accepted by every GPT-Image model
FLEXIBLE_SIZE_MODELS = ("gpt-image-2",)  # any WxH in multiples of 16 (max edge 3840, >= 655,360 pixels)


def flexible_size(w: int, h: int, area: int = 1024 * 1024) -> tuple[str, float]:
    """A WxH in multiples of 16 with about ``area`` pixels and the LQ's aspect ratio (gpt-image-2's rules)."""
    a = max(1 / 3, min(3.0, w / h))
    sw = min(3840, max(16, round((area * a) ** 0.5 / 16) * 16))
    sh = min(3840, max(16, round(sw / a / 16) * 16))
    while sw * sh < 655_360:
        sw, sh = sw + 16, round((sw + 16) / a / 16) * 16
    return f"{sw}x{sh}", sw / sh


def openai_usage_cost(usage: dict, prices: dict) -> float:
    """USD of one call from ``usage``: text and image input tokens, image output tokens."""
    if not usage:
        return float(prices.get("per_image_fallback", 0.0))
    det = usage.get("input_tokens_details") or {}
    text_in = det.get("text_tokens", usage.get("input_tokens", 0) if not det else 0)
    return (text_in * prices.get("text_input_per_mtok", 0.0) + det.get("image_tokens", 0)
            * prices.get("image_input_per_mtok", 0.0) + usage.get("output_tokens", 0)
            * prices.get("image_output_per_mtok", 0.0)) / 1e6


@dataclass
class OpenAIImageOptions:
    type: str = "OpenAIImage"
    name: Optional[str] = None
    candidates: Optional[int] = None
    model: str = "gpt-image-2"
    base_url: str = OPENAI_BASE_URL
    api_key_env: str = "OPENAI_API_KEY"
    size: str = "match"  # match: the LQ's aspect (gpt-image-2: any WxH; older: 1024x1024, 1536x1024, 1024x1536) | WxH | auto
    quality: Optional[str] = "medium"  # low | medium | high | auto; null: omit
    input_fidelity: Optional[str] = None  # high | low (gpt-image-1 / 1.5); null: omit
    output_format: str = "png"
    timeout: float = 300.0
    max_retries: int = 5
    backoff: float = 2.0
    requests_per_minute: float = 0.0
    # USD; defaults: OpenAI's price list for gpt-image-2 (docs/synthesis.md, "Cost")
    text_input_per_mtok: float = 5.0
    image_input_per_mtok: float = 8.0
    image_output_per_mtok: float = 30.0
    per_image_fallback: float = 0.053  # when a response carries no usage (1024x1024, medium)


class OpenAIImageGenerator(Generator):
    Options = OpenAIImageOptions
    kind = "api"
    seeded = False

    def __init__(self, opts: OpenAIImageOptions, ctx: GenContext):
        super().__init__(opts, ctx)
        self.key = api_key(opts.api_key_env, f"generator {self.name!r} ({opts.type})", "api_key_env")
        self.http = HTTPClient(f"openai:{opts.model}", secrets=[self.key], timeout=(10.0, opts.timeout),
                               max_retries=opts.max_retries, backoff=opts.backoff,
                               requests_per_minute=opts.requests_per_minute, log_path=ctx.api_log)
        self.url = f"{opts.base_url.rstrip('/')}/v1/images/edits"

    def form(self, lq: np.ndarray, prompt: str) -> tuple[dict, float | None]:
        o = self.opts
        h, w = lq.shape[:2]
        expected = None
        if o.size == "match":
            flexible = o.model.startswith(FLEXIBLE_SIZE_MODELS)
            size, expected = flexible_size(w, h) if flexible else nearest_aspect(w, h, SIZES)
        else:
            size = o.size
            if "x" in size:
                sw, sh = (int(v) for v in size.split("x"))
                expected = sw / sh
        fields = {"model": o.model, "prompt": prompt, "n": "1", "size": size, "output_format": o.output_format}
        if o.quality:
            fields["quality"] = o.quality
        if o.input_fidelity:
            fields["input_fidelity"] = o.input_fidelity
        return fields, expected

    def generate(self, lq: np.ndarray, prompt: str, seed: int) -> GenResult:
        fields, expected = self.form(lq, prompt)
        png = to_png_bytes(lq)
        reply, info = self.http.post(self.url, headers={"Authorization": f"Bearer {self.key}"}, data=fields,
                                     files={"image": ("lq.png", png, "image/png")},
                                     log_request={**fields, "image": png})
        usage = reply.get("usage") or {}
        cost = openai_usage_cost(usage, vars(self.opts))
        data = reply.get("data") or []
        meta = {"model": self.opts.model, "usage": usage, "attempts": info["attempts"],
                "api_elapsed_s": info["elapsed_s"], "size": reply.get("size"), "quality": reply.get("quality")}
        if not data or not data[0].get("b64_json"):
            err = GenerationRefused(f"generator {self.name!r}: the reply holds no b64_json image"
                                    + (" (it returned a URL; GPT-Image models return base64)" if data and
                                       data[0].get("url") else ""))
            err.cost_usd, err.meta = cost, meta
            raise err
        if data[0].get("revised_prompt"):
            meta["revised_prompt"] = data[0]["revised_prompt"]
        image = decode_image_bytes(base64.b64decode(data[0]["b64_json"]), f"generator {self.name!r}")
        return GenResult(image=image, cost_usd=cost, meta=meta, expected_aspect=expected)
