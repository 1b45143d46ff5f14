"""LPD (mit-han-lab/lpd, models/lpd.py + models/block.py) -> orderlab's ``stream`` backbone with ViT blocks.

Official layout: ``token_emb`` (V rows), ``class_emb`` (K rows) and ``fake_latent`` (the null class),
``mask_token`` (the position query), ``pos_embed`` (1, 1 + N, D) with the class slot FIRST, ``z_proj_ln`` (a
LayerNorm on every input), ``blocks.{i}`` timm ViT blocks (norm1, attn.qkv with bias, attn.proj, norm2,
mlp.fc1/fc2), ``norm`` and ``head``. orderlab puts the condition slot after the grid, so the position table is
rotated by one row. LPD trains and decodes with mutually visible queries and group-bidirectional content:
``mutual=True, block=True``.
"""

from __future__ import annotations

import math

import torch

from orderlab.model.config import PUBLISHED, ModelConfig
from orderlab.published import ConversionError, Converted, Hints, Taker, register_converter

# scripts/eval/*.sh: (steps, CFG, repulsion) per width and grid; per-token linear CFG, LPD's locality orders
_NATIVE = {(1024, 16): (32, 5.4, 2), (1280, 16): (32, 5.0, 2), (1536, 16): (20, 5.9, 3),
           (1024, 32): (48, 7.3, 4), (1280, 32): (48, 6.0, 4)}
_ARCH = {k: v for k, v in PUBLISHED["lpd-L"].items() if k not in ("depth", "dim", "heads", "height", "width",
                                                                   "vocab_size", "num_classes", "mlp_ratio")}


@register_converter("lpd")
def convert(t: Taker, hints: Hints) -> Converted:
    facts: list[str] = []
    tok, cls, pos = t.take("token_emb.weight"), t.take("class_emb.weight"), t.take("pos_embed")
    fc1 = t.peek("blocks.0.mlp.fc1.weight")  # the MLP width; taken with its shape below
    if tok is None or cls is None or pos is None or fc1 is None:
        t.check()
    vocab, dim = tok.shape
    n = pos.shape[1] - 1
    side = math.isqrt(n)
    if pos.dim() != 3 or side * side != n:
        raise ConversionError(f"pos_embed {tuple(pos.shape)} is not (1, 1 + side^2, D): not an LPD checkpoint")
    depth, hidden = t.count("blocks.", ".attn.qkv.weight"), fc1.shape[0]
    cfg = ModelConfig(**{**_ARCH, "vocab_size": vocab, "height": side, "width": side, "num_classes": cls.shape[0],
                         "depth": depth, "dim": dim, "heads": hints.heads_for(dim, facts), "mlp_ratio": hidden / dim})
    mask, fake = t.take("mask_token", (1, 1, dim)), t.take("fake_latent", (1, dim))
    out = {"tok_emb.weight": None if mask is None else torch.cat([tok, mask.reshape(1, dim)]),
           "cond_emb.weight": None if fake is None else torch.cat([cls, fake]),
           "pos_emb.weight": torch.cat([pos[0, 1:], pos[0, :1]]),  # LPD: class slot first; orderlab: after the grid
           "head.weight": t.take("head.weight", (vocab, dim))}
    shapes = {"norm1": (dim,), "norm2": (dim,), "attn.qkv": (3 * dim, dim), "attn.proj": (dim, dim),
              "mlp.fc1": (hidden, dim), "mlp.fc2": (dim, hidden)}
    names = {"norm1": "attn_norm", "norm2": "ffn_norm", "attn.qkv": "attn.qkv", "attn.proj": "attn.proj",
             "mlp.fc1": "ffn.fc1", "mlp.fc2": "ffn.fc2"}
    for src, dst, prefix_s, prefix_d in [("z_proj_ln", "input_norm", "", ""), ("norm", "norm", "", "")] + [
            (k, names[k], f"blocks.{i}.", f"blocks.{i}.") for i in range(depth) for k in shapes]:
        w_shape = shapes.get(src, (dim,))
        out[f"{prefix_d}{dst}.weight"] = t.take(f"{prefix_s}{src}.weight", w_shape)
        out[f"{prefix_d}{dst}.bias"] = t.take(f"{prefix_s}{src}.bias", (w_shape[0],))
    t.check()
    steps, scale, repulsion = _NATIVE.get((dim, side), (32, 5.4, 2))
    facts.append(f"LPD: {depth} ViT blocks, width {dim}, MLP {hidden}, grid {side}x{side}, {vocab} codes, "
                 f"{cls.shape[0]} classes")
    native = {"row": {"schedule": "locality", "steps": steps, "knobs": {"sizes": "lpd", "repulsion": repulsion}},
              "cfg_schedule": "linear_token", "cfg_scale": scale,
              "source": "LPD scripts/eval: locality order, LPD's size table, per-token linear CFG"}
    return Converted(cfg, out, native, facts)
