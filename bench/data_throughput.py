"""Data-loading throughput: pairs per second of 256x256 training crops from 1024x1024 LQ/HQ PNG pairs.

    .venv/bin/python bench/data_throughput.py                 # everything (a few minutes)
    .venv/bin/python bench/data_throughput.py --seconds 10    # shorter runs

Compared, with the same images, the same number of DataLoader workers and batch size, one run each:

(a) BasicSR's own ``PairedImageDataset`` (cv2 reads both PNG files from two folders, float32 conversion of
    the whole image, paired random crop, flip/rot90), the baseline;
(b) our ``GGTShards`` stream over shards of the same PNG bytes, ``crops_per_image: 1``;
(c) the same with ``crops_per_image: 4``;
(d) the decode-only ceiling: decode both PNG images of each pair (bytes already in memory) with our decoder and
    nothing else;
(e) ``GGTShards``, ``crops_per_image: 1``, over shards re-encoded losslessly as QOI (``ggt-ir shards build
    --encode qoi``), whose decoded pixels are checked to be bit-identical to the PNGs' (all 48 images);
(f) the same over ``--encode raw`` shards (uncompressed PPM: no decoding work at all, 2.3x the bytes).

Each pipeline runs twice (order a b c d d c b a) and the mean is reported, so a drifting load on a shared
machine biases none of them.

Plus a single-thread decoder comparison (PIL, OpenCV, torchvision.io) for PNG, JPEG and WebP at 1024x1024,
which is how the default decoder was chosen. Inputs are made from scikit-image's bundled photos and cached in
``bench/out/`` (git-ignored). Results go to stdout; bench/RESULTS.md records them.
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out" / "data_throughput"
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
          "motorcycle_left", "motorcycle_right")


# ----------------------------------------------------------------------------- inputs
def photos_1024() -> list[np.ndarray]:
    """24 distinct 1024x1024 RGB photos: each bundled photo resized (short side 1024) and cropped 3 ways."""
    import skimage.data

    out = []
    for name in PHOTOS:
        if name.startswith("motorcycle"):
            img = skimage.data.stereo_motorcycle()[0 if name.endswith("left") else 1]
        else:
            img = getattr(skimage.data, name)()
        img = img[..., :3]
        s = 1024 / min(img.shape[:2])
        img = cv2.resize(img, (max(1024, round(img.shape[1] * s)), max(1024, round(img.shape[0] * s))),
                         interpolation=cv2.INTER_CUBIC if s > 1 else cv2.INTER_AREA)
        h, w = img.shape[:2]
        for k, (y, x) in enumerate(((0, 0), ((h - 1024) // 2, (w - 1024) // 2), (h - 1024, w - 1024))):
            crop = img[y : y + 1024, x : x + 1024]
            out.append(np.ascontiguousarray(crop if k != 1 else crop[:, ::-1]))
    return out[:24]


def degrade(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible LQ of the same size: blur, noise, JPEG."""
    y = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(1.0, 2.0))
    y = y + rng.normal(0, rng.uniform(3, 8), y.shape)
    y = np.clip(y, 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", y, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 70))])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


ENCODED = {"copy": "shards", "qoi": "shards-qoi", "raw": "shards-raw"}


def make_inputs() -> tuple[Path, Path]:
    folders = OUT / "pairs"
    shards = OUT / "shards"
    if not (folders / "done").is_file():
        rng = np.random.default_rng(0)
        for role in ("LQ", "GT"):
            (folders / role).mkdir(parents=True, exist_ok=True)
        for i, hq in enumerate(photos_1024()):
            bgr = hq[..., ::-1]
            cv2.imwrite(str(folders / "GT" / f"{i:04d}.png"), bgr)
            cv2.imwrite(str(folders / "LQ" / f"{i:04d}.png"), degrade(bgr, rng))
        (folders / "done").write_text("ok")
    if not (shards / "bench-manifest.json").is_file():
        from ggt_ir.data.shards import main as shards_main

        assert shards_main(["build", str(folders), "--out", str(shards), "--name", "bench",
                            "--max-samples-per-shard", "4", "--no-progress"]) == 0
    for enc, sub in ENCODED.items():
        if enc != "copy" and not (OUT / sub / "bench-manifest.json").is_file():
            from ggt_ir.data.shards import main as shards_main

            assert shards_main(["build", str(folders), "--out", str(OUT / sub), "--name", "bench", "--encode", enc,
                                "--max-samples-per-shard", "4", "--no-progress"]) == 0
    return folders, shards


def same_pixels(folders: Path, shards: Path) -> int:
    """Decode every image of the shards and of the PNG folders: the number of images whose pixels are
    bit-identical (raises on the first difference)."""
    from ggt_ir.data.shard_format import image_members, pixel_digest
    from ggt_ir.data.shard_io import decode_image, image_ext, open_shard

    n = 0
    for tar in sorted(shards.glob("bench-train-*.tar")):
        for s in open_shard(str(tar), retries=0).samples():
            meta = json.loads(s.members["json"])
            for role, suffix in zip(("lq", "hq"), image_members(s.members)):
                src = folders / ("LQ" if role == "lq" else "GT") / Path(meta[f"{role}_path"]).name
                a = decode_image(s.members[suffix], image_ext(suffix))
                b = decode_image(src.read_bytes(), "png")
                if pixel_digest(a) != pixel_digest(b):
                    raise AssertionError(f"{tar}:{s.key}.{suffix} differs from {src}")
                n += 1
    return n


# ----------------------------------------------------------------------------- the four pipelines
class DecodeOnly(torch.utils.data.Dataset):
    """(d): decode both images of a pair with our decoder, and nothing else: the file bytes are read into
    memory once (shared by the forked workers), no cropping, a 1-element tensor returned."""

    def __init__(self, folders: Path):
        names = sorted(p.name for p in (folders / "GT").glob("*.png"))
        self.data = [((folders / "LQ" / n).read_bytes(), (folders / "GT" / n).read_bytes()) for n in names]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> torch.Tensor:
        from ggt_ir.data.shard_io import decode_image

        for b in self.data[i]:
            decode_image(b, "png")
        return torch.zeros(1)


def endless(loader_factory):
    while True:
        yield from loader_factory()


def basicsr_loader(folders: Path, workers: int, batch: int):
    from ggt_ir._compat import patch_basicsr_imports

    patch_basicsr_imports()
    from basicsr.data.paired_image_dataset import PairedImageDataset

    from basicsr.data.data_sampler import EnlargedSampler

    ds = PairedImageDataset({"name": "bench", "dataroot_gt": str(folders / "GT"), "dataroot_lq": str(folders / "LQ"),
                             "io_backend": {"type": "disk"}, "filename_tmpl": "{}", "phase": "train",
                             "gt_size": 256, "use_hflip": True, "use_rot": True, "scale": 1})
    # as basicsr's build_dataloader does for training: an EnlargedSampler (dataset_enlarge_ratio 100 here, so
    # 24 images don't restart the workers every 3 batches), drop_last
    sampler = EnlargedSampler(ds, num_replicas=1, rank=0, ratio=100)
    return endless(lambda: torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                                       drop_last=True, prefetch_factor=2)), 4


