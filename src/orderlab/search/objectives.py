"""Trial objectives: inference-time (sample and score, through exactly the ``evaluate`` code path) and training-time
(``orderlab fit`` through the same LightningCLI objects, pruned on validation bits per token).

Both return one value per objective name and store every metric of the trial as the user attribute ``metrics``,
so the study holds what the report shows.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from orderlab.search.space import inference_setting, suggest, train_overrides

__all__ = ["InferenceObjective", "TrainObjective", "INFERENCE_OBJECTIVES", "default_direction"]

# keys of an evaluate_row result that can be optimised
INFERENCE_OBJECTIVES = ("fcd", "fid", "kcd", "kid", "precision", "recall", "nll_bits_per_token", "steps",
                        "forward_passes", "ms_per_image")
_MAXIMIZE = ("precision", "recall")


def default_direction(objective: str) -> str:
    return "maximize" if objective.split("/")[-1] in _MAXIMIZE else "minimize"


def _numbers(d: dict[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if hasattr(v, "item") and getattr(v, "numel", lambda: 1)() == 1:
            v = v.item()
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
    return out


def _values(metrics: dict[str, float], objectives: list[str]) -> list[float]:
    missing = [o for o in objectives if o not in metrics]
    if missing:
        raise KeyError(f"objective {missing[0]!r} is not among this trial's metrics {sorted(metrics)}")
    vals = [metrics[o] for o in objectives]
    bad = [o for o, v in zip(objectives, vals) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"objective {bad[0]!r} is {metrics[bad[0]]} (not finite)")
    return vals


class InferenceObjective:
    """Sample ``num_samples`` images of a trained checkpoint under the trial's schedule, budget and sampling knobs.

    The checkpoint, the real images and the feature extractor are loaded once per worker process.
    """

    def __init__(self, spec, params):
        from orderlab.analysis.evaluation import load_context

        self.spec, self.params = spec, params
        self.progress = None  # progress(phase, samples_done) during a trial, set by the worker's progress bar
        ev = spec.evaluate
        self.ctx = load_context(ev["ckpt"], ev.get("data"), ev.get("split", "val"), ev.get("extractor", "classifier"),
                                ev.get("nll_samples"))

    def check(self) -> None:
        """Before any trial: the split holds the fixed number of real images every trial is scored against."""
        ev = self.spec.evaluate
        n = self.ctx.real.manifest()["splits"][ev.get("split", "val")]["count"]
        if ev.get("num_samples", 256) > n:
            raise ValueError(f"evaluate.num_samples={ev.get('num_samples', 256)} exceeds the {n} real images of "
                             f"split {ev.get('split', 'val')!r}")

    def __call__(self, trial) -> list[float]:
        from orderlab.analysis.evaluation import evaluate_row, parse_row
        from orderlab.metrics import default_cache_dir

        values = {**self.spec.fixed, **suggest(trial, self.params)}
        row_map, sampling = inference_setting(values)
        row = parse_row(row_map)  # unknown schedule or knob -> a failed trial that names it
        ev = self.spec.evaluate
        os.makedirs(os.path.join(self.spec.out, "trials"), exist_ok=True)
        result = evaluate_row(self.ctx.loaded, row, num_samples=ev.get("num_samples", 256), real=self.ctx.real,
                              extractor=self.ctx.extractor, val_tokens=self.ctx.val_tokens,
                              val_labels=self.ctx.val_labels, batch_size=ev.get("batch_size", 256),
                              seed=ev.get("seed", 0), cache_dir=ev.get("cache_dir") or default_cache_dir(),
                              precision=ev.get("precision", "fp32"),
                              grid_path=os.path.join(self.spec.out, "trials", f"trial_{trial.number:04d}.png"),
                              progress=self.progress, **sampling)
        metrics = _numbers(result)
        trial.set_user_attr("row", row.label)
        trial.set_user_attr("metrics", metrics)
        return _values(metrics, self.spec.objectives)


def quiet_lightning() -> None:
    """One line per trial, not Lightning's banners, tips and the same warnings again in every trial.

    Lightning sets its loggers to INFO when it is first imported, so it is imported here before their level is set
    (setting it earlier is undone by the import): its info lines (GPU/TPU available, tips, "`Trainer.fit` stopped")
    go. Warnings stay, but each one (text, category, place) is shown once per process: Python's own "once"/"default"
    filters forget what they showed whenever a ``warnings.catch_warnings`` block exits, which LightningCLI and
    Optuna's heartbeat do in every trial.
    """
    import importlib
    import logging
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric"):
        importlib.import_module(name)  # first: its import sets the level to INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    if getattr(warnings.showwarning, "_orderlab_once", False):
        return
    show, seen = warnings.showwarning, set()

    def once(message, category, filename, lineno, file=None, line=None):
        key = (str(message), category, filename, lineno)
        if key not in seen:
            seen.add(key)
            show(message, category, filename, lineno, file, line)

    once._orderlab_once = True
    warnings.showwarning = once


class TrainObjective:
    """Train ``fit.config`` (plus ``fit.args`` and the trial's overrides) and return validation metrics.

    With one objective, Optuna's pruner sees it after every validation through optuna-integration's
    ``PyTorchLightningPruningCallback`` (which reports once per epoch: see the README).
    """

    def __init__(self, spec, params):
        self.spec, self.params = spec, params
        quiet_lightning()

    def args_for(self, values: dict[str, Any], trial_dir: str) -> list[str]:
        fit = self.spec.fit
        logger = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                  "init_args": {"save_dir": os.path.dirname(trial_dir), "name": "",
                                "version": os.path.basename(trial_dir), "default_hp_metric": True}}
        return ["--config", fit["config"], *fit.get("args", []), *train_overrides(values),
                f"--trainer.default_root_dir={trial_dir}", f"--trainer.logger={json.dumps(logger)}"]

    def check(self) -> None:
        """Configure (not train) one trial at each parameter's first value: a bad key fails before any trial."""
        from orderlab.train.lightning_cli import build_cli

        values, raw = {**self.spec.fixed}, {}
        for p in self.params:  # each parameter at its first choice or its low end, conditions as suggest() has them
            if p.active(raw):
                raw[p.name] = p.choices[0] if p.choices else p.low
                values[p.name] = json.loads(raw[p.name]) if p.encoded else raw[p.name]
        try:
            build_cli(self.args_for(values, os.path.join(self.spec.out, "tensorboard", "check")))
        except ValueError as err:
            raise ValueError(f"search space / fit: {err}") from None

    def __call__(self, trial) -> list[float]:
        from orderlab.train.lightning_cli import build_cli

        values = {**self.spec.fixed, **suggest(trial, self.params)}
        trial_dir = os.path.join(self.spec.out, "tensorboard", f"trial_{trial.number:04d}")
        cli = build_cli(self.args_for(values, trial_dir))
        prune = len(self.spec.objectives) == 1 and self.spec.pruner is not None
        if prune:
            from optuna_integration.pytorch_lightning import PyTorchLightningPruningCallback

            cb = PyTorchLightningPruningCallback(trial, monitor=self.spec.objectives[0])
            cli.trainer.callbacks.append(cb)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        if prune:
            cb.check_pruned()
        metrics = _numbers(dict(cli.trainer.callback_metrics))
        metrics["global_step"] = float(cli.trainer.global_step)
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("trial_dir", trial_dir)
        return _values(metrics, self.spec.objectives)
