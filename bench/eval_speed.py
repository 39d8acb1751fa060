"""Images per second for the full-reference suite (psnr, ssim, lpips, dists) at 1024x1024.

Two cases, each timed side by side in one run (alternating order, medians):

* ``single``: one method -- the per-image pyiqa loop vs ggt-ir's batched suite (below);
* ``table``: what a table does -- 4 methods scored on the same GT set. The per-image pyiqa loop runs 4 times;
  ggt-ir runs ``ggt-ir eval``'s loop (:func:`ggt_ir.eval.loop.run_evaluation`, restored folders) 4 times with
  the reference cache starting **empty** (the first method computes and stores the GT side -- decoded GT,
  LPIPS and DISTS reference features -- the other three read it back), and once more with it **warm** (a
  fifth method added to a table whose GT work is already cached).

Compares, in the same run and on the same images:

* per-image loop: what OSEDiff / S3Diff-style scripts do (``src/evaluate_img.py`` in S3Diff): one
  ``pyiqa.create_metric`` per metric (psnr/ssim with ``test_y_channel=True, color_space='ycbcr'``),
  then for each image pair ``metric(pred, ref).item()``, one metric after the other;
* ggt-ir: :class:`ggt_ir.eval.metrics.MetricSuite`, batched on the device: PSNR/SSIM in float64 from
  one shared Y plane with a separable filter, LPIPS/DISTS on the whole batch in channels_last.

lpips and dists need weights that are not available offline here, so both sides use the SAME
randomly initialised networks (``write_random_weights``; timing does not depend on the weight
values). The scores of the two sides are compared too (max |difference| per metric).

    .venv/bin/python bench/eval_speed.py                    # both cases, 4 pairs, batch 4
    .venv/bin/python bench/eval_speed.py --case table --n 3 --record     # also update bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

SECTION = "## Eval speed (bench/eval_speed.py)"
TABLE_SECTION = "## Eval speed, 4 methods on one set (bench/eval_speed.py --case table)"
METHODS = ("jpeg", "blur", "noise", "dark")
METRICS = ["psnr", "ssim", "lpips", "dists"]


def make_pairs(n: int, size: int, folder: Path) -> list[tuple[Path, Path]]:
    """Real photographs (scikit-image) resized to size x size, degraded with JPEG / blur / noise; PNG."""
    import cv2
    import skimage.data
    from PIL import Image, ImageFilter

    photos = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(n):
        img = getattr(skimage.data, photos[i % len(photos)])()[..., :3]
        gt = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
        kind = ("jpeg", "blur", "noise")[i % 3]
        if kind == "jpeg":
            b = io.BytesIO()
            Image.fromarray(gt).save(b, "JPEG", quality=30)
            lq = np.array(Image.open(b).convert("RGB"))
        elif kind == "blur":
            lq = np.array(Image.fromarray(gt).filter(ImageFilter.GaussianBlur(2)))
        else:
            lq = np.clip(gt + rng.normal(0, 10, gt.shape), 0, 255).round().astype(np.uint8)
        p, g = folder / f"pred_{i}.png", folder / f"gt_{i}.png"
        Image.fromarray(lq).save(p)
        Image.fromarray(gt).save(g)
        pairs.append((p, g))
    return pairs


def load(path: Path) -> torch.Tensor:
    from ggt_ir.utils.image_io import read_image, to_tensor

    return to_tensor(read_image(path))[None]


def loop_metrics(weights_dir: Path, device) -> dict:
    import pyiqa

    from ggt_ir.eval.weights import offline_weights

    metrics = {}
    for name in METRICS:
        kw = {"test_y_channel": True, "color_space": "ycbcr"} if name in ("psnr", "ssim") else {}
        with offline_weights(name, weights_dir):
            metrics[name] = pyiqa.create_metric(name, device=device, **kw)
    return metrics


def per_image_loop(pairs, metrics: dict, device) -> tuple[float, dict, dict]:
    """One image pair at a time, one metric after the other (S3Diff's src/evaluate_img.py)."""
    scores = {k: [] for k in METRICS}
    spent = {k: 0.0 for k in ["read", *METRICS]}
    t0 = time.perf_counter()
    for p, g in pairs:
        t = time.perf_counter()
        pred, ref = load(p).to(device), load(g).to(device)
        spent["read"] += time.perf_counter() - t
        for k, m in metrics.items():
            t = time.perf_counter()
            scores[k].append(m(pred, ref).item())
            spent[k] += time.perf_counter() - t
    return time.perf_counter() - t0, scores, spent


def batched(pairs, suite, device, batch: int) -> tuple[float, dict, dict]:
    """Batches of images read once, every metric of the suite on the whole batch."""
    scores = {k: [] for k in METRICS}
    spent = {k: 0.0 for k in ["read", *METRICS]}
    t0 = time.perf_counter()
    for i in range(0, len(pairs), batch):
        chunk = pairs[i:i + batch]
        t = time.perf_counter()
        pred = torch.cat([load(p) for p, _ in chunk]).to(device)
        ref = torch.cat([load(g) for _, g in chunk]).to(device)
        spent["read"] += time.perf_counter() - t
        cache: dict = {}  # what MetricSuite.score does, timed per metric
        for k, m in suite.metrics.items():
            t = time.perf_counter()
            scores[k] += [float(v) for v in m(pred, ref, [str(p) for p, _ in chunk], cache)]
            spent[k] += time.perf_counter() - t
    return time.perf_counter() - t0, scores, spent


def make_methods(n: int, size: int, folder: Path) -> tuple[Path, dict[str, Path]]:
    """One GT folder and four methods' outputs of the same images (JPEG / blur / noise / darkened), PNG."""
    import cv2
    import skimage.data
    from PIL import Image, ImageFilter

    photos = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
    rng = np.random.default_rng(0)
    gt_dir = folder / "GT"
    outs = {m: folder / m for m in METHODS}
    for p in [gt_dir, *outs.values()]:
        p.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = getattr(skimage.data, photos[i % len(photos)])()[..., :3]
        gt = cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)
        Image.fromarray(gt).save(gt_dir / f"{i:03d}.png")
        b = io.BytesIO()
        Image.fromarray(gt).save(b, "JPEG", quality=30)
        variants = {"jpeg": np.array(Image.open(b).convert("RGB")),
                    "blur": np.array(Image.fromarray(gt).filter(ImageFilter.GaussianBlur(2))),
                    "noise": np.clip(gt + rng.normal(0, 10, gt.shape), 0, 255).round().astype(np.uint8),
                    "dark": (gt * 0.8).round().astype(np.uint8)}
        for m, arr in variants.items():
            Image.fromarray(arr).save(outs[m] / f"{i:03d}.png")
    return gt_dir, outs


