"""Size rules that reproduce published samplers (ARPG, RandAR) and LPD's published tables, compared exactly.

The references below follow the published loops literally (hp-l33/ARPG models/arpg.py ``Transformer.generate``;
ziqipang/RandAR RandAR/model/randar_gpt.py ``generate`` with utils.py's step count, after commit f189cb3), in the
same float arithmetic. Their one libm call is either this machine's (compared only where no truncated value lies
within 1e-6 of an integer, so the last bit cannot matter) or the correctly rounded one (compared everywhere).
"""

import math

import mpmath
import numpy as np
import pytest

from orderlab import PlanError, list_size_rules, resolve_sizes
from orderlab.sizes import LPD_TABLE, LPD_TRAINING_SIZES, lpd_training_budgets
from orderlab.sizes_published import arpg_arccos, arpg_cosine

PUBLISHED = ["arpg-cosine", "arpg-arccos", "randar"]
NS = [256, 64, 16]
NEAR = 1e-6


def rounded(fn):
    """``fn`` (an mpmath function) evaluated at 50 digits and rounded to the nearest double."""
    def call(x: float) -> float:
        with mpmath.workdps(50):
            return float(fn(mpmath.mpf(x)))
    return call


MACHINE = {"cos": np.cos, "acos": np.arccos}
CORRECT = {"cos": rounded(mpmath.cos), "acos": rounded(mpmath.acos)}


def truncate(value: float, near: list[float], matters: bool = True) -> int:
    if matters:  # how close this truncation came to an integer, where its result is used
        near.append(abs(value - round(value)))
    return int(value)


def arpg_reference(schedule: str, seq_len: int, num_iter: int, libm: dict) -> tuple[list[int], float]:
    """ARPG's loop over steps, literally; returns the sizes and the closest any truncated value came to an int."""
    sizes, last_pos, near = [], 0, [1.0]
    for step in range(num_iter):
        if schedule == "arccos":
            mask_ratio = libm["acos"](1. * (step + 1) / num_iter) / (math.pi * 0.5)
        else:
            mask_ratio = libm["cos"](math.pi / 2. * (step + 1) / num_iter)
        mask_len = truncate(seq_len * mask_ratio, near, step < num_iter - 1)  # the last step takes the rest
        mask_len = max(1, min(seq_len - last_pos - 1, mask_len))
        num_pred = seq_len - last_pos - mask_len
        if step == num_iter - 1:
            num_pred = seq_len - last_pos
        sizes.append(num_pred)
        last_pos += num_pred
    return sizes, min(near)


def randar_reference(block_size: int, total: int, libm: dict) -> tuple[list[int], float]:
    """RandAR's while loop, literally (the step counts only); sizes and the closest a truncated value came to an int."""
    sizes, idx, cur, step, near = [], 0, 1, 0, [1.0]
    while idx <= block_size - cur and idx <= block_size - 1:
        sizes.append(cur)
        step += 1
        value = (1.0 - libm["cos"](math.pi / 2.0 * (step + 1) / total)) * block_size + 1
        target = min(truncate(value, near, value < block_size + 0.5), block_size)  # above N, min() decides
        nxt = min(max(target - idx - cur, 1), block_size - idx - cur)
        idx, cur = idx + cur, nxt
    return sizes, min(near)


def reference(rule: str, n: int, steps: int, libm: dict) -> tuple[list[int], float]:
    if rule == "randar":
        return randar_reference(n, steps, libm)
    return arpg_reference(rule.removeprefix("arpg-"), n, steps, libm)


def budgets(rule: str, n: int) -> range:
    # RandAR's first step is always one token, so it cannot run T=1 for N > 1 (tested below)
    return range(2 if rule == "randar" and n > 1 else 1, n + 1)


def test_rules_are_registered():
    assert set(PUBLISHED) <= set(list_size_rules())


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("rule", PUBLISHED)
def test_rule_equals_the_literal_loop_with_correctly_rounded_libm(rule, n):
    for steps in budgets(rule, n):
        expected, _ = reference(rule, n, steps, CORRECT)
        assert list(resolve_sizes(rule, n, steps)) == expected, (rule, n, steps)


@pytest.mark.parametrize("n", NS)
@pytest.mark.parametrize("rule", PUBLISHED)
def test_rule_equals_the_literal_loop_with_this_machines_libm(rule, n):
    compared = 0
    for steps in budgets(rule, n):
        expected, near = reference(rule, n, steps, MACHINE if rule != "randar" else {"cos": math.cos})
        if near > NEAR:  # else the last bit of this libm decides; the test above covers those budgets
            assert list(resolve_sizes(rule, n, steps)) == expected, (rule, n, steps)
            compared += 1
    assert compared >= len(budgets(rule, n)) // 2


@pytest.mark.parametrize("rule", PUBLISHED)
def test_every_budget_partitions_n(rule):
    for n in range(1, 49):
        for steps in budgets(rule, n):
            sizes = resolve_sizes(rule, n, steps)
            assert len(sizes) == steps and sum(sizes) == n and min(sizes) >= 1, (rule, n, steps, sizes)


def test_published_facts():
    assert resolve_sizes("arpg-cosine", 256, 64)[:14] == (1,) * 13 + (2,)  # 13 single-token steps, then 2
    assert resolve_sizes("arpg-arccos", 256, 64)[-1] == 28
    assert resolve_sizes("arpg-arccos", 256, 32)[-4:] == (11, 14, 17, 40)
    randar = resolve_sizes("randar", 256, 88)  # RandAR's default num_inference_steps
    assert randar[:25] == (1,) * 24 + (2,) and sum(randar) == 256 and len(randar) == 88


