"""RandAR (ziqipang/RandAR, RandAR/model/randar_gpt.py) -> orderlab's ``randar`` backbone in ``causal`` mode.

Official layout: ``tok_embeddings`` (V rows, no [MASK]), ``cls_embedding.embedding_table`` (K classes + the null
class), ``pos_instruct_embeddings`` (1, D), ``layers.{i}`` LlamaGen blocks (fused ``wqkv``, ``wo``,
``feed_forward.w1/w2/w3``), ``norm`` and ``output``. RandAR trains causal over the interleaved sequence and decodes
by re-feeding a step's instruction tokens beside the sampled tokens: orderlab's ``mode: causal``.
"""

from __future__ import annotations

from orderlab.model.config import PUBLISHED, ModelConfig
from orderlab.published import ConversionError, Converted, Hints, Taker, ffn_multiple_for, register_converter

# released checkpoints (README): L 3.4, XL 4.0; 88 steps, CFG rising linearly from 1 by tokens generated before a step
_CFG = {1024: 3.4, 1280: 4.0}
_ARCH = {k: v for k, v in PUBLISHED["randar-L"].items() if k not in ("depth", "dim", "heads", "height", "width",
                                                                      "vocab_size", "num_classes")}


@register_converter("randar")
def convert(t: Taker, hints: Hints) -> Converted:
    facts: list[str] = []
    tok, table = t.take("tok_embeddings.weight"), t.take("cls_embedding.embedding_table.weight")
    w1 = t.peek("layers.0.feed_forward.w1.weight")  # sizes; both are taken with their shapes below
    qkv0 = t.peek("layers.0.attention.wqkv.weight")
    if tok is None or table is None or w1 is None or qkv0 is None:
        t.check()
    vocab, dim = tok.shape
    if qkv0.shape[0] != 3 * dim:
        raise ConversionError(f"layers.0.attention.wqkv.weight has {qkv0.shape[0]} rows, not 3 x {dim}: grouped-query "
                              "attention (n_kv_head < n_head) is not supported")
    depth, hidden = t.count("layers.", ".attention.wqkv.weight"), w1.shape[0]
    grid = hints.grid_for(facts)
    cfg = ModelConfig(**{**_ARCH, "vocab_size": vocab, "height": grid, "width": grid,
                         "num_classes": table.shape[0] - 1, "depth": depth, "dim": dim,
                         "heads": hints.heads_for(dim, facts), "ffn_multiple": ffn_multiple_for(hidden, dim)})
    facts.append("classes: the class table's last row is the null class (RandAR trains with class dropout 0.1)")
    inst = t.take("pos_instruct_embeddings", (1, dim))
    out = {"tok_emb.weight": t.take("tok_embeddings.weight", (vocab, dim)),
           "cond_emb.weight": t.take("cls_embedding.embedding_table.weight", tuple(table.shape)),
           "instruct": None if inst is None else inst.reshape(dim),
           "norm.weight": t.take("norm.weight", (dim,)), "head.weight": t.take("output.weight", (vocab, dim))}
    for i in range(depth):
        src, dst = f"layers.{i}", f"blocks.{i}"
        out[f"{dst}.attn.qkv.weight"] = t.take(f"{src}.attention.wqkv.weight", (3 * dim, dim))  # [q; k; v]
        out[f"{dst}.attn.proj.weight"] = t.take(f"{src}.attention.wo.weight", (dim, dim))
        out[f"{dst}.attn_norm.weight"] = t.take(f"{src}.attention_norm.weight", (dim,))
        out[f"{dst}.ffn_norm.weight"] = t.take(f"{src}.ffn_norm.weight", (dim,))
        for n, shape in (("w1", (hidden, dim)), ("w3", (hidden, dim)), ("w2", (dim, hidden))):
            out[f"{dst}.ffn.{n}.weight"] = t.take(f"{src}.feed_forward.{n}.weight", shape)
    t.check()
    facts.append(f"RandAR: {depth} layers, width {dim}, FFN {hidden}, {vocab} codes, {cfg.num_classes} classes")
    native = {"row": {"schedule": "random", "steps": 88, "knobs": {"sizes": "randar"}},
              "cfg_schedule": "linear_before", "cfg_scale": _CFG.get(dim, 3.4),
              "source": "RandAR README: random order, 88 steps, CFG linear from 1 by tokens generated before a step"}
    return Converted(cfg, out, native, facts)
