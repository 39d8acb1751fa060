"""``GGTShards``: stream LQ/HQ pairs from webdataset tar shards (``ggt-ir shards build``) into training.

How a rank's batches are made (docs/data.md, "Streaming"):

* Every source (``urls``, or several ``sources`` with mixing weights) is an endless sequence of shard
  positions: pass ``p`` is a seeded permutation of the source's shards. The ``R = world_size x workers``
  readers (one per DataLoader worker of every rank) take positions ``start + r, start + r + R, ...``, so
  within a pass every shard is read by exactly one reader, whatever ``len(shards) % R`` is.
* A reader reads its shards (retrying ``open_retries`` times), decodes LQ and HQ (OpenCV), takes
  ``crops_per_image x category weight`` paired random crops (same window, scale-aware) with flips/rot90, and
  pushes them through a shuffle buffer into batches.
* **The plan is separate from the pixels.** Which samples a reader reads, how many crops each gives and which
  crops make up each batch depend only on the seed, the options, the manifest's per-shard counts and the
  samples' categories, never on what decoding finds. So a resumed run replays its plan without decoding up to
  the exact batch where the interrupted run stopped, re-reads only the samples still in the shuffle buffer,
  and goes on with the very batches an uninterrupted run would have made (``start_iter`` is all it needs).
  A damaged sample (corrupt, truncated, a member missing, sizes that do not match) leaves holes in the
  batches its crops were planned for; they are filled with copies of good crops of the same batch (or of
  the shuffle buffer), so batches keep their size. It is reported once, when read: the batch field
  ``skipped`` maps ``"<shard>:<key>"`` to the reason.
* ``resampled: true`` (default): an endless stream; every ``epoch_batches`` batches (default: one pass, at
  least 500) the readers start a new segment at shard positions past everything read so far in the pass.
  ``resampled: false``: exact passes, each sample once per pass, passes chained without a pause.
  :meth:`GGTShardsDataset.eval_loader` is one exact pass, no crops.
* The DataLoader's workers take turns (batch ``i`` of a rank comes from reader ``i mod workers``); on resume
  the turns are rotated so the first batch comes from the reader whose turn it is.

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
from ggt_ir.data.shard_format import CATEGORY_CODE_CHARS, META_SUFFIX, decode_categories, image_members
from ggt_ir.data.shard_io import (DecodeError, TarSample, decode_image, expand_urls, image_ext, local_path,
                                  manifest_entries, manifest_shard_url, open_shard, read_json_url, scan_local_tar)
from ggt_ir.data.transforms import check_pair_size, paired_flip_rot, paired_random_crop

log = logging.getLogger("ggt_ir.data.stream")
DECODERS = ("cv2", "pil", "torchvision")
MIN_EPOCH_BATCHES = 500  # resampled stream: readers start a new segment (and reseed) at most this often


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
    allow_pipe: bool  # the user wrote these URLs (options, --set); never True for names read from a manifest
    codes: list = field(default_factory=list)  # per shard: (category table, one code per sample) or None
    cat_counts: list = field(default_factory=list)  # per shard: {category: samples} from the manifest, or None


@dataclass
class _Spec:
    """Everything a reader needs (picklable)."""

    sources: list
    opts: Any
    mode: str  # train | eval
    seed: int
    rank: int
    world_size: int
    start_iter: int  # batches of this rank already served (training)
    batch_size: int
    exact: bool = False  # resampled: false (chained exact passes)
    segment_batches: Optional[int] = None  # resampled: batches per rank and segment; None = one endless segment
    salt: int = 0  # reseeds a resumed stream that cannot be replayed (no per-shard counts)


def _as_sources(opts) -> list[ShardSource]:
    """``sources`` (ShardSource or plain dicts when built in Python), or the single source of ``urls``."""
    if opts.sources:
        return [s if isinstance(s, ShardSource) else ShardSource(**s) for s in opts.sources]
    return [ShardSource(urls=opts.urls, manifest=opts.manifest, split=opts.split)]


def _manifest_urls(manifest: str, split: str | None) -> tuple[list[str], list[dict]]:
    """The shards a manifest lists (of ``split``): URLs next to the manifest, never commands (see
    :func:`ggt_ir.data.shard_io.manifest_shard_url`), and their entries."""
    m = read_json_url(manifest, allow_pipe=True)  # the manifest path itself is what the user wrote
    if not isinstance(m, dict) or not isinstance(m.get("shards"), list):
        raise OptionsError(f"cannot read the shard manifest {manifest}")
    shards = [s for s in m["shards"] if isinstance(s, dict) and (split is None or s.get("split") == split)]
    try:
        return [manifest_shard_url(manifest, s.get("name")) for s in shards], shards
    except ValueError as e:
        raise OptionsError(str(e)) from None


def _count(entry: dict | None) -> int | None:
    """A manifest entry's sample count, None when there is none (or it is not a number)."""
    try:
        return int(entry["samples"]) if entry and "samples" in entry else None
    except (TypeError, ValueError):
        return None


