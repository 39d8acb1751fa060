"""PSNR and SSIM in torch, with BasicSR's conventions (the numbers papers report).

Inputs are float tensors (B, 3, H, W) in [0, 1], RGB. Like BasicSR's ``calculate_psnr`` /
``calculate_ssim`` they are scored on the 0-255 scale, optionally on the Y channel of YCbCr
(ITU-R BT.601, Y in [16, 235]) and after cropping ``crop_border`` pixels on each side. SSIM uses
an 11x11 Gaussian window (sigma 1.5), 'valid' filtering and float64, as BasicSR does. Results
are per image (shape (B,)).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels, as saving a PNG does; metrics are computed on what would be saved."""
    return (x.clamp(0, 1) * 255.0).round() / 255.0


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) Y in [16, 235] / 255 ... scaled to [0, 255]."""
    w = x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True) + 16.0


def _prepare(img: torch.Tensor, ref: torch.Tensor, crop_border: int, test_y_channel: bool):
    if img.shape != ref.shape:
        raise ValueError(f"image shapes differ: {tuple(img.shape)} vs {tuple(ref.shape)}")
    img, ref = img.to(torch.float64), ref.to(torch.float64)
    if crop_border:
        img = img[..., crop_border:-crop_border, crop_border:-crop_border]
        ref = ref[..., crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel:
        return rgb_to_y(img), rgb_to_y(ref)
    return img * 255.0, ref * 255.0


def psnr(img: torch.Tensor, ref: torch.Tensor, crop_border: int = 0, test_y_channel: bool = True) -> torch.Tensor:
    a, b = _prepare(img, ref, crop_border, test_y_channel)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return torch.where(mse == 0, torch.full_like(mse, float("inf")), 10.0 * torch.log10(255.0**2 / mse))


def _gaussian_window(device, dtype) -> torch.Tensor:
    g = torch.exp(-((torch.arange(11, device=device, dtype=dtype) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    return (g[:, None] @ g[None, :]).view(1, 1, 11, 11)


def ssim(img: torch.Tensor, ref: torch.Tensor, crop_border: int = 0, test_y_channel: bool = True) -> torch.Tensor:
    a, b = _prepare(img, ref, crop_border, test_y_channel)
    c = a.shape[1]
    win = _gaussian_window(a.device, a.dtype).expand(c, 1, 11, 11)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(x):
        return F.conv2d(x, win, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    smap = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return smap.flatten(2).mean(2).mean(1)  # mean per channel, then over channels


METRIC_FUNCTIONS = {"psnr": psnr, "ssim": ssim}
