"""The query-stream backbone (arch ``stream``; ``flex`` is its old, deprecated name), following LPD.

One stream of condition, content and query rows through ``depth`` LlamaGen blocks. A content row is a token's
embedding at its own grid position; a query row is the learned ``[MASK]`` embedding at its *target* position
(2D RoPE, or a learned absolute embedding). It uses the default layout of :class:`~orderlab.model.base.Backbone`
(:mod:`orderlab.model.masks`) and imports nothing from schedules.
"""

from __future__ import annotations

import torch
from torch import nn

from orderlab.model.base import Backbone
from orderlab.model.config import ModelConfig
from orderlab.model.layers import Block
from orderlab.model.registry import register_backbone

__all__ = ["StreamTransformer", "FlexTransformer"]


@register_backbone("stream")
class StreamTransformer(Backbone):
    """Condition, content and query rows in one stream; queries of a group may see each other (``mutual``)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        c = config
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, style=self.style) for _ in range(c.depth))
        self._init_weights()

    def forward(self, labels: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor,
                num_logits: int | None = None, logit_rows: torch.Tensor | None = None) -> torch.Tensor:
        """One training forward over ``[cond (C)] + tokens``.

        Args:
            labels: (B,) class labels (the null label for unconditional rows).
            tokens: (B, L) token ids, ``mask_id`` for query rows.
            positions: (B, L) row-major grid positions (targets for queries).
            mask: (C + L, C + L) bool, True = may attend.
            num_logits: logits of the last rows only; logit_rows: of these rows; neither: of all C + L rows.
        Returns:
            logits (B, G, V).
        """
        x, pos = self.embed(labels, tokens, positions)  # (B, C + L, D)
        rope = self.rope(pos, x.dtype)
        for blk in self.blocks:
            x = blk(x, rope, mask)
        return self.head(self.norm(self.select_rows(x, num_logits, logit_rows)))

    def forward_step(self, labels: torch.Tensor | None, tokens: torch.Tensor, positions: torch.Tensor,
                     mask: torch.Tensor, cache_rows: int, num_logits: int | None = None,
                     logit_rows: torch.Tensor | None = None) -> torch.Tensor:
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
        return self.head(self.norm(self.select_rows(x, num_logits, logit_rows)))

    def attention_modules(self) -> list[nn.Module]:
        return [blk.attn for blk in self.blocks]


FlexTransformer = StreamTransformer  # the class's old name, kept for code written against it
