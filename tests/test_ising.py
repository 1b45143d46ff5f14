"""orderlab.data.ising: exact references (enumeration, Kaufman, Onsager) and the Swendsen-Wang sampler.

Statistical tests use fixed seeds, so they are deterministic; their bounds (5 standard errors, chi-square at
p = 1e-4) are wide enough that a correct sampler passes with any seed, and each one would still catch a sampler
off by a fraction of a per cent in the energy.
"""

import math

import mpmath
import numpy as np
import pytest
from scipy.stats import chi2

from orderlab.data.ising import (
    BETA,
    bond_sum,
    density_of_states,
    energy_per_site,
    exact_finite_torus,
    exact_mean_energy_enumeration,
    exact_reference,
    integrated_autocorr_time,
    ising_dataset,
    magnetisation,
    swendsen_wang,
)


def batch_means(x: np.ndarray, n_batches: int = 32) -> tuple[float, float]:
    """Mean of ``x`` and its standard error from ``n_batches`` contiguous batch means (robust to correlation)."""
    batches = np.asarray(x, dtype=np.float64)[: len(x) // n_batches * n_batches].reshape(n_batches, -1).mean(axis=1)
    return float(batches.mean()), float(batches.std(ddof=1) / math.sqrt(n_batches))


def chain_standard_error(x: np.ndarray, n_chains: int = 64) -> tuple[float, float, float]:
    """Mean of ``x`` (swendsen_wang's step-major order: round r holds chain 0..n_chains-1), its standard error from
    the sampler's own integrated autocorrelation time, sqrt(2 tau_int var / n), and tau_int (mean over chains of
    each chain's own series; 0.5 for independent samples)."""
    x = np.asarray(x, dtype=np.float64)
    series = x[: len(x) // n_chains * n_chains].reshape(-1, n_chains).T  # (chains, rounds)
    tau = float(np.mean([integrated_autocorr_time(chain) for chain in series]))
    return float(x.mean()), math.sqrt(2 * max(tau, 0.5) * x.var(ddof=1) / x.size), tau


# --- observables ----------------------------------------------------------------------------------------------


def test_observables_on_hand_grids():
    up = np.ones((1, 4, 4), np.uint8)
    checker = (np.add.outer(np.arange(4), np.arange(4)) % 2).astype(np.uint8)[None]
    grids = np.concatenate([up, 1 - up, checker])
    assert bond_sum(grids).tolist() == [32, 32, -32]  # 2N = 32 bonds, all satisfied / all broken
    assert energy_per_site(grids).tolist() == [-2.0, -2.0, 2.0]
    assert magnetisation(grids).tolist() == [1.0, -1.0, 0.0]
    assert magnetisation(1 - up, absolute=True).tolist() == [1.0]
    with pytest.raises(ValueError):
        energy_per_site(np.full((1, 3, 3), 2, np.uint8))


# --- exact references -----------------------------------------------------------------------------------------


def test_enumeration_2x2_by_hand():
    # 2x2 torus, sites a b / c d. Each site's right and down neighbour is the same site both ways round, so each of
    # the 4 neighbour pairs carries 2 bonds: B = 2 (ab + cd + ac + bd). Over the 16 grids:
    #   all equal (2 grids): B = 8;  one spin flipped (8): B = 0;  an adjacent pair flipped (4 pairs x 2 = 8): B = 0;
    #   a diagonal pair flipped (2 pairs, e.g. a and d): every neighbour pair disagrees, B = -8.
    # So Z = 2 e^{8K} + 12 + 2 e^{-8K} = 4 cosh 8K + 12, <B> = 32 sinh 8K / Z, <e> = -<B>/4 = -2 sinh 8K / (cosh 8K + 3),
    # <B^2> = 256 cosh 8K / Z, and S = ln Z - K <B> nats.
    assert density_of_states(2) == {-8: 2, 0: 12, 8: 2}
    for beta in (0.1, BETA, 1.0):
        k8 = 8 * beta
        z = 4 * math.cosh(k8) + 12
        mean_b = 32 * math.sinh(k8) / z
        got = exact_mean_energy_enumeration(2, beta)
        assert got["ln_z"] == pytest.approx(math.log(z), rel=1e-14)
        assert got["energy_per_site"] == pytest.approx(-2 * math.sinh(k8) / (math.cosh(k8) + 3), rel=1e-14)
        assert got["energy_variance"] == pytest.approx((256 * math.cosh(k8) / z - mean_b ** 2) / 16, rel=1e-12)
        assert got["entropy_bits_per_site"] == pytest.approx((math.log(z) - beta * mean_b) / 4 / math.log(2),
                                                             rel=1e-13)


def test_enumeration_counts_every_grid():
    for L in (2, 3, 4):
        dos = density_of_states(L)
        assert sum(dos.values()) == 2 ** (L * L)
        assert dos[2 * L * L] == 2  # the two ground states
        assert all(b % 4 == 2 * L * L % 4 for b in dos)  # flipping a spin changes B by a multiple of 4
    with pytest.raises(ValueError):
        density_of_states(5)


@pytest.mark.parametrize("L", [2, 3, 4])
@pytest.mark.parametrize("beta", [0.05, 0.3, BETA, math.log(1 + math.sqrt(2)) / 2, 0.7])
def test_kaufman_matches_enumeration(L, beta):
    want, got = exact_mean_energy_enumeration(L, beta), exact_finite_torus(L, beta)
    for key in ("ln_z", "energy_per_site", "energy_variance", "entropy_bits_per_site"):
        assert abs(got[key] - want[key]) < 1e-9, key


def test_kaufman_approaches_onsager():
    # Onsager's infinite-lattice energy per site (J = 1): u = -coth 2K [1 + (2/pi)(2 tanh^2 2K - 1) K1(kappa)],
    # kappa = 2 sinh 2K / cosh^2 2K, with K1 the complete elliptic integral of modulus kappa (mpmath takes m = kappa^2).
    # At beta = 0.4 (correlation length ~ 6) the finite-size correction at L = 128 is ~ 6e-11.
    k = mpmath.mpf(BETA)
    kappa = 2 * mpmath.sinh(2 * k) / mpmath.cosh(2 * k) ** 2
    onsager = -mpmath.coth(2 * k) * (1 + 2 / mpmath.pi * (2 * mpmath.tanh(2 * k) ** 2 - 1) * mpmath.ellipk(kappa ** 2))
    assert abs(exact_finite_torus(128, BETA)["energy_per_site"] - float(onsager)) < 1e-9


def test_exact_values_of_the_benchmark():
    # the numbers quoted in issue 17 (16x16, beta = 0.40), and that exact_reference picks the right method
    ref = exact_reference(16, BETA)
    assert ref["method"] == "kaufman_1949"
    assert ref["energy_per_site"] == pytest.approx(-1.131318, abs=1e-6)
    assert ref["entropy_bits_per_site"] == pytest.approx(0.616425, abs=1e-6)
    assert exact_reference(4, BETA)["method"] == "enumeration"


# --- the sampler ----------------------------------------------------------------------------------------------


def test_sampler_shape_and_reproducibility():
    a = swendsen_wang(6, BETA, 100, burn_in=10, thin=2, seed=7)
    assert a.shape == (100, 6, 6) and a.dtype == np.uint8 and set(np.unique(a)) <= {0, 1}
    assert np.array_equal(a, swendsen_wang(6, BETA, 100, burn_in=10, thin=2, seed=7))
    assert not np.array_equal(a, swendsen_wang(6, BETA, 100, burn_in=10, thin=2, seed=8))
    # the first k samples do not depend on how many are asked for
    assert np.array_equal(a[:30], swendsen_wang(6, BETA, 30, burn_in=10, thin=2, seed=7))
    assert swendsen_wang(6, BETA, 0, burn_in=1, thin=1, seed=0).shape == (0, 6, 6)
    with pytest.raises(ValueError):
        swendsen_wang(6, BETA, 10, thin=0, seed=0)


def test_sampler_energy_matches_enumeration_L4():
    # 8192 samples; standard error from 32 batch means. 5 s.e. ~ 0.031 here, ~2 % of |<e>|.
    e = energy_per_site(swendsen_wang(4, BETA, 8192, seed=11))
    mean, se = batch_means(e)
    exact = exact_mean_energy_enumeration(4, BETA)
    assert abs(mean - exact["energy_per_site"]) < 5 * se, (mean, se, exact)
    # the thinned samples are as good as independent: batch means agree with the exact i.i.d. standard error
    # (the s.e. estimate from 32 batches is good to ~13 %, so [0.6, 1.6] is a > 3 sigma band)
    assert 0.6 < se / math.sqrt(exact["energy_variance"] / e.size) < 1.6


def test_sampler_energy_matches_exact_with_tau_int():
    # the check: the sampler's mean energy against enumeration on 4x4 and against Kaufman's finite-torus
    # formula on the benchmark grid (8x8, the `prepare ising` default), within 5 of its own standard errors, those
    # from tau_int (never an equality that float rounding could break). 5 s.e. ~ 0.027 at L = 4, ~ 0.018 at L = 8.
    for L, seed, exact in ((4, 21, exact_mean_energy_enumeration(4, BETA)), (8, 22, exact_finite_torus(8, BETA))):
        e = energy_per_site(swendsen_wang(L, BETA, 8192, seed=seed))
        mean, se, tau = chain_standard_error(e)
        assert abs(mean - exact["energy_per_site"]) < 5 * se, (L, mean, se, tau, exact)
        # thinning by 20 leaves each chain's samples as good as independent (tau_int = 0.5; the estimate from 128
        # samples per chain scatters, and its mean over 64 chains carries the window's small positive bias)
        assert 0.3 < tau < 0.8, (L, tau)
        # and the i.i.d. standard error from the exact variance agrees with the one from the samples
        assert 0.8 < se / math.sqrt(exact["energy_variance"] / e.size) < 1.25, (L, se)


def test_sampler_energy_matches_kaufman_L16():
    # the benchmark size: 4096 samples, 5 s.e. ~ 0.013 (~1 % of |<e>|); the sign of m averages to 0
    grids = swendsen_wang(16, BETA, 4096, seed=12)
    e = energy_per_site(grids)
    mean, se = batch_means(e)
    exact = exact_finite_torus(16, BETA)
    assert abs(mean - exact["energy_per_site"]) < 5 * se, (mean, se, exact)
    assert 0.6 < se / math.sqrt(exact["energy_variance"] / e.size) < 1.6
    m_mean, m_se = batch_means(magnetisation(grids))
    assert abs(m_mean) < 5 * m_se


def test_sampler_state_frequencies_L2():
    # detailed balance end to end: on the 2x2 torus every one of the 16 grids is sampled with its Boltzmann
    # probability exp(K B) / Z. Pearson chi-square with 15 degrees of freedom must stay under its 1 - 1e-4
    # quantile (44.3); the rarest grids (the two with B = -8) still expect ~ 11 draws among 16384 samples.
    n = 16384
    grids = swendsen_wang(2, BETA, n, seed=13)
    codes = (grids.reshape(n, 4).astype(np.int64) << np.arange(4)).sum(axis=1)
    observed = np.bincount(codes, minlength=16)
    all_grids = ((np.arange(16)[:, None] >> np.arange(4)) & 1).astype(np.uint8).reshape(16, 2, 2)
    weights = np.exp(BETA * bond_sum(all_grids))
    expected = n * weights / weights.sum()
    stat = float(((observed - expected) ** 2 / expected).sum())
    assert stat < chi2.ppf(1 - 1e-4, df=15), (stat, observed, expected.round(1))


def test_integrated_autocorr_time():
    # AR(1) x_t = phi x_{t-1} + noise has rho(t) = phi^t, so tau_int = 1/2 + phi / (1 - phi) = 4.5 at phi = 0.8
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(100_000)
    x = np.empty_like(noise)
    x[0] = noise[0]
    for t in range(1, x.size):
        x[t] = 0.8 * x[t - 1] + noise[t]
    assert integrated_autocorr_time(x) == pytest.approx(4.5, rel=0.1)
    assert integrated_autocorr_time(noise) == pytest.approx(0.5, abs=0.05)


# --- the dataset ------------------------------------------------------------------------------------------------


def test_ising_dataset():
    data = ising_dataset(8, BETA, n_train=256, n_val=64, seed=5, burn_in=50, thin=5)
    train, val, manifest = data["train"], data["val"], data["manifest"]
    assert train.shape == (256, 8, 8) and val.shape == (64, 8, 8) and train.dtype == val.dtype == np.uint8
    assert not np.array_equal(train[:64], val)  # train and val come from independent chains
    again = ising_dataset(8, BETA, n_train=256, n_val=64, seed=5, burn_in=50, thin=5)
    assert np.array_equal(again["train"], train) and np.array_equal(again["val"], val)
    exact = exact_finite_torus(8, BETA)
    assert manifest["exact_energy_per_site"] == exact["energy_per_site"]
    assert manifest["exact_entropy_bits_per_site"] == exact["entropy_bits_per_site"]
    assert (manifest["L"], manifest["beta"], manifest["vocab_size"], manifest["seed"]) == (8, BETA, 2, 5)
    assert (manifest["sampler"], manifest["burn_in"], manifest["thin"]) == ("swendsen_wang", 50, 5)
    assert manifest["train_energy_per_site"] == pytest.approx(float(energy_per_site(train).mean()))
