"""Taking tensors out of a foreign state dict by name, collecting every problem instead of stopping at the first."""

from __future__ import annotations

import torch

__all__ = ["Taker", "ConversionError"]


class ConversionError(ValueError):
    """A file that does not convert; the message lists every unknown key, missing key and shape mismatch."""


class Taker:
    """Reads an official state dict key by key; afterwards :meth:`check` fails with the full list of problems."""

    def __init__(self, state: dict[str, torch.Tensor], source: str):
        self.state, self.source = state, source
        self.used: set[str] = set()
        self.missing: list[str] = []
        self.shapes: list[str] = []

    def has(self, key: str) -> bool:
        return key in self.state

    def peek(self, key: str) -> torch.Tensor | None:
        """The tensor under ``key`` without taking it (to read a size before the shaped :meth:`take`); a missing
        key is recorded."""
        if key not in self.state:
            self.missing.append(key)
            return None
        return self.state[key]

    def take(self, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        """The tensor under ``key`` (marked used); None and a recorded problem when it is absent or misshapen."""
        if key not in self.state:
            self.missing.append(key)
            return None
        self.used.add(key)
        t = self.state[key]
        if shape is not None and tuple(t.shape) != tuple(shape):
            self.shapes.append(f"{key}: {tuple(t.shape)} in the file, {tuple(shape)} expected")
            return None
        return t

    def count(self, prefix: str, suffix: str) -> int:
        """How many consecutive ``prefix{i}suffix`` keys exist (the number of layers)."""
        i = 0
        while f"{prefix}{i}{suffix}" in self.state:
            i += 1
        return i

    def check(self) -> None:
        unknown = sorted(set(self.state) - self.used)
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {_short(self.missing)}")
        if unknown:
            parts.append(f"{len(unknown)} unknown key(s): {_short(unknown)}")
        if self.shapes:
            parts.append(f"{len(self.shapes)} shape mismatch(es): {_short(self.shapes)}")
        if parts:
            raise ConversionError(f"the file does not match the {self.source} key layout; " + "; ".join(parts) +
                                  "; nothing was written")


def _short(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