def table_loop(gt_dir: Path, outs: dict[str, Path], metrics: dict, device) -> tuple[float, dict]:
    """The per-image pyiqa loop, once per method: {method: {metric: mean}}."""
    means, t0 = {}, time.perf_counter()
    for m, folder in outs.items():
        scores = {k: [] for k in METRICS}
        for g in sorted(gt_dir.glob("*.png")):
            pred, ref = load(folder / g.name).to(device), load(g).to(device)
            for k, metric in metrics.items():
                scores[k].append(metric(pred, ref).item())
        means[m] = {k: float(np.mean(v)) for k, v in scores.items()}
    return time.perf_counter() - t0, means


def table_ours(gt_dir: Path, outs: dict[str, Path], tmp: Path, wd: Path, cache: Path, device, batch: int,
               methods=None) -> tuple[float, dict, list]:
    """``ggt-ir eval``'s loop on each method's folder, sharing one reference cache: {method: {metric: mean}}."""
    import yaml

    from ggt_ir.eval.loop import run_evaluation
    from ggt_ir.eval.options import load_eval_options

    means, stats, t0 = {}, [], time.perf_counter()
    for m in methods or outs:
        opt = {"name": m, "results_root": str(tmp / "results"), "restored": str(outs[m]),
               "datasets": {"gt": {"type": "PairedFolder", "dataroot_lq": str(gt_dir), "dataroot_gt": str(gt_dir)}},
               "metrics": METRICS,
               "eval": {"batch_size": batch, "num_grid": 0, "pbar": False, "weights_dir": str(wd), "strict": True,
                        "device": "cpu" if str(device) == "cpu" else "auto", "cache_dir": str(cache)}}
        f = tmp / f"{m}.yml"
        f.write_text(yaml.safe_dump(opt))
        summary = run_evaluation(load_eval_options(f), log=lambda *_: None)
        means[m] = dict(summary["sets"]["gt"]["means"])
        stats.append(summary["cache"])
    return time.perf_counter() - t0, means, stats


