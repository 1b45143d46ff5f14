"""Attention-locality maps: where a model's position queries look, binned by 2D offset from their target.

LPD (arXiv 2507.01957) motivates its locality-aware order by measuring that attention in a raster AR model decays
sharply with 2D distance. This module measures the same thing for a flexible-order model under any Plan: one
teacher-forced training forward of real tokens under the attention probe; for every query row (one per target
position) the attention mass on each content token is binned by the offset
``(dr, dc) = (content row - target row, content col - target col)`` and averaged over heads, queries and batch.

Which rows and keys the probe sees is the backbone's to say: its training layout
(:meth:`~orderlab.model.base.Backbone.train_rows`) tags every row as condition, content or query with the plan
index of its token, and :meth:`~orderlab.model.base.Backbone.attention_views` says which rows and keys each layer
of ``model.attention_modules()`` holds. A *query layer* is one whose rows include queries. For the stream backbone
every layer is one; for the decoupled backbone only the pass-2 cross-attention layers are (their keys are the
shared ``[cond] + [content]`` set, so the query mass is 0); for RandAR the queries are its position-instruction
tokens, and earlier groups' instruction tokens count as query keys. Each layer's weights are first brought to one
canonical key order, ``[cond (C)] + [content by plan index (N)] + [queries by plan index (N)]``.

Reading the scalar: ``share`` is the fraction of the content mass that falls within Chebyshev radius r of the
target. ``uniform_share`` is what the same queries would give with the same content masses spread uniformly over
the content tokens each one may see; share / uniform_share > 1 means attention is more local than chance.
:func:`uniform_baseline` is the model-free version (every query that sees content weighted equally).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from orderlab.checks import check_positive_int
from orderlab.decoding.decode import make_plans
from orderlab.model.base import COND, CONTENT, QUERY, Rows
from orderlab.model.masks import training_mask
from orderlab.model.probe import probe_attention
from orderlab.plan import Plan
from orderlab.schedule import Schedule

__all__ = ["LocalityMaps", "attention_locality", "locality_from_weights", "query_layers", "map_share",
           "uniform_baseline", "content_offsets"]


@dataclass
class LocalityMaps:
    """Attention locality of each probed layer (all dicts keyed by layer index into ``attention_modules()``).

    ``maps[l][dr + H - 1, dc + W - 1]`` is the mean (over batch, queries and heads) attention mass that a query puts
    on content tokens at offset (dr, dc) from its target, so ``maps[l].sum() == content_mass[l]``; the centre cell
    (the target itself) is always 0, because no query sees its own target.
    """

    height: int
    width: int
    radius: int
    maps: dict[int, torch.Tensor]
    """(2H - 1, 2W - 1) float64 on the CPU."""
    content_mass: dict[int, float]
    """Mean attention mass of a query on content tokens."""
    cond_mass: dict[int, float]
    """Mean attention mass of a query on the condition token(s)."""
    query_mass: dict[int, float]
    """Mean attention mass of a query on query rows (stream: its group under mutual, else itself; RandAR: also the
    instruction tokens of earlier groups; decoupled: 0)."""
    share: dict[int, float]
    """Share of the content mass within Chebyshev radius ``radius`` of the target (nan without content)."""
    uniform_share: dict[int, float]
    """The same share if every query spread its measured content mass uniformly over the content it sees."""


def query_layers(model) -> list[int]:
    """Indices into ``model.attention_modules()`` of the layers whose rows include the position queries."""
    n = model.config.num_tokens
    sizes = (1, n - 1) if n > 1 else (1,)  # any layout with content and queries tells which layers hold queries
    order = torch.arange(n).unsqueeze(0)  # (1, N)
    rows = model.train_rows(order, order, sizes)
    views = model.attention_views(rows)
    return [i for i, (r, _) in enumerate(views) if bool((rows.kinds[r] if r is not None else rows.kinds).eq(QUERY)
                                                             .any())]


def _canonical(weights: torch.Tensor, rows: Rows, view, n: int, num_cond: int) -> torch.Tensor:
    """(B, Hh, R, K) probed weights of one layer -> (B, N, C + N + N) head-averaged query rows in plan order over
    keys ``[cond] + [content by plan index] + [queries by plan index]``."""
    row_ids = torch.arange(len(rows.kinds)) if view[0] is None else view[0].cpu()
    key_ids = torch.arange(len(rows.kinds)) if view[1] is None else view[1].cpu()
    rk, ri = rows.kinds[row_ids], rows.index[row_ids]
    is_q = rk == QUERY
    sel = torch.nonzero(is_q).flatten()[torch.argsort(ri[is_q])]  # query rows in plan order
    wt = weights[:, :, sel].mean(1)  # (B, N, K)
    kk, ki = rows.kinds[key_ids], rows.index[key_ids]
    col = torch.where(kk == CONTENT, num_cond + ki, num_cond + n + ki)  # (K,)
    col = torch.where(kk == COND, torch.cumsum(kk == COND, 0) - 1, col)
    out = wt.new_zeros(wt.shape[0], n, num_cond + 2 * n)
    return out.index_add_(2, col.to(wt.device), wt)


def _query_sees_content(rows: Rows, n: int) -> torch.Tensor:
    """(N, N) bool: query j (plan order) may see the content token of plan index k, read off the layout's mask."""
    q = torch.nonzero(rows.kinds == QUERY).flatten()
    q = q[torch.argsort(rows.index[q])]
    c = torch.nonzero(rows.kinds == CONTENT).flatten()
    out = torch.zeros(n, n, dtype=torch.bool)
    out[:, rows.index[c]] = rows.mask.cpu()[q][:, c]
    return out


