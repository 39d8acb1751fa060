"""Image-quality metrics for evaluation: pinned, named, directional, with a recorded protocol.

Metric names are **pyiqa's** (``lpips``, ``dists``, ``musiq``, ``maniqa-pipal``, ``clipiqa``, ``topiq_nr``,
``niqe``, ``qalign``, ``afine_nr``, ``fid``, ... any name of ``pyiqa.list_models()``), and every result
records the exact call: the options that define the variant (pyiqa's defaults for the name written out,
plus the user's), the sha256 of every weight file the metric loaded, and the package versions. A metric
key in an option file may rename a variant::

    metrics:
      psnr: {}                                   # Y of YCbCr: pyiqa psnr(test_y_channel=True, color_space='ycbcr')
      ssim: {}                                   # Y of YCbCr: pyiqa ssim(test_y_channel=True, color_space='ycbcr')
      psnr_rgb: {type: psnr, test_y_channel: false}   # = pyiqa's default `psnr` (RGB)
      ssim_basicsr: {type: ssim, convention: basicsr}
      lpips: {}
      fid: {}                                    # a folder metric: outputs vs the set's GT, once per set

``psnr`` and ``ssim`` here are **not** pyiqa's defaults for those names: pyiqa's ``psnr`` is RGB
(``test_y_channel=False``) and its ``ssim`` takes the Y of **YIQ** (``color_space='yiq'``). Ours default
to the Y of YCbCr, the GGT-100K / OSEDiff convention, and are computed by ggt-ir
(:mod:`ggt_ir.eval.psnr_ssim`, the code the trainer's validation uses too), in torch, float64, batched,
because pyiqa's own SSIM runs a float64 11x11 convolution that is very slow on CPU. Two conventions:

* ``convention: pyiqa`` (the default here): equals ``pyiqa.create_metric('psnr'|'ssim', test_y_channel=True,
  color_space='ycbcr')``: PSNR on Y/255 with ``mse + 1e-8``; SSIM on Y **rounded to integers**, with the
  contrast-structure map clipped at 0;
* ``convention: basicsr`` (``basicsr.metrics.calculate_psnr/ssim(test_y_channel=True)``, what the trainer's
  validation reports): unrounded Y, no eps, no clipping.

docs/evaluation.md gives the measured gaps between the conventions. All other metrics are pyiqa's,
created once per process inside :func:`ggt_ir.eval.weights.offline_weights` (no network); pyiqa is
imported only when such a metric is created. ``fid`` is scored once per eval set (and per category) from
per-image Inception features, against the set's GT images; the GT side of ``lpips``, ``dists`` and ``fid``
comes from :class:`ggt_ir.eval.reference_cache.ReferenceCache` when one is given, so N methods scored on
one set compute it once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ggt_ir.eval.psnr_ssim import CONVENTIONS, METRIC_FUNCTIONS
from ggt_ir.eval.reference_cache import HashMemo, ReferenceCache
from ggt_ir.eval.weights import MissingWeightsError, missing_files, offline_weights, resolve_weights_dir
from ggt_ir.utils.fs import atomic_write, sha256_file
from ggt_ir.utils.seeding import seeded


@dataclass(frozen=True)
class MetricSpec:
    name: str  # exact pyiqa name
    mode: str  # FR | NR (pyiqa's metric_mode)
    lower_better: bool
    defaults: dict = field(default_factory=dict)  # the options that define the variant
    builtin: bool = False  # computed in ggt_ir (psnr, ssim)
    batched: bool = False  # a batch of same-size images gives the same per-image scores as one at a time
    channels_last: bool = False  # CNN metrics that run faster in channels_last on CPU
    random: bool = False  # takes random crops: seeded per image
    scope: str = "image"  # image: a score per image | set: one score per set (fid), against the set's GT
    ref_features: bool = False  # the GT side is a separate network pass whose features can be cached
    note: str = ""


_Y = {"test_y_channel": True, "color_space": "ycbcr", "crop_border": 0, "convention": "pyiqa"}
SPECS: dict[str, MetricSpec] = {s.name: s for s in [
    MetricSpec("psnr", "FR", False, dict(_Y), builtin=True, batched=True),
    MetricSpec("ssim", "FR", False, dict(_Y), builtin=True, batched=True),
    # pyiqa metrics: the recorded options are pyiqa's own defaults for the name, plus the user's
    MetricSpec("lpips", "FR", True, batched=True, channels_last=True, ref_features=True),
    MetricSpec("lpips-vgg", "FR", True, batched=True, channels_last=True, ref_features=True),
    MetricSpec("dists", "FR", True, batched=True, channels_last=True, ref_features=True),
    MetricSpec("fid", "NR", True, {"mode": "clean", "dims": 2048}, batched=True, scope="set", ref_features=True,
               note="one score per set (and per category): Inception pool features of the outputs vs the set's GT"),
    MetricSpec("musiq", "NR", False),
    MetricSpec("maniqa", "NR", False, random=True, note="not the same metric as maniqa-pipal"),
    MetricSpec("maniqa-pipal", "NR", False, random=True, note="not the same metric as maniqa"),
    MetricSpec("clipiqa", "NR", False),
    MetricSpec("clipiqa+", "NR", False),
    MetricSpec("topiq_nr", "NR", False),
    MetricSpec("topiq_fr", "FR", False),
    MetricSpec("niqe", "NR", True),
    MetricSpec("brisque", "NR", True),
    MetricSpec("qalign", "NR", False, note="mPLUG-Owl2 7B (transformers); score 1-5"),
    MetricSpec("afine_nr", "NR", True, note="pyiqa marks it lower-better (range -2..2); HarnessIR leaves the "
                                            "direction open"),
]}
FOLDER_METRICS = ("fid", "fid_dinov2", "sfid", "inception_score")

# the metrics a GGT-100K table is scored with (docs/evaluation.md, "The metric protocol")
PROTOCOL_FR = ("psnr", "ssim", "lpips", "dists", "fid")
PROTOCOL_NR = ("niqe", "musiq", "maniqa-pipal", "clipiqa", "topiq_nr", "qalign", "afine_nr")
# versions that define scores (hashed into the protocol); the environment is recorded beside it
PROTOCOL_PACKAGES = ("pyiqa", "ggt-ir", "timm", "torchvision")
ENVIRONMENT_PACKAGES = ("torch", "numpy", "scipy", "openai-clip", "transformers")


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
    if name in FOLDER_METRICS:
        raise KeyError(f"metric {name!r} scores a whole folder; of the folder metrics ggt-ir computes 'fid' "
                       "(against the GT of each eval set)")
    return MetricSpec(name, cfg.get("metric_mode", "NR"), bool(cfg.get("lower_better", False)), {}, random=True)


def image_seed(base: int, key: str, metric: str) -> int:
    """A per-image seed: the same image gets the same random crops whatever the rank or batch."""
    return (base * 1_000_003 + zlib.crc32(f"{metric}\0{key}".encode())) % 2**31


def _sha_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _call_text(fn: str, name: str | None, options: dict) -> str:
    args = ([repr(name)] if name else []) + [f"{k}={v!r}" for k, v in options.items()]
    return f"{fn}({', '.join(args)})"


def pyiqa_equivalent(spec: MetricSpec, options: dict) -> str:
    """The call that gives the same scores, with every argument that defines the variant written out."""
    if spec.builtin:
        o = options
        if o["convention"] == "basicsr":
            fn = {"psnr": "calculate_psnr", "ssim": "calculate_ssim"}[spec.name]
            return _call_text(f"basicsr.metrics.{fn}", None, {"crop_border": o["crop_border"],
                                                               "test_y_channel": o["test_y_channel"]})
        args = {"test_y_channel": o["test_y_channel"]}
        if o["test_y_channel"]:
            args["color_space"] = o["color_space"]
        if spec.name == "ssim":
            args["downsample"] = False
        if o["crop_border"]:
            args["crop_border"] = o["crop_border"]
        return _call_text("pyiqa.create_metric", spec.name, args)
    opts = {k: v for k, v in options.items() if k not in ("type", "pretrained_model_path")}
    if spec.scope == "set":
        return f"pyiqa.create_metric({spec.name!r})(outputs_dir, gt_dir, mode={opts.get('mode', 'clean')!r})"
    return _call_text("pyiqa.create_metric", spec.name, opts)


@contextlib.contextmanager
def _recording_loads(found: list[str]):
    """Record every file that torch / safetensors / scipy load inside the block (a metric's weights)."""
    import torch.jit

    targets: list[tuple[Any, str]] = [(torch, "load"), (torch.jit, "load")]
    try:
        import safetensors.torch as st

        targets.append((st, "load_file"))
    except ImportError:  # pragma: no cover
        pass
    try:
        import scipy.io

        targets.append((scipy.io, "loadmat"))
    except ImportError:  # pragma: no cover
        pass

    def wrap(fn):
        def load(f, *args, **kwargs):
            name = f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", None)
            if isinstance(name, (str, os.PathLike)) and os.path.isfile(name):
                found.append(os.path.abspath(name))
            return fn(f, *args, **kwargs)
        return load

    saved = [(obj, attr, getattr(obj, attr)) for obj, attr in targets]
    try:
        for obj, attr, fn in saved:
            setattr(obj, attr, wrap(fn))
        yield
    finally:
        for obj, attr, fn in saved:
            setattr(obj, attr, fn)


# --------------------------------------------------------------------------- reference-side features
def _lpips_splits(net) -> bool:
    """pyiqa's LPIPS in its default form (linear heads, spatial average, v0.1): its score is a function of
    the two images' normalised features, so the GT side can be computed once."""
    return (type(net).__name__ == "LPIPS" and net.lpips and not net.spatial and net.semantic_weight_layer < 0
            and str(net.version) == "0.1")


def _lpips_ref(net, ref: torch.Tensor) -> list[torch.Tensor]:
    from pyiqa.archs.lpips_arch import normalize_tensor

    return [normalize_tensor(o) for o in net.net.forward(net.scaling_layer(2 * ref - 1))]


def _lpips_compare(net, pred: torch.Tensor, ref_feats: list[torch.Tensor]) -> torch.Tensor:
    """pyiqa's LPIPS.forward(pred, ref) with the reference features given (same operations, same order)."""
    from pyiqa.archs.lpips_arch import normalize_tensor

    val = 0
    for kk, out in enumerate(net.net.forward(net.scaling_layer(2 * pred - 1))):
        diff = (ref_feats[kk] - normalize_tensor(out)) ** 2
        val = val + net.lins[kk](diff).mean([2, 3], keepdim=True)
    return val.reshape(pred.shape[0], -1)[:, 0]


def _dists_ref(net, ref: torch.Tensor) -> list[torch.Tensor]:
    return list(net.forward_once(ref))


def _dists_compare(net, pred: torch.Tensor, ref_feats: list[torch.Tensor]) -> torch.Tensor:
    """pyiqa's DISTS.forward(pred, ref) with the reference stages given (same operations, same order)."""
    feats0 = net.forward_once(pred)
    c1 = c2 = 1e-6
    w_sum = net.alpha.sum() + net.beta.sum()
    alpha = torch.split(net.alpha / w_sum, net.chns, dim=1)
    beta = torch.split(net.beta / w_sum, net.chns, dim=1)
    dist1 = dist2 = 0
    for k in range(len(net.chns)):
        x, y = feats0[k], ref_feats[k]
        x_mean, y_mean = x.mean([2, 3], keepdim=True), y.mean([2, 3], keepdim=True)
        s1 = (2 * x_mean * y_mean + c1) / (x_mean**2 + y_mean**2 + c1)
        dist1 = dist1 + (alpha[k] * s1).sum(1, keepdim=True)
        x_var = ((x - x_mean) ** 2).mean([2, 3], keepdim=True)
        y_var = ((y - y_mean) ** 2).mean([2, 3], keepdim=True)
        xy_cov = (x * y).mean([2, 3], keepdim=True) - x_mean * y_mean
        s2 = (2 * xy_cov + c2) / (x_var + y_var + c2)
        dist2 = dist2 + (beta[k] * s2).sum(1, keepdim=True)
    return (1 - (dist1 + dist2)).reshape(pred.shape[0], -1)[:, 0]


# --------------------------------------------------------------------------- metric objects
class Metric:
    """One metric, created once per process and reused. ``__call__(pred, ref, keys)`` -> (B,) float64."""

    def __init__(self, key: str, spec: MetricSpec, options: dict, device: torch.device, weights_dir: Path,
                 seed: int = 0, cache: ReferenceCache | None = None, memo: HashMemo | None = None):
        self.key, self.spec, self.device, self.seed = key, spec, torch.device(device), seed
        self.cache = cache
        unknown = set(options) - set(spec.defaults) if spec.builtin else set()
        if unknown:
            raise KeyError(f"metric {key!r} ({spec.name}): unknown option(s) {sorted(unknown)}; "
                           f"valid: {sorted(spec.defaults)}")
        self.options = {**spec.defaults, **options}
        if spec.builtin and self.options["convention"] not in CONVENTIONS:
            raise ValueError(f"metric {key!r}: convention must be 'pyiqa' or 'basicsr', got {self.options['convention']!r}")
        if spec.builtin and self.options.get("color_space", "ycbcr") != "ycbcr":
            raise ValueError(f"metric {key!r}: only color_space 'ycbcr' is implemented for the built-in {spec.name}; "
                             f"pyiqa's own default ssim uses 'yiq'")
        self.extra: dict[str, Any] = {}
        self.weight_files: list[dict] = []
        # pixels per network call: on CPU, 1024^2 activations of a VGG are memory-bound, so a few
        # images per call are as fast as many and far lighter; a GPU takes whole batches
        self.max_pixels = 2 * 1024 * 1024 if self.device.type == "cpu" else 64 * 1024 * 1024
        self._net = None
        self._split: tuple[Callable, Callable] | None = None
        if not spec.builtin:
            loaded: list[str] = []
            with _recording_loads(loaded):
                self._net = self._create_pyiqa(weights_dir)
            memo = memo or HashMemo(None)
            seen = set()
            for f in loaded:
                if f not in seen:
                    seen.add(f)
                    self.weight_files.append({"file": os.path.basename(f), "path": f, "sha256": memo.sha256(f)})
            self._split = self._reference_split()

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

        create_opts = {k: v for k, v in self.options.items() if not (self.spec.scope == "set" and k == "mode")}
        with offline_weights(self.key, weights_dir):
            m = pyiqa.create_metric(self.spec.name, device=self.device, **create_opts)
        m.eval()
        if self.spec.channels_last:
            m.net.to(memory_format=torch.channels_last)
        self.extra["pyiqa_version"] = getattr(pyiqa, "__version__", "?")
        defaults = {k: v for k, v in DEFAULT_CONFIGS[self.spec.name]["metric_opts"].items() if k != "type"}
        self.options = {**defaults, **self.options}
        return m

    def _reference_split(self):
        if not self.spec.ref_features or self.spec.scope == "set":
            return None
        net = self._net.net
        if self.spec.name in ("lpips", "lpips-vgg") and _lpips_splits(net):
            return _lpips_ref, _lpips_compare
        if self.spec.name == "dists" and type(net).__name__ == "DISTS":
            return _dists_ref, _dists_compare
        return None

    # -- record
    def variant(self) -> dict:
        impl = (f"ggt_ir (torch float64, {self.options['convention']} convention)" if self.spec.builtin
                else f"pyiqa.create_metric({self.spec.name!r})")
        opts = {k: v for k, v in self.options.items() if k != "pretrained_model_path"}
        return {"type": self.spec.name, "mode": self.spec.mode, "lower_better": self.spec.lower_better,
                "scope": self.spec.scope, "implementation": impl, "equals": pyiqa_equivalent(self.spec, self.options),
                "options": opts, "seeded_per_image": not self.spec.batched,
                **({"note": self.spec.note} if self.spec.note else {}), **self.extra}

    def protocol(self) -> dict:
        """What defines this metric's scores: name, implementation, arguments, weight files (sha256)."""
        v = self.variant()
        rec = {k: v[k] for k in ("type", "mode", "scope", "lower_better", "implementation", "equals", "options")}
        if "params" in v:
            rec["params"] = v["params"]
        rec["weights"] = [dict(w) for w in self.weight_files]
        return rec

    def features_variant(self) -> str:
        """The cache key of this metric's reference-side features: anything that changes them changes it."""
        return _sha_json({"metric": self.spec.name, "options": self.protocol()["options"],
                          "weights": [w["sha256"] for w in self.weight_files], "pyiqa": self.extra.get("pyiqa_version"),
                          "device": self.device.type, "features": 1})

    # -- scoring
    @torch.inference_mode()
    def __call__(self, pred: torch.Tensor, ref: torch.Tensor | None, keys: list[str],
                 cache: dict | None = None, ref_ids: list[str | None] | None = None) -> torch.Tensor:
        """Scores of one batch; ``ref_ids`` (the GT files' sha256) lets the reference cache serve the GT side."""
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
            ids = ref_ids if ref_ids is not None else [None] * pred.shape[0]
            if self._split is not None and self.cache is not None:
                run = lambda a, b, i: self._run_split(a, b, i)  # noqa: E731
            else:
                run = lambda a, b, i: self._run(a, b)  # noqa: E731
            return torch.cat([run(pred[i:i + n], ref[i:i + n] if ref is not None else None, ids[i:i + n])
                              for i in range(0, pred.shape[0], n)]).cpu()
        out = []
        for i, k in enumerate(keys):  # one at a time, each with its own seed
            with seeded(image_seed(self.seed, k, self.key), self.device):
                out.append(self._run(pred[i:i + 1], ref[i:i + 1] if ref is not None else None))
        return torch.cat(out).cpu()

    def _layout(self, x):
        return x.contiguous(memory_format=torch.channels_last) if self.spec.channels_last and x is not None else x

    def _run(self, pred, ref):
        pred, ref = self._layout(pred), self._layout(ref)
        out = self._net(pred, ref) if self.spec.mode == "FR" else self._net(pred)
        return out.reshape(pred.shape[0], -1)[:, 0].to(torch.float64)

    def _run_split(self, pred, ref, ref_ids):
        """The network on the outputs; the GT side from the cache, computed (and stored) where missing."""
        ref_fn, compare = self._split
        net, variant = self._net.net, self.features_variant()
        feats: list[list[torch.Tensor] | None] = [
            self.cache.get_features(self.spec.name, variant, rid) if rid else None for rid in ref_ids]
        todo = [j for j, f in enumerate(feats) if f is None]
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
            if todo:
                fresh = ref_fn(net, self._layout(ref[todo]))
                for t, j in enumerate(todo):
                    feats[j] = [f[t:t + 1] for f in fresh]
                    if ref_ids[j]:
                        self.cache.put_features(self.spec.name, variant, ref_ids[j], feats[j])
            stacked = [self._layout(torch.cat([f[k].to(self.device) for f in feats])) for k in range(len(feats[0]))]
            return compare(net, self._layout(pred), stacked).to(torch.float64)


class FolderMetric(Metric):
    """``fid``: Inception pool features of every output and every GT image (pyiqa's 'clean' mode: each channel
    resized to 299x299 bicubically by PIL in float); the score of a set (or a category) is the Frechet
    distance between the two feature sets, as ``pyiqa.create_metric('fid')(outputs_dir, gt_dir)`` gives."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.options.get("mode", "clean") != "clean":
            raise ValueError(f"metric {self.key!r}: only fid mode 'clean' (pyiqa's default) is implemented")

    @staticmethod
    def _clean_299(img: torch.Tensor) -> torch.Tensor:
        from PIL import Image

        u8 = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        chans = [np.asarray(Image.fromarray(u8[..., c].astype(np.float32), mode="F")
                            .resize((299, 299), resample=Image.BICUBIC)).clip(0, 255) for c in range(3)]
        return torch.from_numpy(np.stack(chans, 0).astype(np.float32))

    @torch.inference_mode()
    def features(self, imgs: torch.Tensor, ref_ids: list[str | None] | None = None) -> list[np.ndarray]:
        """(B, 2048) float32 pool features, one array per image; with ``ref_ids``, GT features come from the cache."""
        ids = ref_ids if ref_ids is not None else [None] * imgs.shape[0]
        variant = self.features_variant() if self.cache is not None else ""
        out: list[np.ndarray | None] = [None] * imgs.shape[0]
        for j, rid in enumerate(ids):
            if rid and self.cache is not None:
                hit = self.cache.get_features(self.spec.name, variant, rid)
                if hit is not None:
                    out[j] = hit[0].numpy()
        todo = [j for j, f in enumerate(out) if f is None]
        model = self._net.net.model
        for i in range(0, len(todo), 8):
            js = todo[i:i + 8]
            batch = torch.stack([self._clean_299(imgs[j]) for j in js]).to(self.device)
            feat = model((batch - 128) / 128, False, False)[0]
            feat = feat.reshape(feat.shape[0], -1).float().cpu()
            for t, j in enumerate(js):
                out[j] = feat[t].numpy()
                if ids[j] and self.cache is not None:
                    self.cache.put_features(self.spec.name, variant, ids[j], [feat[t]])
        return out  # type: ignore[return-value]

    @staticmethod
    def distance(pred_feats: list[np.ndarray], gt_feats: list[np.ndarray]) -> float | None:
        """The Frechet distance of the two feature sets; None below two images of either.

        ``|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)`` as pyiqa's ``frechet_distance`` defines it, with
        ``tr sqrt(S1 S2)`` computed exactly as the nuclear norm of ``A B^T / sqrt((n1-1)(n2-1))`` (A, B: the
        centred feature matrices): the eigenvalues of S1 S2 are the squared singular values of that n1 x n2
        matrix. scipy's ``sqrtm`` of the 2048 x 2048 product (pyiqa) takes about a minute on a CPU and the
        product is singular whenever a set has fewer than 2049 images; the two agree to < 3e-7 relative
        (tests/test_eval_protocol.py)."""
        if len(pred_feats) < 2 or len(gt_feats) < 2:
            return None
        a, b = np.stack(pred_feats).astype(np.float64), np.stack(gt_feats).astype(np.float64)
        ca, cb = a - a.mean(0), b - b.mean(0)
        na, nb = len(a) - 1, len(b) - 1
        nuclear = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt(na * nb)
        diff = a.mean(0) - b.mean(0)
        return float(diff @ diff + (ca * ca).sum() / na + (cb * cb).sum() / nb - 2 * nuclear)


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


def package_versions(names) -> dict:
    from importlib import metadata

    out = {}
    for dist in names:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


class MetricSuite:
    """All metrics of an evaluation, created once per process.

    A metric whose weights are missing is skipped and reported (``skipped``), unless ``strict``.
    With a ``cache`` (:class:`ggt_ir.eval.reference_cache.ReferenceCache`), the GT side of lpips, dists and
    fid is computed once per GT image and read back afterwards.
    """

    def __init__(self, metrics: dict[str, MetricChoice] | dict[str, dict] | list[str] | str,
                 device: str | torch.device = "cpu",
                 weights_dir: str | os.PathLike | None = None, strict: bool = False, seed: int = 0,
                 log: Callable[[str], None] = print, cache: ReferenceCache | None = None):
        self.weights_dir = resolve_weights_dir(weights_dir)
        self.device = torch.device(device)
        self.cache = cache
        self.memo = cache.memo if cache is not None else HashMemo(None)
        self.metrics: dict[str, Metric] = {}
        self.skipped: dict[str, str] = {}
        for key, choice in parse_metric_options(metrics).items():
            spec = get_spec(choice.type)
            cls = FolderMetric if spec.scope == "set" else Metric
            try:
                self.metrics[key] = cls(key, spec, dict(choice.options), device, self.weights_dir, seed,
                                        cache=cache, memo=self.memo)
            except MissingWeightsError as e:
                if strict:
                    raise
                self.skipped[key] = str(e)
                log(f"[eval] skipping metric {key!r}: missing weights (eval.strict=false).\n{e}")
        self.memo.flush()

    def fr(self) -> list[str]:
        return [k for k, m in self.metrics.items() if m.spec.mode == "FR"]

    def nr(self) -> list[str]:
        return [k for k, m in self.metrics.items() if m.spec.mode == "NR" and m.spec.scope == "image"]

    def folder(self) -> list[str]:
        """Metrics scored once per set against its GT (fid)."""
        return [k for k, m in self.metrics.items() if m.spec.scope == "set"]

    def variants(self) -> dict:
        return {k: m.variant() for k, m in self.metrics.items()}

    def protocol(self) -> dict:
        """The ``protocol`` block of a summary: every metric's exact definition (with its own sha256) and
        the versions of the packages that define scores, hashed together; the environment beside it."""
        versions = package_versions(PROTOCOL_PACKAGES)
        metrics = {}
        for k, m in self.metrics.items():
            rec = m.protocol()
            pinned = {"pyiqa": versions.get("pyiqa"), "timm": versions.get("timm"),
                      "torchvision": versions.get("torchvision")} if not m.spec.builtin else {}
            hashed = {**{x: y for x, y in rec.items() if x != "weights"},
                      "weights": [(w["file"], w["sha256"]) for w in rec["weights"]], "versions": pinned,
                      "ggt-ir": versions.get("ggt-ir")}
            metrics[k] = {**rec, "sha256": _sha_json(hashed)}
        env = {**package_versions(ENVIRONMENT_PACKAGES), "device": self.device.type,
               "python": __import__("platform").python_version()}
        block = {"metrics": metrics, "versions": versions, "weights_dir": str(self.weights_dir)}
        block["sha256"] = _sha_json({"metrics": {k: v["sha256"] for k, v in metrics.items()}, "versions": versions})
        block["environment"] = env
        block["skipped"] = sorted(self.skipped)
        return block

    def score(self, pred: torch.Tensor, ref: torch.Tensor | None, keys: list[str],
              ref_ids: list[str | None] | None = None) -> dict[str, list[float]]:
        """Per-image scores of a batch of same-size images; FR metrics only when ``ref`` is given.
        Folder metrics (fid) are not scored here (see :meth:`folder_features`)."""
        cache: dict = {}
        out = {}
        for k, m in self.metrics.items():
            if m.spec.scope == "set" or (m.spec.mode == "FR" and ref is None):
                continue
            try:
                out[k] = [float(v) for v in m(pred, ref, keys, cache, ref_ids=ref_ids)]
            except Exception as e:  # noqa: BLE001 - name the metric and the images
                size = "x".join(map(str, pred.shape[-2:][::-1]))
                raise RuntimeError(f"metric {k!r} failed on {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''} "
                                   f"({size} px): {type(e).__name__}: {e}") from e
        return out

    def folder_features(self, pred: torch.Tensor, ref: torch.Tensor,
                        ref_ids: list[str | None] | None = None) -> dict[str, tuple[list, list]]:
        """{folder metric: (output features, GT features)} per image of the batch."""
        return {k: (self.metrics[k].features(pred), self.metrics[k].features(ref, ref_ids)) for k in self.folder()}


def protocol_is_current(recorded: dict | None, memo: HashMemo | None = None) -> tuple[bool, str]:
    """Whether a summary's ``protocol`` block still describes what would be computed now: the packages that
    define scores have the recorded versions and every recorded weight file still has its sha256.
    Returns (ok, the first reason it is not)."""
    if not recorded or "sha256" not in recorded:
        return False, "the summary has no protocol block (scored before protocols were recorded)"
    now = package_versions(PROTOCOL_PACKAGES)
    for pkg, v in recorded.get("versions", {}).items():
        if now.get(pkg) != v:
            return False, f"{pkg} is {now.get(pkg)} now, the summary was scored with {v}"
    memo = memo or HashMemo(None)
    for key, m in recorded.get("metrics", {}).items():
        for w in m.get("weights", []):
            p = w.get("path")
            if not p or not os.path.isfile(p):
                return False, f"metric {key!r}: weight file {p} is gone"
            if memo.sha256(p) != w["sha256"]:
                return False, f"metric {key!r}: weight file {p} changed (sha256)"
    return True, ""


def describe(key: str, variant: dict) -> str:
    arrow = "↓" if variant["lower_better"] else "↑"
    return f"{key}{arrow}"


__all__ = ["SPECS", "PROTOCOL_FR", "PROTOCOL_NR", "MetricSpec", "Metric", "FolderMetric", "MetricChoice",
           "MetricSuite", "get_spec", "parse_metric_options", "image_seed", "describe", "pyiqa_equivalent",
           "protocol_is_current"]
