"""Run a study: prepare the data, train each (arm, seed) model, evaluate every row on it, one file per cell.

Everything lands under ``spec.out``::

    models/ARM/seedS/checkpoints/last.ckpt   training state (every 50 steps; a killed run continues from it)
    models/ARM/seedS/done.json               written when the model reached max_steps: the job's key and step
    cells/ARM/seedS/ROW.json, ROW.npz        one evaluated row on one model: metrics and the per-item values
                                             (generated features, per-image NLL, ...) that paired differences need
    tensorboard/ARM/seedS                    training curves; tensorboard/summary: the study's tables as scalars

A file exists only when its work is finished (written to a temporary name, then renamed), so a killed study
resumes where it stopped: a rerun skips every finished model and cell. Each file carries the *key* of the work
that made it (the fit config's content, the arm's overrides, the seed, the row and the evaluation settings); a
rerun with a changed config refuses to mix old and new results and names what changed.

Jobs (arm, seed) are independent: ``part="i/P"`` runs every P-th job, so P machines sharing one ``out`` folder
(NFS, a shared disk) split a study without talking to each other; a last run without ``part`` fills any gap and
writes the report.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import numpy as np

from orderlab.data.atomic import atomic_write_bytes, atomic_write_json
from orderlab.study.layout import cell_path, load_cell, model_dir
from orderlab.study.spec import StudySpec

__all__ = ["run_study", "job_key", "cell_path", "model_dir", "load_cell", "parse_part", "StaleResultError"]

CKPT_EVERY = 50  # training steps between saved states: at most this many are redone after a kill


class StaleResultError(ValueError):
    """A finished file in ``out`` was made by a different config: mixing them would make a wrong table."""


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def job_key(spec: StudySpec, arm: str, seed: int) -> dict[str, Any]:
    """What makes a trained model: the fit config's content (parsed: editing a comment changes nothing), the shared
    and arm overrides, the seed, the data."""
    import yaml

    with open(spec.fit_config) as fh:
        config_sha = _digest(yaml.safe_load(fh))
    return {"fit_config": spec.fit_config, "fit_config_content": config_sha, "fit_args": spec.fit_args,
            "overrides": spec.arms[arm], "seed": seed, "data": spec.data_root, "dataset": spec.dataset}


def fit_args(spec: StudySpec, arm: str, seed: int) -> list[str]:
    """The ``orderlab fit`` arguments of one job (the seed sets model init, plan draws and the data order)."""
    from orderlab.search.space import train_overrides

    d = model_dir(spec, arm, seed)
    logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
              "init_args": {"save_dir": os.path.join(spec.out, "tensorboard"), "name": arm,
                            "version": f"seed{seed}", "default_hp_metric": True}}
    return ["--config", spec.fit_config, *spec.fit_args, *train_overrides(spec.arms[arm]),
            f"--seed_everything={seed}", f"--data.seed={seed}", f"--data.root={spec.data_root}",
            f"--trainer.default_root_dir={d}", f"--trainer.logger={json.dumps(logger)}"]


def parse_part(part: str | None) -> tuple[int, int] | None:
    """``"2/3"`` -> (2, 3): this machine runs jobs 2, 5, 8, ... (1-based) of the study's job list."""
    if part is None:
        return None
    try:
        i, n = (int(x) for x in str(part).split("/"))
    except ValueError:
        raise ValueError(f"part={part!r} must be 'i/P' with 1 <= i <= P (e.g. 1/2)") from None
    if not 1 <= i <= n:
        raise ValueError(f"part={part!r} must be 'i/P' with 1 <= i <= P (e.g. 1/2)")
    return i, n


def _check_key(path: str, key: dict[str, Any], what: str) -> bool:
    """True when ``path`` exists and was made by ``key``; raises when it was made by another config."""
    if not os.path.isfile(path):
        return False
    with open(path) as fh:
        stored = json.load(fh).get("key")
    if stored != json.loads(json.dumps(key, default=str)):
        changed = sorted(k for k in set(stored or {}) | set(key) if (stored or {}).get(k) != key.get(k))
        raise StaleResultError(f"{path} holds a finished {what} made with other settings ({', '.join(changed)} "
                               f"changed); use another --out, or delete {os.path.dirname(path)} to redo it")
    return True


