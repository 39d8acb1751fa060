"""Option files: the loader every command shares (train, eval, table, synth), and typed checking.

Every option file goes through one preamble, :func:`read_options`:

1. read the YAML and, recursively, the files named by its ``include:`` key (paths relative to the
   including file; the including file wins, dicts merge deeply, lists are replaced). A block whose
   ``type`` the including file changes is replaced as a whole: the old type's keys do not leak into it;
2. apply dotted ``--set key.path=value`` overrides (values parsed as YAML); ``--set x.type=Other`` likewise
   starts block ``x`` afresh, keeping only the overrides given for it;
3. import the user's modules named by ``imports:`` (plugins that register architectures, datasets,
   losses or steps; see :func:`import_modules`);

then :func:`to_typed` turns the mapping into a dataclass of the command's schema: every key is checked
(unknown key -> error naming the file, the key path and the closest valid key), values are converted
by OmegaConf (wrong type -> error naming the key, the value and the expected type; an integer option
given as ``5000.0`` or ``!!float 5e3`` is 5000), and every field declared with :func:`choice`,
:func:`at_least` or :func:`in_range` is range-checked, all before anything is built or any folder is
touched. All the problems of a file are reported together, in one :class:`OptionsError`
(:class:`Problems` collects them).

This module knows no schema of its own: the train schema is ``ggt_ir/train/options.py``, the eval
schema ``ggt_ir/eval/options.py``; datasets, losses and architectures validate their own blocks
through their registries (:meth:`ggt_ir.registry.Registry.check`).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import inspect
import logging
import os
import re
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
    """A problem in an option file or an override; the message says where and what to do.

    ``OptionsError(message)`` is one problem; ``OptionsError(src=..., problems=[...])`` reports every problem
    found in one file at once (``src: 3 problems:`` then one line each)."""

    def __init__(self, message: str = "", *, src: str | None = None, problems: list[str] | None = None):
        if problems is None:
            self.src, self.problems = None, [message]
        else:
            self.src, self.problems = src, list(problems)
            message = _format_problems(src, self.problems)
        super().__init__(message)


def _format_problems(src: str | None, problems: list[str]) -> str:
    head = f"{src}: " if src else ""
    if len(problems) == 1:
        return head + problems[0]
    return f"{head}{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)


class Problems:
    """Collects the problems of one file, so that all of them are reported together::

        problems = Problems(src)
        with problems.collect():
            check_something(...)          # raises OptionsError
        problems.raise_if_any()
    """

    def __init__(self, src: str):
        self.src, self.items = src, []

    def add(self, problem: str) -> None:
        prefix = f"{self.src}: "
        problem = problem[len(prefix):] if problem.startswith(prefix) else problem
        if problem not in self.items:
            self.items.append(problem)

    def add_error(self, e: OptionsError) -> None:
        for p in e.problems:
            self.add(p)

    @contextlib.contextmanager
    def collect(self):
        try:
            yield
        except OptionsError as e:
            self.add_error(e)

    def __bool__(self) -> bool:
        return bool(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise OptionsError(src=self.src, problems=self.items)


def notice(message: str) -> None:
    """A note about an option file that is not an error (shown once, by the first process only)."""
    if os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0":
        logging.getLogger("ggt_ir.options").warning(message)


# --------------------------------------------------------------------------- YAML + includes
def _deep_merge(base: dict, top: dict, where: str = "", notes: list[str] | None = None) -> dict:
    """``top`` over ``base``: mappings merge, anything else is replaced. A mapping whose ``type`` changes is
    replaced as a whole: the keys of the old type do not leak into the new one (they are listed in ``notes``)."""
    if "type" in top and "type" in base and top["type"] != base["type"]:
        dropped = sorted(k for k in base if k != "type" and k not in top)
        if dropped and notes is not None:
            notes.append(f"'{where or 'top level'}': type {base['type']} -> {top['type']}, so the keys set for "
                         f"{base['type']} were dropped: {', '.join(map(str, dropped))}")
        return copy.deepcopy(top)
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v, f"{where}.{k}" if where else str(k), notes)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml_with_includes(path: str | os.PathLike, _stack: tuple = (), notes: list[str] | None = None) -> dict:
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
        merged = _deep_merge(merged, read_yaml_with_includes(path.parent / inc, (*_stack, path), notes), "", notes)
    return _deep_merge(merged, data, "", notes)


def _node(data: dict, parts: list[str]):
    for p in parts:
        if not isinstance(data, dict):
            return None
        data = data.get(p)
    return data


def apply_overrides(data: dict, overrides: list[str] | None, notes: list[str] | None = None) -> dict:
    """Dotted ``key.path=value`` overrides (values parsed as YAML). Overriding a block's ``type`` with another
    type starts that block afresh: only the overrides given for it are kept, whatever their order."""
    data = copy.deepcopy(data)
    parsed = []
    for item in overrides or []:
        if "=" not in item:
            raise OptionsError(f"--set {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        parsed.append((key.strip().split("."), yaml.safe_load(raw) if raw != "" else None))
    for parts, value in parsed:
        block = _node(data, parts[:-1])
        if parts[-1] == "type" and isinstance(block, dict) and "type" in block and block["type"] != value:
            dropped = sorted(k for k in block if k != "type")
            block.clear()
            if dropped and notes is not None:
                notes.append(f"--set {'.'.join(parts)}={value}: a new type, so the keys set for "
                             f"{'.'.join(parts[:-1])} of the old type were dropped: {', '.join(map(str, dropped))}")
    for parts, value in parsed:
        node = data
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = value
    return data


def import_modules(names: Any, src: str) -> list[str]:
    """Import the user's plugin modules named by an ``imports:`` key or ``--import`` (modules that register
    architectures, datasets, losses or steps with ``@ARCHS.register()`` etc.). They are looked up on
    ``sys.path`` and in the current folder. Returns the names."""
    import importlib
    import sys

    if names is None:
        return []
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise OptionsError(f"{src}: 'imports' must be a list of module names (e.g. [mypkg.archs]), got {names!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)  # `ggt-ir` as a console script does not look in the current folder by itself
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise OptionsError(f"{src}: imports: cannot import {name!r}: {e}. Put its folder on PYTHONPATH "
                               "(or run from the folder that holds it).") from None
    return list(names)


def add_import_argument(parser) -> None:
    """``--import MODULE`` (repeatable), the same on every command."""
    parser.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                        help="import a module of yours that registers architectures, datasets, losses or steps "
                             "(repeatable; e.g. --import mypkg.archs; looked up on PYTHONPATH and in the current folder)")


def read_options(path: str | os.PathLike, overrides: list[str] | None = None) -> tuple[dict, str]:
    """The preamble every option file goes through: read the YAML, merge its ``include:`` files, apply
    ``--set`` overrides, import the modules named by ``imports:``. Returns (raw mapping, a label naming the
    file and the overrides for messages)."""
    src = str(path)
    notes: list[str] = []
    raw = read_yaml_with_includes(path, notes=notes)
    try:
        raw = apply_overrides(raw, overrides, notes)
    except OptionsError as e:
        raise OptionsError(f"{src}: {e}") from None
    if overrides:
        src = f"{src} (with --set {' '.join(overrides)})"
    raw.pop("source_file", None)
    for n in notes:
        notice(f"{src}: {n}")
    import_modules(raw.get("imports"), src)
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


def closest(key: str, valid: list[str]) -> str | None:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return close[0] if close else None


def unknown_key_message(key_path: str, key: str, valid: list[str], what: str = "") -> str:
    """``unknown option 'a.b'. Did you mean 'c'?`` (or the valid keys, when none is close)."""
    near = closest(key, valid)
    hint = f" Did you mean '{near}'?" if near else f" Valid keys here: {', '.join(sorted(valid))}."
    return f"unknown option '{key_path}'{what}.{hint}"


def _unknown_key_error(src: str, key_path: str, key: str, valid: list[str]) -> OptionsError:
    return OptionsError(f"{src}: {unknown_key_message(key_path, key, valid)}")


def check_keys(data: Any, cls, src: str, prefix: str = "", problems: Problems | None = None) -> None:
    """Every key of ``data`` must be a field of ``cls`` (a dataclass), recursively; raises one OptionsError
    listing every unknown key (or adds them to ``problems``)."""
    own = problems is None
    problems = Problems(src) if own else problems
    if isinstance(data, dict):
        types = _field_types(cls)
        for k, v in data.items():
            kp = f"{prefix}{k}"
            if k not in types:
                problems.add(unknown_key_message(kp, str(k), list(types)))
                continue
            tp = _unwrap_optional(types[k])
            if dataclasses.is_dataclass(tp):
                if v is not None and not isinstance(v, dict):
                    problems.add(f"'{kp}' must be a mapping with keys {', '.join(_field_types(tp))}, got {v!r}")
                    continue
                check_keys(v, tp, src, kp + ".", problems)
            elif typing.get_origin(tp) in (list, List) and v is not None:
                (inner,) = typing.get_args(tp) or (Any,)
                if dataclasses.is_dataclass(inner):
                    if not isinstance(v, list):
                        problems.add(f"'{kp}' must be a list, got {v!r}")
                        continue
                    for i, item in enumerate(v):
                        check_keys(item, inner, src, f"{kp}[{i}].", problems)
            elif typing.get_origin(tp) in (dict, Dict) and v is not None:
                _, inner = typing.get_args(tp) or (str, Any)
                if dataclasses.is_dataclass(inner):
                    if not isinstance(v, dict):
                        problems.add(f"'{kp}' must be a mapping, got {v!r}")
                        continue
                    for name, item in v.items():
                        check_keys(item, inner, src, f"{kp}.{name}.", problems)
    if own:
        problems.raise_if_any()


def _known_only(data: Any, cls) -> Any:
    """``data`` without the keys ``cls`` lacks (reported already), so the values can still be checked."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return data
    types = _field_types(cls)
    out = {}
    for k, v in data.items():
        if k not in types:
            continue
        tp = _unwrap_optional(types[k])
        if dataclasses.is_dataclass(tp):
            v = _known_only(v, tp) if isinstance(v, dict) else v
        elif typing.get_origin(tp) in (list, List) and isinstance(v, list):
            (inner,) = typing.get_args(tp) or (Any,)
            v = [_known_only(i, inner) for i in v]
        elif typing.get_origin(tp) in (dict, Dict) and isinstance(v, dict):
            _, inner = typing.get_args(tp) or (str, Any)
            v = {n: _known_only(i, inner) for n, i in v.items()}
        out[k] = _whole_numbers(v, tp)
    return out


