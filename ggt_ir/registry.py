"""Lazy name -> object registries.

Every registry maps a public name (the ``type:`` in an option file) to an import path
``"package.module:attr"``. Nothing is imported until a name is looked up, so one broken or
heavy optional dependency (diffusers, pyiqa, ...) never breaks ``import ggt_ir``.

Add a built-in entry by adding one line to the table where the registry is defined
(e.g. ``ggt_ir/archs/__init__.py``); register user code at run time with ``@REG.register()``.

Each registry also validates its own option blocks (:meth:`Registry.check`): an entry with a nested
``Options`` dataclass (datasets, losses) is typed against it; any other entry (architectures) has its
keys checked against its constructor's arguments.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Iterator


class RegistryError(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class Registry:
    def __init__(self, kind: str, table: dict[str, str] | None = None):
        self.kind = kind
        self._paths: dict[str, str] = dict(table or {})
        self._objects: dict[str, Any] = {}

    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        """Decorator registering an object that is already imported."""

        def deco(obj: Any) -> Any:
            key = name or obj.__name__
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
        return sorted(set(self._paths) | set(self._objects))

    def __contains__(self, name: str) -> bool:
        return name in self._paths or name in self._objects

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> Any:
        if name in self._objects:
            return self._objects[name]
        if name not in self._paths:
            close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} type {name!r}.{hint} Known: {', '.join(self.names())}"
            )
        module_name, _, attr = self._paths[name].partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ImportError(
                f"{self.kind} {name!r} needs module {module_name!r}, which failed to import: {e}"
            ) from e
        obj = getattr(module, attr)
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
        if options_cls is None:
            kwargs = {k: v for k, v in block.items() if k != "type"}
            check_constructor_kwargs(obj, kwargs, src, key_path)
            return dict(block)
        full = {**(defaults or {}), **block}
        return to_typed(options_cls, full, src, key_path + ".")
