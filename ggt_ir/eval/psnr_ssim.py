"""PSNR and SSIM in torch (float64, batched): the one implementation, for training-time validation and eval.

Inputs are float tensors (B, C, H, W) in [0, 1], RGB. As BasicSR's ``calculate_psnr`` / ``calculate_ssim``
do, images are scored on the 0-255 scale, optionally on the Y channel of YCbCr (ITU-R BT.601, Y in
[16, 235]) and after cropping ``crop_border`` pixels on each side. SSIM uses an 11x11 Gaussian window
(sigma 1.5) with 'valid' filtering. Results are per image (shape (B,), float64).

Two conventions (``convention=``):

* ``basicsr`` (the default; what the trainer's validation reports): ``basicsr.metrics.calculate_psnr/ssim``:
  unrounded Y, PSNR ``10 log10(255^2 / mse)``, no clipping in SSIM;
* ``pyiqa``: ``pyiqa.create_metric('psnr'|'ssim', test_y_channel=True, color_space='ycbcr')``: PSNR on
  [0, 1] with ``mse + 1e-8``; SSIM on Y **rounded to integers** (MATLAB's uint8 ``rgb2ycbcr``), with the
  contrast-structure map clipped at 0.

pyiqa's own SSIM runs a float64 11x11 convolution that is very slow on CPU; here the window is separable
and applied as shifted multiply-adds (exact in float64), and PSNR and SSIM can share one Y plane per
batch through ``cache``.
"""
from __future__ import annotations

import torch

CONVENTIONS = ("basicsr", "pyiqa")


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels, as saving a PNG does; metrics are computed on what would be saved."""
    return (x.clamp(0, 1) * 255.0).round() / 255.0


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) Y of ITU-R BT.601 YCbCr on the 0-255 scale [16, 235]."""
    return (x[:, 0:1] * 65.481 + x[:, 1:2] * 128.553 + x[:, 2:3] * 24.966) + 16.0


def _gauss1d(device, dtype) -> torch.Tensor:
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 11x11 Gaussian 'valid' filtering as 2 x 11 shifted multiply-adds (exact in float64,
    and much faster on CPU than a float64 conv2d)."""
    taps = [float(v) for v in g]
    k = len(taps)
    w = x.shape[-1] - k + 1
    out = x[..., 0:w] * taps[0]
    for i in range(1, k):
        out.add_(x[..., i:i + w], alpha=taps[i])
    h = out.shape[-2] - k + 1
    res = out[..., 0:h, :] * taps[0]
    for i in range(1, k):
        res.add_(out[..., i:i + h, :], alpha=taps[i])
    return res


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border:-border, border:-border] if border else x


def _planes(img, ref, crop_border: int, test_y_channel: bool, rounded: bool, cache: dict | None):
    """Both images as float64 planes on the 0-255 scale (Y or RGB), cached per batch."""
    key = ("planes", test_y_channel, crop_border, rounded)
    if cache is not None and key in cache:
        return cache[key]
    if img.shape != ref.shape:
        raise ValueError(f"image shapes differ: {tuple(img.shape)} vs {tuple(ref.shape)}")
    a, b = _crop(img, crop_border).to(torch.float64), _crop(ref, crop_border).to(torch.float64)
    if test_y_channel and a.shape[1] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    else:
        a, b = a * 255.0, b * 255.0
    if rounded:
        a, b = a.round(), b.round()
    if cache is not None:
        cache[key] = (a, b)
    return a, b


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be 'pyiqa' or 'basicsr', got {convention!r}")


def psnr(img: torch.Tensor, ref: torch.Tensor, crop_border: int = 0, test_y_channel: bool = True,
         convention: str = "basicsr", cache: dict | None = None) -> torch.Tensor:
    _check_convention(convention)
    a, b = _planes(img, ref, crop_border, test_y_channel, False, cache)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    if convention == "pyiqa":  # pyiqa: 10 log10(1 / (mse_01 + 1e-8)), data_range 1
        return 10.0 * torch.log10(1.0 / (mse / 255.0**2 + 1e-8))
    return torch.where(mse == 0, torch.full_like(mse, float("inf")), 10.0 * torch.log10(255.0**2 / mse))


def ssim(img: torch.Tensor, ref: torch.Tensor, crop_border: int = 0, test_y_channel: bool = True,
         convention: str = "basicsr", cache: dict | None = None) -> torch.Tensor:
    _check_convention(convention)
    pyiqa_conv = convention == "pyiqa"
    a, b = _planes(img, ref, crop_border, test_y_channel, pyiqa_conv, cache)
    g = _gauss1d(a.device, a.dtype)
    c = a.shape[1]
    stats = _filter_valid(torch.cat([a, b, a * a, b * b, a * b], 1), g)
    mu_a, mu_b, s_aa, s_bb, s_ab = stats.split(c, 1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_ab = mu_a * mu_b
    cs = (2 * (s_ab - mu_ab) + c2) / ((s_aa - mu_a**2) + (s_bb - mu_b**2) + c2)
    if pyiqa_conv:
        cs = cs.clamp_min(0)
    smap = ((2 * mu_ab + c1) / (mu_a**2 + mu_b**2 + c1)) * cs
    return smap.flatten(2).mean(2).mean(1)  # mean per channel, then over channels


METRIC_FUNCTIONS = {"psnr": psnr, "ssim": ssim}
