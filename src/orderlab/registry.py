"""One registry of named plugins (schedules, size rules, tokenizers, datasets, CFG schedules), one error format.

Every kind of plugin is looked up the same way, so a mistyped name reads the same everywhere::

    unknown schedule 'rastr'; did you mean 'raster'?; choose one of ['diagonal', ..., 'raster']

A registry never imports its plugins when it is created: built-ins are named by a dotted module that is imported
on the first lookup, and entry points of other packages are read once, on the first lookup too. That keeps
``schedule.py`` from importing ``orderlab.schedules`` (whose modules import ``schedule.py``) at import time.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar

from orderlab.suggest import did_you_mean

__all__ = ["Registry", "UnknownNameError"]

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name no registry entry has. A KeyError and a ValueError, so callers written against either keep working."""

    def __str__(self) -> str:  # KeyError's str() quotes its message; this is a sentence, shown as it is
        return str(self.args[0]) if self.args else ""


def _dotted(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


class Registry(Generic[T]):
    """Named objects of one kind, e.g. ``Registry("schedule", builtins="orderlab.schedules")``.

    Args:
        kind: the noun users read in messages ("schedule", "size rule", "tokenizer", "CFG schedule").
        entry_point_group: where other packages register theirs (``[project.entry-points."<group>"]``); read once.
        builtins: dotted module whose import registers the built-ins; imported on the first lookup, not before.
        check: validates an object before it is registered (raises, e.g. TypeError for a class of the wrong base).
        name_attr: attribute that receives the registered name (``"name"`` for schedule and tokenizer classes).
    """

    def __init__(self, kind: str, *, entry_point_group: str | None = None, builtins: str | None = None,
                 check: Callable[[object], None] | None = None, name_attr: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtins = builtins
        self._check = check
        self._name_attr = name_attr
        self._entries: dict[str, T] = {}
        self._loaded = False

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} registered)"

    def register(self, name: str, obj: T | None = None) -> Any:
        """Register ``obj`` under ``name`` and return it; without ``obj``, a decorator that does so.

        The same object under the same name again is harmless; another object under a taken name is a ValueError.
        """
        if obj is None:
            return lambda o: self.register(name, o)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} name must be a non-empty str, got {name!r}")
        if self._check is not None:
            self._check(obj)
        old = self._entries.get(name)
        if old is not None and old is not obj:
            raise ValueError(f"{self.kind} name {name!r} is taken by {_dotted(old)}")
        if self._name_attr:
            setattr(obj, self._name_attr, name)
        self._entries[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test, or a session that swaps a plugin); an unknown name is an UnknownNameError."""
        self.get(name)
        del self._entries[name]

    def _load(self) -> None:
        """Import the built-ins and read the entry points, once (a plugin that fails to load is skipped, warned)."""
        if self._loaded:
            return
        self._loaded = True  # first: a built-in module that looks a name up while importing must not recurse
        try:
            if self.builtins:
                importlib.import_module(self.builtins)
        except BaseException:
            self._loaded = False
            raise
        if not self.entry_point_group:
            return
        for ep in metadata.entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
                if self._entries.get(ep.name) is not obj:
                    self.register(ep.name, obj)
            except Exception as err:  # one broken package must not take every lookup down with it
                where = getattr(ep, "value", ep.name)
                warnings.warn(f"{self.kind} plugin {ep.name!r} ({where}) from entry-point group "
                              f"{self.entry_point_group!r} is skipped: {err}", stacklevel=3)

    def names(self) -> list[str]:
        """Every registered name (built-ins and entry points included), sorted."""
        self._load()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs, sorted by name."""
        self._load()
        return sorted(self._entries.items())

    def get(self, name: str) -> T:
        """The object registered under ``name``; an unknown name raises :class:`UnknownNameError` naming the choices."""
        self._load()
        if isinstance(name, str) and name in self._entries:
            return self._entries[name]
        names = sorted(self._entries)
        raise UnknownNameError(f"unknown {self.kind} {name!r}{did_you_mean(str(name), names)}; choose one of {names}")

    # read-only mapping manners, so ``name in reg``, ``reg[name]`` and ``sorted(reg)`` work as on a dict
    def __contains__(self, name: object) -> bool:
        self._load()
        return isinstance(name, str) and name in self._entries

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)
