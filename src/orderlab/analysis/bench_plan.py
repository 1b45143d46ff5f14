"""Planning cost against decoding cost (``orderlab bench plan``): is locality planning off the critical path?

LPD's locality order is planned per sample on the CPU. This benchmark times planning a batch of B plans at LPD's
settings (16x16 at T = 20, 32x32 at T = 48), with the batched planner (:meth:`Locality.plan_batch`) and with the
per-sample reference (:meth:`Locality.plan`), and decoding that batch at the same T with each benchmarked backbone
(random order, so the decode time holds no planning). The ratio planning / decoding is the share planning adds to a
locality decode; the goal is at most 5 %. A plan bank (``orderlab plans build``) makes it ~0: a bank draw is an
index. Nothing here times anything by itself: :func:`plan_row` runs in its own process like every benchmark row.
"""

from __future__ import annotations

import statistics
import time

from orderlab import seeding
from orderlab.schedule import get_schedule

__all__ = ["LPD_SETTINGS", "PLAN_GOAL", "plan_row", "plan_ratios", "plan_markdown"]

LPD_SETTINGS = ((16, 20), (32, 48))
"""(H = W, T): LPD's locality budgets at 256 px and 512 px."""
PLAN_GOAL = 0.05
"""Planning a batch costs at most this share of decoding it."""


def plan_row(grid: int, steps: int, batch: int, repeats: int, how: str, knobs: dict | None = None) -> dict:
    """Median seconds to plan ``batch`` locality plans ("batched": plan_batch; "reference": plan per sample), after
    one warm-up; the plans of both are identical (tests/test_locality_batched.py)."""
    schedule = get_schedule("locality", **(knobs or {}))
    times = []
    for r in range(repeats + 1):
        gens = [seeding.generator(r, "bench-plan", i) for i in range(batch)]
        t0 = time.perf_counter()
        if how == "batched":
            schedule.plan_batch(grid, grid, steps, gens)
        else:
            [schedule.plan(grid, grid, steps, g) for g in gens]
        if r:  # the first call warms up
            times.append(time.perf_counter() - t0)
    return dict(seconds=statistics.median(times), schedule=repr(schedule))


def plan_ratios(rows: list[dict]) -> list[dict]:
    """From the rows of one run: batched planning over each backbone's decoding of the same (grid, T, batch), with
    the goal; and the reference planner over the batched one."""
    plan = {(r["grid"], r["steps"], r["batch"], r["what"]): r for r in rows if r["what"].startswith("plan")}
    out = []
    for r in rows:
        if r["what"] != "decode":
            continue
        p = plan.get((r["grid"], r["steps"], r["batch"], "plan batched"))
        if p is None:
            continue
        value = round(p["seconds"] / r["seconds"], 4)
        out.append(dict(what=f"planning/decoding ({r['arch']})", grid=r["grid"], steps=r["steps"], batch=r["batch"],
                        value=value, goal=f"<= {PLAN_GOAL}", met=value <= PLAN_GOAL))
    for (grid, steps, batch, what), p in plan.items():
        ref = plan.get((grid, steps, batch, "plan reference"))
        if what == "plan batched" and ref is not None:
            out.append(dict(what="reference/batched planning", grid=grid, steps=steps, batch=batch,
                            value=round(ref["seconds"] / p["seconds"], 2), goal="", met=None))
    return out


def plan_markdown(meta: dict, rows: list[dict], ratios: list[dict]) -> str:
    head = (f"Planning benchmark on {meta['device']} (locality at LPD's settings; decoding: {meta['depth']} layers x "
            f"{meta['dim']} wide, V={meta['vocab']}, random order at the same T; torch {meta['torch']}, "
            f"{meta['threads']} threads, median of {meta['repeats']})\n\n")
    cols = ["what", "arch", "grid", "steps", "batch", "seconds", "per_plan_ms"]
    body = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    for r in rows:
        body += "| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |\n"
    body += "\n| ratio (this run) | grid | T | batch | measured | goal | met |\n|---|---|---|---|---|---|---|\n"
    for q in ratios:
        met = "" if q["met"] is None else ("yes" if q["met"] else "**no**")
        body += (f"| {q['what']} | {q['grid']}x{q['grid']} | {q['steps']} | {q['batch']} | {q['value']} | "
                 f"{q['goal']} | {met} |\n")
    return head + body
