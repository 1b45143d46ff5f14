"""Self-checks of tests/official_refs.py: the reference forwards of ARPG, LPD and RandAR and their checkpoint files.

The references were compared once with the official modules (see official_refs' docstring); these tests keep the
properties that must hold whatever the weights: layouts and published sizes, causality in generation order, group
visibility, label handling, and the file formats round-tripping through their loaders. Nothing here uses orderlab.
"""

import argparse
import ast
import pickle
from pathlib import Path

import pytest
import torch
from official_refs import (
    OFFICIAL_PARAM_COUNTS,
    ARPGConfig,
    LPDConfig,
    RandARConfig,
    arpg_logits,
    arpg_published,
    arpg_shapes,
    arpg_state,
    lpd_attention_mask,
    lpd_logits,
    lpd_published,
    lpd_shapes,
    lpd_state,
    param_count,
    randar_logits,
    randar_published,
    randar_shapes,
    randar_state,
    rope2d_angles,
    swiglu_hidden,
    write_arpg_ckpt,
    write_lpd_ckpt,
    write_randar_ckpt,
)

B = 3
GROUPS = [1, 2, 3, 4, 6]  # sums to the tiny grid's 16 tokens


def _inputs(cfg, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (B, n), generator=g)
    labels = torch.randint(0, cfg.num_classes, (B,), generator=g)
    order = torch.stack([torch.randperm(n, generator=g) for _ in range(B)])
    return labels, tokens, order


def _run(model, state, cfg, labels, tokens, order, **kw):
    if model == "arpg":
        return arpg_logits(state, cfg, labels, tokens, order, **kw)
    if model == "lpd":
        return lpd_logits(state, cfg, labels, tokens, order, GROUPS, **kw)
    return randar_logits(state, cfg, labels, tokens, order, **kw)


MODELS = {
    "arpg": (ARPGConfig(), arpg_state, arpg_shapes),
    "lpd": (LPDConfig(), lpd_state, lpd_shapes),
    "randar": (RandARConfig(), randar_state, randar_shapes),
}


def _n(cfg):
    return cfg.seq_len if isinstance(cfg, LPDConfig) else cfg.block_size


# --------------------------------------------------------------------------------------------- layouts and sizes


@pytest.mark.parametrize("model", MODELS)
def test_state_has_the_official_layout(model):
    cfg, make, shapes = MODELS[model]
    state = make(cfg, seed=0)
    assert list(state) == list(shapes(cfg))
    assert {k: tuple(v.shape) for k, v in state.items()} == shapes(cfg)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in state.values())
    norms = [v for k, v in state.items() if k.endswith("norm.weight") or k.endswith(("norm1.weight", "norm2.weight"))]
    assert norms and all((v - 1).abs().max() < 0.6 and (v - 1).abs().mean() > 0.01 for v in norms)
    assert torch.equal(make(cfg, seed=0)["head.weight" if model != "randar" else "output.weight"],
                       state["head.weight" if model != "randar" else "output.weight"])
    other = make(cfg, seed=1)
    assert all(not torch.equal(state[k], other[k]) for k in state)


def test_tiny_layout_details():
    a = arpg_shapes(ARPGConfig())
    assert a["embeddings.weight"] == (11 + 1 + 3 + 1 + 1, 32) and a["head.weight"] == (11, 32)
    assert a["layers.self_dec.0.ffn.w1.weight"] == (96, 32)  # int(2*128/3)=85 rounded up to a multiple of 16
    assert sum(k.startswith("layers.self_dec.") for k in a) == 2 * 9 and sum(k.startswith("layers.cross_dec.")
                                                                         for k in a) == 2 * 7
    assert not any("freqs_cis" in k for k in a)
    p = lpd_shapes(LPDConfig())
    assert p["pos_embed"] == (1, 17, 32) and p["blocks.1.attn.qkv.bias"] == (96,) and p["blocks.0.mlp.fc1.weight"] == (
        128, 32)
    r = randar_shapes(RandARConfig())
    assert r["cls_embedding.embedding_table.weight"] == (4, 32) and r["layers.0.attention.wqkv.weight"] == (96, 32)
    assert randar_shapes(RandARConfig(class_dropout_prob=0.0))["cls_embedding.embedding_table.weight"] == (3, 32)
    assert randar_shapes(RandARConfig(n_head=4, n_kv_head=1))["layers.0.attention.wqkv.weight"] == (48, 32)


@pytest.mark.parametrize("name", OFFICIAL_PARAM_COUNTS)
def test_published_parameter_counts(name):
    if name.startswith("ARPG"):
        shapes = arpg_shapes(arpg_published(name))
    elif name.startswith("lpd"):
        size, px = name.split("@")
        shapes = lpd_shapes(lpd_published(size, int(px)))
    else:
        shapes = randar_shapes(randar_published(name))
    assert param_count(shapes) == OFFICIAL_PARAM_COUNTS[name]


