"""Paired augmentation: the same random window, flip and rotation on LQ and GT."""
from __future__ import annotations

import numpy as np


def paired_random_crop(lq: np.ndarray, gt: np.ndarray, gt_size: int, scale: int, rng: np.random.Generator,
                       names: tuple[str, str] = ("lq", "gt")) -> tuple[np.ndarray, np.ndarray]:
    """Crop a ``gt_size`` window from GT and the matching ``gt_size // scale`` window from LQ (HWC arrays)."""
    check_pair_size(lq, gt, scale, names)
    lq_size = gt_size // scale
    h, w = lq.shape[:2]
    if h < lq_size or w < lq_size:
        raise ValueError(
            f"{names[0]}: LQ image is {h}x{w}, smaller than the crop {lq_size}x{lq_size} "
            f"(gt_size {gt_size} / scale {scale}); lower 'gt_size' or remove the image"
        )
    top = int(rng.integers(0, h - lq_size + 1))
    left = int(rng.integers(0, w - lq_size + 1))
    lq = lq[top : top + lq_size, left : left + lq_size]
    gt = gt[top * scale : (top + lq_size) * scale, left * scale : (left + lq_size) * scale]
    return lq, gt


def check_pair_size(lq: np.ndarray, gt: np.ndarray, scale: int, names: tuple[str, str]) -> None:
    (hl, wl), (hg, wg) = lq.shape[:2], gt.shape[:2]
    if (hg, wg) != (hl * scale, wl * scale):
        raise ValueError(
            f"pair size mismatch: LQ {names[0]} is {hl}x{wl} and GT {names[1]} is {hg}x{wg}; "
            f"with scale {scale} the GT must be {hl * scale}x{wl * scale}. Fix the files or the 'scale' option."
        )


def paired_flip_rot(lq: np.ndarray, gt: np.ndarray, hflip: bool, rot: bool, rng: np.random.Generator):
    """Random horizontal flip, vertical flip and 90-degree transpose (BasicSR's ``augment``)."""
    if hflip and rng.random() < 0.5:
        lq, gt = lq[:, ::-1], gt[:, ::-1]
    if rot:
        if rng.random() < 0.5:
            lq, gt = lq[::-1], gt[::-1]
        if rng.random() < 0.5:
            lq, gt = lq.transpose(1, 0, 2), gt.transpose(1, 0, 2)
    return lq, gt
