"""``orderlab demo``: prepare digits -> train the demo model -> evaluate every schedule at a few budgets -> report.

A killed demo resumes: the dataset is reused when its manifest is valid, and training continues from
``last.ckpt``. Everything lands in ``--out`` (default runs/demo): report.md, results.{md,csv,json}, sample grids,
fcd_vs_steps.png, the fit config and TensorBoard logs.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import yaml

# (schedule, steps) rows of the demo: T = N (raster and random), and N/4, N/8 for the parallel schedules
DEMO_ROWS = ["raster:64", "random:64", "random:16", "random:8", "locality:16", "locality:8", "diagonal",
             "diagonal:8", "lshape", "multiscale", "multiscale:8", "raster:8"]


def fit_config(config: str, out: str, data: str, max_steps: int | None, callbacks: bool = True) -> str:
    """The experiment YAML re-rooted under ``out`` (logs, checkpoints) and pointed at ``data``; returns its path."""
    with open(config) as fh:
        cfg = yaml.safe_load(fh)
    cfg = copy.deepcopy(cfg)
    tr = cfg.setdefault("trainer", {})
    tr["default_root_dir"] = out
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
    tr["callbacks"] = cbs
    cfg.setdefault("data", {})["root"] = data
    path = os.path.join(out, "fit_config.yaml")
    os.makedirs(out, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        yaml.safe_dump(cfg, fh, sort_keys=False)
    os.replace(tmp, path)
    return path


def demo(out: str = "runs/demo", data: str = "data/digits", config: str = "experiments/digits/base.yaml",
         max_steps: int | None = None, rows: list[str] | None = None, num_samples: int = 270,
         seed: int = 0, callbacks: bool = True) -> None:
    """Run the whole demo on CPU in minutes and write ``out``/report.md.

    Args:
        out: output folder.
        data: digits dataset folder (prepared here when missing).
        config: the experiment YAML to train.
        max_steps: override the YAML's training steps (a tiny value for a smoke run).
        rows: (schedule, steps) rows to evaluate (default: all six schedules at T = N, N/4, N/8 or natural).
        num_samples: images per row and real held-out images compared (digits' val split has 270).
        seed: sampling seed.
        callbacks: keep the YAML's TensorBoard callbacks (sample grids, attention maps).
    """
    from orderlab.commands.evaluate_cmd import run_evaluation
    from orderlab.commands.report import write_report
    from orderlab.lightning_cli import run_lightning_cli

    t0 = time.perf_counter()
    if not _dataset_ok(data):
        print(f"[1/4] preparing digits -> {data}", flush=True)
        from orderlab.data.datasets import PrepareOptions, prepare_dataset

        prepare_dataset("digits", data, PrepareOptions(seed=0, progress=False), overwrite=True)
    else:
        print(f"[1/4] reusing the prepared digits in {data}", flush=True)
    cfg_path = fit_config(config, out, data, max_steps, callbacks)
    ckpt_dir = Path(out) / "checkpoints"
    resume = (ckpt_dir / "last.ckpt").is_file()
    print(f"[2/4] training {config} ({'resuming from last.ckpt' if resume else 'from scratch'}); "
          f"TensorBoard: tensorboard --logdir {out}", flush=True)
    args = ["fit", "--config", cfg_path] + (["--ckpt_path", "last"] if resume else [])
    t_fit = time.perf_counter()
    run_lightning_cli(args)
    fit_seconds = time.perf_counter() - t_fit
    ckpt = str(ckpt_dir / "last.ckpt")
    print(f"[3/4] evaluating {len(rows or DEMO_ROWS)} (schedule, steps) rows at {num_samples} samples each", flush=True)
    results = run_evaluation(ckpt, rows or DEMO_ROWS, out, num_samples=num_samples, data=data, seed=seed)
    print("[4/4] writing the report", flush=True)
    report = write_report(results, out, data=data, ckpt=ckpt, num_samples=num_samples, fit_seconds=fit_seconds,
                          total_seconds=time.perf_counter() - t0)
    print(f"\ndone in {time.perf_counter() - t0:.0f} s\n  report:      {report}\n  table:       {out}/results.md"
          f"\n  checkpoint:  {ckpt}\n  TensorBoard: tensorboard --logdir {out}")


def _dataset_ok(root: str) -> bool:
    try:
        from orderlab.data.shards import read_manifest, verify_shards

        verify_shards(root, read_manifest(root), checksums=True)
        return True
    except Exception:  # missing, partial or corrupt: prepare again (prepare writes atomically)
        return False
