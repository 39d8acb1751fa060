"""Option files: the loader every command shares (train, eval, table, synth), and typed checking.

Every option file goes through one preamble, :func:`read_options`:

1. read the YAML and, recursively, the files named by its ``include:`` key (paths relative to the
   including file; the including file wins, dicts merge deeply, lists are replaced);
2. apply dotted ``--set key.path=value`` overrides (values parsed as YAML);

then :func:`to_typed` turns the mapping into a dataclass of the command's schema: every key is checked
(unknown key -> error naming the file, the key path and the closest valid key), values are converted
by OmegaConf (wrong type -> error naming the key, the value and the expected type), and every field
declared with :func:`choice`, :func:`at_least` or :func:`in_range` is range-checked, all before
anything is built or any folder is touched.

This module knows no schema of its own: the train schema is ``ggt_ir/train/options.py``, the eval
schema ``ggt_ir/eval/options.py``; datasets, losses and architectures validate their own blocks
through their registries (:meth:`ggt_ir.registry.Registry.check`).
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import os
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, List, Dict

import yaml


# --------------------------------------------------------------------------- declaring ranges
def choice(default, *choices, **kw):
    """A dataclass field whose value must be one of ``choices`` (checked at load)."""
    return field(default=default, metadata={"choices": tuple(choices)}, **kw)


def at_least(default, low, **kw):
    """A numeric field that must be >= ``low`` (checked at load)."""
    return field(default=default, metadata={"min": low}, **kw)


def in_range(default, low, high, **kw):
    """A numeric field that must lie in [low, high] (checked at load)."""
    return field(default=default, metadata={"min": low, "max": high}, **kw)


class OptionsError(ValueError):
    """A problem in an option file or an override; the message says where and what to do."""


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
        typed = OmegaConf.to_object(conf)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(getattr(e, "msg", e)).splitlines()[0]
        raise OptionsError(f"{src}: invalid value for '{prefix}{key}': {msg}") from None
    check_ranges(typed, src, prefix)
    return typed


def check_ranges(obj: Any, src: str, prefix: str = "") -> None:
    """Check every field declared with :func:`choice` / :func:`at_least` / :func:`in_range`, recursively
    through nested dataclasses, lists and dicts of them."""
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            check_ranges(item, src, f"{prefix[:-1]}[{i}]." if prefix else f"[{i}].")
        return
    if isinstance(obj, dict):
        for k, item in obj.items():
            check_ranges(item, src, f"{prefix}{k}.")
        return
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    for f in dataclasses.fields(obj):
        value, meta, key = getattr(obj, f.name), f.metadata, f"{prefix}{f.name}"
        if "choices" in meta and value not in meta["choices"]:
            raise OptionsError(f"{src}: '{key}' is {value!r}; expected one of {', '.join(map(str, meta['choices']))}")
        lo, hi = meta.get("min"), meta.get("max")
        if value is not None and ((lo is not None and value < lo) or (hi is not None and value > hi)):
            allowed = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"in [{lo}, {hi}]")
            raise OptionsError(f"{src}: '{key}' is {value!r}; it must be {allowed}")
        check_ranges(value, src, key + ".")


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


def options_to_yaml(opt) -> str:
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
