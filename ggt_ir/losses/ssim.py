"""MS-SSIM (Wang, Simoncelli & Bovik, 2003) as a loss: ``loss_weight * (1 - MS-SSIM(pred, target))``.

The formula of pyiqa's ``ms_ssim`` (tested against it): an 11x11 Gaussian window (sigma 1.5), 'valid'
filtering, contrast-structure terms clipped at 0 (so gradients never meet a negative base), 2x average
pooling between scales and the product ``prod_i cs_i^w_i * ssim_M^w_M`` with the published weights. Each
scale needs at least ``win_size`` pixels, so the five default scales need images of about 161 px or more;
for smaller training crops give fewer ``weights`` (e.g. the first three for 128 px crops).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

MS_SSIM_WEIGHTS = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]


def _window(size: int, sigma: float, channels: int, device) -> torch.Tensor:
    t = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    w = g[:, None] * g[None, :]
    return (w / w.sum()).expand(channels, 1, size, size)


_FLOOR = 1e-6  # keeps x ** w (w < 1) and its gradient finite


def ms_ssim(x: torch.Tensor, y: torch.Tensor, weights=MS_SSIM_WEIGHTS, data_range: float = 1.0,
            win_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-image MS-SSIM (B,) of (B, C, H, W) images (channels filtered separately)."""
    x, y = x.float(), y.float()
    c = x.shape[1]
    need = (win_size - 1) * 2 ** (len(weights) - 1) + 1
    if min(x.shape[-2:]) < need:
        raise ValueError(f"MS-SSIM with {len(weights)} scales and window {win_size} needs images of at least "
                         f"{need} px, got {tuple(x.shape[-2:])}; give MSSSIMLoss fewer weights or larger crops")
    win = _window(win_size, sigma, c, x.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    w = torch.tensor(weights, dtype=torch.float32, device=x.device)
    out = 1.0
    for i in range(len(weights)):
        mu_x, mu_y = F.conv2d(x, win, groups=c), F.conv2d(y, win, groups=c)
        sxx = F.conv2d(x * x, win, groups=c) - mu_x**2
        syy = F.conv2d(y * y, win, groups=c) - mu_y**2
        sxy = F.conv2d(x * y, win, groups=c) - mu_x * mu_y
        cs_map = F.relu((2 * sxy + c2) / (sxx + syy + c2))
        if i < len(weights) - 1:
            out = out * cs_map.mean((1, 2, 3)).clamp_min(_FLOOR) ** w[i]
            pad = (x.shape[2] % 2, x.shape[3] % 2)
            x, y = F.avg_pool2d(x, 2, padding=pad), F.avg_pool2d(y, 2, padding=pad)
        else:
            # a prediction outside [0, 1] (an untrained network) can make the luminance term negative, and a
            # negative base to a fractional power is NaN: floored, as the relu'd contrast terms
            ssim = ((2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map).mean((1, 2, 3)).clamp_min(_FLOOR)
            out = out * ssim ** w[i]
    return out


class MSSSIMLoss(nn.Module):
    short_name = "msssim"

    @dataclass
    class Options:
        type: str = "MSSSIMLoss"
        loss_weight: float = 1.0
        weights: List[float] = field(default_factory=lambda: list(MS_SSIM_WEIGHTS))  # one per scale
        data_range: float = 1.0
        win_size: int = 11
        sigma: float = 1.5

    def __init__(self, loss_weight: float = 1.0, weights=None, data_range: float = 1.0, win_size: int = 11,
                 sigma: float = 1.5):
        super().__init__()
        self.weights = list(weights if weights is not None else MS_SSIM_WEIGHTS)
        if not self.weights:
            raise ValueError("MSSSIMLoss: weights is empty; give one weight per scale")
        self.loss_weight, self.data_range, self.win_size, self.sigma = loss_weight, data_range, win_size, sigma

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        score = ms_ssim(pred, target, self.weights, self.data_range, self.win_size, self.sigma)
        return self.loss_weight * (1 - score).mean()
