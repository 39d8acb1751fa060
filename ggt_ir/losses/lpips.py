"""LPIPS v0.1 (Zhang et al., CVPR 2018), the network pyiqa's ``lpips`` / ``lpips-vgg`` metrics compute, as a
frozen differentiable module for training losses. Weights from local files only (see ``weights.py``):

* ``net="vgg"``: ``<weights>/checkpoints/vgg16-397923af.pth`` + ``<weights>/pyiqa/LPIPS_v0.1_vgg-a78928a0.pth``
* ``net="alex"``: ``<weights>/checkpoints/alexnet-owt-7be5be79.pth`` + ``<weights>/pyiqa/LPIPS_v0.1_alex-df73285e.pth``

(the ``lpips`` package's ``weights/v0.1/<net>.pth`` has the same keys as pyiqa's file). Explicit paths
(``backbone_path``/``vgg_path``, ``lin_path``) override the folder. This is the project's one LPIPS: the
``LPIPSLoss`` of :mod:`ggt_ir.losses.perceptual` and the generative steps' ``train.lpips_opt`` both use it.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ggt_ir.losses.weights import PYIQA_URL, TV_URL, local_file, pair_features, torchvision_features, weights_dir

# net -> (torchvision arch, backbone file, pyiqa file, feature slices [a, b) of .features, channels)
NETS = {
    "vgg": ("vgg16", "vgg16-397923af.pth", "LPIPS_v0.1_vgg-a78928a0.pth",
            ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30)), (64, 128, 256, 512, 512)),  # relu1_2 ... relu5_3
    "alex": ("alexnet", "alexnet-owt-7be5be79.pth", "LPIPS_v0.1_alex-df73285e.pth",
             ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)), (64, 192, 384, 256, 256)),  # relu1 ... relu5
}
# the names the generative code imports
VGG_FILE, LPIPS_FILE = NETS["vgg"][1], NETS["vgg"][2]
VGG_URL, LPIPS_URL = TV_URL + VGG_FILE, PYIQA_URL + LPIPS_FILE
CHANNELS = NETS["vgg"][4]


def lpips_files(weights_dir_: str | None = None, vgg_path: str | None = None, lin_path: str | None = None,
                net: str = "vgg") -> tuple[Path, Path]:
    _, backbone, lin, _, _ = NETS[net]
    root = weights_dir(weights_dir_)
    return (Path(vgg_path) if vgg_path else root / "checkpoints" / backbone,
            Path(lin_path) if lin_path else root / "pyiqa" / lin)


def lpips_available(weights_dir_: str | None = None, vgg_path: str | None = None, lin_path: str | None = None,
                    net: str = "vgg") -> bool:
    return all(p.is_file() for p in lpips_files(weights_dir_, vgg_path, lin_path, net))


class LPIPSNet(nn.Module):
    """d(x, y) for images in [0, 1] (B, 3, H, W); one value per image (B,). Frozen, always in eval mode."""

    def __init__(self, net: str = "vgg", weights_dir: str | None = None, backbone_path: str | None = None,
                 lin_path: str | None = None):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"LPIPS: net {net!r} is unknown; use one of {', '.join(NETS)}")
        arch, backbone_file, lin_file, slices, channels = NETS[net]
        what = f"LPIPS ({net})"
        backbone = local_file(backbone_file, "checkpoints", backbone_path, weights_dir, what, TV_URL + backbone_file)
        lin = local_file(lin_file, "pyiqa", lin_path, weights_dir, what, PYIQA_URL + lin_file)
        features = torchvision_features(arch, backbone)
        self.slices = nn.ModuleList(nn.Sequential(*[features[i] for i in range(a, b)]) for a, b in slices)
        lin_sd = torch.load(lin, map_location="cpu", weights_only=True)
        lin_sd = lin_sd.get("params", lin_sd)
        try:
            self.lins = nn.ParameterList(nn.Parameter(lin_sd[f"lin{i}.model.1.weight"].float(), requires_grad=False)
                                         for i in range(len(channels)))
        except KeyError as e:
            raise ValueError(f"{lin}: not an LPIPS v0.1 '{net}' file (no key {e})") from None
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):  # always eval (no dropout), even inside a training model
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The channel-normalised maps of each slice."""
        f, out = ((x * 2 - 1) - self.shift) / self.scale, []
        for sl in self.slices:
            f = sl(f)
            out.append(f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = pair_features(self.features, x, y)
        total = 0
        for a, b, w in zip(fx, fy, self.lins):
            total = total + F.conv2d((a - b) ** 2, w).mean(dim=(2, 3))
        return total.flatten()


class LPIPSVGG(LPIPSNet):
    """LPIPS-VGG with the generative steps' argument names (``train.lpips_opt``)."""

    def __init__(self, weights_dir: str | None = None, vgg_path: str | None = None, lin_path: str | None = None):
        super().__init__("vgg", weights_dir, vgg_path, lin_path)
