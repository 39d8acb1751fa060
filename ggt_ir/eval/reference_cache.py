"""What an evaluation computes from the ground truth alone, done once per eval set and kept on disk.

The GT of an eval set is the same whatever method is scored, so a table of N methods would decode the
same GT images and run the same networks on them N times. This cache keeps, content-addressed:

* ``gt/<sha256 of the GT file>.npy``: the decoded GT image (uint8, or uint16 for 16-bit files);
* ``<metric>/<variant sha256>/<GT sha256>.safetensors``: the reference-side features of a metric
  (LPIPS's normalised AlexNet features, DISTS's VGG16 stages, FID's Inception pool features);
* ``sha256.json``: a memo of file hashes (path, size, mtime -> sha256), so unchanged GT and weight
  files are not hashed again.

Every entry is keyed by the GT file's **content** hash and, for features, by the hash of the metric
variant (its name, options, the sha256 of every weight file it loaded, the pyiqa version and the device
type): a changed GT file, metric option or weight file simply gets new keys, so nothing stale is ever
read. Entries are written atomically (``ggt_ir.utils.fs``), so a killed evaluation leaves no half entry,
and several processes can share the cache. Y planes are not stored: computing them from the decoded
uint8 GT costs less than reading 8 bytes per pixel back.

``max_gb`` caps the size: past it, features are computed as usual but no longer stored (DISTS keeps
six VGG stages: about 490 MB per 1024x1024 image, so a 500-image set does not fit a small cap).
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ggt_ir.utils.fs import atomic_write, atomic_write_json, sha256_file

ENV_VAR = "GGT_IR_CACHE"
MEMO_FILE = "sha256.json"


def resolve_cache_dir(option: str | os.PathLike | None, results_root: str | os.PathLike) -> Path:
    """``eval.cache_dir``, else ``$GGT_IR_CACHE``, else ``<results_root>/.cache`` (shared by a table's rows)."""
    if option:
        return Path(option).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path(results_root) / ".cache"


class HashMemo:
    """sha256 of files, remembered by (absolute path, size, mtime_ns) in ``<root>/sha256.json``."""

    def __init__(self, root: Path | None):
        self.path = Path(root) / MEMO_FILE if root is not None else None
        self._lock = threading.Lock()
        self._new: dict[str, list] = {}
        self._memo: dict[str, list] = {}
        if self.path is not None and self.path.is_file():
            try:
                self._memo = json.loads(self.path.read_text())
            except (OSError, ValueError):  # a damaged memo only costs re-hashing
                self._memo = {}

    def sha256(self, path: str | os.PathLike) -> str:
        p = os.path.abspath(path)
        st = os.stat(p)
        hit = self._memo.get(p)
        if hit and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256_file(p)
        with self._lock:
            self._memo[p] = self._new[p] = [st.st_size, st.st_mtime_ns, digest]
        return digest

    def flush(self) -> None:
        """Merge what this process hashed into the memo file (other processes may have added theirs)."""
        if self.path is None or not self._new:
            return
        with self._lock:
            merged: dict[str, Any] = {}
            if self.path.is_file():
                try:
                    merged = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    merged = {}
            merged.update(self._new)
            atomic_write_json(self.path, merged, indent=None)
            self._new.clear()


class ReferenceCache:
    """The on-disk cache of GT-side work (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, max_gb: float = 32.0):
        self.root = Path(root)
        self.max_bytes = int(max_gb * 2**30)
        self.memo = HashMemo(self.root)
        self.stats = {"gt_hits": 0, "gt_misses": 0, "feature_hits": 0, "feature_misses": 0, "not_stored": 0}
        self._size: int | None = None

    # -- size
    def size_bytes(self) -> int:
        if self._size is None:
            self._size = sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file()) if self.root.is_dir() else 0
        return self._size

    def _room_for(self, nbytes: int) -> bool:
        if self.size_bytes() + nbytes > self.max_bytes:
            self.stats["not_stored"] += 1
            return False
        self._size = self.size_bytes() + nbytes
        return True

    # -- GT images
    def gt_image(self, path: str | os.PathLike) -> tuple[np.ndarray, str]:
        """(float32 RGB HWC in [0, 1], exactly as ``read_image`` returns it; the file's sha256)."""
        from ggt_ir.utils.image_io import read_image_file

        sha = self.memo.sha256(path)
        f = self.root / "gt" / f"{sha}.npy"
        if f.is_file():
            try:
                raw = np.load(f, allow_pickle=False)
                self.stats["gt_hits"] += 1
                return raw.astype(np.float32) / (65535.0 if raw.dtype == np.uint16 else 255.0), sha
            except (OSError, ValueError):  # damaged entry: decode again and replace it
                pass
        self.stats["gt_misses"] += 1
        img = read_image_file(path)
        peak, dtype = (65535.0, np.uint16) if img.bit_depth == 16 else (255.0, np.uint8)
        raw = (img.rgb * peak).round().astype(dtype)  # exact: read_image divided these integers by peak
        if self._room_for(raw.nbytes + 128):
            atomic_write(f, lambda tmp: np.save(str(tmp), raw, allow_pickle=False))  # tmp ends in .npy
        return img.rgb, sha

    # -- metric features
    def _feature_file(self, metric: str, variant: str, gt_sha: str) -> Path:
        return self.root / metric / variant[:16] / f"{gt_sha}.safetensors"

    def get_features(self, metric: str, variant: str, gt_sha: str):
        """The stored features (a list of tensors), or None."""
        f = self._feature_file(metric, variant, gt_sha)
        if not f.is_file():
            self.stats["feature_misses"] += 1
            return None
        from safetensors.torch import load_file

        try:
            d = load_file(str(f))
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed
            self.stats["feature_misses"] += 1
            return None
        self.stats["feature_hits"] += 1
        return [d[str(i)] for i in range(len(d))]

    def put_features(self, metric: str, variant: str, gt_sha: str, feats: list) -> bool:
        from safetensors.torch import save_file

        nbytes = sum(t.numel() * t.element_size() for t in feats)
        if not self._room_for(nbytes):
            return False
        tensors = {str(i): t.detach().to("cpu").contiguous() for i, t in enumerate(feats)}
        atomic_write(self._feature_file(metric, variant, gt_sha),
                     lambda tmp: save_file(tensors, str(tmp), metadata={"metric": metric, "variant": variant}))
        return True

    def flush(self) -> None:
        self.memo.flush()

    def describe(self) -> dict:
        return {"dir": str(self.root), "max_gb": self.max_bytes / 2**30, **self.stats}


__all__ = ["ENV_VAR", "HashMemo", "ReferenceCache", "resolve_cache_dir"]
