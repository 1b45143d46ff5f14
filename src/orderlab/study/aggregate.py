"""From finished cells to numbers with intervals: each (arm, row) cell as a mean over the K training seeds, and
each comparison as a paired difference, per seed, then over seeds.

Intervals (95 % by default):

* a cell: :func:`orderlab.metrics.intervals.seed_spread` over the K models' estimates (Student t over K, which
  holds the training-seed spread and each model's generated-set noise) with the shared reference's noise added in
  quadrature (each model's own bootstrap half-width); K = 1 gives the one model's interval, flagged.
* a comparison a - b: for each seed s, the paired difference of model(arm_a, s) under row a and model(arm_b, s)
  under row b on the same reference and the same sample seeds (:func:`orderlab.analysis.uncertainty.paired_metric`,
  the code path of `orderlab evaluate --compare`: :func:`paired_difference` for a Fréchet distance:
  one reference resample per replicate shared by both; :func:`paired_mean_difference` for per-item metrics such
  as NLL per held-out image or energy per sample); then :func:`seed_spread` over the seeds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from orderlab.analysis.uncertainty import ITEM_OF, metric_verdict, paired_metric
from orderlab.metrics.intervals import Interval, paired_mean_difference, seed_spread
from orderlab.study.layout import cell_path, load_cell
from orderlab.study.spec import Compare, StudySpec

__all__ = ["Cells", "collect", "cell_summary", "comparisons", "reading", "within_interval"]

_LOW_ALIASES = {"nll_bits_per_token": "nll"}


@dataclass
class Cells:
    """Finished cells: ``results[(arm, seed, label)]`` and the row of each label."""

    results: dict[tuple[str, int, str], dict[str, Any]]
    rows: dict[str, Any]  # label -> Row
    missing: list[tuple[str, int, str]]

    def items(self, spec: StudySpec, arm: str, seed: int, label: str) -> dict[str, np.ndarray]:
        return load_cell(spec, arm, seed, self.rows[label].slug)[1]


def collect(spec: StudySpec) -> Cells:
    from orderlab.analysis.evaluation import parse_row

    rows = {r.label: r for r in (parse_row(x) for x in spec.rows)}
    results, missing = {}, []
    for arm, seed in spec.jobs():
        for label, row in rows.items():
            if os.path.isfile(cell_path(spec, arm, seed, row.slug)):
                results[(arm, seed, label)] = load_cell(spec, arm, seed, row.slug)[0]
            else:
                missing.append((arm, seed, label))
    return Cells(results, rows, missing)


def within_interval(result: dict[str, Any], metric: str) -> Interval | None:
    """The interval evaluate_row gave one model's ``metric`` (None when it has none)."""
    est = result.get(metric)
    if not isinstance(est, (int, float)):
        return None
    est = result.get(f"{metric}_corrected", est)
    for stem in (metric, _LOW_ALIASES.get(metric, metric)):
        lo, hi = result.get(f"{stem}_low"), result.get(f"{stem}_high")
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
            return Interval(float(est), float(lo), float(hi), 0.95, "within-model",
                            n_fake=result.get("num_samples"))
    return None


def _combine(values: list[float], within: list[Interval | None], level: float) -> Interval | None:
    if not values:
        return None
    if any(w is None for w in within):
        if len(values) < 2:
            return None
        return seed_spread(values, [], level=level, shared_reference=False)
    return seed_spread(values, within, level=level)


def cell_summary(spec: StudySpec, cells: Cells) -> list[dict[str, Any]]:
    """One dict per (arm, row): K finished seeds, and per metric the mean over seeds with its interval."""
    level = float(spec.evaluate.get("level", 0.95))
    out = []
    for arm in spec.arms:
        for label, row in cells.rows.items():
            res = [(s, cells.results[(arm, s, label)]) for s in spec.seeds if (arm, s, label) in cells.results]
            entry = {"arm": arm, "row": label, "schedule": row.schedule, "knobs": row.knobs,
                     "steps": res[0][1].get("forward_passes", row.steps) if res else row.steps, "K": len(res)}
            for m in spec.metrics:
                have = [r for _, r in res if isinstance(r.get(m), (int, float))]
                # a Fréchet distance: the bias-corrected value, which its bootstrap interval is for (the plug-in
                # FD sits about one bias above it at this N)
                vals = [float(r.get(f"{m}_corrected", r[m])) for r in have]
                iv = _combine(vals, [within_interval(r, m) for r in have], level)
                entry[m] = float(np.mean(vals)) if vals else math.nan
                entry[f"{m}_low"] = iv.low if iv else math.nan
                entry[f"{m}_high"] = iv.high if iv else math.nan
                entry[f"{m}_seeds"] = vals
                entry[f"{m}_flags"] = list(iv.flags) if iv else []
            out.append(entry)
    return out


