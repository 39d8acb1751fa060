"""``ggt-ir shards build`` / ``ggt-ir shards verify``: paired image folders -> webdataset tar shards.

Build (docs/data.md has the full story)::

    ggt-ir shards build /data/GGT-100K --out /data/shards --name ggt100k
    ggt-ir shards build --lq-dir Existing-dataset/RealSR/LQ --hq-dir Existing-dataset/RealSR/GT --out shards --name realsr
    ggt-ir shards build ROOT --lq-glob '**/input/*.png' --hq-glob '**/target/*' --out shards
    ggt-ir shards build --pairs-file pairs.csv --out shards

Each sample is ``<key>.lq.<ext>``, ``<key>.hq.<ext>`` (the original bytes unless ``--encode``) and
``<key>.json`` (key, category, split, source paths, sizes, pixel hashes, prompt and metadata when present). Shards are
``<name>-<split>-NNNNNN.tar`` (so ``<name>-train-{000000..000123}.tar`` addresses them) of about
``--shard-size`` bytes. ``<name>-manifest.json`` lists the shards with samples, bytes and sha256 each,
counts per split and category and the tool version; ``<name>-problems.tsv`` lists every unpaired,
unreadable or mismatched file. A rerun skips finished shards after checking them against the manifest.

Verify::

    ggt-ir shards verify /data/shards/ggt100k-manifest.json      # re-hash every shard, decode every sample
    ggt-ir shards verify --urls '/data/shards/x-train-{000000..000009}.tar'   # shards without a manifest
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import json
import multiprocessing as mp
import os
import random
import re
import sys
import tarfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ggt_ir.data.pairing import (Pair, PairingReport, find_pairs, pairs_from_globs, pairs_from_list,
                                 pairs_from_two_folders)
from ggt_ir.data.shard_format import (FORMAT, FORMAT_VERSION, MANIFEST_SUFFIX, META_SUFFIX, SHARD_LAYOUT_VERSION,
                                      check_shard_name, encode_categories, image_members, manifest_file_name,
                                      member_names, pixel_digest, problems_file_name, shard_file_name)
from ggt_ir.data.shard_io import DecodeError, decode_image, expand_urls, image_ext, local_path, open_shard
from ggt_ir.utils.fs import atomic_write_json, sha256_file

_EXT_NORMAL = {"jpeg": "jpg", "tiff": "tif"}
# --encode: how the images are stored. All but jpeg are lossless (the decoded pixels hash the same as the
# source's, recorded in each sample's json); the fast ones trade disk for decode time (docs/data.md, section 8)
ENCODINGS = {
    "copy": "the original bytes (default)",
    "png": "PNG, zlib level --png-compression",
    "png-fast": "PNG stored without compression or filters: any PNG reader, ~4x faster to decode, raw-pixel size",
    "qoi": "QOI: ~5x faster to decode than PNG at about PNG's size (8-bit: 16-bit images are stored as PNG)",
    "raw": "uncompressed binary PPM: the fastest to decode, 3 (or 6) bytes a pixel",
    "webp": "lossless WebP: the smallest, slow to decode (8-bit: 16-bit images are stored as PNG)",
    "jpeg": "JPEG --jpeg-quality (lossy)",
}
ENCODING_ALIASES = {"original": "copy"}


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("ggt-ir")
    except Exception:  # noqa: BLE001
        return "unknown"


def parse_size(text: str | int) -> int:
    """``1GB``, ``500MB``, ``1.5G``, ``4096`` -> bytes (powers of 1000 for KB/MB/GB, 1024 for KiB/MiB/GiB)."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)(i?)(b?)\s*", str(text).lower())
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 1GB, 500MB, 2GiB, 1000000)")
    base = 1024 if m[3] else 1000
    return int(float(m[1]) * base ** "_kmgt".index(m[2] or "_"))


