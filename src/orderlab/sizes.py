"""Group-size rules: how many tokens each of T steps generates, separate from *which* tokens.

A rule maps (N, T) to T positive ints summing to N, for any 1 <= T <= N; a rule that reproduces a published
sampler (``orderlab.sizes_published``) refuses, with a PlanError, a budget that sampler cannot run. Rules are named
in a registry (``register_size_rule``, or the entry-point group ``orderlab.size_rules``); a schedule's ``sizes``
knob is a rule name, ``"name:arg"`` for a rule with a parameter (``"power:1.5"``), or an explicit list of ints.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from typing import Any

from orderlab.plan import PlanError
from orderlab.registry import Registry, UnknownNameError

__all__ = ["SizeSpec", "register_size_rule", "list_size_rules", "resolve_sizes", "LPD_TABLE", "LPD_TRAINING_SIZES",
           "lpd_training_budgets", "SIZE_RULES"]

SizeSpec = str | Sequence[int]
SizeRule = Callable[..., list[int]]
# the built-in rules are defined below in this module; the rules that reproduce published samplers (ARPG, RandAR)
# live in orderlab.sizes_published, which imports this module: the registry imports it by name on the first
# lookup, so there is no import cycle. Other packages add their rules through the entry points.
SIZE_RULES: Registry[SizeRule] = Registry("size rule", entry_point_group="orderlab.size_rules",
                                          builtins="orderlab.sizes_published")


# ------------------------------------------------------------------------------------------ LPD's published sizes
# LPD's tables ship as assets/lpd_group_sizes.json, copied from mit-han-lab/lpd (its "source" field names the
# commit and files). N is the token count: LPD's "256 resolution" is N=256 (16x16), "512 resolution" N=1024.
LpdSizes = tuple[int, ...]


def _checked_lpd(sizes: list[int], n: int, steps: int, where: str) -> LpdSizes:
    """One published list as a tuple, after checking it holds ``steps`` positive sizes summing to ``n``."""
    if len(sizes) != steps or sum(sizes) != n or min(sizes) < 1:
        raise ValueError(f"lpd_group_sizes.json {where}: {len(sizes)} sizes summing to {sum(sizes)}, "
                         f"expected {steps} positive sizes summing to N={n}")
    return tuple(sizes)


def _load_lpd_asset() -> tuple[dict[tuple[int, int], LpdSizes], dict[int, tuple[LpdSizes, ...]]]:
    """LPD's lookup table keyed by (N, T) and its training lists keyed by N, from the packaged asset."""
    from importlib import resources

    data = json.loads((resources.files("orderlab") / "assets" / "lpd_group_sizes.json").read_text("utf-8"))
    lookup = {(int(n), int(t)): _checked_lpd(sizes, int(n), int(t), f"lookup[{n}][{t}]")
              for n, table in data["lookup"].items() for t, sizes in table.items()}
    training = {int(n): tuple(_checked_lpd(sizes, int(n), len(sizes), f"training[{n}][{i}]")
                              for i, sizes in enumerate(lists))
                for n, lists in data["training"].items()}
    return lookup, training


#: LPD's sampling table (orders/group_sizes_lookup.json), every entry, keyed by (N, T). Following LPD.
LPD_TABLE: dict[tuple[int, int], LpdSizes]
#: LPD's training group-size lists (orders/group_sizes_training/group_sizes_{256,512}.json) per N, in LPD's order.
LPD_TRAINING_SIZES: dict[int, tuple[LpdSizes, ...]]
LPD_TABLE, LPD_TRAINING_SIZES = _load_lpd_asset()


def lpd_training_budgets(n: int) -> list[int]:
    """The step counts T of LPD's training lists for N tokens (N=256 or 1024), in LPD's order."""
    if n not in LPD_TRAINING_SIZES:
        raise PlanError(f"LPD publishes training group sizes for N in {sorted(LPD_TRAINING_SIZES)}, not N={n}")
    return [len(sizes) for sizes in LPD_TRAINING_SIZES[n]]


def register_size_rule(name: str) -> Callable[[SizeRule], SizeRule]:
    """Decorator: make ``fn(n, steps[, arg])`` available as the size rule ``name``."""
    return SIZE_RULES.register(name)


def list_size_rules() -> list[str]:
    """Registered size-rule names, sorted."""
    return SIZE_RULES.names()


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
    try:
        rule = SIZE_RULES.get(name)
    except UnknownNameError as err:  # a PlanError, as every other impossible size spec
        raise PlanError(f"{err} or give a list of ints") from None
    if steps is None:
        raise PlanError(f"size rule {spec!r} needs a step budget")
    _check_budget(n, steps)
    return _rule_sizes(rule, spec, arg, n, steps)


@functools.lru_cache(maxsize=4096)
def _rule_sizes(fn: SizeRule, spec: str, arg: str, n: int, steps: int) -> tuple[int, ...]:
    # rules are pure; cached because every sample's plan asks again and an exact boundary costs milliseconds
    try:
        sizes = fn(n, steps, float(arg)) if arg else fn(n, steps)
    except (TypeError, ValueError) as err:
        raise PlanError(f"size rule {spec!r}: {err}") from err
    out = tuple(int(s) for s in sizes)
    assert len(out) == steps and sum(out) == n and min(out) >= 1, (spec, n, steps, out)
    return out


# ------------------------------------------------------------------------------------- exact rounding of sizes
# A size rule floors or rounds a real number computed with libm (cos, acos, pow). Those functions may differ in
# the last bit between C libraries, and where the true value is an integer (cos(pi/3) = 1/2, so N/2 at
# r = 2/3) or a half-integer, that last bit decides the size. Near such a boundary the value is recomputed with
# 60 significant digits; a value within 1e-40 of the boundary is taken to be on it exactly.
_NEAR = 1e-6  # float error of these rules is below 1e-9 for N up to 10^6; farther than this, float decides


