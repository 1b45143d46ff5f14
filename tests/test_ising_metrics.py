"""orderlab.metrics.ising_metrics: exact, classifier-free scores of Ising grids, on hand-computable grids."""

import numpy as np
import pytest
import torch

from orderlab.data.ising import BETA, bond_sum, exact_reference
from orderlab.metrics.intervals import paired_mean_difference
from orderlab.metrics.ising_metrics import (
    METRIC,
    exact_nll_bits,
    ising_facts,
    ising_scores,
    nll_gap,
)

L = 4
EXACT = exact_reference(L, BETA)
FACTS = {"L": L, "beta": BETA, "exact_energy_per_site": EXACT["energy_per_site"],
         "exact_entropy_bits_per_site": EXACT["entropy_bits_per_site"], "exact_ln_z": EXACT["ln_z"],
         "val_abs_magnetisation": 0.7}
UP = np.ones((L, L), np.int64)
CHECKER = (np.add.outer(np.arange(L), np.arange(L)) % 2).astype(np.int64)


def one_flip(r, c):
    grid = UP.copy()
    grid[r, c] = 0
    return grid


def test_hand_grids_and_alignment():
    # all up: 2N = 32 satisfied bonds, e = -2, |m| = 1; checkerboard: every bond broken, e = +2, m = 0;
    # one flipped spin breaks its 4 bonds: B = 32 - 8 = 24, e = -24 / 16 = -1.5, |m| = 14 / 16
    tokens = torch.from_numpy(np.stack([UP, CHECKER, 1 - UP, one_flip(1, 2)]))
    metrics, items = ising_scores(tokens, {"ising": FACTS})
    assert items["energy"].tolist() == [-2.0, 2.0, -2.0, -1.5]
    assert items["abs_mag"].tolist() == [1.0, 0.0, 1.0, 0.875]
    assert items["energy"].dtype == items["abs_mag"].dtype == np.float64
    assert metrics["energy"] == pytest.approx(-3.5 / 4) and metrics["abs_mag"] == pytest.approx(2.875 / 4)
    assert metrics["energy_low"] < metrics["energy"] < metrics["energy_high"]
    assert metrics["abs_mag_low"] < metrics["abs_mag"] < metrics["abs_mag_high"]
    exact = FACTS["exact_energy_per_site"]
    assert metrics["energy_exact"] == exact
    for suffix in ("", "_low", "_high"):
        assert metrics[f"energy_bias{suffix}"] == pytest.approx(metrics[f"energy{suffix}"] - exact, abs=1e-12)
    assert (metrics["num_samples"], metrics["metric"], metrics["abs_mag_ref"]) == (4, METRIC, 0.7)
    # the items follow the sample order, so two rows pair item by item
    swapped, _ = ising_scores(tokens.flip(0), FACTS)
    _, items_swapped = ising_scores(tokens.flip(0), FACTS)
    assert items_swapped["energy"].tolist() == items["energy"][::-1].tolist()
    assert swapped["energy"] == pytest.approx(metrics["energy"])
    diff = paired_mean_difference(items["energy"], items["energy"])
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)


def test_interval_is_a_t_interval():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 2, size=(400, L, L))  # independent coin flips: <e> = 0 exactly
    metrics, items = ising_scores(tokens, FACTS, level=0.95)
    e = items["energy"]
    half = 1.966 * e.std(ddof=1) / np.sqrt(e.size)  # t_{399, 0.975} = 1.966
    assert metrics["energy_high"] - metrics["energy"] == pytest.approx(half, rel=1e-3)
    assert metrics["energy_low"] < 0.0 < metrics["energy_high"]  # contains the true mean of coin flips
    wider, _ = ising_scores(tokens, FACTS, level=0.99)
    assert wider["energy_high"] - wider["energy_low"] > metrics["energy_high"] - metrics["energy_low"]


def test_bad_inputs():
    with pytest.raises(ValueError, match="not an Ising manifest"):
        ising_scores(np.stack([UP, UP]), {"dataset": "digits"})
    with pytest.raises(ValueError, match="4x4"):
        ising_scores(np.ones((2, 5, 5), np.int64), FACTS)
    with pytest.raises(ValueError, match="integer grids"):
        ising_scores(np.ones((2, 4, 4), np.float32), FACTS)
    with pytest.raises(ValueError, match="0 or 1"):
        ising_scores(np.full((2, 4, 4), 2), FACTS)
    assert ising_facts({"ising": FACTS}) is FACTS and ising_facts(FACTS) is FACTS


