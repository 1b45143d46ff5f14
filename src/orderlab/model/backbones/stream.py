"""The flexible-order backbone: tokens, grid positions and a mask in, logits out, with a KV-cache API.

A content token is its embedding at its own grid position; a query token is one learned ``[MASK]`` embedding at
its *target* position (2D RoPE, or a learned absolute embedding). Condition tokens (class, or the null class
for classifier-free guidance) come first. The model imports nothing from schedules and knows nothing of orders:
callers build masks with :mod:`orderlab.model.masks`.
"""

from __future__ import annotations

import torch
from torch import nn

from orderlab.model.base import _Base
from orderlab.model.config import ModelConfig
from orderlab.model.layers import Block, KVCache

__all__ = ["FlexTransformer"]


class FlexTransformer(_Base):
    """One stream of condition, content and query tokens through ``depth`` LlamaGen blocks (LPD / RandAR style)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, self.hidden, c.dropout) for _ in range(c.depth))
        self._init_weights()

    def forward(self, labels: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                num_logits: int | None = None) -> torch.Tensor:
        """One training forward over ``[cond (C)] + tokens``.

        Args:
            labels: (B,) class labels (the null label for unconditional rows).
            tokens: (B, L) token ids, ``mask_id`` for query rows.
            positions: (B, L) row-major grid positions (targets for queries).
            mask: (C + L, C + L) bool, True = may attend.
            num_logits: return logits of the last rows only (the queries); None for all rows.
        Returns:
            logits (B, num_logits or C + L, V).
        """
        x, pos = self.embed(labels, tokens, positions)  # (B, C + L, D)
        rope = self.rope(pos, x.dtype)
        for blk in self.blocks:
            x = blk(x, rope, mask)
        if num_logits is not None:
            x = x[:, -num_logits:]
        return self.head(self.norm(x))

    def forward_step(self, labels: torch.Tensor | None, tokens: torch.Tensor, positions: torch.Tensor,
                     mask: torch.Tensor, cache_rows: int, num_logits: int | None = None) -> torch.Tensor:
        """One cached decode step: the first ``cache_rows`` rows (condition rows included) join the KV cache.

        Args:
            labels: (B,) at the first step (condition rows are prepended), else None.
            tokens, positions: (B, R') new rows (without condition rows).
            mask: (R, K) bool with R = C·[labels given] + R' and K = cache length after the step + R - cache_rows.
        """
        x, pos = self.embed(labels, tokens, positions)  # (B, R, D)
        rope = self.rope(pos, x.dtype)
        for blk in self.blocks:
            x = blk(x, rope, mask, cache_rows)
        if num_logits is not None:
            x = x[:, -num_logits:]
        return self.head(self.norm(x))

    def setup_cache(self, batch: int, slots: int | None = None, device=None, dtype=None) -> None:
        """Allocate a KV cache of ``slots`` (default C + N) entries per layer for ``batch`` rows."""
        c = self.config
        slots = slots or c.cond_tokens + c.num_tokens
        p = self.head.weight
        for blk in self.blocks:
            blk.attn.cache = KVCache(batch, c.heads, slots, c.dim // c.heads, device or p.device, dtype or p.dtype)

    def reset_cache(self) -> None:
        for blk in self.blocks:
            blk.attn.cache = None

    @property
    def cache_length(self) -> int:
        cache = self.blocks[0].attn.cache
        return 0 if cache is None else cache.length

    def truncate_cache(self, length: int) -> None:
        for blk in self.blocks:
            blk.attn.cache.truncate(length)

    def attention_modules(self) -> list[nn.Module]:
        """The attention module of every layer, in depth order (for the attention probe)."""
        return [blk.attn for blk in self.blocks]
