"""Small building blocks shared by the architecture files (layout helpers, not layers of any one paper)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CL = torch.channels_last


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> torch.Tensor:
    """Pad bottom/right so H and W are multiples of ``multiple``. Reflect needs pad < size, so
    tiny inputs fall back to replicate."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not (ph or pw):
        return x
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class Conv1x1(nn.Conv2d):
    """A 1x1 ``nn.Conv2d`` (same parameters, same state-dict keys) run as a matmul over
    channels-last pixels: faster than the convolution kernels on CPU, no slower on GPU."""

    def __init__(self, cin: int, cout: int, bias: bool = True):
        super().__init__(cin, cout, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias)
        return y.permute(0, 3, 1, 2)


def channel_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNorm over C of a (B, C, H, W) tensor. On a channels-last tensor the permutes are free
    and this is one fused kernel (fp32 statistics under autocast)."""
    return F.layer_norm(x.permute(0, 2, 3, 1), weight.shape, weight, bias, eps).permute(0, 3, 1, 2)

