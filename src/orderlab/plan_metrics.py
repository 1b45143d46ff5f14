"""Locality metrics of a Plan: how close each new token is to the context, and how close a group's members are.

They depend on the Plan only (no model, no data); each is defined in its docstring below.
"""

from __future__ import annotations

import math

import torch

from orderlab.plan import Plan

__all__ = ["plan_metrics", "METRIC_NAMES"]

METRIC_NAMES: tuple[str, ...] = ("nearest_dist", "generated_neighbours", "adjacent_pairs", "min_intra_dist")

# Pairwise distances are computed in row blocks so that memory stays O(_CHUNK * N), not O(N^2), on big grids.
_CHUNK = 1024
# The eight neighbour offsets (dr, dc); each unordered pair appears twice, once per direction.
_OFFSETS = tuple((dr, dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc)


def plan_metrics(plan: Plan) -> dict[str, float]:
    """Locality metrics of a Plan.

    Convention (the one that reproduces the published table of these metrics to its printed precision; e.g. 16x16
    raster at T=20 with ``lpd`` sizes gives 1.16 / 2.51 / 289 / 1.00 and diagonal at T=31 gives 1.00 / 2.76 / 225 / 1.41):

    - A token of step t "sees" the tokens of steps < t; the known tokens (``plan.num_known``) count as generated
      before step 0. Tokens that see nothing (the first group when nothing is known) are *skipped* by both
      context metrics, not counted as zero: counting them as 0 neighbours gives 2.50 / 2.75 / 2.64 / 3.63 for
      raster / diagonal / lshape / multiscale instead of the reference 2.51 / 2.76 / 2.65 / 3.65.
    - ``nearest_dist``: mean over those tokens of the Euclidean distance to the nearest token they see.
    - ``generated_neighbours``: mean over the same tokens of how many of their 8-neighbours they see.
    - ``adjacent_pairs``: unordered pairs of one group that are 8-adjacent (Chebyshev distance 1), summed over
      groups (known tokens form no group).
    - ``min_intra_dist``: mean over groups with >= 2 members of the smallest Euclidean distance inside the group.
    - ``steps``: T.

    A mean over an empty set (a 1x1 grid, or every group of size 1 for ``min_intra_dist``) is NaN.

    Returns:
        ``{"steps", "nearest_dist", "generated_neighbours", "adjacent_pairs", "min_intra_dist"}`` as floats.
    """
    h, w, n = plan.height, plan.width, plan.num_tokens
    step = plan.step_of  # (N,) group index, -1 for known cells
    rows = torch.arange(n) // w  # (N,)
    cols = torch.arange(n) % w  # (N,)
    generated = step >= 0  # (N,) cells that some step generates

    # 8-neighbour counts by shifting the (H, W) step map: O(8N) instead of an N x N table.
    smap = plan.step_map()  # (H, W)
    earlier_nbrs = torch.zeros(h, w, dtype=torch.long)  # (H, W)
    same_nbrs = torch.zeros(h, w, dtype=torch.long)  # (H, W)
    for dr, dc in _OFFSETS:
        me, nb = _overlap(smap, dr, dc)
        earlier_nbrs[_slices(h, w, dr, dc)] += (nb < me).long()
        same_nbrs[_slices(h, w, dr, dc)] += ((nb == me) & (me >= 0)).long()
    adjacent_pairs = int(same_nbrs.sum()) // 2  # every pair was counted from both ends

    # Nearest earlier token and nearest same-group token, by blocks of rows of the pairwise distance matrix.
    xy = torch.stack([rows, cols], dim=1).double()  # (N, 2)
    nearest = torch.full((n,), math.inf, dtype=torch.float64)  # (N,) distance to the nearest earlier token
    intra = torch.full((n,), math.inf, dtype=torch.float64)  # (N,) distance to the nearest other group member
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        dist = torch.cdist(xy[lo:hi], xy)  # (chunk, N)
        mine = step[lo:hi, None]  # (chunk, 1)
        nearest[lo:hi] = dist.masked_fill(~(step[None, :] < mine), math.inf).min(dim=1).values
        same = (step[None, :] == mine) & (mine >= 0)  # (chunk, N)
        same[:, lo:hi].fill_diagonal_(False)  # a token is not its own neighbour
        intra[lo:hi] = dist.masked_fill(~same, math.inf).min(dim=1).values

    sees = generated & torch.isfinite(nearest)  # (N,) generated tokens with some earlier token
    group_min = torch.full((plan.num_steps,), math.inf, dtype=torch.float64)  # (T,)
    group_min = group_min.scatter_reduce(0, step[generated], intra[generated], reduce="amin")
    multi = torch.tensor(plan.sizes) >= 2  # (T,) groups that have a pairwise distance at all

    return {
        "steps": float(plan.num_steps),
        "nearest_dist": _mean(nearest[sees]),
        "generated_neighbours": _mean(earlier_nbrs.reshape(-1)[sees].double()),
        "adjacent_pairs": float(adjacent_pairs),
        "min_intra_dist": _mean(group_min[multi]),
    }


def _mean(x: torch.Tensor) -> float:
    return float(x.mean()) if x.numel() else math.nan


def _slices(h: int, w: int, dr: int, dc: int) -> tuple[slice, slice]:
    """Cells (r, c) of an (H, W) map whose neighbour (r + dr, c + dc) lies inside the grid."""
    return slice(max(0, -dr), h - max(0, dr)), slice(max(0, -dc), w - max(0, dc))


def _overlap(smap: torch.Tensor, dr: int, dc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The step of every cell that has a neighbour at (dr, dc), and that neighbour's step: two equal-shape views."""
    h, w = smap.shape
    me = smap[_slices(h, w, dr, dc)]
    nb = smap[_slices(h, w, -dr, -dc)]
    return me, nb