def _codes(entry: dict | None, count: int | None):
    """(category table, codes) from a manifest entry whose ``category_codes`` fit its count and categories,
    else None (then the json members say)."""
    if not entry or count is None or not isinstance(entry.get("category_codes"), str):
        return None
    if not isinstance(entry.get("categories"), dict):
        return None
    table, codes = sorted(entry["categories"]), entry["category_codes"]
    if len(codes) != count or any(CATEGORY_CODE_CHARS.find(ch) not in range(len(table)) for ch in set(codes)):
        return None
    return table, codes


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


def _needs_category(o) -> bool:
    """Does the plan (crops per sample) depend on the samples' categories?"""
    return bool(o.categories) or any(float(w) != 1.0 for w in o.category_weights.values())


def _crop_factor(o) -> tuple[float, float]:
    """(expected, lower bound) crops per decoded sample in training."""
    k, cw = o.crops_per_image, o.category_weights
    ws = [w for w in cw.values() if w > 0]
    low = k * min([1.0] + ws)
    return float(k), max(low, 1e-3)


def _advance(sources: list, o, start: list[int], n_batches: int, world_size: int, workers: int, seed: int,
             batch_size: int, salt: int = 0) -> list[int]:
    """Shard positions after a segment that served ``n_batches`` of every rank from positions ``start``: past
    every position any reader can have read a sample from (reads ahead into the shuffle buffer count), so the
    next segment reads nothing twice within a pass."""
    if n_batches <= 0:
        return list(start)
    W = max(workers, 1)
    R = world_size * W
    # a worker's served crops + its shuffle buffer + a partial batch
    crops = math.ceil(n_batches / W) * batch_size + o.shuffle_buffer + 2 * batch_size
    samples = math.ceil(crops / _crop_factor(o)[1]) + 1
    total_w = sum(s.weight for s in sources)
    out = []
    for si, s in enumerate(sources):
        share = samples if len(sources) == 1 else math.ceil(samples * s.weight / total_w) + 2
        order = _ShardOrder(len(s.urls), seed, si, o.shard_shuffle, salt)
        new = start[si]
        for r in range(R):
            need, pos = share, start[si] + r
            guard = 0
            while need > 0 and guard < 10 * len(s.urls) + 10 * share:
                need -= s.counts[order[pos]] or 0
                pos += R
                guard += 1
            new = max(new, pos - R + 1)
        out.append(new)
    return out


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _meta(raw) -> dict:
    if raw is None:
        return {}
    try:
        m = json.loads(raw)
    except ValueError:
        return {}
    return m if isinstance(m, dict) else {}


def _category(meta: dict) -> str:
    return str(meta.get("category") or "unknown")


# ----------------------------------------------------------------------------- the reader (worker side)
@dataclass
class _Damaged:
    """A sample that gives no crops: where, and why. ``id`` names it in the batch's ``skipped``."""

    url: str
    key: str
    why: str
    quiet: bool = False  # logged once per shard (a truncated shard), not per sample

    @property
    def id(self) -> str:
        return f"{self.url}:{self.key}"