def test_swiglu_widths():
    assert [swiglu_hidden(d, 256) for d in (1024, 1280, 1536)] == [2816, 3584, 4096]
    assert arpg_published("ARPG-XXL").ffn_hidden == 4096 and randar_published("RandAR-XL").ffn_hidden == 3584
    assert [lpd_published(n).mlp_hidden for n in ("lpd_l", "lpd_xl", "lpd_xxl")] == [4096, 5120, 6144]


# --------------------------------------------------------------------------------------------- RoPE and masks


def test_rope2d_layout():
    ang = rope2d_angles(4, 16)
    assert ang.shape == (16, 8) and ang.dtype == torch.float64
    f = 10000.0 ** (-torch.arange(4, dtype=torch.float64) * 2 / 8)
    for p in range(16):
        row, col = divmod(p, 4)
        assert torch.allclose(ang[p, :4], row * f) and torch.allclose(ang[p, 4:], col * f)
    with pytest.raises(ValueError):
        rope2d_angles(4, 18)


def test_lpd_mask_by_hand():
    # context [class (id 0), group-1 input (id 2)], targets [group 1 (id 1), group 2 (id 3), group 2 (id 3)]
    expected = torch.tensor([[1, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0],
                             [1, 0, 1, 0, 0],
                             [1, 1, 0, 1, 1],
                             [1, 1, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(lpd_attention_mask([1, 2]), expected)
    m = lpd_attention_mask(GROUPS)
    assert m.shape == (2 * 16 + 1 - GROUPS[-1],) * 2 and m.diagonal().all()
    singles = lpd_attention_mask([1] * 4)  # one token per step: each target sees the class and the inputs before it
    ctx, tgt = singles[:4, :4], singles[4:, :4]
    assert torch.equal(ctx, torch.ones(4, 4, dtype=torch.bool).tril())
    assert torch.equal(tgt, torch.ones(4, 4, dtype=torch.bool).tril())
    assert torch.equal(singles[4:, 4:], torch.eye(4, dtype=torch.bool))


# --------------------------------------------------------------------------------------------- forwards


@pytest.mark.parametrize("model", MODELS)
def test_logits_shape_and_spread(model):
    cfg, make, _ = MODELS[model]
    n = _n(cfg)
    labels, tokens, order = _inputs(cfg, n)
    out = _run(model, make(cfg, seed=0), cfg, labels, tokens, order)
    assert out.shape == (B, n, cfg.vocab_size) and out.dtype == torch.float64 and torch.isfinite(out).all()
    assert out.std() > 0.3  # random head and weights: not degenerate
    assert (out.argmax(-1) != out.argmax(-1)[0, 0]).any()


@pytest.mark.parametrize("model", MODELS)
def test_batch_rows_are_independent_and_order_broadcasts(model):
    cfg, make, _ = MODELS[model]
    state = make(cfg, seed=0)
    labels, tokens, order = _inputs(cfg, _n(cfg))
    full = _run(model, state, cfg, labels, tokens, order)
    for b in range(B):
        one = _run(model, state, cfg, labels[b:b + 1], tokens[b:b + 1], order[b:b + 1])
        assert torch.allclose(one[0], full[b], atol=1e-12)
    shared = _run(model, state, cfg, labels, tokens, order[0])
    assert torch.allclose(shared, _run(model, state, cfg, labels, tokens, order[0].expand(B, -1)), atol=1e-12)


@pytest.mark.parametrize("model", ["arpg", "randar"])
def test_row_i_sees_exactly_the_tokens_before_it_in_order(model):
    cfg, make, _ = MODELS[model]
    state = make(cfg, seed=0)
    n = _n(cfg)
    labels, tokens, order = _inputs(cfg, n)
    base = _run(model, state, cfg, labels, tokens, order)
    rows = torch.arange(B)
    for j in range(n):
        changed = tokens.clone()
        changed[rows, order[:, j]] = (tokens[rows, order[:, j]] + 1) % cfg.vocab_size
        out = _run(model, state, cfg, labels, changed, order)
        assert torch.allclose(out[:, : j + 1], base[:, : j + 1], atol=1e-12), j  # rows 0..j never see order[j]
        if j + 1 < n:
            assert (out[:, j + 1] - base[:, j + 1]).abs().amax(-1).min() > 1e-6, j  # row j+1 does


def test_lpd_group_visibility():
    cfg, make, _ = MODELS["lpd"]
    state = make(cfg, seed=0)
    n = cfg.seq_len
    labels, tokens, order = _inputs(cfg, n)
    group = torch.repeat_interleave(torch.arange(len(GROUPS)), torch.tensor(GROUPS))  # group of each order slot
    base = lpd_logits(state, cfg, labels, tokens, order, GROUPS)
    rows = torch.arange(B)
    for j in range(n):
        changed = tokens.clone()
        changed[rows, order[:, j]] = (tokens[rows, order[:, j]] + 1) % cfg.vocab_size
        out = lpd_logits(state, cfg, labels, changed, order, GROUPS)
        same = group <= group[j]  # rows of the token's own group and earlier ones never see it
        assert torch.allclose(out[:, same], base[:, same], atol=1e-12), j
        if (~same).any():
            assert (out[:, ~same] - base[:, ~same]).abs().amax(-1).min() > 1e-6, j  # every later row does


def test_lpd_is_equivariant_to_permutations_inside_a_group():
    cfg, make, _ = MODELS["lpd"]
    state = make(cfg, seed=0)
    labels, tokens, order = _inputs(cfg, cfg.seq_len)
    base = lpd_logits(state, cfg, labels, tokens, order, GROUPS)
    perm = torch.arange(cfg.seq_len)
    perm[10:16] = perm[10:16].flip(0)  # the last group (6 tokens)
    perm[3:6] = torch.tensor([5, 3, 4])  # the third group
    out = lpd_logits(state, cfg, labels, tokens, order[:, perm], GROUPS)
    assert torch.allclose(out, base[:, perm], atol=1e-10)
    # a different grouping of the same order is a different model input
    other = lpd_logits(state, cfg, labels, tokens, order, [1] * 16)
    assert not torch.allclose(other, base, atol=1e-3)


def test_lpd_rejects_bad_group_sizes():
    cfg, make, _ = MODELS["lpd"]
    labels, tokens, order = _inputs(cfg, cfg.seq_len)
    with pytest.raises(ValueError):
        lpd_logits(make(cfg), cfg, labels, tokens, order, [4, 4])
    with pytest.raises(ValueError):
        lpd_logits(make(cfg), cfg, labels, tokens, order, [0, 16])


@pytest.mark.parametrize("model", MODELS)
def test_labels_condition_every_row_and_drop_label_uses_the_null_class(model):
    cfg, make, _ = MODELS[model]
    state = make(cfg, seed=0)
    labels, tokens, order = _inputs(cfg, _n(cfg))
    base = _run(model, state, cfg, labels, tokens, order)
    other = _run(model, state, cfg, (labels + 1) % cfg.num_classes, tokens, order)
    assert (other - base).abs().amax(-1).min() > 1e-6
    null = _run(model, state, cfg, labels, tokens, order, drop_label=True)
    assert (null - base).abs().amax(-1).min() > 1e-6
    assert torch.allclose(null, _run(model, state, cfg, (labels + 1) % cfg.num_classes, tokens, order,
                                     drop_label=True), atol=1e-12)  # the label no longer matters
    mixed = _run(model, state, cfg, labels, tokens, order, drop_label=torch.tensor([True, False, True]))
    assert torch.allclose(mixed[[0, 2]], null[[0, 2]], atol=1e-12) and torch.allclose(mixed[1], base[1], atol=1e-12)
    # which weights the null class reads
    poked = dict(state)
    bump = torch.randn(cfg.dim, generator=torch.Generator().manual_seed(9))  # not a constant: LPD's LayerNorm
    if model == "arpg":
        emb = state["embeddings.weight"].clone()
        emb[cfg.null_class_id] += bump
        poked["embeddings.weight"] = emb
    elif model == "lpd":
        poked["fake_latent"] = state["fake_latent"] + bump
    else:
        tab = state["cls_embedding.embedding_table.weight"].clone()
        tab[cfg.num_classes] += bump
        poked["cls_embedding.embedding_table.weight"] = tab
    assert torch.allclose(_run(model, poked, cfg, labels, tokens, order), base, atol=1e-12)
    assert not torch.allclose(_run(model, poked, cfg, labels, tokens, order, drop_label=True), null, atol=1e-6)


def test_randar_null_class_is_the_last_label_row():
    cfg, make, _ = MODELS["randar"]
    state = make(cfg, seed=0)
    labels, tokens, order = _inputs(cfg, cfg.block_size)
    null = randar_logits(state, cfg, labels, tokens, order, drop_label=True)
    assert torch.allclose(null, randar_logits(state, cfg, torch.full_like(labels, cfg.num_classes), tokens, order))


def test_randar_grouped_query_attention_runs():
    cfg = RandARConfig(n_head=4, n_kv_head=1)
    labels, tokens, order = _inputs(cfg, cfg.block_size)
    out = randar_logits(randar_state(cfg, seed=0), cfg, labels, tokens, order)
    assert out.shape == (B, cfg.block_size, cfg.vocab_size) and torch.isfinite(out).all()


def test_references_accept_low_precision_states():
    cfg, make, _ = MODELS["randar"]
    state = make(cfg, seed=0)
    labels, tokens, order = _inputs(cfg, cfg.block_size)
    half = {k: v.to(torch.bfloat16) for k, v in state.items()}
    out = randar_logits(half, cfg, labels, tokens, order)
    rounded = randar_logits({k: v.float() for k, v in half.items()}, cfg, labels, tokens, order)
    assert out.dtype == torch.float64 and torch.equal(out, rounded)


# --------------------------------------------------------------------------------------------- checkpoint files


def _same(a, b):
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_arpg_train_checkpoint_round_trip(tmp_path):
    cfg = ARPGConfig()
    state, ema = arpg_state(cfg, seed=0), arpg_state(cfg, seed=1)
    path = tmp_path / "0005000.pt"
    write_arpg_ckpt(path, state, layout="train", ema=ema, steps=5000)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    assert set(ck) == {"model", "optimizer", "steps", "args", "ema"} and ck["steps"] == 5000
    assert _same(ck["model"], state) and _same(ck["ema"], ema)
    assert isinstance(ck["args"], argparse.Namespace) and ck["args"].gpt_model == "ARPG-L"
    assert set(ck["optimizer"]) == {"state", "param_groups"} and len(ck["optimizer"]["param_groups"]) == 2
    with pytest.raises(pickle.UnpicklingError):  # the pickled Namespace
        torch.load(path, map_location="cpu", weights_only=True)
    with torch.serialization.safe_globals([argparse.Namespace]):
        assert _same(torch.load(path, map_location="cpu", weights_only=True)["model"], state)
    write_arpg_ckpt(tmp_path / "no_ema.pt", state)
    assert set(torch.load(tmp_path / "no_ema.pt", weights_only=False)) == {"model", "optimizer", "steps", "args"}


@pytest.mark.parametrize("layout,key", [("state_dict", "state_dict"), ("module", "module"), ("bare", None)])
def test_arpg_weight_only_layouts(tmp_path, layout, key):
    state = arpg_state(ARPGConfig(), seed=0)
    write_arpg_ckpt(tmp_path / "arpg.pt", state, layout=layout)
    ck = torch.load(tmp_path / "arpg.pt", map_location="cpu", weights_only=True)
    assert _same(ck if key is None else ck[key], state)
    if key is not None:
        assert list(ck) == [key]


def test_arpg_prefix_and_bad_layout(tmp_path):
    state = arpg_state(ARPGConfig(), seed=0)
    write_arpg_ckpt(tmp_path / "p.pt", state, layout="bare", prefix="_orig_mod.")
    ck = torch.load(tmp_path / "p.pt", weights_only=True)
    assert list(ck) == ["_orig_mod." + k for k in state]
    with pytest.raises(ValueError):
        write_arpg_ckpt(tmp_path / "x.pt", state, layout="ema")


def test_lpd_checkpoint_round_trip(tmp_path):
    state = lpd_state(LPDConfig(), seed=0)
    path = tmp_path / "checkpoint-last.pth"
    write_lpd_ckpt(path, state, epoch=399)
    ck = torch.load(path, map_location="cpu", weights_only=False)
    assert set(ck) == {"model", "optimizer", "epoch", "scaler", "args"} and ck["epoch"] == 399  # no EMA in LPD
    assert _same(ck["model"], state)
    assert isinstance(ck["args"], argparse.Namespace) and ck["args"].model == "lpd_l"
    assert set(ck["scaler"]) >= {"scale", "_growth_tracker"}
    groups = ck["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.0, 0.02]
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    write_lpd_ckpt(tmp_path / "lpd_l_256.pth", state, layout="model")
    ck = torch.load(tmp_path / "lpd_l_256.pth", map_location="cpu", weights_only=True)
    assert list(ck) == ["model"] and _same(ck["model"], state)


def test_randar_safetensors_round_trip(tmp_path):
    safetensors = pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    state = randar_state(RandARConfig(), seed=0)
    path = tmp_path / "randar_0.3b_llamagen_360k_bs_1024_lr_0.0004.safetensors"
    write_randar_ckpt(path, state)
    loaded = load_file(str(path))
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt"}
    write_randar_ckpt(tmp_path / "model.safetensors", state, prefix="module.", dtype=torch.bfloat16)
    loaded = load_file(str(tmp_path / "model.safetensors"))
    assert set(loaded) == {"module." + k for k in state}
    assert all(loaded["module." + k].dtype == torch.bfloat16 and torch.equal(loaded["module." + k],
                                                                             state[k].bfloat16()) for k in state)


def test_reference_module_does_not_import_orderlab():
    tree = ast.parse((Path(__file__).parent / "official_refs.py").read_text())
    names = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(n.split(".")[0] == "orderlab" for n in names)
