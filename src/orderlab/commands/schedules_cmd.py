"""``orderlab schedules``: every registered schedule on one grid, with its locality metrics and a picture."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from orderlab.checks import check_positive_int
from orderlab.data.atomic import atomic_write_text
from orderlab.plan import Plan, PlanError
from orderlab.plan_metrics import plan_metrics
from orderlab.schedule import get_schedule, list_schedules
from orderlab.seeding import PICTURE_SAMPLE, sample_generator

__all__ = ["schedules"]


def schedules(height: int = 16, width: int = 16, steps: int | None = None, out: str = "runs/schedules",
              seed: int = 0) -> None:
    """Plan every registered schedule on an H x W grid; print and save its locality metrics and order picture.

    Writes ``<out>/<schedule>.png`` (the step map), ``<out>/schedules.md`` (a Markdown table) and
    ``<out>/schedules.json`` (sizes, knobs and metrics per schedule).

    Args:
        height: token-grid rows H (>= 1).
        width: token-grid columns W (>= 1).
        steps: step budget T for every schedule, 1 <= T <= H*W; None gives each schedule its natural budget.
        out: folder for the pictures and tables (created if missing).
        seed: each schedule plans with ``sample_generator(seed, 0)``: the plan sample 0 of ``orderlab sample --seed``
            gets (orderlab.seeding).
    """
    for key, v in (("height", height), ("width", width)):
        check_positive_int(v, f"--{key}")
    n = height * width
    if steps is not None and not 1 <= steps <= n:
        raise ValueError(f"--steps {steps} is outside 1..N={n} for a {height}x{width} grid")

    from orderlab.analysis.pictures import plot_plan  # matplotlib only when pictures are wanted

    folder = Path(out)
    rows, plans = [], []
    for name in list_schedules():  # every plan first: a schedule that cannot plan fails before any file is written
        schedule = get_schedule(name)
        try:
            plan = schedule.plan(height, width, steps, sample_generator(seed, PICTURE_SAMPLE))
        except PlanError as err:
            raise ValueError(f"schedule {name!r} at steps={steps}: {err}") from None
        plans.append((name, plan))
        rows.append(_row(name, schedule, plan, plan_metrics(plan)))
    for name, plan in plans:
        plot_plan(plan, folder / f"{name}.png", title=f"{name}: {height}x{width}, T={plan.num_steps}")

    _print_table(rows, height, width, steps, seed)
    atomic_write_text(folder / "schedules.md", _markdown(rows, height, width, steps, seed))
    report = {"height": height, "width": width, "steps": steps, "seed": seed, "schedules": rows}
    # NaN (e.g. min_intra_dist with one token per step) is not JSON: write null; a plugin knob JSON lacks: str
    atomic_write_text(folder / "schedules.json", json.dumps(_nan_to_none(report), indent=2, default=str) + "\n")
    print(f"wrote {len(rows)} pictures, schedules.md and schedules.json to {folder}")


def _row(name: str, schedule: object, plan: Plan, metrics: dict[str, float]) -> dict:
    knobs = dataclasses.asdict(schedule) if dataclasses.is_dataclass(schedule) else {}
    return {"name": name, "knobs": knobs, "steps": plan.num_steps, "sizes": list(plan.sizes), "metrics": metrics}


def _fmt(x: float, digits: int = 2) -> str:
    if math.isnan(x):
        return "-"
    return str(int(x)) if x == int(x) and digits == 0 else f"{x:.{digits}f}"


_HEADERS = ("schedule", "T", "nearest dist", "generated nbrs", "adjacent pairs", "min intra dist")


def _cells(row: dict) -> list[str]:
    m = row["metrics"]
    return [row["name"], str(row["steps"]), _fmt(m["nearest_dist"]), _fmt(m["generated_neighbours"]),
            _fmt(m["adjacent_pairs"], 0), _fmt(m["min_intra_dist"])]


def _caption(height: int, width: int, steps: int | None, seed: int) -> str:
    budget = "natural budget" if steps is None else f"T={steps}"
    return f"{height}x{width} grid, {budget}, seed {seed}"


def _print_table(rows: list[dict], height: int, width: int, steps: int | None, seed: int) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"schedules: {_caption(height, width, steps, seed)}")
    for i, head in enumerate(_HEADERS):
        table.add_column(head, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*_cells(row))
    Console().print(table)


def _markdown(rows: list[dict], height: int, width: int, steps: int | None, seed: int) -> str:
    lines = [
        f"# Schedules: {_caption(height, width, steps, seed)}",
        "",
        "Metrics as defined in `orderlab.plan_metrics`; `-` = undefined (no group of 2+).",
        "",
        "| " + " | ".join(_HEADERS) + " | picture |",
        "|" + "---|" * (len(_HEADERS) + 1),
    ]
    lines += ["| " + " | ".join(_cells(r)) + f" | ![{r['name']}]({r['name']}.png) |" for r in rows]
    return "\n".join(lines) + "\n"


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj
