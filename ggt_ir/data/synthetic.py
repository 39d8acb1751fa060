"""``SyntheticDegradation``: HQ images only, LQ made on the fly by a Real-ESRGAN-style two-stage degradation.

The comparison arm of the generalization tables: the same model trained on synthetic pairs instead of
GGT-100K. The pipeline follows Real-ESRGAN (Wang et al., ICCVW 2021, "Real-ESRGAN: Training Real-World Blind
Super-Resolution with Pure Synthetic Data"), applied per sample on the CPU in the data workers:

1. blur (random mixed kernel: iso/aniso/generalized/plateau Gaussians, or a sinc kernel) -> random resize
   (up/down/keep, area/bilinear/bicubic) -> Gaussian or Poisson noise (colour or gray) -> JPEG;
2. the same again with the second-stage ranges (blur with probability ``second_blur_prob``);
3. resize back to ``HQ size / scale`` plus a final sinc filter, and JPEG, in random order; clamp and round
   to 8 bits.

Kernels and noise come from ``basicsr.data.degradations`` (random_mixed_kernels, circular_lowpass_kernel,
random_add_gaussian_noise_pt, random_add_poisson_noise_pt); the convolution is basicsr's ``filter2D`` with
replicate padding for tiny images (:func:`filter2d`); JPEG is a real OpenCV JPEG (Real-ESRGAN's DiffJPEG is a
GPU stand-in for it). Every sample is deterministic in its ``(index, augmentation seed)`` like ``PairedFolder``, so resumed runs stay exact: the
global ``random``/NumPy/torch generators basicsr draws from are seeded per sample and restored afterwards.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np
import torch
from torch.nn import functional as F

from ggt_ir.utils.seeding import seeded
from ggt_ir.config import OptionsError, at_least
from ggt_ir.data import missing_data_hint
from ggt_ir.data.pairing import find_pairs, list_images, normalize_category
from ggt_ir.data.paired_folder import collate, resumable_train_loader
from ggt_ir.utils.image_io import read_image, to_tensor
from ggt_ir.data.transforms import paired_flip_rot

KERNELS = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]


@dataclass
class DegradationOptions:
    """Real-ESRGAN's published settings (options/train_realesrgan_x4plus.yml) are the defaults."""

    # first stage
    blur_kernel_size: int = 21  # kernels are 7..blur_kernel_size (odd), zero-padded to this size
    kernel_list: List[str] = field(default_factory=lambda: list(KERNELS))
    kernel_prob: List[float] = field(default_factory=lambda: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    sinc_prob: float = 0.1
    blur_sigma: List[float] = field(default_factory=lambda: [0.2, 3.0])
    betag_range: List[float] = field(default_factory=lambda: [0.5, 4.0])
    betap_range: List[float] = field(default_factory=lambda: [1.0, 2.0])
    resize_prob: List[float] = field(default_factory=lambda: [0.2, 0.7, 0.1])  # up, down, keep
    resize_range: List[float] = field(default_factory=lambda: [0.15, 1.5])
    gaussian_noise_prob: float = 0.5  # else Poisson
    noise_range: List[float] = field(default_factory=lambda: [1.0, 30.0])  # sigma, 8-bit units
    poisson_scale_range: List[float] = field(default_factory=lambda: [0.05, 3.0])
    gray_noise_prob: float = 0.4
    jpeg_range: List[float] = field(default_factory=lambda: [30.0, 95.0])
    # second stage
    second_order: bool = True  # false: one stage, then the final resize/sinc/JPEG
    second_blur_prob: float = 0.8
    kernel_list2: List[str] = field(default_factory=lambda: list(KERNELS))
    kernel_prob2: List[float] = field(default_factory=lambda: [0.45, 0.25, 0.12, 0.03, 0.12, 0.03])
    sinc_prob2: float = 0.1
    blur_sigma2: List[float] = field(default_factory=lambda: [0.2, 1.5])
    betag_range2: List[float] = field(default_factory=lambda: [0.5, 4.0])
    betap_range2: List[float] = field(default_factory=lambda: [1.0, 2.0])
    resize_prob2: List[float] = field(default_factory=lambda: [0.3, 0.4, 0.3])
    resize_range2: List[float] = field(default_factory=lambda: [0.3, 1.2])
    gaussian_noise_prob2: float = 0.5
    noise_range2: List[float] = field(default_factory=lambda: [1.0, 25.0])
    poisson_scale_range2: List[float] = field(default_factory=lambda: [0.05, 2.5])
    gray_noise_prob2: float = 0.4
    jpeg_range2: List[float] = field(default_factory=lambda: [30.0, 95.0])
    # final
    final_sinc_prob: float = 0.8
    # switches, for ablations and tests
    use_blur: bool = True
    use_resize: bool = True
    use_noise: bool = True
    use_jpeg: bool = True

    def check(self, key: str = "degradation") -> None:
        """ValueError naming ``key`` for settings no degradation can run (the CPU dataset's and the device's)."""
        for name in ("kernel_prob", "kernel_prob2"):
            lst = "kernel_list" + name[len("kernel_prob"):]
            if len(getattr(self, name)) != len(getattr(self, lst)):
                raise ValueError(f"{key}.{name} needs one probability per {lst} entry")
        bad = [k for k in set(self.kernel_list) | set(self.kernel_list2) if k not in KERNELS]
        if bad:
            raise ValueError(f"{key}: unknown kernel(s) {bad}; known: {', '.join(KERNELS)}")
        if self.blur_kernel_size % 2 == 0 or self.blur_kernel_size < 7:
            raise ValueError(f"{key}.blur_kernel_size must be odd and >= 7, got {self.blur_kernel_size}")


def _basicsr():
    from ggt_ir._compat import patch_basicsr_imports

    patch_basicsr_imports()
    from basicsr.data import degradations

    return degradations, filter2d




def filter2d(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """basicsr's ``filter2D`` (one kernel, reflect padding), with replicate padding for images smaller than
    half the kernel, which small training crops reach after Real-ESRGAN's strong first-stage downscaling."""
    k = kernel.shape[-1]
    b, c, h, w = img.shape
    p = k // 2
    x = F.pad(img, (p, p, p, p), mode="reflect" if min(h, w) > p else "replicate")
    return F.conv2d(x.reshape(b * c, 1, h + 2 * p, w + 2 * p), kernel.reshape(1, 1, k, k).to(img)).view(b, c, h, w)


def random_kernel(d: DegradationOptions, stage: int) -> np.ndarray:
    """A blur kernel of the given stage (1 or 2), ``blur_kernel_size`` x ``blur_kernel_size``."""
    deg, _ = _basicsr()
    size = d.blur_kernel_size
    ksize = random.choice([2 * v + 1 for v in range(3, size // 2 + 1)])
    sinc_p, klist, kprob, sigma, bg, bp = (
        (d.sinc_prob, d.kernel_list, d.kernel_prob, d.blur_sigma, d.betag_range, d.betap_range) if stage == 1 else
        (d.sinc_prob2, d.kernel_list2, d.kernel_prob2, d.blur_sigma2, d.betag_range2, d.betap_range2))
    if np.random.uniform() < sinc_p:
        omega = np.random.uniform(np.pi / 3, np.pi) if ksize < 13 else np.random.uniform(np.pi / 5, np.pi)
        kernel = deg.circular_lowpass_kernel(omega, ksize, pad_to=False)
    else:
        kernel = deg.random_mixed_kernels(klist, kprob, ksize, sigma, sigma, [-math.pi, math.pi], bg, bp,
                                          noise_range=None)
    pad = (size - ksize) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad)))


def final_sinc_kernel(d: DegradationOptions) -> np.ndarray | None:
    deg, _ = _basicsr()
    if np.random.uniform() >= d.final_sinc_prob:
        return None
    ksize = random.choice([2 * v + 1 for v in range(3, d.blur_kernel_size // 2 + 1)])
    return deg.circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), ksize, pad_to=d.blur_kernel_size)


def jpeg(img: torch.Tensor, quality: float) -> torch.Tensor:
    """A real JPEG round trip (OpenCV) of a 1x3xHxW RGB tensor in [0, 1]."""
    import cv2

    arr = (img[0].clamp(0, 1).permute(1, 2, 0).numpy()[..., ::-1] * 255.0).round().astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, int(round(quality))])
    out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1)[None]


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    return F.interpolate(x, size=size, mode=mode) if mode == "area" else \
        F.interpolate(x, size=size, mode=mode, align_corners=False)


