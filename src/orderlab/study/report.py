"""A study's outputs: report.md, summary/comparisons/cells as Markdown and CSV, metric-vs-T plots with bands,
and the summary as TensorBoard scalars (``tensorboard --logdir OUT/tensorboard``)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from typing import Any

from orderlab.data.atomic import atomic_savefig, atomic_write_bytes, atomic_write_text
from orderlab.study.aggregate import Cells, cell_summary, collect, comparisons, reading
from orderlab.study.spec import StudySpec

__all__ = ["write_study_report"]


def _num(v: Any, digits: int = 4) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _iv(est: float, low: float, high: float) -> str:
    return f"{_num(est)} [{_num(low)}, {_num(high)}]"


def _csv(rows: list[dict[str, Any]], path: str) -> None:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    atomic_write_bytes(path, buf.getvalue().encode())


def _md_table(header: list[str], lines: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(x) + " |" for x in lines]) + "\n"


def _protocol(spec: StudySpec, cells: Cells) -> list[str]:
    first = next(iter(cells.results.values()), {})
    n = first.get("num_samples", spec.evaluate.get("num_samples"))
    lines = [f"- data: {spec.dataset} in `{spec.data_root}`; training: `{spec.fit_config}` "
             f"{' '.join(spec.fit_args)}",
             "- arms: " + "; ".join(f"**{a}** {json.dumps(o) if o else '(the config as it is)'}"
                                     for a, o in spec.arms.items()),
             f"- K = {len(spec.seeds)} training seeds per arm ({', '.join(map(str, spec.seeds))}): each seeds model "
             f"init, training plans and data order",
             f"- each row: N = {n} generated samples (sample i from seed {spec.evaluate.get('seed', 0)}, index i, "
             f"in every row and model) against the same N held-out real items, split "
             f"`{spec.evaluate.get('split', 'val')}`"]
    for key in ("interval_method", "fd_interval_method"):
        if key in first:
            lines.append(f"- {key.replace('_', ' ')}: {first[key]}")
    floor = _floor(spec, first, n)
    if floor:
        lines.append(f"- real-vs-real floor at this N: {floor}")
    lines.append("- a Fréchet distance (fcd, fid) in these tables is bias-corrected (the plug-in value minus its "
                 "bootstrap bias estimate): the population value its interval is for; cells.csv keeps the plug-in "
                 "value of each model too")
    lines.append(f"- cells: mean over the K models; {int(float(spec.evaluate.get('level', 0.95)) * 100)} % interval "
                 f"= Student t over the K models (training-seed spread + generated-set noise) with the shared "
                 f"reference's noise added in quadrature (each model's bootstrap half-width). K = 1: that model's "
                 f"own interval; the training-seed spread is then unknown.")
    lines.append("- comparisons a - b: paired per seed (same reference resample, same sample seeds; NLL paired per "
                 "held-out image), then over the K seeds as above. 'no detectable difference' means the interval "
                 "holds 0: the data cannot tell the rows apart at this N, not that they are equal.")
    return lines


def _floor(spec: StudySpec, first: dict[str, Any], n) -> str | None:
    """The real-vs-real Fréchet distance at N (held-out vs an equal disjoint real set): the FD two real sets of
    this size give, i.e. the level below which no generator can be told apart (None for exact scores)."""
    fd = "fcd" if "fcd" in first else ("fid" if "fid" in first else None)
    if fd is None or not n:
        return None
    from orderlab.analysis.uncertainty import floor_text, real_vs_real_floor
    from orderlab.metrics import classifier_features, default_cache_dir

    try:
        floor = real_vs_real_floor(spec.data_root, spec.evaluate.get("split", "val"), classifier_features(spec.dataset),
                                   int(n), cache_dir=default_cache_dir(), seed=int(spec.evaluate.get("seed", 0)))
    except (OSError, ValueError) as err:  # the data folder moved: the report still stands without the floor
        return f"not computed ({err})"
    return floor_text(floor, fd.upper()) + "; cells.csv holds each model's plug-in fcd"


def write_study_report(spec: StudySpec, say=print) -> str:
    """Write every output from the finished cells; returns the report's path."""
    cells = collect(spec)
    summary = cell_summary(spec, cells)
    comps = comparisons(spec, cells)
    # "seed" in a result is the sampling seed; the model's training seed is train_seed
    _csv([{"arm": a, "train_seed": s, "row": r, **{k: v for k, v in res.items() if k != "row"}}
          for (a, s, r), res in cells.results.items()], os.path.join(spec.out, "cells.csv"))
    _csv(summary, os.path.join(spec.out, "summary.csv"))
    _csv(comps, os.path.join(spec.out, "comparisons.csv"))
    plots = _plots(spec, summary)
    _tensorboard(spec, summary)

    md = [f"# Study `{spec.name}`", "", "## Protocol", "", *_protocol(spec, cells), ""]
    if cells.missing:
        md += [f"**Incomplete:** {len(cells.missing)} of {len(cells.missing) + len(cells.results)} cells are not "
               f"finished yet (e.g. {'; '.join(f'{a} seed {s} {r}' for a, s, r in cells.missing[:3])}). Run the "
               f"same command again to finish them.", ""]
    md += ["## Cells (mean over seeds, 95 % interval)", ""]
    header = ["arm", "row", "T", "K"] + spec.metrics
    lines = [[e["arm"], e["row"], str(e["steps"]), str(e["K"])]
             + [_iv(e[m], e[f"{m}_low"], e[f"{m}_high"]) + (" †" if e[f"{m}_flags"] else "") for m in spec.metrics]
             for e in summary]
    table = _md_table(header, lines)
    md += [table]
    if any(e[f"{m}_flags"] for e in summary for m in spec.metrics):
        md += ["† one model: the training-seed spread is unknown.", ""]
    atomic_write_text(os.path.join(spec.out, "summary.md"), table)
    if comps:
        md += ["## Paired comparisons (a - b)", ""]
        ctable = _md_table(["comparison", "a", "b", "metric", "K", "a - b [95 % interval]", "a vs b"],
                           [[c["name"], c["a"], c["b"], c["metric"], str(c["K"]),
                             _iv(c["diff"], c["low"], c["high"]), c["verdict"]] for c in comps])
        md += [ctable]
        atomic_write_text(os.path.join(spec.out, "comparisons.md"), ctable)
    if spec.findings:
        md += ["## Findings", ""]
        for f in spec.findings:
            for c in (c for c in comps if c["name"] == f.compare and c["metric"] == f.metric
                      and (f.arm is None or c["arm"] in ("", f.arm))):
                where = f" (arm {c['arm']})" if c["arm"] else ""
                md.append(f"- **{f.claim}**{where}: {c['a']} - {c['b']} = {_iv(c['diff'], c['low'], c['high'])} "
                          f"{f.metric} over K = {c['K']} -> {c['verdict']}; the claim is "
                          f"**{reading(f.expect, c['verdict'])}**.")
        md.append("")
    if plots:
        md += ["## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.relpath(p, spec.out)})" for p in plots] + [""]
    md += ["Files: summary.csv, comparisons.csv, cells.csv (every model x row, with each model's own interval), "
           "plots/, tensorboard/ (training curves per arm and seed; summary/ holds these tables as scalars over T).",
           ""]
    path = os.path.join(spec.out, "report.md")
    atomic_write_text(path, "\n".join(md))
    say(f"report: {path}")
    return path


