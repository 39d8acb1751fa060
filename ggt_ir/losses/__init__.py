"""Losses, composed from the options: ``train.pixel_opt`` and ``train.losses`` (any family), and the
adversarial loss of a GAN step (``train.gan_opt``).

One module per kind, one table line per loss:

* ``pixel.py``: L1, MSE, Charbonnier, PSNR (NAFNet);
* ``perceptual.py``: VGG feature loss with BasicSR's ``PerceptualLoss`` options, LPIPS and DISTS (frozen
  networks whose weights come from local files: ``weights.py`` says where);
* ``frequency.py``: focal frequency loss (Jiang et al., ICCV 2021) and an FFT amplitude/phase L1;
* ``color.py``: colour (chroma) and luma consistency in YCbCr;
* ``ssim.py``: MS-SSIM;
* ``gan.py``: :class:`GANLoss` (vanilla, LSGAN, hinge, WGAN, relativistic average) with a generator side
  and a discriminator side, and the WGAN-GP gradient penalty.

Every loss but :class:`GANLoss` is ``loss(pred, target) -> scalar`` with its weight applied; the trainer logs
each one as ``l_<name>`` (BasicSR's convention) and optimizes their sum. A loss class declares its option
keys in a nested ``Options`` dataclass (``type`` plus its constructor's keyword arguments); :data:`LOSSES`
checks each ``{type: ..., ...}`` block against it when the option file loads, and :func:`build_loss`
constructs ``cls(**fields except type)``.
"""
from __future__ import annotations

import dataclasses

from torch import nn

from ggt_ir.losses.pixel import CharbonnierLoss, L1Loss, MSELoss, PSNRLoss
from ggt_ir.registry import Registry

LOSSES = Registry(
    "loss",
    {
        "L1Loss": "ggt_ir.losses.pixel:L1Loss",
        "MSELoss": "ggt_ir.losses.pixel:MSELoss",
        "CharbonnierLoss": "ggt_ir.losses.pixel:CharbonnierLoss",
        "PSNRLoss": "ggt_ir.losses.pixel:PSNRLoss",
        "PerceptualLoss": "ggt_ir.losses.perceptual:PerceptualLoss",  # VGG features (BasicSR's options)
        "LPIPSLoss": "ggt_ir.losses.perceptual:LPIPSLoss",
        "DISTSLoss": "ggt_ir.losses.perceptual:DISTSLoss",
        "FocalFrequencyLoss": "ggt_ir.losses.frequency:FocalFrequencyLoss",
        "FFTLoss": "ggt_ir.losses.frequency:FFTLoss",
        "ColorLoss": "ggt_ir.losses.color:ColorLoss",
        "LumaLoss": "ggt_ir.losses.color:LumaLoss",
        "MSSSIMLoss": "ggt_ir.losses.ssim:MSSSIMLoss",
        "GANLoss": "ggt_ir.losses.gan:GANLoss",  # train.gan_opt of a GAN step, not train.losses
    },
    entry_point_group="ggt_ir.losses",  # plugins of installed packages (registry.py)
)


def build_loss(spec) -> nn.Module:
    """One loss from its typed ``Options`` (the constructor takes every field but ``type``)."""
    cls = LOSSES.get(spec.type)
    return cls(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name != "type"})


def build_losses(train_opts) -> dict[str, nn.Module]:
    """{log name: loss module} from ``pixel_opt`` (logged as ``l_pix``) and the ``losses`` list."""
    out: dict[str, nn.Module] = {}
    specs = ([("l_pix", "train.pixel_opt", train_opts.pixel_opt)] if train_opts.pixel_opt else []) + [
        (None, f"train.losses[{i}]", lo) for i, lo in enumerate(train_opts.losses)
    ]
    for name, key, spec in specs:
        cls = LOSSES.get(spec.type)
        if getattr(cls, "adversarial", False):
            raise ValueError(f"{key}: {spec.type} compares discriminator outputs, not images; "
                             "put it in train.gan_opt of a GAN step (model_type: gan)")
        module = build_loss(spec)
        name = name or f"l_{cls.short_name}"
        base, i = name, 2
        while name in out:
            name, i = f"{base}{i}", i + 1
        out[name] = module
    if not out:
        raise ValueError("no loss configured: set train.pixel_opt (e.g. {type: L1Loss}) or train.losses")
    return out


__all__ = ["LOSSES", "build_loss", "build_losses", "L1Loss", "MSELoss", "CharbonnierLoss", "PSNRLoss"]