class _Cursor:
    """One source's samples for one reader within one segment: shard positions ``first, first + R, ...``
    (below ``end`` in an exact pass), each shard's samples in tar order. A shard has exactly as many samples
    as its manifest says: missing ones (a truncated shard) are read as damaged, extra ones are not read.

    Dry (replay): only the sample count and, when the plan needs them, the categories (from the manifest's
    ``category_codes``, else the json members). Live: the samples themselves."""

    def __init__(self, reader: "_Reader", si: int, first: int, end: int | None):
        self.rd, self.si, self.end = reader, si, end
        self.src = reader.spec.sources[si]
        self.order = reader.order(si)
        self.pos = first - reader.R
        self.n, self.k = 0, 0  # samples in the current shard, next ordinal
        self.cats: list | None = None
        self.live = False
        self._told, self._last_key = False, None  # (live: the truncation warning of the current shard)
        self._tar = None  # live: iterator of TarSample
        self._shard_reader = None

    def go_live(self) -> None:
        self.live = True
        if 0 < self.k < self.n:
            self._open_live(skip_to=self.k)

    @property
    def url(self) -> str:
        return self.src.urls[self.order[self.pos]]

    def _open_live(self, skip_to: int = 0) -> None:
        self.close()
        self._told, self._last_key = False, None
        self._shard_reader = self.rd.open(self.si, self.url, skip_to=skip_to)
        self._tar = self._shard_reader.samples()

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        self._tar = self._shard_reader = None

    def next(self):
        """``(pos, ordinal, category or None, TarSample or None)``, or None at the end of an exact pass."""
        while self.k >= self.n:
            self.close()
            self.pos += self.rd.R
            if self.end is not None and self.pos >= self.end:
                return None
            self.rd.shards_opened += 1
            idx = self.order[self.pos]
            self.k = 0
            self.n, self.cats = self.rd.listing(self.si, idx, need_list=not self.live)
            if self.live:
                self._open_live()
                if self.n is None:  # unknown count (no manifest, not local): as many as the tar has
                    self.n = 1 << 62
        k, self.k = self.k, self.k + 1
        sample = self._live_sample(k) if self.live else None
        if sample is None and self.live:  # the tar has no more samples
            if self.n == 1 << 62:
                self.n = self.k = k
                return self.next()
            sample = self.rd.missing(self.url, k, self.n, self._shard_reader)
        if sample is not None and sample.cut and not self._told:  # one warning per truncated shard
            self._told = True
            unknown = self.n == 1 << 62
            log.warning("shard %s: truncated or corrupt after sample %r (%d sample(s) read%s): %d sample(s) skipped "
                        "(%s)", self.url, self._last_key, k, "" if unknown else f" of {self.n}",
                        1 if unknown else self.n - k, sample.problem)
        elif sample is not None:
            self._last_key = sample.key
        if self.cats is not None:
            category = self.cats[k]
        elif sample is not None:
            category = _category(_meta(sample.members.get(META_SUFFIX)))
        else:
            category = None
        return self.pos, k, category, sample

    def _live_sample(self, k: int) -> TarSample | None:
        for s in self._tar:
            if s.ordinal == k:
                return s
        return None