def _series(spec: StudySpec, summary: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """(arm, schedule with knobs and decoder) -> its cells sorted by T."""
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in summary:
        if e["K"] == 0 or not isinstance(e["steps"], (int, float)):
            continue
        name = e["row"].rsplit(" T=", 1)[0]
        out.setdefault((e["arm"], name), []).append(e)
    return {k: sorted(v, key=lambda e: e["steps"]) for k, v in out.items()}


def _plots(spec: StudySpec, summary: list[dict[str, Any]]) -> list[str]:
    """One figure per metric: a panel per arm (shared y axis; one colour per row name in every panel), since a
    dozen (arm, row) curves in one panel hide each other and their bands."""
    from matplotlib.figure import Figure

    series = _series(spec, summary)
    arms = [a for a in spec.arms if any(k[0] == a for k in series)]
    names = list(dict.fromkeys(name for _, name in series))
    colour = {name: f"C{i % 10}" for i, name in enumerate(names)}
    paths = []
    if not arms:
        return paths
    for m in spec.metrics:
        fig = Figure(figsize=(1.0 + 3.6 * len(arms), 4.2))
        axes = fig.subplots(1, len(arms), sharey=True, squeeze=False)[0]
        drawn = 0
        for ax, arm in zip(axes, arms):
            for (a, name), cells in series.items():
                pts = [e for e in cells if a == arm and not math.isnan(e[m])]
                if not pts:
                    continue
                t = [e["steps"] for e in pts]
                ax.plot(t, [e[m] for e in pts], marker="o", label=name, color=colour[name])
                lo, hi = [e[f"{m}_low"] for e in pts], [e[f"{m}_high"] for e in pts]
                if not any(math.isnan(x) for x in lo + hi):
                    ax.fill_between(t, lo, hi, alpha=0.15, color=colour[name])
                drawn += 1
            ax.set_xscale("log", base=2)
            ax.set_xlabel("steps T (forward passes)")
            ax.set_title(f"arm {arm}" if len(arms) > 1 else "", fontsize=9)
            ax.legend(fontsize=7)
        if not drawn:
            continue
        axes[0].set_ylabel(f"{m} (bias-corrected)" if m in ("fcd", "fid") else m)
        fig.suptitle(f"{spec.name}: {m} vs T (mean over seeds, 95 % band)", fontsize=9)
        fig.tight_layout()
        path = os.path.join(spec.out, "plots", f"{m}_vs_steps.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_savefig(fig, path, dpi=110)
        paths.append(path)
    return paths


def _tensorboard(spec: StudySpec, summary: list[dict[str, Any]]) -> None:
    """The summary as scalars over T, one run per (arm, schedule): rewritten whole on every report."""
    from torch.utils.tensorboard import SummaryWriter

    root = os.path.join(spec.out, "tensorboard", "summary")
    shutil.rmtree(root, ignore_errors=True)
    for (arm, name), cells in _series(spec, summary).items():
        safe = "".join(ch if ch.isalnum() or ch in "._-=" else "_" for ch in f"{arm}__{name}")
        with SummaryWriter(os.path.join(root, safe)) as w:
            for e in cells:
                for m in spec.metrics:
                    if not math.isnan(e[m]):
                        w.add_scalar(f"study/{m}", e[m], int(e["steps"]))
                        if not math.isnan(e[f"{m}_low"]):
                            w.add_scalar(f"study/{m}_low", e[f"{m}_low"], int(e["steps"]))
                            w.add_scalar(f"study/{m}_high", e[f"{m}_high"], int(e["steps"]))
