import pytest
import torch
from helpers import UNKNOWN, tiny_model

from orderlab import PlanError, list_schedules
from orderlab.decoding.decode import generate
from orderlab.decoding.sampling import cfg_scales, filter_logits

H, W = 4, 5


def counting(model):
    """Count the backbone's forward_step calls and their batch rows (patched on the instance, so every caller,
    forward_rows included, goes through it)."""
    inner = model.forward_step
    model.calls, model.rows = 0, []

    def forward_step(labels, tokens, *args, **kwargs):
        model.calls += 1
        model.rows.append(tokens.shape[0])
        return inner(labels, tokens, *args, **kwargs)

    model.forward_step = forward_step
    return model


@pytest.mark.parametrize("schedule", list_schedules())
@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_one_forward_per_step(schedule, cfg):
    model = counting(tiny_model(dtype=torch.float32))
    for steps in (1, 4, H * W):
        model.calls, model.rows = 0, []
        out = generate(model, schedule, steps, torch.tensor([0, 1, 2]), cfg_scale=cfg, seed=0)
        assert out.shape == (3, H, W) and out.min() >= 0 and out.max() < 7
        assert model.calls == steps
        assert set(model.rows) == {6 if cfg != 1.0 else 3}


def test_greedy_is_deterministic_and_temperature_matters():
    model = tiny_model()
    labels = torch.tensor([0, 1])
    a = generate(model, "random", 5, labels, temperature=0.0, seed=0)
    b = generate(model, "random", 5, labels, temperature=0.0, seed=0)
    assert torch.equal(a, b)
    # greedy ignores the sampling seed (the plan's seed stays fixed through a fixed schedule); sampling does not
    g1 = generate(model, "raster", 5, labels, temperature=0.0, seed=1)
    g2 = generate(model, "raster", 5, labels, temperature=0.0, seed=2)
    assert torch.equal(g1, g2)
    s1 = generate(model, "raster", 5, labels, temperature=1.0, seed=1)
    s2 = generate(model, "raster", 5, labels, temperature=1.0, seed=2)
    assert not torch.equal(s1, s2)
    # a very high temperature spreads the tokens over the vocabulary; near-zero temperature collapses to greedy
    hot = generate(model, "raster", 5, torch.zeros(64, dtype=torch.long), temperature=50.0, seed=0)
    # near zero: far below the logit gaps of this float64 model (at 1e-4, 3 of 1280 tokens came from gaps ~1e-3)
    cold = generate(model, "raster", 5, torch.zeros(64, dtype=torch.long), temperature=1e-8, seed=0)
    greedy = generate(model, "raster", 5, torch.zeros(64, dtype=torch.long), temperature=0.0, seed=0)
    assert torch.equal(cold, greedy)
    assert len(torch.unique(hot)) == 7 and len(torch.unique(hot.view(64, -1), dim=0)) > 60


@pytest.mark.parametrize("schedule", list_schedules())
def test_inpainting_keeps_known_tokens(schedule):
    model = counting(tiny_model())
    truth = torch.randint(0, 7, (2, H, W), generator=torch.Generator().manual_seed(0))
    known = torch.zeros(H, W, dtype=torch.bool)
    known[:2] = True  # outpaint the bottom half
    out, info = generate(model, schedule, 3, torch.tensor([0, 1]), known=(truth, known), seed=3, return_info=True)
    assert torch.equal(out[:, known], truth[:, known])
    assert model.calls == 3 == info.forward_passes
    assert all(p.num_known == 10 and set(p.order[10:].tolist()) == set(range(10, 20)) for p in info.plans)
    # the unknown part is generated (two different seeds give different completions somewhere)
    other = generate(model, schedule, 3, torch.tensor([0, 1]), known=(truth, known), seed=4)
    assert not torch.equal(out[:, ~known], other[:, ~known])


def test_per_sample_known_masks_with_equal_counts():
    model = tiny_model()
    truth = torch.randint(0, 7, (2, H, W))
    known = torch.zeros(2, H, W, dtype=torch.bool)
    known[0, 0, 0] = True
    known[1, 3, 4] = True
    out = generate(model, "random", 4, torch.tensor([0, 1]), known=(truth, known))
    assert out[0, 0, 0] == truth[0, 0, 0] and out[1, 3, 4] == truth[1, 3, 4]


def test_bad_inputs_fail_clearly():
    model = tiny_model()
    labels = torch.tensor([0])
    with pytest.raises(ValueError, match="label 9"):
        generate(model, "raster", 4, torch.tensor([9]))
    with pytest.raises(PlanError, match="steps=21"):
        generate(model, "raster", 21, labels)
    with pytest.raises(ValueError, match=r"known mask must be bool of shape \(4, 5\)"):
        generate(model, "raster", 4, labels, known=(torch.zeros(1, H, W, dtype=torch.long),
                                                    torch.zeros(3, 3, dtype=torch.bool)))
    with pytest.raises(ValueError, match="known tokens must have shape"):
        generate(model, "raster", 4, labels, known=(torch.zeros(H, W, dtype=torch.long),
                                                    torch.zeros(H, W, dtype=torch.bool)))
    with pytest.raises(ValueError, match="null class"):
        generate(tiny_model(null_class=False), "raster", 4, labels, cfg_scale=2.0)
    with pytest.raises(ValueError, match=f"unknown CFG schedule '{UNKNOWN}'; choose one of"):
        generate(model, "raster", 4, labels, cfg_scale=2.0, cfg_schedule=UNKNOWN)
    with pytest.raises(KeyError, match=f"unknown schedule '{UNKNOWN}'"):
        generate(model, UNKNOWN, 4, labels)


def test_cfg_schedules_follow_the_anchors():
    for t, steps in ((1, 5), (0, 1), (7, 9)):  # the built-ins ignore the step clock
        assert cfg_scales("constant", 3.0, 4, 2, 16, t=t, steps=steps).tolist() == [3.0, 3.0]
        assert cfg_scales("linear", 3.0, 4, 4, 16, t=t, steps=steps).tolist() == [2.0] * 4  # ARPG: 1 + 2 * 8/16
        assert cfg_scales("linear_token", 3.0, 4, 2, 16, t=t, steps=steps).tolist() == [1.5, 1.625]  # LPD: 1+2*j/16


def test_top_k_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.85)).tolist() == [[False, False, False, True]]


def test_bf16_autocast_is_on_inside_the_model_and_off_by_default():
    model = tiny_model(dtype=torch.float32)
    seen = []
    step = model.forward_step

    def spy(*a, **kw):  # the decode loop's one forward per step
        seen.append(torch.is_autocast_enabled("cpu"))
        return step(*a, **kw)

    model.forward_step = spy
    labels = torch.tensor([0, 1])
    fp32 = generate(model, "random", 4, labels, seed=0)
    assert seen and not any(seen)
    seen.clear()
    bf16 = generate(model, "random", 4, labels, seed=0, precision="bf16")
    assert seen and all(seen)
    assert bf16.shape == fp32.shape and int(bf16.max()) < 7
    assert not torch.is_autocast_enabled("cpu")  # restored after decoding
    with pytest.raises(ValueError, match="'bf17'"):
        generate(model, "random", 4, labels, precision="bf17")
