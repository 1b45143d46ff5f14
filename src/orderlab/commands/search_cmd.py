"""``orderlab search --config experiments/search/NAME.yaml``: an Optuna study declared in YAML."""

from __future__ import annotations

from typing import Any


def search(*, space: dict[str, Any], objectives: list[str] | None = None, kind: str = "inference",
           directions: list[str] | None = None, fixed: dict[str, Any] | None = None,
           evaluate: dict[str, Any] | None = None, fit: dict[str, Any] | None = None,
           study_name: str = "orderlab", storage: str | None = None, out: str = "runs/search", n_trials: int = 10,
           workers: int = 1, sampler: Any = None, pruner: Any = None, seed: int = 0,
           timeout: float | None = None, heartbeat: int = 30) -> None:
    """Search orders, step budgets, group sizes and sampling knobs (or training recipes) with Optuna.

    Args:
        space: parameter name -> {type: categorical|int|float, choices | low, high[, step, log][, when]}.
            Inference names: schedule, steps, sizes, power (group sizes ~ ((t+1)/T)^p), temperature, cfg_scale,
            cfg_schedule, top_k, top_p, knobs.<schedule knob>. Training names: any `orderlab fit` key (model.lr).
        objectives: what to optimise, e.g. [fcd] or [fcd, steps] (a Pareto front); training: [val/bits_per_token].
        kind: "inference" (a trained checkpoint, through the evaluate code path) or "train" (orderlab fit).
        directions: minimize/maximize per objective (default: maximize precision/recall, minimize the rest).
        fixed: values held fixed for every trial (same names as space), e.g. {steps: 8}.
        evaluate: inference settings: ckpt, num_samples, seed, data, split, extractor, batch_size, nll_samples,
            precision, cache_dir (the real-feature cache; default $ORDERLAB_CACHE, else $XDG_CACHE_HOME/orderlab,
            else ~/.cache/orderlab: the data and checkpoint folders are never written).
        fit: training settings: config (an `orderlab fit` YAML) and args (extra overrides).
        study_name: the study's name in the storage; a rerun with the same name continues it.
        storage: an RDB URL (postgresql://user:pw@host/db for many machines); default sqlite:///OUT/study.db.
        out: output folder (trials/pareto tables, plot, TensorBoard logs, the default SQLite file).
        n_trials: trials this invocation adds (split across workers).
        workers: processes running trials at once against the storage.
        sampler: tpe | nsga2 | random, or {name: ..., <its arguments>} (default: tpe, nsga2 if multi-objective).
        pruner: median | percentile | hyperband | successive_halving, or a mapping (training searches only).
        seed: sampler seed (each worker and each rerun derives its own from it).
        timeout: stop starting new trials after this many seconds per worker.
        heartbeat: seconds between a running trial's heartbeats; a trial silent for 4 of them (its process was
            killed) is marked FAIL by the next trial to start, and its parameters are tried once more.
    """
    from orderlab.search import make_spec, run_search

    spec = make_spec(kind=kind, space=space, objectives=objectives or (["fcd"] if kind == "inference" else
                     ["val/bits_per_token"]), directions=directions, fixed=fixed, evaluate=evaluate, fit=fit,
                     study_name=study_name, out=out, sampler=sampler, pruner=pruner, seed=seed, timeout=timeout,
                     heartbeat=heartbeat)
    summary = run_search(spec, storage, n_trials, workers)
    stem = "pareto" if len(spec.objectives) > 1 else "best"
    with open(summary["tables"][stem]) as fh:
        print(fh.read())
    print(f"trials by state: {summary['states']}\nwrote {out}/trials.md, {out}/{stem}.md, {summary['plot']}; "
          f"TensorBoard HParams: tensorboard --logdir {out}/tensorboard")