def _pair(spec: StudySpec, cells: Cells, metric: str, a: tuple[str, int, str], b: tuple[str, int, str],
          c: tuple[str, int, str] | None = None, d: tuple[str, int, str] | None = None) -> Interval | None:
    kind = ITEM_OF.get(metric)
    if kind is None or any(x is not None and x not in cells.results for x in (a, b, c, d)):
        return None
    if c is not None:  # a contrast of per-item values: (a - b) - (c - d) per item, paired over all four rows
        if kind == "features":
            return None  # a contrast of four Fréchet distances has no paired bootstrap here
        v = [cells.items(spec, *x).get(kind) for x in (a, b, c, d)]
        if any(x is None for x in v) or len({len(x) for x in v}) > 1:
            return None
        return paired_mean_difference(v[0] - v[1], v[2] - v[3], level=float(spec.evaluate.get("level", 0.95)))
    level = float(spec.evaluate.get("level", 0.95))
    return paired_metric(cells.items(spec, *a), cells.items(spec, *b), metric,
                         n_boot=int(spec.evaluate.get("n_boot", 200)) or 200, seed=int(spec.evaluate.get("seed", 0)),
                         level=level)


def comparisons(spec: StudySpec, cells: Cells) -> list[dict[str, Any]]:
    """Every comparison x metric (x arm, for a comparison within models): difference a - b over the seeds."""
    level = float(spec.evaluate.get("level", 0.95))
    out = []
    for c in spec.compare:
        for arm in (list(spec.arms) if c.within else [None]):
            for m in spec.metrics:
                if m not in ITEM_OF:
                    continue
                per_seed = []
                for s in spec.seeds:
                    cd = ((c.arm_c or arm, s, c.row_c), (c.arm_d or arm, s, c.row_d)) if c.row_c else (None, None)
                    d = _pair(spec, cells, m, (c.arm_a or arm, s, c.row_a), (c.arm_b or arm, s, c.row_b), *cd)
                    if d is not None:
                        per_seed.append(d)
                iv = seed_spread([d.corrected for d in per_seed], per_seed, level=level) if per_seed else None
                contrast = f" - ({_ref(c, 'c', arm)} - {_ref(c, 'd', arm)})" if c.row_c else ""
                out.append({"name": c.name, "arm": arm or "", "a": _ref(c, "a", arm), "b": _ref(c, "b", arm) + contrast,
                            "metric": m, "K": len(per_seed),
                            "diff": iv.estimate if iv else math.nan, "low": iv.low if iv else math.nan,
                            "high": iv.high if iv else math.nan, "verdict": metric_verdict(iv, m),
                            "per_seed": [d.corrected for d in per_seed], "flags": list(iv.flags) if iv else []})
    return out


def _ref(c: Compare, side: str, arm: str | None) -> str:
    return f"{getattr(c, 'arm_' + side) or arm}/{getattr(c, 'row_' + side)}"


def reading(expect: str, verdict_text: str) -> str:
    """How a measured verdict bears on a claim, never stronger than the interval allows."""
    if verdict_text in ("not available",):
        return "not measured"
    none = "no detectable difference"
    good = {"better": ("better",), "worse": ("worse",), "no_worse": ("better", none), "no_better": ("worse", none),
            "lower": ("lower",), "higher": ("higher",), "same": (none,)}[expect]
    bad = {"better": ("worse",), "worse": ("better",), "no_worse": ("worse",), "no_better": ("better",),
           "lower": ("higher",), "higher": ("lower",), "same": ("better", "worse", "lower", "higher")}[expect]
    if verdict_text in bad:
        return "contradicted at this N"
    if verdict_text in good:
        return "supported" if verdict_text != none else "consistent (no detectable difference)"
    return "not decided at this N (no detectable difference)"
