"""ARPG's decoupled two-pass backbone (arXiv 2503.10568): the memory-lean variant.

Pass 1 runs causal (or group-block) self-attention over ``[cond] + content``; its output is normalised and
projected ONCE to a key/value set that every pass-2 layer shares. Pass 2 starts each query from the ``[MASK]``
embedding at its target position and only cross-attends to that shared K/V. Queries never see each other, so the
``mutual`` knob does not apply. It keeps the default layout of :class:`~orderlab.model.base.Backbone` (rows holding
``mask_id`` are queries, after every content row) and decodes with the same loop; its cache holds the pass-1 layers
plus one shared K/V instead of every layer.
"""

from __future__ import annotations

import torch
from torch import nn

from orderlab.model.base import QUERY, Backbone, Rows, _CacheSlot
from orderlab.model.config import ModelConfig
from orderlab.model.layers import Block, Style, apply_rope, attend, make_ffn, make_norm
from orderlab.model.registry import register_backbone

__all__ = ["DecoupledTransformer"]


class CrossAttention(nn.Module):
    """Queries (with RoPE at their targets) attend to the shared keys/values; only to_q and the output projection."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.probe: list | None = None
        self.impl = "sdpa"  # a key of orderlab.model.layers.KERNELS

    def forward(self, x, rope, k, v, mask):
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, Hh, Q, Dh)
        if rope is not None:
            q = apply_rope(q, *rope)
        out = attend(q, k, v, mask, self.dropout if self.training else 0.0, self.probe, self.impl)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class CrossBlock(nn.Module):
    """ARPG's CrossDecoder: x + drop(cross_attn(norm(x))), then x + ffn(norm(x))."""

    def __init__(self, dim: int, heads: int, style: Style):
        super().__init__()
        self.attn_norm, self.ffn_norm = make_norm(dim, style), make_norm(dim, style)
        self.attn = CrossAttention(dim, heads, style.attn_dropout, style.bias)
        self.ffn = make_ffn(dim, style)
        self.drop = nn.Dropout(style.resid_dropout)

    def forward(self, x, rope, k, v, mask):
        x = x + self.drop(self.attn(self.attn_norm(x), rope, k, v, mask))
        return x + self.ffn(self.ffn_norm(x))