def shards_loader(shards: Path, workers: int, batch: int, crops: int):
    """GGTShards over one of the shard sets (its 6 shards of 4 pairs)."""
    from ggt_ir.data.stream import GGTShardsDataset

    o = GGTShardsDataset.Options(urls=str(shards / "bench-train-{000000..000005}.tar"), gt_size=256,
                                 crops_per_image=crops, batch_size_per_gpu=batch, num_worker_per_gpu=workers,
                                 epoch_batches=10**6)
    # warm-up: until every worker's shuffle buffer is full (it starts half full and grows at half rate)
    warm = math.ceil(workers * (o.shuffle_buffer // 2 + o.shuffle_buffer) / batch)
    return GGTShardsDataset(o).train_loader(seed=0, rank=0, world_size=1, start_iter=0), warm


def decode_loader(folders: Path, workers: int, batch: int):
    ds = DecodeOnly(folders)
    sampler = torch.utils.data.RandomSampler(ds, num_samples=len(ds) * 100)  # no worker restarts, as in (a)
    return endless(lambda: torch.utils.data.DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                                                       drop_last=True, prefetch_factor=2)), 4


def cpu_seconds() -> float:
    """CPU time of this process and its live children (the DataLoader workers), from /proc."""
    import resource

    tick = os.sysconf("SC_CLK_TCK")
    r = resource.getrusage(resource.RUSAGE_CHILDREN)  # children that already exited
    total = time.process_time() + r.ru_utime + r.ru_stime
    me = str(os.getpid())
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def measure(it, seconds: float, batch: int, warmup: int = 4) -> tuple[float, float]:
    """(pairs/s wall clock, CPU ms per pair of all processes involved), after ``warmup`` batches."""
    for _ in range(warmup):
        next(it)
    n, t0, c0 = 0, time.perf_counter(), cpu_seconds()
    while time.perf_counter() - t0 < seconds:
        b = next(it)
        n += b["gt"].shape[0] if isinstance(b, dict) else b.shape[0]
    c1, t1 = cpu_seconds(), time.perf_counter()
    return n / (t1 - t0), 1000 * (c1 - c0) / max(n, 1)


# ----------------------------------------------------------------------------- decoders
def decoder_table(seconds: float = 1.0) -> list[tuple[str, int, dict]]:
    from PIL import Image
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as tv_decode

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    imgs = photos_1024()[:4]

    def enc(a, fmt, **kw):
        b = io.BytesIO()
        Image.fromarray(a).save(b, fmt, **kw)
        return b.getvalue()

    formats = {"PNG (PIL default, level 6)": ("PNG", {}), "PNG (OpenCV default, level 3)": None,
               "JPEG q95": ("JPEG", {"quality": 95}), "WebP q90 (lossy)": ("WEBP", {"quality": 90}),
               "WebP lossless": ("WEBP", {"lossless": True})}
    decoders = {
        "PIL": lambda b: np.asarray(Image.open(io.BytesIO(b)).convert("RGB")),
        "OpenCV": lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_UNCHANGED),
        "torchvision.io": lambda b: tv_decode(torch.frombuffer(bytearray(b), dtype=torch.uint8), mode=ImageReadMode.RGB),
    }
    rows = []
    for fname, spec in formats.items():
        if spec is None:
            bufs = [cv2.imencode(".png", a[..., ::-1].copy())[1].tobytes() for a in imgs]
        else:
            bufs = [enc(a, spec[0], **spec[1]) for a in imgs]
        res = {}
        for dname, f in decoders.items():
            best = 0.0
            for _ in range(2):
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < seconds:
                    for b in bufs:
                        f(b)
                        n += 1
                best = max(best, n / (time.perf_counter() - t0))
            res[dname] = best
        rows.append((fname, sum(map(len, bufs)) // len(bufs) // 1024, res))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0, help="measured seconds per pipeline, split over 2 rounds")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--skip-decoders", action="store_true")
    a = p.parse_args(argv)
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
          f"torch {torch.__version__}, OpenCV {cv2.__version__}")
    folders, shards = make_inputs()
    for enc, sub in ENCODED.items():
        m = json.loads((OUT / sub / "bench-manifest.json").read_text())
        size = sum(e["bytes"] for e in m["shards"]) / 2**20
        ident = same_pixels(folders, OUT / sub)
        print(f"shards --encode {enc:<4}: {size:7.1f} MiB, {ident} images decode bit-identical to the PNG sources")
    sizes = [f.stat().st_size for f in (folders / "GT").glob("*.png")] + \
            [f.stat().st_size for f in (folders / "LQ").glob("*.png")]
    print(f"inputs: 24 pairs of 1024x1024 PNG, {np.mean(sizes) / 2**20:.2f} MiB per image on average; "
          f"{a.workers} workers, batch {a.batch}, 256x256 crops, {a.seconds:.0f} s per pipeline")
    if not a.skip_decoders:
        print("\nsingle-thread decode, 1024x1024 RGB, images/s (best of 2 runs):")
        for fname, kib, res in decoder_table():
            print(f"  {fname:<30} {kib:>5} KiB   " + "   ".join(f"{k} {v:6.1f}" for k, v in res.items()))
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    runs = {
        "(a) BasicSR PairedImageDataset, PNG folders": lambda: basicsr_loader(folders, a.workers, a.batch),
        "(b) GGTShards, crops_per_image 1": lambda: shards_loader(shards, a.workers, a.batch, 1),
        "(c) GGTShards, crops_per_image 4": lambda: shards_loader(shards, a.workers, a.batch, 4),
        "(d) decode only (ceiling)": lambda: decode_loader(folders, a.workers, a.batch),
        "(e) GGTShards, crops_per_image 1, --encode qoi": lambda: shards_loader(OUT / ENCODED["qoi"], a.workers,
                                                                               a.batch, 1),
        "(f) GGTShards, crops_per_image 1, --encode raw": lambda: shards_loader(OUT / ENCODED["raw"], a.workers,
                                                                               a.batch, 1),
    }
    # two rounds, the second in reverse order, so a drifting machine load biases no pipeline; mean of the two
    res: dict[str, list] = {name[:3]: [] for name in runs}
    order = list(runs) + list(reversed(runs))
    print(f"\n256x256 crops (rounds: {' '.join(n[:3] for n in order)}); CPU = all processes (main + workers), "
          f"steady state; 'uncontended' = {a.workers} workers / CPU per pair")
    print(f"  {'':<48} {'pairs/s':>8} {'CPU ms/pair':>12} {'uncontended':>12}   rounds (pairs/s)")
    for name in order:
        it, warm = runs[name]()
        res[name[:3]].append(measure(it, a.seconds / 2, a.batch, warm))
        del it
    wall, cpu = {}, {}
    for name in runs:
        v = res[name[:3]]
        wall[name[:3]], cpu[name[:3]] = float(np.mean([x[0] for x in v])), float(np.mean([x[1] for x in v]))
        print(f"  {name:<48} {wall[name[:3]]:8.1f} {cpu[name[:3]]:12.1f} {1000 * a.workers / cpu[name[:3]]:12.1f}"
              f"   {', '.join(f'{x[0]:.1f}' for x in v)}")
    print("\nratios               wall clock   from CPU per pair   target")
    for x, y, target in (("(b)", "(a)", ">= 1.0"), ("(c)", "(a)", ">= 3.0"), ("(b)", "(d)", ">= 0.8"),
                         ("(e)", "(a)", ">= 2.0"), ("(f)", "(a)", "")):
        print(f"  {x}/{y}          {wall[x] / wall[y]:10.2f}   {cpu[y] / cpu[x]:17.2f}   {target}")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
