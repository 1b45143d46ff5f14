"""Transformer parts shared by the backbones: norms, FFNs, 2D RoPE, attention with a KV cache and a probe.

Two block styles (:class:`Style`): LlamaGen's (pre-norm, RMSNorm, SwiGLU, no biases; ARPG and RandAR) and the ViT
block LPD uses (pre-norm, LayerNorm, GELU MLP, biases). Nothing here knows about orders or schedules: attention
takes whatever boolean mask (True = may attend) the caller builds.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSNorm", "SwiGLU", "GeluMLP", "Attention", "Block", "Style", "KVCache", "rope_tables", "apply_rope",
           "find_multiple", "make_norm", "make_ffn"]


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of k that is >= n (LlamaGen's FFN width rule)."""
    return n if n % k == 0 else n + k - n % k


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.to(x.dtype) * self.weight


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class GeluMLP(nn.Module):
    """The ViT MLP (timm's ``Mlp``, used by LPD): fc1, exact GELU, dropout, fc2, dropout; with biases."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


@dataclass(frozen=True)
class Style:
    """How a block is built: LlamaGen's (``llamagen``) or the ViT block of LPD (``vit``), and its dropout rates."""

    kind: str = "llamagen"
    """``llamagen``: RMSNorm (eps 1e-5), SwiGLU, no biases. ``vit``: LayerNorm (eps 1e-6), GELU MLP, biases."""
    hidden: int = 0
    """FFN width."""
    attn_dropout: float = 0.0
    """On the attention probabilities."""
    resid_dropout: float = 0.0
    """On each attention output before the residual add (ARPG/RandAR's resid_dropout, LPD's proj_drop)."""
    ffn_dropout: float = 0.0
    """Inside the FFN (after w2; the ViT MLP also after the activation, as timm's Mlp)."""

    @property
    def bias(self) -> bool:
        return self.kind == "vit"


def make_norm(dim: int, style: Style) -> nn.Module:
    return nn.LayerNorm(dim, eps=1e-6) if style.kind == "vit" else RMSNorm(dim)


def make_ffn(dim: int, style: Style) -> nn.Module:
    cls = GeluMLP if style.kind == "vit" else SwiGLU
    return cls(dim, style.hidden, style.ffn_dropout)


