"""Reading and writing images: the one place that knows file formats, bit depths and channel orders.

Images in memory are float32 RGB in [0, 1]: HWC numpy arrays from :func:`read_image`, CHW tensors
after :func:`to_tensor`. Files are written as 8-bit RGB PNGs (rounded like BasicSR's ``tensor2img``).
"""
from __future__ import annotations

import os
from pathlib import Path

from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made, so listing files stays light
    import torch

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as float32 RGB HWC in [0, 1]; 8- and 16-bit, gray and RGBA are accepted."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise OSError(f"cannot decode image {path} (corrupt, truncated or not an image)")
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    return img.astype(np.float32) / scale


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HWC numpy -> CHW tensor (no copy of the values beyond making them contiguous)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8 RGB (rounded, like BasicSR's tensor2img)."""
    import torch

    if x.ndim == 4:
        x = x[0]
    return (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def save_png(img: np.ndarray | torch.Tensor, path: str | os.PathLike) -> Path:
    """Write an (H, W, 3) uint8 RGB array, or a float CHW tensor in [0, 1], as a PNG."""
    if not isinstance(img, np.ndarray):
        img = tensor_to_uint8(img)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")
    return path


def side_by_side(*images: torch.Tensor, gap: int = 4) -> np.ndarray:
    """Panels (e.g. LQ | output | HQ) at the largest height; smaller ones upscaled (nearest)."""
    import torch
    import torch.nn.functional as F

    imgs = [x[0] if x.ndim == 4 else x for x in images]
    h = max(i.shape[-2] for i in imgs)
    panels = []
    for i in imgs:
        if i.shape[-2] != h:
            i = F.interpolate(i[None].float(), scale_factor=h / i.shape[-2], mode="nearest")[0]
        panels += [i.float().cpu(), torch.ones(3, h, gap)]
    return tensor_to_uint8(torch.cat(panels[:-1], dim=2))
