"""Size rules that reproduce published samplers step for step: ARPG's and RandAR's.

Each rule gives, for N tokens and T steps, the tokens per step that the published ``generate`` decodes, computed
in its float arithmetic (see below). A budget the published loop cannot run as T non-empty steps is a ValueError
(the registry reports it as a PlanError) rather than a quiet change of ours. LPD's published tables are :data:`orderlab.sizes.LPD_TABLE` (the ``lpd`` rule).

The orderlab registry imports this module by name on its first lookup (``SIZE_RULES``'s built-ins), so the rules
are registered without ``orderlab.sizes`` importing this module.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

from orderlab.sizes import register_size_rule

__all__ = ["arpg_cosine", "arpg_arccos", "randar"]

# a float farther than this from an integer truncates the same whatever libm's last bit (as in orderlab.sizes)
_NEAR = 1e-6
Libm = Callable[[float], float]


# ------------------------------------------------------------------------------------------ published float math
# ARPG and RandAR compute their step sizes in doubles and truncate with int(). Their float results differ from the
# real numbers exactly where it matters: at (s+1)/T = 2/3, 256 * cos(pi/3) is 128 in reals but ARPG's double gives
# 127.99999999999997 at T=39 (and 128.00000000000003 at T=3), so orderlab.sizes.exact_floor would not reproduce
# them. The expressions are therefore evaluated as the published code does, in IEEE doubles, which Python computes
# identically on every machine; only the one libm call (cos, arccos) may differ in its last bit between C
# libraries, and where that bit could move the truncation the correctly rounded value is used.
def _correctly_rounded(name: str, x: float) -> float:
    """``math.<name>(x)`` correctly rounded to a double (what an accurate libm such as glibc's returns)."""
    import mpmath
    from mpmath.libmp import round_nearest, to_float

    with mpmath.workdps(60):
        return to_float(getattr(mpmath, name)(mpmath.mpf(x))._mpf_, rnd=round_nearest)


def _published_int(expr: Callable[[Libm], float], name: str) -> int:
    """int() of a published float expression; ``expr(f)`` evaluates it with ``f`` as its libm call ``name``."""
    value = expr(getattr(math, name))
    if abs(value - round(value)) < _NEAR:
        value = expr(functools.partial(_correctly_rounded, name))
    return int(value)


# ------------------------------------------------------------------------------------------------------------ ARPG
def _arpg(name: str, n: int, steps: int, masked_after: Callable[[int], int]) -> list[int]:
    """The tokens per step of ARPG's ``Transformer.generate`` (hp-l33/ARPG, models/arpg.py).

    Following ARPG: after step s (0-based), ``masked_after(s)`` = int(N * mask ratio) tokens stay masked, clamped
    to at least 1 and at most one fewer than were masked before; the last step decodes all that remain.
    """
    sizes, remaining = [], n
    for s in range(steps):
        if s == steps - 1:
            emit = remaining  # following ARPG: the last step takes all that remain
        else:
            emit = remaining - max(1, min(remaining - 1, masked_after(s)))
        if emit < 1:
            raise ValueError(f"{name} at N={n}, T={steps}: ARPG's generate would run step {s} with no token")
        sizes.append(emit)
        remaining -= emit
    return sizes


@register_size_rule("arpg-cosine")
def arpg_cosine(n: int, steps: int) -> list[int]:
    """ARPG's ``sample_schedule='cosine'``: mask ratio cos(pi/2 (s+1)/T), following ARPG's generate, models/arpg.py.

    Differs from orderlab's ``cosine`` in two ways. The first group is not pinned to one token: it is
    N - int(N cos(pi/(2T))), e.g. 5 at N=256, T=8. And ARPG truncates a float where ``cosine`` floors the real
    number: where (s+1)/T = 2/3 the float may fall just below N/2 (T=39: 127.99999999999997) and one token moves
    to the next step. At N=256 the two rules differ for 30 of T in 1..256: T = 2..17 (first group) and 14 budgets
    from T=39 on (2/3); 13 of T in 8..64. ``cosine``'s own clamp (a token left for each later step) never acts
    here, since cos(pi/2 x) >= 1 - x keeps the masked count at least the number of later steps.
    """
    def masked_after(s: int) -> int:  # following ARPG: N times the float ratio, angle (pi/2 * (s+1)) / T, truncated
        return _published_int(lambda cos: n * cos(math.pi / 2. * (s + 1) / steps), "cos")

    return _arpg("arpg-cosine", n, steps, masked_after)


@register_size_rule("arpg-arccos")
def arpg_arccos(n: int, steps: int) -> list[int]:
    """ARPG's ``sample_schedule='arccos'`` (its default): mask ratio arccos((s+1)/T) / (pi/2).

    Following ARPG's generate, models/arpg.py. orderlab's ``arccos`` uses the same mask ratio but floors the real
    number (ARPG truncates a float) and clamps the masked count to one per later step (ARPG to one in all); as
    arccos(x) / (pi/2) >= 1 - x that clamp never acts, and no float lands on the other side of an integer: at
    N=256, ``arccos`` equals ``arpg-arccos`` for every T in 1..256 (0 of 256 budgets differ; likewise at N=1024).
    """
    def masked_after(s: int) -> int:  # following ARPG: N times the float ratio acos((s+1) / T) / (pi/2), truncated
        return _published_int(lambda acos: n * (acos(1. * (s + 1) / steps) / (math.pi * 0.5)), "acos")

    return _arpg("arpg-arccos", n, steps, masked_after)


# ---------------------------------------------------------------------------------------------------------- RandAR
def _randar_target(n: int, k: int, steps: int) -> int:
    """How many tokens RandAR has decoded after its step k (0-based), in its float arithmetic.

    Following RandAR's ``calculate_num_query_tokens_for_parallel_decoding`` (RandAR/model/utils.py) at its
    ``cur_step`` = k: 1 + N (1 - cos(angle)) with angle (pi/2 * (k+1)) / T, truncated, at most N.
    """
    return min(_published_int(lambda cos: (1.0 - cos(math.pi / 2.0 * (k + 1) / steps)) * n + 1, "cos"), n)


@register_size_rule("randar")
def randar(n: int, steps: int) -> list[int]:
    """RandAR's parallel decoding with T = ``num_inference_steps``, following RandAR's generate.

    Sources: ziqipang/RandAR, RandAR/model/randar_gpt.py (``generate``) and RandAR/model/utils.py
    (``calculate_num_query_tokens_for_parallel_decoding``), as of commit f189cb3 (its corner-case fix). The first
    step decodes one token; step k >= 1 decodes up to int((1 - cos(pi/2 (k+1)/T)) N + 1) tokens in all, at least
    one and at most those left. RandAR computes that bound in floats; where (k+1)/T = 2/3 the float may fall just
    below the integer N/2 + 1 and truncate one lower than the real number. The float result is the published one
    and is reproduced here (at N=256 the real-number formula would differ at 50 of T in 2..256, all multiples of 3).
    T=1 with N > 1 is refused: RandAR's first step always decodes a single token, so it would need a second step.
    """
    sizes, done = [1], 1  # following RandAR: the first step decodes one token, whatever T
    for k in range(1, steps):
        emit = min(max(_randar_target(n, k, steps) - done, 1), n - done)
        if emit < 1:
            raise ValueError(f"randar at N={n}, T={steps}: RandAR's generate would finish before step {k}, "
                             "leaving a step with no token")
        sizes.append(emit)
        done += emit
    if done < n:
        raise ValueError(f"randar at N={n}, T={steps}: RandAR's generate would run more than T steps "
                         "(its first step always decodes a single token)")
    return sizes
