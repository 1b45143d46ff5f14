"""Locality-aware order: near the context, far from each other (LPD, arXiv 2507.01957, Algorithm 1)."""

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from orderlab.checks import check_positive_int
from orderlab.plan import PlanError
from orderlab.schedule import Schedule, register_schedule
from orderlab.sizes import SizeSpec, resolve_sizes

_FILLS = ("group", "generated")
_PUBLISHED_BUDGET = {256: 20, 1024: 48}  # LPD's evaluated budgets at 256 px and 512 px


def natural_locality_steps(n: int) -> int:
    """LPD's published budget where one exists (256 -> 20, 1024 -> 48), else round(1.25 * sqrt(N)) (ours)."""
    return _PUBLISHED_BUDGET.get(n, max(1, min(n, round(1.25 * math.sqrt(n)))))


@register_schedule("locality")
@dataclass(frozen=True)
class Locality(Schedule):
    """LPD's locality-aware order, following ``lpd/orders/lpd_order.py``.

    Each step scores every free cell by proximity to generated cells (sum of 1/distance over generated
    8-neighbours), shuffles then stable-sorts by score, and greedily accepts cells with score >= ``proximity`` that
    are more than ``repulsion`` (Chebyshev) from the group's earlier picks. If that leaves the group short, the
    rest comes by farthest-point sampling from the rejected, unvisited and low-score cells, measured against the
    group's own picks (LPD) or against every generated cell too (``fill="generated"``, an ablation LPD lacks).
    The first pick of an empty group with nothing generated is uniformly random.

    Natural budget: LPD's own (20 steps at 16x16, 48 at 32x32), elsewhere round(1.25 * sqrt(N)).
    """

    stochastic: ClassVar[bool] = True
    sizes: SizeSpec = "lpd"
    """Group-size rule (cosine, arccos, uniform, lpd, power:p) or an explicit list; LPD wants a first group of 1."""
    proximity: float = 1.0
    """tau_p: minimum proximity score for the greedy phase (1.0 = one edge or two diagonal neighbours)."""
    repulsion: int = 2
    """tau_r: picks of one group must be more than this many cells apart (Chebyshev); LPD uses 2 at 16x16, 4 at 32x32."""
    fill: str = "group"
    """Farthest-point fill measured against the group's picks ("group", LPD) or also all generated cells."""

    def __post_init__(self) -> None:
        if not (isinstance(self.proximity, (int, float)) and math.isfinite(self.proximity) and self.proximity >= 0):
            raise PlanError(f"locality: proximity must be a finite number >= 0, got {self.proximity!r}")
        check_positive_int(self.repulsion, "locality: repulsion", minimum=0, error=PlanError)
        if self.fill not in _FILLS:
            raise PlanError(f"locality: fill={self.fill!r} is not one of {list(_FILLS)}")

    def _groups(self, height, width, steps, generator, is_known):
        n = height * width
        m = n - int(is_known.sum())
        if steps is None:
            steps = len(self.sizes) if not isinstance(self.sizes, str) else natural_locality_steps(m)
        sizes = resolve_sizes(self.sizes, m, steps)
        rows, cols = (torch.arange(n) // width).tolist(), (torch.arange(n) % width).tolist()
        nbrs = _neighbours(height, width)
        generated = is_known.clone()  # (N,)
        # A cell's proximity is (#generated edge neighbours) + (#generated diagonal neighbours) / sqrt(2). It is kept
        # as the two integer counts, so equal scores are equal exactly, whatever order the neighbours arrived in;
        # distinct counts (each 0..4) differ by >= 0.12, so one float per cell orders them exactly (ties included).
        edge, diag = [0] * n, [0] * n
        for p in torch.nonzero(is_known).flatten().tolist():
            _add_neighbours(nbrs[p], edge, diag)
        groups = []
        for g in sizes:
            free = torch.nonzero(~generated).flatten()  # (M,)
            free = free[torch.randperm(free.numel(), generator=generator)]  # random tie-break
            score = torch.tensor([edge[c] + diag[c] * _INV_SQRT2 for c in free.tolist()], dtype=torch.float64)  # (M,)
            order = torch.argsort(-score, stable=True)
            free, score = free[order], score[order]
            high_mask = score >= self.proximity - 1e-9
            high, low = free[high_mask].tolist(), free[~high_mask].tolist()
            picks, rejected, i = [], [], 0
            while i < len(high) and len(picks) < g:
                c = high[i]
                i += 1
                r = self.repulsion
                if any(abs(rows[c] - rows[a]) <= r and abs(cols[c] - cols[a]) <= r for a in picks):
                    rejected.append(c)
                else:
                    picks.append(c)
            if len(picks) < g:
                pool = rejected + high[i:] + low
                anchors = picks + (torch.nonzero(generated).flatten().tolist() if self.fill == "generated" else [])
                picks += _farthest_points(pool, g - len(picks), anchors, width, generator)
            group = torch.tensor(picks, dtype=torch.long)
            generated[group] = True
            for p in picks:
                _add_neighbours(nbrs[p], edge, diag)
            groups.append(group)
        return groups


_INV_SQRT2 = 1 / math.sqrt(2)  # IEEE sqrt and division are correctly rounded: the same float on every machine


def _add_neighbours(cells: tuple[tuple[int, bool], ...], edge: list[int], diag: list[int]) -> None:
    """Count one more generated neighbour for each of ``cells`` ((cell, is_diagonal) pairs)."""
    for q, is_diag in cells:
        if is_diag:
            diag[q] += 1
        else:
            edge[q] += 1


@functools.lru_cache(maxsize=64)
def _neighbours(height: int, width: int) -> tuple[tuple[tuple[int, bool], ...], ...]:
    """For every cell, its 8-neighbours as (cell, is_diagonal); an edge weighs 1, a diagonal 1/sqrt(2) (LPD)."""
    out = []
    for p in range(height * width):
        r, c = divmod(p, width)
        out.append(tuple(((r + dr) * width + c + dc, bool(dr and dc))
                         for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                         if (dr or dc) and 0 <= r + dr < height and 0 <= c + dc < width))
    return tuple(out)


def _farthest_points(pool: list[int], k: int, anchors: list[int], width: int,
                     generator: torch.Generator) -> list[int]:
    """Pick k cells of ``pool`` one by one, each maximising its Euclidean distance to the anchors and earlier picks.

    Distances are compared squared, as exact integers, so no rounding (BLAS, CPU flags, thread count) can decide a
    pick. Ties go to the first cell in pool order; with no anchor the first pick is uniformly random. Following LPD.
    """
    if len(pool) <= k:
        return list(pool)
    cand = torch.tensor(pool, dtype=torch.long)
    xy = torch.stack([cand // width, cand % width], dim=1)  # (P, 2) int64
    far = torch.iinfo(torch.long).max
    dist2 = torch.full((len(pool),), far, dtype=torch.long)  # (P,) squared distance to the nearest anchor or pick
    if anchors:
        a = torch.tensor(anchors, dtype=torch.long)
        axy = torch.stack([a // width, a % width], dim=1)  # (A, 2)
        dist2 = (xy[:, None, :] - axy[None, :, :]).pow(2).sum(-1).amin(1)  # (P,)
    picked = []
    for _ in range(k):
        if not picked and not anchors:
            j = int(torch.randint(len(pool), (1,), generator=generator))
        else:
            j = int(torch.argmax(dist2))  # integers: the first maximum, i.e. the first in pool order
        picked.append(j)
        dist2 = torch.minimum(dist2, (xy - xy[j]).pow(2).sum(1))
        dist2[picked] = -1
    return [pool[j] for j in picked]
