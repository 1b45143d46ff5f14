"""The published models (ARPG, LPD, RandAR): their released checkpoints converted into orderlab backbones.

Each source is a registered converter (``register_converter``; other packages: the entry-point group
``orderlab.converters``) that infers the architecture from the tensor shapes, maps the official keys onto an
orderlab backbone built with the matching preset knobs (``orderlab.model.config.PUBLISHED``), and names the
model's own decoding (its order, step sizes and budget) as the ``native`` row. ``orderlab convert`` runs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from orderlab.model.config import ModelConfig
from orderlab.model.layers import find_multiple
from orderlab.published.keys import ConversionError, Taker
from orderlab.registry import Registry

__all__ = ["Hints", "Converted", "register_converter", "list_converters", "get_converter", "ffn_multiple_for",
           "ConversionError", "Taker"]


@dataclass
class Hints:
    """What the shapes cannot say: attention heads (default: width / 64, as every published size) and the grid
    side (default: 16, the 256-px models; LPD's position table gives its own)."""

    heads: int | None = None
    grid: int | None = None
    preset: dict[str, Any] = field(default_factory=dict)
    """The ``--preset``'s fields, when one is given: its heads and grid win over the defaults above."""

    def heads_for(self, dim: int, facts: list[str]) -> int:
        if self.heads or "heads" in self.preset:
            return int(self.heads or self.preset["heads"])
        facts.append(f"heads: {dim // 64} (width {dim} / 64, as every published size; --heads overrides)")
        return dim // 64

    def grid_for(self, facts: list[str], known: int | None = None) -> int:
        if known is not None:
            return known
        if self.grid or "height" in self.preset:
            return int(self.grid or self.preset["height"])
        facts.append("grid: 16x16 (the 256-px models; the file does not say; --grid 32 for a 512-px model)")
        return 16


@dataclass
class Converted:
    """An orderlab backbone's config and state dict, made from a published checkpoint."""

    config: ModelConfig
    state: dict[str, torch.Tensor]
    native: dict[str, Any]
    """The model's own decoding as an evaluation row (``{"schedule", "steps", "knobs"}``) plus ``cfg_schedule``
    and ``cfg_scale`` from its paper; ``evaluate``/``sample`` run it for the row name ``native``."""
    facts: list[str] = field(default_factory=list)


Converter = Callable[[Taker, Hints], Converted]
CONVERTERS: Registry[Converter] = Registry("converter", entry_point_group="orderlab.converters",
                                           builtins="orderlab.published.builtin")


def register_converter(name: str):
    """Decorator: ``fn(taker, hints) -> Converted`` converts the checkpoints of source ``name`` (``--from``)."""
    return CONVERTERS.register(name)


def list_converters() -> list[str]:
    return CONVERTERS.names()


def get_converter(name: str) -> Converter:
    return CONVERTERS.get(name)


def ffn_multiple_for(hidden: int, dim: int, ratio: float = 8 / 3) -> int:
    """The rounding multiple that turns floor(ratio * dim) into the file's FFN width ``hidden``."""
    for k in (256, 64, 32, 1):
        if find_multiple(math.floor(ratio * dim + 1e-6), k) == hidden:
            return k
    raise ConversionError(f"FFN width {hidden} at model width {dim} is not floor({ratio:.4g} * {dim}) rounded up to a "
                          "multiple of 256, 64, 32 or 1; this is not a published architecture")
