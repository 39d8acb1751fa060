"""The option schema (typed, BasicSR vocabulary) and the YAML loader.

``load_options("options/x.yml", overrides=["train.total_iter=2000"])`` returns an
:class:`Options` dataclass. Loading:

1. reads the YAML and, recursively, the files named by its ``include:`` key (paths relative
   to the including file; the including file wins, dicts merge deeply, lists are replaced);
2. applies dotted ``--set key.path=value`` overrides (values parsed as YAML);
3. checks every key against the schema (unknown key -> error naming the file, the key path
   and the closest valid key), converts types through OmegaConf (wrong type -> error naming
   the key, the value and the expected type);
4. validates ``datasets.*`` against the options class of their ``type`` and ``network_g``
   against the architecture's constructor, and checks that dataset folders exist.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml


class OptionsError(ValueError):
    """A problem in an option file or an override; the message says where and what to do."""


# --------------------------------------------------------------------------- schema
@dataclass
class PathOptions:
    pretrain_network_g: Optional[str] = None
    param_key_g: str = "auto"  # auto | params | params_ema | state_dict | none
    strict_load_g: bool = True
    resume_state: Optional[str] = None  # latest | a checkpoint folder
    experiments_root: str = "experiments"


@dataclass
class OptimOptions:
    type: str = "AdamW"  # Adam | AdamW
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8


@dataclass
class SchedulerOptions:
    type: str = "CosineAnnealingLR"  # CosineAnnealingLR | MultiStepLR | ConstantLR
    milestones: List[int] = field(default_factory=list)  # MultiStepLR
    gamma: float = 0.5  # MultiStepLR
    eta_min: float = 1e-7  # CosineAnnealingLR: final learning rate


@dataclass
class LPIPSOptions:
    """LPIPS (VGG) loss for generative restorers; weights from local files (ggt_ir/generative/lpips.py)."""

    loss_weight: float = 1.0
    weights_dir: Optional[str] = None  # folder with checkpoints/vgg16-397923af.pth + pyiqa/LPIPS_v0.1_vgg-a78928a0.pth
    vgg_path: Optional[str] = None  # explicit file paths (override weights_dir)
    lin_path: Optional[str] = None


@dataclass
class VSDOptions:
    """Variational score distillation (OSEDiff): frozen UNet + a LoRA "fake score" UNet with its own optimizer."""

    loss_weight: float = 1.0  # lambda_vsd (generator)
    diffusion_weight: float = 1.0  # lambda_vsd_lora (fake-score diffusion loss)
    lora_rank: int = 4
    lora_alpha: Optional[float] = None
    lora_targets: Optional[List[str]] = None  # default: attention projections + convolutions of the UNet
    cfg: float = 7.5  # classifier-free guidance of the frozen (real score) UNet
    neg_prompt: str = ""
    min_timestep: int = 20
    max_timestep: int = 980
    start_iter: int = 0  # add the VSD term to the generator loss from this iteration on
    optim: OptimOptions = field(default_factory=lambda: OptimOptions(lr=5e-5))


@dataclass
class TrainOptions:
    total_iter: int = 1000
    warmup_iter: int = 0
    optim_g: OptimOptions = field(default_factory=OptimOptions)
    scheduler: SchedulerOptions = field(default_factory=SchedulerOptions)
    pixel_opt: Optional[Dict[str, Any]] = None  # {type: <a LOSSES name>, loss_weight, ...}; checked by LOSSES
    losses: List[Dict[str, Any]] = field(default_factory=list)  # composed with pixel_opt
    ema_decay: float = 0.0  # 0 disables the EMA generator
    grad_clip: float = 0.0  # max grad norm; 0 disables
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_accumulation_steps: int = 1
    skip_nonfinite: bool = False  # skip steps with NaN/Inf loss instead of stopping
    lpips_opt: Optional[LPIPSOptions] = None  # generative steps (onestep_sd)
    vsd_opt: Optional[VSDOptions] = None  # generative steps (onestep_sd)


@dataclass
class MetricOptions:
    type: str = "psnr"  # psnr | ssim
    crop_border: int = 0
    test_y_channel: bool = True
    better: str = "higher"  # higher | lower


@dataclass
class ValOptions:
    val_freq: int = 1000
    save_img: bool = True
    num_save_img: int = 4  # sample images saved per val set and rank
    pbar: bool = True
    metrics: Dict[str, MetricOptions] = field(default_factory=dict)


@dataclass
class LoggerOptions:
    print_freq: int = 100
    save_checkpoint_freq: int = 5000
    keep_last: int = 3  # checkpoints kept; 0 keeps all
    trackers: List[str] = field(default_factory=lambda: ["tensorboard"])  # tensorboard | wandb
    wandb_project: Optional[str] = None
    save_pth: bool = False  # also export generator weights as .pth


@dataclass
class Options:
    name: str = "unnamed"
    model_type: str = "regression"  # the trainer step; see ggt_ir/train/steps.py
    scale: int = 1
    manual_seed: int = 0
    datasets: Dict[str, Any] = field(default_factory=dict)  # train, val, val_2, ...
    network_g: Dict[str, Any] = field(default_factory=dict)  # {type: ..., **constructor kwargs}
    path: PathOptions = field(default_factory=PathOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    val: ValOptions = field(default_factory=ValOptions)
    logger: LoggerOptions = field(default_factory=LoggerOptions)
    # not user-set: filled by the loader for the record
    source_file: str = ""

    # -- convenience
    @property
    def experiment_dir(self) -> Path:
        return Path(self.path.experiments_root) / self.name

    def val_sets(self) -> Dict[str, Any]:
        return {k: v for k, v in self.datasets.items() if k.startswith("val")}


# --------------------------------------------------------------------------- YAML + includes
def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml_with_includes(path: str | os.PathLike, _stack: tuple = ()) -> dict:
    path = Path(path).resolve()
    if not path.is_file():
        raise OptionsError(f"option file not found: {path}")
    if path in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, path))
        raise OptionsError(f"include cycle: {chain}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise OptionsError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise OptionsError(f"{path}: the top level must be a mapping of option keys")
    includes = data.pop("include", None) or []
    if isinstance(includes, str):
        includes = [includes]
    merged: dict = {}
    for inc in includes:
        merged = _deep_merge(merged, read_yaml_with_includes(path.parent / inc, (*_stack, path)))
    return _deep_merge(merged, data)


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    data = copy.deepcopy(data)
    for item in overrides or []:
        if "=" not in item:
            raise OptionsError(f"--set {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else None
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return data


def read_options(path: str | os.PathLike, overrides: list[str] | None = None) -> tuple[dict, str]:
    """The preamble every option file goes through: read the YAML, merge its ``include:`` files, apply
    ``--set`` overrides. Returns (raw mapping, a label naming the file and the overrides for messages)."""
    src = str(path)
    raw = read_yaml_with_includes(path)
    try:
        raw = apply_overrides(raw, overrides)
    except OptionsError as e:
        raise OptionsError(f"{src}: {e}") from None
    if overrides:
        src = f"{src} (with --set {' '.join(overrides)})"
    raw.pop("source_file", None)
    return raw, src


def load_typed(cls, path: str | os.PathLike, overrides: list[str] | None = None):
    """:func:`read_options`, then :func:`to_typed` into the dataclass ``cls`` (its ``source_file``, when it
    has one, is set to ``path``)."""
    raw, src = read_options(path, overrides)
    typed = to_typed(cls, raw, src)
    if hasattr(typed, "source_file"):
        typed.source_file = str(path)
    return typed


# --------------------------------------------------------------------------- checking
def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unwrap_optional(tp):
    if typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _unknown_key_error(src: str, key_path: str, key: str, valid: list[str]) -> OptionsError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.4)
    hint = f" Did you mean '{close[0]}'?" if close else f" Valid keys here: {', '.join(sorted(valid))}."
    return OptionsError(f"{src}: unknown option '{key_path}'.{hint}")


def check_keys(data: Any, cls, src: str, prefix: str = "") -> None:
    """Raise OptionsError for the first key of ``data`` that ``cls`` (a dataclass) lacks."""
    if not isinstance(data, dict):
        return
    types = _field_types(cls)
    for k, v in data.items():
        kp = f"{prefix}{k}"
        if k not in types:
            raise _unknown_key_error(src, kp, str(k), list(types))
        tp = _unwrap_optional(types[k])
        if dataclasses.is_dataclass(tp):
            if v is not None and not isinstance(v, dict):
                raise OptionsError(f"{src}: '{kp}' must be a mapping with keys {', '.join(types and _field_types(tp))}, got {v!r}")
            check_keys(v, tp, src, kp + ".")
        elif typing.get_origin(tp) in (list, List) and v is not None:
            (inner,) = typing.get_args(tp) or (Any,)
            if dataclasses.is_dataclass(inner):
                if not isinstance(v, list):
                    raise OptionsError(f"{src}: '{kp}' must be a list, got {v!r}")
                for i, item in enumerate(v):
                    check_keys(item, inner, src, f"{kp}[{i}].")
        elif typing.get_origin(tp) in (dict, Dict) and v is not None:
            _, inner = typing.get_args(tp) or (str, Any)
            if dataclasses.is_dataclass(inner):
                if not isinstance(v, dict):
                    raise OptionsError(f"{src}: '{kp}' must be a mapping, got {v!r}")
                for name, item in v.items():
                    check_keys(item, inner, src, f"{kp}.{name}.")


def to_typed(cls, data: dict, src: str, prefix: str = ""):
    """Check keys, then convert and type-check values with OmegaConf; return a ``cls`` instance."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_keys(data, cls, src, prefix)
    try:
        conf = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(data))
        return OmegaConf.to_object(conf)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        raise OptionsError(f"{src}: invalid value for '{prefix}{key}': {msg}") from None


