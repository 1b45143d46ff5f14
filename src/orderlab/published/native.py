"""The row name ``native``: a converted published model's own decoding (its order, step sizes and budget)."""

from __future__ import annotations

from typing import Any

__all__ = ["NATIVE", "native_row"]

NATIVE = "native"


def native_row(loaded, what: str = "--schedule") -> dict[str, Any]:
    """``{"schedule", "steps", "knobs"}`` of a checkpoint written by ``orderlab convert``; a one-line error otherwise."""
    native = getattr(loaded, "native", None)
    if not native:
        raise ValueError(f"{what} native: checkpoint {loaded.path!r} has no native decoding (only checkpoints written "
                         "by `orderlab convert` have one); name a schedule instead")
    return dict(native["row"])
