"""The mixture schedule: which component a sample gets, and that the component then plans as it would alone."""

import pytest
import torch

from orderlab.plan import PlanError
from orderlab.schedule import get_schedule


def _advanced(seed: int) -> torch.Generator:
    """The generator of ``seed`` after the mixture's one draw."""
    g = torch.Generator().manual_seed(seed)
    torch.rand((), generator=g, dtype=torch.float64)
    return g


def test_a_picked_component_plans_as_it_would_alone():
    only_locality = get_schedule("mixture", components=["random", "locality"], weights=[0, 1])
    for seed in range(5):
        a = only_locality.plan(8, 8, 8, torch.Generator().manual_seed(seed))
        b = get_schedule("locality").plan(8, 8, 8, _advanced(seed))
        assert torch.equal(a.order, b.order) and a.sizes == b.sizes


def test_weights_set_how_often_each_component_is_drawn():
    mix = get_schedule("mixture", components=["random", "raster"], weights=[1, 3])
    gens = [torch.Generator().manual_seed(s) for s in range(400)]
    plans = mix.plan_batch(8, 8, 64, gens)
    raster = sum(torch.equal(p.order, torch.arange(64)) for p in plans)
    assert 265 <= raster <= 335  # Binomial(400, 3/4): 300 +- 4 sd
    # the batched path returns exactly the one-at-a-time plans, and leaves the generators where plan() does
    again = [mix.plan(8, 8, 64, torch.Generator().manual_seed(s)) for s in range(400)]
    assert all(torch.equal(p.order, q.order) for p, q in zip(plans, again))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    mix.plan_batch(8, 8, 8, [g1])
    mix.plan(8, 8, 8, g2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


@pytest.mark.parametrize("knobs, match", [
    ({"components": ["random", "spiral"]}, "mixture: unknown schedule 'spiral'"),
    ({"components": ["random", "mixture"]}, "other than 'mixture'"),
    ({"components": ["random", "locality"], "weights": [1]}, "1 weights for 2 components"),
    ({"weights": [1, -1]}, r"weights must be numbers >= 0 with a positive sum, got \[1, -1\]"),
    ({"weights": [0, 0]}, "positive sum"),
])
def test_a_bad_mixture_names_the_bad_value(knobs, match):
    with pytest.raises(PlanError, match=match):
        get_schedule("mixture", **knobs)


def test_components_with_different_sizes_fail_in_one_training_batch():
    from orderlab.train.module import OrderModule

    module = OrderModule(train_schedule=get_schedule("mixture", components=["random", "diagonal"]))
    with pytest.raises(ValueError, match="different group sizes within a batch"):
        for step in range(20):  # some batch of 8 soon mixes a diagonal and a random plan at T = 5
            module.plans_for(8, 5, module.train_plans, 0, "train-plan", step)


def test_the_natural_budget_is_the_first_components_for_every_sample():
    mix = get_schedule("mixture", components=["random", "locality"])  # random's natural budget: N = 20
    plans = mix.plan_batch(4, 5, None, [torch.Generator().manual_seed(s) for s in range(12)])
    assert {p.num_steps for p in plans} == {20} and mix.natural_steps(4, 5) == 20
    flipped = get_schedule("mixture", components=["locality", "random"])  # locality's: round(1.25 sqrt 20) = 6
    gens = [torch.Generator().manual_seed(s) for s in range(12)]
    assert {p.num_steps for p in flipped.plan_batch(4, 5, None, gens)} == {6}
