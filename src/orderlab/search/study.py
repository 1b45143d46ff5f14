"""Run an Optuna study from a validated :class:`SearchSpec`: storage, samplers, pruners, worker processes, reports.

The study lives in an RDB storage (SQLite file by default; any SQLAlchemy URL, PostgreSQL for many machines).
Rerunning the same command loads the study and adds ``n_trials`` more; nothing already stored is touched. With
``workers > 1`` each process runs its share of ``n_trials`` against the same storage (so the count is exact),
with its own sampler seed.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna

from orderlab.checks import check_positive_int
from orderlab.search.objectives import INFERENCE_OBJECTIVES, InferenceObjective, TrainObjective, default_direction
from orderlab.search.space import Param, parse_space
from orderlab.seeding import derive_seed
from orderlab.suggest import did_you_mean

__all__ = ["SearchSpec", "make_spec", "run_search", "SAMPLERS", "PRUNERS", "storage_url"]

SAMPLERS: dict[str, Any] = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler,
                            "random": optuna.samplers.RandomSampler}
PRUNERS: dict[str, Any] = {"median": optuna.pruners.MedianPruner, "percentile": optuna.pruners.PercentilePruner,
                           "hyperband": optuna.pruners.HyperbandPruner,
                           "successive_halving": optuna.pruners.SuccessiveHalvingPruner}
_EVALUATE_KEYS = {"ckpt", "data", "split", "extractor", "num_samples", "batch_size", "seed", "nll_samples",
                  "precision", "cache_dir"}
_FIT_KEYS = {"config", "args"}
# Optuna's samplers seed numpy's RandomState, which takes seeds below 2 ** 32: derived 63-bit seeds are cut to this
OPTUNA_SEED_BITS = 32


@dataclass
class SearchSpec:
    """A validated search: plain data, so worker processes can receive it."""

    kind: str
    params: list[Param]
    objectives: list[str]
    directions: list[str]
    study_name: str
    out: str
    fixed: dict[str, Any] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] | None = None
    seed: int = 0
    timeout: float | None = None
    heartbeat: int = 30


def _named(key: str, value: Any, table: dict[str, Any], default: str | None) -> dict[str, Any] | None:
    """``"tpe"`` or ``{name: tpe, n_startup_trials: 4}`` -> a checked mapping (None: ``default``)."""
    if value is None:
        return None if default is None else {"name": default}
    spec = {"name": value} if isinstance(value, str) else dict(value) if isinstance(value, dict) else None
    if spec is None or spec.get("name") not in table:
        raise ValueError(f"{key}={value!r}: choose one of {sorted(table)} (or {{name: ..., <its arguments>}})")
    try:  # the arguments are checked against the class now, not in trial 1
        table[spec["name"]](**{k: v for k, v in spec.items() if k != "name"})
    except TypeError as err:
        raise ValueError(f"{key}={value!r}: {err}") from None
    return spec


def make_spec(*, kind: str, space: dict, objectives: list[str], directions: list[str] | None, fixed: dict | None,
              evaluate: dict | None, fit: dict | None, study_name: str, out: str, sampler: Any, pruner: Any,
              seed: int, timeout: float | None, heartbeat: int = 30) -> SearchSpec:
    """Check everything a search needs before any trial runs; each error names its key."""
    if kind not in ("inference", "train"):
        raise ValueError(f"kind={kind!r}: choose 'inference' (a trained checkpoint) or 'train'")
    params = parse_space(space, kind, fixed)
    if not objectives:
        raise ValueError("objectives is empty: name at least one, e.g. [fcd] or [fcd, steps]")
    if kind == "inference":
        bad = [o for o in objectives if o not in INFERENCE_OBJECTIVES]
        if bad:
            raise ValueError(f"objectives: {bad[0]!r} is not one of {list(INFERENCE_OBJECTIVES)}")
        evaluate = dict(evaluate or {})
        unknown = sorted(set(evaluate) - _EVALUATE_KEYS)
        if unknown:
            raise ValueError(f"evaluate.{unknown[0]}: unknown key{did_you_mean(unknown[0], _EVALUATE_KEYS)} (keys "
                             f"are {sorted(_EVALUATE_KEYS)})")
        if not evaluate.get("ckpt"):
            raise ValueError("evaluate.ckpt: an inference search needs a checkpoint (e.g. runs/demo/checkpoints/last.ckpt)")
        if not os.path.isfile(evaluate["ckpt"]):
            raise ValueError(f"evaluate.ckpt={evaluate['ckpt']!r} does not exist (run `make demo` or `orderlab fit`)")
    else:
        fit = dict(fit or {})
        unknown = sorted(set(fit) - _FIT_KEYS)
        if unknown:
            raise ValueError(f"fit.{unknown[0]}: unknown key{did_you_mean(unknown[0], _FIT_KEYS)} (keys are "
                             f"{sorted(_FIT_KEYS)})")
        if not fit.get("config") or not os.path.isfile(fit["config"]):
            raise ValueError(f"fit.config={fit.get('config')!r} must be an existing `orderlab fit` YAML")
        if not isinstance(fit.get("args", []), list):
            raise ValueError(f"fit.args={fit['args']!r} must be a list of command-line overrides")
        fit["args"] = [str(a) for a in fit.get("args", [])]
    directions = list(directions) if directions else [default_direction(o) for o in objectives]
    if len(directions) != len(objectives) or any(d not in ("minimize", "maximize") for d in directions):
        raise ValueError(f"directions={directions}: one of minimize/maximize per objective {objectives}")
    default_sampler = "tpe" if len(objectives) == 1 else "nsga2"
    sampler_spec = _named("sampler", sampler, SAMPLERS, default_sampler)
    pruner_spec = _named("pruner", pruner, PRUNERS, None)
    if pruner_spec and (kind != "train" or len(objectives) > 1):
        raise ValueError("pruner: pruning needs a training search with one objective (Optuna cannot prune "
                         "multi-objective studies)")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout={timeout}: must be a positive number of seconds")
    check_positive_int(heartbeat, "heartbeat")  # whole seconds
    return SearchSpec(kind=kind, params=params, objectives=list(objectives), directions=directions,
                      study_name=study_name, out=out, fixed=dict(fixed or {}), evaluate=evaluate or {},
                      fit=fit or {}, sampler=sampler_spec, pruner=pruner_spec, seed=seed, timeout=timeout,
                      heartbeat=heartbeat)


def storage_url(storage: str | None, out: str) -> str:
    """The given URL, or a SQLite file in ``out``. ``postgresql://`` means the psycopg2 driver (which we install;
    SQLAlchemy 2.1 would otherwise look for psycopg 3)."""
    url = storage or f"sqlite:///{os.path.abspath(os.path.join(out, 'study.db'))}"
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def _storage(url: str, heartbeat: int = 30) -> optuna.storages.RDBStorage:
    # a running trial beats every `heartbeat` s; one silent for 4 beats (its process was killed) is marked FAIL by
    # the next worker that starts a trial, and its parameters are queued again once
    kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with warnings.catch_warnings():  # heartbeats are marked experimental, though they have been in Optuna since 2.8
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                                          grace_period=4 * heartbeat,
                                          heartbeat_stale_trial_callback=retry)


def _sampler(spec: SearchSpec, seed: int):
    args = {k: v for k, v in spec.sampler.items() if k != "name"}
    return SAMPLERS[spec.sampler["name"]](**{"seed": seed, **args})


def _objective(spec: SearchSpec):
    return InferenceObjective(spec, spec.params) if spec.kind == "inference" else TrainObjective(spec, spec.params)


def worker(spec: SearchSpec, url: str, index: int, quota: int, seed: int, threads: int | None = None,
           objective=None, progress: bool = False) -> None:
    """One process's share of the study: ``quota`` trials, each printed as one line, failures recorded.

    ``progress``: a progress bar over the trials (and the samples of an inference trial) on stderr, when it is a
    terminal; the in-process worker of a one-worker search shows one, the worker processes do not.
    """
    import torch

    from orderlab.progress import progress_bar
    from orderlab.search.report import log_trial_hparams

    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own line per trial instead of Optuna's tracebacks
    pruner = PRUNERS[spec.pruner["name"]](**{k: v for k, v in spec.pruner.items() if k != "name"}) \
        if spec.pruner else None
    study = optuna.load_study(study_name=spec.study_name, storage=_storage(url, spec.heartbeat),
                              sampler=_sampler(spec, seed),
                              pruner=pruner)
    objective = objective or _objective(spec)
    bar = progress_bar(progress)
    trials = bar.add_task("trials", total=quota)
    num_samples = spec.evaluate.get("num_samples", 256)
    samples = bar.add_task("  samples", total=num_samples, visible=spec.kind == "inference")
    if spec.kind == "inference":
        objective.progress = lambda phase, done: bar.update(samples, completed=done, description=f"  {phase}")

    def run(trial):
        t0 = time.perf_counter()
        bar.update(trials, description=f"trial {trial.number} [worker {index}]")
        bar.reset(samples, total=num_samples, description="  sampling")
        try:
            values = objective(trial)
        except optuna.TrialPruned:
            print(f"trial {trial.number} [worker {index}] pruned {trial.params}", flush=True)
            raise
        except Exception as err:  # recorded as FAIL with its reason; the study goes on (catch= below)
            reason = f"{type(err).__name__}: {' '.join(str(err).split())}"
            trial.set_user_attr("fail_reason", reason)
            print(f"trial {trial.number} [worker {index}] FAILED {trial.params}: {reason}", flush=True)
            raise
        shown = ", ".join(f"{o} {v:.4g}" for o, v in zip(spec.objectives, values))
        print(f"trial {trial.number} [worker {index}] {trial.params} -> {shown} ({time.perf_counter() - t0:.1f} s)",
              flush=True)
        log_trial_hparams(spec, trial, values)
        return values if len(values) > 1 else values[0]

    def counted(trial):
        try:
            return run(trial)
        finally:
            bar.advance(trials)

    with bar:
        try:
            study.optimize(counted, n_trials=quota, timeout=spec.timeout, catch=(Exception,), gc_after_trial=True)
        finally:
            if spec.kind == "inference":
                objective.progress = None


def run_search(spec: SearchSpec, storage: str | None, n_trials: int, workers: int = 1) -> dict[str, Any]:
    """Create or load the study, run ``n_trials`` more trials in ``workers`` processes, write the reports."""
    from orderlab.search.report import write_reports

    check_positive_int(n_trials, "n_trials", minimum=0)
    check_positive_int(workers, "workers")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial of ours instead
    url = storage_url(storage, spec.out)
    objective = _objective(spec)  # an unreadable checkpoint, or one that does not fit the data, fails here
    objective.check()  # a bad fit key or sample count fails here, before the study is written
    os.makedirs(spec.out, exist_ok=True)
    study = optuna.create_study(study_name=spec.study_name, storage=_storage(url, spec.heartbeat),
                                directions=spec.directions,
                                load_if_exists=True)  # created here, once, so workers never race on the schema
    if list(study.directions) != [getattr(optuna.study.StudyDirection, d.upper()) for d in spec.directions]:
        raise ValueError(f"study {spec.study_name!r} in {url} has directions "
                         f"{[d.name.lower() for d in study.directions]}, not {spec.directions}; use another "
                         "study_name")
    before = len(study.trials)
    print(f"study {spec.study_name!r} ({url}): {before} trials stored; running {n_trials} more in {workers} "
          f"worker(s); objectives {list(zip(spec.objectives, spec.directions))}", flush=True)
    # worker i of the invocation that finds ``before`` trials stored samples with its own derived seed, so a rerun
    # continues with fresh draws instead of repeating the first ones
    seeds = [derive_seed(spec.seed, "search-worker", before, i) % 2 ** OPTUNA_SEED_BITS for i in range(workers)]
    quotas = [n_trials // workers + (i < n_trials % workers) for i in range(workers)]
    if workers == 1:
        worker(spec, url, 0, quotas[0], seeds[0], objective=objective, progress=True)
    else:
        import multiprocessing as mp

        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = mp.get_context("spawn")  # fork would copy torch's thread pools and open DB connections
        procs = [ctx.Process(target=worker, args=(spec, url, i, q, seeds[i], threads)) for i, q in
                 enumerate(quotas) if q]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if bad:
            raise RuntimeError(f"{len(bad)} search worker(s) exited with codes {bad}; the stored trials are kept")
    study = optuna.load_study(study_name=spec.study_name, storage=_storage(url, spec.heartbeat))
    return write_reports(spec, study, url)

