"""Pixel losses: ``loss_weight * reduce(elementwise(pred, target))``, computed in fp32 even under autocast.

A loss class declares its option keys in a nested ``Options`` dataclass (``type`` plus its constructor's
keyword arguments); :data:`ggt_ir.losses.LOSSES` checks each ``{type: ..., ...}`` block against it when
the option file loads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class _PixelLoss(nn.Module):
    short_name = "pix"

    @dataclass
    class Options:
        type: str = "L1Loss"
        loss_weight: float = 1.0
        reduction: str = "mean"  # mean | sum
        eps: float = 1e-3  # CharbonnierLoss

    def __init__(self, loss_weight: float = 1.0, reduction: str = "mean", eps: float = 1e-3):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"{type(self).__name__}: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.loss_weight, self.reduction, self.eps = loss_weight, reduction, eps

    def elementwise(self, pred, target):
        raise NotImplementedError

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        e = self.elementwise(pred.float(), target.float())  # losses in fp32 even under autocast
        return self.loss_weight * (e.mean() if self.reduction == "mean" else e.sum())


class L1Loss(_PixelLoss):
    short_name = "l1"

    def elementwise(self, pred, target):
        return (pred - target).abs()


class MSELoss(_PixelLoss):
    short_name = "mse"

    def elementwise(self, pred, target):
        return (pred - target) ** 2


class CharbonnierLoss(_PixelLoss):
    """sqrt((x - y)^2 + eps^2), a differentiable L1 (eps 1e-3 as in Restormer/MPRNet)."""

    short_name = "char"

    def elementwise(self, pred, target):
        return torch.sqrt((pred - target) ** 2 + self.eps**2)


class PSNRLoss(_PixelLoss):
    """NAFNet's loss: (10 / ln 10) * mean over images of log(MSE + 1e-8), i.e. minus the PSNR (RGB, [0, 1])
    up to a constant. ``reduction`` does not apply: it is a per-image log, then a mean."""

    short_name = "psnr"

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
        return self.loss_weight * (10.0 / math.log(10.0)) * torch.log(mse + 1e-8).mean()
