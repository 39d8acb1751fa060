"""Test and demo stand-ins: a generator with known edits, a scripted VLM, and a tiny random Qwen2.5-VL.

* ``FakeEdit`` applies a fixed list of edits to the LQ (``denoise``, ``shift:dx,dy``, ``zoom:s``,
  ``color:dL``, ``resize:WxH``, ``noise`` (a random image from the seed), ``identity``, ``sleep:s``, ``fail``,
  ``refuse``), so each QC check can be made to pass or fail on purpose.
* ``FakeVLM`` answers from scripted replies (``prompt_replies`` for adaptive prompts, ``judge_replies`` for
  QC 2, cycled in call order), so the verdict paths (accept, reject, regenerate, unparsable) can be tested.
  The demo uses it as the QC-2 judge: a random tiny VLM cannot write JSON.
* :func:`save_tiny_qwen25_vl` writes a random Qwen2.5-VL (a few hundred kB) loadable with ``from_pretrained``.

The tiny diffusers pipelines come from :data:`tiny_pipelines` (the one import of that module here).
"""
from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from ggt_ir.testing import pipelines as tiny_pipelines
from ggt_ir.synth.generators.base import GenContext, GenResult, Generator
from ggt_ir.synth.vlm import VLM, VLMReply


@dataclass
class FakeEditOptions:
    type: str = "FakeEdit"
    name: Optional[str] = None
    candidates: Optional[int] = None
    ops: List[str] = field(default_factory=lambda: ["denoise"])
    cost_per_image: float = 0.0  # pretend price, to test cost accounting


def apply_op(img: np.ndarray, op: str, rng: np.random.Generator) -> np.ndarray:
    import cv2

    h, w = img.shape[:2]
    name, _, arg = op.partition(":")
    if name == "identity":
        return img
    if name == "denoise":
        return cv2.GaussianBlur(img, (0, 0), 1.0)
    if name == "shift":
        dx, dy = (float(v) for v in arg.split(","))
        return cv2.warpAffine(img, np.float32([[1, 0, dx], [0, 1, dy]]), (w, h), borderMode=cv2.BORDER_REFLECT)
    if name == "zoom":  # a centre crop of 1/s, scaled back up: the output lost its borders
        s = float(arg)
        ch, cw = round(h / s), round(w / s)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return cv2.resize(img[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_CUBIC)
    if name == "color":
        lab = cv2.cvtColor(np.clip(img, 0, 1).astype(np.float32), cv2.COLOR_RGB2LAB)
        lab[..., 0] = np.clip(lab[..., 0] + float(arg), 0, 100)
        return np.clip(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB), 0, 1)
    if name == "resize":
        rw, rh = (int(v) for v in arg.lower().split("x"))
        return cv2.resize(img, (rw, rh), interpolation=cv2.INTER_AREA)
    if name == "noise":
        return rng.random(img.shape, dtype=np.float32)
    if name == "sleep":  # a slow backend (resume tests kill the run mid-way)
        import time

        time.sleep(float(arg))
        return img
    raise ValueError(f"FakeEdit: unknown op {op!r}")


class FakeEditGenerator(Generator):
    Options = FakeEditOptions
    kind = "local"

    def generate(self, lq: np.ndarray, prompt: str, seed: int) -> GenResult:
        from ggt_ir.synth.http import APIError, GenerationRefused

        rng = np.random.default_rng(seed)
        img = lq.astype(np.float32)
        for op in self.opts.ops:
            if op == "fail":
                raise APIError(f"generator {self.name!r}: FakeEdit was told to fail", 503)
            if op == "refuse":
                err = GenerationRefused(f"generator {self.name!r}: the reply holds no image (finishReason IMAGE_SAFETY)")
                err.cost_usd, err.meta = self.opts.cost_per_image, {}
                raise err
            img = apply_op(img, op, rng)
        return GenResult(image=np.clip(img, 0, 1).astype(np.float32), cost_usd=self.opts.cost_per_image,
                         meta={"ops": list(self.opts.ops)})


@dataclass
class FakeVLMOptions:
    type: str = "FakeVLM"
    name: Optional[str] = None
    prompt_replies: List[str] = field(default_factory=lambda: [
        "Remove the degradation (mean level {mean:.2f}) and keep every object, face and text unchanged."])
    judge_replies: List[str] = field(default_factory=lambda: [
        '{"verdict": "accept", "reasons": ["scripted accept (FakeVLM)"]}'])
    cost_per_call: float = 0.0


class FakeVLM(VLM):
    """Replies are chosen by call order (one counter for prompt calls, one for judge calls, per process). A
    prompt reply may use ``{mean}`` (the image's mean level) so prompts differ between images."""

    Options = FakeVLMOptions
    kind = "local"

    def __init__(self, opts: FakeVLMOptions, ctx: GenContext):
        super().__init__(opts, ctx)
        self._prompts = itertools.cycle(opts.prompt_replies)
        self._judges = itertools.cycle(opts.judge_replies)
        self._lock = threading.Lock()
        self.calls: list[dict] = []

    def chat(self, images, text, *, seed=0, want_json=False) -> VLMReply:
        with self._lock:
            judging = len(images) >= 2
            reply = next(self._judges if judging else self._prompts)
            self.calls.append({"images": len(images), "text": text, "judging": judging})
        if not judging and "{mean" in reply:
            reply = reply.format(mean=float(np.mean(images[0])) if images else 0.0)
        return VLMReply(reply, cost_usd=self.opts.cost_per_call, meta={"fake": True})


# --------------------------------------------------------------------------- a tiny random Qwen2.5-VL
_QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_tiny_qwen25_vl(folder: str | Path, seed: int = 0) -> Path:
    """A random Qwen2.5-VL (1 text layer, 1 vision block) + processor with a chat template, saved with
    ``save_pretrained``: ``AutoModelForImageTextToText`` / ``AutoProcessor.from_pretrained(folder)`` load it."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    folder = Path(folder)
    tok, proc, cfg, eos = tiny_pipelines.tiny_qwen25_vl_parts(chat_template=_QWEN_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    model.save_pretrained(str(folder))
    proc.save_pretrained(str(folder))
    return folder


def main(argv: list[str] | None = None) -> int:
    """``python -m ggt_ir.testing.synth --kontext DIR --vl DIR``: the demo's tiny models (skipped when present)."""
    import argparse

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--kontext", help="write a tiny random FLUX.1-Kontext folder here")
    p.add_argument("--vl", help="write a tiny random Qwen2.5-VL folder here")
    a = p.parse_args(argv)
    if a.kontext and not (Path(a.kontext) / "model_index.json").is_file():
        tiny_pipelines.save_tiny_flux_kontext(a.kontext)
    if a.vl and not (Path(a.vl) / "config.json").is_file():
        save_tiny_qwen25_vl(a.vl)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
