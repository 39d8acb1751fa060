"""DISTS (Ding et al., TPAMI 2020), the network of pyiqa's ``dists`` metric, as a frozen differentiable module.

VGG16 features with every max-pool replaced by an L2 pooling (Hanning window 5, stride 2); at the image and
after each stage, structure and texture similarities of the channel statistics, weighted by the learned
``alpha``/``beta``. Weights from local files only (see ``weights.py``):
``<weights>/checkpoints/vgg16-397923af.pth`` and ``<weights>/pyiqa/DISTS_weights-f5e65c96.pth``.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ggt_ir.losses.weights import PYIQA_URL, TV_URL, local_file, pair_features, torchvision_features

VGG_FILE = "vgg16-397923af.pth"
DISTS_FILE = "DISTS_weights-f5e65c96.pth"
CHANNELS = (3, 64, 128, 256, 512, 512)
_STAGES = ((0, 4), (5, 9), (10, 16), (17, 23), (24, 30))  # VGG16 .features without the pools at 4, 9, 16, 23


class L2Pooling(nn.Module):
    def __init__(self, channels: int, filter_size: int = 5, stride: int = 2):
        super().__init__()
        a = np.hanning(filter_size)[1:-1]
        g = torch.tensor(a[:, None] * a[None, :], dtype=torch.float32)
        self.register_buffer("filter", (g / g.sum())[None, None].repeat(channels, 1, 1, 1))
        self.stride, self.padding = stride, (filter_size - 2) // 2

    def forward(self, x):
        out = F.conv2d(x**2, self.filter, stride=self.stride, padding=self.padding, groups=x.shape[1])
        return (out + 1e-12).sqrt()


class DISTSNet(nn.Module):
    """1 - similarity for images in [0, 1] (B, 3, H, W); one value per image (B,). Frozen, always in eval mode."""

    def __init__(self, weights_dir: str | None = None, vgg_path: str | None = None, dists_path: str | None = None):
        super().__init__()
        vgg = local_file(VGG_FILE, "checkpoints", vgg_path, weights_dir, "DISTS", TV_URL + VGG_FILE)
        head = local_file(DISTS_FILE, "pyiqa", dists_path, weights_dir, "DISTS", PYIQA_URL + DISTS_FILE)
        features = torchvision_features("vgg16", vgg)
        stages = []
        for i, (a, b) in enumerate(_STAGES):
            layers = [L2Pooling(CHANNELS[i])] if i else []
            stages.append(nn.Sequential(*layers, *[features[j] for j in range(a, b)]))
        self.stages = nn.ModuleList(stages)
        sd = torch.load(head, map_location="cpu", weights_only=True)
        sd = sd.get("params", sd)
        if "alpha" not in sd or "beta" not in sd:
            raise ValueError(f"{head}: not a DISTS weights file (needs 'alpha' and 'beta')")
        self.alpha = nn.Parameter(sd["alpha"].float().reshape(1, sum(CHANNELS), 1, 1), requires_grad=False)
        self.beta = nn.Parameter(sd["beta"].float().reshape(1, sum(CHANNELS), 1, 1), requires_grad=False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The image and the maps after each stage."""
        feats, h = [x], (x - self.mean) / self.std
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        feats_x, feats_y = pair_features(self.features, x, y)
        w_sum = self.alpha.sum() + self.beta.sum()
        alphas = torch.split(self.alpha / w_sum, CHANNELS, dim=1)
        betas = torch.split(self.beta / w_sum, CHANNELS, dim=1)
        dist1 = dist2 = 0
        c1 = c2 = 1e-6
        for fx, fy, alpha, beta in zip(feats_x, feats_y, alphas, betas):
            mx, my = fx.mean((2, 3), keepdim=True), fy.mean((2, 3), keepdim=True)
            structure = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
            vx, vy = ((fx - mx) ** 2).mean((2, 3), keepdim=True), ((fy - my) ** 2).mean((2, 3), keepdim=True)
            cov = (fx * fy).mean((2, 3), keepdim=True) - mx * my
            texture = (2 * cov + c2) / (vx + vy + c2)
            dist1 = dist1 + (alpha * structure).sum(1, keepdim=True)
            dist2 = dist2 + (beta * texture).sum(1, keepdim=True)
        return (1 - (dist1 + dist2)).flatten()