# ------------------------------------------------------------------------------------------------------- steps
def ensure_data(spec: StudySpec, say) -> None:
    """Prepare ``spec.data_root`` unless it already holds the dataset made with the study's options."""
    from orderlab.data.datasets import PrepareOptions, existing_preparation, prepare_dataset

    opts = {k: v for k, v in spec.prepare.items() if k != "num_shards"}
    options = PrepareOptions(progress=False, **opts)
    shards = int(spec.prepare.get("num_shards", 8))
    m, why = existing_preparation(spec.dataset, spec.data_root, options, shards)
    if m is not None:
        say(f"data: reusing {spec.dataset} in {spec.data_root}")
        return
    overwrite = False
    if why:
        from orderlab.data.shards import read_manifest

        try:  # the same dataset prepared otherwise (e.g. the old 15 % digits split): a generated folder, redone
            same = read_manifest(spec.data_root).get("dataset") == spec.dataset
        except Exception:
            same = False
        if not same:
            raise ValueError(f"data.root: {spec.data_root} already holds other data ({why}); point data.root "
                             f"elsewhere or remove it")
        say(f"data: {spec.data_root} {why}; preparing {spec.dataset} again with the study's options")
        overwrite = True
    t0 = time.perf_counter()
    prepare_dataset(spec.dataset, spec.data_root, options, num_shards=shards, overwrite=overwrite)
    say(f"data: prepared {spec.dataset} -> {spec.data_root} in {time.perf_counter() - t0:.0f} s")


def check_arms(spec: StudySpec) -> None:
    """Configure (not train) every arm: an unknown or bad fit key fails here, naming the arm and the key."""
    from orderlab.train.lightning_cli import build_cli

    for arm in spec.arms:
        try:
            build_cli(fit_args(spec, arm, spec.seeds[0]))
        except ValueError as err:
            raise ValueError(f"arms.{arm}: {err}") from None


def _progress_callback(say, name: str):
    """One line per validation: the step, the time so far and the validation bits per token (bars are off)."""
    from lightning.pytorch import Callback

    class StepLines(Callback):
        def on_train_start(self, trainer, pl_module):
            self.t0 = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking or not trainer.is_global_zero:
                return
            bpt = trainer.callback_metrics.get("val/bits_per_token")
            say(f"  {name}: step {trainer.global_step}/{trainer.max_steps}, "
                f"{time.perf_counter() - getattr(self, 't0', time.perf_counter()):.0f} s"
                + (f", val {float(bpt):.4f} bits/token" if bpt is not None else ""))

    return StepLines()


def build_cli_for_job(spec: StudySpec, arm: str, seed: int):
    """The configured (not yet run) LightningCLI of one job."""
    from orderlab.train.lightning_cli import build_cli

    return build_cli(fit_args(spec, arm, seed))


