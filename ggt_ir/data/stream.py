"""``GGTShards``: stream LQ/HQ pairs from webdataset tar shards (``ggt-ir shards build``) into training.

How a rank's batches are made (docs/data.md, "Streaming"):

* Every source (``urls``, or several ``sources`` with mixing weights) is an endless sequence of shard
  positions: pass ``p`` is a seeded permutation of the source's shards. The ``R = world_size x workers``
  readers (one per DataLoader worker of every rank) take positions ``start + r, start + r + R, ...``, so
  within a pass every shard is read by exactly one reader, whatever ``len(shards) % R`` is.
* A worker opens its shards (retrying ``open_retries`` times), groups members into samples, decodes LQ and
  HQ (OpenCV), takes ``crops_per_image x category weight`` paired random crops (same window,
  scale-aware) with flips/rot90, and pushes them through a shuffle buffer into batches. Corrupt,
  truncated or incomplete samples are skipped with a warning naming shard and key; the batch field
  ``skipped`` counts them since the worker's previous batch.
* ``resampled: true`` (default): an endless stream cut into epochs of ``epoch_batches`` batches per rank
  (default: one pass over the data). ``resampled: false``: exact passes, each sample once per pass; it
  needs at least one shard per reader. :meth:`GGTShardsDataset.eval_loader` is one exact pass, no crops.
* Resume (``start_iter`` > 0) reseeds with (seed, epoch, start_iter, rank, worker) and skips the shard
  positions the interrupted run can have served (from the manifest's per-shard counts plus the shuffle
  buffer), so no served sample is replayed within the pass.

The loader is never passed through ``accelerator.prepare``: each rank already reads its own shards.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from ggt_ir.config import OptionsError, at_least
from ggt_ir.data.shard_io import (DecodeError, ShardTruncated, decode_image, expand_urls, image_ext,
                                  iter_tar_samples, local_path, open_shard, read_json_url, scan_local_tar,
                                  shard_counts_from_manifests)
from ggt_ir.data.transforms import check_pair_size, paired_flip_rot, paired_random_crop

log = logging.getLogger("ggt_ir.data.stream")
DECODERS = ("cv2", "pil", "torchvision")
MIN_EPOCH_BATCHES = 500  # default epoch: one pass over the data, but at least this many batches


@dataclass
class ShardSource:
    """One source of a mixture: its shards, and how often it is drawn relative to the others."""

    urls: Any = None  # brace pattern(s): a string (``::`` separates several) or a list
    weight: float = 1.0
    manifest: Optional[str] = None  # default: <dir>/<name>-manifest.json next to the shards
    split: Optional[str] = None  # with ``manifest`` and no ``urls``: take this split's shards
    name: str = ""


@dataclass
class _Source:
    name: str
    urls: list
    counts: list  # samples per shard, None where unknown
    weight: float


@dataclass
class _Spec:
    """Everything a worker needs (picklable)."""

    sources: list
    opts: Any
    mode: str  # train | eval
    seed: int
    rank: int
    world_size: int
    epoch: int
    start_iter: int
    start: list  # first shard position per source
    end: list  # end position per source (exact passes) or None
    batch_size: int
    salt: int = 0


def _as_sources(opts) -> list[ShardSource]:
    """``sources`` (ShardSource or plain dicts when built in Python), or the single source of ``urls``."""
    if opts.sources:
        return [s if isinstance(s, ShardSource) else ShardSource(**s) for s in opts.sources]
    return [ShardSource(urls=opts.urls, manifest=opts.manifest, split=opts.split)]


def _manifest_urls(manifest: str, split: str | None) -> tuple[list[str], list[int]]:
    m = read_json_url(manifest)
    if not m or "shards" not in m:
        raise OptionsError(f"cannot read the shard manifest {manifest}")
    base = manifest.rpartition("/")[0]
    shards = [s for s in m["shards"] if split is None or s.get("split") == split]
    return [f"{base}/{s['name']}" if base else s["name"] for s in shards], [int(s["samples"]) for s in shards]


class _ShardOrder:
    """Position -> shard index: pass ``p`` is a seeded permutation (or the identity)."""

    def __init__(self, n: int, seed: int, source: int, shuffle: bool, salt: int = 0):
        self.n, self.seed, self.source, self.shuffle, self.salt = n, seed, source, shuffle, salt
        self._pass, self._perm = None, None

    def __getitem__(self, pos: int) -> int:
        p, i = divmod(pos, self.n)
        if not self.shuffle:
            return i
        if p != self._pass:
            self._pass = p
            self._perm = np.random.default_rng([self.seed, self.source, p, self.salt, 0x5A4D]).permutation(self.n)
        return int(self._perm[i])


# ----------------------------------------------------------------------------- the worker side
class _ShardStream(torch.utils.data.IterableDataset):
    def __init__(self, spec: _Spec):
        super().__init__()
        self.spec = spec

    # one reader's shards of one source
    def _samples(self, si: int, r: int, R: int, state: dict) -> Iterator[tuple[str, str, dict]]:
        sp, o = self.spec, self.spec.opts
        src = sp.sources[si]
        shuffle = o.shard_shuffle and sp.mode == "train"
        order = _ShardOrder(len(src.urls), sp.seed, si, shuffle, sp.salt)
        pos, end = sp.start[si] + r, sp.end[si]
        while end is None or pos < end:
            idx = order[pos]
            url, expected = src.urls[idx], src.counts[idx]
            stream, tf = open_shard(url, o.open_retries, o.retry_delay)
            state["shards"] += 1
            n = 0
            try:
                for tkey, members in iter_tar_samples(tf, stream, url):
                    n += 1
                    yield url, tkey, members
            except ShardTruncated as e:
                lost = max(expected - n, 1) if expected is not None else 1
                state["skipped"] += lost
                log.warning("shard %s: truncated or corrupt after sample %r (%d sample(s) read%s): %d sample(s) "
                            "skipped (%s)", url, e.after_key, n, f" of {expected}" if expected else "", lost, e.error)
            else:
                if expected is not None and n < expected:
                    state["skipped"] += expected - n
                    log.warning("shard %s: %d samples, the manifest says %d: %d sample(s) skipped",
                                url, n, expected, expected - n)
            pos += R

    def _skip(self, state: dict, url: str, key: str, why: str) -> list:
        state["skipped"] += 1
        log.warning("skipped sample %r in shard %s: %s", key, url, why)
        return []

    def _crops(self, url: str, tkey: str, members: dict, rng: np.random.Generator, state: dict) -> list:
        sp, o = self.spec, self.spec.opts
        meta: dict = {}
        if "json" in members:
            try:
                meta = json.loads(members["json"])
            except ValueError:
                log.warning("sample %r in shard %s: unreadable json member, using defaults", tkey, url)
        key = str(meta.get("key") or tkey)
        lq_s = next((s for s in members if s.startswith("lq.")), None)
        hq_s = next((s for s in members if s.startswith(("hq.", "gt."))), None)
        if lq_s is None or hq_s is None:
            missing = " and ".join(n for n, s in (("lq", lq_s), ("hq", hq_s)) if s is None)
            return self._skip(state, url, key, f"no {missing} member (members: {', '.join(sorted(members))})")
        category = str(meta.get("category") or "unknown")
        if o.categories and category not in o.categories:
            return []
        train = sp.mode == "train"
        m = 1
        if train:
            x = o.crops_per_image * float(o.category_weights.get(category, 1.0))
            m = int(x) + int(rng.random() < x - int(x))
            if m == 0:
                return []
        try:
            lq = decode_image(members[lq_s], image_ext(lq_s), o.decoder)
        except DecodeError as e:
            return self._skip(state, url, key, f"cannot decode {lq_s}: {e}")
        try:
            gt = decode_image(members[hq_s], image_ext(hq_s), o.decoder)
        except DecodeError as e:
            return self._skip(state, url, key, f"cannot decode {hq_s}: {e}")
        names = (f"{url}:{key}.{lq_s}", f"{url}:{key}.{hq_s}")
        try:
            check_pair_size(lq, gt, o.scale, names)
        except ValueError as e:
            return self._skip(state, url, key, str(e))
        prompt = str(meta.get("prompt") or o.prompt)
        out = []
        if train and o.gt_size:
            if min(gt.shape[:2]) < o.gt_size:
                return self._skip(state, url, key, f"HQ {gt.shape[0]}x{gt.shape[1]} is smaller than gt_size {o.gt_size}")
            for _ in range(m):
                a, b = paired_random_crop(lq, gt, o.gt_size, o.scale, rng, names)
                a, b = paired_flip_rot(a, b, o.use_hflip, o.use_rot, rng)
                out.append((np.ascontiguousarray(a), np.ascontiguousarray(b), key, category, prompt))
        else:
            for _ in range(m):
                a, b = (lq, gt) if not train else paired_flip_rot(lq, gt, o.use_hflip, o.use_rot, rng)
                out.append((np.ascontiguousarray(a), np.ascontiguousarray(b), key, category, prompt))
        return out

    def __iter__(self) -> Iterator[dict]:
        sp, o = self.spec, self.spec.opts
        info = torch.utils.data.get_worker_info()
        wid, W = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            import cv2

            # (no cv2.setNumThreads here: in a forked worker it can deadlock on the parent's thread pool, and
            # decoding is single-threaded anyway)
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our warning names shard + key
        R, r = sp.world_size * W, sp.rank * W + wid
        rng = np.random.default_rng([sp.seed, sp.epoch, sp.start_iter, sp.rank, wid, 0xD47A])
        state = {"skipped": 0, "shards": 0}
        idle_limit = sum(len(s.urls) for s in sp.sources) + 1
        last_productive = 0
        train = sp.mode == "train"
        streams = [self._samples(si, r, R, state) for si in range(len(sp.sources))]
        weights = [s.weight for s in sp.sources]
        current = [0.0] * len(streams)
        live = list(range(len(streams)))
        capacity = o.shuffle_buffer if train else 0
        initial = min(capacity, max(sp.batch_size * 2, capacity // 2))  # then it grows to capacity at half rate
        buf: list = []
        batch: list = []
        debt = 0.0

        pending: list = []  # one finished batch held back, so skips found after it still get counted

        def take(item) -> dict | None:
            batch.append(item)
            if len(batch) < sp.batch_size:
                return None
            pending.append(_collate(batch, 0))
            batch.clear()
            if len(pending) < 2:
                return None
            out = pending.pop(0)
            out["skipped"], state["skipped"] = state["skipped"], 0
            return out

        while live:
            # smooth weighted round-robin over the sources still running
            total = sum(weights[i] for i in live)
            for i in live:
                current[i] += weights[i]
            j = max(live, key=lambda i: current[i])
            current[j] -= total
            try:
                url, tkey, members = next(streams[j])
            except StopIteration:
                live.remove(j)
                continue
            crops = self._crops(url, tkey, members, rng, state)
            if crops:
                last_productive = state["shards"]
            elif state["shards"] - last_productive > idle_limit:
                raise RuntimeError(f"dataset '{o.name}': {idle_limit} shards in a row gave no usable sample "
                                   f"(categories {o.categories}, category_weights {dict(o.category_weights)}; "
                                   f"{state['skipped']} skipped as unreadable); check the shards and the filters")
            if not capacity:
                for c in crops:
                    if (b := take(c)) is not None:
                        yield b
                continue
            buf.extend(crops)
            if len(buf) < initial:
                continue
            # below capacity the buffer keeps growing (half of the new crops leave); full, all of them leave
            debt += len(crops) * (1.0 if len(buf) >= capacity else 0.5)
            while debt >= 1 and buf:
                debt -= 1
                k = int(rng.integers(len(buf)))
                buf[k], buf[-1] = buf[-1], buf[k]
                if (b := take(buf.pop())) is not None:
                    yield b
        # end of an exact pass: drain the buffer; a partial last batch only in eval mode
        rng.shuffle(buf)
        for c in buf:
            if (b := take(c)) is not None:
                yield b
        if batch and not train:
            pending.append(_collate(batch, 0))
        for i, out in enumerate(pending):
            if i == len(pending) - 1:
                out["skipped"], state["skipped"] = state["skipped"], 0
            yield out


def _to_float(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(a).permute(2, 0, 1)
    return t.float().div_(65535.0 if a.dtype == np.uint16 else 255.0)


def _collate(items: list, skipped: int) -> dict:
    """A batch as the worker sends it: ``lq``/``gt`` stay 8-bit (or 16-bit) BCHW, a quarter of the float bytes
    through shared memory; :func:`_finish` makes them float in the receiving process."""

    def stack(idx: int) -> torch.Tensor:
        arrs = [it[idx] for it in items]
        shapes = {a.shape for a in arrs}
        if len(shapes) > 1:
            raise ValueError(f"cannot batch images of different sizes {sorted(shapes)}; use batch_size 1 or gt_size")
        if len({a.dtype for a in arrs}) == 1:
            return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
        return torch.stack([_to_float(a) for a in arrs]).contiguous()  # mixed bit depths: float here

    return {"lq": stack(0), "gt": stack(1), "key": [it[2] for it in items], "category": [it[3] for it in items],
            "prompt": [it[4] for it in items], "skipped": int(skipped)}


def _finish(batch: dict, pin: bool = False) -> dict:
    """Integer images -> float32 in [0, 1] (pinned for a fast host-to-GPU copy when asked and possible)."""
    for k in ("lq", "gt"):
        t = batch[k]
        if t.dtype == torch.uint8:
            t = t.float().div_(255.0)
        elif t.dtype == torch.uint16:
            t = t.to(torch.float32).div_(65535.0)
        if pin and torch.cuda.is_available():
            t = t.pin_memory()
        batch[k] = t
    return batch


# ----------------------------------------------------------------------------- the dataset
class GGTShardsDataset:
    @dataclass
    class Options:
        name: str = "ggt_shards"
        type: str = "GGTShards"
        urls: Any = None  # brace pattern(s) of shards: paths, file://, pipe:, http(s)://, hf://
        manifest: Optional[str] = None  # default: found next to the shards
        split: Optional[str] = None  # with ``manifest`` and no ``urls``: this split's shards
        sources: List[ShardSource] = field(default_factory=list)  # a weighted mixture instead of ``urls``
        categories: Optional[List[str]] = None  # keep only these categories
        category_weights: Dict[str, float] = field(default_factory=dict)  # e.g. {snow: 2.0}: 2x as often
        scale: int = at_least(1, 1)
        gt_size: int = at_least(256, 0)  # training crop (HQ side); 0 = whole images
        use_hflip: bool = True
        use_rot: bool = True
        crops_per_image: int = at_least(1, 1)  # crops taken from every decoded pair (amortizes decoding)
        shuffle_buffer: int = 128  # crops per worker (shards are already shuffled at build time)
        shard_shuffle: bool = True
        resampled: bool = True  # endless stream; false: exact passes (each sample once per pass)
        epoch_batches: int = 0  # batches per rank and epoch; 0 = one pass (>= 500 batches) when counts are known
        batch_size_per_gpu: int = at_least(8, 1)
        num_worker_per_gpu: int = at_least(4, 0)
        pin_memory: bool = False
        prefetch_factor: int = 2
        open_retries: int = 3  # a shard that still cannot be opened after these is an error
        retry_delay: float = 2.0  # seconds, doubled at each retry
        prompt: str = ""  # prompt for samples without one
        decoder: str = "cv2"  # cv2 | pil | torchvision (bench/RESULTS.md)

        def check(self, src: str, key: str) -> None:
            if not (self.urls or self.manifest or self.sources):
                raise OptionsError(f"{src}: {key} needs 'urls' (shard patterns), 'manifest' (+ 'split') or 'sources'")
            if self.decoder not in DECODERS:
                raise OptionsError(f"{src}: {key}.decoder is {self.decoder!r}; expected one of {', '.join(DECODERS)}")
            if self.crops_per_image < 1:
                raise OptionsError(f"{src}: {key}.crops_per_image must be >= 1")
            if self.gt_size % self.scale:
                raise OptionsError(f"{src}: {key}.gt_size {self.gt_size} is not a multiple of scale {self.scale}")
            bad = {k: v for k, v in self.category_weights.items() if v < 0}
            if bad:
                raise OptionsError(f"{src}: {key}.category_weights must be >= 0: {bad}")
            srcs = _as_sources(self)
            for i, s in enumerate(srcs):
                kp = f"{key}.sources[{i}]" if self.sources else key
                if s.weight <= 0:
                    raise OptionsError(f"{src}: {kp}.weight must be > 0")
                if not s.urls and not s.manifest:
                    raise OptionsError(f"{src}: {kp} needs 'urls' or 'manifest'")
                if s.manifest and local_path(s.manifest) and not Path(local_path(s.manifest)).is_file():
                    from ggt_ir.data import missing_shards_hint

                    raise OptionsError(f"{src}: {kp}.manifest: file not found: {s.manifest}. "
                                       + missing_shards_hint(s.manifest))
                urls = expand_urls(s.urls) if s.urls else []
                missing = [u for u in urls if local_path(u) and not Path(local_path(u)).is_file()]
                if missing:
                    from ggt_ir.data import missing_shards_hint

                    raise OptionsError(f"{src}: {kp}.urls: {len(missing)} of {len(urls)} shard(s) not found, e.g. "
                                       f"{missing[0]}. {missing_shards_hint(missing[0])}")

    def __init__(self, opts: "GGTShardsDataset.Options"):
        self.opts = opts
        srcs = _as_sources(opts)
        self.sources: list[_Source] = []
        for i, s in enumerate(srcs):
            if s.urls:
                urls = expand_urls(s.urls)
                counts = shard_counts_from_manifests(urls, s.manifest)
            else:
                urls, counts = _manifest_urls(s.manifest, s.split)
            if not urls:
                raise OptionsError(f"dataset '{opts.name}': source {i} has no shards ({s.urls or s.manifest})")
            self.sources.append(_Source(s.name or f"source{i}", urls, counts, float(s.weight)))
        self.batches_per_epoch: int | None = None
        self._manifests: dict = {}
        self._items = None  # map-style index (validation)

    # ------------------------------------------------------------------ sizes and planning
    @property
    def counts_known(self) -> bool:
        return all(c is not None for s in self.sources for c in s.counts)

    def num_samples(self) -> int | None:
        """Samples in all shards (from the manifests), None when unknown."""
        return sum(sum(s.counts) for s in self.sources) if self.counts_known else None

    def _crop_factor(self) -> tuple[float, float]:
        """(expected, lower bound) crops per decoded sample in training."""
        k, cw = self.opts.crops_per_image, self.opts.category_weights
        ws = [w for w in cw.values() if w > 0]
        low = k * min([1.0] + ws)
        return float(k), max(low, 1e-3)

    def _readers(self, world_size: int, workers: int) -> int:
        return world_size * max(workers, 1)

    def _advance(self, start: list[int], n_batches: int, world_size: int, workers: int, seed: int,
                 batch_size: int, buffer: int, end: list | None = None) -> list[int]:
        """Shard positions after a run that served ``n_batches`` of every rank from positions ``start``: past
        every position any reader can have served a sample from (reads ahead into the shuffle buffer count)."""
        if n_batches <= 0:
            return list(start)
        W = max(workers, 1)
        R = self._readers(world_size, workers)
        # a worker's served crops + its shuffle buffer + the batch it holds back + a partial batch
        crops = math.ceil(n_batches / W) * batch_size + buffer + 2 * batch_size
        samples = math.ceil(crops / self._crop_factor()[1]) + 1
        total_w = sum(s.weight for s in self.sources)
        out = []
        for si, s in enumerate(self.sources):
            share = samples if len(self.sources) == 1 else math.ceil(samples * s.weight / total_w) + 2
            order = _ShardOrder(len(s.urls), seed, si, self.opts.shard_shuffle)
            new = start[si]
            for r in range(R):
                need, pos = share, start[si] + r
                guard = 0
                while need > 0 and guard < 10 * len(s.urls) + 10 * share:
                    need -= s.counts[order[pos]] or 0
                    pos += R
                    guard += 1
                new = max(new, pos - R + 1)
            if end is not None and end[si] is not None:
                new = min(new, end[si])
            out.append(new)
        return out

    def _check_exact(self, world_size: int, workers: int) -> None:
        R = self._readers(world_size, workers)
        for s in self.sources:
            if len(s.urls) < R:
                raise ValueError(
                    f"dataset '{self.opts.name}': exact passes need at least one shard per reader, but {s.name} has "
                    f"{len(s.urls)} shard(s) for {world_size} rank(s) x {max(workers, 1)} worker(s) = {R} readers. "
                    "Use fewer workers (num_worker_per_gpu), smaller shards (ggt-ir shards build --shard-size / "
                    "--max-samples-per-shard), or the resampled stream (resampled: true).")

    def _loader(self, spec: _Spec, workers: int) -> torch.utils.data.DataLoader:
        import cv2  # noqa: F401  (imported once here, inherited by forked workers)

        if self.opts.decoder == "torchvision":
            import torchvision.io  # noqa: F401
        # batches arrive 8-bit and are made float (and pinned, with pin_memory) in _finish, in this process
        return torch.utils.data.DataLoader(
            _ShardStream(spec), batch_size=None, num_workers=workers, pin_memory=False,
            prefetch_factor=self.opts.prefetch_factor if workers else None, persistent_workers=False)

    # ------------------------------------------------------------------ training
    def train_loader(self, seed: int, rank: int, world_size: int, start_iter: int) -> Iterator[dict]:
        """This rank's endless stream of training batches, resuming after ``start_iter`` batches."""
        o = self.opts
        W, B, buffer = o.num_worker_per_gpu, o.batch_size_per_gpu, o.shuffle_buffer
        known = self.counts_known
        expected_crops = (self.num_samples() or 0) * self._crop_factor()[0]
        if (o.category_weights or o.categories) and known:
            expected_crops = self._expected_weighted_crops()
        per_pass = int(expected_crops // (world_size * B)) if known else 0
        if not o.resampled:
            self._check_exact(world_size, W)
            per_pass = max(per_pass, 1)
            self.batches_per_epoch = per_pass
        else:  # workers restart (and reseed) at every epoch: not too often for tiny datasets
            L = o.epoch_batches or (max(per_pass, MIN_EPOCH_BATCHES) if per_pass else 0)
            self.batches_per_epoch = L or None
        if not known:
            log.warning("dataset '%s': no manifest with per-shard sample counts; a resumed stream is reseeded but "
                        "cannot skip the shards it already read", o.name)
        adv = dict(world_size=world_size, workers=W, seed=seed, batch_size=B, buffer=buffer)
        zero = [0] * len(self.sources)
        salt = start_iter if not known else 0

        def segments():
            if not o.resampled:  # exact passes
                p, offset = divmod(start_iter, self.batches_per_epoch)
                while True:
                    bounds = [p * len(s.urls) for s in self.sources]
                    end = [(p + 1) * len(s.urls) for s in self.sources]
                    st = self._advance(bounds, offset, end=end, **adv) if offset else bounds
                    yield p, p * self.batches_per_epoch + offset, st, end, None
                    p, offset = p + 1, 0
            L = self.batches_per_epoch
            if not L:
                yield 0, start_iter, (self._advance(zero, start_iter, **adv) if known else zero), [None] * len(zero), None
                return
            e = start_iter // L
            pos = zero
            if known:
                for _ in range(e):
                    pos = self._advance(pos, L, **adv)
            it = start_iter
            seg_start = pos
            if known and it > e * L:
                pos = self._advance(seg_start, it - e * L, **adv)
            while True:
                n = (e + 1) * L - it
                yield e, it, pos, [None] * len(zero), n
                if known:
                    seg_start = self._advance(pos, n, **adv)
                pos, it, e = seg_start, (e + 1) * L, e + 1

        def gen() -> Iterator[dict]:
            for epoch, it, start, end, n in segments():
                spec = _Spec(self.sources, o, "train", seed, rank, world_size, epoch, it, start, end, B,
                             salt=salt + (epoch if not known else 0))
                served = 0
                for batch in self._loader(spec, W):
                    yield _finish(batch, o.pin_memory)
                    served += 1
                    if n is not None and served >= n:
                        break
                if n is None and served == 0:
                    raise RuntimeError(f"dataset '{o.name}': a whole pass over the shards gave rank {rank} no batch "
                                       f"(all samples skipped or filtered, or fewer samples than batch_size x workers)")

        return gen()

    def _expected_weighted_crops(self) -> float:
        """Expected training crops in one pass, from the manifests' per-category counts."""
        cats: dict[str, int] = {}
        for s in self.sources:
            for u in s.urls:
                m = self._manifest_entry(u)
                for c, n in (m or {}).get("categories", {}).items():
                    cats[c] = cats.get(c, 0) + n
        if not cats:
            return (self.num_samples() or 0) * self._crop_factor()[0]
        k, cw = self.opts.crops_per_image, self.opts.category_weights
        return sum(n * k * cw.get(c, 1.0) for c, n in cats.items()
                   if not self.opts.categories or c in self.opts.categories)

    def _manifest_entry(self, url: str) -> dict | None:
        from ggt_ir.data.shard_io import manifest_candidates

        name = url.rpartition("/")[2]
        for c in ([self.opts.manifest] if self.opts.manifest else []) + manifest_candidates(url):
            if c not in self._manifests:  # cache per dataset object
                self._manifests[c] = read_json_url(c)
            m = self._manifests[c]
            for e in (m or {}).get("shards", []):
                if e.get("name") == name:
                    return e
        return None

    # ------------------------------------------------------------------ evaluation
    def eval_loader(self, rank: int = 0, world_size: int = 1, batch_size: int = 1,
                    num_workers: int | None = None) -> Iterator[dict]:
        """One exact pass over every sample (whole images, no augmentation), this rank's share."""
        W = self.opts.num_worker_per_gpu if num_workers is None else num_workers
        self._check_exact(world_size, W)
        opts = replace(self.opts, gt_size=0)
        spec = _Spec(self.sources, opts, "eval", 0, rank, world_size, 0, 0, [0] * len(self.sources),
                     [len(s.urls) for s in self.sources], batch_size)
        return (_finish(b, opts.pin_memory) for b in self._loader(spec, W))

    # ------------------------------------------------------------------ map-style (validation)
    def _index(self) -> list:
        if self._items is None:
            items = []
            for s in self.sources:
                for url in s.urls:
                    path = local_path(url)
                    if path is None:
                        raise TypeError(f"dataset '{self.opts.name}': indexed access (validation) needs local shards, "
                                        f"not {url}; stream it with eval_loader() instead")
                    for tkey, members in scan_local_tar(path):
                        items.append((path, tkey, members))
            if self.opts.categories:
                items = [it for it in items if self._read_meta(it).get("category") in self.opts.categories]
            self._items = items
        return self._items

    @staticmethod
    def _read_member(path: str, span: tuple[int, int]) -> bytes:
        with open(path, "rb") as f:
            f.seek(span[0])
            return f.read(span[1])

    def _read_meta(self, item) -> dict:
        path, tkey, members = item
        if "json" not in members:
            return {}
        try:
            return json.loads(self._read_member(path, members["json"]))
        except ValueError:
            return {}

    def __len__(self) -> int:
        if self._items is None and not self.opts.categories and self.counts_known:
            return self.num_samples()
        return len(self._index())

    def __getitem__(self, i: int) -> dict:
        if isinstance(i, tuple):
            i = i[0]
        path, tkey, members = self._index()[i]
        meta = self._read_meta((path, tkey, members))
        lq_s = next((s for s in members if s.startswith("lq.")), None)
        hq_s = next((s for s in members if s.startswith(("hq.", "gt."))), None)
        if lq_s is None or hq_s is None:
            raise OSError(f"sample {tkey!r} in shard {path} lacks an lq or hq member ({sorted(members)})")
        try:
            lq = decode_image(self._read_member(path, members[lq_s]), image_ext(lq_s), self.opts.decoder)
            gt = decode_image(self._read_member(path, members[hq_s]), image_ext(hq_s), self.opts.decoder)
        except DecodeError as e:
            raise OSError(f"sample {tkey!r} in shard {path}: cannot decode: {e}") from None
        check_pair_size(lq, gt, self.opts.scale, (f"{path}:{tkey}.{lq_s}", f"{path}:{tkey}.{hq_s}"))
        return {"lq": _to_float(np.ascontiguousarray(lq)), "gt": _to_float(np.ascontiguousarray(gt)),
                "key": str(meta.get("key") or tkey), "category": str(meta.get("category") or "unknown"),
                "prompt": str(meta.get("prompt") or self.opts.prompt)}
