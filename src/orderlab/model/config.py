"""The backbone's configuration (stored in checkpoints), its size presets, and the data checks that use it."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = ["ModelConfig", "PRESETS", "check_data_matches", "drop_labels"]

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
    arch: str = "stream"
    """A registered backbone (orderlab.model.registry.list_backbones): stream (content + queries in one stream,
    LPD), decoupled (ARPG's two-pass model), randar (RandAR's position-instruction tokens), or a plugin's.
    ``flex`` is the old name of ``stream`` and still loads, with a warning."""
    attention: Literal["sdpa", "flex"] = "sdpa"
    """Attention kernel: SDPA with a dense mask, or FlexAttention with a block mask (compiled on CUDA; skips the
    fully masked blocks of other groups' queries). Same numbers; see orderlab.model.layers.KERNELS."""
    query_depth: int | None = None
    """decoupled only: layers of the query stream (default depth // 2; the content stream gets the rest)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Knobs of the chosen backbone's own (its ``Options`` dataclass), e.g. ``{"mode": "causal"}`` for randar."""

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
        if self.arch == "flex":  # renamed in 0.2; old YAMLs and checkpoints say flex
            warnings.warn("model.backbone.arch='flex' is deprecated; it is now called 'stream'", FutureWarning,
                          stacklevel=3)
            self.arch = "stream"
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"model.backbone.arch={self.arch!r} must name a registered backbone")
        if not isinstance(self.options, dict):
            raise ValueError(f"model.backbone.options={self.options!r} must be a mapping")
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
