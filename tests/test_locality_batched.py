"""Schedule.plan_batch: the locality schedule's batched planner gives exactly the plans of its reference ``plan``
(orders, sizes and every generator's draws), for every knob, grid and known mask, and reproduces the golden plans;
other schedules' default plan_batch is their plan in a loop."""

import json
import os
import sys
from collections import defaultdict

import pytest
import torch

from orderlab import get_schedule
from orderlab.decoding.decode import make_plans
from orderlab.seeding import sample_generator

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "golden"))
from make_golden_plans import PATH  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KNOBS = [dict(repulsion=r, proximity=p, fill=f) for r in (0, 1, 2, 4) for p in (0, 1, 1.5)
         for f in ("group", "generated")]


def gens(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def assert_batch_equals_plan(sched, h, w, steps, seeds, known=None):
    """plan_batch over ``seeds`` == plan per seed, and each generator is left where plan leaves it."""
    masks = known if isinstance(known, list) else None if known is None else [known] * len(seeds)
    ref_gens, batch_gens = gens(seeds), gens(seeds)
    ref = [sched.plan(h, w, steps, g, known=k) for g, k in zip(ref_gens, masks or [None] * len(seeds))]
    got = sched.plan_batch(h, w, steps, batch_gens, known=masks)
    assert len(got) == len(ref)
    for seed, a, b in zip(seeds, ref, got):
        where = f"{sched} {h}x{w} T={steps} seed={seed}"
        assert b.sizes == a.sizes and b.num_known == a.num_known, where
        assert torch.equal(b.order, a.order), f"{where}: {b.order.tolist()} != {a.order.tolist()}"
    for a, b in zip(ref_gens, batch_gens):
        assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))


@pytest.mark.parametrize("knobs", KNOBS, ids=str)
def test_batch_equals_plan_for_every_knob_setting(knobs):
    sched = get_schedule("locality", **knobs)
    for h, w, steps, seeds in [(4, 5, None, range(6)), (4, 5, 20, range(3)), (1, 9, 3, range(3)),
                               (8, 8, 8, range(6)), (7, 12, 10, range(3)), (16, 16, 20, range(4))]:
        assert_batch_equals_plan(sched, h, w, steps, list(seeds))


@pytest.mark.parametrize("sizes", ["lpd", "cosine", "arccos", "uniform", "power:1.5", [1, 3, 12, 20, 28]], ids=str)
def test_batch_equals_plan_for_every_size_rule(sizes):
    for knobs in ({}, {"proximity": 0, "repulsion": 1}, {"fill": "generated", "repulsion": 4}):
        sched = get_schedule("locality", sizes=sizes, **knobs)
        steps = None if isinstance(sizes, list) else 8
        assert_batch_equals_plan(sched, 8, 8, steps, list(range(6)))
        if not isinstance(sizes, list):
            assert_batch_equals_plan(sched, 8, 8, 1, [0, 1])  # one group of every cell


def test_batch_equals_plan_at_lpd_512px_budget():
    assert_batch_equals_plan(get_schedule("locality", repulsion=4), 32, 32, 48, [0, 1, 2])
    assert_batch_equals_plan(get_schedule("locality", repulsion=4, fill="generated"), 32, 32, 48, [3])


def test_batch_equals_plan_with_known_cells():
    top = torch.zeros(8, 8, dtype=torch.bool)
    top[:4] = True
    block = torch.zeros(16, 16, dtype=torch.bool)
    block[5:11, 3:9] = True
    block[0, 15] = True
    for knobs in ({}, {"fill": "generated"}, {"proximity": 0, "repulsion": 1}, {"repulsion": 4, "proximity": 1.5}):
        sched = get_schedule("locality", **knobs)
        assert_batch_equals_plan(sched, 8, 8, 6, list(range(5)), known=top)
        assert_batch_equals_plan(sched, 16, 16, 20, list(range(3)), known=block)
    # masks that differ per sample (planned one by one), and a mix of None and a mask
    sched = get_schedule("locality")
    assert_batch_equals_plan(sched, 8, 8, 6, [0, 1, 2], known=[top, top.flip(0), None])
    assert_batch_equals_plan(sched, 8, 8, 6, [0, 1], known=[top, top.clone()])


