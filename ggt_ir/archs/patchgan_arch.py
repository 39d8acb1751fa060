"""PatchGAN discriminators with spectral normalization: one scale, and several scales (pix2pixHD-style).

PatchGAN (Isola et al., "Image-to-Image Translation with Conditional Adversarial Networks", CVPR 2017) judges
overlapping patches: ``num_layers`` stride-2 4x4 convolutions, one stride-1, then a 1-channel map; with 3
layers each output sees a 70x70 window of the input. The layer layout and state-dict keys (``model.<i>``) are
those of KAIR's ``Discriminator_PatchGAN(norm_type='spectral')`` (cszn/KAIR ``models/network_discriminator.py``,
used to train BSRGAN), with BasicSR-style argument names; spectral norm is ``torch.nn.utils.spectral_norm``.

The multi-scale version (Wang et al., "High-Resolution Image Synthesis and Semantic Manipulation with
Conditional GANs", CVPR 2018) runs ``num_scales`` independent PatchGANs on the image and on successive 2x
average-pooled copies (3x3 window, stride 2, padding not counted, as pix2pixHD); it returns the list of
their maps, finest first. :class:`ggt_ir.losses.gan.GANLoss` averages a list of maps.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import spectral_norm as sn


class PatchGANDiscriminatorSN(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, num_layers: int = 3, spectral_norm: bool = True):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"PatchGAN: num_layers must be >= 1, got {num_layers}")
        norm = sn if spectral_norm else (lambda m: m)
        kw, pad = 4, 2  # KAIR: padw = ceil((kw - 1) / 2)
        layers = [norm(nn.Conv2d(num_in_ch, num_feat, kw, 2, pad)), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, num_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [norm(nn.Conv2d(num_feat * prev, num_feat * mult, kw, 2, pad)), nn.LeakyReLU(0.2)]
        prev, mult = mult, min(2**num_layers, 8)
        layers += [norm(nn.Conv2d(num_feat * prev, num_feat * mult, kw, 1, pad)), nn.LeakyReLU(0.2)]
        layers += [norm(nn.Conv2d(num_feat * mult, 1, kw, 1, pad))]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MultiScalePatchGANDiscriminatorSN(nn.Module):
    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, num_layers: int = 3, num_scales: int = 3,
                 spectral_norm: bool = True):
        super().__init__()
        if num_scales < 1:
            raise ValueError(f"multi-scale PatchGAN: num_scales must be >= 1, got {num_scales}")
        self.discriminators = nn.ModuleList(
            PatchGANDiscriminatorSN(num_in_ch, num_feat, num_layers, spectral_norm) for _ in range(num_scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.downsample(x)
            outs.append(d(x))
        return outs
