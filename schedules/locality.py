"""Locality-aware order: near the context, far from each other (LPD, arXiv 2507.01957, Algorithm 1)."""

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from orderlab.checks import check_positive_int
from orderlab.plan import Plan, PlanError
from orderlab.schedule import Schedule, _grid, _known_positions, batch_known, register_schedule
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

    def _sizes(self, m: int, steps: int | None) -> tuple[int, ...]:
        if steps is None:
            steps = len(self.sizes) if not isinstance(self.sizes, str) else natural_locality_steps(m)
        return resolve_sizes(self.sizes, m, steps)

    def _groups(self, height, width, steps, generator, is_known):
        """The reference algorithm, one sample at a time: it defines the order (``plan_batch`` must match it)."""
        n = height * width
        sizes = self._sizes(n - int(is_known.sum()), steps)
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

    def plan_batch(self, height, width, steps, generators, known=None):
        """Exactly ``[self.plan(...) for each generator]``, batched over the samples (see ``_batched_groups``).

        Each sample draws from its own generator the same calls as :meth:`plan`. Samples whose known masks differ,
        a generator passed twice (its draws would interleave) and grids over 16384 a side (int32 distances) go
        through :meth:`plan` one at a time.
        """
        gens = [torch.Generator().manual_seed(0) if g is None else g for g in generators]
        masks = batch_known(known, gens)
        n = _grid(height, width)
        kpos = [_known_positions(k, height, width) for k in masks]
        if (not gens or any(not torch.equal(k, kpos[0]) for k in kpos[1:]) or len(set(map(id, gens))) < len(gens)
                or max(height, width) > 1 << 14):
            return super().plan_batch(height, width, steps, gens, known=masks)
        is_known = torch.zeros(n, dtype=torch.bool)
        is_known[kpos[0]] = True
        groups = _batched_groups(self, height, width, steps, gens, is_known)  # T tensors (B, G_t)
        sizes = tuple(int(g.shape[1]) for g in groups)
        if steps is not None and len(sizes) != steps:
            raise AssertionError(f"{type(self).__name__} returned {len(sizes)} groups for steps={steps}")
        orders = torch.cat([kpos[0].expand(len(gens), -1), *groups], dim=1)  # (B, N)
        return [Plan(order=o.clone(), sizes=sizes, height=height, width=width, num_known=int(kpos[0].numel()))
                for o in orders]


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


# ------------------------------------------------------------------------------------------ batched path (B plans)
def _batched_groups(sched: Locality, height: int, width: int, steps: int | None, gens: list[torch.Generator],
                    is_known: torch.Tensor) -> list[torch.Tensor]:
    """``Locality._groups`` for B samples sharing ``is_known``, as T tensors (B, G_t); every step is the reference's.

    Per sample, the random draws are the reference's calls in the reference's order. The rest is batched: integer
    neighbour counts by shifted adds, the same float score and stable sort, the greedy phase as rounds of a
    parallel lexicographically-first independent set (``_greedy``), and the farthest-point fill over all samples
    that need one (``_fill``).
    """
    b, n = len(gens), height * width
    sizes = sched._sizes(n - int(is_known.sum()), steps)
    generated = is_known.expand(b, n).clone()  # (B, N)
    groups = []
    for g in sizes:
        free = torch.nonzero(~generated)[:, 1].view(b, -1)  # (B, M) ascending, as nonzero in the reference
        m = free.shape[1]
        free = free.gather(1, torch.stack([torch.randperm(m, generator=gen) for gen in gens]))
        edge, diag = _neighbour_counts(generated.view(b, height, width))  # (B, N) each
        score = (edge.double() + diag.double() * _INV_SQRT2).gather(1, free)  # (B, M) the reference's floats
        order = torch.argsort(-score, dim=1, stable=True)
        cand, score = free.gather(1, order), score.gather(1, order)  # (B, M) candidates in the reference order
        high = score >= sched.proximity - 1e-9  # (B, M) a prefix of each row
        accepted = _greedy(cand, high, g, sched.repulsion, height, width)  # (B, M) the picks, in candidate order
        num_picks = accepted.sum(1)  # (B,)
        # picks first, then the rest in candidate order: with every high cell decided, the rest is the reference's
        # pool (rejected + low; high[i:] is empty once the greedy phase runs out)
        arranged = cand.gather(1, torch.argsort((~accepted).to(torch.int8), dim=1, stable=True))  # (B, M)
        group = arranged[:, :g].clone()  # (B, G); the whole pool where it fits (reference: len(pool) <= k)
        short = torch.nonzero(num_picks < g).flatten().tolist()
        if short and g < m:
            anchors = torch.zeros(b, n, dtype=torch.bool)
            anchors.scatter_(1, arranged[:, :g], torch.arange(g) < num_picks[:, None])  # each sample's picks
            if sched.fill == "generated":
                anchors |= generated
            group[short] = _fill(arranged[short], num_picks[short], g, anchors[short], height, width,
                                 [gens[i] for i in short])
        generated.scatter_(1, group, True)
        groups.append(group)
    return groups


