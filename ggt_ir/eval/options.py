"""The options of ``ggt-ir eval`` (options/eval/*.yml), typed once when they load.

What is evaluated (exactly one of):

* ``model.run``: a trained run folder (``experiments/<name>``): its ``options.yml`` gives
  ``network_g``, its newest ``models/net_g_<iter>.safetensors`` the weights (or ``model.checkpoint``);
* ``model.network_g`` + ``model.checkpoint``: any zoo model with weights;
* ``restored``: folder(s) of images already restored by any other method (external baselines),
  matched to the eval sets by key; ``restored: input`` scores the LQ images themselves.

:func:`load_eval_options` reads the file through the one options preamble (:func:`ggt_ir.config.read_options`)
and keeps what it checked: ``datasets`` become the typed ``Options`` of their dataset types and
``metrics`` a ``{key: MetricChoice}`` mapping, so nothing downstream parses them again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ggt_ir.config import OptionsError, at_least, read_options, to_typed


@dataclass
class ModelOptions:
    run: Optional[str] = None  # experiments/<name>: options.yml + newest models/net_g_<iter>.*
    options: Optional[str] = None  # a run's resolved option file (instead of run/options.yml)
    checkpoint: Optional[str] = None  # a weights file (.safetensors / .pth); default with run: newest
    network_g: Dict[str, Any] = field(default_factory=dict)  # a zoo model: {type: ..., **kwargs}
    param_key: str = "auto"  # auto | params | params_ema | ...
    strict_load: bool = True
    tile: int = 0  # pixel networks: tile size in LQ pixels; 0 = whole images
    tile_overlap: int = 32
    self_ensemble: bool = False  # pixel networks: x8 flips/rotations averaged
    prompt: Optional[str] = None  # generative restorers: one prompt for every image (default: each sample's)
    inference: Dict[str, Any] = field(default_factory=dict)  # generative restorers: network options for inference
    #   (OneStepSD: vae_tile, latent_tile, color_fix; EditorLoRA: num_inference_steps, guidance_scale, inference_seed)
    seed: Optional[int] = None  # stochastic restorers: base of the per-image seeds (default: the model's own,
    #   e.g. EditorLoRA's inference_seed); image k gets image_seed(seed, k, 'restore'), recorded in the summary


@dataclass
class EvalSettings:
    weights_dir: Optional[str] = None  # local pyiqa weights; default $GGT_IR_WEIGHTS or $TORCH_HOME/hub
    strict: bool = False  # a metric with missing weights is an error instead of skipped
    seed: int = 0  # per-image seeds for random-crop metrics derive from it
    batch_size: int = 4
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda
    num_grid: int = 4  # images of each category in the report grids (the first ones, in set order)
    grid_size: int = 256  # panel height in the grid
    max_size_diff: int = 16  # output vs GT sizes may differ by this many pixels (cropped top-left)
    pbar: bool = True
    num_samples: int = at_least(1, 1)  # stochastic restorers: N samples per image (seeds 'restore', 'restore:1',
    #   ...); the summary gives each metric's mean and std over the samples
    cache: bool = True  # keep the GT-side work (decoded GT, LPIPS/DISTS/FID reference features) on disk
    cache_dir: Optional[str] = None  # default $GGT_IR_CACHE, else <results_root>/.cache
    cache_max_gb: float = at_least(32.0, 0.0)  # past this size, features are computed but not stored


@dataclass
class EvalOptions:
    name: str = "eval"
    imports: List[str] = field(default_factory=list)  # user modules that register archs/datasets (plugins)
    results_root: str = "results"
    label: Dict[str, str] = field(default_factory=dict)  # e.g. {model: SwinIR, data: GGT-100K} for `ggt-ir table`
    model: Optional[ModelOptions] = None
    restored: Any = None  # a folder, {set: folder}, or "input"
    datasets: Dict[str, Any] = field(default_factory=dict)  # once loaded: {set: the dataset type's typed Options}
    metrics: Any = None  # [psnr, ssim, ...] or {key: {type: ..., **options}}; once loaded: {key: MetricChoice}
    eval: EvalSettings = field(default_factory=EvalSettings)
    # {set: count or {category: count}}: each eval set's `expected_images` key, checked when the file loads
    # (ggt_ir/assets/datasets.py: missing or unpaired files are an error naming them)
    expected_images: Dict[str, Any] = field(default_factory=dict)
    source_file: str = ""

    @property
    def out_dir(self) -> Path:
        return Path(self.results_root) / self.name


def load_eval_options(path: str | os.PathLike, overrides: list[str] | None = None, *,
                      check_paths: bool = True) -> EvalOptions:
    """Read, include, override and type an eval option file; check what is evaluated, the eval sets
    (and their paths, with ``check_paths``) and the metric list, before any work."""
    from ggt_ir.data import DATASETS
    from ggt_ir.eval.metrics import parse_metric_options

    raw, src = read_options(path, overrides)
    opt: EvalOptions = to_typed(EvalOptions, raw, src)
    opt.source_file = str(path)
    if opt.model is not None and opt.restored is not None:
        raise OptionsError(f"{src}: give either 'model' (run a model) or 'restored' (score existing images), not both")
    if opt.model is None and opt.restored is None:
        raise OptionsError(f"{src}: nothing to evaluate: set 'model' (model.run / model.network_g + "
                           "model.checkpoint) or 'restored' (a folder of restored images, or 'input')")
    if opt.model is not None:
        m = opt.model
        if not (m.run or m.options or m.network_g):
            raise OptionsError(f"{src}: 'model' needs 'run' (a trained run folder), 'options' or 'network_g'")
        if check_paths and m.run and not Path(m.run).is_dir():
            raise OptionsError(f"{src}: model.run: folder not found: {m.run}")
        for k in ("options", "checkpoint"):
            if check_paths and getattr(m, k) and not Path(getattr(m, k)).is_file():
                raise OptionsError(f"{src}: model.{k}: file not found: {getattr(m, k)}")
    if not opt.datasets:
        raise OptionsError(f"{src}: 'datasets' is empty: name at least one eval set")
    typed_sets = {}
    for name, block in opt.datasets.items():  # any map-style type of ggt_ir.data.DATASETS
        kp = f"datasets.{name}"
        if isinstance(block, dict) and "expected_images" in block:
            from ggt_ir.assets.datasets import parse_expected

            block = dict(block)
            opt.expected_images[name] = parse_expected(block.pop("expected_images"), src, kp)
        typed_sets[name] = DATASETS.check(block, src, kp, defaults={"name": name})
        if check_paths:
            typed_sets[name].check(src, kp)
            if opt.expected_images.get(name) is not None:
                from ggt_ir.assets.datasets import check_expected_images  # builds the set once to count it

                check_expected_images(typed_sets[name], opt.expected_images[name], src, kp)
    opt.datasets = typed_sets
    try:
        opt.metrics = parse_metric_options(opt.metrics)
    except ValueError as e:
        raise OptionsError(f"{src}: {e}") from None
    if not opt.metrics:
        raise OptionsError(f"{src}: 'metrics' is empty (e.g. metrics: [psnr, ssim, lpips, musiq])")
    if opt.eval.device not in ("auto", "cpu", "cuda"):
        raise OptionsError(f"{src}: eval.device is {opt.eval.device!r}; expected auto, cpu or cuda")
    return opt


def use_cpu(device: str) -> bool:
    """Whether ``eval.device`` asks for the CPU: accelerate's PartialState only forms a multi-process CPU
    group when told cpu=True."""
    import torch
    from accelerate.utils import parse_flag_from_env

    return device == "cpu" or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
