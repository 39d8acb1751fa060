"""Real-ESRGAN's second-order degradation of a batch of HQ images, on the training device, inside the step.

Wang et al., "Real-ESRGAN: Training Real-World Blind Super-Resolution with Pure Synthetic Data" (ICCVW 2021)
make their LQ images on the GPU in ``RealESRGANModel.feed_data``, from kernels drawn per sample in
``RealESRGANDataset``. :class:`DeviceDegradation` does the same in one call on whatever device the batch is on,
so the data loaders only read and crop HQ images (the CPU ``SyntheticDegradation`` dataset, which degrades each
sample in the workers with a real OpenCV JPEG, stays for CPU-bound setups):

1. (optional) USM-sharpen the HQ image and degrade the sharpened one (Real-ESRGAN's ``gt_usm``);
2. blur with a per-sample kernel (iso/aniso/generalized/plateau Gaussians or a 2-D sinc, 7..21 px) ->
   resize (up/down/keep, area/bilinear/bicubic; one factor per batch) -> Gaussian or Poisson noise (colour or
   gray, per-sample strength) -> JPEG (per-sample quality, basicsr's ``DiffJPEG``);
3. the same with the second-stage ranges (blur with probability ``second_blur_prob``);
4. resize to ``HQ size / scale`` + a final sinc filter, and JPEG, in random order; round to 8 bits;
5. (optional) one random crop of ``gt_size`` for the whole batch, the training-pair pool of ``queue_size``
   (Real-ESRGAN: 180) and the USM-sharpened target ``gt_usm`` of the final GT.

Where the options sit in a recipe: a ``degradation:`` block of the step (``train.degradation`` in a GAN step's
options, read by the step; this module does not read option files), typed by :class:`DeviceDegradationOptions`.
Its keys are those of ``SyntheticDegradation``'s ``degradation`` block (Real-ESRGAN's names and
``train_realesrgan_x4plus.yml`` defaults) plus ``scale``, ``usm_sharp_gt``, ``gt_size``, ``queue_size`` and
``synthetic_prob``: the probability that a sample of a paired batch (GGT-100K: real LQ/HQ pairs) is replaced by
a synthetic pair made from its HQ image (1.0 = all synthetic; batches without ``lq`` must use 1.0).

Determinism: all random choices come from one ``torch.Generator`` on the CPU (seeded per call with ``seed=``,
e.g. from (training seed, iteration, rank), so a resumed run is exact without saved state). Per-pixel noise
comes from a counter-based generator keyed by that generator: a 32-bit integer hash of each element's index,
computed with exact integer arithmetic, turned into normals (Box-Muller, float64) and into Poisson counts
(inversion against a float64 CDF table; the images are 8-bit levels, so the table is small). The random numbers
are therefore the same on every device; outputs differ between CPU and GPU only by the floating-point
rounding of convolutions, resizing and JPEG (which can flip a value by one 8-bit level).

Differences from Real-ESRGAN that are ours: gray noise is drawn per sample (basicsr's
``generate_gaussian_noise_pt`` draws one gray pattern for the whole batch); convolutions fall back from reflect
to replicate padding on images smaller than half a kernel (basicsr's ``filter2D`` fails there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ggt_ir.data.synthetic import DegradationOptions

RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass
class DeviceDegradationOptions(DegradationOptions):
    """The ``degradation:`` block of a step; Real-ESRGAN's x4plus settings are the defaults."""

    scale: int = 1  # LQ = HQ / scale (GGT-100K pairs are scale 1; Real-ESRGAN x4plus: 4)
    usm_sharp_gt: bool = True  # degrade the USM-sharpened HQ (Real-ESRGAN); gt_usm is returned either way
    gt_size: int = 0  # one random crop of this HQ size after degrading (Real-ESRGAN: 256 of 400); 0 = none
    queue_size: int = 0  # training-pair pool that mixes batches (Real-ESRGAN: 180); 0 = off
    synthetic_prob: float = 1.0  # per sample of a paired batch: the probability of a synthetic pair

    def check(self, key: str = "degradation") -> None:
        super().check(key)
        if not 0.0 <= self.synthetic_prob <= 1.0:
            raise ValueError(f"{key}.synthetic_prob must be in [0, 1], got {self.synthetic_prob}")
        if self.scale < 1 or (self.gt_size and self.gt_size % self.scale):
            raise ValueError(f"{key}: gt_size {self.gt_size} must be a multiple of scale {self.scale} (>= 1)")


