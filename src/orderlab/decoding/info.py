"""What a decode did, reported by every decoder (plan and Jacobi)."""

from __future__ import annotations

from dataclasses import dataclass, field

from orderlab.plan import Plan

__all__ = ["DecodeInfo"]


@dataclass
class DecodeInfo:
    """What a decode did: forward passes, the rows of each pass, the plans used, and acceptance statistics.

    Plan decoding finalises one group per pass; the Jacobi decoders (orderlab.decoding.jacobi) decode a batch item by item
    and report, per forward pass (all samples in order): tokens made final, drafts verified, drafts accepted, the
    KV-cache length after the pass (condition rows included) and the running count of final tokens.
    """

    forward_passes: int = 0
    rows_per_pass: list[int] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    decoder: str = "plan"
    accepted_per_pass: list[int] = field(default_factory=list)
    drafts_per_pass: list[int] = field(default_factory=list)
    draft_hits_per_pass: list[int] = field(default_factory=list)
    kv_lengths: list[int] = field(default_factory=list)
    committed_per_pass: list[int] = field(default_factory=list)
    passes_per_sample: list[int] = field(default_factory=list)

    verifies: bool = False
    """The decoder drafts and verifies tokens (Jacobi): its acceptance statistics belong in result tables."""

    def table_stats(self) -> dict[str, list[int]]:
        """Per-pass statistics a results table reports for this decoder (none for plan decoding, whose tokens per
        pass are the plan's group sizes)."""
        return {"accepted_per_pass": list(self.accepted_per_pass)} if self.verifies else {}

    @property
    def passes_per_image(self) -> float:
        """Forward passes one image needed: T for plan decoding (a batch shares them); the mean over samples for
        the Jacobi decoders, which decode item by item (their ``forward_passes`` counts the whole batch)."""
        if self.passes_per_sample:
            return sum(self.passes_per_sample) / len(self.passes_per_sample)
        return float(self.forward_passes)

    @property
    def mean_accepted(self) -> float:
        """Mean tokens made final per forward pass."""
        return sum(self.accepted_per_pass) / max(1, len(self.accepted_per_pass))

    @property
    def acceptance_rate(self) -> float:
        """Accepted drafts / verified drafts (0 when nothing was drafted)."""
        return sum(self.draft_hits_per_pass) / max(1, sum(self.drafts_per_pass))
