"""Exact, classifier-free scorers of generated token grids, one per dataset that has a ground truth.

A dataset with a known distribution (the ``ising`` benchmark) is scored on the tokens themselves, not on the features
of a learned network. ``orderlab evaluate``, the demo path and ``orderlab study`` pick the scorer of the data's
``dataset`` name from :data:`TOKEN_SCORERS` where one is registered (else the classifier/Inception features).

A scorer is built from the dataset manifest and has:

* ``key``: its main metric (a result column), ``label``: one line naming what it measures;
* ``score_tokens(tokens (B, H, W)) -> (metrics, items)``: metrics with ``KEY_low``/``KEY_high`` intervals, and
  per-sample arrays aligned with the sample index (sample i of every row shares its seed);
* ``nll_metrics(nll_bits_per_image (M,), tokens (M, H, W)) -> (metrics, items)``: what the held-out NLL means
  against the ground truth (``tokens``: the held-out grids it was computed on, in the same order).

Other packages add theirs under the entry-point group ``orderlab.token_scorers``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from orderlab.registry import Registry

__all__ = ["TOKEN_SCORERS", "scorer_for", "IsingScorer"]

TOKEN_SCORERS: Registry[Callable[[dict[str, Any]], Any]] = Registry(
    "token scorer", entry_point_group="orderlab.token_scorers", builtins="orderlab.metrics.token_scorers")


def scorer_for(manifest: dict[str, Any]):
    """The exact scorer of the manifest's dataset, or None when that dataset has none (score with features)."""
    name = manifest.get("dataset")
    return TOKEN_SCORERS.get(name)(manifest) if name in TOKEN_SCORERS.names() else None


@TOKEN_SCORERS.register("ising")
class IsingScorer:
    """The Ising benchmark: energy per site against the exact mean energy, |m| against the held-out set, and the
    held-out NLL against the exact entropy (:mod:`orderlab.metrics.ising_metrics`)."""

    key = "energy"

    def __init__(self, manifest: dict[str, Any], level: float = 0.95) -> None:
        from orderlab.metrics.ising_metrics import ising_facts

        self.manifest, self.level = manifest, level
        facts = ising_facts(manifest)
        self.label = (f"exact Ising scores (L={facts['L']}, beta={facts.get('beta')}): mean energy per site vs the "
                      f"exact {float(facts['exact_energy_per_site']):.6f} ({facts.get('exact_method', 'exact')}), "
                      f"NLL vs the exact entropy {float(facts['exact_entropy_bits_per_site']):.6f} bits/site; "
                      f"95 % Student t-intervals over the i.i.d. samples / held-out grids")

    def fingerprint(self) -> str:
        return f"ising-exact:{self.label}"

    def score_tokens(self, tokens) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        from orderlab.metrics.ising_metrics import ising_scores

        return ising_scores(tokens, self.manifest, level=self.level)

    def nll_metrics(self, nll_bits_per_image, tokens=None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """NLL minus the exact entropy; with the grids also ``kl``: NLL minus each grid's exact NLL (ln Z is
        known), the same KL(p || q) estimate with about a tenth of the interval width."""
        from orderlab.metrics.ising_metrics import nll_gap

        metrics, gaps = nll_gap(nll_bits_per_image, self.manifest, tokens=tokens, level=self.level)
        keep = {k: metrics[k] for k in ("nll_low", "nll_high", "nll_gap", "nll_gap_low", "nll_gap_high",
                                        "entropy_exact", "kl", "kl_low", "kl_high") if k in metrics}
        return keep, {"kl" if tokens is not None else "nll_gap": gaps}
