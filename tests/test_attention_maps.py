"""Attention-locality maps: exact on hand-built and uniform attention, consistent with the raw probe, both backbones."""

import pytest
import torch
from helpers import tiny_model

from orderlab.analysis.attention_maps import (
    attention_locality,
    locality_from_weights,
    map_share,
    query_layers,
    uniform_baseline,
)
from orderlab.decoding.decode import make_plans
from orderlab.decoding.scoring import training_logits
from orderlab.model.masks import training_mask
from orderlab.model.probe import probe_attention
from orderlab.plan import Plan


def _raster(h, w):
    return Plan.from_groups([[i] for i in range(h * w)], h, w)


def _data(model, b=3, seed=0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (b, cfg.height, cfg.width), generator=g)  # (B, H, W)
    labels = torch.randint(0, cfg.num_classes, (b,), generator=g)  # (B,)
    return tokens, labels


def test_hand_built_attention_gives_exact_map_on_non_square_grid():
    # 2x3 raster, one token per step: query j (target j) puts all its mass on content j-1, query 0 on the class
    h, w, n = 2, 3, 6
    plan = _raster(h, w)
    nc = n - 1
    wt = torch.zeros(1, n, 1 + nc)  # (B, N, C + Nc): keys = [cond] + content 0..4
    wt[0, 0, 0] = 1.0
    for j in range(1, n):
        wt[0, j, 1 + (j - 1)] = 1.0
    out = locality_from_weights({0: wt}, [plan], num_cond=1, radius=1)
    want = torch.zeros(2 * h - 1, 2 * w - 1, dtype=torch.float64)  # (3, 5)
    want[0 + h - 1, -1 + w - 1] = 4 / 6  # targets 1, 2, 4, 5 see their left neighbour
    want[-1 + h - 1, 2 + w - 1] = 1 / 6  # target 3 = (1, 0) sees content 2 = (0, 2)
    torch.testing.assert_close(out.maps[0], want)
    assert out.content_mass[0] == pytest.approx(5 / 6)
    assert out.cond_mass[0] == pytest.approx(1 / 6)
    assert out.query_mass[0] == 0.0
    assert out.share[0] == pytest.approx(4 / 5)
    assert map_share(out.maps[0], 2) == pytest.approx(1.0)
    # uniform over visible content, per query: 1/1, 1/2, 2/3, 4/4, 3/5 within r=1 (query 0 sees none)
    assert uniform_baseline([plan], 1) == pytest.approx((1 + 1 / 2 + 2 / 3 + 1 + 3 / 5) / 5)
    # mass-matched: each query has content mass 1 except query 0 (0), so the same five numbers, equally weighted
    assert out.uniform_share[0] == pytest.approx((1 + 1 / 2 + 2 / 3 + 1 + 3 / 5) / 5)


def _zero_queries(model):
    """Make every query's attention uniform over the keys it may see: q = 0 gives equal scores."""
    with torch.no_grad():
        for m in model.attention_modules():
            if hasattr(m, "to_q"):
                m.to_q.weight.zero_()
            else:
                m.qkv.weight[: m.qkv.weight.shape[1]].zero_()  # the first D output rows are q