def rope_tables(positions: torch.Tensor, width: int, head_dim: int, base: float = 10000.0,
                dtype: torch.dtype = torch.float32, cond: str = "identity",
                torus: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """2D RoPE angles for row-major grid positions: half the pairs rotate by row, half by column.

    Args:
        positions: (B, L) row-major positions ``r * width + c``; negative entries are condition tokens.
        cond: what condition tokens get: ``identity`` (no rotation; ours) or ``zero`` (cos = sin = 0, LlamaGen's
            table, which ARPG and RandAR inherit: the class token's q and k vanish in every layer).
        torus: (H, W) for periodic data: each axis turns by whole cycles over the grid, 2 pi k r / H with k cycling
            through 1..H/2 (and likewise for columns), so q.k sees each displacement modulo the grid and the two
            sides of a wrapped edge are as near as any other neighbours. None: the usual ``base`` frequencies.
    Returns:
        cos, sin: (B, 1, L, head_dim // 2).
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    work = torch.float64 if dtype == torch.float64 else torch.float32
    j = torch.arange(quarter, device=positions.device, dtype=work)
    if torus is None:
        row_f = col_f = base ** (-j / quarter)  # (Dh/4,)
    else:  # k = 1..n/2: higher k alias to lower ones on n sites; k = n/2 alternates sign (n odd: (n-1)/2)
        row_f, col_f = (2 * math.pi * (1 + j % max(1, n // 2)) / n for n in torus)
    pos = positions.clamp(min=0)
    rows, cols = (pos // width).to(work), (pos % width).to(work)  # (B, L)
    ang = torch.cat([rows.unsqueeze(-1) * row_f, cols.unsqueeze(-1) * col_f], dim=-1)  # (B, L, Dh/2)
    grid = (positions >= 0).unsqueeze(-1)
    ang = ang * grid
    cos, sin = ang.cos(), ang.sin()
    if cond == "zero":  # following LlamaGen's precompute_freqs_cis_2d
        cos = cos * grid
    return cos.unsqueeze(1).to(dtype), sin.unsqueeze(1).to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, Hh, L, Dh) by the angles in cos/sin (B, 1, L, Dh/2)."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)


class KVCache:
    """Preallocated keys and values of one attention layer: (B, Hh, S, Dh), filled from slot 0 up to ``length``."""

    def __init__(self, batch: int, heads: int, slots: int, head_dim: int, device, dtype):
        self.k = torch.zeros(batch, heads, slots, head_dim, device=device, dtype=dtype)  # (B, Hh, S, Dh)
        self.v = torch.zeros_like(self.k)
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, Hh, n, Dh) at the end; return the filled part of the cache."""
        n = k.shape[2]
        if self.length + n > self.k.shape[2]:
            raise RuntimeError(f"KV cache overflow: {self.length} + {n} > {self.k.shape[2]} slots")
        self.k[:, :, self.length:self.length + n] = k
        self.v[:, :, self.length:self.length + n] = v
        self.length += n
        return self.k[:, :, :self.length], self.v[:, :, :self.length]

    def truncate(self, length: int) -> None:
        """Forget everything after ``length`` slots (speculative decoding rolls back rejected drafts)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2


def _sdpa(q, k, v, mask, dropout):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


_FLEX_COMPILED = None
_BLOCK_CACHE: list = []  # [(mask, device, block)]: every layer of one forward gets the same mask object


def _flex(q, k, v, mask, dropout):
    """FlexAttention with a block mask made from the dense boolean mask: on CUDA it skips fully masked blocks
    (the query rows of other groups), which SDPA's dense mask cannot. Compiled on CUDA; on CPU the eager
    reference kernel runs (correct, slow: for tests only)."""
    global _FLEX_COMPILED
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    if dropout:
        raise ValueError("attention='flex' does not support attention dropout; set model dropout to 0")
    if not q.is_cuda and q.requires_grad:
        raise ValueError("attention='flex' has no backward pass on CPU in torch; train with attention='sdpa' on CPU")
    dense = mask if mask.dim() == 2 else mask.reshape(mask.shape[-2:])  # (R, K), shared by batch and heads

    def mask_mod(b, h, qi, ki):
        return dense[qi, ki]

    if _BLOCK_CACHE and _BLOCK_CACHE[0][0] is mask and _BLOCK_CACHE[0][1] == q.device:
        block = _BLOCK_CACHE[0][2]  # built once per forward, not once per layer
    else:
        block = create_block_mask(mask_mod, None, None, dense.shape[0], dense.shape[1], device=q.device)
        _BLOCK_CACHE[:] = [(mask, q.device, block)]
    if q.is_cuda:
        if _FLEX_COMPILED is None:
            _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
        return _FLEX_COMPILED(q, k, v, block_mask=block)
    with warnings.catch_warnings():  # torch warns that eager flex is a reference implementation
        warnings.simplefilter("ignore", UserWarning)
        return flex_attention(q, k, v, block_mask=block)


# attention kernels by name (ModelConfig.attention); both take the same boolean mask
KERNELS = {"sdpa": _sdpa, "flex": _flex}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, dropout: float,
           probe: list | None, impl: str = "sdpa") -> torch.Tensor:
    """Masked attention (True = may attend); q (B, Hh, R, Dh), k/v (B, Hh, K, Dh) -> (B, Hh, R, Dh)."""
    if probe is not None:  # explicit weights for the attention probe; only when asked for
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, Hh, R, K)
        probe.append(scores.masked_fill(~mask, float("-inf")).softmax(-1).detach().float())
    return KERNELS[impl](q, k, v, mask, dropout)


class Attention(nn.Module):
    """Multi-head self-attention with 2D RoPE; in step mode the first rows' K/V are appended to a cache."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0, bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by heads {heads}")
        self.heads, self.head_dim, self.dropout = heads, dim // heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)
        self.cache: KVCache | None = None
        self.probe: list | None = None
        self.impl = "sdpa"  # a key of KERNELS; set from ModelConfig.attention by the backbone

    def forward(self, x: torch.Tensor, rope: tuple | None, mask: torch.Tensor,
                cache_rows: int | None = None) -> torch.Tensor:
        """x (B, L, D); mask (L, K) with K = L (training) or cache length + L - cache_rows (step mode).

        cache_rows: None for a plain forward; in step mode, the number of leading rows whose K/V join the cache.
        """
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, Hh, L, Dh)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache_rows is not None:
            if self.cache is None:
                raise RuntimeError("step mode needs a KV cache: call setup_cache() first")
            ck, cv = self.cache.append(k[:, :, :cache_rows], v[:, :, :cache_rows])
            k = torch.cat([ck, k[:, :, cache_rows:]], dim=2)  # (B, Hh, K, Dh)
            v = torch.cat([cv, v[:, :, cache_rows:]], dim=2)
        drop = self.dropout if self.training else 0.0
        out = attend(q, k, v, mask, drop, self.probe, self.impl)  # (B, Hh, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class Block(nn.Module):
    """Pre-norm transformer block: x + drop(attn(norm(x))), then x + ffn(norm(x)).

    ``Block(dim, heads, hidden, dropout)`` is a LlamaGen block with one rate everywhere; ``style`` sets the kind and
    each rate (``hidden`` and ``dropout`` are then ignored).
    """

    def __init__(self, dim: int, heads: int, hidden: int = 0, dropout: float = 0.0, style: Style | None = None):
        super().__init__()
        style = style or Style("llamagen", hidden, dropout, dropout, dropout)
        self.attn_norm, self.ffn_norm = make_norm(dim, style), make_norm(dim, style)
        self.attn = Attention(dim, heads, style.attn_dropout, style.bias)
        self.ffn = make_ffn(dim, style)
        self.drop = nn.Dropout(style.resid_dropout)

    def forward(self, x, rope, mask, cache_rows: int | None = None):
        x = x + self.drop(self.attn(self.attn_norm(x), rope, mask, cache_rows))
        return x + self.ffn(self.ffn_norm(x))
