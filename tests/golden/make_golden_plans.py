"""Write tests/golden/plans.json: the exact plans and size lists that tests/test_golden_plans.py holds every machine to.

Run it only when an order or a size rule is *meant* to change, and say which and why in the commit:
    .venv/bin/python tests/golden/make_golden_plans.py
A plan's generator is ``torch.Generator().manual_seed(seed)``; the rest of each case is its schedule's knobs.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from orderlab import get_schedule, resolve_sizes

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "plans.json")

GRIDS = ((8, 8, 8), (7, 12, 10), (16, 16, 20))
PLAN_CASES: list[dict] = []
for knobs in ({}, {"fill": "generated"}, {"repulsion": 1, "proximity": 0.5}, {"repulsion": 4}):
    for height, width, steps in GRIDS:
        for seed in range(3):
            PLAN_CASES.append(dict(schedule="locality", knobs=knobs, height=height, width=width, steps=steps, seed=seed))
# LPD's 512 px setting: 32x32 tokens, T = 48, repulsion 4
PLAN_CASES.append(dict(schedule="locality", knobs={"repulsion": 4}, height=32, width=32, steps=48, seed=0))
for sizes in ("lpd", "cosine", "arccos", "power:1.5", "uniform"):
    for height, width, steps in ((8, 8, 8), (16, 16, 20), (7, 12, 10)):
        PLAN_CASES.append(dict(schedule="random", knobs={"sizes": sizes}, height=height, width=width, steps=steps,
                               seed=1))
for name in ("raster", "diagonal", "lshape", "multiscale"):
    for height, width, steps in ((8, 8, None), (7, 12, None), (8, 8, 5), (7, 12, 30), (16, 16, 13)):
        PLAN_CASES.append(dict(schedule=name, knobs={}, height=height, width=width, steps=steps, seed=0))
# mixture: which component each seed draws, and that component's plan from the same generator
for knobs, cases in (({}, ((8, 8, 8, 0), (8, 8, 8, 1), (8, 8, 8, 2), (8, 8, 8, 3), (7, 12, 10, 0))),
                     ({"components": ["random", "raster"], "weights": [1, 3]}, ((8, 8, 8, 0), (8, 8, 8, 1)))):
    for height, width, steps, seed in cases:
        PLAN_CASES.append(dict(schedule="mixture", knobs=knobs, height=height, width=width, steps=steps, seed=seed))
# inpainting: the top half is known, only the rest is ordered
for name in ("locality", "random", "diagonal"):
    PLAN_CASES.append(dict(schedule=name, knobs={}, height=8, width=8, steps=6, seed=2, known=list(range(32))))

# (rule, N, T): budgets in use plus the ones whose float value lies on an integer or half-integer boundary
# (cosine at r = 2/3 gives N/2 exactly; arccos at r = 1/2 gives 2N/3; power:1 has exact half-integer bounds)
SIZE_CASES = [(rule, n, t) for rule in ("cosine", "arccos", "uniform", "lpd", "power:1", "power:2", "power:-0.92")
              for n, t in ((64, 8), (64, 6), (256, 20), (256, 12), (256, 32), (1024, 48), (1024, 24), (84, 10),
                           (49, 7), (225, 20))]


def plan_of(case: dict):
    known = None
    if case.get("known"):
        known = torch.zeros(case["height"] * case["width"], dtype=torch.bool)
        known[case["known"]] = True
        known = known.reshape(case["height"], case["width"])
    return get_schedule(case["schedule"], **case["knobs"]).plan(
        case["height"], case["width"], case["steps"], torch.Generator().manual_seed(case["seed"]), known=known)


def build() -> dict:
    plans = []
    for case in PLAN_CASES:
        p = plan_of(case)
        plans.append({**case, "order": p.order.tolist(), "sizes": list(p.sizes)})
    sizes = [dict(rule=r, n=n, steps=t, sizes=list(resolve_sizes(r, n, t))) for r, n, t in SIZE_CASES]
    return {"about": "exact plans and group sizes; regenerate with tests/golden/make_golden_plans.py",
            "plans": plans, "sizes": sizes}


def dump(data: dict) -> str:
    # one case per line: diffs of a regenerated file stay readable
    lines = ["{", f'  "about": {json.dumps(data["about"])},', '  "plans": [']
    lines += [f"    {json.dumps(p)}," for p in data["plans"]]
    lines[-1] = lines[-1].rstrip(",")
    lines += ["  ],", '  "sizes": [']
    lines += [f"    {json.dumps(s)}," for s in data["sizes"]]
    lines[-1] = lines[-1].rstrip(",")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    text = dump(build())
    tmp = PATH + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, PATH)
    print(f"wrote {PATH}: {len(PLAN_CASES)} plans, {len(SIZE_CASES)} size lists", file=sys.stderr)
