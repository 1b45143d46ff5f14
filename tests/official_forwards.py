"""The reference forwards of tests/official_refs.py: ARPG, LPD and RandAR teacher-forced logits in float64,
written from the official code's semantics (see official_refs.py for the sources and the checks)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # official_refs imports this module at its end; the configs are only annotations here
    from official_refs import ARPGConfig, LPDConfig, RandARConfig

# ----------------------------------------------------------------------------------------------------------
# shared float64 pieces
# ----------------------------------------------------------------------------------------------------------


def _f64(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to(torch.float64) for k, v in state.items()}


def _batch_order(order: torch.Tensor, batch: int) -> torch.Tensor:
    order = torch.as_tensor(order, dtype=torch.long)
    return order.expand(batch, -1) if order.ndim == 1 else order


def _drop_mask(drop_label, batch: int) -> torch.Tensor:
    return torch.as_tensor(drop_label, dtype=torch.bool).expand(batch)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _swiglu(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    w1, w3, w2 = sd[prefix + "w1.weight"], sd[prefix + "w3.weight"], sd[prefix + "w2.weight"]
    return (F.silu(x @ w1.T) * (x @ w3.T)) @ w2.T


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, T, n*hd) -> (B, T, n, hd)."""
    return x.reshape(*x.shape[:-1], n, x.shape[-1] // n)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax attention, (B, T, H, hd) each; ``allowed`` (Tq, Tk) or (B, Tq, Tk) bool. Returns (B, Tq, H*hd)."""
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    mask = allowed if allowed.ndim == 2 else allowed[:, None]
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)
    return out.reshape(*out.shape[:2], -1)


