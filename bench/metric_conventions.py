"""How far apart the PSNR / SSIM / NIQE conventions are, measured (the figures of docs/evaluation.md).

Scores the same images with

* ggt-ir's ``psnr`` / ``ssim`` (``convention: pyiqa``, the eval default) and pyiqa's own calls with the
  arguments our variants pass (``create_metric('psnr'|'ssim', test_y_channel=True, color_space='ycbcr')``);
* ``convention: basicsr`` and ``basicsr.metrics.calculate_psnr/ssim(test_y_channel=True)`` (the trainer's
  validation);
* pyiqa's **default** ``psnr`` (RGB) and ``ssim`` (Y of YIQ), which are not what we report;
* ``niqe`` as ggt-ir scores it (pyiqa's NIQE: Y of YIQ, with basicsr's pristine parameters when pyiqa's
  file is absent), pyiqa's NIQE with ``color_space='ycbcr'``, and ``basicsr.metrics.calculate_niqe``.

Three image sets: the demo test split (``ggt_ir.data.demo``, 128 px crops, the LQ inputs scored against
their GT, as ``ggt-ir eval --restored input`` does) and high-PSNR pairs (scikit-image photographs at
512x512 with Gaussian noise of decreasing strength, 30-55 dB) for the PSNR gap, which grows with PSNR; and
scikit-image photographs at their own sizes (clean and degraded) for NIQE.

    .venv/bin/python bench/metric_conventions.py            # prints the figures
"""
from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 255.0


