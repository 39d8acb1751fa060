"""Colour fix for generative restorers (tiling is ``ggt_ir/utils/tiling.py``).

Colour fix (OSEDiff's ``--align_method``) is an explicit post-process, recorded in the outputs:
``adain`` matches each channel's mean/std to the (resized) LQ; ``wavelet`` keeps the output's
high frequencies and takes the low frequencies from the LQ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("none", "adain", "wavelet")


# --------------------------------------------------------------------------- colour fix
def adain_color_fix(out: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    ref = F.interpolate(ref.float(), size=out.shape[-2:], mode="bicubic", align_corners=False) \
        if ref.shape[-2:] != out.shape[-2:] else ref.float()
    o = out.float()
    om, os_ = o.mean((2, 3), keepdim=True), o.std((2, 3), keepdim=True) + eps
    rm, rs = ref.mean((2, 3), keepdim=True), ref.std((2, 3), keepdim=True) + eps
    return ((o - om) / os_ * rs + rm).clamp(0, 1)


def _low_pass(x: torch.Tensor, levels: int = 5) -> torch.Tensor:
    k = torch.tensor([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=x.dtype, device=x.device) / 16
    k = k.expand(x.shape[1], 1, 3, 3)
    for i in range(levels):  # a-trous: the same kernel, dilation 1, 2, 4, ...
        d = 2 ** i
        x = F.conv2d(F.pad(x, (d, d, d, d), mode="replicate"), k, dilation=d, groups=x.shape[1])
    return x


def wavelet_color_fix(out: torch.Tensor, ref: torch.Tensor, levels: int = 5) -> torch.Tensor:
    ref = F.interpolate(ref.float(), size=out.shape[-2:], mode="bicubic", align_corners=False) \
        if ref.shape[-2:] != out.shape[-2:] else ref.float()
    o = out.float()
    return (o - _low_pass(o, levels) + _low_pass(ref, levels)).clamp(0, 1)


def color_fix(out: torch.Tensor, ref: torch.Tensor, method: str) -> torch.Tensor:
    if method == "none":
        return out
    if method == "adain":
        return adain_color_fix(out, ref)
    if method == "wavelet":
        return wavelet_color_fix(out, ref)
    raise ValueError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {method!r}")