def rope2d_angles(grid: int, head_dim: int, base: float = 10000.0) -> torch.Tensor:
    """LlamaGen's 2D RoPE as angles (grid*grid, head_dim // 2), float64, for the raster position p = row*grid + col.

    Rotation pair j (elements 2j, 2j+1 of a head) turns by row * f_j for j < head_dim/4 and by col * f_(j - head_dim/4)
    after, with f_j = base ** (-2j / (head_dim / 2)).
    """
    if head_dim % 4:
        raise ValueError(f"2D RoPE needs head_dim divisible by 4, got {head_dim}")
    quarter = head_dim // 4
    freqs = base ** (-(2.0 * torch.arange(quarter, dtype=torch.float64)) / (head_dim // 2))
    pos = torch.arange(grid * grid)
    rows, cols = (pos // grid).to(torch.float64), (pos % grid).to(torch.float64)
    return torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=-1)


def _cos_sin(angles: torch.Tensor, positions: torch.Tensor, zero_slots: int = 0):
    """cos, sin (B, zero_slots + T, hd/2) for raster ``positions`` (B, T); the leading slots get cos = sin = 0."""
    ang = angles[positions]
    cos, sin = ang.cos(), ang.sin()
    if zero_slots:
        pad = torch.zeros(positions.shape[0], zero_slots, angles.shape[-1], dtype=angles.dtype)
        cos, sin = torch.cat([pad, cos], 1), torch.cat([pad, sin], 1)
    return cos, sin


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of x (B, T, H, hd) by (B, T, hd/2) cos/sin (shared by all heads)."""
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[:, :, None], sin[:, :, None]
    return torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1).flatten(-2)


def _causal(t: int) -> torch.Tensor:
    return torch.ones(t, t, dtype=torch.bool).tril()


# ----------------------------------------------------------------------------------------------------------
# ARPG
# ----------------------------------------------------------------------------------------------------------


def arpg_logits(state: dict[str, torch.Tensor], cfg: ARPGConfig, labels: torch.Tensor, tokens: torch.Tensor,
                order: torch.Tensor, drop_label=False) -> torch.Tensor:
    """ARPG ``Transformer.forward`` in training mode (causal attention) without dropout, for a given order.

    Inputs [class, x[order[0]], ..., x[order[N-2]]] through the causal self-decoders, the shared K (RoPE'd at the
    input slots, the class slot's rotation being zero) and V, then N mask-token queries RoPE'd at the target
    positions order[0..N-1] through the causal cross-decoders; final RMSNorm and head.
    ``drop_label`` (bool or (B,) bool): the null class id V+C+1 instead of the label.
    Returns float64 (B, N, V) in generation order.
    """
    sd = _f64(state)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    batch, n = tokens.shape
    order = _batch_order(order, batch)
    labels = torch.as_tensor(labels, dtype=torch.long)
    cond = torch.where(_drop_mask(drop_label, batch), cfg.null_class_id, labels + cfg.vocab_size + 1)
    emb = sd["embeddings.weight"]
    x = emb[torch.cat([cond[:, None], tokens.gather(1, order)[:, :-1]], dim=1)]  # (B, N, D)
    queries = emb[cfg.mask_id].expand(batch, n, -1)

    angles = rope2d_angles(cfg.grid, cfg.head_dim, cfg.rope_base)
    in_cos, in_sin = _cos_sin(angles, order[:, :-1], zero_slots=1)  # class slot, then the inputs' positions
    tg_cos, tg_sin = _cos_sin(angles, order)  # the targets' positions
    causal, h, eps = _causal(n), cfg.n_head, cfg.norm_eps

    for i in range(cfg.n_layer // 2):
        p = f"layers.self_dec.{i}."
        a = _rms_norm(x, sd[p + "attn_norm.weight"], eps)
        q = _rotate(_heads(a @ sd[p + "attn.to_q.weight"].T, h), in_cos, in_sin)
        k = _rotate(_heads(a @ sd[p + "attn.to_k.weight"].T, h), in_cos, in_sin)
        v = _heads(a @ sd[p + "attn.to_v.weight"].T, h)
        x = x + _attend(q, k, v, causal) @ sd[p + "attn.proj.weight"].T
        x = x + _swiglu(_rms_norm(x, sd[p + "ffn_norm.weight"], eps), sd, p + "ffn.")

    xn = _rms_norm(x, sd["layers.norm.weight"], eps)
    k = _rotate(_heads(xn @ sd["layers.to_k.weight"].T, h), in_cos, in_sin)
    v = _heads(xn @ sd["layers.to_v.weight"].T, h)
    g = queries
    for i in range(cfg.n_layer // 2):
        p = f"layers.cross_dec.{i}."
        a = _rms_norm(g, sd[p + "attn_norm.weight"], eps)
        q = _rotate(_heads(a @ sd[p + "attn.to_q.weight"].T, h), tg_cos, tg_sin)
        g = g + _attend(q, k, v, causal) @ sd[p + "attn.proj.weight"].T
        g = g + _swiglu(_rms_norm(g, sd[p + "ffn_norm.weight"], eps), sd, p + "ffn.")
    return _rms_norm(g, sd["norm.weight"], eps) @ sd["head.weight"].T


# ----------------------------------------------------------------------------------------------------------
# LPD
# ----------------------------------------------------------------------------------------------------------


def lpd_attention_mask(group_sizes) -> torch.Tensor:
    """LPD's training mask (``models/mask.py``) as a dense (T, T) bool, T = 2N + 1 - group_sizes[-1].

    Rows/columns: the context [class, inputs of groups 1..K-1] (group ids 0, 2, 4, ..., 2K-2: the class is group 0,
    the inputs of group j carry 2j), then the N target queries (group j carries 2j-1). A query sees a key when both
    carry the same id, or the key is in the context and its id is smaller.
    """
    sizes = [int(s) for s in group_sizes]
    ctx_ids = [0] + [2 * j for j, s in enumerate(sizes[:-1], start=1) for _ in range(s)]
    tgt_ids = [2 * j - 1 for j, s in enumerate(sizes, start=1) for _ in range(s)]
    ids = torch.tensor(ctx_ids + tgt_ids)
    in_ctx = torch.arange(len(ids)) < len(ctx_ids)
    same = ids[:, None] == ids[None, :]
    earlier_ctx = (ids[None, :] < ids[:, None]) & in_ctx[None, :]
    return same | earlier_ctx


def lpd_logits(state: dict[str, torch.Tensor], cfg: LPDConfig, labels: torch.Tensor, tokens: torch.Tensor,
               order: torch.Tensor, group_sizes, drop_label=False) -> torch.Tensor:
    """LPD ``forward_decoder`` + ``head`` in eval mode (no dropout) for a given order and group sizes.

    Context rows: the class embedding (``class_emb[label]``, or ``fake_latent`` where ``drop_label``) + pos_embed[0],
    then token_emb[x[order[t]]] + pos_embed[1 + order[t]] for the tokens of all groups but the last; query rows:
    mask_token + pos_embed[1 + order[t]] for all N targets; z_proj_ln on both; pre-norm blocks (qkv with bias, the
    group mask of ``lpd_attention_mask``, exact-erf GELU MLP); final LayerNorm; head on the last N rows.
    ``group_sizes``: positive ints summing to N. Returns float64 (B, N, V) in generation order.
    """
    sd = _f64(state)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    batch, n = tokens.shape
    order = _batch_order(order, batch)
    sizes = [int(s) for s in group_sizes]
    if sum(sizes) != n or min(sizes) < 1:
        raise ValueError(f"group sizes {sizes} must be positive and sum to {n}")
    d, eps = cfg.dim, cfg.norm_eps
    pos = sd["pos_embed"][0]  # (N + 1, D): slot 0 the class, 1 + p grid position p
    labels = torch.as_tensor(labels, dtype=torch.long)
    cls = torch.where(_drop_mask(drop_label, batch)[:, None], sd["fake_latent"], sd["class_emb.weight"][labels])

    def z_ln(t):
        return F.layer_norm(t, (d,), sd["z_proj_ln.weight"], sd["z_proj_ln.bias"], 1e-6)

    ctx = torch.cat([(cls + pos[0])[:, None], sd["token_emb.weight"][tokens.gather(1, order)] + pos[1 + order]], 1)
    qry = sd["mask_token"].reshape(1, 1, d) + pos[1 + order]
    x = torch.cat([z_ln(ctx)[:, : n + 1 - sizes[-1]], z_ln(qry)], dim=1)
    allowed = lpd_attention_mask(sizes)
    h = cfg.n_head
    for i in range(cfg.depth):
        p = f"blocks.{i}."
        a = F.layer_norm(x, (d,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = a @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
        q, k, v = (_heads(t, h) for t in qkv.split(d, dim=-1))
        x = x + _attend(q, k, v, allowed) @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
        a = F.layer_norm(x, (d,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        m = F.gelu(a @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
        x = x + m @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    x = F.layer_norm(x, (d,), sd["norm.weight"], sd["norm.bias"], eps)
    return x[:, -n:] @ sd["head.weight"].T


# ----------------------------------------------------------------------------------------------------------
# RandAR
# ----------------------------------------------------------------------------------------------------------


def randar_logits(state: dict[str, torch.Tensor], cfg: RandARConfig, labels: torch.Tensor, tokens: torch.Tensor,
                  order: torch.Tensor, drop_label=False) -> torch.Tensor:
    """RandAR ``forward_train`` in eval mode (no dropout) with a given ``token_order``.

    Sequence [class, P_0, x[order[0]], P_1, x[order[1]], ..., P_{N-1}, x[order[N-1]]] where P_t is
    ``pos_instruct_embeddings`` split per head and rotated by the 2D RoPE of order[t]; in every layer q and k are
    RoPE'd by slot (class: zero rotation, P_t and x_t: order[t]); causal attention over the whole sequence; final
    RMSNorm; output head; the logits of the P_t rows. ``drop_label``: the null-class row ``num_classes``.
    Returns float64 (B, N, V) in generation order.
    """
    sd = _f64(state)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    batch, n = tokens.shape
    order = _batch_order(order, batch)
    d, h, hd, kvh, eps = cfg.dim, cfg.n_head, cfg.head_dim, cfg.kv_heads, cfg.norm_eps
    labels = torch.as_tensor(labels, dtype=torch.long)
    labels = torch.where(_drop_mask(drop_label, batch), cfg.num_classes, labels)
    cls = sd["cls_embedding.embedding_table.weight"][labels]  # (B, D)

    angles = rope2d_angles(cfg.grid, hd, cfg.rope_base)
    t_cos, t_sin = _cos_sin(angles, order)  # (B, N, hd/2)
    instr = sd["pos_instruct_embeddings"].reshape(1, 1, h, hd).expand(batch, n, h, hd)
    instr = _rotate(instr, t_cos, t_sin).reshape(batch, n, d)
    toks = sd["tok_embeddings.weight"][tokens.gather(1, order)]
    x = torch.cat([cls[:, None], torch.stack([instr, toks], dim=2).reshape(batch, 2 * n, d)], dim=1)
    slot_pos = order.repeat_interleave(2, dim=1)  # P_t and x_t share order[t]
    cos, sin = _cos_sin(angles, slot_pos, zero_slots=1)
    causal = _causal(1 + 2 * n)
    for i in range(cfg.n_layer):
        p = f"layers.{i}."
        a = _rms_norm(x, sd[p + "attention_norm.weight"], eps)
        q, k, v = (a @ sd[p + "attention.wqkv.weight"].T).split([d, kvh * hd, kvh * hd], dim=-1)
        q = _rotate(_heads(q, h), cos, sin)
        k = _rotate(_heads(k, kvh), cos, sin).repeat_interleave(h // kvh, dim=2)
        v = _heads(v, kvh).repeat_interleave(h // kvh, dim=2)
        x = x + _attend(q, k, v, causal) @ sd[p + "attention.wo.weight"].T
        x = x + _swiglu(_rms_norm(x, sd[p + "ffn_norm.weight"], eps), sd, p + "feed_forward.")
    logits = _rms_norm(x, sd["norm.weight"], eps) @ sd["output.weight"].T
    return logits[:, 1::2]