def tar_key(key: str) -> str:
    """A member-name-safe form of a sample key: no dots (webdataset splits the suffix at the first dot)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", key.replace("/", "__")).strip("_") or "sample"


# ----------------------------------------------------------------------------- config and plan
@dataclass
class BuildConfig:
    out: str
    name: str = "ggt100k"
    shard_size: int = 1_000_000_000
    max_samples_per_shard: int = 0  # 0: no limit
    encode: str = "copy"  # a key of ENCODINGS
    jpeg_quality: int = 95
    png_compression: int = 3
    check: str = "decode"  # decode | header | none
    scale: int = 1
    shuffle: bool = True
    seed: int = 0
    jobs: int = 0  # 0: all cores
    progress: bool = True
    overwrite: bool = False
    source: dict = field(default_factory=dict)  # what was read, for the manifest


@dataclass
class ShardSpec:
    name: str
    split: str
    pairs: list[dict]  # serialized pairs (paths as str)
    fingerprint: str = ""


def _pair_dict(p: Pair, root: Path | None) -> dict:
    def rel(x: Path) -> str:
        if root is not None:
            try:
                return x.resolve().relative_to(root.resolve()).as_posix()
            except ValueError:
                pass
        return str(x)

    d = {"key": p.key, "lq": str(p.lq), "hq": str(p.gt), "lq_rel": rel(p.lq), "hq_rel": rel(p.gt),
         "category": p.category, "split": p.split, "prompt": p.prompt, "meta": p.meta}
    try:
        s1, s2 = p.lq.stat(), p.gt.stat()
        d["lq_bytes"], d["hq_bytes"], d["mtimes"] = s1.st_size, s2.st_size, [s1.st_mtime_ns, s2.st_mtime_ns]
    except OSError:
        d["lq_bytes"] = d["hq_bytes"] = 0
        d["mtimes"] = [0, 0]
    return d


def _padded(n: int) -> int:
    return 512 + (n + 511) // 512 * 512


def plan_shards(pairs: list[Pair], cfg: BuildConfig, root: Path | None) -> list[ShardSpec]:
    """Deterministic shard plan: per split, pairs sorted by key (then shuffled with ``cfg.seed``) and cut into
    shards of about ``cfg.shard_size`` bytes (source sizes; approximate when re-encoding)."""
    by_split: dict[str, list[Pair]] = {}
    for p in pairs:
        by_split.setdefault(p.split, []).append(p)
    specs: list[ShardSpec] = []
    for split in sorted(by_split):
        items = sorted(by_split[split], key=lambda p: p.key)
        if cfg.shuffle:
            random.Random(f"{cfg.seed}:{split}").shuffle(items)
        current: list[dict] = []
        size = 1024  # end-of-archive blocks
        for p in items:
            d = _pair_dict(p, root)
            est = _padded(d["lq_bytes"]) + _padded(d["hq_bytes"]) + _padded(1024 + len(p.prompt.encode()))
            full = (cfg.max_samples_per_shard and len(current) >= cfg.max_samples_per_shard) or (
                current and size + est > cfg.shard_size)
            if full:
                specs.append(ShardSpec(shard_file_name(cfg.name, split, len(specs_of(specs, split))), split, current))
                current, size = [], 1024
            current.append(d)
            size += est
        if current:
            specs.append(ShardSpec(shard_file_name(cfg.name, split, len(specs_of(specs, split))), split, current))
    recipe = {k: getattr(cfg, k) for k in ("encode", "jpeg_quality", "png_compression", "check", "scale")}
    for s in specs:
        h = hashlib.sha256(json.dumps([recipe, SHARD_LAYOUT_VERSION, s.pairs], sort_keys=True).encode())
        s.fingerprint = h.hexdigest()[:32]
    return specs


def specs_of(specs: list[ShardSpec], split: str) -> list[ShardSpec]:
    return [s for s in specs if s.split == split]


def brace_pattern(names: list[str]) -> str:
    """``[x-train-000000.tar, ..., x-train-000123.tar]`` -> ``x-train-{000000..000123}.tar``."""
    if len(names) == 1:
        return names[0]
    m0, m1 = re.match(r"^(.*-)(\d{6})\.tar$", names[0]), re.match(r"^(.*-)(\d{6})\.tar$", names[-1])
    return f"{m0[1]}{{{m0[2]}..{m1[2]}}}.tar"


# ----------------------------------------------------------------------------- writing one shard
class _HashingWriter:
    def __init__(self, f):
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.h.update(b)
        self.n += len(b)
        return self.f.write(b)

    def flush(self) -> None:
        self.f.flush()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode = len(data), 0, 0o444  # fixed metadata: reruns give identical bytes
    ti.uname = ti.gname = ""
    tf.addfile(ti, io.BytesIO(data))


def _encode(arr, fmt: str, cfg: BuildConfig) -> tuple[bytes, str]:
    """Re-encode a decoded RGB image: (bytes, extension)."""
    import cv2
    import numpy as np

    bgr = np.ascontiguousarray(arr[..., ::-1])

    def cv(ext: str, params: list) -> bytes:
        ok, buf = cv2.imencode(ext, bgr, params)
        if not ok:
            raise ValueError(f"OpenCV cannot encode {ext}")
        return buf.tobytes()

    if fmt == "png" or (fmt in ("qoi", "webp") and arr.dtype != np.uint8):  # (8-bit formats: 16-bit stays lossless)
        return cv(".png", [cv2.IMWRITE_PNG_COMPRESSION, cfg.png_compression]), "png"
    if fmt == "png-fast":
        return cv(".png", [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]), "png"
    if fmt == "qoi":
        import qoi

        return bytes(qoi.encode(np.ascontiguousarray(arr))), "qoi"
    if fmt == "raw":
        return cv(".ppm", [cv2.IMWRITE_PXM_BINARY, 1]), "ppm"
    if bgr.dtype != np.uint8:  # WebP/JPEG are 8-bit
        bgr = (bgr / 257.0).round().astype(np.uint8)
    if fmt == "webp":
        return cv(".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]), "webp"  # >100: lossless
    if fmt == "jpeg":
        return cv(".jpg", [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality]), "jpg"
    raise ValueError(f"unknown encoding {fmt!r}; one of {', '.join(ENCODINGS)}")


def _image_size(data: bytes, ext: str, check: str):
    """(array or None, (h, w) or None); raises DecodeError/OSError for unreadable data."""
    if check == "decode":
        arr = decode_image(data, ext)
        return arr, list(arr.shape[:2])
    if check == "header":
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                return None, [im.height, im.width]
        except Exception as e:  # noqa: BLE001
            raise DecodeError(f"{type(e).__name__}: {e}") from None
    return None, None


_progress = None  # a shared counter in worker processes


def _init_worker(counter) -> None:
    global _progress
    _progress = counter
    if counter is not None:
        import cv2

        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # problems go to the problems file


def build_one_shard(spec: ShardSpec, cfg: BuildConfig) -> dict:
    """Write ``spec`` to ``<out>/<name>`` atomically; return its manifest entry (with ``dropped`` pairs)."""
    out = Path(cfg.out)
    final, tmp = out / spec.name, out / (spec.name + f".tmp{os.getpid()}")
    dropped, categories, written = [], Counter(), 0
    order: list[str] = []  # the category of every sample, in tar order (the manifest's category_codes)
    used_keys: set[str] = set()
    with open(tmp, "wb") as raw:
        hw = _HashingWriter(raw)
        with tarfile.open(fileobj=hw, mode="w|", format=tarfile.GNU_FORMAT) as tf:
            for d in spec.pairs:
                try:
                    problem = None
                    blobs, sizes, fmts, digests = {}, {}, {}, {}
                    for role in ("lq", "hq"):
                        path = Path(d[role])
                        data = path.read_bytes()
                        ext = _EXT_NORMAL.get(path.suffix.lower().lstrip("."), path.suffix.lower().lstrip("."))
                        need_decode = cfg.encode != "copy"
                        arr, size = _image_size(data, ext, "decode" if need_decode else cfg.check)
                        if arr is not None and cfg.encode != "jpeg":
                            digests[role] = pixel_digest(arr)  # of the source: verify checks the stored image
                        if need_decode:
                            data, ext = _encode(arr, cfg.encode, cfg)
                        blobs[role], sizes[role], fmts[role] = data, size, ext
                    if sizes["lq"] and sizes["hq"] and [v * cfg.scale for v in sizes["lq"]] != sizes["hq"]:
                        problem = (f"size mismatch: LQ {sizes['lq'][0]}x{sizes['lq'][1]}, HQ "
                                   f"{sizes['hq'][0]}x{sizes['hq'][1]}, scale {cfg.scale}")
                except (OSError, DecodeError, ValueError) as e:
                    problem = f"unreadable: {type(e).__name__}: {e}"
                if problem:
                    dropped.append({"key": d["key"], "lq": d["lq"], "hq": d["hq"], "reason": problem})
                else:
                    tk = tar_key(d["key"])
                    while tk in used_keys:
                        tk += "_"
                    used_keys.add(tk)
                    meta = {"key": d["key"], "category": d["category"], "split": d["split"],
                            "lq_path": d["lq_rel"], "hq_path": d["hq_rel"], "lq_size": sizes["lq"],
                            "hq_size": sizes["hq"], "lq_format": fmts["lq"], "hq_format": fmts["hq"],
                            "encoding": cfg.encode if cfg.encode != "jpeg" else f"jpeg{cfg.jpeg_quality}"}
                    for role, digest in digests.items():
                        meta[f"{role}_pixels"] = digest
                    if d.get("prompt"):
                        meta["prompt"] = d["prompt"]
                    if d.get("meta"):
                        meta["meta"] = d["meta"]
                    lq_name, hq_name, json_name = member_names(tk, fmts["lq"], fmts["hq"])
                    _add(tf, lq_name, blobs["lq"])
                    _add(tf, hq_name, blobs["hq"])
                    _add(tf, json_name, json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())
                    categories[d["category"]] += 1
                    order.append(d["category"])
                    written += 1
                if _progress is not None:
                    with _progress.get_lock():
                        _progress.value += 1
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, final)
    entry = {"name": spec.name, "split": spec.split, "samples": written, "bytes": hw.n,
             "sha256": hw.h.hexdigest(), "categories": dict(sorted(categories.items())),
             "fingerprint": spec.fingerprint, "dropped": dropped}
    codes = encode_categories(order, sorted(categories))
    if codes is not None:
        entry["category_codes"] = codes  # lets a resumed stream replay category_weights without reading shards
    return entry


def _check_existing(spec: ShardSpec, entry: dict | None, cfg: BuildConfig) -> dict | None:
    """The manifest entry when the shard on disk is finished and intact, else None (rebuild it)."""
    path = Path(cfg.out) / spec.name
    if not entry or entry.get("fingerprint") != spec.fingerprint or not path.is_file():
        return None
    if path.stat().st_size != entry.get("bytes") or sha256_file(path) != entry.get("sha256"):
        return None
    if _progress is not None:
        with _progress.get_lock():
            _progress.value += len(spec.pairs)
    return entry


def _task(args) -> tuple[dict, bool]:
    spec, entry, cfg = args
    ok = _check_existing(spec, entry, cfg)
    if ok is not None:
        return ok, True
    return build_one_shard(spec, cfg), False


# ----------------------------------------------------------------------------- build driver
def _summarize(entries: list[dict]) -> dict:
    split, cat, split_cat = Counter(), Counter(), {}
    for e in entries:
        split[e["split"]] += e["samples"]
        for c, n in e["categories"].items():
            cat[c] += n
            split_cat.setdefault(e["split"], Counter())[c] += n
    return {"samples": sum(split.values()), "split": dict(sorted(split.items())),
            "category": dict(sorted(cat.items())),
            "split_category": {s: dict(sorted(c.items())) for s, c in sorted(split_cat.items())}}


def build_shards(report: PairingReport, cfg: BuildConfig, root: Path | None = None, *,
                 default_split: str = "train", default_category: str = "unknown",
                 split_filter: str | None = None, categories: list[str] | None = None,
                 log=print) -> dict:
    """Write the shards of ``report.pairs``; return the manifest (also written to ``<out>/<name>-manifest.json``)."""
    cfg.encode = ENCODING_ALIASES.get(cfg.encode, cfg.encode)
    if cfg.encode not in ENCODINGS:
        raise ValueError(f"unknown encoding {cfg.encode!r}; one of {', '.join(ENCODINGS)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / manifest_file_name(cfg.name)
    problems_path = out / problems_file_name(cfg.name)
    pairs = []
    n_default_split = 0
    for p in report.pairs:
        if p.split == "unknown":
            p.split, n_default_split = default_split, n_default_split + 1
        if p.category == "unknown" and default_category != "unknown":
            p.category = default_category
        if split_filter and p.split != split_filter:
            continue
        if categories and p.category not in categories:
            continue
        pairs.append(p)
    if n_default_split:
        log(f"{n_default_split} pairs are under no train/test folder: put into split '{default_split}' "
            "(--default-split)")
    specs = plan_shards(pairs, cfg, root)
    old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    old_entries = {e["name"]: e for e in old.get("shards", [])}
    if old and not cfg.overwrite and old.get("name") not in (None, cfg.name):
        raise SystemExit(f"{manifest_path} belongs to another build")
    if cfg.overwrite:
        old_entries = {}
    planned = {s.name for s in specs}
    stale = sorted(p.name for p in out.glob(f"{cfg.name}-*.tar") if p.name not in planned)
    if stale:
        log(f"warning: {len(stale)} shard file(s) in {out} are not part of this build: {', '.join(stale[:5])}"
            + (" ..." if len(stale) > 5 else "") + " (remove them, or they will be picked up by brace patterns)")
    for f in out.glob(f"{cfg.name}-*.tar.tmp*"):
        f.unlink()  # left by an interrupted run

    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "tool": "ggt-ir", "tool_version": tool_version(),
        "name": cfg.name, "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": False, "source": cfg.source, "encoding": cfg.encode,
        "options": {k: v for k, v in asdict(cfg).items() if k not in ("out", "jobs", "progress", "overwrite",
                                                                     "source")},
        "shards": [], "urls": {}, "counts": {}, "problems": {},
    }
    entries: dict[str, dict] = {}
    jobs = cfg.jobs or os.cpu_count() or 1
    tasks = [(s, old_entries.get(s.name), cfg) for s in specs]
    total = sum(len(s.pairs) for s in specs)
    t0 = time.time()
    reused = 0

    def record(entry: dict, was_reused: bool) -> None:
        nonlocal reused
        reused += was_reused
        entries[entry["name"]] = entry
        manifest["shards"] = [entries[s.name] for s in specs if s.name in entries]
        atomic_write_json(manifest_path, manifest, indent=1)

    from ggt_ir.utils.progress import progress

    bar = progress(total=total, unit="pair", desc=f"shards {cfg.name}", enabled=cfg.progress, file=sys.stderr)
    if jobs == 1 or len(tasks) <= 1:
        counter = mp.Value("q", 0)
        _init_worker(counter)
        try:
            for t in tasks:
                record(*_task(t))
                bar.n = counter.value
                bar.refresh()
        finally:
            _init_worker(None)
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        counter = ctx.Value("q", 0)
        with ctx.Pool(min(jobs, len(tasks)), initializer=_init_worker, initargs=(counter,)) as pool:
            pending = pool.imap_unordered(_task, tasks)
            done = 0
            while done < len(tasks):
                try:
                    res = pending.next(timeout=0.25)
                except mp.TimeoutError:
                    if bar.n != counter.value:
                        bar.n = counter.value
                        bar.refresh()
                    continue
                record(*res)
                done += 1
                bar.n = counter.value
                bar.refresh()
    bar.n = total
    bar.close()

    shards = [entries[s.name] for s in specs]
    dropped = [d for e in shards for d in e.get("dropped", [])]
    with open(problems_path, "w", encoding="utf-8") as f:
        f.write("kind\tpath\treason\n")
        for path, why in report.unpaired:
            f.write(f"unpaired\t{path}\t{why}\n")
        for d in dropped:
            f.write(f"dropped\t{d['lq']}\t{d['reason']}\n")
            f.write(f"dropped\t{d['hq']}\t{d['reason']} (its pair)\n")
    manifest["shards"] = shards
    manifest["urls"] = {split: brace_pattern([s.name for s in specs_of(specs, split)])
                        for split in sorted({s.split for s in specs})}
    manifest["counts"] = _summarize(shards)
    manifest["problems"] = {"unpaired_files": len(report.unpaired), "dropped_pairs": len(dropped),
                            "file": problems_path.name}
    manifest["metadata_files"] = [str(p) for p in report.metadata_files]
    manifest["prompts"] = sum(1 for p in pairs if p.prompt)
    manifest["complete"] = True
    atomic_write_json(manifest_path, manifest, indent=1)

    dt = time.time() - t0
    c = manifest["counts"]
    log(f"{c['samples']} pairs in {len(shards)} shard(s) ({reused} already finished, checked) in {dt:.1f} s "
        f"-> {out}")
    log("  per split:    " + ", ".join(f"{k} {v}" for k, v in c["split"].items()))
    log("  per category: " + ", ".join(f"{k} {v}" for k, v in c["category"].items()))
    if manifest["prompts"]:
        log(f"  prompts:      {manifest['prompts']} pairs have a prompt/caption")
    if report.unpaired or dropped:
        reasons = Counter(_reason_kind(why) for _, why in report.unpaired)
        reasons.update(_reason_kind(d["reason"]) for d in dropped)
        log(f"  problems:     {len(report.unpaired)} unpaired file(s), {len(dropped)} pair(s) dropped ("
            + ", ".join(f"{k}: {v}" for k, v in reasons.most_common()) + f"); full list: {problems_path}")
    log(f"  manifest:     {manifest_path}")
    for split, pat in manifest["urls"].items():
        log(f"  urls {split + ':':<8} {out / pat}")
    return manifest


def _reason_kind(why: str) -> str:
    """'no HQ partner for stem 'x'' -> 'no HQ partner'; 'unreadable: OSError: ...' -> 'unreadable'."""
    return re.split(r"(?: for | in |:| \(|')", why, maxsplit=1)[0].strip()


# ----------------------------------------------------------------------------- verify
def verify_shard(url: str, entry: dict | None, decode: int | None = None, seed: int = 0, check_hash: bool = True,
                 allow_pipe: bool = False, scale: int = 1) -> dict:
    """Check one shard: sha256 against the manifest entry (local shards), every sample's members, and (all
    samples by default, ``decode`` random ones per shard in the fast mode) that its images decode to the sizes
    and pixel hashes its json records, with HQ = LQ x ``scale``. Returns ``{"url", "errors", "bad": {"<shard>:<key>": reason}, ...}``:
    every damaged sample once, with the reason."""
    errors: list[str] = []
    bad: dict[str, str] = {}
    path = local_path(url)
    if check_hash and entry and path:
        if not Path(path).is_file():
            return {"url": url, "errors": ["file missing"], "bad": {}, "samples": 0, "decoded": 0}
        digest = sha256_file(Path(path))
        if digest != entry.get("sha256"):
            errors.append(f"sha256 {digest[:12]}... differs from the manifest's {str(entry.get('sha256'))[:12]}...")
    samples, decoded = 0, 0
    n_expected = entry.get("samples") if entry else None
    if decode is None:
        want = None  # all
    else:
        rng = random.Random(f"{seed}:{url}")
        want = set(rng.sample(range(n_expected), min(decode, n_expected))) if n_expected else set(range(decode))
    try:
        reader = open_shard(url, retries=0, allow_pipe=allow_pipe)
        for s in reader.samples():
            samples += 1
            meta: dict = {}
            if s.members.get(META_SUFFIX) is not None:
                try:
                    meta = json.loads(s.members[META_SUFFIX])
                except ValueError:
                    meta = None
            rid = f"{url}:{(meta or {}).get('key') or s.key}"
            if s.cut:
                bad[rid] = s.problem or "the tar data ends inside this sample"
                continue
            lq, hq = image_members(s.members)
            if lq is None or hq is None or META_SUFFIX not in s.members:
                bad[rid] = (f"members {sorted(s.members)} (need lq.*, hq.*, json)"
                            + (f"; {s.problem}" if s.problem else ""))
                continue
            if meta is None:
                bad[rid] = "unreadable json member"
                continue
            if not s.members[lq] or not s.members[hq]:
                bad[rid] = f"empty member {lq if not s.members[lq] else hq}"
                continue
            if want is not None and s.ordinal not in want:
                continue
            try:
                shapes = {}
                for role, suffix in (("lq", lq), ("hq", hq)):
                    img = decode_image(s.members[suffix], image_ext(suffix))
                    shapes[role] = img.shape[:2]
                    if meta.get(f"{role}_size") and list(img.shape[:2]) != meta[f"{role}_size"]:
                        raise ValueError(f"{suffix} decodes to {img.shape[0]}x{img.shape[1]}, the json says "
                                         f"{meta[f'{role}_size'][0]}x{meta[f'{role}_size'][1]}")
                    if meta.get(f"{role}_pixels") and pixel_digest(img) != meta[f"{role}_pixels"]:
                        raise ValueError(f"{suffix}: the decoded pixels differ from the source's (pixel hash)")
                if tuple(v * scale for v in shapes["lq"]) != tuple(shapes["hq"]):
                    raise ValueError(f"size mismatch: LQ {shapes['lq'][0]}x{shapes['lq'][1]}, HQ "
                                     f"{shapes['hq'][0]}x{shapes['hq'][1]}, scale {scale}")
                decoded += 1
            except (DecodeError, ValueError) as e:
                bad[rid] = f"cannot decode: {e}" if isinstance(e, DecodeError) else str(e)
        if reader.truncated:
            errors.append(f"truncated: {reader.truncated}")
        errors += reader.damaged
    except OSError as e:
        errors.append(str(e))
    if n_expected is not None and samples != n_expected:
        errors.append(f"{samples} samples, the manifest says {n_expected}")
        for k in range(samples, n_expected):
            bad[f"{url}:#{k}"] = f"missing: the shard has {samples} samples, the manifest says {n_expected}"
    return {"url": url, "errors": errors, "bad": bad, "samples": samples, "decoded": decoded}


def _verify_task(args):
    return verify_shard(*args)


def verify(target: str | None, urls: str | None = None, decode: int | None = None, jobs: int = 0, seed: int = 0,
           log=print, scale: int | None = None) -> int:
    """Verify the shards of a manifest (file or folder holding ``*-manifest.json``) or of ``urls``. Shard names
    in a manifest are only ever files next to it (never commands or other places); ``pipe:`` is honoured in
    ``urls`` only, which the user wrote."""
    tasks = []
    if target:
        t = Path(target)
        manifests = sorted(t.glob(f"*{MANIFEST_SUFFIX}")) if t.is_dir() else [t]
        if not manifests:
            log(f"no *{MANIFEST_SUFFIX} in {t}")
            return 2
        for mpath in manifests:
            m = json.loads(mpath.read_text())
            if not m.get("complete"):
                log(f"warning: {mpath} is from an unfinished build (rerun `ggt-ir shards build` to finish it)")
            for e in m.get("shards", []):
                try:
                    name = check_shard_name(e.get("name") if isinstance(e, dict) else e, str(mpath))
                except ValueError as err:
                    log(f"FAIL {err}")
                    return 1
                opts = m.get("options") if isinstance(m.get("options"), dict) else {}
                tasks.append((str(mpath.parent / name), e, decode, seed, True, False, scale or int(opts.get("scale") or 1)))
    for u in expand_urls(urls) if urls else []:
        tasks.append((u, None, decode, seed, True, True, scale or 1))
    if not tasks:
        log("nothing to verify")
        return 2
    jobs = min(jobs or os.cpu_count() or 1, len(tasks))
    if jobs == 1:
        results = [_verify_task(t) for t in tasks]
    else:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(jobs) as pool:
            results = pool.map(_verify_task, tasks)
    failed = [r for r in results if r["errors"] or r["bad"]]
    bad = {k: v for r in results for k, v in r["bad"].items()}
    for r in results:
        status = "OK  " if not (r["errors"] or r["bad"]) else "FAIL"
        lines = r["errors"][:10] + [f"damaged sample {k.rpartition(':')[2]}: {v}" for k, v in list(r["bad"].items())[:50]]
        log(f"{status} {r['url']}: {r['samples']} samples, {r.get('decoded', 0)} decoded"
            + "".join(f"\n       {x}" for x in lines))
    log(f"{len(results) - len(failed)} of {len(results)} shard(s) OK, {sum(r['samples'] for r in results)} samples, "
        f"{sum(r.get('decoded', 0) for r in results)} decoded, {len(bad)} damaged sample(s)")
    return 1 if failed else 0


# ----------------------------------------------------------------------------- CLI
def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ggt-ir shards", description="Build or verify webdataset shards of LQ/HQ pairs.")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="paired image folders -> tar shards + manifest",
                       description="Pair LQ/HQ images (any of the accepted layouts, docs/data.md) and write "
                                   "webdataset shards, a manifest and a problems list.")
    b.add_argument("root", nargs="?", help="dataset root (a GGT-style tree or any paired folder dataset)")
    b.add_argument("--out", required=True, help="output folder for shards and manifest")
    b.add_argument("--name", default="ggt100k", help="shard name prefix (default: ggt100k)")
    src = b.add_argument_group("other ways to name the pairs (instead of scanning ROOT)")
    src.add_argument("--lq-dir", help="an LQ folder (with --hq-dir): pairs by the same relative path/stem")
    src.add_argument("--hq-dir", help="an HQ folder (with --lq-dir)")
    src.add_argument("--lq-glob", help="glob of LQ files, relative to ROOT (with --hq-glob); ** recurses")
    src.add_argument("--hq-glob", help="glob of HQ files (with --lq-glob)")
    src.add_argument("--pairs-file", help="a list of pairs: .csv/.tsv/.jsonl/.json with lq/hq columns, or "
                                          "'<lq> <hq> [category [split]]' lines; relative to ROOT or the file")
    sel = b.add_argument_group("selection and labels")
    sel.add_argument("--split", help="keep only this split (train, test, ...)")
    sel.add_argument("--categories", help="keep only these categories (comma-separated)")
    sel.add_argument("--default-split", default="train", help="split of pairs under no train/test folder")
    sel.add_argument("--default-category", default="unknown", help="category of pairs with none in their path")
    sh = b.add_argument_group("shards")
    sh.add_argument("--shard-size", default="1GB", help="target shard size (default 1GB; e.g. 500MB, 2GiB)")
    sh.add_argument("--max-samples-per-shard", type=int, default=0, help="also cap samples per shard (0: none)")
    sh.add_argument("--encode", choices=(*ENCODINGS, *ENCODING_ALIASES), default="copy",
                    help="how images are stored: " + "; ".join(f"{k}: {v}" for k, v in ENCODINGS.items()))
    sh.add_argument("--jpeg-quality", type=int, default=95)
    sh.add_argument("--png-compression", type=int, default=3, help="0-9 (with --encode png)")
    sh.add_argument("--check", choices=("decode", "header", "none"), default="decode",
                    help="decode every image to catch corrupt files (default), read headers only, or nothing")
    sh.add_argument("--scale", type=int, default=1, help="HQ size = LQ size x scale (pairs that differ are dropped)")
    sh.add_argument("--no-shuffle", action="store_true", help="keep pairs in key order (default: shuffled with "
                                                              "--seed, so every shard mixes categories)")
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--jobs", type=int, default=0, help="worker processes (default: all cores)")
    sh.add_argument("--overwrite", action="store_true", help="rebuild every shard, even finished ones")
    sh.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("verify", help="re-hash shards against their manifest and decode every sample")
    v.add_argument("manifest", nargs="?", help="a *-manifest.json, or a folder holding them")
    v.add_argument("--urls", help="verify these shards instead (brace patterns; no manifest needed)")
    v.add_argument("--decode", type=int, default=None, metavar="N",
                   help="fast mode: decode only N random samples per shard (default: every sample)")
    v.add_argument("--fast", action="store_true", help="check hashes and members, decode nothing (= --decode 0)")
    v.add_argument("--scale", type=int, default=None, help="HQ size = LQ size x scale (default: the manifest's, or 1)")
    v.add_argument("--jobs", type=int, default=0)
    v.add_argument("--seed", type=int, default=0)
    return p


def _collect(a) -> tuple[PairingReport, Path | None, dict]:
    root = Path(a.root) if a.root else None
    if root is not None and not root.is_dir():
        raise SystemExit(f"ggt-ir shards build: not a folder: {root}")
    if a.pairs_file:
        return pairs_from_list(a.pairs_file, root), root or Path(a.pairs_file).parent, \
            {"mode": "pairs-file", "pairs_file": str(a.pairs_file), "root": str(root) if root else None}
    if a.lq_glob or a.hq_glob:
        if not (a.lq_glob and a.hq_glob):
            raise SystemExit("ggt-ir shards build: --lq-glob and --hq-glob go together")
        return pairs_from_globs(a.lq_glob, a.hq_glob, root), root, \
            {"mode": "globs", "lq_glob": a.lq_glob, "hq_glob": a.hq_glob, "root": str(root) if root else None}
    if a.lq_dir or a.hq_dir:
        if not (a.lq_dir and a.hq_dir):
            raise SystemExit("ggt-ir shards build: --lq-dir and --hq-dir go together")
        common = Path(os.path.commonpath([Path(a.lq_dir).resolve(), Path(a.hq_dir).resolve()]))
        return pairs_from_two_folders(a.lq_dir, a.hq_dir), common, \
            {"mode": "two-folders", "lq_dir": str(a.lq_dir), "hq_dir": str(a.hq_dir)}
    if root is None:
        raise SystemExit("ggt-ir shards build: give ROOT, --lq-dir/--hq-dir, --lq-glob/--hq-glob or --pairs-file")
    return find_pairs(root), root, {"mode": "tree", "root": str(root)}


def main(argv: list[str] | None = None) -> int:
    a = _build_parser().parse_args(argv)
    if a.cmd == "verify":
        if not a.manifest and not a.urls:
            print("ggt-ir shards verify: give a manifest (or its folder) or --urls", file=sys.stderr)
            return 2
        return verify(a.manifest, a.urls, decode=0 if a.fast else a.decode, jobs=a.jobs, seed=a.seed, scale=a.scale)
    report, root, source = _collect(a)
    print(f"pairing: {report.summary()}")
    for note in report.notes[:20]:
        print(f"  {note}")
    if not report.pairs:
        print("ggt-ir shards build: no LQ/HQ pairs found; see docs/data.md for the accepted layouts", file=sys.stderr)
        if report.unpaired:
            for path, why in report.unpaired[:10]:
                print(f"  {path}: {why}", file=sys.stderr)
        return 1
    cfg = BuildConfig(out=a.out, name=a.name, shard_size=parse_size(a.shard_size),
                      max_samples_per_shard=a.max_samples_per_shard,
                      encode=ENCODING_ALIASES.get(a.encode, a.encode), jpeg_quality=a.jpeg_quality,
                      png_compression=a.png_compression, check=a.check, scale=a.scale, shuffle=not a.no_shuffle,
                      seed=a.seed, jobs=a.jobs, progress=not a.no_progress, overwrite=a.overwrite, source=source)
    cats = [c.strip() for c in a.categories.split(",")] if a.categories else None
    m = build_shards(report, cfg, root, default_split=a.default_split, default_category=a.default_category,
                     split_filter=a.split, categories=cats)
    return 0 if m["counts"]["samples"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
