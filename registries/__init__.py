"""One registry idiom for every kind of variant: a decorator fills it, importing a package discovers it.

A kind (task family, positional rule, cache policy, mixer, stage, figure ...) owns one ``Registry``.
Each variant is one module that decorates its class or function with ``@REGISTRY.register("name")``
(or ``register()`` to take the object's ``name`` attribute). ``Registry(..., package="models.pos")``
imports every module of that package on first lookup, so a new variant is a new file and nothing else.
Out-of-tree variants (a paper's own policy, the test suite's toy plugins) are found by importing the
modules named in ``$LONGCTX_PLUGINS`` (comma-separated) before any lookup. Importing a module runs its
code, with your permissions: name only modules you trust. The list is part of a run's provenance
(``plugin_modules()``: recorded in run.json, checkpoints and every row); a name that cannot be found
is a ``PluginError`` naming it and the variable.

This package imports nothing of the project, so models/, tasks/, pipeline/ and scripts/ may all use it
without breaking the one-way data flow.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, Generic, Optional, TypeVar

T = TypeVar("T")
PLUGINS_ENV = "LONGCTX_PLUGINS"
_plugins_loaded = False


class PluginError(ValueError):
    """A module named in $LONGCTX_PLUGINS that cannot be found: bad input, reported like a config error."""


def plugin_modules() -> list[str]:
    """The module names listed in $LONGCTX_PLUGINS, in order."""
    return [s.strip() for s in os.environ.get(PLUGINS_ENV, "").split(",") if s.strip()]


def load_plugins() -> None:
    """Import (run) the modules listed in $LONGCTX_PLUGINS once (they register their variants on import)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for name in plugin_modules():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name is None or not (name == err.name or name.startswith(err.name + ".")):
                raise  # the plugin itself imports something missing: its own traceback says where
            _plugins_loaded = False  # every later lookup fails the same way, none goes on without the plugin
            raise PluginError(f"${PLUGINS_ENV}={os.environ[PLUGINS_ENV]!r} names the module {name!r}, which cannot "
                              f"be imported (no module named {err.name!r} on sys.path); allowed: importable module "
                              f"names, comma-separated") from None


class Registry(Generic[T]):
    """Named variants of one kind.

    kind: what the entries are, for messages ("cache policy"); field: the config key that names one
    ("cache.policy"), for errors; package: imported module by module on first lookup; skip: module
    names in that package that hold infrastructure, not variants.
    """

    def __init__(self, kind: str, field: str, package: Optional[str] = None, skip: tuple[str, ...] = ()) -> None:
        self.kind, self.field, self.package, self.skip = kind, field, package, set(skip)
        self._entries: dict[str, T] = {}
        self._discovered = package is None

    def register(self, name: Optional[str] = None) -> Callable[[T], T]:
        """Decorator: register the object under ``name`` (default: its ``name`` attribute)."""

        def add(obj: T) -> T:
            key = name if name is not None else getattr(obj, "name", None)
            if not isinstance(key, str) or not key:
                raise TypeError(f"a {self.kind} needs a name: pass register('x') or give {obj!r} a `name`")
            existing = self._entries.get(key)
            if existing is not None and existing is not obj and _qualname(existing) != _qualname(obj):
                raise ValueError(f"{self.kind} {key!r} is registered twice: {_qualname(existing)} and {_qualname(obj)}")
            self._entries[key] = obj
            return obj

        return add

    def discover(self) -> None:
        if not self._discovered:
            self._discovered = True
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(pkg.__path__):
                if info.name not in self.skip and not info.name.startswith("_"):
                    importlib.import_module(f"{self.package}.{info.name}")
        load_plugins()

    def get(self, name: Any, field: Optional[str] = None) -> T:
        """The entry called ``name``; a ValueError naming the field, the value and what is allowed."""
        self.discover()
        if name not in self._entries:
            raise ValueError(f"{field or self.field}={name!r} is not a known {self.kind}; allowed: {self.names()}")
        return self._entries[name]

    def names(self) -> list[str]:
        self.discover()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self.discover()
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.discover()
        return len(self._entries)


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