@register_backbone("decoupled")
class DecoupledTransformer(Backbone):
    """Content stream (``depth - query_depth`` blocks) + one shared K/V + query stream (``query_depth`` blocks)."""

    mutual_queries = False

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        qd = c.query_depth if c.query_depth is not None else c.depth // 2
        if not 1 <= qd < c.depth:
            raise ValueError(f"model.query_depth={qd} must be in 1..depth-1={c.depth - 1}")
        self.content_blocks = nn.ModuleList(Block(c.dim, c.heads, style=self.style) for _ in range(c.depth - qd))
        self.query_blocks = nn.ModuleList(CrossBlock(c.dim, c.heads, self.style) for _ in range(qd))
        self.content_norm = make_norm(c.dim, self.style)
        self.to_k = nn.Linear(c.dim, c.dim, bias=self.style.bias)
        self.to_v = nn.Linear(c.dim, c.dim, bias=self.style.bias)
        self.shared = _CacheSlot()  # the one K/V set every pass-2 layer reads
        self._init_weights()

    def _shared_kv(self, h: torch.Tensor, rope):
        b, n, _ = h.shape
        c = self.config
        h = self.content_norm(h)
        k = self.to_k(h).view(b, n, c.heads, -1).transpose(1, 2)  # (B, Hh, Lc, Dh)
        v = self.to_v(h).view(b, n, c.heads, -1).transpose(1, 2)
        if rope is not None:  # RoPE on K only, as in ARPG; V carries no position
            k = apply_rope(k, *rope)
        return k, v

    @staticmethod
    def _check_no_mutual(mask: torch.Tensor, num_query: int) -> None:
        qq = mask[-num_query:, -num_query:]
        if bool((qq & ~torch.eye(num_query, dtype=torch.bool, device=mask.device)).any()):
            raise ValueError("the decoupled backbone cannot make queries see each other: set model.mutual=false")

    def _queries(self, x_q, rope_q, k, v, mask_q, num_logits, logit_rows, first: int):
        """Pass 2 over the query rows x_q (rows ``first``.. of the forward); logits of the chosen ones."""
        for blk in self.query_blocks:
            x_q = blk(x_q, rope_q, k, v, mask_q)
        if logit_rows is not None:
            logit_rows = logit_rows - first
            if bool((logit_rows < 0).any()):
                raise ValueError("the decoupled backbone has logits for its query rows only")
        return self.head(self.norm(self.select_rows(x_q, num_logits, logit_rows)))

    def forward(self, labels, tokens, positions, mask, num_logits=None, logit_rows=None):
        """Training forward; same arguments as FlexTransformer.forward, logits only for query rows."""
        x, pos = self.embed(labels, tokens, positions)  # (B, C + L, D)
        nq = int((tokens[0] == self.mask_id).sum())
        if nq == 0 or not bool((tokens[:, tokens.shape[1] - nq:] == self.mask_id).all()):
            raise ValueError("the decoupled backbone needs the query rows (mask_id) at the end of the sequence")
        if num_logits is not None and num_logits > nq:
            raise ValueError(f"the decoupled backbone has logits for {nq} query rows only, asked for {num_logits}")
        self._check_no_mutual(mask, nq)
        rope = self.rope(pos, x.dtype)
        lc = x.shape[1] - nq
        rope_c = None if rope is None else (rope[0][:, :, :lc], rope[1][:, :, :lc])
        rope_q = None if rope is None else (rope[0][:, :, lc:], rope[1][:, :, lc:])
        h = x[:, :lc]  # (B, Lc, D)
        for blk in self.content_blocks:
            h = blk(h, rope_c, mask[:lc, :lc])
        k, v = self._shared_kv(h, rope_c)
        return self._queries(x[:, lc:], rope_q, k, v, mask[lc:, :lc], num_logits, logit_rows, lc)

    def forward_step(self, labels, tokens, positions, mask, cache_rows, num_logits=None, logit_rows=None):
        """Cached decode step; same arguments as FlexTransformer.forward_step."""
        x, pos = self.embed(labels, tokens, positions)  # (B, R, D)
        nq = x.shape[1] - cache_rows
        if nq:
            self._check_no_mutual(mask, nq)
        rope = self.rope(pos, x.dtype)
        rope_c = None if rope is None else (rope[0][:, :, :cache_rows], rope[1][:, :, :cache_rows])
        rope_q = None if rope is None else (rope[0][:, :, cache_rows:], rope[1][:, :, cache_rows:])
        kc = mask.shape[1] - nq  # cache length after this step
        h = x[:, :cache_rows]
        for blk in self.content_blocks:
            h = blk(h, rope_c, mask[:cache_rows, :kc], cache_rows)
        shared = self.shared.cache
        if shared is None:
            raise RuntimeError("step mode needs a KV cache: call setup_cache() first")
        k, v = shared.append(*self._shared_kv(h, rope_c)) if cache_rows else (
            shared.k[:, :, :shared.length], shared.v[:, :, :shared.length])
        if nq == 0:
            return x.new_zeros(x.shape[0], 0, self.config.vocab_size)
        return self._queries(x[:, cache_rows:], rope_q, k, v, mask[cache_rows:, :kc], num_logits, logit_rows,
                             cache_rows)

    def cache_owners(self) -> list:
        return [blk.attn for blk in self.content_blocks] + [self.shared]

    def attention_modules(self) -> list[nn.Module]:
        """Pass-1 self-attention modules, then pass-2 cross-attention modules (where the queries look)."""
        return [blk.attn for blk in self.content_blocks] + [blk.attn for blk in self.query_blocks]

    def attention_views(self, rows: Rows):
        """Pass-1 layers see the non-query rows only; pass-2 layers are the query rows against those as keys."""
        query = torch.nonzero(rows.kinds == QUERY).flatten()
        other = torch.nonzero(rows.kinds != QUERY).flatten()
        return [(other, other)] * len(self.content_blocks) + [(query, other)] * len(self.query_blocks)
