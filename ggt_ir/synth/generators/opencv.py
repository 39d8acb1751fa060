"""A classical, non-generative reference: OpenCV denoising + local contrast + mild sharpening.

Not a foundation model. It gives the MFM study a cheap, deterministic arm (what do the generators gain over
classical processing?) and the demo an output that is not noise. No prompt, no seed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ggt_ir.synth.generators.base import GenContext, GenResult, Generator


@dataclass
class OpenCVBaselineOptions:
    type: str = "OpenCVBaseline"
    name: Optional[str] = None
    candidates: Optional[int] = 1  # deterministic: more seeds give the same image
    denoise_h: float = 7.0  # cv2.fastNlMeansDenoisingColored strength (luminance and colour)
    clahe_clip: float = 2.0  # CLAHE on Lab L; 0 = off
    sharpen: float = 0.5  # unsharp-mask amount; 0 = off


class OpenCVBaselineGenerator(Generator):
    Options = OpenCVBaselineOptions
    kind = "local"
    seeded = False

    def __init__(self, opts: OpenCVBaselineOptions, ctx: GenContext):
        super().__init__(opts, ctx)

    def generate(self, lq: np.ndarray, prompt: str, seed: int) -> GenResult:
        import cv2

        o = self.opts
        t0 = time.monotonic()
        u8 = (np.clip(lq, 0, 1) * 255).round().astype(np.uint8)
        bgr = cv2.cvtColor(u8, cv2.COLOR_RGB2BGR)
        if o.denoise_h > 0:
            bgr = cv2.fastNlMeansDenoisingColored(bgr, None, o.denoise_h, o.denoise_h, 7, 21)
        if o.clahe_clip > 0:
            lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
            lab[..., 0] = cv2.createCLAHE(clipLimit=o.clahe_clip, tileGridSize=(8, 8)).apply(lab[..., 0])
            bgr = cv2.cvtColor(lab, cv2.COLOR_LAB2BGR)
        out = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
        if o.sharpen > 0:
            blur = cv2.GaussianBlur(out, (0, 0), 1.5)
            out = np.clip(out + o.sharpen * (out - blur), 0, 1)
        return GenResult(image=out.astype(np.float32), meta={"elapsed_s": round(time.monotonic() - t0, 4)})
