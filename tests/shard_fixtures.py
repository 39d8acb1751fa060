"""Tiny paired trees in several layouts, and hand-made shards, for the data-layer tests."""
from __future__ import annotations

import io
import json
import tarfile
import zlib
from pathlib import Path

import cv2
import numpy as np


def image(seed: int, h: int = 32, w: int = 32) -> np.ndarray:
    """A smooth random RGB image (compresses like a photo, not like noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def write(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, arr[..., ::-1].copy())
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def encode(arr: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, arr[..., ::-1].copy())
    assert ok
    return buf.tobytes()


def layout_a(root: Path, n_per: int = 3) -> set[str]:
    """<split>/<Category>/{LQ,GT}/<stem>.png; returns the expected keys."""
    keys = set()
    for split, cats in (("train", ("Rain", "snow", "Low-Light")), ("test", ("haze",))):
        for ci, cat in enumerate(cats):
            for k in range(n_per):
                seed = zlib.crc32(f"{split}/{cat}/{k}".encode()) % 10_000
                write(root / split / cat / "LQ" / f"img{k}.png", image(seed))
                write(root / split / cat / "GT" / f"img{k}.png", image(seed + 1))
                keys.add(f"{split}/{cat}/img{k}")
    return keys


def layout_b(root: Path, n_per: int = 3) -> set[str]:
    """{input,target}/<split>/<category>/<stem>.{png,jpg} (different extensions); returns the expected keys."""
    keys = set()
    for split, cats in (("train", ("old_photo", "mixed")),):
        for cat in cats:
            for k in range(n_per):
                seed = 500 + zlib.crc32(f"{cat}/{k}".encode()) % 10_000
                write(root / "input" / split / cat / f"p{k}.png", image(seed))
                write(root / "target" / split / cat / f"p{k}.jpg", image(seed + 1))
                keys.add(f"{split}/{cat}/p{k}")
    return keys


def tar_shard(path: Path, samples: list[dict]) -> Path:
    """Write a shard by hand: each sample is {"__key__": str, "<suffix>": bytes}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tf:
        for s in samples:
            for suffix, data in s.items():
                if suffix == "__key__":
                    continue
                ti = tarfile.TarInfo(f"{s['__key__']}.{suffix}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return path


def good_sample(key: str, seed: int, category: str = "general", size: int = 32, prompt: str | None = None) -> dict:
    meta = {"key": key, "category": category, "split": "train"}
    if prompt is not None:
        meta["prompt"] = prompt
    return {"__key__": key.replace("/", "__"), "lq.png": encode(image(seed, size, size)),
            "hq.png": encode(image(seed + 1, size, size)), "json": json.dumps(meta).encode()}


def write_manifest(folder: Path, name: str, shards: list[tuple[str, int]]) -> Path:
    m = {"format": "ggt-ir-shards", "name": name, "complete": True,
         "shards": [{"name": n, "samples": c, "split": "train", "categories": {}} for n, c in shards]}
    p = folder / f"{name}-manifest.json"
    p.write_text(json.dumps(m))
    return p
