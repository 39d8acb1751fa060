"""Pixel losses, composed from the options (``train.pixel_opt`` and ``train.losses``).

Each loss is ``loss_weight * reduce(elementwise(pred, target))``; the trainer logs each one
as ``l_<name>`` (BasicSR's convention) and optimizes their sum.

A loss class declares its option keys in a nested ``Options`` dataclass (``type`` plus its constructor's
keyword arguments); the :data:`LOSSES` registry checks each ``{type: ..., ...}`` block against it when
the option file loads.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from ggt_ir.registry import Registry

LOSSES = Registry(
    "loss",
    {
        "L1Loss": "ggt_ir.losses:L1Loss",
        "MSELoss": "ggt_ir.losses:MSELoss",
        "CharbonnierLoss": "ggt_ir.losses:CharbonnierLoss",
        "PSNRLoss": "ggt_ir.losses:PSNRLoss",
    },
    entry_point_group="ggt_ir.losses",  # plugins of installed packages (registry.py)
)


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


def build_loss(spec) -> nn.Module:
    """One loss from its typed ``Options`` (the constructor takes every field but ``type``)."""
    cls = LOSSES.get(spec.type)
    return cls(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "type"})


def build_losses(train_opts) -> dict[str, nn.Module]:
    """{log name: loss module} from ``pixel_opt`` (logged as ``l_pix``) and the ``losses`` list."""
    out: dict[str, nn.Module] = {}
    specs = ([("l_pix", train_opts.pixel_opt)] if train_opts.pixel_opt else []) + [
        (None, lo) for lo in train_opts.losses
    ]
    for name, spec in specs:
        cls = LOSSES.get(spec.type)
        module = build_loss(spec)
        name = name or f"l_{cls.short_name}"
        base, i = name, 2
        while name in out:
            name, i = f"{base}{i}", i + 1
        out[name] = module
    if not out:
        raise ValueError("no loss configured: set train.pixel_opt (e.g. {type: L1Loss}) or train.losses")
    return out