def _neighbour_counts(generated: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) bool -> (#generated edge neighbours, #generated diagonal neighbours), each (B, N) int64."""
    p = F.pad(generated.long(), (1, 1, 1, 1))  # (B, H + 2, W + 2)
    edge = p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:]
    diag = p[:, :-2, :-2] + p[:, :-2, 2:] + p[:, 2:, :-2] + p[:, 2:, 2:]
    return edge.flatten(1), diag.flatten(1)


def _greedy(cand: torch.Tensor, high: torch.Tensor, g: int, r: int, height: int, width: int) -> torch.Tensor:
    """The reference's greedy phase for B samples: (B, M) bool, True at the first g cells (in candidate order)
    that are high and more than ``r`` (Chebyshev) from every earlier accepted cell.

    Accepting in order is the lexicographically first independent set of the high cells in the graph "within r",
    computed in rounds: a cell is rejected once an earlier neighbour is accepted, and accepted once no earlier
    neighbour is undecided (then none is accepted; an accepted neighbour of an undecided cell is always an earlier
    one). Window minima of ranks over the grid find both. A sample is done once its first g accepts precede every
    undecided cell; only the samples not done yet take part in the next round.
    """
    b, m = cand.shape
    rank_of = torch.where(high, torch.arange(m, dtype=torch.float32), torch.inf)  # (B, M) rank, inf for low
    if r == 0:  # no conflicts: every high cell is accepted
        accepted = high.clone()
    else:
        rank = torch.full((b, height * width), torch.inf).scatter_(1, cand, rank_of)  # (B, N), inf: not high
        accepted = torch.zeros(b, height * width, dtype=torch.bool)
        live, und, acc = torch.arange(b), torch.isfinite(rank), accepted.clone()  # the samples not done yet
        while live.numel():
            und &= ~(_window_min(torch.where(acc, rank, torch.inf), r, height, width) < rank)  # rejected
            new = und & (_window_min(torch.where(und, rank, torch.inf), r, height, width) == rank)
            acc |= new
            und &= ~new
            first_und = torch.where(und, rank, torch.inf).amin(1, keepdim=True)  # (L, 1)
            done = ((acc & (rank < first_und)).sum(1) >= g) | torch.isinf(first_und[:, 0])  # (L,)
            if done.any():
                accepted[live[done]] = acc[done]
                live, rank, und, acc = live[~done], rank[~done], und[~done], acc[~done]
        accepted = accepted.gather(1, cand)  # (B, M) in candidate order
    return accepted & (accepted.cumsum(1) <= g)


def _window_min(x: torch.Tensor, r: int, height: int, width: int) -> torch.Tensor:
    """(B, N) float -> (B, N): the minimum over each cell's (2r + 1)^2 window (cells outside the grid ignored)."""
    return _running_min(_running_min(x.view(-1, height, width), r, 2), r, 1).reshape(x.shape)


