"""Attention probe: read the attention weights of chosen layers, off by default and free when off.

    with probe_attention(model, layers=[0, 3]) as probe:
        model(labels, tokens, positions, mask)
    probe.weights[3][0]   # (B, Hh, R, K) weights of layer 3 in the first forward

While a probe is active, the chosen layers also compute softmax(QK^T) explicitly (SDPA does not return weights);
outside the ``with`` block every attention module has ``probe = None`` and pays one ``is None`` check.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

__all__ = ["probe_attention", "AttentionProbe"]


@dataclass
class AttentionProbe:
    """Recorded weights: layer index -> one (B, Hh, R, K) float tensor per forward, in call order."""

    weights: dict[int, list[torch.Tensor]] = field(default_factory=dict)


@contextmanager
def probe_attention(model, layers: Sequence[int] | None = None) -> Iterator[AttentionProbe]:
    """Record attention weights of ``layers`` (indices into ``model.attention_modules()``; None = all)."""
    modules = model.attention_modules()
    chosen = range(len(modules)) if layers is None else list(layers)
    bad = [i for i in chosen if not -len(modules) <= i < len(modules)]
    if bad:
        raise ValueError(f"attention layers {bad} do not exist; the model has {len(modules)} (0..{len(modules) - 1})")
    probe = AttentionProbe()
    try:
        for i in chosen:
            idx = i % len(modules)
            probe.weights[idx] = modules[idx].probe = []
        yield probe
    finally:
        for m in modules:
            m.probe = None
