"""Image-quality metrics for evaluation: pinned, named, directional.

Every metric is named by its **exact pyiqa variant** (``psnr``, ``ssim``, ``lpips``, ``dists``,
``musiq``, ``maniqa-pipal``, ``clipiqa``, ``topiq_nr``, ``niqe``, ... any name of
``pyiqa.list_models()``), and every result records the variant: implementation, options, direction,
pyiqa version. A metric key in an option file may rename a variant::

    metrics:
      psnr: {}                                   # pyiqa psnr, Y of YCbCr (the GGT-100K convention)
      ssim: {}
      psnr_rgb: {type: psnr, test_y_channel: false}
      ssim_basicsr: {type: ssim, convention: basicsr}
      lpips: {}
      musiq: {}

PSNR and SSIM are computed here in torch (float64, batched, on the device) because pyiqa's own
SSIM runs a float64 11x11 convolution that is very slow on CPU. Two conventions, recorded:

* ``convention: pyiqa`` (default; what ``pyiqa.create_metric('psnr'|'ssim', test_y_channel=True,
  color_space='ycbcr')`` returns): PSNR on Y/255 with ``mse + 1e-8``; SSIM on Y **rounded to
  integers** (MATLAB's uint8 ``rgb2ycbcr``), with the contrast-structure map clipped at 0.
* ``convention: basicsr`` (``basicsr.metrics.calculate_psnr/ssim(test_y_channel=True)``, what the
  trainer's validation reports): unrounded Y, no eps, no clipping.

They differ by up to ~1.5e-4 dB (PSNR) and ~1.5e-3 (SSIM) on real photographs; each convention matches
its reference within 4e-6 (tests/test_eval_metrics.py). All other metrics are pyiqa's, created once per process inside
:func:`ggt_ir.eval.weights.offline_weights` (no network). pyiqa is imported only when such a metric
is created.
"""
from __future__ import annotations

import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ggt_ir.utils.fs import atomic_write, sha256_file
from ggt_ir.utils.seeding import seeded
from ggt_ir.eval.weights import MissingWeightsError, missing_files, offline_weights, resolve_weights_dir


@dataclass(frozen=True)
class MetricSpec:
    name: str  # exact pyiqa name
    mode: str  # FR | NR
    lower_better: bool
    defaults: dict = field(default_factory=dict)  # the options that define the variant
    builtin: bool = False  # computed in ggt_ir (psnr, ssim)
    batched: bool = False  # a batch of same-size images gives the same per-image scores as one at a time
    channels_last: bool = False  # CNN metrics that run faster in channels_last on CPU
    random: bool = False  # takes random crops: seeded per image
    note: str = ""


_Y = {"test_y_channel": True, "color_space": "ycbcr", "crop_border": 0, "convention": "pyiqa"}
SPECS: dict[str, MetricSpec] = {s.name: s for s in [
    MetricSpec("psnr", "FR", False, dict(_Y), builtin=True, batched=True),
    MetricSpec("ssim", "FR", False, dict(_Y), builtin=True, batched=True),
    # pyiqa metrics: the recorded options are pyiqa's own defaults for the name, plus the user's
    MetricSpec("lpips", "FR", True, batched=True, channels_last=True),
    MetricSpec("lpips-vgg", "FR", True, batched=True, channels_last=True),
    MetricSpec("dists", "FR", True, batched=True, channels_last=True),
    MetricSpec("musiq", "NR", False),
    MetricSpec("maniqa", "NR", False, random=True, note="not the same metric as maniqa-pipal"),
    MetricSpec("maniqa-pipal", "NR", False, random=True, note="not the same metric as maniqa"),
    MetricSpec("clipiqa", "NR", False),
    MetricSpec("clipiqa+", "NR", False),
    MetricSpec("topiq_nr", "NR", False),
    MetricSpec("topiq_fr", "FR", False),
    MetricSpec("niqe", "NR", True),
    MetricSpec("brisque", "NR", True),
]}


def get_spec(name: str) -> MetricSpec:
    """The spec of a metric: our table, else pyiqa's own default table (imports pyiqa)."""
    if name in SPECS:
        return SPECS[name]
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    if name not in DEFAULT_CONFIGS:
        import difflib

        close = difflib.get_close_matches(name, list(DEFAULT_CONFIGS) + list(SPECS), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"unknown metric {name!r}.{hint} Names are pyiqa's (`python -c \"import pyiqa; "
                       f"print(pyiqa.list_models())\"`).")
    cfg = DEFAULT_CONFIGS[name]
    if name in ("fid", "fid_dinov2", "sfid", "inception_score"):
        raise KeyError(f"metric {name!r} scores a whole folder, not images; it is not supported per image")
    return MetricSpec(name, cfg.get("metric_mode", "NR"), bool(cfg.get("lower_better", False)), {}, random=True)


