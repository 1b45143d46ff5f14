"""ARPG (hp-l33/ARPG, models/arpg.py) -> orderlab's ``decoupled`` backbone.

Official layout: one embedding table ``embeddings`` of V + 1 + K + 1 + 1 rows (image codes, [MASK], K classes, the
null class, an unused id), ``layers.self_dec.{i}`` (causal self-attention, separate to_q/to_k/to_v),
``layers.norm`` + ``layers.to_k``/``to_v`` (the K/V every cross layer shares), ``layers.cross_dec.{i}`` (to_q and
proj only), ``norm`` and ``head``. ARPG trains causal in a random order and decodes with bidirectional attention
inside the group just fed: orderlab's ``mutual=False, block=True`` (training with one token per step is causal).
"""

from __future__ import annotations

import torch

from orderlab.model.config import PUBLISHED, ModelConfig
from orderlab.published import Converted, Hints, Taker, ffn_multiple_for, register_converter

# README model zoo (cosine sizes, 64 steps, ARPG's per-step linear CFG); FID 2.44 / 2.10 / 1.94
_CFG = {1024: 4.5, 1280: 6.0, 1536: 7.5}
_ARCH = {k: v for k, v in PUBLISHED["arpg-L"].items() if k not in ("depth", "dim", "heads", "query_depth",
                                                                    "height", "width", "vocab_size", "num_classes")}


def _block(t: Taker, src: str, dst: str, dim: int, hidden: int, out: dict, cross: bool) -> None:
    if cross:
        out[f"{dst}.attn.to_q.weight"] = t.take(f"{src}.attn.to_q.weight", (dim, dim))
    else:
        qkv = [t.take(f"{src}.attn.to_{n}.weight", (dim, dim)) for n in "qkv"]
        out[f"{dst}.attn.qkv.weight"] = None if any(w is None for w in qkv) else torch.cat(qkv)  # [q; k; v]
    out[f"{dst}.attn.proj.weight"] = t.take(f"{src}.attn.proj.weight", (dim, dim))
    for n in ("attn_norm", "ffn_norm"):
        out[f"{dst}.{n}.weight"] = t.take(f"{src}.{n}.weight", (dim,))
    for n, shape in (("w1", (hidden, dim)), ("w3", (hidden, dim)), ("w2", (dim, hidden))):
        out[f"{dst}.ffn.{n}.weight"] = t.take(f"{src}.ffn.{n}.weight", shape)


@register_converter("arpg")
def convert(t: Taker, hints: Hints) -> Converted:
    facts: list[str] = []
    emb, head = t.take("embeddings.weight"), t.take("head.weight")
    w1 = t.peek("layers.self_dec.0.ffn.w1.weight")  # the FFN width; taken with its shape below
    if emb is None or head is None or w1 is None:
        t.check()
    rows, dim = emb.shape
    vocab = head.shape[0]
    classes = rows - vocab - 3  # [MASK], the null class and the unused 'scg' id
    n_self = t.count("layers.self_dec.", ".attn.to_q.weight")
    n_cross = t.count("layers.cross_dec.", ".attn.to_q.weight")
    if classes < 1 or n_self < 1 or n_cross < 1:
        from orderlab.published import ConversionError

        raise ConversionError(f"not an ARPG checkpoint: embeddings {tuple(emb.shape)} with head {tuple(head.shape)} "
                              f"leaves {classes} classes; {n_self} self / {n_cross} cross layers")
    hidden = w1.shape[0]
    grid = hints.grid_for(facts)
    cfg = ModelConfig(**{**_ARCH, "vocab_size": vocab, "height": grid, "width": grid, "num_classes": classes,
                         "depth": n_self + n_cross, "query_depth": n_cross, "dim": dim,
                         "heads": hints.heads_for(dim, facts), "ffn_multiple": ffn_multiple_for(hidden, dim)})
    out: dict[str, torch.Tensor | None] = {
        "tok_emb.weight": emb[:vocab + 1], "cond_emb.weight": emb[vocab + 1:vocab + classes + 2],
        "spare_emb": emb[vocab + classes + 2:], "head.weight": t.take("head.weight", (vocab, dim)),
        "norm.weight": t.take("norm.weight", (dim,)), "content_norm.weight": t.take("layers.norm.weight", (dim,)),
        "to_k.weight": t.take("layers.to_k.weight", (dim, dim)), "to_v.weight": t.take("layers.to_v.weight", (dim, dim))}
    for i in range(n_self):
        _block(t, f"layers.self_dec.{i}", f"content_blocks.{i}", dim, hidden, out, cross=False)
    for i in range(n_cross):
        _block(t, f"layers.cross_dec.{i}", f"query_blocks.{i}", dim, hidden, out, cross=True)
    t.check()
    facts.append(f"ARPG: {n_self} self + {n_cross} cross layers, width {dim}, FFN {hidden}, {vocab} codes, "
                 f"{classes} classes")
    native = {"row": {"schedule": "random", "steps": 64, "knobs": {"sizes": "arpg-cosine"}},
              "cfg_schedule": "linear", "cfg_scale": _CFG.get(dim, 4.5),
              "source": "ARPG README model zoo: random order, cosine sizes, 64 steps, linear CFG"}
    return Converted(cfg, out, native, facts)
