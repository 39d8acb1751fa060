"""The training option schema (BasicSR's vocabulary, typed) and its loader.

``load_options("options/x.yml", overrides=["train.total_iter=2000"])`` returns an :class:`Options`
dataclass, or the subclass the file's ``model_type`` declares (a step may add its own keys, e.g.
``train.vsd_opt`` for ``onestep_sd``). Loading goes through the shared preamble
(:func:`ggt_ir.config.read_options`), then:

1. ``model_type`` picks the step from :data:`ggt_ir.train.steps.STEPS`; the file is typed against that
   step's ``options`` class (unknown key -> error naming the closest valid key; every frequency, size and
   count range-checked);
2. ``datasets.*``, ``network_g`` and the loss blocks are checked by their registries (each entry knows its
   own keys); ``network_g.type`` must suit ``model_type``; dataset folders must exist;
3. the step checks what only it knows (:meth:`ggt_ir.train.step_api.Step.check_options`).

All of it happens before anything is built or any run folder is touched.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ggt_ir.config import OptionsError, Problems, at_least, choice, in_range, notice, read_options, to_typed


@dataclass
class PathOptions:
    pretrain_network_g: Optional[str] = None
    param_key_g: str = "auto"  # auto | params | params_ema | state_dict | none
    strict_load_g: bool = True
    resume_state: Optional[str] = None  # latest | a checkpoint folder
    experiments_root: str = "experiments"


@dataclass
class OptimOptions:
    type: str = choice("AdamW", "Adam", "AdamW", "AdamW8bit")
    lr: float = at_least(2e-4, 0.0)
    weight_decay: float = at_least(0.0, 0.0)
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = at_least(1e-8, 0.0)


@dataclass
class SchedulerOptions:
    type: str = choice("CosineAnnealingLR", "CosineAnnealingLR", "MultiStepLR", "ConstantLR")
    milestones: List[int] = field(default_factory=list)  # MultiStepLR
    gamma: float = at_least(0.5, 0.0)  # MultiStepLR
    eta_min: float = at_least(1e-7, 0.0)  # CosineAnnealingLR: final learning rate


@dataclass
class TrainOptions:
    total_iter: int = at_least(1000, 1)
    warmup_iter: int = at_least(0, 0)
    optim_g: OptimOptions = field(default_factory=OptimOptions)
    scheduler: SchedulerOptions = field(default_factory=SchedulerOptions)
    pixel_opt: Optional[Dict[str, Any]] = None  # {type: <a LOSSES name>, loss_weight, ...}; checked by LOSSES
    losses: List[Dict[str, Any]] = field(default_factory=list)  # composed with pixel_opt
    ema_decay: float = in_range(0.0, 0.0, 0.999999)  # 0 disables the EMA generator
    grad_clip: float = at_least(0.0, 0.0)  # max grad norm; 0 disables
    # None = not set here: the command line, then accelerate's config decide (docs/training.md, "Precedence")
    mixed_precision: Optional[str] = choice(None, None, "no", "fp16", "bf16")
    gradient_accumulation_steps: Optional[int] = at_least(None, 1)
    skip_nonfinite: bool = False  # skip steps with NaN/Inf loss instead of stopping
    # CNNs: weights (and so activations) in NHWC, traiNNer-redux's use_channels_last; measured in
    # bench/RESULTS.md (GAN step on CPU). Exports and checkpoints are written contiguous as always.
    channels_last: bool = False


@dataclass
class MetricOptions:
    type: str = choice("psnr", "psnr", "ssim")
    crop_border: int = at_least(0, 0)
    test_y_channel: bool = True
    better: str = choice("higher", "higher", "lower")


@dataclass
class ValOptions:
    val_freq: int = at_least(1000, 1)
    save_img: bool = True
    num_save_img: int = at_least(4, 0)  # sample images saved per val set and rank
    pbar: bool = True
    metrics: Dict[str, MetricOptions] = field(default_factory=dict)


@dataclass
class LoggerOptions:
    print_freq: int = at_least(100, 1)
    save_checkpoint_freq: int = at_least(5000, 1)
    keep_last: int = at_least(3, 0)  # checkpoints kept; 0 keeps all
    trackers: List[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard | wandb
    wandb_project: Optional[str] = None
    save_pth: bool = False  # also export generator weights as .pth


TRACKERS = ("tensorboard", "wandb")


@dataclass
class Options:
    name: str = "unnamed"
    model_type: str = "regression"  # the trainer step; see ggt_ir/train/steps/__init__.py
    imports: List[str] = field(default_factory=list)  # user modules that register archs/datasets/losses/steps
    description: str = ""  # one line about the run, printed in the start-up banner and with the results
    scale: int = at_least(1, 1)
    manual_seed: int = 0
    datasets: Dict[str, Any] = field(default_factory=dict)  # train, val, val_2, ...
    network_g: Dict[str, Any] = field(default_factory=dict)  # {type: ..., **constructor kwargs}
    path: PathOptions = field(default_factory=PathOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    val: ValOptions = field(default_factory=ValOptions)
    logger: LoggerOptions = field(default_factory=LoggerOptions)
    # not user-set: filled by the loader for the record
    source_file: str = ""

    @property
    def experiment_dir(self) -> Path:
        return Path(self.path.experiments_root) / self.name

    def val_sets(self) -> Dict[str, Any]:
        return {k: v for k, v in self.datasets.items() if k.startswith("val")}


def load_options(
    path: str | os.PathLike,
    overrides: list[str] | None = None,
    *,
    debug: bool = False,
    check_paths: bool = True,
) -> Options:
    from ggt_ir.archs import ARCHS
    from ggt_ir.data import DATASETS
    from ggt_ir.losses import LOSSES
    from ggt_ir.train.basicsr_compat import translate
    from ggt_ir.train.steps import STEPS

    raw, src = read_options(path, overrides)
    compat = translate(raw)  # BasicSR-only keys: translated, ignored (one warning) or problems
    raw = compat.raw
    if compat.note():
        notice(f"{src}: {compat.note()}")
    problems = Problems(src)
    for p in compat.problems:
        problems.add(p)

    model_type = raw.get("model_type", Options.model_type)
    try:
        step_cls = STEPS.get(str(model_type))
    except KeyError as e:
        problems.add(f"model_type: {e}")
        step_cls = STEPS.get(Options.model_type)  # so the rest of the file is still checked
    opt = None
    try:
        opt = to_typed(step_cls.options, raw, src)
        opt.source_file = str(path)
    except OptionsError as e:
        hint = _other_family_hint(raw, step_cls, str(model_type))
        for p in e.problems:
            problems.add(p + hint if "unknown option 'train." in p else p)

    # the blocks the registries check, from the typed options or (when typing failed) the raw file
    datasets = opt.datasets if opt is not None else (raw.get("datasets") if isinstance(raw.get("datasets"), dict) else {})
    scale = opt.scale if opt is not None else raw.get("scale", 1)
    if "train" not in datasets:
        problems.add("no 'datasets.train' block: name the training data "
                     "(e.g. datasets: {train: {type: PairedFolder, dataroot: ...}})")
    typed_sets = {}
    missing = Problems(src)  # missing files: reported with the step's own checks, which do not need them
    for name, block in datasets.items():
        kp = f"datasets.{name}"
        if not (name == "train" or name.startswith("val") or name.startswith("test")):
            problems.add(f"dataset phase '{kp}' must be 'train', 'val*' or 'test*'")
            continue
        with problems.collect():
            typed = DATASETS.check(block, src, kp, defaults={"scale": scale, "name": name})
            typed_sets[name] = typed
            if check_paths:
                with missing.collect():
                    typed.check(src, kp)

    network_g = opt.network_g if opt is not None else raw.get("network_g")
    arch_cls = None
    if not network_g:
        problems.add(f"'network_g' needs a 'type' (one of {', '.join(ARCHS.names())})")
    else:
        with problems.collect():
            ARCHS.check(network_g, src, "network_g")
            arch_cls = ARCHS.get(network_g["type"])

    t = opt.train if opt is not None else None
    raw_train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    pixel = t.pixel_opt if t is not None else raw_train.get("pixel_opt")
    losses = t.losses if t is not None else (raw_train.get("losses") or [])
    typed_pixel, typed_losses = None, []
    if pixel is not None:
        with problems.collect():
            typed_pixel = LOSSES.check(pixel, src, "train.pixel_opt")
    for i, lo in enumerate(losses if isinstance(losses, list) else []):
        with problems.collect():
            typed_losses.append(LOSSES.check(lo, src, f"train.losses[{i}]"))
    if opt is not None:
        for tr in opt.logger.trackers:
            if tr not in TRACKERS:
                problems.add(f"'logger.trackers' has {tr!r}; expected any of {', '.join(TRACKERS)}")
    if problems:
        problems.items += missing.items
        problems.raise_if_any()

    opt.datasets = typed_sets
    if arch_cls is not None:
        with problems.collect():
            check_network_suits_step(opt, step_cls, arch_cls, src)
    t.pixel_opt, t.losses = typed_pixel, typed_losses
    with problems.collect():
        step_cls.check_options(opt, src)
    problems.items += missing.items
    problems.raise_if_any()
    if debug:
        apply_debug(opt)
    return opt


def _other_family_hint(raw: dict, step_cls, model_type: str) -> str:
    """When a ``train.*`` key belongs to another family's options (e.g. ``vsd_opt`` with model_type regression),
    say which model_type declares it."""
    import dataclasses

    from ggt_ir.train.steps import STEPS

    ours = {f.name for f in dataclasses.fields(step_cls.options().train)}
    for key in (raw.get("train") or {}):
        if key in ours:
            continue
        for name in STEPS.names():
            other = STEPS.get(name).options
            if name != model_type and key in {f.name for f in dataclasses.fields(other().train)}:
                return f" ('train.{key}' is an option of model_type {name}; this file has model_type {model_type})"
    return ""


def check_network_suits_step(opt: Options, step_cls, arch_cls, src: str) -> None:
    """``network_g.type`` and ``model_type`` must agree: a network that belongs to a family (its class
    names a ``model_type``) trains only with that step; a step that needs one network type gets it."""
    net_type, family = opt.network_g["type"], getattr(arch_cls, "model_type", None)
    if family is not None and family != opt.model_type:
        raise OptionsError(f"{src}: network_g.type {net_type} is trained with 'model_type: {family}', "
                           f"but the file says model_type: {opt.model_type}")
    wanted = step_cls.network_type
    if wanted is not None and net_type != wanted:
        raise OptionsError(f"{src}: model_type {opt.model_type} needs 'network_g.type: {wanted}', got {net_type}")


def apply_debug(opt: Options) -> None:
    """BasicSR's --debug: tiny frequencies and a separate run name."""
    if not opt.name.startswith("debug_"):
        opt.name = "debug_" + opt.name
    opt.logger.print_freq = 1
    opt.logger.save_checkpoint_freq = 8
    opt.val.val_freq = 8
    opt.logger.trackers = []
