"""The backbone's configuration (stored in checkpoints), its size presets, and the data checks that use it."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

__all__ = ["ModelConfig", "PRESETS", "PUBLISHED", "DROPOUT_KEYS", "check_data_matches", "drop_labels"]

# depth / width / heads; LlamaGen's GPT-L/XL/XXL widths (ARPG and LPD inherit them), smaller ones for CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(depth=2, dim=32, heads=2),
    "small": dict(depth=4, dim=128, heads=4),
    "base": dict(depth=12, dim=768, heads=12),
    "L": dict(depth=24, dim=1024, heads=16),
    "XL": dict(depth=36, dim=1280, heads=20),
    "XXL": dict(depth=48, dim=1536, heads=24),
}
_SIZES = {"L": PRESETS["L"], "XL": PRESETS["XL"], "XXL": PRESETS["XXL"]}
_IMAGENET = dict(vocab_size=16384, height=16, width=16, num_classes=1000, null_class=True, cond_tokens=1)
# The published models exactly (parameter counts pinned in tests/test_published.py). Sources: hp-l33/ARPG
# models/arpg.py, mit-han-lab/lpd models/lpd.py + models/block.py, ziqipang/RandAR RandAR/model/randar_gpt.py.
_ARPG = dict(arch="decoupled", position="rope", ffn_multiple=256, cond_rope="zero", head_init="zero",
             spare_embeddings=1, mutual=False, block=True, block_style="llamagen", mlp_ratio=8 / 3,
             dropouts=dict(token=0.1, cond=0.1, attn=0.0, resid=0.1, ffn=0.1), dropout=0.0)
# LPD: timm's Attention is built with attn_drop=0.1 but its fused SDPA path never applies it, so attn = 0
_LPD = dict(arch="stream", position="learned", block_style="vit", mlp_ratio=4.0, ffn_multiple=1, input_norm=True,
            mutual=True, block=True, head_init="normal", dropouts=dict(token=0.0, cond=0.0, attn=0.0, resid=0.1,
                                                                        ffn=0.1), dropout=0.0)
_RANDAR = dict(arch="randar", options={"mode": "causal"}, position="rope", ffn_multiple=256, cond_rope="zero",
               head_init="zero", mutual=False, block=False, block_style="llamagen", mlp_ratio=8 / 3,
               dropouts=dict(token=0.1, cond=0.0, attn=0.0, resid=0.1, ffn=0.1), dropout=0.0)
PUBLISHED: dict[str, dict[str, Any]] = {
    **{f"arpg-{k}": {**_IMAGENET, **_ARPG, **v, "query_depth": v["depth"] // 2} for k, v in _SIZES.items()},
    **{f"lpd-{k}": {**_IMAGENET, **_LPD, **v} for k, v in _SIZES.items()},
    **{f"lpd-{k}-512": {**_IMAGENET, **_LPD, **v, "height": 32, "width": 32} for k, v in _SIZES.items()
       if k != "XXL"},
    **{f"randar-{k}": {**_IMAGENET, **_RANDAR, **v} for k, v in _SIZES.items() if k != "XXL"},
}
PRESETS.update(PUBLISHED)
DROPOUT_KEYS = ("token", "cond", "attn", "resid", "ffn")
_CHOICES = {"position": ("rope", "learned"), "attention": ("sdpa", "flex"), "cond_rope": ("identity", "zero"),
            "block_style": ("llamagen", "vit"), "head_init": ("normal", "zero")}


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
    """Name in PRESETS; it overrides every field it names. ``tiny``..``XXL`` set depth/dim/heads; the published
    models (``arpg-L``, ``lpd-XL``, ``randar-L``, ... see PUBLISHED) set the whole architecture and ImageNet's
    data shape (16x16 VQ-16 tokens, 1000 classes; 32x32 for ``lpd-*-512``)."""
    depth: int = 2
    dim: int = 32
    heads: int = 2
    mlp_ratio: float = 8 / 3
    """FFN hidden = find_multiple(floor(mlp_ratio * dim), ffn_multiple)."""
    ffn_multiple: int = 64
    """Rounding multiple of the FFN width: LlamaGen, ARPG and RandAR use 256 (L: 2816), LPD's MLP none (1)."""
    position: Literal["rope", "learned"] = "rope"
    """2D RoPE at each token's grid position, or a learned absolute embedding (LPD)."""
    rope_base: float = 10000.0
    rope_torus: bool = False
    """Periodic 2D RoPE (rotations by whole cycles over the grid): attention sees displacements modulo H and W, the
    symmetry of data on a torus such as the Ising benchmark. Needs ``position: rope``."""
    cond_tokens: int = 1
    """C, condition tokens per sample."""
    dropout: float = 0.0
    """One rate on the attention probabilities, the attention output and the FFN; ``dropouts`` overrides it."""
    dropouts: dict[str, float] = field(default_factory=dict)
    """Rates by place, each falling back to ``dropout`` (``token``/``cond``: to 0): ``token`` on content-token
    embeddings, ``cond`` on condition embeddings (ARPG drops both), ``attn`` on attention probabilities, ``resid``
    on every attention output (cross-attention too), ``ffn`` inside the FFN."""
    cond_rope: str = "identity"
    """RoPE of condition rows: ``identity`` (ours) or ``zero`` (LlamaGen's table: the class token's q, k vanish)."""
    block_style: str = "llamagen"
    """``llamagen`` (RMSNorm, SwiGLU, no biases) or ``vit`` (LPD: LayerNorm, GELU MLP, biases, xavier init)."""
    input_norm: bool = False
    """A LayerNorm on the input embeddings (LPD's z_proj_ln)."""
    head_init: str = "normal"
    """``normal`` (std 0.02, or xavier for ``vit``) or ``zero`` (ARPG and RandAR zero-initialise the head)."""
    spare_embeddings: int = 0
    """Unused embedding rows kept so that a published table loads whole (ARPG's id for an unused 'scg' token)."""
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
                setattr(self, key, copy.deepcopy(val))
        for key in ("vocab_size", "height", "width", "depth", "dim", "heads", "cond_tokens", "ffn_multiple"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"model.{key} must be >= 1, got {getattr(self, key)!r}")
        if int(self.spare_embeddings) < 0:
            raise ValueError(f"model.spare_embeddings must be >= 0, got {self.spare_embeddings!r}")
        self._check_dropouts()
        if self.num_classes < 0:
            raise ValueError(f"model.num_classes must be >= 0, got {self.num_classes}")
        if self.num_classes == 0 and not self.null_class:
            raise ValueError("model.null_class must be true for an unconditional model (num_classes=0)")
        for key, choices in _CHOICES.items():
            if getattr(self, key) not in choices:
                raise ValueError(f"model.{key}={getattr(self, key)!r} is not one of {sorted(choices)}")
        if self.arch == "flex":  # renamed in 0.2; old YAMLs and checkpoints say flex
            warnings.warn("model.backbone.arch='flex' is deprecated; it is now called 'stream'", FutureWarning,
                          stacklevel=3)
            self.arch = "stream"
        if not isinstance(self.arch, str) or not self.arch:
            raise ValueError(f"model.backbone.arch={self.arch!r} must name a registered backbone")
        if not isinstance(self.options, dict):
            raise ValueError(f"model.backbone.options={self.options!r} must be a mapping")
        if self.rope_torus and self.position != "rope":
            raise ValueError(f"model.rope_torus=True needs model.position='rope', got {self.position!r}")
        if self.dim % self.heads or (self.position == "rope" and (self.dim // self.heads) % 4):
            raise ValueError(f"model.dim={self.dim} must split into {self.heads} heads of a size divisible by 4")

    def _check_dropouts(self) -> None:
        if not isinstance(self.dropouts, dict):
            raise ValueError(f"model.dropouts={self.dropouts!r} must be a mapping of {list(DROPOUT_KEYS)} to rates")
        for key, rate in {**self.dropouts, "dropout": self.dropout}.items():
            name = "model.dropout" if key == "dropout" else f"model.dropouts.{key}"
            if key != "dropout" and key not in DROPOUT_KEYS:
                raise ValueError(f"{name}: no such place; choose from {list(DROPOUT_KEYS)}")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise ValueError(f"{name}={rate!r} must be a rate in [0, 1)")

    def rate(self, place: str) -> float:
        """The dropout rate at ``place`` (one of DROPOUT_KEYS)."""
        return float(self.dropouts.get(place, 0.0 if place in ("token", "cond") else self.dropout))

    @property
    def num_tokens(self) -> int:
        return self.height * self.width

    @property
    def torus(self) -> tuple[int, int] | None:
        """(H, W) when RoPE is periodic over the grid (``rope_torus``), else None."""
        return (self.height, self.width) if self.rope_torus else None

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
