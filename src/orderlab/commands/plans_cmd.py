"""``orderlab plans build``: a plan bank, K seeded plans of one schedule saved to one file (orderlab.plan_bank)."""

from __future__ import annotations

import os
import time
from typing import Any

from orderlab.checks import check_positive_int
from orderlab.seeding import check_seed

__all__ = ["plans"]


def plans(what: str, *, out: str, schedule: str = "locality", height: int = 16, width: int = 16,
          steps: int | None = None, count: int = 1000, seed: int = 0, knobs: dict[str, Any] | None = None,
          progress: bool = True) -> None:
    """Build a plan bank: K seeded plans of one schedule in one file, drawn from by index when decoding or training.

    Plan i is ``schedule.plan(height, width, steps, seeding.generator(seed, "plan-bank", i))``. Use the file as the
    schedule ``bank`` with the knob ``path`` (an evaluate row ``{schedule: bank, knobs: {path: bank.pt}}``, or
    ``train_schedule: {class_path: orderlab.plan_bank.Bank, init_args: {path: bank.pt}}``).

    Args:
        what: what to do with plans ("build").
        out: the bank file to write (its folder must exist); written atomically, replacing an older file.
        schedule: registered schedule that plans (e.g. locality, random).
        height: token-grid rows H (>= 1).
        width: token-grid columns W (>= 1).
        steps: step budget T, 1 <= T <= H*W (None: the schedule's natural budget). A bank serves this budget only.
        count: K, the number of plans (>= 1).
        seed: run seed of the plans' generators (orderlab.seeding, stream "plan-bank").
        knobs: the schedule's knobs, e.g. '{repulsion: 4}' (the rest keep their defaults).
        progress: show a progress bar (on a terminal's stderr only).
    """
    if what != "build":
        from orderlab.suggest import did_you_mean

        raise ValueError(f"unknown plans action {what!r}{did_you_mean(what, ['build'])}; choose one of ['build']")
    for key, value in (("height", height), ("width", width), ("count", count)):
        check_positive_int(value, f"--{key}")
    n = height * width
    if steps is not None:
        try:
            check_positive_int(steps, "--steps", maximum=n)
        except ValueError as err:  # say where the bound comes from
            raise ValueError(f"{err} (N={n}, the {height}x{width} grid)") from None
    check_seed(seed)
    if knobs is not None and not isinstance(knobs, dict):
        raise ValueError(f"--knobs {knobs!r} must be a mapping, e.g. '{{repulsion: 4}}'")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ValueError(f"--out {out}: folder {folder} does not exist")
    if os.path.isdir(out):
        raise ValueError(f"--out {out} is a folder; give the bank's file name, e.g. {os.path.join(out, 'bank.pt')}")
    from orderlab.plan_bank import build_bank, save, short_hash  # (importing it registers the schedule "bank")

    t0 = time.perf_counter()
    bank = build_bank(schedule, height, width, steps, count, seed=seed, knobs=knobs, progress=progress)
    save(bank, out)
    seconds = time.perf_counter() - t0
    knob_text = ", ".join(f"{k}={v}" for k, v in sorted(bank["knobs"].items()))
    print(f"wrote {out}: {count} {bank['schedule']} plans ({knob_text}) on {height}x{width}, T={bank['num_steps']}, "
          f"seed {seed}, sha256 {short_hash(bank['sha256'])} in {seconds:.1f} s")