# ------------------------------------------------------------------------------------------ counter-based noise
_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32): split so no intermediate exceeds 2^49 (exact on every device)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """Chris Wellons' "lowbias32" integer hash on values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_uniform(n: int, key: tuple[int, int], device) -> torch.Tensor:
    """n float64 uniforms in (0, 1), a pure function of (key, element index): the same on every device."""
    idx = torch.arange(n, device=device, dtype=torch.int64)
    h = _hash32(_hash32(idx ^ key[0]) ^ key[1])
    return (h.double() + 0.5) / 2.0**32


def counter_normal(shape, key: tuple[int, int], device) -> torch.Tensor:
    """Standard normals (float32) by Box-Muller on counter uniforms (both outputs of each pair are used)."""
    n = math.prod(shape)
    m = (n + 1) // 2
    u = counter_uniform(2 * m, key, device)
    r, theta = torch.sqrt(-2.0 * torch.log(u[:m])), (2.0 * math.pi) * u[m:]
    z = torch.cat([r * torch.cos(theta), r * torch.sin(theta)])[:n]
    return z.float().reshape(shape)


def _poisson_cdf_table(lams: torch.Tensor) -> torch.Tensor:
    """(len(lams), K) float64 CDFs of Poisson(lam) for counts 0..K-1, K past every tail mass above 1e-16."""
    top = float(lams.max()) if lams.numel() else 0.0
    k_max = int(top + 12 * math.sqrt(top) + 30)
    k = torch.arange(k_max, dtype=torch.float64)
    lam = lams.double()[:, None]
    logp = k * torch.log(lam.clamp_min(1e-300)) - lam - torch.lgamma(k + 1)
    pmf = torch.where(lam > 0, logp.exp(), (k == 0).double().expand_as(logp))
    return pmf.cumsum(1).clamp_max(1.0)


def poisson_levels(levels: torch.Tensor, vals: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """Poisson counts of rate ``levels / 255 * vals`` for integer levels in [0, 255] (B, ...) and a per-sample
    ``vals`` (B,) of powers of two: inversion sampling against a CDF table, one row per (vals, level)."""
    device = levels.device
    b = levels.shape[0]
    distinct = sorted(set(vals.tolist()))
    rows = torch.tensor([[v * lvl / 255.0 for lvl in range(256)] for v in distinct], dtype=torch.float64).flatten()
    cdf = _poisson_cdf_table(rows)  # (len(distinct) * 256, K)
    n_rows, k = cdf.shape
    # rows laid end to end, row r shifted by r: one sorted sequence, one searchsorted for every element
    flat = (cdf + torch.arange(n_rows, dtype=torch.float64)[:, None]).flatten().to(device)
    vals_index = torch.tensor([distinct.index(v) for v in vals.tolist()], device=device).view(b, *[1] * (levels.dim() - 1))
    row = vals_index * 256 + levels.long()
    u = counter_uniform(levels.numel(), key, device).view(levels.shape)
    pos = torch.searchsorted(flat, (row.double() + u).contiguous(), right=True)
    return (pos - row * k).clamp_(0, k - 1).float()


def _keys(g: torch.Generator) -> tuple[int, int]:
    a, b = torch.randint(0, 2**32, (2,), generator=g, dtype=torch.int64).tolist()
    return int(a), int(b)


def gaussian_noise(img: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """basicsr's ``generate_gaussian_noise_pt``: per-sample ``sigma`` (8-bit units) and gray flag (B,)."""
    b, c, h, w = img.shape
    s = sigma.to(img).view(b, 1, 1, 1) / 255.0
    noise = counter_normal((b, c, h, w), key, img.device).to(img) * s
    g = gray.to(img).view(b, 1, 1, 1)
    if bool(gray.any()):
        noise_gray = counter_normal((b, 1, h, w), (key[1], key[0]), img.device).to(img) * s
        noise = noise * (1 - g) + noise_gray * g
    return noise