def test_batch_handles_none_shared_and_no_generators():
    sched = get_schedule("locality")
    none = sched.plan_batch(8, 8, 8, [None, None])
    assert all(torch.equal(p.order, sched.plan(8, 8, 8).order) for p in none)
    g, ref = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    shared = sched.plan_batch(8, 8, 8, [g, g])  # one generator twice: its draws run on, as in a loop
    loop = [sched.plan(8, 8, 8, ref), sched.plan(8, 8, 8, ref)]
    assert all(torch.equal(a.order, b.order) for a, b in zip(shared, loop))
    assert not torch.equal(shared[0].order, shared[1].order)
    assert sched.plan_batch(8, 8, 8, []) == []
    for name in ("locality", "random"):
        with pytest.raises(ValueError, match="2 known masks for 1 generators"):
            get_schedule(name).plan_batch(8, 8, 8, gens([0]), known=[None, None])


def test_batch_reproduces_every_golden_locality_plan():
    cases = [c for c in json.load(open(PATH))["plans"] if c["schedule"] == "locality"]
    batches = defaultdict(list)  # the cases that differ only by seed plan as one batch
    for c in cases:
        batches[(json.dumps(c["knobs"], sort_keys=True), c["height"], c["width"], c["steps"],
                 tuple(c.get("known") or ()))].append(c)
    for (knobs, h, w, steps, known), batch in batches.items():
        mask = None
        if known:
            mask = torch.zeros(h * w, dtype=torch.bool)
            mask[list(known)] = True
            mask = mask.reshape(h, w)
        plans = get_schedule("locality", **json.loads(knobs)).plan_batch(
            h, w, steps, gens(c["seed"] for c in batch), known=None if mask is None else [mask] * len(batch))
        for c, p in zip(batch, plans):
            assert p.order.tolist() == c["order"] and list(p.sizes) == c["sizes"], f"golden case {c}"
    assert sum(len(b) for b in batches.values()) == len(cases) > 30


@pytest.mark.parametrize("name", ["random", "raster", "diagonal", "lshape", "multiscale"])
def test_default_plan_batch_is_plan_in_a_loop(name):
    known = torch.zeros(8, 8, dtype=torch.bool)
    known[2:5, 3:6] = True
    sched = get_schedule(name)
    assert_batch_equals_plan(sched, 8, 8, 6, [0, 1, 2])
    assert_batch_equals_plan(sched, 8, 8, 6, [0, 1, 2], known=[known, None, known])


def test_make_plans_gives_each_sample_its_own_plan():
    plans, _ = make_plans("locality", 16, 16, 20, 4, seed=7, first_index=2)
    for i, p in enumerate(plans):
        assert torch.equal(p.order, get_schedule("locality").plan(16, 16, 20, sample_generator(7, 2 + i)).order)


def test_at_one_token_per_step_repulsion_and_fill_never_act():
    """The Ising study compares its knob rows (repulsion 0, fill generated) at T = 8 with locality:64: at T = N a
    group is one cell, so nothing is repelled and the free cells with a generated edge neighbour never run out
    before the grid is full; the order is the same for every repulsion and fill, draw for draw."""
    base = get_schedule("locality")
    for knobs in (dict(repulsion=0), dict(repulsion=4), dict(fill="generated")):
        other = get_schedule("locality", **knobs)
        for h, w in ((8, 8), (5, 7)):
            a, b = base.plan_batch(h, w, h * w, gens(range(12))), other.plan_batch(h, w, h * w, gens(range(12)))
            assert all(torch.equal(x.order, y.order) for x, y in zip(a, b)), knobs
    # at T = 8 they do act, so the rows differ (else the knob comparisons would be empty)
    a = base.plan_batch(8, 8, 8, gens(range(12)))
    b = get_schedule("locality", repulsion=0).plan_batch(8, 8, 8, gens(range(12)))
    assert any(not torch.equal(x.order, y.order) for x, y in zip(a, b))
