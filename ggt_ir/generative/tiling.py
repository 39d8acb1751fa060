"""Tiled inference (one tiler for VAE encode, UNet on latents, VAE decode) and colour fix.

:func:`tiled_apply` runs ``fn`` on overlapping full-size tiles and blends the outputs with a
feathered weight map (linear ramps over the overlap), so memory grows with the tile, not the image.
``scale`` is the output/input size ratio (1/8 for an SD VAE encoder, 8 for its decoder, 1 for the UNet).

Colour fix (OSEDiff's ``--align_method``) is an explicit post-process, recorded in the outputs:
``adain`` matches each channel's mean/std to the (resized) LQ; ``wavelet`` keeps the output's
high frequencies and takes the low frequencies from the LQ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

COLOR_FIXES = ("none", "adain", "wavelet")


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    s = list(range(0, length - tile, stride))
    return s + [length - tile]


def _ramp(n: int, ov: int, device) -> torch.Tensor:
    w = torch.ones(n, device=device)
    if ov > 0:
        r = torch.arange(1, ov + 1, device=device, dtype=torch.float32) / (ov + 1)
        k = min(ov, n // 2)
        w[:k] = r[:k]
        w[n - k:] = torch.minimum(w[n - k:], r[:k].flip(0))
    return w


def tiled_apply(fn, x: torch.Tensor, tile: int, overlap: int, scale: float = 1.0) -> torch.Tensor:
    """``fn(x)`` computed tile by tile (``tile`` and ``overlap`` in input pixels). No tiling when
    ``tile <= 0`` or the input fits in one tile."""
    B, C, H, W = x.shape
    if tile <= 0 or (H <= tile and W <= tile):
        return fn(x)
    th, tw = min(tile, H), min(tile, W)
    overlap = max(0, min(overlap, min(th, tw) // 2))
    ys, xs = _starts(H, th, th - overlap), _starts(W, tw, tw - overlap)
    out = weight = None
    for y in ys:
        for x0 in xs:
            o = fn(x[..., y:y + th, x0:x0 + tw]).float()
            oh, ow = o.shape[-2:]
            oy, ox = round(y * scale), round(x0 * scale)
            if out is None:
                out = torch.zeros(B, o.shape[1], round(H * scale), round(W * scale), device=o.device)
                weight = torch.zeros(1, 1, *out.shape[-2:], device=o.device)
            ov = round(overlap * scale)
            w = _ramp(oh, ov, o.device)[:, None] * _ramp(ow, ov, o.device)[None, :]
            out[..., oy:oy + oh, ox:ox + ow] += o * w
            weight[..., oy:oy + oh, ox:ox + ow] += w
    return out / weight


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
