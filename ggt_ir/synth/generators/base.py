"""The generator interface every MFM backend implements.

``Generator(opts, ctx)`` is built once per process; ``generate(lq, prompt, seed)`` returns a
:class:`GenResult` for one candidate: the image (float32 RGB HWC in [0, 1], any size: QC stage 1 checks the
aspect ratio and brings it to the LQ's size), its cost in USD, timings and provider metadata, and the aspect
ratio the backend was asked for (API sizes are quantised). ``identity()`` is what makes a cached candidate
reusable on resume: a candidate generated with a different identity, prompt or seed is generated again.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np


# option keys that do not change what a backend returns (transport, prices, bookkeeping): left out of the
# fingerprints that decide whether a cached candidate or prompt, or a finished image, can be reused
NON_OUTPUT_KEYS = {"name", "candidates", "api_key_env", "timeout", "max_retries", "requests_per_minute", "device",
                   "backoff", "base_url", "allow_download", "cost_per_gpu_hour", "cost_per_image", "cost_per_call",
                   "per_image_fallback"}


def output_options(opts) -> dict:
    d = asdict(opts) if not isinstance(opts, dict) else dict(opts)
    return {k: v for k, v in d.items() if k not in NON_OUTPUT_KEYS and not k.endswith("_per_mtok")}


@dataclass
class GenContext:
    device: str = "cpu"  # this process's accelerator (accelerate's PartialState().device)
    run_dir: Path = Path(".")
    rank: int = 0
    api_log: Optional[Path] = None  # where API requests are logged (None: no log)
    log: Any = print


@dataclass
class GenResult:
    image: np.ndarray
    cost_usd: float = 0.0
    meta: dict = field(default_factory=dict)  # usage, model version, attempts, ...
    expected_aspect: Optional[float] = None  # w / h the backend was asked for; None: the LQ's


class Generator:
    """Subclasses define ``Options`` (a dataclass with at least ``type``, ``name``, ``candidates``) and
    ``generate``. ``kind`` is ``local`` (one model in this process; calls are serialised) or ``api``."""

    kind = "local"
    seeded = True  # False: the backend has no seed; candidates differ by sampling only

    def __init__(self, opts, ctx: GenContext):
        self.opts, self.ctx = opts, ctx
        self.name = opts.name or opts.type

    def identity(self) -> dict:
        """Options that change the output (recorded in every candidate; a change regenerates cached ones)."""
        return output_options(self.opts)

    def fingerprint(self, prompt: str, seed: int) -> str:
        blob = json.dumps({"g": self.identity(), "p": prompt, "s": seed}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def generate(self, lq: np.ndarray, prompt: str, seed: int) -> GenResult:  # pragma: no cover - interface
        raise NotImplementedError


def to_png_bytes(img: np.ndarray) -> bytes:
    """float RGB HWC [0, 1] (or uint8) -> PNG bytes, for API uploads."""
    import cv2

    u8 = img if img.dtype == np.uint8 else (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(u8, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the LQ image as PNG")
    return buf.tobytes()


def decode_image_bytes(data: bytes, who: str) -> np.ndarray:
    """Image bytes from an API -> float32 RGB HWC in [0, 1]."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    if img is None:
        from ggt_ir.synth.http import APIError

        raise APIError(f"{who}: the returned image could not be decoded ({len(data)} bytes)")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)


def nearest_aspect(w: int, h: int, choices: dict[str, float]) -> tuple[str, float]:
    """The choice whose aspect ratio (w / h) is closest in log scale."""
    import math

    a = w / h
    name = min(choices, key=lambda k: abs(math.log(choices[k] / a)))
    return name, choices[name]
