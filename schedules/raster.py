"""Raster order: row-major, cut into consecutive groups. One token per step is LlamaGen's next-token AR."""

from dataclasses import dataclass

import torch

from orderlab.schedule import OrderSchedule, register_schedule
from orderlab.sizes import SizeSpec


@register_schedule("raster")
@dataclass(frozen=True)
class Raster(OrderSchedule):
    """Row-major order; every group is a horizontal run. Natural budget: N (one token per step)."""

    sizes: SizeSpec = "lpd"
    """Group-size rule (cosine, arccos, uniform, lpd, power:p) or an explicit list."""

    def permutation(self, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        return torch.arange(height * width)  # (N,)
