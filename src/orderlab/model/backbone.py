"""The flexible-order backbone: tokens, grid positions and a mask in, logits out, with a KV-cache API.

A content token is its embedding at its own grid position; a query token is one learned ``[MASK]`` embedding at
its *target* position (2D RoPE, or a learned absolute embedding). Condition tokens (class, or the null class
for classifier-free guidance) come first. The model imports nothing from schedules and knows nothing of orders:
callers build masks with :mod:`orderlab.model.masks`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from orderlab.model.layers import Block, KVCache, RMSNorm, find_multiple, rope_tables

__all__ = ["ModelConfig", "PRESETS", "FlexTransformer", "build_model", "check_data_matches", "drop_labels"]

# depth / width / heads; LlamaGen's GPT-L/XL/XXL widths (ARPG and LPD inherit them), smaller ones for CPU.
PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(depth=2, dim=32, heads=2),
    "small": dict(depth=4, dim=128, heads=4),
    "base": dict(depth=12, dim=768, heads=12),
    "L": dict(depth=24, dim=1024, heads=16),
    "XL": dict(depth=36, dim=1280, heads=20),
    "XXL": dict(depth=48, dim=1536, heads=24),
}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a backbone (stored in checkpoints)."""

    vocab_size: int = 17
    """V, image-token vocabulary (the [MASK] id V is added on top)."""
    height: int = 8
    """H of the token grid."""
    width: int = 8
    """W of the token grid."""
    num_classes: int = 10
    """Class labels 0..num_classes-1; 0 for an unconditional model."""
    null_class: bool = True
    """Keep a null-class embedding (label = num_classes) for classifier-free guidance."""
    preset: str | None = None
    """Name in PRESETS; when set it overrides depth/dim/heads."""
    depth: int = 2
    dim: int = 32
    heads: int = 2
    mlp_ratio: float = 8 / 3
    """SwiGLU hidden = find_multiple(mlp_ratio * dim, 64), LlamaGen's rule."""
    position: Literal["rope", "learned"] = "rope"
    """2D RoPE at each token's grid position, or a learned absolute embedding (LPD)."""
    rope_base: float = 10000.0
    cond_tokens: int = 1
    """C, condition tokens per sample."""
    dropout: float = 0.0
    mutual: bool = True
    """Attention pattern the model is trained and decoded with: queries of one group see each other (LPD)."""
    block: bool = True
    """Content tokens of one group see each other (LPD); False = causal inside the group."""
    arch: Literal["flex", "decoupled"] = "flex"
    """flex: one stream of content + queries; decoupled: ARPG's two-pass model (see orderlab.model.decoupled)."""
    attention: Literal["sdpa", "flex"] = "sdpa"
    """Attention kernel: SDPA with a dense mask, or FlexAttention with a block mask (compiled on CUDA; skips the
    fully masked blocks of other groups' queries). Same numbers; see orderlab.model.layers.KERNELS."""
    query_depth: int | None = None
    """decoupled only: layers of the query stream (default depth // 2; the content stream gets the rest)."""

    def __post_init__(self) -> None:
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"model.preset={self.preset!r} is not one of {sorted(PRESETS)}")
            for key, val in PRESETS[self.preset].items():
                setattr(self, key, val)
        for key in ("vocab_size", "height", "width", "depth", "dim", "heads", "cond_tokens"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)!r}")
        if self.num_classes < 0:
            raise ValueError(f"model.num_classes must be >= 0, got {self.num_classes}")
        if self.num_classes == 0 and not self.null_class:
            raise ValueError("model.null_class must be true for an unconditional model (num_classes=0)")
        if self.position not in ("rope", "learned"):
            raise ValueError(f"model.position={self.position!r} is not one of ['rope', 'learned']")
        if self.attention not in ("sdpa", "flex"):
            raise ValueError(f"model.attention={self.attention!r} is not one of ['flex', 'sdpa']")
        if self.arch not in ("flex", "decoupled"):
            raise ValueError(f"model.arch={self.arch!r} is not one of ['flex', 'decoupled']")
        if self.dim % self.heads or (self.position == "rope" and (self.dim // self.heads) % 4):
            raise ValueError(f"model.dim={self.dim} must split into {self.heads} heads of a size divisible by 4")

    @property
    def num_tokens(self) -> int:
        return self.height * self.width

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def null_label(self) -> int | None:
        return self.num_classes if self.null_class else None


def check_data_matches(cfg: ModelConfig, manifest: dict) -> None:
    """Fail when the data's grid, vocabulary or classes do not fit the model's config (fit, evaluate, search)."""
    grid = tuple(manifest["grid"])
    if grid != (cfg.height, cfg.width):
        raise ValueError(f"model.backbone.height/width={cfg.height}x{cfg.width} does not match the data grid "
                         f"{grid[0]}x{grid[1]} (data manifest)")
    if int(manifest["vocab_size"]) != cfg.vocab_size:
        raise ValueError(f"model.backbone.vocab_size={cfg.vocab_size} does not match the data vocabulary "
                         f"{manifest['vocab_size']} (data manifest)")
    if int(manifest.get("num_classes", 0)) > cfg.num_classes:
        raise ValueError(f"model.backbone.num_classes={cfg.num_classes} is smaller than the data's "
                         f"{manifest['num_classes']} classes (data manifest)")


def drop_labels(labels: torch.Tensor, p: float, null_label: int, generator: torch.Generator | None = None):
    """Replace each label by the null label with probability p (class dropout for CFG training)."""
    if p <= 0:
        return labels
    u = torch.rand(labels.shape, generator=generator, device="cpu").to(labels.device)  # (B,)
    return torch.where(u < p, torch.full_like(labels, null_label), labels)


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


def build_model(config: ModelConfig) -> nn.Module:
    """The backbone named by ``config.arch``."""
    from orderlab.model.decoupled import DecoupledTransformer

    model = {"flex": FlexTransformer, "decoupled": DecoupledTransformer}[config.arch](config)
    for m in model.modules():
        if hasattr(m, "impl"):
            m.impl = config.attention
    return model
