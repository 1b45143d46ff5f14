"""Anti-diagonals i + j = c, top-left first (NAR's next-neighbour order, arXiv 2503.10696)."""

from dataclasses import dataclass

import torch

from orderlab.schedule import GeometricSchedule, register_schedule


@register_schedule("diagonal")
@dataclass(frozen=True)
class Diagonal(GeometricSchedule):
    """Group c holds the cells with i + j = c. Natural budget: H + W - 1."""

    def natural_groups(self, height: int, width: int) -> list[torch.Tensor]:
        groups = []
        for c in range(height + width - 1):
            rows = torch.arange(max(0, c - width + 1), min(c, height - 1) + 1)  # walk the diagonal top to bottom
            groups.append(rows * width + (c - rows))
        return groups