def train_job(spec: StudySpec, arm: str, seed: int, say) -> str:
    """Train (or continue training) one model to the config's max_steps; returns its checkpoint path."""
    d = model_dir(spec, arm, seed)
    done, ckpt = os.path.join(d, "done.json"), os.path.join(d, "checkpoints", "last.ckpt")
    key = job_key(spec, arm, seed)
    if _check_key(done, key, "model"):
        return ckpt
    from lightning.pytorch.callbacks import ModelCheckpoint

    from orderlab.search.objectives import quiet_lightning

    quiet_lightning()
    cli = build_cli_for_job(spec, arm, seed)
    trainer = cli.trainer
    # one checkpoint folder per job, saved often: the YAML's own checkpointing would go to the logger's folder
    trainer.callbacks[:] = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
    saver = ModelCheckpoint(dirpath=os.path.dirname(ckpt), save_last=True, save_top_k=0,
                            every_n_train_steps=CKPT_EVERY)
    trainer.callbacks.append(saver)
    trainer.callbacks.append(_progress_callback(say, f"{arm} seed {seed}"))
    resume = os.path.isfile(ckpt)
    say(f"train {arm} seed {seed}: " + ("continuing from last.ckpt" if resume else "from scratch")
        + f" to step {trainer.max_steps}")
    t0 = time.perf_counter()
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt if resume else None)
    if trainer.max_steps > 0 and trainer.global_step < trainer.max_steps:
        raise RuntimeError(f"training {arm} seed {seed} stopped at step {trainer.global_step} of "
                           f"{trainer.max_steps} (a time limit?); run the study again to continue")
    trainer.save_checkpoint(ckpt)  # the final state, whatever the step count's remainder by CKPT_EVERY
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    atomic_write_json(done, {"key": key, "global_step": int(trainer.global_step), "val": val,
                             "seconds": time.perf_counter() - t0})
    say(f"train {arm} seed {seed}: done at step {trainer.global_step} ({time.perf_counter() - t0:.0f} s)")
    return ckpt


def cell_key(spec: StudySpec, arm: str, seed: int, row_label: str) -> dict[str, Any]:
    return {"job": _digest(job_key(spec, arm, seed)), "row": row_label, "evaluate": spec.evaluate,
            "data": spec.data_root}


def evaluate_job(spec: StudySpec, arm: str, seed: int, ckpt: str, say, on_cell=None) -> int:
    """Evaluate every unfinished row on one model; returns how many cells were computed."""
    import io

    from orderlab.analysis.evaluation import parse_row
    from orderlab.study.evaluate import StudyEvaluator

    rows = [parse_row(r) for r in spec.rows]
    todo = [r for r in rows if not _check_key(cell_path(spec, arm, seed, r.slug), cell_key(spec, arm, seed, r.label),
                                              "cell")]
    if not todo:
        return 0
    evaluator = StudyEvaluator(spec, ckpt)
    for row in todo:
        t0 = time.perf_counter()
        result, items = evaluator.row(row)
        buf = io.BytesIO()
        np.savez(buf, **items)
        atomic_write_bytes(cell_path(spec, arm, seed, row.slug, "npz"), buf.getvalue())  # the npz first: a
        atomic_write_json(cell_path(spec, arm, seed, row.slug),  # json marks the cell finished
                          {"key": cell_key(spec, arm, seed, row.label), "result": result})
        say(f"  {arm} seed {seed} {row.label}: " + ", ".join(
            f"{m} {result[m]:.4g}" for m in spec.metrics if isinstance(result.get(m), (int, float)))
            + f" ({time.perf_counter() - t0:.1f} s)")
        if on_cell is not None:
            on_cell(arm, seed, row)
    return len(todo)


def run_study(spec: StudySpec, *, part: str | None = None, report: bool = True, say=print) -> dict[str, Any]:
    """Run (or continue) a study; returns counts of the work done. The report is written from every finished
    cell when ``report`` is true (and says which cells are still missing)."""
    which = parse_part(part)
    os.makedirs(spec.out, exist_ok=True)
    ensure_data(spec, say)
    check_arms(spec)
    jobs = spec.jobs()
    mine = [j for i, j in enumerate(jobs) if which is None or i % which[1] == which[0] - 1]
    t0 = time.perf_counter()
    trained = cells = 0
    for n, (arm, seed) in enumerate(mine, 1):
        say(f"[job {n}/{len(mine)}] arm {arm}, seed {seed} ({time.perf_counter() - t0:.0f} s elapsed)")
        was_done = os.path.isfile(os.path.join(model_dir(spec, arm, seed), "done.json"))
        ckpt = train_job(spec, arm, seed, say)
        trained += not was_done
        cells += evaluate_job(spec, arm, seed, ckpt, say)
    out = {"jobs": len(mine), "trained": trained, "cells": cells, "seconds": time.perf_counter() - t0}
    if report:
        from orderlab.study.report import write_study_report

        out["report"] = write_study_report(spec, say)
    return out
