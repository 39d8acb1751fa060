"""Google's Gemini image models through the REST ``generateContent`` method (the paper's Nano-Banana-2 is
``gemini-3.1-flash-image-preview``).

Request (``POST {base_url}/v1beta/models/{model}:generateContent``, header ``x-goog-api-key``)::

    {"contents": [{"role": "user", "parts": [{"text": PROMPT},
                                             {"inline_data": {"mime_type": "image/png", "data": BASE64}}]}],
     "generationConfig": {"responseModalities": ["IMAGE"], "seed": SEED,
                          "imageConfig": {"aspectRatio": "4:3", "imageSize": "1K"}}}

Response: ``candidates[0].content.parts[]`` holds ``inlineData {mimeType, data}`` (the image) and maybe
``text``; ``usageMetadata`` holds ``promptTokenCount`` and ``candidatesTokensDetails`` per modality, which
give the cost. A reply without an image (``finishReason`` IMAGE_SAFETY / NO_IMAGE, ``promptFeedback.blockReason``)
is a refused candidate, not retried. Shapes recorded in tests/data/synth/gemini_*.json.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from ggt_ir.synth.generators.base import (GenContext, GenResult, Generator, decode_image_bytes, nearest_aspect,
                                          to_png_bytes)
from ggt_ir.synth.http import GenerationRefused, HTTPClient, api_key

GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"
# aspect ratios generateContent's imageConfig accepts (Gemini 2.5/3.x image models)
ASPECT_RATIOS = {"1:1": 1.0, "2:3": 2 / 3, "3:2": 1.5, "3:4": 0.75, "4:3": 4 / 3, "4:5": 0.8, "5:4": 1.25,
                 "9:16": 9 / 16, "16:9": 16 / 9, "21:9": 21 / 9}


def gemini_usage_cost(usage: dict, prices: dict) -> float:
    """USD of one call from ``usageMetadata``: prompt tokens at the input price, output image tokens at the image
    price, output text and thinking tokens at the text price."""
    if not usage:
        return float(prices.get("per_image_fallback", 0.0))
    cost = usage.get("promptTokenCount", 0) * prices.get("input_per_mtok", 0.0) / 1e6
    details = usage.get("candidatesTokensDetails") or []
    if details:
        for d in details:
            rate = prices.get("image_output_per_mtok", 0.0) if d.get("modality") == "IMAGE" else \
                prices.get("text_output_per_mtok", 0.0)
            cost += d.get("tokenCount", 0) * rate / 1e6
    else:  # no per-modality split: count the output as image tokens
        cost += usage.get("candidatesTokenCount", 0) * prices.get("image_output_per_mtok", 0.0) / 1e6
    cost += usage.get("thoughtsTokenCount", 0) * prices.get("text_output_per_mtok", 0.0) / 1e6
    return cost


def gemini_parts(body: dict) -> tuple[list[dict], str]:
    """(parts of the first candidate, why there are none)."""
    cands = body.get("candidates") or []
    if not cands:
        fb = body.get("promptFeedback") or {}
        return [], f"no candidates (blockReason {fb.get('blockReason', '?')})"
    c = cands[0]
    parts = (c.get("content") or {}).get("parts") or []
    return parts, f"finishReason {c.get('finishReason', '?')}"


@dataclass
class GeminiImageOptions:
    type: str = "GeminiImage"
    name: Optional[str] = None
    candidates: Optional[int] = None
    model: str = "gemini-3.1-flash-image-preview"  # Nano-Banana-2 (gemini-2.5-flash-image: Nano-Banana)
    base_url: str = GEMINI_BASE_URL
    api_key_env: str = "GEMINI_API_KEY"
    image_size: Optional[str] = "1K"  # imageConfig.imageSize: 1K | 2K | 4K (0.5K on 3.1 Flash); null: omit
    aspect_ratio: str = "match"  # match: the supported ratio nearest the LQ's | '4:3' ... | none: omit
    response_modalities: Optional[List[str]] = None  # default ["IMAGE"]
    send_seed: bool = True  # generationConfig.seed = the candidate's seed
    temperature: Optional[float] = None
    timeout: float = 180.0  # read timeout, seconds
    max_retries: int = 5
    backoff: float = 2.0
    requests_per_minute: float = 0.0  # client-side limit per process; 0 = none
    # USD; defaults: Google's Gemini API price list for gemini-3.1-flash-image-preview (docs/synthesis.md, "Cost");
    # input and text output at the higher of the two published listings ($0.25/$1.50 vs $0.50/$3.00 per 1M)
    input_per_mtok: float = 0.50
    text_output_per_mtok: float = 3.00
    image_output_per_mtok: float = 60.0
    per_image_fallback: float = 0.067  # when a response carries no usageMetadata (1K image)

    def __post_init__(self):
        if self.response_modalities is None:
            self.response_modalities = ["IMAGE"]


class GeminiImageGenerator(Generator):
    Options = GeminiImageOptions
    kind = "api"

    def __init__(self, opts: GeminiImageOptions, ctx: GenContext):
        super().__init__(opts, ctx)
        self.key = api_key(opts.api_key_env, f"generator {self.name!r} ({opts.type})", "api_key_env")
        self.http = HTTPClient(f"gemini:{opts.model}", secrets=[self.key], timeout=(10.0, opts.timeout),
                               max_retries=opts.max_retries, backoff=opts.backoff,
                               requests_per_minute=opts.requests_per_minute, log_path=ctx.api_log)
        self.url = f"{opts.base_url.rstrip('/')}/v1beta/models/{opts.model}:generateContent"

    def request_body(self, lq: np.ndarray, prompt: str, seed: int) -> tuple[dict, float | None]:
        o = self.opts
        gen: dict = {"responseModalities": list(o.response_modalities)}
        img_cfg: dict = {}
        expected = None
        h, w = lq.shape[:2]
        if o.aspect_ratio == "match":
            name, expected = nearest_aspect(w, h, ASPECT_RATIOS)
            img_cfg["aspectRatio"] = name
        elif o.aspect_ratio != "none":
            if o.aspect_ratio not in ASPECT_RATIOS:
                raise ValueError(f"generator {self.name!r}: aspect_ratio {o.aspect_ratio!r}; expected match, none "
                                 f"or one of {', '.join(ASPECT_RATIOS)}")
            img_cfg["aspectRatio"], expected = o.aspect_ratio, ASPECT_RATIOS[o.aspect_ratio]
        if o.image_size:
            img_cfg["imageSize"] = o.image_size
        if img_cfg:
            gen["imageConfig"] = img_cfg
        if o.send_seed:
            gen["seed"] = int(seed)
        if o.temperature is not None:
            gen["temperature"] = o.temperature
        data = base64.b64encode(to_png_bytes(lq)).decode()
        body = {"contents": [{"role": "user", "parts": [{"text": prompt},
                                                        {"inline_data": {"mime_type": "image/png", "data": data}}]}],
                "generationConfig": gen}
        return body, expected

    def generate(self, lq: np.ndarray, prompt: str, seed: int) -> GenResult:
        o = self.opts
        body, expected = self.request_body(lq, prompt, seed)
        reply, info = self.http.post(self.url, headers={"x-goog-api-key": self.key, "Content-Type": "application/json"},
                                     json_body=body)
        usage = reply.get("usageMetadata") or {}
        cost = gemini_usage_cost(usage, vars(o))
        parts, why = gemini_parts(reply)
        image = None
        texts = []
        for p in parts:
            inline = p.get("inlineData") or p.get("inline_data")
            if inline and str(inline.get("mimeType") or inline.get("mime_type") or "").startswith("image/") \
                    and image is None:
                image = decode_image_bytes(base64.b64decode(inline.get("data") or ""), f"generator {self.name!r}")
            elif p.get("text") and not p.get("thought"):
                texts.append(p["text"])
        meta = {"model": reply.get("modelVersion", o.model), "usage": usage, "attempts": info["attempts"],
                "api_elapsed_s": info["elapsed_s"], "response_id": reply.get("responseId")}
        if texts:
            meta["text"] = " ".join(texts)[:500]
        if image is None:
            err = GenerationRefused(f"generator {self.name!r}: the reply holds no image ({why})"
                                    + (f"; text: {' '.join(texts)[:160]!r}" if texts else ""))
            err.cost_usd, err.meta = cost, meta
            raise err
        return GenResult(image=image, cost_usd=cost, meta=meta, expected_aspect=expected)
