"""LPIPS (VGG16, v0.1) as a training loss, with its weights read from local files only.

Two files, laid out like torch.hub's folder (the same layout as ``ggt_ir/eval/weights.py``):

* ``<weights>/checkpoints/vgg16-397923af.pth``  torchvision's ImageNet VGG16
  (https://download.pytorch.org/models/vgg16-397923af.pth)
* ``<weights>/pyiqa/LPIPS_v0.1_vgg-a78928a0.pth``  the LPIPS linear layers
  (https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/LPIPS_v0.1_vgg-a78928a0.pth;
  the ``lpips`` package's ``weights/v0.1/vgg.pth`` has the same keys)

``<weights>`` is ``train.lpips_opt.weights_dir``, else ``$GGT_IR_WEIGHTS``, else ``$TORCH_HOME/hub``.
Explicit file paths (``vgg_path``, ``lin_path``) override the folder.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

VGG_FILE = "vgg16-397923af.pth"
LPIPS_FILE = "LPIPS_v0.1_vgg-a78928a0.pth"
VGG_URL = "https://download.pytorch.org/models/" + VGG_FILE
LPIPS_URL = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/" + LPIPS_FILE
CHANNELS = (64, 128, 256, 512, 512)
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def weights_dir(explicit: str | None = None) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("GGT_IR_WEIGHTS"):
        return Path(os.environ["GGT_IR_WEIGHTS"]).expanduser()
    return Path(torch.hub.get_dir())


def lpips_files(weights_dir_: str | None = None, vgg_path: str | None = None, lin_path: str | None = None):
    root = weights_dir(weights_dir_)
    return (Path(vgg_path) if vgg_path else root / "checkpoints" / VGG_FILE,
            Path(lin_path) if lin_path else root / "pyiqa" / LPIPS_FILE)


def lpips_available(weights_dir_: str | None = None, vgg_path: str | None = None, lin_path: str | None = None) -> bool:
    return all(p.is_file() for p in lpips_files(weights_dir_, vgg_path, lin_path))


class LPIPSVGG(nn.Module):
    """d(x, y) for images in [0, 1] (BCHW); returns one value per image (B,). Frozen."""

    def __init__(self, weights_dir: str | None = None, vgg_path: str | None = None, lin_path: str | None = None):
        super().__init__()
        from torchvision.models import vgg16

        vgg_file, lin_file = lpips_files(weights_dir, vgg_path, lin_path)
        missing = [(f, u) for f, u in ((vgg_file, VGG_URL), (lin_file, LPIPS_URL)) if not f.is_file()]
        if missing:
            raise FileNotFoundError(
                "LPIPS (vgg) weights are missing: "
                + "; ".join(f"{f} (download {u})" for f, u in missing)
                + ". Put them there, set train.lpips_opt.weights_dir (or $GGT_IR_WEIGHTS) to a folder with "
                "checkpoints/ and pyiqa/ sub-folders, or remove train.lpips_opt.")
        features = vgg16(weights=None).features
        sd = torch.load(vgg_file, map_location="cpu", weights_only=True)
        sd = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        features.load_state_dict(sd)
        self.slices = nn.ModuleList(nn.Sequential(*[features[i] for i in range(a, b)]) for a, b in _SLICES)
        lin = torch.load(lin_file, map_location="cpu", weights_only=True)
        self.lins = nn.ParameterList(nn.Parameter(lin[f"lin{i}.model.1.weight"].float(), requires_grad=False)
                                     for i in range(len(CHANNELS)))
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True):  # always eval (no dropout), even inside a training model
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx = ((x.float() * 2 - 1) - self.shift) / self.scale
        fy = ((y.float() * 2 - 1) - self.shift) / self.scale
        total = 0
        for sl, w in zip(self.slices, self.lins):
            fx, fy = sl(fx), sl(fy)
            nx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + torch.nn.functional.conv2d((nx - ny) ** 2, w).mean(dim=(2, 3))
        return total.flatten()
