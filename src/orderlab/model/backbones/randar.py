"""RandAR's backbone (arch ``randar``; Pang et al., arXiv 2412.01827, following ziqipang/RandAR).

A decoder-only transformer whose sequence puts a *position instruction token* before every image token:
``[cond, p(o1), x(o1), p(o2), x(o2), ...]``. The instruction token p(j) is one learned vector rotated by the 2D RoPE
of its target position (and attends with that RoPE); its output predicts x(j). Instruction tokens stay in the
sequence, so later tokens attend to them too. Two modes (``model.backbone.options.mode``):

- ``plan`` (default): the masks follow the Plan's groups. p(j) of group t sees the condition, every p and x of
  earlier groups, and the instruction tokens of its own group (all of them under ``mutual``, else itself); x(j)
  sees the same earlier groups, every instruction token of its group and its group's tokens (all under ``block``,
  else those before it). Decode step t feeds ``[x of group t-1] + [p of group t]`` and caches all of it, one
  forward per step, and training equals decoding exactly for every schedule.
- ``causal``: RandAR's own model. Training is causal over the interleaved sequence, whatever the groups. Decoding
  feeds a group's instruction tokens together (causal among themselves), keeps the first one cached (its context
  is complete), and at the next step re-feeds the others interleaved with their sampled tokens
  ``[x(a0), p(a1), x(a1), ...]``, so instruction tokens stay in the cache. A query of a group then misses the
  tokens sampled beside it, which training showed it: decoding equals training only at one token per step (where
  the two modes are the same model function).

Every row is described by (kind, plan index j, group g); one visibility rule per mode turns two such lists into a
mask, so training, decode steps and Jacobi passes cannot disagree about who sees whom.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from orderlab.model.backbones.stream import StreamTransformer
from orderlab.model.base import COND, CONTENT, QUERY, Rows
from orderlab.model.config import ModelConfig
from orderlab.model.layers import apply_rope, rope_tables
from orderlab.model.registry import register_backbone

__all__ = ["RandARTransformer", "RandAROptions", "MODES"]

MODES = ("plan", "causal")
Item = tuple[int, int, int]  # (kind, plan index j, group g); condition rows are (COND, -1 - c, -2)


@dataclass
class RandAROptions:
    mode: str = "plan"
    """``plan`` (Plan-derived masks; train == decode for every schedule) or ``causal`` (RandAR's own)."""


def _groups(sizes: tuple[int, ...], num_known: int) -> list[list[int]]:
    """Plan indices of each generated group (known tokens take plan indices 0..K-1)."""
    out, j = [], num_known
    for s in sizes:
        out.append(list(range(j, j + s)))
        j += s
    return out


def _visible(rows: list[Item], cols: list[Item], mode: str, mutual: bool, block: bool) -> torch.Tensor:
    """(R, K) bool: row may attend to column, by the mode's rule (see the module docstring)."""
    rk, rj, rg = (torch.tensor(v).unsqueeze(1) for v in zip(*rows))  # (R, 1)
    ck, cj, cg = (torch.tensor(v).unsqueeze(0) for v in zip(*cols))  # (1, K)
    cond_r, cond_c = rk == COND, ck == COND
    if mode == "causal":  # sequence order: p(j) at 2j, x(j) at 2j + 1
        seq_r, seq_c = 2 * rj + (rk == CONTENT), 2 * cj + (ck == CONTENT)
        return (cond_r & cond_c) | (~cond_r & (cond_c | (seq_c <= seq_r)))
    same = (rg == cg) & ~cond_c
    p_r, x_r, p_c, x_c = rk == QUERY, rk == CONTENT, ck == QUERY, ck == CONTENT
    own = (p_r & p_c & (cj == rj if not mutual else torch.ones_like(same))) | (x_r & p_c) | (
        x_r & x_c & (cj <= rj if not block else torch.ones_like(same)))
    return (cond_r & cond_c) | (~cond_r & (cond_c | (~cond_c & (cg < rg)) | (same & own)))


@lru_cache(maxsize=512)
@torch.inference_mode(False)  # cached tensors must serve training too, even when first built while sampling
def _step(sizes: tuple[int, ...], t: int, num_cond: int, num_known: int, mode: str, mutual: bool, block: bool):
    """Decode step t: its items, how many of them join the cache, the (R, K) mask and the logit rows (G,)."""
    groups = _groups(sizes, num_known)
    cond = [(COND, -1 - i, -2) for i in range(num_cond)]
    known = [item for j in range(num_known) for item in ((QUERY, j, -1), (CONTENT, j, -1))]

    def pair(j: int, g: int) -> list[Item]:
        return [(QUERY, j, g), (CONTENT, j, g)]

    cached: list[Item] = cond + known
    for s in range(t + 1):
        queries = [(QUERY, j, s) for j in groups[s]]
        if s == 0:
            new_cached, uncached = cond + known, queries
        elif mode == "plan":
            new_cached, uncached = [(CONTENT, j, s - 1) for j in groups[s - 1]], queries
        else:  # re-feed the previous group interleaved; its first instruction token is cached already
            prev = [item for j in groups[s - 1] for item in pair(j, s - 1)][1:]
            new_cached, uncached = prev, queries
        if mode == "plan":
            new_cached, uncached = new_cached + uncached, []  # instruction tokens are final when fed: cache them
        else:
            new_cached, uncached = new_cached + queries[:1], queries[1:]
        if s < t:
            cached += new_cached if s else new_cached[len(cond) + len(known):]
    new = new_cached + uncached
    before = cached if t else []
    mask = _visible(new, before + new, mode, mutual, block)
    logit_rows = torch.tensor([i for i, item in enumerate(new) if item[0] == QUERY and item[2] == t])
    return new, len(new_cached), mask, logit_rows


@register_backbone("randar")
class RandARTransformer(StreamTransformer):
    """Interleaved instruction + token rows through ``depth`` LlamaGen blocks (one stream, like RandAR's GPT): the
    stream model's blocks and forward passes, with RandAR's instruction embedding and its own layout."""

    Options = RandAROptions
    mask_embedding = False  # instruction rows are the instruction vector, not a [MASK] embedding (as RandAR)

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        if config.input_norm:  # embed() replaces rows after the base embedding, which the norm would have mixed in
            raise ValueError("model.input_norm is not supported by the randar backbone")
        if self.options.mode not in MODES:
            raise ValueError(f"model.backbone.options.mode={self.options.mode!r} is not one of {list(MODES)}")
        self.instruct = nn.Parameter(torch.zeros(config.dim))  # RandAR's pos_instruct_embeddings
        nn.init.normal_(self.instruct, std=0.02)

    @property
    def mode(self) -> str:
        return self.options.mode

    # ------------------------------------------------------------------------------------------------- model
    def embed_tokens(self, tokens):
        """Token rows as the base class; instruction rows get a placeholder that :meth:`embed` replaces."""
        inst = tokens == self.mask_id
        x = self.tok_emb(tokens.masked_fill(inst, 0))  # (B, R', D)
        if self.training and self.token_drop.p > 0:  # RandAR drops token embeddings only
            x = torch.where(inst.unsqueeze(-1), x, self.token_drop(x))
        return x

    def embed(self, labels, tokens, positions):
        """Instruction rows (``mask_id``) become the instruction vector rotated to their target (following RandAR)."""
        x, pos = super().embed(labels, tokens, positions)  # (B, R, D)
        c = self.config
        inst = tokens == self.mask_id  # (B, R')
        if labels is not None:
            inst = F.pad(inst, (c.cond_tokens, 0), value=False)  # (B, R)
        vec = self.instruct.to(x.dtype).expand(x.shape)
        if c.position == "rope":
            b, r, _ = x.shape
            cos, sin = rope_tables(pos, c.width, c.dim // c.heads, c.rope_base, x.dtype, torus=c.torus)  # never cond
            vec = apply_rope(vec.reshape(b, r, c.heads, -1).transpose(1, 2), cos, sin).transpose(1, 2).reshape(b, r, -1)
        else:  # keep the learned position term the base embedding added
            vec = vec + (x - self.tok_emb.weight[0].to(x.dtype))  # row 0 is the placeholder of embed_tokens
        return torch.where(inst.unsqueeze(-1), vec, x), pos

    # ------------------------------------------------------------------------------------------------ layout
    def cache_rows_for(self, num_tokens: int) -> int:
        return self.config.cond_tokens + 2 * num_tokens  # an instruction row and a token row per token

    @staticmethod
    def _gather(items: list[Item], targets: torch.Tensor, orders: torch.Tensor, mask_id: int):
        """Token ids and positions (B, R') of the non-condition items."""
        js = torch.tensor([j for _, j, _ in items if j >= 0], dtype=torch.long, device=orders.device)
        is_p = torch.tensor([k == QUERY for k, j, _ in items if j >= 0], device=orders.device)
        tok = torch.where(is_p, torch.full_like(targets[:, js], mask_id), targets[:, js])
        return tok, orders[:, js]

    def train_rows(self, targets, orders, sizes, mutual=None, block=None) -> Rows:
        mutual, block = self._knobs(mutual, block)
        sizes, c, n = tuple(int(s) for s in sizes), self.config.cond_tokens, targets.shape[1]
        groups = _groups(sizes, 0)
        items: list[Item] = [(COND, -1 - i, -2) for i in range(c)]
        for g, js in enumerate(groups):
            items += [it for j in js for it in ((QUERY, j, g), (CONTENT, j, g))]
        # drop token rows nobody attends to: the last group's (plan) or the very last one (causal)
        items = [it for it in items if not (it[0] == CONTENT and (it[2] == len(sizes) - 1 if self.mode == "plan"
                                                                   else it[1] == n - 1))]
        mask = _visible(items, items, self.mode, mutual, block).to(targets.device)
        tok, pos = self._gather(items, targets, orders, self.mask_id)
        logit_rows = torch.tensor([i for i, it in enumerate(items) if it[0] == QUERY])  # j ascending
        kinds = torch.tensor([k for k, _, _ in items])
        index = torch.tensor([j if j >= 0 else -1 for _, j, _ in items])
        return Rows(tok, pos, mask, logit_rows, 0, kinds, index)

    def step_rows(self, sizes, t, num_known, prev_tokens, prev_positions, query_positions, mutual=None,
                  block=None) -> Rows:
        mutual, block = self._knobs(mutual, block)
        c, k = self.config.cond_tokens, num_known
        sizes = tuple(int(s) for s in sizes)
        items, cache_rows, mask, logit_rows = _step(sizes, t, c, k, self.mode, mutual, block)
        # plan-ordered targets/orders of this step's tokens: the previous group (or the known ones), then group t
        j0 = k + sum(sizes[:t - 1]) if t else 0
        targets = torch.cat([prev_tokens, torch.zeros_like(query_positions)], dim=1)
        orders = torch.cat([prev_positions, query_positions], dim=1)
        local = [(kind, j - j0, g) for kind, j, g in items]
        tok, pos = self._gather(local, targets, orders, self.mask_id)
        return Rows(tok, pos, mask.to(query_positions.device), logit_rows, cache_rows)

    def token_rows(self, fed_tokens, fed_positions, query_positions, fed_sees, query_sees, cached_tokens,
                   with_cond) -> Rows:
        """Jacobi passes (one token per step, where both modes coincide): a fed token is an instruction row and a
        token row, both cached; a query is an uncached instruction row."""
        c = self.config.cond_tokens
        nf, nq = fed_tokens.shape[1], query_positions.shape[1]
        cond_rows = c if with_cond else 0
        head = self.cache_rows_for(cached_tokens)
        eye = torch.eye(nf, dtype=torch.bool)
        others = fed_sees & ~eye  # (F, F) earlier fed tokens: both of their rows
        pair = others.repeat_interleave(2, 0).repeat_interleave(2, 1)  # (2F, 2F)
        pair[0::2, 0::2] |= eye  # p(i) sees itself
        pair[1::2, 0::2] |= eye  # x(i) sees p(i) and itself
        pair[1::2, 1::2] |= eye
        mask = torch.zeros(cond_rows + 2 * nf + nq, head + 2 * nf + nq, dtype=torch.bool)
        mask[:cond_rows, :cond_rows] = True
        mask[cond_rows:, :head] = True
        mask[cond_rows:cond_rows + 2 * nf, head:head + 2 * nf] = pair
        mask[cond_rows + 2 * nf:, head:head + 2 * nf] = query_sees.repeat_interleave(2, 1)
        mask[cond_rows + 2 * nf:, head + 2 * nf:] = torch.eye(nq, dtype=torch.bool)
        inst = torch.full_like(fed_tokens, self.mask_id)
        tokens = torch.cat([torch.stack([inst, fed_tokens], 2).flatten(1), torch.full_like(query_positions,
                                                                                            self.mask_id)], 1)
        positions = torch.cat([fed_positions.repeat_interleave(2, 1), query_positions], 1)
        start = cond_rows + 2 * nf
        return Rows(tokens, positions, mask.to(fed_tokens.device), torch.arange(start, start + nq), start)