def poisson_noise(img: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """basicsr's ``generate_poisson_noise_pt``: the image is rounded to 8 bits, ``vals`` is the next power of two
    of each sample's number of distinct levels, noise = Poisson(img * vals) / vals - img, times ``scale``."""
    b = img.shape[0]

    def one(x: torch.Tensor, k: tuple[int, int]) -> torch.Tensor:
        levels = torch.clamp((x * 255.0).round(), 0, 255).long()
        hist = torch.zeros(b, 256, device=x.device).scatter_(1, levels.flatten(1), 1.0)
        distinct = hist.sum(1).cpu()
        vals = torch.pow(2.0, torch.ceil(torch.log2(distinct)))
        counts = poisson_levels(levels, vals, k)
        v = vals.to(x).view(b, 1, 1, 1)
        return counts.to(x) / v - levels.to(x) / 255.0

    noise = one(img, key)
    if bool(gray.any()):
        w = torch.tensor([0.2989, 0.587, 0.114], device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
        noise_gray = one((img * w).sum(1, keepdim=True), (key[1], key[0])).expand_as(img)
        g = gray.to(img).view(b, 1, 1, 1)
        noise = noise * (1 - g) + noise_gray * g
    return noise * scale.to(img).view(b, 1, 1, 1)


# ------------------------------------------------------------------------------------------ kernels (float64, CPU)
def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ax = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")  # xx varies along columns, as numpy's meshgrid
    return xx, yy


def _quadratic_form(size: int, sig_x: float, sig_y: float, theta: float, isotropic: bool) -> torch.Tensor:
    """g^T Sigma^-1 g over the kernel grid, Sigma = R diag(sig_x^2, sig_y^2) R^T (basicsr's sigma_matrix2)."""
    if isotropic:
        sig_y, theta = sig_x, 0.0
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    sigma = rot @ torch.diag(torch.tensor([sig_x**2, sig_y**2], dtype=torch.float64)) @ rot.T
    inv = torch.linalg.inv(sigma)
    xx, yy = _grid(size)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def bivariate_gaussian(size, sig_x, sig_y, theta, isotropic=False) -> torch.Tensor:
    k = torch.exp(-0.5 * _quadratic_form(size, sig_x, sig_y, theta, isotropic))
    return k / k.sum()


def bivariate_generalized_gaussian(size, sig_x, sig_y, theta, beta, isotropic=False) -> torch.Tensor:
    k = torch.exp(-0.5 * torch.pow(_quadratic_form(size, sig_x, sig_y, theta, isotropic), beta))
    return k / k.sum()


def bivariate_plateau(size, sig_x, sig_y, theta, beta, isotropic=False) -> torch.Tensor:
    k = 1.0 / (torch.pow(_quadratic_form(size, sig_x, sig_y, theta, isotropic), beta) + 1)
    return k / k.sum()


def circular_lowpass_kernel(cutoff: float, size: int, pad_to: int = 0) -> torch.Tensor:
    """The 2-D sinc (ideal low-pass, cut-off ``cutoff`` rad/px) of basicsr, via the Bessel function J1."""
    i = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    r = torch.sqrt(i[:, None] ** 2 + i[None, :] ** 2)
    k = cutoff * torch.special.bessel_j1(cutoff * r) / (2 * math.pi * r)
    k[(size - 1) // 2, (size - 1) // 2] = cutoff**2 / (4 * math.pi)
    k = k / k.sum()
    if pad_to > size:
        p = (pad_to - size) // 2
        k = F.pad(k, (p, p, p, p))
    return k


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _choice(g: torch.Generator, items, probs=None):
    if probs is None:
        return items[int(torch.randint(len(items), (), generator=g))]
    return items[int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=g))]


def random_mixed_kernel(g, kernel_list, kernel_prob, size, sigma_range, betag_range, betap_range) -> torch.Tensor:
    """basicsr's ``random_mixed_kernels`` (no kernel noise), the draws from ``g``."""
    kind = _choice(g, kernel_list, kernel_prob)
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sig_x = _uniform(g, *sigma_range)
    sig_y, theta = (sig_x, 0.0) if iso else (_uniform(g, *sigma_range), _uniform(g, -math.pi, math.pi))
    if kind.startswith("generalized") or kind.startswith("plateau"):
        lo, hi = betag_range if kind.startswith("generalized") else betap_range
        beta = _uniform(g, lo, 1.0) if _uniform(g) < 0.5 else _uniform(g, 1.0, hi)
        fn = bivariate_generalized_gaussian if kind.startswith("generalized") else bivariate_plateau
        return fn(size, sig_x, sig_y, theta, beta, isotropic=iso)
    return bivariate_gaussian(size, sig_x, sig_y, theta, isotropic=iso)


def sample_kernel(g: torch.Generator, d: DeviceDegradationOptions, stage: int) -> torch.Tensor:
    """One blur kernel of stage 1 or 2, as ``RealESRGANDataset`` draws it, zero-padded to blur_kernel_size."""
    full = d.blur_kernel_size
    size = _choice(g, [2 * v + 1 for v in range(3, full // 2 + 1)])
    sinc_p, klist, kprob, sigma, bg, bp = (
        (d.sinc_prob, d.kernel_list, d.kernel_prob, d.blur_sigma, d.betag_range, d.betap_range) if stage == 1 else
        (d.sinc_prob2, d.kernel_list2, d.kernel_prob2, d.blur_sigma2, d.betag_range2, d.betap_range2))
    if _uniform(g) < sinc_p:
        omega = _uniform(g, math.pi / 3, math.pi) if size < 13 else _uniform(g, math.pi / 5, math.pi)
        kernel = circular_lowpass_kernel(omega, size)
    else:
        kernel = random_mixed_kernel(g, klist, kprob, size, sigma, bg, bp)
    p = (full - size) // 2
    return F.pad(kernel, (p, p, p, p))


def sample_final_sinc(g: torch.Generator, d: DeviceDegradationOptions) -> torch.Tensor:
    """The final sinc filter with probability ``final_sinc_prob``, else a pulse (identity)."""
    full = d.blur_kernel_size
    if _uniform(g) < d.final_sinc_prob:
        size = _choice(g, [2 * v + 1 for v in range(3, full // 2 + 1)])
        return circular_lowpass_kernel(_uniform(g, math.pi / 3, math.pi), size, pad_to=full)
    pulse = torch.zeros(full, full, dtype=torch.float64)
    pulse[full // 2, full // 2] = 1.0
    return pulse


# ------------------------------------------------------------------------------------------ image operations
def filter2d(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """basicsr's ``filter2D``: kernel (k, k) for the batch or (B, k, k) per sample; reflect padding, replicate on
    images smaller than half the kernel."""
    b, c, h, w = img.shape
    k = kernel.shape[-1]
    p = k // 2
    x = F.pad(img, (p, p, p, p), mode="reflect" if min(h, w) > p else "replicate")
    kernel = kernel.to(img)
    if kernel.dim() == 2 or kernel.shape[0] == 1:
        out = F.conv2d(x.reshape(b * c, 1, h + 2 * p, w + 2 * p), kernel.reshape(1, 1, k, k))
    else:
        weight = kernel.reshape(b, 1, k, k).repeat_interleave(c, 0)
        out = F.conv2d(x.reshape(1, b * c, h + 2 * p, w + 2 * p), weight, groups=b * c)
    return out.reshape(b, c, h, w)


def cv2_gaussian_kernel(size: int, sigma: float = 0.0) -> torch.Tensor:
    """cv2.getGaussianKernel (1-D, float64); sigma <= 0 means OpenCV's rule from the size."""
    if sigma <= 0:
        sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def separable_filter(img: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``filter2d`` with the kernel ``outer(g, g)``, as two 1-D passes (same padding rule)."""
    b, c, h, w = img.shape
    k = g.numel()
    p = k // 2
    x = F.pad(img, (p, p, p, p), mode="reflect" if min(h, w) > p else "replicate").reshape(b * c, 1, h + 2 * p, w + 2 * p)
    g = g.to(img)
    x = F.conv2d(F.conv2d(x, g.view(1, 1, 1, k)), g.view(1, 1, k, 1))
    return x.reshape(b, c, h, w)


def usm_sharp(img: torch.Tensor, weight: float = 0.5, radius: int = 50, threshold: int = 10) -> torch.Tensor:
    """basicsr's ``USMSharp`` (Real-ESRGAN's GT sharpening): img + weight * (img - blur) where the residual
    exceeds ``threshold`` 8-bit levels, blended by a soft (blurred) mask. The 51x51 Gaussian is separable: two
    1-D passes instead of basicsr's 2-D convolution (same values up to float rounding)."""
    radius += 1 - radius % 2
    g = cv2_gaussian_kernel(radius)
    blur = separable_filter(img, g)
    residual = img - blur
    mask = (residual.abs() * 255 > threshold).to(img)
    soft = separable_filter(mask, g)
    sharp = torch.clip(img + weight * residual, 0, 1)
    return soft * sharp + (1 - soft) * img


def _resize(x: torch.Tensor, mode: str, size=None, scale_factor=None) -> torch.Tensor:
    if mode == "area":
        return F.interpolate(x, size=size, scale_factor=scale_factor, mode="area")
    return F.interpolate(x, size=size, scale_factor=scale_factor, mode=mode, align_corners=False)


# ------------------------------------------------------------------------------------------ the pipeline
class DeviceDegradation:
    """``DeviceDegradation(opts, device)(batch, seed=...)`` -> ``{"lq", "gt", "gt_usm", "synthetic", ...}``.

    ``batch["gt"]`` (B, 3, H, W) in [0, 1] on the device; ``batch["lq"]`` (B, 3, H/scale, W/scale) when the
    batch has real pairs. ``synthetic`` (B,) bool marks the samples whose LQ was made here. Other keys pass
    through unless the training-pair pool is on (it exchanges samples between batches; their keys would lie).
    :meth:`degrade` is the bare degradation of an HQ batch (no USM, crop, pool or mixing).
    """

    def __init__(self, opts: DeviceDegradationOptions | None = None, device: str | torch.device = "cpu",
                 seed: int = 0):
        self.opts = opts or DeviceDegradationOptions()
        self.opts.check()
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)
        self._jpeger = None
        self.queue_lq = self.queue_gt = None
        self.queue_ptr = 0

    # ----------------------------------------------------------------- state (exact resume)
    def state_dict(self) -> dict:
        state = {"generator": self.generator.get_state(), "queue_ptr": self.queue_ptr}
        if self.queue_lq is not None:
            state.update(queue_lq=self.queue_lq.cpu(), queue_gt=self.queue_gt.cpu())
        return state

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.queue_ptr = int(state["queue_ptr"])
        if "queue_lq" in state:
            self.queue_lq, self.queue_gt = state["queue_lq"].to(self.device), state["queue_gt"].to(self.device)

    # ----------------------------------------------------------------- pieces
    def jpeg(self, x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """basicsr's DiffJPEG (non-differentiable rounding) with a per-sample quality (B,)."""
        if self._jpeger is None:
            from ggt_ir._compat import patch_basicsr_imports

            patch_basicsr_imports()
            from basicsr.utils.diffjpeg import DiffJPEG

            self._jpeger = DiffJPEG(differentiable=False)
        self._jpeger.to(x.device)
        return self._jpeger(torch.clamp(x, 0, 1), quality=quality.to(x).clone())

    def _noise(self, x: torch.Tensor, g: torch.Generator, stage: int) -> torch.Tensor:
        d = self.opts
        gprob, nrange, prange, grayp = (
            (d.gaussian_noise_prob, d.noise_range, d.poisson_scale_range, d.gray_noise_prob) if stage == 1 else
            (d.gaussian_noise_prob2, d.noise_range2, d.poisson_scale_range2, d.gray_noise_prob2))
        b = x.shape[0]
        gaussian = _uniform(g) < gprob  # one noise type per batch, as feed_data
        lo, hi = nrange if gaussian else prange
        strength = torch.rand(b, generator=g, dtype=torch.float64) * (hi - lo) + lo
        gray = torch.rand(b, generator=g, dtype=torch.float64) < grayp
        key = _keys(g)
        noise = (gaussian_noise if gaussian else poisson_noise)(x, strength, gray, key)
        return torch.clamp(x + noise, 0, 1)

    def _stage(self, x, g, stage: int, kernels, ori: tuple[int, int]) -> torch.Tensor:
        d = self.opts
        if d.use_blur and (stage == 1 or _uniform(g) < d.second_blur_prob):
            x = filter2d(x, kernels)
        if d.use_resize:
            resize_prob, resize_range = (d.resize_prob, d.resize_range) if stage == 1 else (d.resize_prob2,
                                                                                            d.resize_range2)
            kind = _choice(g, ["up", "down", "keep"], resize_prob)
            s = (_uniform(g, 1, resize_range[1]) if kind == "up" else
                 _uniform(g, resize_range[0], 1) if kind == "down" else 1.0)
            mode = _choice(g, RESIZE_MODES)
            if stage == 1:
                x = _resize(x, mode, scale_factor=s)
            else:  # relative to the final LQ size, as feed_data
                x = _resize(x, mode, size=(max(1, int(ori[0] / d.scale * s)), max(1, int(ori[1] / d.scale * s))))
        if d.use_noise:
            x = self._noise(x, g, stage)
        if d.use_jpeg:
            lo, hi = d.jpeg_range if stage == 1 else d.jpeg_range2
            x = self.jpeg(x, torch.rand(x.shape[0], generator=g, dtype=torch.float64) * (hi - lo) + lo)
        return x

    @torch.no_grad()
    def degrade(self, hq: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Real-ESRGAN's second-order degradation of (B, 3, H, W) in [0, 1] -> (B, 3, H/scale, W/scale),
        8-bit levels, on ``hq``'s device."""
        d, g = self.opts, generator or self.generator
        b, _, h, w = hq.shape
        # per-sample kernels first, in the order RealESRGANDataset draws them
        k1, k2, sinc = [], [], []
        for _ in range(b):
            k1.append(sample_kernel(g, d, 1))
            k2.append(sample_kernel(g, d, 2))
            sinc.append(sample_final_sinc(g, d))
        k1, k2, sinc = (torch.stack(k).float().to(hq.device) for k in (k1, k2, sinc))
        x = self._stage(hq.float(), g, 1, k1, (h, w))
        if d.second_order:
            x = self._stage(x, g, 2, k2, (h, w))
        target = (h // d.scale, w // d.scale)

        def resize_and_sinc(y):
            mode = _choice(g, RESIZE_MODES)
            if d.use_resize or y.shape[-2:] != target:
                y = _resize(y, mode, size=target)
            return filter2d(y, sinc) if d.use_blur else y

        jpeg_q = lambda: torch.rand(b, generator=g, dtype=torch.float64) * (d.jpeg_range2[1] - d.jpeg_range2[0]) \
            + d.jpeg_range2[0]  # noqa: E731
        if _uniform(g) < 0.5:
            x = resize_and_sinc(x)
            if d.use_jpeg:
                x = self.jpeg(x, jpeg_q())
        else:
            if d.use_jpeg:
                x = self.jpeg(x, jpeg_q())
            x = resize_and_sinc(x)
        return torch.clamp((x * 255.0).round(), 0, 255) / 255.0

    def _pool(self, lq: torch.Tensor, gt: torch.Tensor, g: torch.Generator):
        """Real-ESRGAN's ``_dequeue_and_enqueue``: fill the pool; once full, swap the batch with random pool items."""
        b = lq.shape[0]
        size = self.opts.queue_size
        if size % b:
            raise ValueError(f"degradation.queue_size {size} must be a multiple of the batch size {b}")
        if self.queue_lq is None:
            self.queue_lq = lq.new_zeros((size, *lq.shape[1:]))
            self.queue_gt = gt.new_zeros((size, *gt.shape[1:]))
        if self.queue_ptr < size:
            self.queue_lq[self.queue_ptr:self.queue_ptr + b] = lq
            self.queue_gt[self.queue_ptr:self.queue_ptr + b] = gt
            self.queue_ptr += b
            return lq, gt
        idx = torch.randperm(size, generator=g).to(lq.device)
        self.queue_lq, self.queue_gt = self.queue_lq[idx], self.queue_gt[idx]
        out_lq, out_gt = self.queue_lq[:b].clone(), self.queue_gt[:b].clone()
        self.queue_lq[:b], self.queue_gt[:b] = lq, gt
        return out_lq, out_gt

    @torch.no_grad()
    def __call__(self, batch: dict, seed: Optional[int] = None) -> dict:
        d = self.opts
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else self.generator
        gt = batch["gt"].to(self.device).float()
        b, _, h, w = gt.shape
        if h % d.scale or w % d.scale:
            raise ValueError(f"degradation: HQ size {h}x{w} is not a multiple of scale {d.scale}")
        real_lq = batch.get("lq")
        if real_lq is None and d.synthetic_prob < 1:
            raise ValueError("degradation.synthetic_prob < 1 needs batches with real LQ images ('lq'); "
                             "an HQ-only dataset needs synthetic_prob: 1")
        synthetic = torch.rand(b, generator=g) < d.synthetic_prob if real_lq is not None else torch.ones(b, dtype=torch.bool)
        if real_lq is not None:
            lq = real_lq.to(self.device).float().clone()
            if lq.shape[-2:] != (h // d.scale, w // d.scale):
                raise ValueError(f"degradation: real LQ {tuple(lq.shape[-2:])} does not match HQ {h}x{w} / scale "
                                 f"{d.scale}")
        else:
            lq = gt.new_zeros((b, 3, h // d.scale, w // d.scale))
        idx = torch.nonzero(synthetic).flatten().to(self.device)
        gt_usm = usm_sharp(gt) if (d.usm_sharp_gt or not (d.gt_size or d.queue_size)) else None
        if idx.numel():
            lq[idx] = self.degrade(gt_usm[idx] if d.usm_sharp_gt else gt[idx], g)
        if d.gt_size:
            if d.gt_size > h or d.gt_size > w:
                raise ValueError(f"degradation.gt_size {d.gt_size} is larger than the HQ batch ({h}x{w})")
            top = int(torch.randint(0, (h - d.gt_size) // d.scale + 1, (), generator=g)) * d.scale
            left = int(torch.randint(0, (w - d.gt_size) // d.scale + 1, (), generator=g)) * d.scale
            gt = gt[..., top:top + d.gt_size, left:left + d.gt_size]
            gt_usm = None  # sharpened again from the crop, as feed_data
            s = d.scale
            lq = lq[..., top // s:(top + d.gt_size) // s, left // s:(left + d.gt_size) // s]
        out = {} if d.queue_size else {k: v for k, v in batch.items() if k not in ("lq", "gt")}
        if d.queue_size:
            lq, gt = self._pool(lq.contiguous(), gt.contiguous(), g)
            gt_usm = None
        gt_usm = usm_sharp(gt) if gt_usm is None else gt_usm
        out.update(lq=lq.contiguous(), gt=gt.contiguous(), gt_usm=gt_usm, synthetic=synthetic)
        return out