def table_case(a, tmp: Path, wd: Path) -> str:
    import shutil

    gt_dir, outs = make_methods(a.n, a.size, tmp / "table")
    metrics = loop_metrics(wd, a.device)
    cache = tmp / "cache"
    runs: dict[str, list] = {"loop": [], "cold": []}
    hits = []
    for r in range(a.rounds):
        order = ("loop", "cold") if r % 2 == 0 else ("cold", "loop")
        for side in order:
            if side == "loop":
                res = table_loop(gt_dir, outs, metrics, a.device)
            else:
                shutil.rmtree(cache, ignore_errors=True)  # each round starts with an empty cache
                res = table_ours(gt_dir, outs, tmp, wd, cache, a.device, a.batch)
                hits = res[2]
            runs[side].append(res)
            print(f"round {r + 1} {side}: {res[0]:.1f} s for {len(outs)} methods x {a.n} images", flush=True)
    warm = table_ours(gt_dir, outs, tmp, wd, cache, a.device, a.batch, methods=["dark"])  # a 5th row, cache warm
    print(f"warm: {warm[0]:.1f} s for 1 method x {a.n} images", flush=True)
    t_loop = float(np.median([x[0] for x in runs["loop"]]))
    t_cold = float(np.median([x[0] for x in runs["cold"]]))
    per = len(outs) * a.n
    diffs = {k: max(abs(runs["loop"][-1][1][m][k] - runs["cold"][-1][1][m][k]) for m in outs) for k in METRICS}
    gb = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**30
    lines = [
        TABLE_SECTION, "",
        f"{len(outs)} methods ({', '.join(outs)}) x the same {a.n} GT images of {a.size}x{a.size} (scikit-image "
        f"photographs), FR suite {', '.join(METRICS)}, device `{a.device}`, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}; median of {a.rounds} alternating "
        "rounds per side. lpips/dists: randomly initialised networks on both sides (timing does not depend on them).",
        "",
        "| method | s / image | images / s | speed-up |",
        "| --- | ---: | ---: | ---: |",
        f"| per-image pyiqa loop, run {len(outs)} times | {t_loop / per:.2f} | {per / t_loop:.3f} | 1.00x |",
        f"| ggt-ir eval x {len(outs)}, reference cache empty at the start | {t_cold / per:.2f} | {per / t_cold:.3f} | "
        f"**{t_loop / t_cold:.2f}x** |",
        f"| ggt-ir eval, one more method, cache warm | {warm[0] / a.n:.2f} | {a.n / warm[0]:.3f} | "
        f"{(t_loop / per) / (warm[0] / a.n):.2f}x |",
        "",
        f"Cache after the run: {gb:.2f} GB in {cache.name}/ (decoded GT + LPIPS and DISTS reference features); "
        "per method of the cold run: " + "; ".join(f"{s['gt_misses']} GT decoded, {s['feature_hits']} feature reads, "
                                                  f"{s['feature_misses']} computed" for s in hits) + ".",
        "Max |mean score difference| loop vs ggt-ir over the methods: "
        + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()) + ".", ""]
    return "\n".join(lines)


def record(text: str, path: Path, section: str = SECTION) -> None:
    old = path.read_text() if path.is_file() else "# Benchmarks\n"
    start = old.find(section)
    if start < 0:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        nxt = old.find("\n## ", start + len(section))
        new = old[:start] + text.rstrip("\n") + "\n\n" + (old[nxt + 1:] if nxt >= 0 else "")
    path.write_text(new.rstrip("\n") + "\n")


