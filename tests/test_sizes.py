"""Group-size rules: every rule gives T positive sizes summing to N; the published lists are reproduced verbatim."""

import math

import pytest
from helpers import UNKNOWN

import orderlab.sizes as sizes_mod
from orderlab import PlanError, list_size_rules, register_size_rule, resolve_sizes
from orderlab.sizes import LPD_TABLE, from_cumulative

NS = [1, 9, 64, 256, 1024]

# references/schedules.md §1.1 (MaskGIT's rule; the first cosine group pinned to 1) and §1.2 (LPD's table).
COSINE_256_20 = (1, 3, 4, 5, 7, 8, 10, 11, 13, 13, 15, 16, 17, 17, 19, 18, 20, 19, 20, 20)
ARCCOS_256_20 = (9, 8, 8, 8, 9, 8, 9, 9, 9, 9, 9, 10, 11, 11, 12, 13, 14, 17, 22, 51)
COSINE_1024_48 = (1, 2, 2, 4, 5, 6, 7, 8, 10, 10, 11, 12, 14, 14, 15, 17, 17, 18, 19, 20, 21, 22, 22, 23, 25, 24,
                  26, 26, 27, 28, 28, 28, 30, 30, 30, 31, 31, 31, 32, 32, 33, 33, 33, 33, 33, 34, 33, 33)
LPD_256_20 = (1, 2, 4, 5, 7, 8, 10, 11, 12, 14, 15, 16, 17, 18, 18, 19, 19, 20, 20, 20)
LPD_256_32 = (1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 10, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12,
              12, 12)
LPD_1024_48 = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 23, 24, 25, 26, 26,
               27, 28, 28, 29, 29, 30, 30, 31, 31, 32, 32, 32, 33, 33, 33, 33, 33, 33, 33, 34)


def budgets(n: int) -> list[int]:
    return sorted({1, 2, 3, 7, 20, 48, n // 3, n // 2, n - 1, n} & set(range(1, n + 1)))


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("rule", [*list_size_rules(), "power:0", "power:2.5", "power:-1"])
def test_every_rule_partitions_n_into_t_positive_sizes(rule, n):
    for steps in budgets(n):
        if rule == "randar" and steps == 1 < n:  # RandAR's first step is one token: it cannot run T = 1
            continue
        sizes = resolve_sizes(rule, n, steps)
        assert len(sizes) == steps and sum(sizes) == n and min(sizes) >= 1, (rule, n, steps, sizes)
        assert all(isinstance(s, int) for s in sizes)


def test_builtin_rules_are_registered():
    assert {"arccos", "cosine", "lpd", "power", "uniform"} <= set(list_size_rules())


def test_published_lists():
    assert resolve_sizes("cosine", 256, 20) == COSINE_256_20
    assert resolve_sizes("arccos", 256, 20) == ARCCOS_256_20
    assert resolve_sizes("cosine", 1024, 48) == COSINE_1024_48
    assert resolve_sizes("lpd", 256, 20) == LPD_256_20 == LPD_TABLE[(256, 20)]
    assert resolve_sizes("lpd", 256, 32) == LPD_256_32
    assert resolve_sizes("lpd", 1024, 48) == LPD_1024_48


@pytest.mark.parametrize("n, steps", [(256, 21), (256, 48), (1024, 20), (64, 10), (9, 3), (256, 256)])
def test_lpd_falls_back_to_cosine(n, steps):
    assert resolve_sizes("lpd", n, steps) == resolve_sizes("cosine", n, steps)


@pytest.mark.parametrize("n, steps", [(256, 20), (1024, 48), (256, 64), (64, 10)])
def test_cosine_shape(n, steps):
    sizes = resolve_sizes("cosine", n, steps)
    assert sizes[0] == 1
    assert all(b >= a - 1 for a, b in zip(sizes, sizes[1:]))  # non-decreasing up to +-1 rounding jitter
    assert max(sizes) <= round(math.pi * n / (2 * steps)) + 1  # plateau ~ pi N / 2T


def test_arccos_is_flat_with_a_big_last_group():
    sizes = resolve_sizes("arccos", 256, 20)
    assert max(sizes[:-3]) - min(sizes[:-3]) <= 6 and sizes[-1] > 0.15 * 256


@pytest.mark.parametrize("n", NS)
def test_power_zero_is_uniform(n):
    for steps in budgets(n):
        assert resolve_sizes("power:0", n, steps) == resolve_sizes("uniform", n, steps)


def test_uniform_and_power_profiles():
    assert resolve_sizes("uniform", 10, 3) == (3, 3, 4)  # larger groups last
    grow = resolve_sizes("power:2", 256, 10)
    shrink = resolve_sizes("power:-1", 256, 10)
    assert grow[0] < grow[-1] and shrink[0] > shrink[-1]
    assert resolve_sizes("power", 256, 10) == resolve_sizes("power:1", 256, 10)


def test_from_cumulative_keeps_every_group_nonempty():
    assert from_cumulative([0.0, 0.0, 1.0], 3) == [1, 1, 1]
    assert from_cumulative([0.5, 1.0], 10) == [5, 5]


def test_explicit_lists():
    assert resolve_sizes([1, 2, 3], 6, None) == (1, 2, 3)
    assert resolve_sizes((4, 2), 6, 2) == (4, 2)
    with pytest.raises(PlanError, match=r"sum to 5 but N=6 \(sizes=\[1, 2, 2\]\)"):
        resolve_sizes([1, 2, 2], 6, None)
    with pytest.raises(PlanError, match="2 groups but steps=3"):
        resolve_sizes([3, 3], 6, 3)
    with pytest.raises(PlanError, match=r"ints >= 1, got \[6, 0\]"):
        resolve_sizes([6, 0], 6, None)
    with pytest.raises(PlanError, match=r"ints >= 1, got \[\]"):
        resolve_sizes([], 6, None)


@pytest.mark.parametrize("spec, n, steps, needle", [
    ("cosine", 64, 0, "steps=0 is outside 1..N=64"),
    ("cosine", 64, 65, "steps=65 is outside 1..N=64"),
    ("uniform", 64, True, "steps must be an int, got True"),
    ("uniform", 64, 2.0, "steps must be an int, got 2.0"),
    ("cosine", 64, None, "size rule 'cosine' needs a step budget"),
    (UNKNOWN, 64, 4, f"unknown size rule '{UNKNOWN}'"),
    ("power:x", 64, 4, "size rule 'power:x'"),
    ("power:inf", 64, 4, "exponent must be finite"),
    ("cosine:2", 64, 4, "size rule 'cosine:2'"),
    ("uniform", 0, 1, "at least one token, got N=0"),
])
def test_bad_specs_are_named(spec, n, steps, needle):
    with pytest.raises(PlanError) as err:
        resolve_sizes(spec, n, steps)
    assert needle in str(err.value)
    if "unknown size rule" in needle:
        assert all(rule in str(err.value) for rule in list_size_rules())


def test_register_size_rule(monkeypatch):
    monkeypatch.setattr(sizes_mod.SIZE_RULES, "_entries", dict(sizes_mod.SIZE_RULES._entries))  # a scratch copy

    @register_size_rule("front")
    def front(n, steps):
        return [n - steps + 1] + [1] * (steps - 1)

    assert "front" in list_size_rules()
    assert resolve_sizes("front", 10, 3) == (8, 1, 1)
    assert register_size_rule("front")(front) is front  # the same function twice is harmless
    with pytest.raises(ValueError, match="size rule name 'cosine' is taken by orderlab.sizes.cosine"):
        register_size_rule("cosine")(front)