# --------------------------------------------------------------------------- PSNR / SSIM (float64, batched)
def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> (B, 1, H, W) Y of ITU-R BT.601 YCbCr on the 0-255 scale [16, 235]."""
    return (x[:, 0:1] * 65.481 + x[:, 1:2] * 128.553 + x[:, 2:3] * 24.966) + 16.0


def _gauss1d(device, dtype) -> torch.Tensor:
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    return (g / g.sum()).to(device=device, dtype=dtype)


def _filter_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 11x11 Gaussian 'valid' filtering as 2 x 11 shifted multiply-adds (exact in float64,
    and much faster on CPU than a float64 conv2d)."""
    taps = [float(v) for v in g]
    k = len(taps)
    w = x.shape[-1] - k + 1
    out = x[..., 0:w] * taps[0]
    for i in range(1, k):
        out.add_(x[..., i:i + w], alpha=taps[i])
    h = out.shape[-2] - k + 1
    res = out[..., 0:h, :] * taps[0]
    for i in range(1, k):
        res.add_(out[..., i:i + h, :], alpha=taps[i])
    return res


def _crop(x: torch.Tensor, border: int) -> torch.Tensor:
    return x[..., border:-border, border:-border] if border else x


def _planes(pred, ref, opts, cache: dict | None, rounded: bool):
    """Both images as float64 planes on the 0-255 scale (Y or RGB), cached per batch."""
    key = ("planes", opts["test_y_channel"], opts["crop_border"], rounded)
    if cache is not None and key in cache:
        return cache[key]
    a, b = _crop(pred, opts["crop_border"]).to(torch.float64), _crop(ref, opts["crop_border"]).to(torch.float64)
    if opts["test_y_channel"] and a.shape[1] == 3:
        a, b = rgb_to_y(a), rgb_to_y(b)
    else:
        a, b = a * 255.0, b * 255.0
    if rounded:
        a, b = a.round(), b.round()
    if cache is not None:
        cache[key] = (a, b)
    return a, b


def psnr(pred, ref, opts: dict, cache: dict | None = None) -> torch.Tensor:
    a, b = _planes(pred, ref, opts, cache, rounded=False)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    if opts["convention"] == "pyiqa":  # pyiqa: 10 log10(1 / (mse_01 + 1e-8)), data_range 1
        return 10.0 * torch.log10(1.0 / (mse / 255.0**2 + 1e-8))
    return torch.where(mse == 0, torch.full_like(mse, float("inf")), 10.0 * torch.log10(255.0**2 / mse))


def ssim(pred, ref, opts: dict, cache: dict | None = None) -> torch.Tensor:
    pyiqa_conv = opts["convention"] == "pyiqa"
    a, b = _planes(pred, ref, opts, cache, rounded=pyiqa_conv)
    g = _gauss1d(a.device, a.dtype)
    c = a.shape[1]
    stats = _filter_valid(torch.cat([a, b, a * a, b * b, a * b], 1), g)
    mu_a, mu_b, s_aa, s_bb, s_ab = stats.split(c, 1)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_ab = mu_a * mu_b
    cs = (2 * (s_ab - mu_ab) + c2) / ((s_aa - mu_a**2) + (s_bb - mu_b**2) + c2)
    if pyiqa_conv:
        cs = cs.clamp_min(0)
    smap = ((2 * mu_ab + c1) / (mu_a**2 + mu_b**2 + c1)) * cs
    return smap.flatten(2).mean(2).mean(1)


BUILTIN: dict[str, Callable] = {"psnr": psnr, "ssim": ssim}


# --------------------------------------------------------------------------- metric objects


def image_seed(base: int, key: str, metric: str) -> int:
    """A per-image seed: the same image gets the same random crops whatever the rank or batch."""
    return (base * 1_000_003 + zlib.crc32(f"{metric}\0{key}".encode())) % 2**31


