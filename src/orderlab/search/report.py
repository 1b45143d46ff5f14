"""What a search leaves behind: every trial as a table, the Pareto front (or the best trial) as a table and a
plot, and each trial's parameters and metrics in TensorBoard's HParams view (``tensorboard --logdir OUT``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import optuna

from orderlab.analysis.evaluation import write_table
from orderlab.analysis.uncertainty import DEFAULT_N_BOOT, PLUGIN_KEYS, interval_methods
from orderlab.data.atomic import atomic_savefig, atomic_write_bytes

__all__ = ["log_trial_hparams", "trial_rows", "write_reports"]


def _hparam(v: Any) -> Any:
    return v if isinstance(v, (int, float, str, bool)) else json.dumps(v)


def log_trial_hparams(spec, trial, values: list[float]) -> None:
    """One HParams run per finished trial under ``OUT/tensorboard/hparams`` (each worker writes its own files)."""
    from torch.utils.tensorboard import SummaryWriter

    metrics = {f"objective/{o}": float(v) for o, v in zip(spec.objectives, values)}
    extra = trial.user_attrs.get("metrics", {})
    metrics.update({f"metric/{k}": float(v) for k, v in extra.items() if k.replace("/", "_") not in metrics})
    hparams = {k: _hparam(v) for k, v in {**spec.fixed, **trial.params}.items()}
    with SummaryWriter(log_dir=os.path.join(spec.out, "tensorboard", "hparams")) as w:
        w.add_hparams(hparams, metrics, run_name=f"trial_{trial.number:04d}")


def _tidy(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v  # steps and passes print as ints


def trial_rows(spec, study: optuna.Study) -> list[dict[str, Any]]:
    """One flat dict per stored trial: number, state, parameters, objective values, metrics, reason of failure."""
    rows = []
    for t in study.trials:
        r: dict[str, Any] = {"trial": t.number, "state": t.state.name}
        r.update({k: v for k, v in t.params.items()})
        if t.values is not None:
            r.update({o: _tidy(v) for o, v in zip(spec.objectives, t.values)})
        for k, v in t.user_attrs.get("metrics", {}).items():
            r.setdefault(k, _tidy(v))
        if "row" in t.user_attrs:
            r["row"] = t.user_attrs["row"]
        if t.duration is not None:
            r["seconds"] = round(t.duration.total_seconds(), 2)
        if "fail_reason" in t.user_attrs:
            r["fail_reason"] = t.user_attrs["fail_reason"]
        rows.append(r)
    return rows


def _keys(spec, rows: list[dict[str, Any]] | None = None) -> list[str]:
    """Table columns: trial, state, parameters, objectives, seconds, reason of failure. A Fréchet-distance objective
    whose trials carry an interval (evaluate_row's ``fcd_low``/``fcd_high``) is followed by its bias-corrected
    value with that interval (``fcd_corrected``, shown as "value [low, high]"); KID and NLL objectives show theirs
    in their own column."""
    names = [p.name for p in spec.params]
    objectives = []
    for o in spec.objectives:
        if o in names:
            continue
        objectives.append(o)
        if o in PLUGIN_KEYS and any(f"{o}_low" in r and f"{o}_corrected" in r for r in rows or []):
            objectives.append(f"{o}_corrected")
    return ["trial", "state", *names, *objectives, "seconds", "fail_reason"]


def _plot(spec, study: optuna.Study, front: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    if len(spec.objectives) > 1:  # x: the speed objective (second), y: quality (first)
        xs, ys = [t.values[1] for t in done], [t.values[0] for t in done]
        ax.scatter(xs, ys, c="0.6", s=18, label="trials")
        pts = sorted((t.values[1], t.values[0]) for t in front)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", c="tab:red", label="Pareto front")
        ax.set_xlabel(spec.objectives[1])
        ax.set_ylabel(spec.objectives[0])
        ax.set_title(f"{spec.study_name}: {len(front)} Pareto trials of {len(done)}")
    else:
        xs, ys = [t.number for t in done], [t.values[0] for t in done]
        ax.scatter(xs, ys, c="0.4", s=18, label="trials")
        best, run = [], None
        for y in ys:
            run = y if run is None else (min(run, y) if spec.directions[0] == "minimize" else max(run, y))
            best.append(run)
        ax.step(xs, best, where="post", c="tab:red", label="best so far")
        ax.set_xlabel("trial")
        ax.set_ylabel(spec.objectives[0])
        ax.set_title(f"{spec.study_name}: {len(done)} complete trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, format="png")
    finally:
        plt.close(fig)


def write_reports(spec, study: optuna.Study, url: str) -> dict[str, Any]:
    """trials.{md,csv,json}, pareto.{md,csv,json} (or best.*), a plot, and summary.json; returns the summary."""
    rows = trial_rows(spec, study)
    keys = _keys(spec, rows)
    meta = {"study": spec.study_name, "storage": url.split("@")[-1], "objectives": list(zip(spec.objectives,
            spec.directions)), "trials": len(rows)}
    if spec.kind == "inference":
        meta["num_samples (real = generated)"] = spec.evaluate.get("num_samples", 256)
        meta["checkpoint"] = spec.evaluate["ckpt"]
        if any("nll_low" in r or "fcd_low" in r or "fid_low" in r for r in rows):
            fd = "fid" if any("fid_low" in r for r in rows) else "fcd"
            meta.update(interval_methods(DEFAULT_N_BOOT, fd))  # each trial's evaluate_row interval
            meta["trials vs trials"] = ("the table ranks point estimates; two trials whose intervals overlap may "
                                        "not differ detectably (orderlab evaluate --compare gives paired "
                                        "differences)")
    write_table(rows, spec.out, "trials", meta, keys=keys)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    front = study.best_trials if complete else []
    front_rows = [r for r in rows if r["trial"] in {t.number for t in front}]
    stem = "pareto" if len(spec.objectives) > 1 else "best"
    write_table(front_rows, spec.out, stem, meta, keys=[k for k in keys if k not in ("state", "fail_reason")])
    plot = os.path.join(spec.out, f"{stem}.png")
    _plot(spec, study, front, plot)
    states = {}
    for t in study.trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    summary = {**meta, "states": states, stem: front_rows, "plot": plot,
               "tables": {k: os.path.join(spec.out, f"{k}.md") for k in ("trials", stem)}}
    atomic_write_bytes(os.path.join(spec.out, "summary.json"), json.dumps(summary, indent=2, default=str).encode())
    return summary
