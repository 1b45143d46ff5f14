"""Small argument checks shared by commands, callbacks and library code (no orderlab imports: anything may use it)."""

from __future__ import annotations

__all__ = ["check_positive_int"]


def check_positive_int(value, name: str, *, minimum: int = 1, maximum: int | None = None,
                       error: type[ValueError] = ValueError) -> int:
    """``value`` when it is an int (not a bool) in ``minimum..maximum`` (``maximum`` None: no upper bound).

    Otherwise raise ``error`` (a ValueError subclass; ValueError by default) naming ``name`` as users know it
    (``--threads``, ``model.budgets``): ``"{name}={value!r} must be an int >= {minimum}"``, or
    ``"... must be an int in {minimum}..{maximum}"`` when ``maximum`` is given.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (
            maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise error(f"{name}={value!r} must be an int {bound}")
    return value