def content_offsets(orders: torch.Tensor, num_content: int, height: int, width: int) -> torch.Tensor:
    """Flat map index of every (query, content) pair: (B, N, Nc) into a (2H - 1) x (2W - 1) map.

    Query j targets ``orders[:, j]``; content k holds ``orders[:, k]`` (the training layout's plan order).
    """
    rows, cols = orders // width, orders % width  # (B, N)
    dr = rows[:, None, :num_content] - rows[:, :, None]  # (B, N, Nc) content row - target row
    dc = cols[:, None, :num_content] - cols[:, :, None]
    return (dr + height - 1) * (2 * width - 1) + (dc + width - 1)


def _within(offsets: torch.Tensor, height: int, width: int, radius: int) -> torch.Tensor:
    """(B, N, Nc) bool: the pair lies within Chebyshev distance ``radius`` of the target."""
    dr = offsets // (2 * width - 1) - (height - 1)
    dc = offsets % (2 * width - 1) - (width - 1)
    return torch.maximum(dr.abs(), dc.abs()) <= radius


def map_share(offset_map: torch.Tensor, radius: int) -> float:
    """Share of an offset map's mass within Chebyshev radius ``radius`` of the centre (nan for an empty map)."""
    h, w = (offset_map.shape[0] + 1) // 2, (offset_map.shape[1] + 1) // 2
    total = float(offset_map.sum())
    box = offset_map[max(0, h - 1 - radius):h + radius, max(0, w - 1 - radius):w + radius]
    return float(box.sum()) / total if total > 0 else float("nan")


def _check_plans(plans: list[Plan]) -> tuple[torch.Tensor, tuple[int, ...]]:
    if not plans:
        raise ValueError("locality needs at least one plan")
    if len({(p.sizes, p.height, p.width) for p in plans}) != 1 or any(p.num_known for p in plans):
        raise ValueError("locality needs plans of one grid with one shared list of group sizes and nothing known")
    return torch.stack([p.order for p in plans]), plans[0].sizes  # (B, N)


def _visible_content(sizes: tuple[int, ...], num_cond: int) -> torch.Tensor:
    """(N, Nc) bool: query j may see content k; read off the training mask so it cannot drift from masks.py."""
    nc = sum(sizes) - sizes[-1]
    mask = training_mask(sizes, num_cond)  # content visibility of queries does not depend on mutual/block
    return mask[num_cond + nc:, num_cond:num_cond + nc]


def uniform_baseline(plans: list[Plan], radius: int = 1) -> float:
    """Model-free reference: the mean, over queries that see any content, of the share of their visible content
    within Chebyshev radius ``radius`` of their target (uniform attention over visible content, equal weights)."""
    orders, sizes = _check_plans(plans)
    h, w = plans[0].height, plans[0].width
    nc = orders.shape[1] - sizes[-1]
    vis = _visible_content(sizes, 1)  # (N, Nc)
    near = _within(content_offsets(orders, nc, h, w), h, w, radius) & vis  # (B, N, Nc)
    seen = vis.sum(-1)  # (N,)
    if not bool((seen > 0).any()):
        return float("nan")
    per_query = near.sum(-1)[:, seen > 0].double() / seen[seen > 0]  # (B, N')
    return float(per_query.mean())