def _stage(x: torch.Tensor, d: DegradationOptions, stage: int, ori: tuple[int, int], scale: int) -> torch.Tensor:
    deg, filter2D = _basicsr()
    resize_prob, resize_range, gprob, nrange, prange, grayp = (
        (d.resize_prob, d.resize_range, d.gaussian_noise_prob, d.noise_range, d.poisson_scale_range,
         d.gray_noise_prob) if stage == 1 else
        (d.resize_prob2, d.resize_range2, d.gaussian_noise_prob2, d.noise_range2, d.poisson_scale_range2,
         d.gray_noise_prob2))
    if d.use_blur and (stage == 1 or np.random.uniform() < d.second_blur_prob):
        k = torch.from_numpy(random_kernel(d, stage)).float()[None]
        x = filter2D(x, k)
    if d.use_resize:
        kind = random.choices(["up", "down", "keep"], resize_prob)[0]
        s = (np.random.uniform(1, resize_range[1]) if kind == "up" else
             np.random.uniform(resize_range[0], 1) if kind == "down" else 1.0)
        mode = random.choice(["area", "bilinear", "bicubic"])
        if stage == 1:
            size = (max(1, int(x.shape[2] * s)), max(1, int(x.shape[3] * s)))
        else:  # relative to the final LQ size, as in Real-ESRGAN
            size = (max(1, int(ori[0] / scale * s)), max(1, int(ori[1] / scale * s)))
        x = _resize(x, size, mode)
    if d.use_noise:
        if np.random.uniform() < gprob:
            x = deg.random_add_gaussian_noise_pt(x, sigma_range=nrange, clip=True, rounds=False, gray_prob=grayp)
        else:
            x = deg.random_add_poisson_noise_pt(x, scale_range=prange, gray_prob=grayp, clip=True, rounds=False)
    if d.use_jpeg:
        x = jpeg(x, np.random.uniform(*(d.jpeg_range if stage == 1 else d.jpeg_range2)))
    return x


