"""Colour and luma consistency: a distance on the chroma (Cb, Cr) or the luma (Y) of ITU-R BT.601 YCbCr.

``ColorLoss`` keeps a restorer from shifting colours while GAN/perceptual terms work on texture; with
``blur_sigma > 0`` both images are Gaussian-blurred first, so only low-frequency colour casts count (the
texture stays to the other losses). ``LumaLoss`` is the same on Y (the channel PSNR/SSIM tables report).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# BT.601 on [0, 1] RGB (the offsets cancel in a difference); rows Y, Cb, Cr
_YCBCR = torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255.0


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 3, H, W) Y, Cb, Cr without the 16/128 offsets."""
    return torch.einsum("ij,bjhw->bihw", _YCBCR.to(x.device, torch.float32), x.float())


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    mode = "reflect" if min(x.shape[-2:]) > radius else "replicate"
    x = F.pad(x, (radius, radius, radius, radius), mode=mode)
    x = F.conv2d(x, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class _YCbCrLoss(nn.Module):
    channels: slice = slice(0, 3)

    @dataclass
    class Options:
        type: str = "ColorLoss"
        loss_weight: float = 1.0
        criterion: str = "l1"  # l1 | l2
        blur_sigma: float = 0.0  # > 0: compare Gaussian-blurred images (low frequencies only)

    def __init__(self, loss_weight: float = 1.0, criterion: str = "l1", blur_sigma: float = 0.0):
        super().__init__()
        if criterion not in ("l1", "l2"):
            raise ValueError(f"{type(self).__name__}: criterion {criterion!r} is unknown; use l1 or l2")
        if blur_sigma < 0:
            raise ValueError(f"{type(self).__name__}: blur_sigma must be >= 0, got {blur_sigma}")
        self.loss_weight, self.criterion, self.blur_sigma = loss_weight, criterion, blur_sigma

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, t = rgb_to_ycbcr(pred)[:, self.channels], rgb_to_ycbcr(target)[:, self.channels]
        if self.blur_sigma > 0:
            p, t = gaussian_blur(p, self.blur_sigma), gaussian_blur(t, self.blur_sigma)
        dist = F.l1_loss(p, t) if self.criterion == "l1" else F.mse_loss(p, t)
        return self.loss_weight * dist


class ColorLoss(_YCbCrLoss):
    short_name = "color"
    channels = slice(1, 3)

    @dataclass
    class Options(_YCbCrLoss.Options):
        type: str = "ColorLoss"


class LumaLoss(_YCbCrLoss):
    short_name = "luma"
    channels = slice(0, 1)

    @dataclass
    class Options(_YCbCrLoss.Options):
        type: str = "LumaLoss"