def _median_run(results: list) -> tuple[float, dict, dict]:
    total = float(np.median([r[0] for r in results]))
    spent = {k: float(np.median([r[2][k] for r in results])) for k in results[0][2]}
    return total, results[-1][1], spent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4, help="image pairs")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds per side (medians are reported)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--case", choices=["single", "table", "both"], default="both",
                    help="single: one method, batched vs the loop; table: 4 methods on one set, cached vs 4 loops")
    ap.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    a = ap.parse_args(argv)

    from ggt_ir.testing.weights import write_random_weights

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pairs = make_pairs(a.n, a.size, tmp)
        wd = tmp / "weights"
        for m in ("lpips", "dists"):
            write_random_weights(m, wd)
        print(f"NOTE: lpips and dists use RANDOMLY INITIALISED networks (no weights offline); timing only. "
              f"{a.n} pairs of {a.size}x{a.size}, device {a.device}, torch threads {torch.get_num_threads()}")
        if a.case in ("table", "both"):
            text = table_case(a, tmp, wd)
            print(text)
            if a.record:
                record(text, Path(__file__).with_name("RESULTS.md"), TABLE_SECTION)
            if a.case == "table":
                return 0
        from ggt_ir.eval.metrics import MetricSuite

        metrics = loop_metrics(wd, a.device)
        suite = MetricSuite(METRICS, device=a.device, weights_dir=wd, strict=True)
        warm = load(pairs[0][0])[..., :64, :64], load(pairs[0][1])[..., :64, :64]
        for m in metrics.values():
            m(*warm)
        suite.score(*warm, ["warm"])
        # the machine may be shared: alternate the order (A B, B A, ...) and take medians
        runs: dict[str, list] = {"loop": [], "ours": []}
        for r in range(a.rounds):
            order = ("loop", "ours") if r % 2 == 0 else ("ours", "loop")
            for side in order:
                res = (per_image_loop(pairs, metrics, a.device) if side == "loop"
                       else batched(pairs, suite, a.device, a.batch))
                runs[side].append(res)
                print(f"round {r + 1} {side}: {res[0] / a.n:.2f} s/image", flush=True)
    t_loop, s_loop, p_loop = _median_run(runs["loop"])
    t_ours, s_ours, p_ours = _median_run(runs["ours"])
    ips_loop, ips_ours = a.n / t_loop, a.n / t_ours
    diffs = {k: float(np.max(np.abs(np.array(s_loop[k]) - np.array(s_ours[k])))) for k in METRICS}
    lines = [
        SECTION,
        "",
        f"FR suite (psnr, ssim [Y of YCbCr], lpips, dists) on {a.n} pairs of {a.size}x{a.size} real photographs "
        f"(scikit-image, JPEG/blur/noise), device `{a.device}`, {torch.get_num_threads()} torch threads, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, median of {a.rounds} "
        "alternating rounds per side. "
        "lpips/dists: randomly initialised networks on both sides (no weights offline; timing does not depend on them).",
        "",
        "| method | s / image | images / s | speed-up | read | " + " | ".join(METRICS) + " |",
        "| --- | ---: | ---: | ---: | ---: | " + " | ".join(["---:"] * len(METRICS)) + " |",
        f"| per-image loop (pyiqa, OSEDiff/S3Diff style) | {t_loop / a.n:.2f} | {ips_loop:.3f} | 1.00x | "
        + " | ".join(f"{p_loop[k] / a.n:.2f}" for k in ["read", *METRICS]) + " |",
        f"| ggt-ir batched (batch {a.batch}) | {t_ours / a.n:.2f} | {ips_ours:.3f} | {ips_ours / ips_loop:.2f}x | "
        + " | ".join(f"{p_ours[k] / a.n:.2f}" for k in ["read", *METRICS]) + " |",
        "",
        "(read and per-metric columns: seconds per image.)",
        "",
        "Max |score difference| between the two: " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items())
        + " (psnr/ssim: pyiqa computes Y in float32; lpips/dists: batched, channels_last convolutions).",
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if a.record:
        record(text, Path(__file__).with_name("RESULTS.md"))
        print(f"recorded in {Path(__file__).with_name('RESULTS.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