def test_the_published_float_truncation_is_kept():
    # at (s+1)/T = 2/3 ARPG's double 256 * cos(angle) is 127.99999999999997 at T=39 (128.00000000000003 at T=3)
    assert resolve_sizes("arpg-cosine", 256, 39)[25:27] == (9, 9)
    assert resolve_sizes("cosine", 256, 39)[25:27] == (8, 10)  # orderlab's rule floors the real number 128
    assert resolve_sizes("arpg-cosine", 256, 3) == (35, 93, 128)
    assert resolve_sizes("randar", 256, 3) == (1, 127, 128)  # RandAR's bound after step 1 truncates to 128, not 129


def test_comparison_with_orderlab_rules():
    n = 256
    assert all(resolve_sizes("arccos", n, t) == resolve_sizes("arpg-arccos", n, t) for t in range(1, n + 1))
    differ = {t for t in range(1, n + 1) if resolve_sizes("cosine", n, t) != resolve_sizes("arpg-cosine", n, t)}
    unpinned = {t for t in range(2, n + 1) if resolve_sizes("arpg-cosine", n, t)[0] > 1}  # T=1: one group, N
    assert unpinned == set(range(2, 18))
    assert differ - unpinned == {39, 51, 63, 75, 78, 87, 102, 126, 141, 150, 156, 165, 174, 189}
    assert len(differ) == 30 and len({t for t in differ if 8 <= t <= 64}) == 13


@pytest.mark.parametrize("n", [256, 9, 2])
def test_randar_refuses_one_step(n):
    with pytest.raises(PlanError, match=rf"size rule 'randar'.*N={n}, T=1: RandAR's generate would run more"):
        resolve_sizes("randar", n, 1)


def test_randar_one_token():
    assert resolve_sizes("randar", 1, 1) == (1,)


@pytest.mark.parametrize("rule, name", [(arpg_cosine, "arpg-cosine"), (arpg_arccos, "arpg-arccos")])
def test_arpg_empty_step_is_an_error(rule, name):
    # ARPG never leaves a step empty for 1 <= T <= N (the mask ratio is >= 1 - (s+1)/T); more steps than tokens do
    with pytest.raises(ValueError, match=rf"{name} at N=3, T=5: ARPG's generate would run step 2 with no token"):
        rule(3, 5)


# --------------------------------------------------------------------------------------------------------- LPD
LPD_256_8 = (1, 15, 24, 32, 40, 45, 49, 50)
LPD_256_20 = (1, 2, 4, 5, 7, 8, 10, 11, 12, 14, 15, 16, 17, 18, 18, 19, 19, 20, 20, 20)
LPD_256_32 = (1, 1, 2, 2, 3, 3, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 10, 11, 11, 11, 11, 12, 12, 12, 12, 12, 12,
              12, 12)
LPD_BUDGETS = {256: [256, 128, 64, 32, 24, 20, 16, 12, 8],
               1024: [1024, 512, 256, 224, 192, 160, 128, 96, 80, 64, 56, 48, 40, 32]}


def test_lpd_table_spot_checks():
    assert LPD_TABLE[(256, 8)] == LPD_256_8
    assert LPD_TABLE[(256, 20)] == LPD_256_20
    assert LPD_TABLE[(256, 32)] == LPD_256_32
    assert LPD_TABLE[(256, 256)] == (1,) * 256 and LPD_TABLE[(1024, 1024)] == (1,) * 1024
    assert LPD_TABLE[(1024, 32)][0] == 1 and LPD_TABLE[(1024, 48)][-1] == 34
    assert sum(1 for n, _ in LPD_TABLE if n == 256) == 9
    assert sum(1 for n, _ in LPD_TABLE if n == 1024) == 14
    assert {n for n, _ in LPD_TABLE} == {256, 1024}


@pytest.mark.parametrize("key", sorted(LPD_TABLE), ids=str)
def test_every_lpd_entry_is_served(key):
    n, steps = key
    sizes = LPD_TABLE[key]
    assert len(sizes) == steps and sum(sizes) == n and min(sizes) >= 1
    assert resolve_sizes("lpd", n, steps) == sizes


def test_lpd_training_lists():
    assert sorted(LPD_TRAINING_SIZES) == [256, 1024]
    for n, budgets_n in LPD_BUDGETS.items():
        assert lpd_training_budgets(n) == budgets_n
        for sizes in LPD_TRAINING_SIZES[n]:
            assert sum(sizes) == n and min(sizes) >= 1
            assert sizes == LPD_TABLE[(n, len(sizes))]  # LPD trains on the lists it samples with
    with pytest.raises(PlanError, match="N in \\[256, 1024\\], not N=64"):
        lpd_training_budgets(64)


def test_lpd_asset_names_its_source():
    import json
    from importlib import resources

    data = json.loads((resources.files("orderlab") / "assets" / "lpd_group_sizes.json").read_text("utf-8"))
    for needle in ("mit-han-lab/lpd", "f447b83", "orders/group_sizes_lookup.json",
                   "orders/group_sizes_training/group_sizes_256.json", "group_sizes_512.json"):
        assert needle in data["source"]