def _whole_numbers(value: Any, tp) -> Any:
    """An integer option given as ``5000.0`` (YAML ``!!float 5e3``, BasicSR's habit) or ``'5e3'`` is 5000."""
    if _unwrap_optional(tp) is not int or isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _drop_path(data: dict, full_key: str) -> bool:
    """Remove ``a.b[2].c`` from ``data``; False when it is not there."""
    parts = [p for p in re.split(r"\.|\[(\d+)\]", full_key) if p]
    node = data
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) and p.isdigit() else (node.get(p) if isinstance(node, dict) else None)
        if node is None:
            return False
    last = parts[-1] if parts else None
    if isinstance(node, dict) and last in node:
        del node[last]
        return True
    if isinstance(node, list) and last is not None and last.isdigit() and int(last) < len(node):
        del node[int(last)]
        return True
    return False


def to_typed(cls, data: dict, src: str, prefix: str = ""):
    """Check keys, then convert and type-check values with OmegaConf, then check ranges; return a ``cls``
    instance. Every problem of ``data`` is reported at once, in one OptionsError."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    problems = Problems(src)
    check_keys(data, cls, src, prefix, problems)
    data = _known_only(copy.deepcopy(data), cls)
    typed = None
    for _ in range(100):  # one bad value at a time: report it, drop it, convert the rest
        try:
            conf = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(data))
            typed = OmegaConf.to_object(conf)
            break
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            msg = str(getattr(e, "msg", e)).splitlines()[0]
            problems.add(f"invalid value for '{prefix}{key}': {msg}")
            if not _drop_path(data, str(key)):
                break
    if typed is not None:
        check_ranges(typed, src, prefix, problems)
    problems.raise_if_any()
    return typed


def check_ranges(obj: Any, src: str, prefix: str = "", problems: Problems | None = None) -> None:
    """Check every field declared with :func:`choice` / :func:`at_least` / :func:`in_range`, recursively
    through nested dataclasses, lists and dicts of them."""
    own = problems is None
    problems = Problems(src) if own else problems
    if isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            check_ranges(item, src, f"{prefix[:-1]}[{i}]." if prefix else f"[{i}].", problems)
    elif isinstance(obj, dict):
        for k, item in obj.items():
            check_ranges(item, src, f"{prefix}{k}.", problems)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            value, meta, key = getattr(obj, f.name), f.metadata, f"{prefix}{f.name}"
            if "choices" in meta and value not in meta["choices"]:
                shown = ", ".join(str(c) for c in meta["choices"] if c is not None)
                problems.add(f"'{key}' is {value!r}; expected one of {shown}")
            lo, hi = meta.get("min"), meta.get("max")
            if value is not None and ((lo is not None and value < lo) or (hi is not None and value > hi)):
                allowed = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"in [{lo}, {hi}]")
                problems.add(f"'{key}' is {value!r}; it must be {allowed}")
            check_ranges(value, src, key + ".", problems)
    if own:
        problems.raise_if_any()


def check_constructor_kwargs(obj, kwargs: dict, src: str, key_path: str) -> None:
    """Every key in kwargs must be an argument of ``obj`` (a class or function); one error lists all others."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    problems = Problems(src)
    for k in kwargs:
        if k not in valid:
            problems.add(unknown_key_message(f"{key_path}.{k}", k, valid))
    problems.raise_if_any()


def plain_options(x):
    """Typed options (dataclasses, nested in dicts and lists) as plain dicts and lists (for YAML, JSON, hashes)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: plain_options(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {k: plain_options(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain_options(v) for v in x]
    return x


def options_to_yaml(opt) -> str:
    """The fully resolved options, as YAML (what a run writes into its folder)."""
    return yaml.safe_dump(plain_options(opt), sort_keys=False)