def degrade(gt: torch.Tensor, d: DegradationOptions, scale: int = 1) -> torch.Tensor:
    """Real-ESRGAN's two-stage degradation of a 1x3xHxW tensor in [0, 1] -> 1x3x(H/scale)x(W/scale).

    Draws from the global ``random``/NumPy/torch generators (wrap in :func:`seeded`)."""
    _, filter2D = _basicsr()
    h, w = gt.shape[2:]
    x = _stage(gt, d, 1, (h, w), scale)
    if d.second_order:
        x = _stage(x, d, 2, (h, w), scale)
    target = (h // scale, w // scale)
    sinc = final_sinc_kernel(d) if d.use_blur else None

    def resize_and_sinc(y):
        y = _resize(y, target, random.choice(["area", "bilinear", "bicubic"])) if y.shape[2:] != target else y
        return filter2D(y, torch.from_numpy(sinc).float()[None]) if sinc is not None else y

    if np.random.uniform() < 0.5:
        x = resize_and_sinc(x)
        if d.use_jpeg:
            x = jpeg(x, np.random.uniform(*d.jpeg_range2))
    else:
        if d.use_jpeg:
            x = jpeg(x, np.random.uniform(*d.jpeg_range2))
        x = resize_and_sinc(x)
    return torch.clamp((x * 255.0).round(), 0, 255) / 255.0


class SyntheticDegradationDataset(torch.utils.data.Dataset):
    @dataclass
    class Options:
        name: str = "synthetic"
        type: str = "SyntheticDegradation"
        dataroot_gt: Optional[str] = None  # a folder of HQ images (recursive)
        dataroot: Optional[str] = None  # or a GGT-style paired tree: its HQ side is used
        split: Optional[str] = None  # with dataroot: keep only this split
        categories: Optional[List[str]] = None
        scale: int = at_least(1, 1)
        gt_size: int = at_least(256, 0)  # training crop (HQ side), taken before degrading; 0 = whole images
        use_hflip: bool = True
        use_rot: bool = True
        batch_size_per_gpu: int = at_least(8, 1)
        num_worker_per_gpu: int = at_least(4, 0)
        pin_memory: bool = False
        prompt: str = ""
        val_seed: int = 0  # validation LQs are seeded by (val_seed, index): the same on every run
        degradation: DegradationOptions = field(default_factory=DegradationOptions)

        def check(self, src: str, key: str) -> None:
            root = self.dataroot or self.dataroot_gt
            if not root:
                raise OptionsError(f"{src}: {key} needs 'dataroot_gt' (HQ folder) or 'dataroot' (paired tree)")
            if not Path(root).is_dir():
                raise OptionsError(f"{src}: {key}.{'dataroot' if self.dataroot else 'dataroot_gt'}: "
                                   f"folder not found: {root}. {missing_data_hint(root)}")
            try:
                self.degradation.check(f"{key}.degradation")
            except ValueError as e:
                raise OptionsError(f"{src}: {e}") from None
            if self.gt_size % self.scale:
                raise OptionsError(f"{src}: {key}.gt_size {self.gt_size} is not a multiple of scale {self.scale}")

    def __init__(self, opts: "SyntheticDegradationDataset.Options"):
        self.opts = opts
        items: list[tuple[str, Path, str]] = []  # (key, path, category)
        if opts.dataroot:
            report = find_pairs(opts.dataroot)
            for p in report.pairs:
                if opts.split and p.split != opts.split:
                    continue
                items.append((p.key, p.gt, p.category))
        else:
            root = Path(opts.dataroot_gt)
            for f in list_images(root):
                rel = f.relative_to(root)
                cat = next((c for c in map(normalize_category, rel.parts[:-1]) if c), "unknown")
                items.append((rel.with_suffix("").as_posix(), f, cat))
        if opts.categories:
            items = [it for it in items if it[2] in set(opts.categories)]
        if not items:
            raise OptionsError(f"dataset '{opts.name}': no HQ images found in {opts.dataroot or opts.dataroot_gt}")
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item) -> dict:
        index, aug_seed = item if isinstance(item, tuple) else (item, None)
        o = self.opts
        key, path, category = self.items[index]
        hq = read_image(path)
        train = aug_seed is not None
        seed = aug_seed if train else int(np.random.SeedSequence([o.val_seed, index]).generate_state(1)[0])
        rng = np.random.default_rng(seed)
        if train and o.gt_size:
            h, w = hq.shape[:2]
            if h < o.gt_size or w < o.gt_size:  # reflect-pad small images, as Real-ESRGAN does
                ph, pw = max(0, o.gt_size - h), max(0, o.gt_size - w)
                hq = np.pad(hq, ((0, ph), (0, pw), (0, 0)), mode="reflect")
                h, w = hq.shape[:2]
            top, left = int(rng.integers(0, h - o.gt_size + 1)), int(rng.integers(0, w - o.gt_size + 1))
            hq = hq[top : top + o.gt_size, left : left + o.gt_size]
        else:  # whole image, cut to a multiple of the scale
            h, w = hq.shape[:2]
            hq = hq[: h - h % o.scale, : w - w % o.scale]
        if train:
            hq, _ = paired_flip_rot(hq, hq, o.use_hflip, o.use_rot, rng)
        gt = to_tensor(hq)
        with seeded(seed):
            lq = degrade(gt[None], o.degradation, o.scale)[0]
        return {"lq": lq.contiguous(), "gt": gt, "key": key, "category": category, "prompt": o.prompt}

    def train_loader(self, seed: int, rank: int, world_size: int, start_iter: int) -> Iterator[dict]:
        return resumable_train_loader(self, seed, rank, world_size, start_iter)
