"""Group-size rules: how many tokens each of T steps generates, separate from *which* tokens.

A rule maps (N, T) to T positive ints summing to N, for any 1 <= T <= N. Rules are named in a registry
(``register_size_rule``); a schedule's ``sizes`` knob is a rule name, ``"name:arg"`` for a rule with a
parameter (``"power:1.5"``), or an explicit list of ints.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from orderlab.plan import PlanError

__all__ = ["SizeSpec", "register_size_rule", "list_size_rules", "resolve_sizes", "LPD_TABLE"]

SizeSpec = str | Sequence[int]
SizeRule = Callable[..., list[int]]
_RULES: dict[str, SizeRule] = {}

# LPD's hand-tabulated budgets (lpd/orders/group_sizes_lookup.json), keyed by (N, T). Following LPD.
LPD_TABLE: dict[tuple[int, int], tuple[int, ...]] = {
    (256, 20): (1, 2, 4, 5, 7, 8, 10, 11, 12, 14, 15, 16, 17, 18, 18, 19, 19, 20, 20, 20),
    (256, 32): (1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 10, 11, 11, 11, 11,
                12, 12, 12, 12, 12, 12, 12, 12),
    (1024, 48): (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 23,
                 24, 25, 26, 26, 27, 28, 28, 29, 29, 30, 30, 31, 31, 32, 32, 32, 33, 33, 33, 33, 33, 33, 33, 34),
}


def register_size_rule(name: str) -> Callable[[SizeRule], SizeRule]:
    """Decorator: make ``fn(n, steps[, arg])`` available as the size rule ``name``."""

    def deco(fn: SizeRule) -> SizeRule:
        if name in _RULES and _RULES[name] is not fn:
            raise ValueError(f"size rule {name!r} is already registered")
        _RULES[name] = fn
        return fn

    return deco


def list_size_rules() -> list[str]:
    """Registered size-rule names, sorted."""
    return sorted(_RULES)


def _check_budget(n: int, steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise PlanError(f"steps must be an int, got {steps!r}")
    if n < 1:
        raise PlanError(f"the grid must hold at least one token, got N={n}")
    if not 1 <= steps <= n:
        raise PlanError(f"steps={steps} is outside 1..N={n}")


def resolve_sizes(spec: SizeSpec, n: int, steps: int | None) -> tuple[int, ...]:
    """Turn a size spec into T group sizes for N tokens.

    Args:
        spec: rule name, ``"name:arg"``, or an explicit list of sizes (then ``steps`` may be None).
        n: number of tokens N.
        steps: the budget T (1 <= T <= N).
    """
    if not isinstance(spec, str):
        sizes = tuple(int(s) for s in spec)
        if steps is not None and len(sizes) != steps:
            raise PlanError(f"explicit sizes have {len(sizes)} groups but steps={steps}")
        if not sizes or any(s < 1 for s in sizes):
            raise PlanError(f"explicit sizes must be a non-empty list of ints >= 1, got {list(sizes)}")
        if sum(sizes) != n:
            raise PlanError(f"explicit sizes sum to {sum(sizes)} but N={n} (sizes={list(sizes)})")
        return sizes
    name, _, arg = spec.partition(":")
    if name not in _RULES:
        raise PlanError(f"unknown size rule {spec!r}; choose one of {list_size_rules()} or give a list of ints")
    if steps is None:
        raise PlanError(f"size rule {spec!r} needs a step budget")
    _check_budget(n, steps)
    fn = _RULES[name]
    try:
        sizes = fn(n, steps, float(arg)) if arg else fn(n, steps)
    except (TypeError, ValueError) as err:
        raise PlanError(f"size rule {spec!r}: {err}") from err
    out = tuple(int(s) for s in sizes)
    assert len(out) == steps and sum(out) == n and min(out) >= 1, (spec, n, steps, out)
    return out


def _mask_ratio_rule(n: int, steps: int, gamma: Callable[[float], float]) -> list[int]:
    """MaskGIT's rule: after step t, floor(N * gamma((t+1)/T)) tokens stay masked.

    Following MaskGIT/ARPG, with one change of ours: the masked count is clamped to leave at least one token for
    every later step (MaskGIT clamps to >= 1), so that any 1 <= T <= N yields exactly T non-empty groups.
    """
    sizes, remaining = [], n
    for t in range(steps):
        later = steps - t - 1
        if later == 0:
            emit = remaining
        else:
            keep = math.floor(n * gamma((t + 1) / steps))
            keep = min(max(keep, later), remaining - 1)
            emit = remaining - keep
        sizes.append(emit)
        remaining -= emit
    return sizes


@register_size_rule("cosine")
def cosine(n: int, steps: int) -> list[int]:
    """MaskGIT's cosine schedule (arXiv 2202.04200), first group pinned to one token as in LPD."""
    sizes = _mask_ratio_rule(n, steps, lambda r: math.cos(math.pi / 2 * r))
    if steps > 1 and sizes[0] > 1:
        sizes[1] += sizes[0] - 1
        sizes[0] = 1
    return sizes


@register_size_rule("arccos")
def arccos(n: int, steps: int) -> list[int]:
    """ARPG's recommended sampling schedule: mask ratio arccos(r) / (pi/2)."""
    return _mask_ratio_rule(n, steps, lambda r: math.acos(min(r, 1.0)) / (math.pi / 2))


@register_size_rule("uniform")
def uniform(n: int, steps: int) -> list[int]:
    """Groups as equal as possible; the larger groups come last."""
    return [(t + 1) * n // steps - t * n // steps for t in range(steps)]


@register_size_rule("lpd")
def lpd(n: int, steps: int) -> list[int]:
    """LPD's published table where (N, T) is listed; elsewhere ``cosine`` (first group 1). The fallback is ours."""
    table = LPD_TABLE.get((n, steps))
    return list(table) if table is not None else cosine(n, steps)


@register_size_rule("power")
def power(n: int, steps: int, p: float = 1.0) -> list[int]:
    """Sizes proportional to ((t+1)/T)^p: p=0 uniform, p>0 growing, p<0 shrinking. A searchable profile (ours)."""
    if not math.isfinite(p):
        raise ValueError(f"exponent must be finite, got {p}")
    if p == 0:  # rounding the cumulative fractions would scatter the larger groups; p=0 *is* the uniform rule
        return uniform(n, steps)
    weights = [((t + 1) / steps) ** p for t in range(steps)]
    total = sum(weights)
    cum, acc = [], 0.0
    for w in weights:
        acc += w
        cum.append(acc / total)
    return from_cumulative(cum, n)


def from_cumulative(fractions: Sequence[float], n: int) -> list[int]:
    """Round T cumulative fractions (ending at 1) to T positive sizes summing to N, each boundary moved the least."""
    steps = len(fractions)
    bounds, prev = [], 0
    for t, f in enumerate(fractions):
        b = n if t == steps - 1 else round(f * n)
        b = min(max(b, prev + 1), n - (steps - t - 1))
        bounds.append(b)
        prev = b
    return [b - a for a, b in zip([0, *bounds[:-1]], bounds)]
