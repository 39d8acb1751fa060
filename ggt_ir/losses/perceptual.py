"""Perceptual losses for any family: frozen networks compare ``pred`` with ``target`` (both RGB in [0, 1]).

* :class:`PerceptualLoss`: distances of VGG features, BasicSR's ``PerceptualLoss`` (same options, same layer
  names, same values: tested against basicsr on the same weights). Default layer weights are Real-ESRGAN's
  (``conv1_2: 0.1, conv2_2: 0.1, conv3_4: 1, conv4_4: 1, conv5_4: 1``, i.e. features before the ReLU).
  torchvision's ImageNet VGG from ``<weights>/checkpoints/vgg19-dcbb9e9d.pth`` (or ``vgg_path``).
* :class:`LPIPSLoss`: LPIPS v0.1 (VGG or AlexNet), pyiqa's ``lpips-vgg`` / ``lpips`` values.
* :class:`DISTSLoss`: DISTS, pyiqa's ``dists`` values.

Weight files: see :mod:`ggt_ir.losses.weights` (``weights_dir`` option, ``$GGT_IR_WEIGHTS``, torch.hub's folder).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ggt_ir.losses.weights import TV_URL, local_file, pair_features, torchvision_features, torchvision_file

# BasicSR's layer names (basicsr/archs/vgg_arch.py): the order of torchvision's ``features`` modules
_VGG_BLOCKS = {"vgg11": (1, 1, 2, 2, 2), "vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}


def vgg_layer_names(vgg_type: str) -> list[str]:
    base = vgg_type.replace("_bn", "")
    if base not in _VGG_BLOCKS:
        raise ValueError(f"PerceptualLoss: vgg_type {vgg_type!r} is unknown; use one of "
                         f"{', '.join(t + s for t in _VGG_BLOCKS for s in ('', '_bn'))}")
    names = []
    for block, n in enumerate(_VGG_BLOCKS[base], start=1):
        for i in range(1, n + 1):
            names += [f"conv{block}_{i}"] + ([f"bn{block}_{i}"] if "_bn" in vgg_type else []) + [f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


class VGGFeatures(nn.Module):
    """Frozen VGG ``features`` up to the deepest requested layer; returns ``{layer name: feature}``."""

    def __init__(self, layers: list[str], vgg_type: str = "vgg19", use_input_norm: bool = True,
                 range_norm: bool = False, weights_dir: str | None = None, vgg_path: str | None = None):
        super().__init__()
        names = vgg_layer_names(vgg_type)
        bad = [n for n in layers if n not in names]
        if bad:
            raise ValueError(f"PerceptualLoss: unknown layer(s) {bad} for {vgg_type}; valid: {', '.join(names)}")
        file = torchvision_file(vgg_type)
        path = local_file(file, "checkpoints", vgg_path, weights_dir, f"PerceptualLoss ({vgg_type})", TV_URL + file)
        features = torchvision_features(vgg_type, path)
        last = max(names.index(n) for n in layers)
        self.names = names[: last + 1]
        self.body = nn.Sequential(*features[: last + 1])
        for m in self.body:  # torchvision's ReLUs are in place: they would overwrite a returned conv feature
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.layers = set(layers)
        self.use_input_norm, self.range_norm = use_input_norm, range_norm
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.range_norm:
            x = (x + 1) / 2
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        out = {}
        for name, layer in zip(self.names, self.body):
            x = layer(x)
            if name in self.layers:
                out[name] = x
        return out


def _gram(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    f = x.reshape(n, c, h * w)
    return f.bmm(f.transpose(1, 2)) / (c * h * w)


REAL_ESRGAN_LAYERS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


class PerceptualLoss(nn.Module):
    short_name = "percep"

    @dataclass
    class Options:
        type: str = "PerceptualLoss"
        # None = Real-ESRGAN's weights (REAL_ESRGAN_LAYERS); a dict default would be merged with the file's
        # dict by the option loader, so a file could never drop a layer
        layer_weights: Optional[Dict[str, float]] = None
        vgg_type: str = "vgg19"
        use_input_norm: bool = True
        range_norm: bool = False  # inputs in [-1, 1]
        perceptual_weight: float = 1.0
        style_weight: float = 0.0  # Gram-matrix loss
        criterion: str = "l1"  # l1 | l2 | fro
        weights_dir: Optional[str] = None
        vgg_path: Optional[str] = None  # explicit torchvision VGG file

    def __init__(self, layer_weights: dict | None = None, vgg_type: str = "vgg19", use_input_norm: bool = True,
                 range_norm: bool = False, perceptual_weight: float = 1.0, style_weight: float = 0.0,
                 criterion: str = "l1", weights_dir: str | None = None, vgg_path: str | None = None):
        super().__init__()
        if criterion not in ("l1", "l2", "fro"):
            raise ValueError(f"PerceptualLoss: criterion {criterion!r} is unknown; use l1, l2 or fro")
        self.layer_weights = dict(layer_weights if layer_weights is not None else REAL_ESRGAN_LAYERS)
        if not self.layer_weights:
            raise ValueError("PerceptualLoss: layer_weights is empty; name at least one VGG layer (e.g. conv5_4)")
        self.perceptual_weight, self.style_weight, self.criterion = perceptual_weight, style_weight, criterion
        self.vgg = VGGFeatures(list(self.layer_weights), vgg_type, use_input_norm, range_norm, weights_dir, vgg_path)

    def _distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.criterion == "fro":
            return torch.linalg.vector_norm(a - b)
        return F.l1_loss(a, b) if self.criterion == "l1" else F.mse_loss(a, b)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        feats_x, feats_y = pair_features(self.vgg, pred, target.detach())
        loss = pred.new_zeros((), dtype=torch.float32)
        for name, weight in self.layer_weights.items():
            fx, fy = feats_x[name].float(), feats_y[name].float()
            if self.perceptual_weight > 0:
                loss = loss + self.perceptual_weight * weight * self._distance(fx, fy)
            if self.style_weight > 0:
                loss = loss + self.style_weight * weight * self._distance(_gram(fx), _gram(fy))
        return loss


class LPIPSLoss(nn.Module):
    short_name = "lpips"

    @dataclass
    class Options:
        type: str = "LPIPSLoss"
        loss_weight: float = 1.0
        net: str = "vgg"  # vgg (pyiqa's lpips-vgg) | alex (pyiqa's lpips)
        weights_dir: Optional[str] = None
        backbone_path: Optional[str] = None  # explicit torchvision vgg16 / alexnet file
        lin_path: Optional[str] = None  # explicit LPIPS linear-layer file

    def __init__(self, loss_weight: float = 1.0, net: str = "vgg", weights_dir: str | None = None,
                 backbone_path: str | None = None, lin_path: str | None = None):
        super().__init__()
        from ggt_ir.losses.lpips import LPIPSNet

        self.loss_weight = loss_weight
        self.net = LPIPSNet(net, weights_dir, backbone_path, lin_path)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_weight * self.net(pred, target.detach()).mean()


class DISTSLoss(nn.Module):
    short_name = "dists"

    @dataclass
    class Options:
        type: str = "DISTSLoss"
        loss_weight: float = 1.0
        weights_dir: Optional[str] = None
        vgg_path: Optional[str] = None  # explicit torchvision vgg16 file
        dists_path: Optional[str] = None  # explicit DISTS alpha/beta file

    def __init__(self, loss_weight: float = 1.0, weights_dir: str | None = None, vgg_path: str | None = None,
                 dists_path: str | None = None):
        super().__init__()
        from ggt_ir.losses.dists import DISTSNet

        self.loss_weight = loss_weight
        self.net = DISTSNet(weights_dir, vgg_path, dists_path)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_weight * self.net(pred, target.detach()).mean()
