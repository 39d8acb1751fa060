"""Reading and writing images: the one place that knows file formats, bit depths and channel orders.

Images in memory are float32 RGB in [0, 1]: HWC numpy arrays from :func:`read_image`, CHW tensors
after :func:`to_tensor`. Files are written as PNGs (8-bit RGB by default, rounded like BasicSR's
``tensor2img``; :func:`write_image_file` keeps a source's bit depth, alpha and gray).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made, so listing files stays light
    import torch

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


@dataclass
class ImageFile:
    """What a file held, beyond the RGB values the networks see."""

    rgb: np.ndarray  # float32 RGB HWC in [0, 1]
    alpha: np.ndarray | None  # float32 HW in [0, 1], when the file had an alpha channel
    bit_depth: int  # 8 or 16
    gray: bool  # the file had one (luma) channel


def read_image_file(path: str | os.PathLike) -> ImageFile:
    """Decode an image file: 8- and 16-bit, gray, gray+alpha, RGB and RGBA are accepted."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise OSError(f"cannot decode image {path} (corrupt, truncated or not an image)")
    if img.dtype not in (np.uint8, np.uint16):
        raise OSError(f"{path}: unsupported sample type {img.dtype} (8- or 16-bit integer images are read)")
    scale = 65535.0 if img.dtype == np.uint16 else 255.0
    alpha, gray = None, img.ndim == 2 or img.shape[2] in (1, 2)
    if img.ndim == 3 and img.shape[2] in (2, 4):
        alpha = img[..., -1].astype(np.float32) / scale
    if gray:
        rgb = cv2.cvtColor(img if img.ndim == 2 else img[..., 0], cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return ImageFile(rgb.astype(np.float32) / scale, alpha, 16 if img.dtype == np.uint16 else 8, gray)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as float32 RGB HWC in [0, 1]; 8- and 16-bit, gray and RGBA are accepted."""
    return read_image_file(path).rgb


def write_image_file(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None,
                     bit_depth: int = 8, gray: bool = False) -> Path:
    """Write float RGB HWC in [0, 1] as a PNG of ``bit_depth`` bits, gray (BT.601 luma) or RGB, with
    ``alpha`` (float HW, resized to the image when sizes differ) as its alpha channel."""
    peak = 65535.0 if bit_depth == 16 else 255.0
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    img = cv2.cvtColor(np.clip(rgb, 0, 1).astype(np.float32), cv2.COLOR_RGB2GRAY if gray else cv2.COLOR_RGB2BGR)
    if alpha is not None:
        if alpha.shape != img.shape[:2]:
            alpha = cv2.resize(alpha, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_CUBIC)
        if gray:  # PNG writers take gray, RGB or RGBA; gray with alpha goes out as RGBA
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        img = np.dstack([img, np.clip(alpha, 0, 1)])
    out = (img * peak).round().astype(dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), out):
        raise OSError(f"could not write image {path}")
    return path


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


def save_jpeg(img: np.ndarray | torch.Tensor, path: str | os.PathLike, quality: int = 88) -> Path:
    """Write an (H, W, 3) uint8 RGB array, or a float CHW tensor in [0, 1], as a JPEG (previews in reports;
    images that are scored are always PNG)."""
    if not isinstance(img, np.ndarray):
        img = tensor_to_uint8(img)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]):
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