@pytest.mark.parametrize("arch,mutual", [("stream", True), ("stream", False), ("decoupled", False)])
def test_uniform_attention_gives_predicted_map_and_baseline(arch, mutual):
    model = tiny_model(arch=arch, mutual=mutual, height=4, width=5)  # non-square on purpose
    _zero_queries(model)
    cfg = model.config
    h, w, n, c = cfg.height, cfg.width, cfg.num_tokens, cfg.cond_tokens
    tokens, labels = _data(model, b=2)
    plans, _ = make_plans("random", h, w, 6, 2, seed=3)
    out = attention_locality(model, tokens, labels, plans, radius=1)
    assert sorted(out.maps) == query_layers(model)

    sizes = plans[0].sizes
    nc = n - sizes[-1]
    mask = training_mask(sizes, c, mutual, cfg.block)[c + nc:]  # (N, C + Nc + N) rows of the queries
    if arch == "decoupled":
        mask = mask[:, :c + nc]  # cross-attention keys: cond + content only
    want = torch.zeros(2 * h - 1, 2 * w - 1, dtype=torch.float64)
    cond = near = total = 0.0
    for p in plans:
        for j in range(n):
            seen = int(mask[j].sum())
            tr, tc = divmod(int(p.order[j]), w)
            cond += c / seen
            for k in range(nc):
                if mask[j, c + k]:
                    cr, cc = divmod(int(p.order[k]), w)
                    want[cr - tr + h - 1, cc - tc + w - 1] += 1 / seen
                    total += 1 / seen
                    near += (max(abs(cr - tr), abs(cc - tc)) <= 1) / seen
    want /= len(plans) * n
    for layer in out.maps:
        torch.testing.assert_close(out.maps[layer], want, atol=1e-6, rtol=0)
        assert out.cond_mass[layer] == pytest.approx(cond / (len(plans) * n), abs=1e-6)
        assert out.share[layer] == pytest.approx(near / total, abs=1e-6)
        # uniform attention is its own baseline
        assert out.share[layer] == pytest.approx(out.uniform_share[layer], abs=1e-6)


@pytest.mark.parametrize("arch,mutual", [("stream", True), ("decoupled", False)])
def test_map_sums_to_the_content_mass_measured_by_the_raw_probe(arch, mutual):
    model = tiny_model(arch=arch, mutual=mutual, height=3, width=4)
    cfg = model.config
    n, c = cfg.num_tokens, cfg.cond_tokens
    tokens, labels = _data(model, b=3, seed=1)
    plans, _ = make_plans("random", cfg.height, cfg.width, 5, 3, seed=7)
    out = attention_locality(model, tokens, labels, plans, chunk=2)  # chunking must not change anything
    nc = n - plans[0].sizes[-1]
    layers = query_layers(model)
    with torch.no_grad(), probe_attention(model, layers) as probe:
        training_logits(model, labels, tokens, plans)
    for layer in layers:
        raw = probe.weights[layer][0][:, :, -n:]  # (B, Hh, N, K) query rows
        content = raw[..., c:c + nc].sum(-1).mean()
        assert float(out.maps[layer].sum()) == pytest.approx(float(content), abs=1e-6)
        assert out.content_mass[layer] == pytest.approx(float(content), abs=1e-6)
        parts = out.content_mass[layer] + out.cond_mass[layer] + out.query_mass[layer]
        assert parts == pytest.approx(1.0, abs=1e-6)
        assert float(out.maps[layer][cfg.height - 1, cfg.width - 1]) == 0.0  # no query sees its own target
        assert 0.0 <= out.share[layer] <= 1.0
    assert (out.query_mass[layers[0]] > 0) == (arch == "stream")


def test_schedule_route_matches_plans_and_is_seeded():
    model = tiny_model(height=4, width=4)
    tokens, labels = _data(model, b=2)
    a = attention_locality(model, tokens, labels, schedule="random", steps=4, seed=5, layers=[-1])
    plans, _ = make_plans("random", 4, 4, 4, 2, seed=5)
    b = attention_locality(model, tokens, labels, plans, layers=[model.config.depth - 1])
    assert list(a.maps) == [model.config.depth - 1]
    torch.testing.assert_close(a.maps[2], b.maps[2])
    assert model.training is False


def test_decoupled_content_layers_are_rejected():
    model = tiny_model(arch="decoupled", mutual=False, depth=4)
    assert query_layers(model) == [2, 3]  # pass 1 = layers 0, 1 (content only); pass 2 = 2, 3
    tokens, labels = _data(model, b=1)
    with pytest.raises(ValueError, match="hold no position queries"):
        attention_locality(model, tokens, labels, schedule="random", steps=4, layers=[0])


def test_one_step_plan_has_no_content():
    model = tiny_model(height=2, width=2)
    tokens, labels = _data(model, b=1)
    out = attention_locality(model, tokens, labels, schedule="random", steps=1)
    assert out.content_mass[0] == 0.0 and out.share[0] != out.share[0]  # nan: no content to share