class _Reader:
    """One reader's part of the stream (a DataLoader worker of one rank, or the rank itself without workers).

    The plan (samples read, crops per sample, the shuffle buffer's picks, batch composition) is a function of
    the seed, the segment, the reader, the options and the samples' counts and categories. It runs *dry*
    (no decoding) up to the batch a resumed run starts from, then *live*."""

    def __init__(self, spec: _Spec, role: int, workers: int):
        self.spec, self.o = spec, spec.opts
        self.role, self.W = role, max(workers, 1)
        self.R = spec.world_size * self.W
        self.r = spec.rank * self.W + role
        self.train = spec.mode == "train"
        self.need_cat = _needs_category(self.o)
        self.shards_opened = 0
        self.reports: dict = {}  # damaged samples found and not yet sent with a batch
        self._orders: dict = {}
        self._listings: dict = {}
        self._seg_starts: dict = {}
        self._spares: dict = {}

    # -- plumbing
    def order(self, si: int) -> _ShardOrder:
        if si not in self._orders:
            shuffle = self.o.shard_shuffle and self.train
            self._orders[si] = _ShardOrder(len(self.spec.sources[si].urls), self.spec.seed, si, shuffle,
                                           self.spec.salt)
        return self._orders[si]

    def open(self, si: int, url: str, skip_to: int = 0, only: set | None = None, want=None):
        """A TarReader over one shard. The data of samples before ``skip_to`` (or not in ``only``), or of
        members ``want(key, suffix)`` refuses, is skipped unread where the file can seek."""
        if want is None and (skip_to or only is not None):
            state = {"key": None, "n": -1}

            def want(key, suffix):
                if key != state["key"]:
                    state["key"], state["n"] = key, state["n"] + 1
                return state["n"] >= skip_to if only is None else state["n"] in only

        o = self.o
        return open_shard(url, o.open_retries, o.retry_delay, allow_pipe=self.spec.sources[si].allow_pipe, want=want)

    def listing(self, si: int, idx: int, need_list: bool) -> tuple[int | None, list | None]:
        """(samples, categories or None) of shard ``idx``; categories only where the plan needs them."""
        src = self.spec.sources[si]
        n = src.counts[idx]
        if not self.need_cat:
            return n, None
        codes = src.codes[idx] if src.codes else None
        if codes is not None:
            return n, decode_categories(codes[1], codes[0])
        if not need_list:
            return n, None  # live: from the json members as they are read
        key = (si, idx)
        if key not in self._listings:
            reader = self.open(si, src.urls[idx], want=lambda k, suffix: suffix == META_SUFFIX)
            cats = [_category(_meta(s.members.get(META_SUFFIX))) for s in reader.samples()]
            self._listings[key] = cats
        cats = self._listings[key]
        if n is None:
            n = len(cats)
        return n, cats[:n] + ["unknown"] * (n - len(cats))

    def missing(self, url: str, k: int, n: int, reader) -> TarSample:
        why = reader.truncated if reader is not None and reader.truncated else "the shard ends early"
        return TarSample(f"#{k}", {}, k, problem=f"missing: {why} (the manifest says {n} samples)", cut=True)

    def crops_of(self, category, u: float) -> int:
        o = self.o
        if o.categories and category not in o.categories:
            return 0
        if not self.train:
            return 1
        x = o.crops_per_image * float(o.category_weights.get(category, 1.0))
        return int(x) + int(u < x - int(x))

    # -- pixels
    def materialize(self, si: int, pos: int, url: str, sample: TarSample, m: int, seg: int):
        """The ``m`` crops of a sample (HWC arrays + key, category, prompt), or :class:`_Damaged`."""
        sp, o = self.spec, self.o
        meta = _meta(sample.members.get(META_SUFFIX))
        key = str(meta.get("key") or sample.key)
        if sample.cut or (sample.problem and not sample.members):  # (logged per shard by the cursor)
            return _Damaged(url, key, sample.problem or "incomplete sample", quiet=True)
        lq_s, hq_s = image_members(sample.members)
        if lq_s is None or hq_s is None:
            missing = " and ".join(n for n, s in (("lq", lq_s), ("hq", hq_s)) if s is None)
            why = f"no {missing} member (members: {', '.join(sorted(sample.members)) or 'none'})"
            return _Damaged(url, key, why + (f"; {sample.problem}" if sample.problem else ""))
        try:
            lq = decode_image(sample.members[lq_s], image_ext(lq_s), o.decoder)
        except DecodeError as e:
            return _Damaged(url, key, f"cannot decode {lq_s}: {e}")
        try:
            gt = decode_image(sample.members[hq_s], image_ext(hq_s), o.decoder)
        except DecodeError as e:
            return _Damaged(url, key, f"cannot decode {hq_s}: {e}")
        names = (f"{url}:{key}.{lq_s}", f"{url}:{key}.{hq_s}")
        try:
            check_pair_size(lq, gt, o.scale, names)
        except ValueError as e:
            return _Damaged(url, key, str(e))
        category, prompt = _category(meta), str(meta.get("prompt") or o.prompt)
        out = []
        train = self.train
        rng = np.random.default_rng([sp.seed, sp.salt, seg, si, pos, sample.ordinal, 0xC409])
        if train and o.gt_size:
            if min(gt.shape[:2]) < o.gt_size:
                return _Damaged(url, key, f"HQ {gt.shape[0]}x{gt.shape[1]} is smaller than gt_size {o.gt_size}")
            for _ in range(m):
                a, b = paired_random_crop(lq, gt, o.gt_size, o.scale, rng, names)
                a, b = paired_flip_rot(a, b, o.use_hflip, o.use_rot, rng)
                out.append((np.ascontiguousarray(a), np.ascontiguousarray(b), key, category, prompt))
        else:
            for _ in range(m):
                a, b = paired_flip_rot(lq, gt, o.use_hflip, o.use_rot, rng) if train else (lq, gt)
                out.append((np.ascontiguousarray(a), np.ascontiguousarray(b), key, category, prompt))
        return out

    def report(self, bad: "_Damaged") -> None:
        """A damaged sample goes with the reader's next batch (once per pass: it is read once per pass)."""
        if bad.id not in self.reports:
            self.reports[bad.id] = bad.why
            if not bad.quiet:
                log.warning("skipped sample %r in shard %s: %s", bad.key, bad.url, bad.why)

    def spare(self, seg: int, first: list) -> list:
        """Crops of the first decodable sample of this reader's segment (deterministic): what fills a batch
        whose crops are all damaged when the shuffle buffer has no good crop either."""
        if seg not in self._spares:
            limit = sum(len(s.urls) for s in self.spec.sources) + 1
            cur = _Cursor(self, 0, first[0] + self.r, None)
            cur.live = True
            found = None
            opened0 = self.shards_opened
            while found is None:
                ev = cur.next()
                if ev is None or self.shards_opened - opened0 > limit:
                    break
                pos, k, _, sample = ev
                res = self.materialize(0, pos, cur.url, sample, self.spec.batch_size, seg)
                if isinstance(res, list):
                    found = res
            cur.close()
            self.shards_opened = opened0
            if found is None:
                raise RuntimeError(f"dataset '{self.o.name}': reader {self.r} found no decodable sample in "
                                   f"{limit} shards; check the shards with `ggt-ir shards verify`")
            self._spares[seg] = found
        return self._spares[seg]

    def assemble(self, tokens: list, content: dict, buf: list, seg: int, j: int, first: list) -> dict:
        """The batch of ``tokens``; holes (crops of damaged samples) filled with copies of good crops."""
        items = [None if isinstance(content[s], _Damaged) else content[s][c] for s, c in tokens]
        if any(it is None for it in items):
            good = [it for it in items if it is not None]
            if not good:
                good = [content[s][c] for s, c in buf if not isinstance(content[s], _Damaged)]
            if not good:
                good = self.spare(seg, first)
            rng = np.random.default_rng([self.spec.seed, self.spec.salt, seg, self.spec.rank, self.role, j, 0xF111])
            items = [it if it is not None else good[int(rng.integers(len(good)))] for it in items]
        batch = _collate(items, self.reports)
        self.reports = {}
        return batch

    # -- the plan
    def run(self, seg: int, first: list, end: list | None, n_max: int | None, skip: int, j_first: int,
            stats: dict | None = None):
        """Yield the batches of one segment (a resampled segment of ``n_max`` batches, or an exact pass when
        ``end`` is given) after replaying its first ``skip`` batches dry. ``j_first``: the reader's batch index
        of the segment's first batch. ``stats`` (optional) gets the plan's state at the end."""
        sp, o = self.spec, self.o
        B, S = sp.batch_size, len(sp.sources)
        cursors = [_Cursor(self, si, first[si] + self.r, end[si] if end else None) for si in range(S)]
        rng_buf = np.random.default_rng([sp.seed, sp.salt, seg, sp.rank, self.role, 0xB0FF])
        rng_m = [np.random.default_rng([sp.seed, sp.salt, seg, sp.rank, self.role, si, 0x3A]) for si in range(S)]
        weights = [s.weight for s in sp.sources]
        current = [0.0] * S
        running = list(range(S))
        capacity = o.shuffle_buffer if self.train else 0
        initial = min(capacity, max(B * 2, capacity // 2))  # then it grows to capacity at half rate
        buf: list = []
        batch: list = []
        debt = 0.0
        alive: dict = {}  # sample id -> [si, pos, ordinal, crops, crops left, read since the last batch]
        content: dict = {}  # sample id -> list of crops | (report id, reason)
        state = {"emitted": 0, "live": skip == 0}
        idle_limit = sum(len(s.urls) for s in sp.sources) + 1
        last_productive = self.shards_opened
        if state["live"]:
            for c in cursors:
                c.go_live()

        def restore() -> None:
            """Switch from dry to live: re-read the samples whose crops are still waiting."""
            wanted: dict = {}
            for sid, a in alive.items():
                wanted.setdefault((a[0], a[1]), set()).add(a[2])
            for (si, pos), ordinals in sorted(wanted.items()):
                url = sp.sources[si].urls[self.order(si)[pos]]
                reader = self.open(si, url, only=ordinals)
                got = {s.ordinal: s for s in reader.samples() if s.ordinal in ordinals}
                n = sp.sources[si].counts[self.order(si)[pos]]
                for k in ordinals:
                    sample = got.get(k) or self.missing(url, k, n, reader)
                    sid = (si, pos, k)
                    content[sid] = res = self.materialize(si, pos, url, sample, alive[sid][3], seg)
                    if isinstance(res, _Damaged) and alive[sid][5]:
                        self.report(res)
            for c in cursors:
                c.go_live()
            state["live"] = True

        def complete(tokens: list):
            """A batch of tokens is complete: the batch (live), or None (dry)."""
            j = j_first + state["emitted"]
            out = self.assemble(tokens, content, buf, seg, j, first) if state["live"] else None
            state["emitted"] += 1
            for sid, c in tokens:
                a = alive[sid]
                a[4] -= 1
                if a[4] == 0:
                    del alive[sid]
                    content.pop(sid, None)
            for a in alive.values():
                a[5] = False
            if not state["live"] and state["emitted"] == skip:
                restore()
            return out

        try:
            while running:
                if n_max is not None and state["emitted"] >= n_max:
                    return
                # smooth weighted round-robin over the sources still running
                total = sum(weights[i] for i in running)
                for i in running:
                    current[i] += weights[i]
                j = max(running, key=lambda i: current[i])
                current[j] -= total
                ev = cursors[j].next()
                if ev is None:
                    running.remove(j)
                    continue
                pos, k, category, sample = ev
                m = self.crops_of(category, rng_m[j].random())
                if not m:
                    if self.shards_opened - last_productive > idle_limit:
                        raise RuntimeError(
                            f"dataset '{o.name}': {idle_limit} shards in a row gave no sample to train on "
                            f"(categories {o.categories}, category_weights {dict(o.category_weights)}); check the "
                            "shards and the filters")
                    continue
                last_productive = self.shards_opened
                sid = (j, pos, k)
                alive[sid] = [j, pos, k, m, m, True]
                if state["live"]:
                    content[sid] = res = self.materialize(j, pos, cursors[j].url, sample, m, seg)
                    if isinstance(res, _Damaged):
                        self.report(res)
                        if not self.train:  # evaluation: damaged samples are left out, not filled
                            del alive[sid], content[sid]
                            continue
                tokens = [(sid, c) for c in range(m)]
                if not capacity:
                    for t in tokens:
                        batch.append(t)
                        if len(batch) == B:
                            out = complete(batch)
                            batch = []
                            if out is not None:
                                yield out
                            if n_max is not None and state["emitted"] >= n_max:
                                return
                    continue
                buf.extend(tokens)
                if len(buf) < initial:
                    continue
                # below capacity the buffer keeps growing (half of the new crops leave); full, all of them leave
                debt += m * (1.0 if len(buf) >= capacity else 0.5)
                while debt >= 1 and buf:
                    debt -= 1
                    i = int(rng_buf.integers(len(buf)))
                    buf[i], buf[-1] = buf[-1], buf[i]
                    batch.append(buf.pop())
                    if len(batch) == B:
                        out = complete(batch)
                        batch = []
                        if out is not None:
                            yield out
                        if n_max is not None and state["emitted"] >= n_max:
                            return
            # the end of an exact pass: drain the buffer; a partial last batch only in evaluation
            rng_buf.shuffle(buf)
            while buf:
                batch.append(buf.pop(0))
                if len(batch) == B:
                    out = complete(batch)
                    batch = []
                    if out is not None:
                        yield out
            if batch and not self.train and state["live"]:
                yield self.assemble(batch, content, buf, seg, j_first + state["emitted"], first)
                state["emitted"] += 1
        finally:
            for c in cursors:
                c.close()
            if stats is not None:
                stats.update(emitted=state["emitted"], alive=dict(alive))

    # -- segments
    def seg_start(self, e: int) -> list:
        """Shard positions where resampled segment ``e`` starts (the same on every reader)."""
        sp = self.spec
        if not self._seg_starts:
            self._seg_starts[0] = [0] * len(sp.sources)
        last = max(self._seg_starts)
        while last < e:
            self._seg_starts[last + 1] = _advance(sp.sources, self.o, self._seg_starts[last], sp.segment_batches,
                                                  sp.world_size, self.W, sp.seed, sp.batch_size, sp.salt)
            last += 1
        return self._seg_starts[e]

    def pass_tokens(self, q: int) -> int:
        """Crops this reader plans in exact pass ``q`` (the plan's per-sample draws, without decoding)."""
        sp, o = self.spec, self.o
        total = 0
        for si, s in enumerate(sp.sources):
            N = len(s.urls)
            order = self.order(si)
            rng = np.random.default_rng([sp.seed, sp.salt, q, sp.rank, self.role, si, 0x3A])
            for pos in range(q * N + self.r, (q + 1) * N, self.R):
                n, cats = self.listing(si, order[pos], need_list=True)
                if not self.need_cat:
                    rng.random(n)  # (the draws are made, as in the live plan, but do not change anything)
                    total += n * o.crops_per_image
                    continue
                u = rng.random(n)
                w = np.array([0.0 if (o.categories and c not in o.categories) else
                              o.crops_per_image * float(o.category_weights.get(c, 1.0)) for c in cats])
                total += int((np.floor(w) + (u < w - np.floor(w))).sum())
        return total

    def batches(self) -> Iterator[dict]:
        sp = self.spec
        j0 = max(0, _ceil_div(sp.start_iter - self.role, self.W))  # this reader's next batch
        if not self.train:  # one pass; the last batch waits so it can carry the reports found after it
            held = None
            for b in self.run(0, [0] * len(sp.sources), [len(s.urls) for s in sp.sources], None, 0, 0):
                if held is not None:
                    yield held
                held = b
            if held is not None:
                held["skipped"].update(self.reports)
                yield held
            return
        if sp.exact:
            q, before, empty = 0, 0, 0
            while j0:  # find the pass of batch j0 from the plan's crop counts
                c = self.pass_tokens(q) // sp.batch_size
                empty = empty + 1 if c == 0 else 0
                self._check_starving(empty)
                if before + c > j0:
                    break
                before, q = before + c, q + 1
            skip = j0 - before
            if skip == 0 and q > 0:
                self._tail_reports(q - 1, before - (self.pass_tokens(q - 1) // sp.batch_size))
            while True:
                stats: dict = {}
                first = [q * len(s.urls) for s in sp.sources]
                end = [(q + 1) * len(s.urls) for s in sp.sources]
                yield from self.run(q, first, end, None, skip, before, stats)
                empty = empty + 1 if stats["emitted"] == 0 else 0
                self._check_starving(empty)
                before, q, skip = before + stats["emitted"], q + 1, 0
        L = sp.segment_batches
        if L is None:  # one endless segment (no per-shard counts)
            yield from self.run(0, [0] * len(sp.sources), None, None, j0, j0)
            return
        e = (j0 * self.W + self.role) // L
        while True:
            lo = max(0, _ceil_div(e * L - self.role, self.W))
            hi = max(0, _ceil_div((e + 1) * L - self.role, self.W))
            if hi > lo:
                skip = max(0, j0 - lo)
                yield from self.run(e, self.seg_start(e), None, hi - lo, skip, lo)
            e += 1

    def _check_starving(self, empty_passes: int) -> None:
        if empty_passes > self.R + 1:
            raise RuntimeError(
                f"dataset '{self.o.name}': reader {self.r} (rank {self.spec.rank}) got no full batch of "
                f"{self.spec.batch_size} from its shards in {empty_passes} passes in a row: fewer samples than "
                "batch_size x readers. Lower batch_size_per_gpu or num_worker_per_gpu, or use resampled: true.")

    def _tail_reports(self, q: int, j_first: int) -> None:
        """A run resumed at the start of pass ``q + 1``: report the damaged samples of pass ``q`` read after its
        last batch (they would have gone with the next batch)."""
        sp = self.spec
        stats: dict = {}
        first = [q * len(s.urls) for s in sp.sources]
        end = [(q + 1) * len(s.urls) for s in sp.sources]
        for _ in self.run(q, first, end, None, 1 << 62, j_first, stats):
            pass
        for (si, pos, k), a in stats["alive"].items():
            if not a[5]:
                continue
            url = sp.sources[si].urls[self.order(si)[pos]]
            reader = self.open(si, url, only={k})
            got = {s.ordinal: s for s in reader.samples() if s.ordinal == k}
            sample = got.get(k) or self.missing(url, k, sp.sources[si].counts[self.order(si)[pos]], reader)
            res = self.materialize(si, pos, url, sample, a[3], q)
            if isinstance(res, _Damaged):
                self.report(res)


class _ShardStream(torch.utils.data.IterableDataset):
    def __init__(self, spec: _Spec, workers: int):
        super().__init__()
        self.spec, self.workers = spec, workers

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        if info is not None:
            import cv2

            # (no cv2.setNumThreads here: in a forked worker it can deadlock on the parent's thread pool, and
            # decoding is single-threaded anyway)
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our warning names shard + key
        W = max(self.workers, 1)
        wid = info.id if info is not None else 0
        # the DataLoader asks its workers in turn, starting with worker 0; batch i of the rank is reader i mod W's
        role = (wid + self.spec.start_iter) % W if self.spec.mode == "train" else wid
        return _Reader(self.spec, role, self.workers).batches()


def _to_float(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(a).permute(2, 0, 1)
    return t.float().div_(65535.0 if a.dtype == np.uint16 else 255.0)


def _collate(items: list, skipped: dict) -> dict:
    """A batch as the worker sends it: ``lq``/``gt`` stay 8-bit (or 16-bit) BCHW, a quarter of the float bytes
    through shared memory; :func:`_finish` makes them float in the receiving process. ``skipped``: the damaged
    samples found since the reader's previous batch, ``{"<shard>:<key>": reason}``."""

    def stack(idx: int) -> torch.Tensor:
        arrs = [it[idx] for it in items]
        shapes = {a.shape for a in arrs}
        if len(shapes) > 1:
            raise ValueError(f"cannot batch images of different sizes {sorted(shapes)}; use batch_size 1 or gt_size")
        if len({a.dtype for a in arrs}) == 1:
            return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
        return torch.stack([_to_float(a) for a in arrs]).contiguous()  # mixed bit depths: float here

    return {"lq": stack(0), "gt": stack(1), "key": [it[2] for it in items], "category": [it[3] for it in items],
            "prompt": [it[4] for it in items], "skipped": dict(skipped)}


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
        self.sources: list[_Source] = []
        for i, s in enumerate(_as_sources(opts)):
            if s.urls:  # what the user wrote: pipe: is honoured here
                urls = expand_urls(s.urls)
                entries = manifest_entries(urls, s.manifest, allow_pipe=True)
                allow_pipe = True
            else:  # names read from a manifest: only ever files next to it
                urls, entries = _manifest_urls(s.manifest, s.split)
                allow_pipe = False
            if not urls:
                raise OptionsError(f"dataset '{opts.name}': source {i} has no shards ({s.urls or s.manifest})")
            counts = [_count(e) for e in entries]
            codes = [_codes(e, n) for e, n in zip(entries, counts)]
            cat_counts = [e.get("categories") if e and isinstance(e.get("categories"), dict) else None
                          for e in entries]
            self.sources.append(_Source(s.name or f"source{i}", urls, counts, float(s.weight), allow_pipe, codes,
                                        cat_counts))
        self.batches_per_epoch: int | None = None
        self._items = None  # map-style index (validation)

    # ------------------------------------------------------------------ sizes and planning
    @property
    def counts_known(self) -> bool:
        return all(c is not None for s in self.sources for c in s.counts)

    def num_samples(self) -> int | None:
        """Samples in all shards (from the manifests), None when unknown."""
        return sum(sum(s.counts) for s in self.sources) if self.counts_known else None

    def _count_local_shards(self) -> None:
        """Shards without a manifest count: count local ones (tar headers only, a seek per member)."""
        for s in self.sources:
            for i, u in enumerate(s.urls):
                if s.counts[i] is None and local_path(u) is not None:
                    try:
                        reader = open_shard(u, 0, 0, want=lambda k, x: False)
                        s.counts[i] = sum(1 for _ in reader.samples())
                    except OSError:
                        pass  # left unknown; opening it in training reports it

    def _check_exact(self, world_size: int, workers: int) -> None:
        R = world_size * max(workers, 1)
        for s in self.sources:
            if len(s.urls) < R:
                raise ValueError(
                    f"dataset '{self.opts.name}': exact passes need at least one shard per reader, but {s.name} has "
                    f"{len(s.urls)} shard(s) for {world_size} rank(s) x {max(workers, 1)} worker(s) = {R} readers. "
                    "Use fewer workers (num_worker_per_gpu), smaller shards (ggt-ir shards build --shard-size / "
                    "--max-samples-per-shard), or the resampled stream (resampled: true).")

    def _loader(self, spec: _Spec, workers: int, seed: int) -> torch.utils.data.DataLoader:
        import cv2  # noqa: F401  (imported once here, inherited by forked workers)

        if self.opts.decoder == "torchvision":
            import torchvision.io  # noqa: F401
        # batches arrive 8-bit and are made float (and pinned, with pin_memory) in _finish, in this process;
        # its own generator: creating the loader must not draw from the global RNG (exact resume)
        return torch.utils.data.DataLoader(
            _ShardStream(spec, workers), batch_size=None, num_workers=workers, pin_memory=False,
            prefetch_factor=self.opts.prefetch_factor if workers else None, persistent_workers=False,
            generator=torch.Generator().manual_seed(seed))

    def _expected_crops(self) -> float:
        """Expected training crops in one pass (per-category counts from the manifests when weights apply)."""
        o = self.opts
        if not _needs_category(o):
            return (self.num_samples() or 0) * _crop_factor(o)[0]
        cats: dict[str, int] = {}
        for s in self.sources:
            for cc in s.cat_counts:
                for c, n in (cc or {}).items():
                    cats[c] = cats.get(c, 0) + int(n)
        if not cats:
            return (self.num_samples() or 0) * _crop_factor(o)[0]
        k, cw = o.crops_per_image, o.category_weights
        return sum(n * k * cw.get(c, 1.0) for c, n in cats.items() if not o.categories or c in o.categories)

    # ------------------------------------------------------------------ training
    def train_loader(self, seed: int, rank: int, world_size: int, start_iter: int) -> Iterator[dict]:
        """This rank's endless stream of training batches: exactly the batches after the first ``start_iter``
        of an uninterrupted run with the same seed, ranks, workers and options."""
        o = self.opts
        W, B = o.num_worker_per_gpu, o.batch_size_per_gpu
        self._count_local_shards()
        known = self.counts_known
        per_pass = int(self._expected_crops() // (world_size * B)) if known else 0
        if not o.resampled:
            self._check_exact(world_size, W)
        # the epoch shown in the training log: passes over the data (or epoch_batches when set)
        self.batches_per_epoch = o.epoch_batches or per_pass or None
        segment = (o.epoch_batches or max(per_pass, MIN_EPOCH_BATCHES)) if known and o.resampled else None
        salt = 0
        if not known:
            log.warning("dataset '%s': no per-shard sample counts (no manifest, remote shards)%s", o.name,
                        "; this resumed stream is reseeded, not replayed, and may repeat samples of the pass"
                        if start_iter else "")
            salt, start_iter = start_iter, 0
        spec = _Spec(self.sources, o, "train", seed, rank, world_size, start_iter, B, exact=not o.resampled,
                     segment_batches=segment, salt=salt)

        def gen() -> Iterator[dict]:
            for batch in self._loader(spec, W, seed):
                yield _finish(batch, o.pin_memory)

        return gen()

    # ------------------------------------------------------------------ evaluation
    def eval_loader(self, rank: int = 0, world_size: int = 1, batch_size: int = 1,
                    num_workers: int | None = None) -> Iterator[dict]:
        """One exact pass over every sample (whole images, no augmentation), this rank's share."""
        W = self.opts.num_worker_per_gpu if num_workers is None else num_workers
        self._check_exact(world_size, W)
        opts = replace(self.opts, gt_size=0)
        spec = _Spec(self.sources, opts, "eval", 0, rank, world_size, 0, batch_size)
        return (_finish(b, opts.pin_memory) for b in self._loader(spec, W, 0))

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
        lq_s, hq_s = image_members(members)
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