def _precise(value: Callable[[Any], Any]) -> Any:
    """``value(mpmath)`` at 60 significant digits."""
    import mpmath

    with mpmath.workdps(60):
        return +value(mpmath)


def exact_floor(approx: float, value: Callable[[Any], Any]) -> int:
    """floor of a real number: ``approx`` is its float value, ``value(lib)`` computes it with ``lib`` = mpmath."""
    k = math.floor(approx)
    if approx - k > _NEAR and k + 1 - approx > _NEAR:
        return k
    import mpmath

    v = _precise(value)
    m = int(mpmath.nint(v))
    return m if abs(v - m) < mpmath.mpf(10) ** -40 else int(mpmath.floor(v))


def exact_round(approx: float, value: Callable[[Any], Any]) -> int:
    """Python's round (half to even) of a real number given as in :func:`exact_floor`."""
    k = math.floor(approx)
    if abs(approx - k - 0.5) > _NEAR:
        return round(approx)
    import mpmath

    v = _precise(value)
    k = int(mpmath.floor(v))
    frac = v - k
    if abs(frac - mpmath.mpf(1) / 2) < mpmath.mpf(10) ** -40:
        return k + (k % 2)  # an exact half: to even, as round() does
    return k + (1 if frac > mpmath.mpf(1) / 2 else 0)


def _mask_ratio_rule(n: int, steps: int, gamma: Callable[[Any, Any], Any]) -> list[int]:
    """MaskGIT's rule: after step t, floor(N * gamma((t+1)/T)) tokens stay masked.

    Following MaskGIT/ARPG, with one change of ours: the masked count is clamped to leave at least one token for
    every later step (MaskGIT clamps to >= 1), so that any 1 <= T <= N yields exactly T non-empty groups.
    ``gamma(r, lib)`` computes the mask ratio with ``lib`` = math (float) or mpmath (see :func:`exact_floor`).
    """
    sizes, remaining = [], n
    for t in range(steps):
        later = steps - t - 1
        if later == 0:
            emit = remaining
        else:
            keep = exact_floor(n * gamma((t + 1) / steps, math),
                               lambda lib, t=t: n * gamma(lib.mpf(t + 1) / steps, lib))
            keep = min(max(keep, later), remaining - 1)
            emit = remaining - keep
        sizes.append(emit)
        remaining -= emit
    return sizes


@register_size_rule("cosine")
def cosine(n: int, steps: int) -> list[int]:
    """MaskGIT's cosine schedule (arXiv 2202.04200), first group pinned to one token as in LPD."""
    sizes = _mask_ratio_rule(n, steps, lambda r, lib: lib.cos(lib.pi / 2 * r))
    if steps > 1 and sizes[0] > 1:
        sizes[1] += sizes[0] - 1
        sizes[0] = 1
    return sizes


@register_size_rule("arccos")
def arccos(n: int, steps: int) -> list[int]:
    """ARPG's recommended sampling schedule: mask ratio arccos(r) / (pi/2)."""
    return _mask_ratio_rule(n, steps, lambda r, lib: lib.acos(min(r, 1)) / (lib.pi / 2))


@register_size_rule("uniform")
def uniform(n: int, steps: int) -> list[int]:
    """Groups as equal as possible; the larger groups come last."""
    return [(t + 1) * n // steps - t * n // steps for t in range(steps)]


@register_size_rule("lpd")
def lpd(n: int, steps: int) -> list[int]:
    """LPD's published table (:data:`LPD_TABLE`, every entry) where (N, T) is listed; elsewhere ``cosine``.

    The fallback to ``cosine`` (first group 1, as LPD's lists) for an (N, T) LPD does not list is ours.
    """
    table = LPD_TABLE.get((n, steps))
    return list(table) if table is not None else cosine(n, steps)


@register_size_rule("power")
def power(n: int, steps: int, p: float = 1.0) -> list[int]:
    """Sizes proportional to ((t+1)/T)^p: p=0 uniform, p>0 growing, p<0 shrinking. A searchable profile (ours)."""
    if not math.isfinite(p):
        raise ValueError(f"exponent must be finite, got {p}")
    if p == 0:  # rounding the cumulative fractions would scatter the larger groups; p=0 *is* the uniform rule
        return uniform(n, steps)

    def cumulative(lib) -> list:
        one = 1.0 if lib is math else lib.mpf(1)
        weights = [(one * (t + 1) / steps) ** p for t in range(steps)]
        total = sum(weights)
        cum, acc = [], 0 * one
        for w in weights:
            acc += w
            cum.append(acc / total)
        return cum

    return from_cumulative(cumulative(math), n, exact=lambda lib: cumulative(lib))


def from_cumulative(fractions: Sequence[float], n: int,
                    exact: Callable[[Any], Sequence[Any]] | None = None) -> list[int]:
    """Round T cumulative fractions (ending at 1) to T positive sizes summing to N, each boundary moved the least.

    ``exact(mpmath)``, when given, recomputes the fractions precisely; it decides boundaries whose float value is
    within rounding of a half-integer (:func:`exact_round`).
    """
    steps = len(fractions)
    bounds, prev = [], 0
    for t, f in enumerate(fractions):
        if t == steps - 1:
            b = n
        elif exact is None:
            b = round(f * n)
        else:
            b = exact_round(f * n, lambda lib, t=t: n * exact(lib)[t])
        b = min(max(b, prev + 1), n - (steps - t - 1))
        bounds.append(b)
        prev = b
    return [b - a for a, b in zip([0, *bounds[:-1]], bounds)]