class Metric:
    """One metric, created once per process and reused. ``__call__(pred, ref, keys)`` -> (B,) float64."""

    def __init__(self, key: str, spec: MetricSpec, options: dict, device: torch.device, weights_dir: Path,
                 seed: int = 0):
        self.key, self.spec, self.device, self.seed = key, spec, torch.device(device), seed
        unknown = set(options) - set(spec.defaults) if spec.builtin else set()
        if unknown:
            raise KeyError(f"metric {key!r} ({spec.name}): unknown option(s) {sorted(unknown)}; "
                           f"valid: {sorted(spec.defaults)}")
        self.options = {**spec.defaults, **options}
        if spec.builtin and self.options["convention"] not in ("pyiqa", "basicsr"):
            raise ValueError(f"metric {key!r}: convention must be 'pyiqa' or 'basicsr', got {self.options['convention']!r}")
        if spec.builtin and self.options.get("color_space", "ycbcr") != "ycbcr":
            raise ValueError(f"metric {key!r}: only color_space 'ycbcr' is implemented for the built-in {spec.name}")
        self.extra: dict[str, Any] = {}
        # pixels per network call: on CPU, 1024^2 activations of a VGG are memory-bound, so a few
        # images per call are as fast as many and far lighter; a GPU takes whole batches
        self.max_pixels = 2 * 1024 * 1024 if self.device.type == "cpu" else 64 * 1024 * 1024
        self._net = None
        if not spec.builtin:
            self._net = self._create_pyiqa(weights_dir)

    # -- creation
    def _create_pyiqa(self, weights_dir: Path):
        missing = missing_files(self.spec.name, weights_dir)
        if self.spec.name == "niqe" and missing:  # basicsr ships NIQE's pristine parameters
            self.options.setdefault("pretrained_model_path", _niqe_params_from_basicsr())
            self.extra["params"] = "basicsr/metrics/niqe_pris_params.npz (converted; pyiqa's file not found)"
            missing = []
        if missing:
            name, url, where = missing[0]
            err = MissingWeightsError(self.key if self.key == self.spec.name else f"{self.key} ({self.spec.name})",
                                      name, url, where, weights_dir)
            if len(missing) > 1:
                err.args = (err.args[0] + "\n  also missing: " + "; ".join(f"{n} -> {w}" for n, _, w in missing[1:]),)
            raise err
        import pyiqa

        from pyiqa.default_model_configs import DEFAULT_CONFIGS

        with offline_weights(self.key, weights_dir):
            m = pyiqa.create_metric(self.spec.name, device=self.device, **self.options)
        m.eval()
        if self.spec.channels_last:
            m.net.to(memory_format=torch.channels_last)
        self.extra["pyiqa_version"] = getattr(pyiqa, "__version__", "?")
        self.options = {**DEFAULT_CONFIGS[self.spec.name]["metric_opts"], **self.options}
        return m

    # -- record
    def variant(self) -> dict:
        impl = (f"ggt_ir (torch float64, {self.options['convention']} convention)" if self.spec.builtin
                else f"pyiqa.create_metric({self.spec.name!r})")
        opts = {k: v for k, v in self.options.items() if k != "pretrained_model_path"}
        return {"type": self.spec.name, "mode": self.spec.mode, "lower_better": self.spec.lower_better,
                "implementation": impl, "options": opts, "seeded_per_image": not self.spec.batched,
                **({"note": self.spec.note} if self.spec.note else {}), **self.extra}

    # -- scoring
    @torch.inference_mode()
    def __call__(self, pred: torch.Tensor, ref: torch.Tensor | None, keys: list[str],
                 cache: dict | None = None) -> torch.Tensor:
        if self.spec.mode == "FR" and ref is None:
            raise ValueError(f"metric {self.key!r} is full-reference and needs GT images")
        pred = pred.to(self.device)
        ref = ref.to(self.device) if ref is not None else None
        if self.spec.builtin:
            return BUILTIN[self.spec.name](pred, ref, self.options, cache).to(torch.float64).cpu()
        if self.spec.batched:  # deterministic and batch-independent: whole chunks of the batch
            n = max(1, self.max_pixels // (pred.shape[-1] * pred.shape[-2]))
            return torch.cat([self._run(pred[i:i + n], ref[i:i + n] if ref is not None else None)
                              for i in range(0, pred.shape[0], n)]).cpu()
        out = []
        for i, k in enumerate(keys):  # one at a time, each with its own seed
            with seeded(image_seed(self.seed, k, self.key), self.device):
                out.append(self._run(pred[i:i + 1], ref[i:i + 1] if ref is not None else None))
        return torch.cat(out).cpu()

    def _run(self, pred, ref):
        if self.spec.channels_last:
            pred = pred.contiguous(memory_format=torch.channels_last)
            ref = ref.contiguous(memory_format=torch.channels_last) if ref is not None else None
        out = self._net(pred, ref) if self.spec.mode == "FR" else self._net(pred)
        return out.reshape(pred.shape[0], -1)[:, 0].to(torch.float64)


def _niqe_params_from_basicsr() -> str:
    """basicsr's bundled NIQE pristine parameters in pyiqa's .mat format, written once (atomically) to a
    file named after basicsr's parameters, in the temp folder, and reused by later processes."""
    import importlib.util

    import scipy.io

    spec = importlib.util.find_spec("basicsr")
    if spec is None or spec.origin is None:
        wd = resolve_weights_dir()
        raise MissingWeightsError("niqe", "niqe_modelparameters.mat",
                                  "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/niqe_modelparameters.mat",
                                  wd / "pyiqa" / "niqe_modelparameters.mat", wd)
    src = Path(spec.origin).parent / "metrics" / "niqe_pris_params.npz"
    dst = Path(tempfile.gettempdir()) / f"ggt_ir_niqe_basicsr_{sha256_file(src)[:12]}.mat"
    if not dst.is_file():
        z = np.load(src)
        atomic_write(dst, lambda tmp: scipy.io.savemat(str(tmp), {"mu_prisparam": z["mu_pris_param"],
                                                                 "cov_prisparam": z["cov_pris_param"]}))
    return str(dst)


# --------------------------------------------------------------------------- the suite
def parse_metric_options(raw: Any) -> dict[str, dict]:
    """``[psnr, ssim]`` or ``{psnr: {}, ssim_b: {type: ssim, convention: basicsr}}`` -> {key: options}."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = [s.strip() for s in raw.split(",") if s.strip()]
    if isinstance(raw, (list, tuple)):
        return {str(k): {} for k in raw}
    if isinstance(raw, dict):
        return {str(k): dict(v or {}) for k, v in raw.items()}
    raise ValueError(f"metrics: expected a list of names or a mapping, got {raw!r}")


class MetricSuite:
    """All metrics of an evaluation, created once per process.

    A metric whose weights are missing is skipped and reported (``skipped``), unless ``strict``.
    """

    def __init__(self, metrics: dict[str, dict] | list[str] | str, device: str | torch.device = "cpu",
                 weights_dir: str | os.PathLike | None = None, strict: bool = False, seed: int = 0,
                 log: Callable[[str], None] = print):
        self.weights_dir = resolve_weights_dir(weights_dir)
        self.metrics: dict[str, Metric] = {}
        self.skipped: dict[str, str] = {}
        for key, opts in parse_metric_options(metrics).items():
            opts = dict(opts)
            spec = get_spec(str(opts.pop("type", key)))
            try:
                self.metrics[key] = Metric(key, spec, opts, device, self.weights_dir, seed)
            except MissingWeightsError as e:
                if strict:
                    raise
                self.skipped[key] = str(e)
                log(f"[eval] skipping metric {key!r}: missing weights (eval.strict=false).\n{e}")

    def fr(self) -> list[str]:
        return [k for k, m in self.metrics.items() if m.spec.mode == "FR"]

    def nr(self) -> list[str]:
        return [k for k, m in self.metrics.items() if m.spec.mode == "NR"]

    def variants(self) -> dict:
        return {k: m.variant() for k, m in self.metrics.items()}

    def score(self, pred: torch.Tensor, ref: torch.Tensor | None, keys: list[str]) -> dict[str, list[float]]:
        """Scores of a batch of same-size images; FR metrics only when ``ref`` is given."""
        cache: dict = {}
        out = {}
        for k, m in self.metrics.items():
            if m.spec.mode == "FR" and ref is None:
                continue
            try:
                out[k] = [float(v) for v in m(pred, ref, keys, cache)]
            except Exception as e:  # noqa: BLE001 - name the metric and the images
                size = "x".join(map(str, pred.shape[-2:][::-1]))
                raise RuntimeError(f"metric {k!r} failed on {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} "
                                   f"({size} px): {type(e).__name__}: {e}") from e
        return out


def describe(key: str, variant: dict) -> str:
    arrow = "↓" if variant["lower_better"] else "↑"
    return f"{key}{arrow}"


__all__ = ["SPECS", "MetricSpec", "Metric", "MetricSuite", "get_spec", "parse_metric_options", "psnr", "ssim",
           "rgb_to_y", "image_seed", "describe"]
