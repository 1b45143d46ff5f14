"""``orderlab demo``: prepare digits -> train the demo model -> evaluate every schedule at a few budgets -> report.

A killed demo resumes: the dataset is reused when its manifest is valid, and training continues from
``last.ckpt``. Everything lands in ``--out`` (default runs/demo): report.md, results.{md,csv,json}, sample grids,
fcd_vs_steps.png, the fit config and TensorBoard logs.

Training is held to its step count: a per-run time limit (:class:`orderlab.train.callbacks.TimeLimit`, not saved in the
checkpoint) is only a guard. When it stops training short of ``max_steps``, the run says so, the report marks every
verdict "not meaningful", and the command exits 1 after writing the report; running it again continues from
``last.ckpt`` to ``max_steps``.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import yaml

from orderlab.checks import check_positive_int

EXIT_SHORT = 1  # exit status of a demo whose training stopped before max_steps (after the report is written)
# seed of the demo's digits train/val split: fixed, not --seed (which seeds sampling), so every demo (and a folder
# reused by a later one) trains and evaluates on the same images
DEMO_DATA_SEED = 0

# (schedule, steps) rows of the demo: T = N (raster and random), and N/4, N/8 for the parallel schedules
DEMO_ROWS = ["raster:64", "random:64", "random:16", "random:8", "locality:16", "locality:8", "diagonal",
             "diagonal:8", "lshape", "multiscale", "multiscale:8", "raster:8"]


def fit_config(config: str, out: str, data: str, max_steps: int | None, callbacks: bool = True,
               time_limit: float | None = None) -> str:
    """The experiment YAML re-rooted under ``out`` (logs, checkpoints) and pointed at ``data``; returns its path.

    ``trainer.max_time`` and any time-limit callback of the YAML are replaced by one per-run
    :class:`~orderlab.train.callbacks.TimeLimit` of ``time_limit`` minutes (None: no limit).
    """
    with open(config) as fh:
        cfg = yaml.safe_load(fh)
    cfg = copy.deepcopy(cfg)
    tr = cfg.setdefault("trainer", {})
    tr["default_root_dir"] = out
    tr.pop("max_time", None)  # Lightning's Timer saves its elapsed time in the checkpoint: a resumed run adds nothing
    if max_steps is not None:
        tr["max_steps"] = max_steps
        tr["val_check_interval"] = max(1, min(int(tr.get("val_check_interval") or max_steps), max_steps))
    tr["logger"] = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": out, "name": "tensorboard", "version": "demo",
                                  "default_hp_metric": True}}  # hp_metric = val bits/token in HParams
    cbs = [c for c in tr.get("callbacks", []) if "ModelCheckpoint" not in c["class_path"]]
    cbs.insert(0, {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                   "init_args": {"dirpath": os.path.join(out, "checkpoints"), "save_last": True,
                                 "every_n_train_steps": 50, "save_top_k": 1}})
    if not callbacks:
        cbs = [c for c in cbs if not c["class_path"].startswith("orderlab.")]
    cbs = [c for c in cbs if c["class_path"].rsplit(".", 1)[-1] not in ("TimeLimit", "Timer")]
    if time_limit is not None:
        cbs.append({"class_path": "orderlab.train.callbacks.TimeLimit", "init_args": {"minutes": time_limit}})
    tr["callbacks"] = cbs
    cfg.setdefault("data", {})["root"] = data
    from orderlab.data.atomic import atomic_write_text  # torch: only once the demo runs, not for --help

    path = os.path.join(out, "fit_config.yaml")
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))
    return path


def demo(out: str = "runs/demo", data: str = "data/digits", experiment: str = "experiments/digits/base.yaml",
         max_steps: int | None = None, rows: list[str] | None = None, num_samples: int | None = None,
         seed: int = 0, callbacks: bool = True, cache_dir: str | None = None, threads: int | None = None,
         time_limit: float | None = 10.0) -> None:
    """Run the whole demo on CPU in minutes and write ``out``/report.md.

    Args:
        out: output folder.
        data: digits dataset folder (prepared here when missing).
        experiment: the experiment YAML to train (an `orderlab fit --config` file).
        max_steps: override the YAML's training steps (a tiny value for a smoke run).
        rows: (schedule, steps) rows to evaluate (default: all six schedules at T = N, N/4, N/8 or natural).
        num_samples: images per row and real held-out images compared (None: as many as the data allows, the
            smaller of the val and train splits, 898 for digits' half/half split: generated = reference = N, and
            N training images give the real-vs-real floor at that N).
        seed: sampling seed.
        callbacks: keep the YAML's TensorBoard callbacks (sample grids, attention maps).
        cache_dir: folder of the real-feature cache (default: $ORDERLAB_CACHE, else $XDG_CACHE_HOME/orderlab, else
            ~/.cache/orderlab). Evaluation writes nothing into ``data``.
        threads: torch intra-op threads for training and evaluation (None: :func:`default_threads`, 2 when OpenMP
            threads sleep while idle, as ``make demo`` sets up, else 1; measured in the README).
        time_limit: minutes of training per run, a guard (None: none). It is not counted across runs: when it
            stops training short, the report says so, the command exits 1, and a rerun continues to max_steps.
    """
    import torch

    if threads is None:
        threads = default_threads()
    check_positive_int(threads, "threads")
    if time_limit is not None and not time_limit >= 0:
        raise ValueError(f"time_limit={time_limit!r} must be minutes >= 0 (or null for no limit)")
    for key, value in (("num_samples", num_samples), ("max_steps", max_steps)):  # bad input fails before training
        if value is not None:
            check_positive_int(value, key)
    if rows is not None:
        from orderlab.analysis.evaluation import parse_row

        if not rows:
            raise ValueError("rows is empty: give at least one 'schedule:steps' (or leave it out for the default)")
        for row in rows:
            parse_row(row)  # an unknown schedule or knob
    if not os.path.isfile(experiment):
        raise FileNotFoundError(f"experiment={experiment!r} does not exist (run from the repository root, or pass "
                                "--experiment PATH)")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _demo(out, data, experiment, max_steps, rows, num_samples, seed, callbacks, cache_dir, time_limit)
    finally:
        torch.set_num_threads(before)


def _demo(out, data, config, max_steps, rows, num_samples, seed, callbacks, cache_dir, time_limit) -> None:
    import torch

    from orderlab.commands.evaluate_cmd import run_evaluation
    from orderlab.commands.report import write_report
    from orderlab.data.datasets import PrepareOptions, prepare_dataset
    from orderlab.train.lightning_cli import run_lightning_cli

    t0 = time.perf_counter()
    options = PrepareOptions(seed=DEMO_DATA_SEED, progress=False)
    if not _dataset_ok(data, options):
        print(f"[1/4] preparing digits -> {data}", flush=True)
        prepare_dataset("digits", data, options, overwrite=True)
    else:
        print(f"[1/4] reusing the prepared digits in {data}", flush=True)
    if num_samples is None:  # as many as the data allows: generated = reference = N, and N disjoint real images
        from orderlab.data.shards import read_manifest

        num_samples = min(v["count"] for v in read_manifest(data)["splits"].values())
    cfg_path = fit_config(config, out, data, max_steps, callbacks, time_limit)
    ckpt_dir = Path(out) / "checkpoints"
    resume = (ckpt_dir / "last.ckpt").is_file()
    start_step = _ckpt_step(str(ckpt_dir / "last.ckpt")) if resume else 0
    limit = f"{time_limit:g}-minute guard per run" if time_limit is not None else "no time limit"
    print(f"[2/4] training {config} ({f'resuming from last.ckpt at step {start_step}' if resume else 'from scratch'}; "
          f"{torch.get_num_threads()} torch thread(s), OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'default')}, "
          f"{limit}); TensorBoard: tensorboard --logdir {out}", flush=True)
    args = ["fit", "--config", cfg_path] + (["--ckpt_path", "last"] if resume else [])
    t_fit = time.perf_counter()
    run_lightning_cli(args)
    fit_seconds = time.perf_counter() - t_fit
    with open(cfg_path) as fh:
        target = int((yaml.safe_load(fh).get("trainer") or {}).get("max_steps", -1))
    # the step of the checkpoint that is evaluated: the model the report describes
    training = {"steps": _ckpt_step(str(ckpt_dir / "last.ckpt")), "max_steps": target, "start_step": start_step,
                "seconds": fit_seconds, "threads": torch.get_num_threads(), "time_limit_minutes": time_limit,
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default (active)")}
    short = 0 <= training["max_steps"] and training["steps"] < training["max_steps"]
    if short:
        _shout(f"TRAINING STOPPED SHORT: {training['steps']} of {training['max_steps']} steps ({limit}). The model "
               f"is under-trained: the evaluation below is NOT meaningful. Run the same command again to continue "
               f"from {ckpt_dir / 'last.ckpt'} to step {training['max_steps']}.")
    ckpt = str(ckpt_dir / "last.ckpt")
    print(f"[3/4] evaluating {len(rows or DEMO_ROWS)} (schedule, steps) rows at {num_samples} samples each", flush=True)
    results = run_evaluation(ckpt, rows or DEMO_ROWS, out, num_samples=num_samples, data=data, seed=seed,
                             cache_dir=cache_dir, keep_items=True)  # items: the report's paired comparisons
    print("[4/4] writing the report", flush=True)
    report = write_report(results, out, data=data, ckpt=ckpt, num_samples=num_samples, fit_seconds=fit_seconds,
                          total_seconds=time.perf_counter() - t0, cache_dir=cache_dir, training=training, seed=seed)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s\n  report:      {report}\n  table:       {out}/results.md"
          f"\n  checkpoint:  {ckpt} (step {training['steps']} of {training['max_steps']})"
          f"\n  TensorBoard: tensorboard --logdir {out}", flush=True)
    if short:
        _shout(f"NOT FINISHED: the model trained {training['steps']} of {training['max_steps']} steps, so the report's "
               f"verdicts are marked not meaningful. Run the same command again to continue training.")
        raise SystemExit(EXIT_SHORT)


def default_threads() -> int:
    """The demo's torch thread count: 2 (at most the cores) when ``OMP_WAIT_POLICY=passive``, else 1.

    Measured on a 2-core CPU (README): idle OpenMP threads that spin (the default policy) make 2 threads up to 4x
    slower than 1 next to other CPU-bound work, while 2 threads are 1.8x faster on a quiet machine. With the passive
    policy (idle threads sleep), 2 threads are about 10 % behind the best when quiet and the fastest under load.
    The policy is read once, when torch loads its OpenMP runtime, so it must be in the environment at start-up:
    ``make demo`` sets it; without it, 1 thread is the setting that cannot collapse under load.
    """
    passive = os.environ.get("OMP_WAIT_POLICY", "").strip().lower() == "passive"
    return max(1, min(2 if passive else 1, os.cpu_count() or 1))


def _shout(msg: str) -> None:
    """A message that cannot be missed, on stderr."""
    import sys

    bar = "!" * 100
    sys.stderr.write(f"\n{bar}\n!!! {msg}\n{bar}\n\n")
    sys.stderr.flush()


def _ckpt_step(path: str) -> int:
    """The global step stored in a Lightning checkpoint (0 when it cannot be read; Lightning then reports why)."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("global_step", 0))
    except Exception:
        return 0


def _dataset_ok(root: str, options) -> bool:
    """``root`` holds intact digits prepared with ``options`` AND the split the preparer makes today (a folder of
    an older split, e.g. the 15 % one that held out 270 images, records the same options but not the same split)."""
    try:
        from orderlab.data.datasets import DATASETS, existing_preparation
        from orderlab.data.shards import read_manifest, verify_shards

        manifest = read_manifest(root)
        verify_shards(root, manifest, checksums=True)
        if existing_preparation("digits", root, options)[0] is None:
            return False
        fresh = DATASETS.get("digits")(options, root)  # digits writes nothing into its work folder: split only
        counts = {split: len(tokens) for split, (tokens, _) in fresh.splits.items()}
        return manifest["source"] == fresh.source and {s: v["count"] for s, v in manifest["splits"].items()} == counts
    except Exception:  # missing, partial or corrupt: prepare again (prepare writes atomically)
        return False
