"""One trained model of a study, evaluated row by row through ``evaluate_row`` (the code path of ``orderlab
evaluate``), keeping the per-item values that paired differences between rows and models need."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from orderlab.study.spec import StudySpec

__all__ = ["StudyEvaluator", "scalars"]

def scalars(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of an evaluate_row result (numbers and strings; NaN kept as None)."""
    out = {}
    for k, v in result.items():
        if k == "items":
            continue
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
    return out


class StudyEvaluator:
    """Loads one checkpoint and its evaluation data once; :meth:`row` evaluates one row on it."""

    def __init__(self, spec: StudySpec, ckpt: str) -> None:
        from orderlab.analysis.evaluation import load_context

        ev = spec.evaluate
        self.spec = spec
        self.ctx = load_context(ckpt, spec.data_root, ev.get("split", "val"), "classifier", ev.get("nll_samples"))
        self.num_samples = int(ev.get("num_samples") or len(self.ctx.val_tokens))

    def row(self, row) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        from orderlab.analysis.evaluation import evaluate_row
        from orderlab.metrics import default_cache_dir

        ev, ctx = self.spec.evaluate, self.ctx
        result = evaluate_row(ctx.loaded, row, num_samples=self.num_samples, real=ctx.real, extractor=ctx.extractor,
                              val_tokens=ctx.val_tokens, val_labels=ctx.val_labels,
                              batch_size=int(ev.get("batch_size", 256)), seed=int(ev.get("seed", 0)),
                              cache_dir=default_cache_dir(), n_boot=int(ev.get("n_boot", 200)), keep_items=True)
        items = {k: np.asarray(v, dtype=np.float64) for k, v in result.pop("items").items() if v is not None}
        return scalars(result), items
