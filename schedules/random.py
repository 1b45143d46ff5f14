"""Random order: a seeded uniform permutation cut by a size rule (ARPG, RandAR, LPD's training order)."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from orderlab.schedule import OrderSchedule, register_schedule
from orderlab.sizes import SizeSpec


@register_schedule("random")
@dataclass(frozen=True)
class Random(OrderSchedule):
    """Uniformly random order, independent of content. Natural budget: N (RandAR's next-token order)."""

    stochastic: ClassVar[bool] = True
    sizes: SizeSpec = "lpd"
    """Group-size rule (cosine, arccos, uniform, lpd, power:p) or an explicit list."""

    def permutation(self, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randperm(height * width, generator=generator)  # (N,)
