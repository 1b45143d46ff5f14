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
