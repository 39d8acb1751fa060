"""Tensor <-> 8-bit image helpers and side-by-side panels."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8 RGB (rounded, like BasicSR's tensor2img)."""
    if x.ndim == 4:
        x = x[0]
    return (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def save_png(img: np.ndarray, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write image {path}")


def side_by_side(*images: torch.Tensor, gap: int = 4) -> np.ndarray:
    """Panels (e.g. LQ | output | HQ) at the largest height; smaller ones upscaled (nearest)."""
    imgs = [x[0] if x.ndim == 4 else x for x in images]
    h = max(i.shape[-2] for i in imgs)
    panels = []
    for i in imgs:
        if i.shape[-2] != h:
            i = F.interpolate(i[None].float(), scale_factor=h / i.shape[-2], mode="nearest")[0]
        panels += [i.float().cpu(), torch.ones(3, h, gap)]
    return tensor_to_uint8(torch.cat(panels[:-1], dim=2))
