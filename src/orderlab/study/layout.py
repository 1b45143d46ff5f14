"""Where a study keeps its files (see :mod:`orderlab.study.runner`), and reading a finished cell back."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from orderlab.study.spec import StudySpec

__all__ = ["model_dir", "cell_path", "load_cell"]


def model_dir(spec: StudySpec, arm: str, seed: int) -> str:
    return os.path.join(spec.out, "models", arm, f"seed{seed}")


def cell_path(spec: StudySpec, arm: str, seed: int, slug: str, ext: str = "json") -> str:
    return os.path.join(spec.out, "cells", arm, f"seed{seed}", f"{slug}.{ext}")


def load_cell(spec: StudySpec, arm: str, seed: int, slug: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A finished cell: (metrics, per-item arrays)."""
    with open(cell_path(spec, arm, seed, slug)) as fh:
        result = json.load(fh)["result"]
    with np.load(cell_path(spec, arm, seed, slug, "npz")) as z:
        items = {k: z[k] for k in z.files}
    return result, items
