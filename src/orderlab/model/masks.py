"""Attention masks of the default (query-stream) layout, derived from a Plan's group structure (pure functions);
:class:`orderlab.model.base.Backbone` lays out the rows they belong to.

Training layout: ``[cond (C)] + [content of groups 0..T-2 in plan order] + [one query per target, N]``; the last
group's content is dropped because nothing ever attends to it (following LPD). Decode step t feeds
``[content of group t-1] + [queries of group t]`` (``[cond] + [known] + [queries of group 0]`` at t = 0) on top of
a KV cache of cond, known and generated tokens. Who sees whom depends only on (kind, group) of each row, so one
mask serves a batch whose samples have different orders but the same sizes:

    row \\ sees      cond   content of earlier groups   content of own group    queries of own group   other queries
    content, grp t  yes    yes                         block: all / causal     no                     no
    query,   grp t  yes    yes                         no                      mutual: all / itself   no

Known tokens (inpainting) act as content of a group -1 that precedes every generated group.
"""

from __future__ import annotations

from functools import lru_cache

import torch

__all__ = ["training_mask", "step_mask", "step_cache_rows", "COND", "CONTENT", "QUERY"]

COND, CONTENT, QUERY = 0, 1, 2


def _items(num_cond: int, content: list[tuple[int, int]], queries: list[tuple[int, int]]):
    """Kind, group and index-in-group of each row of a layout: three (L,) LongTensors."""
    kinds, groups, idx = [COND] * num_cond, [-2] * num_cond, list(range(num_cond))
    for kind, spans in ((CONTENT, content), (QUERY, queries)):
        for group, size in spans:
            kinds += [kind] * size
            groups += [group] * size
            idx += list(range(size))
    return torch.tensor(kinds), torch.tensor(groups), torch.tensor(idx)


def _visibility(rows, cols, mutual: bool, block: bool) -> torch.Tensor:
    """(R, K) bool: True where a row may attend to a column, by the table in the module docstring."""
    rk, rg, ri = (t.unsqueeze(1) for t in rows)  # (R, 1)
    ck, cg, ci = (t.unsqueeze(0) for t in cols)  # (1, K)
    cond_row, content_row, query_row = rk == COND, rk == CONTENT, rk == QUERY
    sees_cond = ck == COND
    earlier_content = (ck == CONTENT) & (cg < rg)
    own_content = (ck == CONTENT) & (cg == rg) & (torch.ones_like(ci, dtype=torch.bool) if block else ci <= ri)
    own_query = (ck == QUERY) & (cg == rg) & (torch.ones_like(ci, dtype=torch.bool) if mutual else ci == ri)
    return (cond_row & sees_cond) | (content_row & (sees_cond | earlier_content | own_content)) | (
        query_row & (sees_cond | earlier_content | own_query))


def _check_sizes(sizes) -> tuple[int, ...]:
    sizes = tuple(int(s) for s in sizes)
    if not sizes or min(sizes) < 1:
        raise ValueError(f"group sizes must be a non-empty list of ints >= 1, got {list(sizes)}")
    return sizes


@lru_cache(maxsize=64)
@torch.inference_mode(False)  # cached: must serve training even when first built while sampling
def _training_mask(sizes: tuple[int, ...], num_cond: int, mutual: bool, block: bool) -> torch.Tensor:
    content = [(g, s) for g, s in enumerate(sizes[:-1])]
    items = _items(num_cond, content, list(enumerate(sizes)))
    return _visibility(items, items, mutual, block)


def training_mask(sizes, num_cond: int = 1, mutual: bool = True, block: bool = True,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """(L, L) bool mask of the training layout, L = C + (N - sizes[-1]) + N."""
    return _training_mask(_check_sizes(sizes), num_cond, bool(mutual), bool(block)).to(device)


@lru_cache(maxsize=512)
@torch.inference_mode(False)  # cached: must serve training even when first built while sampling
def _step_mask(sizes: tuple[int, ...], t: int, num_cond: int, num_known: int, mutual: bool, block: bool):
    known = [(-1, num_known)] if num_known else []
    cols = _items(num_cond, known + [(g, sizes[g]) for g in range(t)], [(t, sizes[t])])
    if t == 0:
        rows = cols
    else:
        rows = _items(0, [(t - 1, sizes[t - 1])], [(t, sizes[t])])
    return _visibility(rows, cols, mutual, block)


def step_mask(sizes, t: int, num_cond: int = 1, num_known: int = 0, mutual: bool = True, block: bool = True,
              device: torch.device | str | None = None) -> torch.Tensor:
    """(R, K) bool mask of decode step t: R new rows against K = cached + new content + new queries."""
    sizes = _check_sizes(sizes)
    if not 0 <= t < len(sizes):
        raise ValueError(f"step t={t} is outside 0..{len(sizes) - 1}")
    return _step_mask(sizes, t, num_cond, num_known, bool(mutual), bool(block)).to(device)


def step_cache_rows(sizes, t: int, num_cond: int = 1, num_known: int = 0) -> int:
    """How many leading rows of decode step t join the KV cache (cond + known at t = 0, else group t-1)."""
    return num_cond + num_known if t == 0 else int(sizes[t - 1])