def _running_min(x: torch.Tensor, r: int, dim: int) -> torch.Tensor:
    """The minimum over x[j - r .. j + r] along ``dim`` (1 or 2 of a 3-d tensor) by doubling: ~log2(2r + 1) ops."""
    k, size = 2 * r + 1, x.shape[dim]
    m = F.pad(x, (r, r) if dim == 2 else (0, 0, r, r), value=math.inf)  # m[s]: min of the 1 cell from s
    span = 1
    while 2 * span <= k:  # m[s]: min of the ``span`` cells from s, for every s where they lie in the padded row
        n = m.shape[dim] - span
        m, span = torch.minimum(m.narrow(dim, 0, n), m.narrow(dim, span, n)), 2 * span
    return torch.minimum(m.narrow(dim, 0, size), m.narrow(dim, k - span, size))  # two spans cover k cells


def _fill(arranged: torch.Tensor, num_picks: torch.Tensor, g: int, anchors: torch.Tensor, height: int, width: int,
          gens: list[torch.Generator]) -> torch.Tensor:
    """``_farthest_points`` for S samples at once: (S, G) = each sample's picks, then its G - picks fill cells.

    Row s of ``arranged`` (S, M) holds the sample's ``num_picks[s]`` picks, then its pool in pool order (longer
    than the fill, G < M); ``anchors`` (S, N) marks the cells distances are measured from. Ties go to the first
    cell in pool order (argmax, in the pool's columns); with no anchor the first cell is the generator's draw.
    """
    s, m = arranged.shape
    rows, cols = arranged // width, arranged % width  # (S, M)
    dist2 = _squared_distance_to(anchors.view(s, height, width)).gather(1, arranged)  # (S, M) int64
    dist2[torch.arange(m) < num_picks[:, None]] = -1  # the picks are no candidates
    j = torch.argmax(dist2, 1)  # (S,) first pick
    for i in torch.nonzero(~anchors.any(1)).flatten().tolist():  # then num_picks[i] == 0: the pool is the row
        j[i] = int(torch.randint(m, (1,), generator=gens[i]))
    todo = g - num_picks  # (S,)
    out = torch.cat([arranged[:, :g], arranged.new_empty(s, int(todo.max()))], dim=1)  # (S, G + max todo)
    for t in range(int(todo.max())):
        if t:
            j = torch.argmax(dist2, 1)
        jj = j[:, None]
        out.scatter_(1, num_picks[:, None] + t, arranged.gather(1, jj))  # past column G once a sample is done
        d = (rows - rows.gather(1, jj)).square_() + (cols - cols.gather(1, jj)).square_()
        dist2 = torch.minimum(dist2, d).scatter_(1, jj, -1)
    return out[:, :g]


def _squared_distance_to(anchors: torch.Tensor) -> torch.Tensor:
    """(S, H, W) bool -> (S, N) int64: exact squared distance of every cell to its nearest anchor (>= 2**30: none).

    Separable: the nearest anchor within each row first (a scan each way), then the best row, so no (N, N) table is
    needed. The row minimum is in int32 (int64 reductions are an order of magnitude slower).
    """
    s, h, w = anchors.shape
    idx = torch.arange(w)
    left = torch.where(anchors, idx, -2 * w).cummax(2).values  # (S, H, W) nearest anchor at or left of each cell
    right = torch.where(anchors, idx, 3 * w).flip(2).cummin(2).values.flip(2)  # ... at or right of it
    in_row = torch.minimum((idx - left).square(), (right - idx).square())  # (S, H, W)
    in_row = torch.where(in_row < w * w, in_row, 1 << 30).int()  # no anchor in the row: far
    dr = (torch.arange(h)[:, None] - torch.arange(h)[None]).square().int()  # (H, H)
    return (dr[None, :, :, None] + in_row[:, None, :, :]).amin(2).flatten(1).long()  # (S, H, W) -> (S, N)
