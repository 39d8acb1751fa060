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

PSNR and SSIM are ggt-ir's own (:mod:`ggt_ir.eval.psnr_ssim`, the code the trainer's validation
uses too), in torch, float64, batched, on the device, because pyiqa's own SSIM runs a float64 11x11
convolution that is very slow on CPU. Two conventions, recorded:

* ``convention: pyiqa`` (the default here; what ``pyiqa.create_metric('psnr'|'ssim', test_y_channel=True,
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

from ggt_ir.eval.psnr_ssim import CONVENTIONS, METRIC_FUNCTIONS
from ggt_ir.eval.weights import MissingWeightsError, missing_files, offline_weights, resolve_weights_dir
from ggt_ir.utils.fs import atomic_write, sha256_file
from ggt_ir.utils.seeding import seeded


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
        if spec.builtin and self.options["convention"] not in CONVENTIONS:
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
            o = self.options
            return METRIC_FUNCTIONS[self.spec.name](pred, ref, o["crop_border"], o["test_y_channel"],
                                                    convention=o["convention"], cache=cache).to(torch.float64).cpu()
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
@dataclass(frozen=True)
class MetricChoice:
    """One entry of ``metrics:``, parsed: the result key, the metric name (``type``, default the key) and
    the options given for it (the variant's defaults fill in the rest when the metric is created)."""

    key: str
    type: str
    options: dict = field(default_factory=dict)

    def as_option(self) -> dict:
        """The entry as an option file writes it: ``{type: ..., **options}``."""
        return {"type": self.type, **self.options}


def parse_metric_options(raw: Any) -> dict[str, MetricChoice]:
    """``[psnr, ssim]``, ``"psnr,ssim"`` or ``{psnr: {}, ssim_b: {type: ssim, convention: basicsr}}`` ->
    {key: MetricChoice}. Entries that are already parsed pass through unchanged."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        raw = [s.strip() for s in raw.split(",") if s.strip()]
    if isinstance(raw, (list, tuple)):
        raw = {str(k): {} for k in raw}
    if not isinstance(raw, dict):
        raise ValueError(f"metrics: expected a list of names or a mapping, got {raw!r}")
    out = {}
    for k, v in raw.items():
        if isinstance(v, MetricChoice):
            out[str(k)] = v
            continue
        if v is not None and not isinstance(v, dict):
            raise ValueError(f"metrics.{k}: expected a mapping of options (e.g. {{type: psnr}}), got {v!r}")
        opts = dict(v or {})
        out[str(k)] = MetricChoice(str(k), str(opts.pop("type", k)), opts)
    return out


class MetricSuite:
    """All metrics of an evaluation, created once per process.

    A metric whose weights are missing is skipped and reported (``skipped``), unless ``strict``.
    """

    def __init__(self, metrics: dict[str, MetricChoice] | dict[str, dict] | list[str] | str,
                 device: str | torch.device = "cpu",
                 weights_dir: str | os.PathLike | None = None, strict: bool = False, seed: int = 0,
                 log: Callable[[str], None] = print):
        self.weights_dir = resolve_weights_dir(weights_dir)
        self.metrics: dict[str, Metric] = {}
        self.skipped: dict[str, str] = {}
        for key, choice in parse_metric_options(metrics).items():
            spec = get_spec(choice.type)
            try:
                self.metrics[key] = Metric(key, spec, dict(choice.options), device, self.weights_dir, seed)
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


__all__ = ["SPECS", "MetricSpec", "Metric", "MetricChoice", "MetricSuite", "get_spec", "parse_metric_options",
           "image_seed", "describe"]
