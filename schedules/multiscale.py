"""Coarse-to-fine dyadic lattice on the flat grid (Reed et al. 2017's multiscale split; definition ours)."""

import math
from dataclasses import dataclass

import torch

from orderlab.schedule import GeometricSchedule, register_schedule


@register_schedule("multiscale")
@dataclass(frozen=True)
class Multiscale(GeometricSchedule):
    """(0, 0) first, then for strides s = 2^(K-1) .. 1 three groups: (even, odd), (odd, even), (odd, odd) multiples of s.

    K = ceil(log2(max(H, W))); cells outside the grid are dropped and empty groups skipped, so non-square and
    non-power-of-two grids work. Natural budget: 1 + 3K on power-of-two square grids (13 at 16x16). Members of a
    stride-s group are at least 2s apart; every new cell has a generated cell at Chebyshev distance s.
    """

    def natural_groups(self, height: int, width: int) -> list[torch.Tensor]:
        levels = math.ceil(math.log2(max(height, width))) if max(height, width) > 1 else 0
        rows = torch.arange(height).unsqueeze(1).expand(height, width)  # (H, W)
        cols = torch.arange(width).unsqueeze(0).expand(height, width)  # (H, W)
        pos = torch.arange(height * width).reshape(height, width)  # (H, W)
        groups = [torch.tensor([0])]
        for lvl in range(1, levels + 1):
            s = 2 ** (levels - lvl)
            ri, ci = rows % (2 * s), cols % (2 * s)
            for want_r, want_c in ((0, s), (s, 0), (s, s)):  # upper-right, lower-left, centre
                g = pos[(ri == want_r) & (ci == want_c)]  # raster order inside the group
                if g.numel():
                    groups.append(g)
        return groups
