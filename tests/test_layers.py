"""FlexAttention and SDPA compute the same model: the training forward, the cached decode and the probe agree.

On CPU the eager FlexAttention reference kernel runs; the compiled CUDA kernel is exercised by
``orderlab bench decode --device cuda --attention flex`` where a GPU is available.
"""

import dataclasses

import pytest
import torch

from orderlab.decoding.decode import generate, make_plans
from orderlab.decoding.scoring import stepwise_logits, training_logits
from orderlab.model.config import ModelConfig
from orderlab.model.registry import build_model


def _pair(arch, mutual):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=7, height=4, width=5, num_classes=3, depth=2, dim=16, heads=2, arch=arch,
                      mutual=mutual)
    a = build_model(cfg).double().eval()
    b = build_model(dataclasses.replace(cfg, attention="flex")).double().eval()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("arch, mutual", [("stream", True), ("stream", False), ("decoupled", False)])
@torch.no_grad()  # the eager CPU FlexAttention kernel has no backward
def test_flex_kernel_matches_sdpa(arch, mutual):
    sdpa, flex = _pair(arch, mutual)
    assert {m.impl for m in flex.modules() if hasattr(m, "impl")} == {"flex"}
    tokens = torch.randint(0, 7, (3, 4, 5))
    labels = torch.tensor([0, 1, 2])
    plans, _ = make_plans("locality", 4, 5, 6, 3, seed=1)
    ref = training_logits(sdpa, labels, tokens, plans)
    assert torch.allclose(training_logits(flex, labels, tokens, plans), ref, atol=1e-10)
    assert torch.allclose(stepwise_logits(flex, labels, tokens, plans), ref, atol=1e-10)
    out_a = generate(sdpa, "random", 5, labels, seed=3, cfg_scale=2.0)
    out_b = generate(flex, "random", 5, labels, seed=3, cfg_scale=2.0)
    assert torch.equal(out_a, out_b)


def test_flex_training_on_cpu_is_a_clear_error():
    model = build_model(ModelConfig(attention="flex")).train()
    plans, _ = make_plans("random", 8, 8, 8, 2, seed=0)
    with pytest.raises(ValueError, match="no backward pass on CPU"):
        training_logits(model, torch.tensor([0, 1]), torch.zeros(2, 8, 8, dtype=torch.long), plans)


def test_unknown_kernel_and_dropout_are_errors():
    with pytest.raises(ValueError, match="model.attention='xformers'"):
        ModelConfig(attention="xformers")
    model = build_model(ModelConfig(attention="flex", dropout=0.1)).train()
    plans, _ = make_plans("random", 8, 8, 8, 2, seed=0)
    with torch.no_grad(), pytest.raises(ValueError, match="dropout"):
        training_logits(model, torch.tensor([0, 1]), torch.zeros(2, 8, 8, dtype=torch.long), plans)


@torch.no_grad()
def test_flex_builds_one_block_mask_per_forward(monkeypatch):
    import torch.nn.attention.flex_attention as fa

    _, flex = _pair("stream", True)
    calls = []
    real = fa.create_block_mask
    monkeypatch.setattr(fa, "create_block_mask", lambda *a, **k: calls.append(1) or real(*a, **k))
    tokens, labels = torch.randint(0, 7, (2, 4, 5)), torch.tensor([0, 1])
    plans, _ = make_plans("random", 4, 5, 4, 2, seed=0)
    training_logits(flex, labels, tokens, plans)
    assert len(calls) == 1  # depth 2, one block mask: the layers share it
    other, _ = make_plans("random", 4, 5, 6, 2, seed=0)  # other group sizes: another mask, another block mask
    assert torch.allclose(training_logits(flex, labels, tokens, other),
                          training_logits(_pair("stream", True)[0], labels, tokens, other), atol=1e-10)
    assert len(calls) == 2


def _rolled(plan, dr, dc):
    """The plan moved round the torus by (dr, dc): every position r * W + c goes to its shifted place."""
    from orderlab.plan import Plan

    h, w = plan.height, plan.width
    order = ((plan.order // w + dr) % h) * w + (plan.order % w + dc) % w
    return Plan(order, plan.sizes, h, w)


# not randar: its instruction rows are a vector rotated to the target's own position, an absolute (if periodic)
# position in the residual stream, as RandAR designed it
@pytest.mark.parametrize("arch, mutual", [("stream", True), ("stream", False), ("decoupled", False)])
def test_torus_rope_sees_displacements_modulo_the_grid(arch, mutual):
    """With rope_torus (and cond_rope zero: an unrotated class row would see absolute positions), rolling the grid
    and the plan with it round the torus rolls the logits (stream and decoupled); ordinary RoPE tells the wrapped
    edge apart, so the same roll changes its logits."""
    from orderlab.model.layers import apply_rope, rope_tables

    h, w, dr, dc = 4, 6, 1, 4
    tokens = torch.randint(0, 7, (2, h, w), generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 2])
    plans, _ = make_plans("random", h, w, 5, 2, seed=4)
    rolled = torch.roll(tokens, shifts=(dr, dc), dims=(1, 2))
    moved = [_rolled(p, dr, dc) for p in plans]
    for torus in (True, False):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=7, height=h, width=w, num_classes=3, depth=2, dim=16, heads=2, arch=arch,
                          mutual=mutual, rope_torus=torus, cond_rope="zero")
        model = build_model(cfg).double().eval()
        with torch.no_grad():
            a = training_logits(model, labels, tokens, plans).reshape(2, h, w, -1)
            b = training_logits(model, labels, rolled, moved).reshape(2, h, w, -1)
        same = torch.allclose(torch.roll(a, shifts=(dr, dc), dims=(1, 2)), b, rtol=0, atol=1e-9)
        assert same == torus, (arch, torus)
    # the tables themselves: a query-key score depends on the displacement modulo (H, W) only
    pos = torch.arange(h * w).unsqueeze(0)
    cos, sin = rope_tables(pos, w, 8, dtype=torch.float64, torus=(h, w))
    q, k = (torch.randn(8, dtype=torch.float64).expand(1, 1, h * w, 8) for _ in range(2))
    s = apply_rope(q, cos, sin)[0, 0] @ apply_rope(k, cos, sin)[0, 0].T  # (N, N)
    r, c = pos[0] // w, pos[0] % w
    disp = ((r[None] - r[:, None]) % h) * w + (c[None] - c[:, None]) % w  # (N, N) displacement id
    for d in range(h * w):
        vals = s[disp == d]
        assert torch.allclose(vals, vals[0].expand_as(vals), rtol=0, atol=1e-12)


def test_torus_rope_needs_rope_positions():
    with pytest.raises(ValueError, match="model.rope_torus=True needs model.position='rope', got 'learned'"):
        ModelConfig(vocab_size=7, height=4, width=5, position="learned", rope_torus=True)
