"""The one tiler (pixel networks, VAE encode/decode, UNet on latents), and x8 self-ensemble.

``tiled_apply(fn, x, tile, overlap, scale=...)`` runs ``fn`` on overlapping ``tile`` x ``tile`` windows of
``x`` (B, C, H, W) and blends the outputs into one, so memory grows with the tile, not the image.
``scale`` is the output/input size ratio (1/8 for an SD VAE encoder, 8 for its decoder, 1 for a UNet
on latents, the upscale of an SR network). ``tiled_forward(net, x, tile=512, overlap=32)`` is the same
for a zoo network, whose ``pad_multiple`` and scale it reads:

* the tile size is rounded down to the network's ``pad_multiple`` (zoo models expose it: SwinIR the
  window size, Restormer/PromptIR 8, NAFNet 2**len(enc_blk_nums)), so no tile is padded inside the
  network; tiles start every ``tile - overlap`` pixels, the last one flush with the far edge. An image
  smaller than a tile along one side, or run whole, is padded by the network itself (zoo models pad
  internally, as their official code or test scripts do), so ``tile=0`` is exactly ``net(x)``;
* each tile's weight is 0 in the outer quarter of the overlap along an edge it shares with another
  tile, rises linearly across the middle half and is 1 elsewhere (also along the image border).
  Overlapping tiles' weights sum to 1 in a standard overlap, and pixels near a tile's cut edge, the
  ones that saw padding instead of image, never contribute. Hence a network whose receptive field
  radius is at most ``overlap // 4`` gives exactly the untiled output, and blending never makes seams.

``self_ensemble(fn, x)`` averages ``fn`` over the 8 flips/rotations of ``x`` (Lim et al., EDSR).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def model_pad_multiple(net: nn.Module) -> int:
    return int(getattr(net, "pad_multiple", 1) or 1)


def model_scale(net: nn.Module) -> int:
    """Output/input size ratio: SwinIR's ``upscale`` when it has an upsampler, else ``scale`` or 1."""
    if hasattr(net, "upsampler"):
        return int(net.upscale) if net.upsampler else 1
    return int(getattr(net, "scale", 1) or 1)


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(n: int, overlap: int, cut_lo: bool, cut_hi: bool) -> torch.Tensor:
    """1-D weights of a tile of length n whose low/high edge is cut (shared with another tile)."""
    w = torch.ones(n)
    if overlap <= 0:
        return w
    margin = overlap // 4
    width = max(overlap - 2 * margin, 1)
    d = torch.arange(n, dtype=torch.float32)
    ramp_lo = ((d - margin + 0.5) / width).clamp(0, 1)
    if cut_lo:
        w = torch.minimum(w, ramp_lo)
    if cut_hi:
        w = torch.minimum(w, ramp_lo.flip(0))
    return w


@torch.no_grad()
def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int = 0, overlap: int = 32, *,
                scale: float = 1.0, pad_multiple: int = 1, tile_batch: int = 1) -> torch.Tensor:
    """``fn(x)`` computed tile by tile (see the module docstring); ``tile`` and ``overlap`` in input pixels.
    ``tile <= 0`` or an input no larger than one tile runs whole. Blended outputs are float32."""
    b, _, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return fn(x)
    tile = max(pad_multiple, tile // pad_multiple * pad_multiple)
    if overlap >= tile:
        raise ValueError(f"tile overlap ({overlap}) must be smaller than the tile ({tile} after rounding "
                         f"down to the network's multiple {pad_multiple})")
    th, tw = min(tile, h), min(tile, w)
    ys, xs = _starts(h, th, th - overlap), _starts(w, tw, tw - overlap)
    sz = lambda n: round(n * scale)  # noqa: E731 - input pixels -> output pixels
    out = weight = None
    boxes = [(y, x0) for y in ys for x0 in xs]
    for i in range(0, len(boxes), tile_batch):
        chunk = boxes[i : i + tile_batch]
        y_out = fn(torch.cat([x[..., y : y + th, x0 : x0 + tw] for y, x0 in chunk])).float()
        if out is None:
            out = torch.zeros((b, y_out.shape[1], sz(h), sz(w)), dtype=torch.float32, device=y_out.device)
            weight = torch.zeros((1, 1, sz(h), sz(w)), dtype=torch.float32, device=y_out.device)
        for j, (y, x0) in enumerate(chunk):
            wy = _ramp(sz(th), sz(overlap), y > 0, y + th < h)
            wx = _ramp(sz(tw), sz(overlap), x0 > 0, x0 + tw < w)
            wt = (wy[:, None] * wx[None, :]).to(out.device)
            sl = (..., slice(sz(y), sz(y) + sz(th)), slice(sz(x0), sz(x0) + sz(tw)))
            out[sl] += y_out[j * b : (j + 1) * b] * wt
            weight[sl] += wt
    return out / weight


def tiled_forward(net: nn.Module | Callable, x: torch.Tensor, tile: int = 0, overlap: int = 32, *,
                  scale: int | None = None, pad_multiple: int | None = None, tile_batch: int = 1) -> torch.Tensor:
    """:func:`tiled_apply` for a network: its ``pad_multiple`` and output scale are read from it (zoo
    models expose them). The output is float32 on ``x``'s device."""
    pad_multiple = pad_multiple or (model_pad_multiple(net) if isinstance(net, nn.Module) else 1)
    scale = scale or (model_scale(net) if isinstance(net, nn.Module) else 1)
    return tiled_apply(net, x, tile, overlap, scale=scale, pad_multiple=pad_multiple, tile_batch=tile_batch).float()


def self_ensemble(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Mean of ``fn`` over the 8 dihedral transforms of ``x`` (each undone on the output)."""
    acc = None
    for k in range(4):
        for flip in (False, True):
            t = torch.rot90(x, k, (-2, -1))
            t = t.flip(-1) if flip else t
            y = fn(t).float()
            y = y.flip(-1) if flip else y
            y = torch.rot90(y, -k, (-2, -1))
            acc = y if acc is None else acc + y
    return acc / 8


def restore(net: nn.Module, x: torch.Tensor, tile: int = 0, overlap: int = 32, ensemble: bool = False,
            tile_batch: int = 1) -> torch.Tensor:
    """What ``ggt-ir restore`` runs per image: tiling and, optionally, the x8 self-ensemble."""
    fn = lambda t: tiled_forward(net, t, tile, overlap, tile_batch=tile_batch)  # noqa: E731
    return self_ensemble(fn, x) if ensemble else fn(x)