def locality_from_weights(weights: dict[int, torch.Tensor], plans: list[Plan], num_cond: int,
                          radius: int = 1, num_content: int | None = None,
                          visible: torch.Tensor | None = None) -> LocalityMaps:
    """Locality maps from head-averaged query attention weights (pure; the part :func:`attention_locality` probes).

    Args:
        weights: layer -> (B, N, K) attention of the N query rows (plan order) over keys
            ``[cond (C)] + [content (Nc)] + [queries (N), optional]``, each row summing to 1; content k holds the
            token of plan index k.
        plans: the B plans of the forward (one shared list of sizes).
        num_cond: C.
        radius: Chebyshev radius r of the scalar share.
        num_content: Nc (default N - sizes[-1], the stream layout's).
        visible: (N, Nc) bool, query j may see content k (default: the stream layout's training mask).
    """
    check_positive_int(radius, "radius", minimum=0)
    orders, sizes = _check_plans(plans)
    h, w = plans[0].height, plans[0].width
    b, n = orders.shape
    nc = n - sizes[-1] if num_content is None else num_content
    offsets = content_offsets(orders, nc, h, w)  # (B, N, Nc)
    vis = _visible_content(sizes, num_cond) if visible is None else visible  # (N, Nc)
    seen = vis.sum(-1).clamp(min=1).double()  # (N,) avoids 0/0 for group 0, whose content mass is 0 anyway
    uniform_q = (_within(offsets, h, w, radius) & vis).sum(-1).double() / seen  # (B, N) per-query uniform share
    out = LocalityMaps(h, w, radius, {}, {}, {}, {}, {}, {})
    for layer, wt in weights.items():
        if wt.shape[:2] != (b, n) or wt.shape[2] not in (num_cond + nc, num_cond + nc + n):
            raise ValueError(f"layer {layer}: weights {tuple(wt.shape)} do not fit B={b}, N={n}, C={num_cond}, "
                             f"Nc={nc}")
        wt = wt.detach().to("cpu", torch.float64)
        content = wt[:, :, num_cond:num_cond + nc]  # (B, N, Nc)
        flat = torch.zeros((2 * h - 1) * (2 * w - 1), dtype=torch.float64)
        flat.scatter_add_(0, offsets.reshape(-1), content.reshape(-1))
        mass_q = content.sum(-1)  # (B, N)
        out.maps[layer] = (flat / (b * n)).view(2 * h - 1, 2 * w - 1)
        out.content_mass[layer] = float(mass_q.mean())
        out.cond_mass[layer] = float(wt[:, :, :num_cond].sum(-1).mean())
        out.query_mass[layer] = float(wt[:, :, num_cond + nc:].sum(-1).mean()) if wt.shape[2] > num_cond + nc else 0.0
        out.share[layer] = map_share(out.maps[layer], radius)
        total = float(mass_q.sum())
        out.uniform_share[layer] = float((mass_q * uniform_q).sum()) / total if total > 0 else float("nan")
    return out


def attention_locality(model, tokens: torch.Tensor, labels: torch.Tensor, plans: list[Plan] | None = None, *,
                       schedule: Schedule | str | None = None, steps: int | None = None, seed: int = 0,
                       layers: list[int] | None = None, radius: int = 1, chunk: int = 8) -> LocalityMaps:
    """Attention-locality maps of ``model`` on real tokens: one teacher-forced training forward under the probe.

    Args:
        model: a backbone (orderlab.model.base.Backbone); run in eval mode without gradients.
        tokens: (B, H, W) real token ids.
        labels: (B,) class labels.
        plans: B plans with one shared list of sizes; or None and give ``schedule`` (+ ``steps``, ``seed``), which
            plans sample i from ``sample_generator(seed, i)`` exactly like :func:`orderlab.decoding.decode.generate`.
        layers: indices into ``model.attention_modules()``, all query layers when None (see :func:`query_layers`).
        radius: Chebyshev radius r of the scalar share.
        chunk: samples per forward; the probe keeps (chunk, heads, L, L) weights per layer, so this bounds memory.
    """
    cfg = model.config
    b = tokens.shape[0]
    if tuple(tokens.shape[1:]) != (cfg.height, cfg.width) or labels.shape != (b,):
        raise ValueError(f"tokens must be (B, {cfg.height}, {cfg.width}) with labels (B,), got "
                         f"{tuple(tokens.shape)} and {tuple(labels.shape)}")
    if plans is None:
        if schedule is None:
            raise ValueError("give either plans or a schedule")
        plans, _ = make_plans(schedule, cfg.height, cfg.width, steps, b, seed)
    if len(plans) != b:
        raise ValueError(f"{len(plans)} plans for a batch of {b}")
    valid = query_layers(model)
    count = len(model.attention_modules())
    chosen = valid if layers is None else [int(i) % count if -count <= int(i) < count else int(i) for i in layers]
    bad = [i for i in chosen if i not in valid]
    if bad:
        raise ValueError(f"attention layers {bad} hold no position queries; the query layers of this "
                         f"{type(model).__name__} are {valid}")
    n, c = cfg.num_tokens, cfg.cond_tokens
    orders, sizes = _check_plans(plans)
    flat = tokens.reshape(b, -1)
    targets = torch.gather(flat, 1, orders.to(flat.device))  # (B, N) plan order
    parts: dict[int, list[torch.Tensor]] = {i: [] for i in chosen}
    was_training = model.training
    model.eval()  # dropout off: the map describes the model, not a noise draw
    try:
        with torch.no_grad():
            for lo in range(0, b, max(1, chunk)):
                hi = min(b, lo + max(1, chunk))
                rows = model.train_rows(targets[lo:hi], orders[lo:hi].to(flat.device), sizes)
                views = model.attention_views(rows)
                with probe_attention(model, chosen) as probe:
                    model.forward_rows(labels[lo:hi], rows)
                for i in chosen:  # (B', Hh, R, K) -> (B', N, C + 2N)
                    parts[i].append(_canonical(probe.weights[i][0], rows, views[i], n, c).cpu())
    finally:
        model.train(was_training)
    weights = {i: torch.cat(p) for i, p in parts.items()}
    return locality_from_weights(weights, plans, c, radius, num_content=n, visible=_query_sees_content(rows, n))
