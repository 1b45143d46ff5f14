"""What every backbone shares: embeddings, condition handling, cache bookkeeping and the head."""

from __future__ import annotations

import torch
from torch import nn

from orderlab.model.config import ModelConfig
from orderlab.model.layers import RMSNorm, find_multiple, rope_tables

__all__ = ["_Base"]


class _Base(nn.Module):
    """Embeddings, condition handling, cache bookkeeping and the head, shared by both backbones."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.hidden = find_multiple(int(c.mlp_ratio * c.dim), 64)
        self.tok_emb = nn.Embedding(c.vocab_size + 1, c.dim)  # last row: [MASK], the query embedding
        self.cond_emb = nn.Embedding(c.num_classes + int(c.null_class), c.cond_tokens * c.dim)
        self.pos_emb = nn.Embedding(c.num_tokens + c.cond_tokens, c.dim) if c.position == "learned" else None
        self.norm = RMSNorm(c.dim)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    @property
    def mask_id(self) -> int:
        return self.config.mask_id

    def check_labels(self, labels: torch.Tensor) -> None:
        hi = self.config.num_classes + int(self.config.null_class)
        if labels.dtype not in (torch.int32, torch.int64) or labels.dim() != 1:
            raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= hi):
            bad = labels[(labels < 0) | (labels >= hi)][0].item()
            raise ValueError(f"label {bad} is out of range 0..{hi - 1} (num_classes={self.config.num_classes}, "
                             f"null class {'on' if self.config.null_class else 'off'})")

    def embed(self, labels: torch.Tensor | None, tokens: torch.Tensor, positions: torch.Tensor):
        """Input embeddings and positions: (B, C + L, D) and (B, C + L) with -1 for condition rows."""
        c = self.config
        x = self.tok_emb(tokens)  # (B, L, D)
        pos = positions
        if labels is not None:
            self.check_labels(labels)
            cond = self.cond_emb(labels).view(labels.shape[0], c.cond_tokens, c.dim)  # (B, C, D)
            x = torch.cat([cond, x], dim=1)
            pos = torch.cat([positions.new_full((labels.shape[0], c.cond_tokens), -1), positions], dim=1)
        if self.pos_emb is not None:  # condition rows use the extra slots after the grid
            slot = torch.where(pos >= 0, pos, c.num_tokens + torch.arange(pos.shape[1], device=pos.device) % c.cond_tokens)
            x = x + self.pos_emb(slot)
        return x, pos

    def rope(self, pos: torch.Tensor, dtype: torch.dtype):
        c = self.config
        if c.position != "rope":
            return None
        return rope_tables(pos, c.width, c.dim // c.heads, c.rope_base, dtype)

    def cache_nbytes(self) -> int:
        """Bytes held by the KV caches (0 when none is set up)."""
        return sum(m.cache.nbytes for m in self.modules() if getattr(m, "cache", None) is not None)
