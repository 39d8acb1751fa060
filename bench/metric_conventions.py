"""How far apart the two PSNR/SSIM conventions and the two NIQE implementations are (the figures in
docs/evaluation.md, measured here, not assumed).

The images: the demo set's eight source photographs (scikit-image, no download), each as it is and through
the six demo degradations (ggt_ir/data/demo.py) and three light noise levels (sigma 0.002, 0.005, 0.01,
which give PSNRs of 40-55 dB, where the pyiqa convention's ``+1e-8`` counts), then quantised to uint8.

* PSNR / SSIM: ggt-ir's ``convention: pyiqa`` vs ``convention: basicsr`` (ggt_ir/eval/psnr_ssim.py; each
  matches its reference library within 4e-6, tests/test_eval_metrics.py), Y of YCbCr, no border crop.
* NIQE: pyiqa's ``niqe`` (Y of YIQ; basicsr's pristine parameters, as ggt-ir uses them when pyiqa's file
  is absent) and the same with ``color_space='ycbcr'``, vs ``basicsr.metrics.calculate_niqe`` (Y of YCbCr).

    .venv/bin/python bench/metric_conventions.py
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, degraded uint8 RGB, clean uint8 RGB)."""
    from ggt_ir.data.demo import DEGRADATIONS, _u8, load_photos

    rng = np.random.default_rng(0)
    out = []
    for pname, photo in sorted(load_photos().items()):
        gt = _u8(photo)
        out.append((f"{pname}/clean", gt, gt))
        for cat, fn in DEGRADATIONS.items():
            out.append((f"{pname}/{cat}", _u8(fn(photo, rng)), gt))
        for sigma in (0.002, 0.005, 0.01):
            out.append((f"{pname}/noise{sigma}", _u8(photo + rng.normal(0, sigma, photo.shape)), gt))
    return out


def main() -> int:
    from ggt_ir.eval.psnr_ssim import psnr, ssim

    data = pairs()
    t = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None].double() / 255.0  # noqa: E731
    rows = []
    for name, lq, gt in data:
        if name.endswith("/clean"):
            continue
        x, y = t(lq), t(gt)
        p = {c: float(psnr(x, y, convention=c)) for c in ("pyiqa", "basicsr")}
        s = {c: float(ssim(x, y, convention=c)) for c in ("pyiqa", "basicsr")}
        rows.append((name, p, s))
    dp = np.array([r[1]["basicsr"] - r[1]["pyiqa"] for r in rows])
    ds = np.array([r[2]["basicsr"] - r[2]["pyiqa"] for r in rows])
    pb = np.array([r[1]["basicsr"] for r in rows])
    print(f"PSNR/SSIM, {len(rows)} pairs ({len(data) - len(rows)} photos x 9 degradations), Y of YCbCr:")
    print(f"  PSNR basicsr - pyiqa: max {dp.max():.2e} dB; below 35 dB max {dp[pb < 35].max():.2e} dB; "
          f"above 35 dB ({(pb >= 35).sum()} pairs, {pb[pb >= 35].min():.1f}-{pb[pb >= 35].max():.1f} dB) max "
          f"{dp[pb >= 35].max():.2e} dB")
    worst = rows[int(np.abs(ds).argmax())]
    print(f"  SSIM basicsr - pyiqa: max |d| {np.abs(ds).max():.2e} ({worst[0]}: {worst[2]['basicsr']:.4f} vs "
          f"{worst[2]['pyiqa']:.4f}), mean |d| {np.abs(ds).mean():.2e}, median |d| {np.median(np.abs(ds)):.2e}")
    for cat in ("general", "rain", "haze", "snow", "low-light", "old-photo"):
        sel = [i for i, r in enumerate(rows) if r[0].endswith("/" + cat)]
        print(f"    {cat:<10} max |d SSIM| {np.abs(ds[sel]).max():.2e}")

    from ggt_ir._compat import patch_basicsr_imports

    patch_basicsr_imports()  # basicsr 1.4.2 with current torchvision
    import pyiqa
    from basicsr.metrics import calculate_niqe

    from ggt_ir.eval.metrics import _niqe_params_from_basicsr
    params = _niqe_params_from_basicsr()
    niqe_yiq = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=params)
    niqe_ycc = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=params, color_space="ycbcr")
    d_yiq, d_ycc = [], []
    for name, lq, _ in data:
        b = float(calculate_niqe(lq[..., ::-1].astype(np.float64), 0, input_order="HWC", convert_to="y"))
        x = t(lq).float()
        d_yiq.append(abs(float(niqe_yiq(x)) - b))
        d_ycc.append(abs(float(niqe_ycc(x)) - b))
    d_yiq, d_ycc = np.array(d_yiq), np.array(d_ycc)
    print(f"NIQE vs basicsr.calculate_niqe, {len(data)} images:")
    print(f"  pyiqa niqe (Y of YIQ, ggt-ir's default): max |d| {d_yiq.max():.3f}, mean {d_yiq.mean():.3f}")
    print(f"  pyiqa niqe, color_space='ycbcr':         max |d| {d_ycc.max():.3f}, mean {d_ycc.mean():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
