"""L-shaped rings max(i, j) = k around the top-left cell (Lformer, arXiv 2303.03800)."""

from dataclasses import dataclass

import torch

from orderlab.schedule import GeometricSchedule, register_schedule


@register_schedule("lshape")
@dataclass(frozen=True)
class LShape(GeometricSchedule):
    """Group k holds the cells with max(i, j) = k. Natural budget: max(H, W); on non-square grids rings are clipped.

    Within a ring the order follows Lformer's ``to_L_order``: down column k from the top, then left along row k.
    """

    def natural_groups(self, height: int, width: int) -> list[torch.Tensor]:
        groups = []
        for k in range(max(height, width)):
            col = torch.arange(min(k + 1, height)) * width + k if k < width else torch.empty(0, dtype=torch.long)
            row = k * width + torch.arange(min(k, width) - 1, -1, -1) if k < height else torch.empty(0, dtype=torch.long)
            groups.append(torch.cat([col, row]))
        return groups
