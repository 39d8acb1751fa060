"""Lazy name -> object registries.

Every registry maps a public name (the ``type:`` in an option file) to an import path
``"package.module:attr"``. Nothing is imported until a name is looked up, so one broken or
heavy optional dependency (diffusers, pyiqa, ...) never breaks ``import ggt_ir``.

Add a built-in entry by adding one line to the table where the registry is defined
(e.g. ``ggt_ir/archs/__init__.py``). User code needs no edit of the package, in either of two ways:

* a module that registers its objects with ``@ARCHS.register()`` (``DATASETS``, ``LOSSES``, ``STEPS``
  alike), named by ``--import mypkg.archs`` on any command or by ``imports: [mypkg.archs]`` in an option
  file (a run records it, so ``ggt-ir eval --run`` / ``ggt-ir restore --run`` import it again);
* Python entry points of an installed package, in the groups ``ggt_ir.archs``, ``ggt_ir.datasets``,
  ``ggt_ir.losses`` and ``ggt_ir.steps`` (name = the ``type:``, value = ``"module:attr"``), e.g. in its
  pyproject.toml ``[project.entry-points."ggt_ir.archs"] MyNet = "mypkg.archs:MyNet"``. They are found
  with :mod:`importlib.metadata` and stay lazy like the built-in table.

Each registry also validates its own option blocks (:meth:`Registry.check`): an entry with a nested
``Options`` dataclass (datasets, losses) is typed against it; any other entry (architectures) has its
keys checked against its constructor's arguments.
"""
from __future__ import annotations

import difflib
import importlib
import re
import warnings
from typing import Any, Callable, Iterator


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str, table: dict[str, str] | None = None, entry_point_group: str | None = None):
        self.kind = kind
        self._paths: dict[str, str] = dict(table or {})
        self._objects: dict[str, Any] = {}
        self.entry_point_group = entry_point_group
        self._entry_points_loaded = entry_point_group is None
        self._sources: dict[str, str] = {}  # name -> the distribution whose entry point added it

    def load_entry_points(self, force: bool = False) -> None:
        """Add the lazy entries of installed packages' entry points (group ``entry_point_group``), once."""
        if (self._entry_points_loaded and not force) or self.entry_point_group is None:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            if ep.name in self._paths or ep.name in self._objects:
                if self._sources.get(ep.name) == dist or self._paths.get(ep.name) == ep.value:
                    continue
                warnings.warn(f"{self.kind} {ep.name!r} from package {dist!r} (entry point group "
                              f"{self.entry_point_group}) is ignored: the name is taken", stacklevel=2)
                continue
            self._paths[ep.name] = ep.value
            self._sources[ep.name] = dist

    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        """Decorator registering an object that is already imported."""

        def deco(obj: Any) -> Any:
            key = name or obj.__name__
            if self._objects.get(key) is obj:
                return obj  # the same module imported twice (e.g. by --import and by imports:)
            if key in self._paths or key in self._objects:
                raise RegistryError(f"{self.kind} {key!r} is already registered")
            self._objects[key] = obj
            return obj

        return deco

    def add_lazy(self, name: str, path: str) -> None:
        if name in self._paths or name in self._objects:
            raise RegistryError(f"{self.kind} {name!r} is already registered")
        self._paths[name] = path

    def names(self) -> list[str]:
        self.load_entry_points()
        return sorted(set(self._paths) | set(self._objects))

    def __contains__(self, name: str) -> bool:
        self.load_entry_points()
        return name in self._paths or name in self._objects

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Any:
        if name in self._objects:
            return self._objects[name]
        self.load_entry_points()
        if name not in self._paths:
            close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            group = f" or an entry point in group {self.entry_point_group}" if self.entry_point_group else ""
            raise RegistryError(
                f"unknown {self.kind} type {name!r}.{hint} Known: {', '.join(self.names())}. "
                f"Your own: a module that registers it, named by --import / imports: (docs/training.md){group}"
            )
        module_name, _, attr = self._paths[name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            origin = f" (entry point of package {self._sources[name]!r})" if name in self._sources else ""
            raise ImportError(
                f"{self.kind} {name!r}{origin} needs module {module_name!r}, which failed to import: {e}"
            ) from e
        obj = module
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
        self._objects[name] = obj
        return obj

    def check(self, block: Any, src: str, key_path: str, defaults: dict | None = None) -> Any:
        """Check one ``{type: Name, ...}`` option block; returns the entry's typed ``Options`` (with
        ``defaults`` filled in where the block leaves them out), or for an entry without one the block itself.
        Raises :class:`ggt_ir.config.OptionsError` naming ``src`` and ``key_path``."""
        from ggt_ir.config import OptionsError, check_constructor_kwargs, to_typed

        if not isinstance(block, dict) or "type" not in block:
            raise OptionsError(f"{src}: '{key_path}' needs a 'type' (one of {', '.join(self.names())})")
        try:
            obj = self.get(block["type"])
        except KeyError as e:
            raise OptionsError(f"{src}: {key_path}.type: {e}") from None
        options_cls = getattr(obj, "Options", None)
        try:
            if options_cls is None:
                kwargs = {k: v for k, v in block.items() if k != "type"}
                check_constructor_kwargs(obj, kwargs, src, key_path)
                return dict(block)
            full = {**(defaults or {}), **block}
            return to_typed(options_cls, full, src, key_path + ".")
        except OptionsError as e:
            raise OptionsError(src=src, problems=[self._explain(p, block, key_path, src) for p in e.problems]) from None

    def _explain(self, problem: str, block: dict, key_path: str, src: str) -> str:
        """An unknown key of a ``{type: X, ...}`` block: say that it is not an option of X (and whose it is),
        rather than only guessing a near name."""
        from ggt_ir.config import closest

        problem = problem[len(src) + 2:] if problem.startswith(f"{src}: ") else problem
        m = re.match(rf"unknown option '{re.escape(key_path)}\.([^'.\[]+)'", problem)
        if not m:
            return problem
        key, type_name = m.group(1), block["type"]
        valid = self._keys_of(type_name)
        owners = [n for n in self.names() if n != type_name and key in self._keys_of(n, quiet=True)]
        near = closest(key, valid)
        msg = f"'{key_path}.{key}' is not an option of {self.kind} type {type_name}"
        if owners:
            msg += f" (it is one of {', '.join(owners[:4])})"
        msg += f". Did you mean '{near}'?" if near else f". {type_name} takes: {', '.join(sorted(valid))}."
        return msg

    def _keys_of(self, name: str, quiet: bool = False) -> list[str]:
        import dataclasses
        import inspect

        try:
            obj = self.get(name)
        except Exception:  # noqa: BLE001 - an entry whose optional dependency is missing knows no keys here
            if quiet:
                return []
            raise
        options_cls = getattr(obj, "Options", None)
        if options_cls is not None:
            return [f.name for f in dataclasses.fields(options_cls) if f.name != "type"]
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            return []
        return [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