def test_nll_gap():
    entropy = FACTS["exact_entropy_bits_per_site"]
    per_image = np.array([entropy - 0.1, entropy + 0.1, entropy + 0.2, entropy + 0.2])
    metrics, items = nll_gap(torch.from_numpy(per_image), FACTS)
    assert metrics["nll"] == pytest.approx(entropy + 0.1) and metrics["nll_gap"] == pytest.approx(0.1)
    assert metrics["nll_gap_low"] < 0.1 < metrics["nll_gap_high"]
    assert metrics["nll_gap_high"] - metrics["nll_gap_low"] == pytest.approx(metrics["nll_high"] - metrics["nll_low"])
    assert items == pytest.approx(per_image - entropy) and metrics["num_images"] == 4


def test_exact_nll_bits():
    # all up: B = 2N = 32, so -log2 p = (ln Z - 32 beta) / (16 ln 2) bits per token
    assert exact_nll_bits(UP[None], FACTS)[0] == pytest.approx((EXACT["ln_z"] - 32 * BETA) / (16 * np.log(2)),
                                                               rel=1e-12)
    # over all 2^9 grids of the 3x3 torus, weighted by p, the exact NLL averages to the exact entropy
    exact3 = exact_reference(3, BETA)
    grids = ((np.arange(512)[:, None] >> np.arange(9)) & 1).reshape(512, 3, 3)
    facts3 = {"L": 3, "beta": BETA, "exact_ln_z": exact3["ln_z"], "exact_energy_per_site": 0.0,
              "exact_entropy_bits_per_site": exact3["entropy_bits_per_site"]}
    p = np.exp(BETA * bond_sum(grids) - exact3["ln_z"])
    assert p.sum() == pytest.approx(1.0, rel=1e-12)
    assert (p * exact_nll_bits(grids, facts3)).sum() == pytest.approx(exact3["entropy_bits_per_site"], rel=1e-12)


def test_nll_gap_paired_with_the_exact_likelihood():
    # a model 0.01 bits/token worse than p on every grid: kl = 0.01 exactly, a zero-width interval, while the plain
    # gap also carries how far these grids' mean exact NLL lies from the entropy
    rng = np.random.default_rng(1)
    grids = rng.integers(0, 2, size=(50, L, L))
    exact = exact_nll_bits(grids, FACTS)
    metrics, items = nll_gap(exact + 0.01, {"ising": FACTS}, tokens=torch.from_numpy(grids))
    assert metrics["kl"] == pytest.approx(0.01) and metrics["kl_high"] - metrics["kl_low"] < 1e-12
    assert items == pytest.approx(np.full(50, 0.01))
    assert metrics["entropy_sample"] == pytest.approx(exact.mean())
    assert metrics["nll_gap"] == pytest.approx(exact.mean() + 0.01 - FACTS["exact_entropy_bits_per_site"])
    with pytest.raises(ValueError, match="49 grids"):
        nll_gap(exact + 0.01, FACTS, tokens=grids[:49])
    with pytest.raises(ValueError, match="exact_ln_z"):
        exact_nll_bits(grids, {k: v for k, v in FACTS.items() if k != "exact_ln_z"})


def test_nll_bits_per_image_matches_nll_bits():
    from orderlab.analysis.evaluation import Row, nll_bits, nll_bits_per_image
    from orderlab.model.config import ModelConfig
    from orderlab.model.registry import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=2, height=L, width=L, num_classes=1, depth=1, dim=16, heads=2)).eval()
    tokens = torch.randint(0, 2, (10, L, L))
    labels = torch.zeros(10, dtype=torch.long)
    for schedule, steps in (("random", 16), ("locality", 4)):
        per_image = nll_bits_per_image(model, tokens, labels, Row(schedule, steps), seed=3, batch_size=4)
        assert per_image.shape == (10,) and per_image.dtype == np.float64
        want = nll_bits(model, tokens, labels, Row(schedule, steps), seed=3)
        assert per_image.mean() == pytest.approx(want, rel=1e-5)
