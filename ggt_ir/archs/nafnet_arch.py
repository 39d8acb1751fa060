"""NAFNet: Simple Baselines for Image Restoration (Chen et al., ECCV 2022).

Constructor arguments and state-dict keys follow the official release
(github.com/megvii-research/NAFNet, ``basicsr/models/archs/NAFNet_arch.py``), so the released
checkpoints (``{'params': ...}``) load with ``strict=True``.

TLC (Test-time Local Converter, Chu et al., ECCV 2022) is built in: ``tlc=True`` (or the
official name ``NAFNetLocal``) replaces the global average pooling of the channel attention by a
local box mean whose size is what the global pooling covered at the training crop size, times
1.5 -- the official ``NAFNetLocal`` rule, so its test results are reproduced on full-resolution
images. At or below the training size it equals the global pooling. Only the exact (integral
image) variant is implemented; the official ``fast_imp`` approximation is not.

Differences that do not change results:

* the network runs channels-last; LayerNorm2d is one fused ``F.layer_norm`` (the official one is
  a hand-written autograd function with five passes), 1x1 convolutions run as matmuls;
* ``use_checkpoint=True`` recomputes each NAFBlock in the backward pass (no change to keys).

Inputs of any size are zero-padded to ``pad_multiple`` = 2**len(enc_blk_nums) and the output
cropped, as the official model does.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import nn

from ggt_ir.archs.common import CL, Conv1x1, channel_layer_norm, pad_to_multiple


class LayerNorm2d(nn.Module):
    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x):
        return channel_layer_norm(x, self.weight, self.bias, self.eps)


def local_mean(x: torch.Tensor, kernel: tuple[int, int]) -> torch.Tensor:
    """TLC pooling: the mean over a ``kernel`` box around each pixel ('valid' positions, then
    replicate-padded back to the input size, centred); the global mean when the box covers the
    whole map. Integral image, so the cost does not depend on the box size."""
    h, w = x.shape[-2:]
    if kernel[0] >= h and kernel[1] >= w:
        return x.mean((2, 3), keepdim=True)
    k1, k2 = min(h, kernel[0]), min(w, kernel[1])
    xs = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # sums of many values: not in half
    s = F.pad(xs.cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    box = s[..., k1:, k2:] - s[..., :-k1, k2:] - s[..., k1:, :-k2] + s[..., :-k1, :-k2]
    out = (box / (k1 * k2)).to(x.dtype)
    dh, dw = h - out.shape[-2], w - out.shape[-1]
    return F.pad(out, (dw // 2, (dw + 1) // 2, dh // 2, (dh + 1) // 2), mode="replicate")


class SimpleGate(nn.Module):
    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return x1 * x2


class NAFBlock(nn.Module):
    def __init__(self, c: int, DW_Expand: int = 2, FFN_Expand: int = 2, drop_out_rate: float = 0.0):
        super().__init__()
        dw = c * DW_Expand
        self.conv1 = Conv1x1(c, dw)
        self.conv2 = nn.Conv2d(dw, dw, 3, 1, 1, groups=dw)
        self.conv3 = Conv1x1(dw // 2, c)
        # simplified channel attention; index 0 is the pooling (no parameters), kept for the keys
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), Conv1x1(dw // 2, dw // 2))
        self.sg = SimpleGate()
        self.conv4 = Conv1x1(c, FFN_Expand * c)
        self.conv5 = Conv1x1(FFN_Expand * c // 2, c)
        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0 else nn.Identity()
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.tlc_kernel: tuple[int, int] | None = None  # set by NAFNet when TLC is on

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        pooled = x.mean((2, 3), keepdim=True) if self.tlc_kernel is None else local_mean(x, self.tlc_kernel)
        x = self.dropout1(self.conv3(x * self.sca[1](pooled)))
        y = inp + x * self.beta
        x = self.dropout2(self.conv5(self.sg(self.conv4(self.norm2(y)))))
        return y + x * self.gamma


class Stage(nn.Sequential):
    """NAFBlocks of one level; ``use_checkpoint`` recomputes each block in backward."""

    def __init__(self, n: int, c: int, use_checkpoint: bool = False):
        super().__init__(*[NAFBlock(c) for _ in range(n)])
        self.use_checkpoint = use_checkpoint

    def forward(self, x):
        for blk in self:
            if self.use_checkpoint and self.training and torch.is_grad_enabled():
                x = cp.checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x


def _size2(v) -> tuple[int, int]:
    """256 | [256, 256] | the official (N, C, H, W) -> (H, W)."""
    if isinstance(v, int):
        return v, v
    v = tuple(int(a) for a in v)
    return v[-2], v[-1]


class NAFNet(nn.Module):
    def __init__(self, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                 enc_blk_nums: Sequence[int] = (), dec_blk_nums: Sequence[int] = (), tlc: bool = False,
                 train_size: int | Sequence[int] = 256, use_checkpoint: bool = False):
        super().__init__()
        if len(enc_blk_nums) != len(dec_blk_nums):
            raise ValueError("NAFNet: enc_blk_nums and dec_blk_nums need the same length")
        self.intro = nn.Conv2d(img_channel, width, 3, 1, 1)
        self.ending = nn.Conv2d(width, img_channel, 3, 1, 1)
        self.encoders, self.downs = nn.ModuleList(), nn.ModuleList()
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        chan = width
        for n in enc_blk_nums:
            self.encoders.append(Stage(n, chan, use_checkpoint))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2
        self.middle_blks = Stage(middle_blk_num, chan, use_checkpoint)
        for n in dec_blk_nums:
            self.ups.append(nn.Sequential(Conv1x1(chan, chan * 2, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(Stage(n, chan, use_checkpoint))
        self.pad_multiple = 2 ** len(self.encoders)
        if tlc:
            self.set_tlc(train_size)

    def set_tlc(self, train_size: int | Sequence[int] | None) -> None:
        """Turn TLC on for a training crop size (H, W), or off with None. The box at a level whose
        feature map is f x f at the training size is int(1.5 f) (official NAFNetLocal rule)."""
        blocks = [(lvl, b) for lvl, st in enumerate(self.encoders) for b in st]
        blocks += [(len(self.encoders), b) for b in self.middle_blks]
        blocks += [(len(self.encoders) - 1 - i, b) for i, st in enumerate(self.decoders) for b in st]
        if train_size is None:
            for _, b in blocks:
                b.tlc_kernel = None
            return
        th, tw = _size2(train_size)
        th, tw = th + (-th) % self.pad_multiple, tw + (-tw) % self.pad_multiple
        base = (int(th * 1.5), int(tw * 1.5))
        for lvl, b in blocks:
            fh, fw = th >> lvl, tw >> lvl
            b.tlc_kernel = (fh * base[0] // th, fw * base[1] // tw)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        h, w = inp.shape[-2:]
        inp = pad_to_multiple(inp, self.pad_multiple, mode="constant").contiguous(memory_format=CL)
        x = self.intro(inp)
        skips = []
        for enc, down in zip(self.encoders, self.downs):
            x = enc(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for dec, up, skip in zip(self.decoders, self.ups, skips[::-1]):
            x = dec(up(x).contiguous(memory_format=CL) + skip)
        x = self.ending(x) + inp
        return x[..., :h, :w].contiguous()


class NAFNetLocal(NAFNet):
    """The official name for NAFNet with TLC; ``train_size`` is the official (N, C, H, W)."""

    def __init__(self, *args, train_size: Sequence[int] = (1, 3, 256, 256), fast_imp: bool = False, **kwargs):
        if fast_imp:
            raise ValueError("NAFNetLocal: fast_imp=True (the approximate TLC) is not implemented; use fast_imp: false")
        super().__init__(*args, tlc=True, train_size=train_size, **kwargs)