def demo_pairs(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    from ggt_ir.data.demo import build_demo
    from ggt_ir.utils.image_io import read_image

    root = build_demo(folder)
    out = []
    for gt in sorted(root.glob("test/*/GT/*.png")):
        lq = gt.parent.parent / "LQ" / gt.name
        u8 = lambda p: (read_image(p) * 255).round().astype(np.uint8)  # noqa: E731
        out.append((f"{gt.parent.parent.name}/{gt.stem}", u8(lq), u8(gt)))
    return out


def high_psnr_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    import cv2
    import skimage.data

    rng = np.random.default_rng(0)
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        gt = cv2.resize(getattr(skimage.data, name)()[..., :3], (512, 512), interpolation=cv2.INTER_AREA)
        for sigma in (8.0, 4.0, 2.0, 1.0, 0.6, 0.4):
            lq = np.clip(gt + rng.normal(0, sigma, gt.shape), 0, 255).round().astype(np.uint8)
            out.append((f"{name}-sigma{sigma}", lq, gt))
    return out


def niqe_images() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """scikit-image photographs at their own sizes, clean and degraded (JPEG q30 / blur / noise): NIQE needs
    images of several 96x96 blocks (basicsr's fails on the 128 px demo crops: one block, no covariance)."""
    import skimage.data
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    out = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        gt = np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
        b = io.BytesIO()
        Image.fromarray(gt).save(b, "JPEG", quality=30)
        variants = {"clean": gt, "jpeg": np.array(Image.open(b).convert("RGB")),
                    "blur": np.array(Image.fromarray(gt).filter(ImageFilter.GaussianBlur(2))),
                    "noise": np.clip(gt + rng.normal(0, 10, gt.shape), 0, 255).round().astype(np.uint8)}
        out += [(f"{name}-{k}", v, gt) for k, v in variants.items()]
    return out


def scores(pairs, niqe: bool) -> dict[str, np.ndarray]:
    import pyiqa

    from ggt_ir._compat import patch_basicsr_imports
    from ggt_ir.eval.metrics import MetricSuite, _niqe_params_from_basicsr

    patch_basicsr_imports()
    from basicsr.metrics import calculate_niqe, calculate_psnr, calculate_ssim

    ours = MetricSuite({"psnr": {}, "ssim": {}, "psnr_b": {"type": "psnr", "convention": "basicsr"},
                        "ssim_b": {"type": "ssim", "convention": "basicsr"}}, log=lambda *_: None)
    piq = {"psnr_y": pyiqa.create_metric("psnr", test_y_channel=True, color_space="ycbcr", device="cpu"),
           "ssim_y": pyiqa.create_metric("ssim", test_y_channel=True, color_space="ycbcr", device="cpu"),
           "psnr_default": pyiqa.create_metric("psnr", device="cpu"),
           "ssim_default": pyiqa.create_metric("ssim", device="cpu")}
    if niqe:
        params = _niqe_params_from_basicsr()
        with contextlib.redirect_stdout(io.StringIO()):
            piq["niqe_yiq"] = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=params)
            piq["niqe_ycbcr"] = pyiqa.create_metric("niqe", device="cpu", color_space="ycbcr",
                                                    pretrained_model_path=params)
        ours_niqe = MetricSuite(["niqe"], log=lambda *_: None)
    out: dict[str, list] = {}
    for name, lq, gt in pairs:
        p, g = _t(lq), _t(gt)
        s = ours.score(p, g, [name])
        row = {k: v[0] for k, v in s.items()}
        for k, m in piq.items():
            row[k] = float(m(p, g).item()) if not k.startswith("niqe") else float(m(p).item())
        bl, bg = lq[..., ::-1], gt[..., ::-1]
        row["basicsr_psnr"] = calculate_psnr(bl, bg, 0, test_y_channel=True)
        row["basicsr_ssim"] = calculate_ssim(bl, bg, 0, test_y_channel=True)
        if niqe:
            row["niqe"] = ours_niqe.score(p, None, [name])["niqe"][0]
            row["basicsr_niqe"] = float(calculate_niqe(bl, 0, input_order="HWC", convert_to="y"))
        for k, v in row.items():
            out.setdefault(k, []).append(v)
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def gap(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    """(|mean a - mean b|, max per-image |a - b|, index of that image)."""
    d = np.abs(a - b)
    return float(abs(a.mean() - b.mean())), float(d.max()), int(d.argmax())


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        demo = demo_pairs(Path(tmp))
        d = scores(demo, niqe=False)
    names = [n for n, _, _ in demo]
    print(f"== demo test split: {len(demo)} LQ inputs vs their GT (128x128), mean psnr {d['psnr'].mean():.2f} dB")
    print("| comparison | |mean gap| | max per-image gap | worst image |")
    print("| --- | ---: | ---: | --- |")
    for label, a, b in [
        ("ssim: ours (pyiqa convention) vs pyiqa ssim(test_y_channel=True, color_space='ycbcr')", "ssim", "ssim_y"),
        ("ssim: ours (pyiqa convention) vs basicsr calculate_ssim(test_y_channel=True)", "ssim", "basicsr_ssim"),
        ("ssim: convention basicsr vs basicsr calculate_ssim", "ssim_b", "basicsr_ssim"),
        ("ssim: ours vs pyiqa's default ssim (Y of YIQ)", "ssim", "ssim_default"),
        ("psnr: ours (pyiqa convention) vs pyiqa psnr(test_y_channel=True, color_space='ycbcr')", "psnr", "psnr_y"),
        ("psnr: ours (pyiqa convention) vs basicsr calculate_psnr(test_y_channel=True)", "psnr", "basicsr_psnr"),
        ("psnr: ours (Y) vs pyiqa's default psnr (RGB)", "psnr", "psnr_default"),
    ]:
        m, x, i = gap(d[a], d[b])
        print(f"| {label} | {m:.2e} | {x:.2e} | {names[i]} ({d[a][i]:.4f} vs {d[b][i]:.4f}) |")
    print(f"means: ssim ours {d['ssim'].mean():.4f}, basicsr {d['basicsr_ssim'].mean():.4f}, pyiqa default "
          f"{d['ssim_default'].mean():.4f}; psnr ours {d['psnr'].mean():.4f}, basicsr {d['basicsr_psnr'].mean():.4f}")

    ni = niqe_images()
    n = scores(ni, niqe=True)
    names = [x for x, _, _ in ni]
    print(f"\n== NIQE: {len(ni)} scikit-image photographs (astronaut 512x512, coffee 400x600, chelsea 300x451, "
          "rocket 427x640; clean, JPEG q30, blur, noise)")
    print("| comparison | |mean gap| | max per-image gap | worst image |")
    print("| --- | ---: | ---: | --- |")
    for label, a, b in [
        ("niqe: ours vs pyiqa niqe (same parameters)", "niqe", "niqe_yiq"),
        ("niqe: ours (pyiqa, Y of YIQ) vs basicsr calculate_niqe(convert_to='y')", "niqe", "basicsr_niqe"),
        ("niqe: pyiqa niqe(color_space='ycbcr') vs basicsr calculate_niqe", "niqe_ycbcr", "basicsr_niqe"),
    ]:
        m, x, i = gap(n[a], n[b])
        print(f"| {label} | {m:.2e} | {x:.2e} | {names[i]} ({n[a][i]:.4f} vs {n[b][i]:.4f}) |")
    print(f"means: niqe ours {n['niqe'].mean():.4f}, basicsr {n['basicsr_niqe'].mean():.4f}, pyiqa ycbcr "
          f"{n['niqe_ycbcr'].mean():.4f}")

    hp = high_psnr_pairs()
    h = scores(hp, niqe=False)
    print(f"\n== PSNR gap by PSNR band: {len(hp)} noisy 512x512 photographs")
    print("| band (dB, basicsr) | images | max |ours - basicsr| dB | max |ours - pyiqa| dB |")
    print("| --- | ---: | ---: | ---: |")
    for lo, hi in ((30, 35), (35, 40), (40, 45), (45, 50), (50, 60)):
        sel = (h["basicsr_psnr"] >= lo) & (h["basicsr_psnr"] < hi)
        if sel.any():
            print(f"| {lo}-{hi} | {int(sel.sum())} | {np.abs(h['psnr'] - h['basicsr_psnr'])[sel].max():.2e} | "
                  f"{np.abs(h['psnr'] - h['psnr_y'])[sel].max():.2e} |")
    print(f"ssim on the same pairs: max |ours - basicsr| {np.abs(h['ssim'] - h['basicsr_ssim']).max():.2e}, "
          f"max |ours - pyiqa ycbcr| {np.abs(h['ssim'] - h['ssim_y']).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