def check_constructor_kwargs(obj, kwargs: dict, src: str, key_path: str) -> None:
    """Every key in kwargs must be an argument of ``obj`` (a class or function)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for k in kwargs:
        if k not in valid:
            raise _unknown_key_error(src, f"{key_path}.{k}", k, valid)


# --------------------------------------------------------------------------- entry point
def load_options(
    path: str | os.PathLike,
    overrides: list[str] | None = None,
    *,
    debug: bool = False,
    check_paths: bool = True,
) -> Options:
    src = str(path)
    raw = read_yaml_with_includes(path)
    try:
        raw = apply_overrides(raw, overrides)
    except OptionsError as e:
        raise OptionsError(f"{src}: {e}") from None
    if overrides:
        src = f"{src} (with --set {' '.join(overrides)})"
    raw.pop("source_file", None)
    opt: Options = to_typed(Options, raw, src)
    opt.source_file = str(path)

    # datasets: each validated against the options class of its type
    from ggt_ir.data import DATASETS

    typed_sets = {}
    for name, ds in opt.datasets.items():
        kp = f"datasets.{name}"
        if not (name == "train" or name.startswith("val") or name.startswith("test")):
            raise OptionsError(f"{src}: dataset phase '{kp}' must be 'train', 'val*' or 'test*'")
        if not isinstance(ds, dict) or "type" not in ds:
            raise OptionsError(f"{src}: '{kp}' needs a 'type' (one of {', '.join(DATASETS.names())})")
        try:
            ds_cls = DATASETS.get(ds["type"])
        except KeyError as e:
            raise OptionsError(f"{src}: {kp}.type: {e}") from None
        ds = dict(ds)
        ds.setdefault("scale", opt.scale)
        ds.setdefault("name", name)
        typed = to_typed(ds_cls.Options, ds, src, kp + ".")
        if check_paths:
            typed.check(src, kp)
        typed_sets[name] = typed
    opt.datasets = typed_sets

    # network_g: type + constructor kwargs
    from ggt_ir.archs import ARCHS

    if not opt.network_g or "type" not in opt.network_g:
        raise OptionsError(f"{src}: 'network_g' needs a 'type' (one of {', '.join(ARCHS.names())})")
    net_kwargs = dict(opt.network_g)
    try:
        arch = ARCHS.get(net_kwargs.pop("type"))
    except KeyError as e:
        raise OptionsError(f"{src}: network_g.type: {e}") from None
    check_constructor_kwargs(arch, net_kwargs, src, "network_g")

    from ggt_ir.losses import LOSSES

    t = opt.train
    if t.pixel_opt is not None:
        t.pixel_opt = LOSSES.check(t.pixel_opt, src, "train.pixel_opt")
    t.losses = [LOSSES.check(lo, src, f"train.losses[{i}]") for i, lo in enumerate(t.losses)]

    from ggt_ir.train.steps import STEPS

    if opt.model_type not in STEPS:
        raise OptionsError(f"{src}: model_type: unknown {opt.model_type!r}; known: {', '.join(STEPS.names())}")

    _check_choices(opt, src)
    if debug:
        apply_debug(opt)
    return opt


def _check_choices(opt: Options, src: str) -> None:
    def bad(key, value, choices):
        raise OptionsError(f"{src}: '{key}' is {value!r}; expected one of {', '.join(choices)}")

    t = opt.train
    if t.mixed_precision not in ("no", "fp16", "bf16"):
        bad("train.mixed_precision", t.mixed_precision, ["no", "fp16", "bf16"])
    if t.optim_g.type not in ("Adam", "AdamW", "AdamW8bit"):
        bad("train.optim_g.type", t.optim_g.type, ["Adam", "AdamW", "AdamW8bit"])
    if t.scheduler.type not in ("CosineAnnealingLR", "MultiStepLR", "ConstantLR"):
        bad("train.scheduler.type", t.scheduler.type, ["CosineAnnealingLR", "MultiStepLR", "ConstantLR"])
    if t.gradient_accumulation_steps < 1:
        bad("train.gradient_accumulation_steps", t.gradient_accumulation_steps, [">= 1"])
    if t.total_iter < 1:
        bad("train.total_iter", t.total_iter, [">= 1"])
    for name, m in opt.val.metrics.items():
        if m.type not in ("psnr", "ssim"):
            bad(f"val.metrics.{name}.type", m.type, ["psnr", "ssim"])
        if m.better not in ("higher", "lower"):
            bad(f"val.metrics.{name}.better", m.better, ["higher", "lower"])
    for tr in opt.logger.trackers:
        if tr not in ("tensorboard", "wandb"):
            bad("logger.trackers", tr, ["tensorboard", "wandb"])


def apply_debug(opt: Options) -> None:
    """BasicSR's --debug: tiny frequencies and a separate run name."""
    if not opt.name.startswith("debug_"):
        opt.name = "debug_" + opt.name
    opt.logger.print_freq = 1
    opt.logger.save_checkpoint_freq = 8
    opt.val.val_freq = 8
    opt.logger.trackers = []


def options_to_yaml(opt: Options) -> str:
    """The fully resolved options, as YAML (what a run writes into its folder)."""

    def plain(x):
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return yaml.safe_dump(plain(opt), sort_keys=False)
