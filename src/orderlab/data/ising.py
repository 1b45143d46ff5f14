"""The 2D Ising model on a periodic L x L torus: an embedded benchmark whose sample quality is scored exactly.

Spins are tokens in {0, 1} (vocab 2), read as s = 2 * token - 1 in {-1, +1}. With J = 1, no field and K = beta * J,
a grid has probability p(s) = exp(K * B(s)) / Z where B(s) = sum over the 2N nearest-neighbour bonds (each site's
right and down neighbour, wrapping round) of s_i s_j, and its energy per site is e(s) = -B(s) / N.

What is here:

* :func:`swendsen_wang`: a Swendsen-Wang cluster sampler (Swendsen & Wang, PRL 58, 86 (1987)), many independent
  chains advanced together, seeded only by ``np.random.default_rng(seed)``;
* :func:`energy_per_site`, :func:`magnetisation`: observables of token grids;
* exact references: :func:`exact_mean_energy_enumeration` (brute force, L <= 4) and :func:`exact_finite_torus`
  (Kaufman's partition function of the finite torus, B. Kaufman, Phys. Rev. 76, 1232 (1949)), each giving the mean
  energy per site and the entropy of the Boltzmann distribution in bits per site (= bits per token);
* :func:`ising_dataset`: train/val token grids plus a dict of facts about them.

Thermodynamics used throughout: d ln Z / dK = <B> = -N <e>, and the Shannon entropy of p is
S = -sum p ln p = ln Z - K <B> = ln Z + K N <e> nats, reported per site in bits as S / (N ln 2).
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "BETA", "DEFAULT_BURN_IN", "DEFAULT_THIN", "DEFAULT_CHAINS", "swendsen_wang", "bond_sum", "energy_per_site",
    "magnetisation", "density_of_states", "exact_mean_energy_enumeration", "exact_finite_torus", "exact_reference",
    "integrated_autocorr_time", "ising_dataset",
]

BETA = 0.40  # just below beta_c = ln(1 + sqrt 2) / 2 = 0.44069: long correlations (xi ~ 6 sites), still disordered

# Thinning and burn-in, from a measurement at beta = 0.40 (64 chains x 4000 SW steps after 200 burn-in steps,
# autocorrelations pooled over chains, Sokal's window as in integrated_autocorr_time): at L = 16 tau_int of the
# energy is 2.37 steps (2.41 at L = 8, 1.98 at L = 32), of |m| 1.84, of m 0.49 (a cluster's new sign is a fresh
# coin, so m forgets itself in one step). The energy's autocorrelation decays as exp(-t / 2.3): 0.65 at lag 1,
# 0.12 at lag 5, 0.011 at lag 10, and lags 15 and 20 are within the estimate's noise (+-0.003) of 0, where the
# exponential puts them at 1.5e-3 and 2e-4. Keeping every 20th step leaves consecutive samples of one chain
# correlated at the 1e-4 level: as good as independent for every statistic we compute, at twice the cost of
# thin = 10 (which would leave 1 %). SW forgets a random start within ~10 steps (measured: the mean energy over 64
# chains reaches its equilibrium value by step ~10); 200 burn-in steps are ~85 decay times, leaving a bias of
# order exp(-85).
DEFAULT_THIN = 20
DEFAULT_BURN_IN = 200
# Chains advanced together: one connected_components call labels all of them, which amortises scipy's per-call
# overhead. A fixed number (not one derived from n_samples) makes the first k samples of a run the same whatever
# n_samples is asked for.
DEFAULT_CHAINS = 64

_MAX_ENUM_L = 4  # 2^16 states; L = 5 would be 2^25 grids of 25 sites


def _bond_probability(beta: float) -> float:
    """SW bond activation probability between equal neighbours: 1 - exp(-2K) (Swendsen & Wang 1987)."""
    return -math.expm1(-2.0 * beta)


def swendsen_wang(L: int, beta: float, n_samples: int, *, burn_in: int = DEFAULT_BURN_IN, thin: int = DEFAULT_THIN,
                  seed: int | np.random.SeedSequence = 0, n_chains: int = DEFAULT_CHAINS) -> np.ndarray:
    """``n_samples`` token grids (n, L, L) uint8 from the Ising model on the periodic L x L torus at ``beta``.

    ``n_chains`` independent chains start from independent uniformly random grids, run ``burn_in`` SW steps, then
    give one sample each every ``thin`` steps; samples are ordered step-major (all chains' samples of one step, by
    chain, then the next step), so neighbouring samples come from different chains. Every random number comes
    from ``np.random.default_rng(seed)`` (the same seed gives the same array on any machine with the same numpy:
    cluster labels are put into a canonical order, so scipy's labelling convention cannot leak in).
    """
    if L < 2 or n_samples < 0 or burn_in < 0 or thin < 1 or n_chains < 1 or not beta >= 0:
        raise ValueError(f"need L >= 2, n_samples >= 0, burn_in >= 0, thin >= 1, n_chains >= 1, beta >= 0; got "
                         f"L={L}, n_samples={n_samples}, burn_in={burn_in}, thin={thin}, n_chains={n_chains}, "
                         f"beta={beta}")
    rng = np.random.default_rng(seed)
    n_nodes = n_chains * L * L
    node = np.arange(n_nodes, dtype=np.int32).reshape(n_chains, L, L)
    # each site's bonds to its right and down neighbour (periodic): 2N bonds per chain; the pair is sorted so that
    # the graph below is a CSR matrix with sorted rows, which scipy takes without re-sorting
    nbr = np.stack([np.roll(node, -1, axis=2), np.roll(node, -1, axis=1)], axis=-1).reshape(n_nodes, 2)
    nbr.sort(axis=1)
    p_bond = _bond_probability(beta)
    weights = np.ones(2 * n_nodes)
    indptr = np.zeros(n_nodes + 1, dtype=np.int32)

    spins = rng.integers(0, 2, size=n_nodes, dtype=np.uint8)
    n_rounds = -(-n_samples // n_chains)
    out = np.empty((n_rounds, n_nodes), dtype=np.uint8)
    for step in range(burn_in + thin * n_rounds):
        # a bond is active when its two spins agree and a uniform draw falls under p_bond (one draw per bond,
        # for every bond, so the random stream does not depend on the state)
        active = (spins[:, None] == spins[nbr]) & (rng.random((n_nodes, 2)) < p_bond)
        np.cumsum(active.sum(axis=1), out=indptr[1:])
        cols = nbr[active]
        graph = csr_matrix((weights[:cols.size], cols, indptr), shape=(n_nodes, n_nodes))
        n_clusters, labels = connected_components(graph, directed=False)
        labels = _canonical_labels(labels)
        flip = rng.random(n_clusters) < 0.5  # each cluster flips with probability 1/2
        spins = spins ^ flip[labels]
        done = step + 1 - burn_in
        if done > 0 and done % thin == 0:
            out[done // thin - 1] = spins
    return out.reshape(-1, L, L)[:n_samples].copy()


def _canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Cluster labels numbered by first appearance in node order, whatever numbering scipy used.

    scipy's labels already come in that order (it labels from node 0 up), which the O(n) test checks: labels are in
    first-appearance order exactly when their running maximum starts at 0 and never jumps by more than one.
    """
    top = np.maximum.accumulate(labels)
    if labels[0] == 0 and np.all(np.diff(top) <= 1):
        return labels
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty_like(first)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse]


def _signs(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples)
    if samples.ndim == 2:
        samples = samples[None]
    if samples.ndim != 3 or samples.shape[1] != samples.shape[2] or samples.shape[1] < 2:
        raise ValueError(f"want token grids (n, L, L) with L >= 2, got shape {samples.shape}")
    if samples.size and (samples.min() < 0 or samples.max() > 1):
        raise ValueError("Ising tokens must be 0 or 1")
    return 2 * samples.astype(np.int64) - 1


def bond_sum(samples: np.ndarray) -> np.ndarray:
    """B(s) = sum over the 2N periodic nearest-neighbour bonds of s_i s_j, per grid (n,) int64 (exact integers)."""
    s = _signs(samples)
    return (s * np.roll(s, -1, axis=2) + s * np.roll(s, -1, axis=1)).sum(axis=(1, 2))


def energy_per_site(samples: np.ndarray) -> np.ndarray:
    """e = -B(s) / N per grid, (n,) float64, with J = 1."""
    n_sites = np.asarray(samples).shape[-1] ** 2
    return -bond_sum(samples) / n_sites


def magnetisation(samples: np.ndarray, *, absolute: bool = False) -> np.ndarray:
    """m = mean of s over the sites per grid, (n,) float64; ``absolute`` gives |m| (m averages to 0 by symmetry)."""
    m = _signs(samples).mean(axis=(1, 2))
    return np.abs(m) if absolute else m


def density_of_states(L: int) -> dict[int, int]:
    """{B: number of grids with bond sum B} over all 2^(L*L) grids, by enumeration (L <= 4); exact integers."""
    if not 2 <= L <= _MAX_ENUM_L:
        raise ValueError(f"enumeration needs 2 <= L <= {_MAX_ENUM_L}, got {L}")
    n_sites = L * L
    codes = np.arange(2 ** n_sites, dtype=np.int64)
    grids = ((codes[:, None] >> np.arange(n_sites)) & 1).astype(np.uint8).reshape(-1, L, L)
    values, counts = np.unique(bond_sum(grids), return_counts=True)
    return {int(b): int(c) for b, c in zip(values, counts)}


def _thermo(L: int, beta: float, ln_z, d_ln_z, d2_ln_z) -> dict[str, float]:
    """Energy, its variance and the entropy from ln Z and its first two K-derivatives (mpmath numbers), as floats.

    d ln Z / dK = <B> and d^2 ln Z / dK^2 = Var(B), so <e> = -<B> / N and Var(e) = Var(B) / N^2 (the latter gives
    the standard error of a mean of independent samples).
    """
    n_sites = L * L
    energy = -d_ln_z / n_sites
    entropy_nats = (ln_z + beta * n_sites * energy) / n_sites  # S/N = ln Z / N - K <B> / N
    return {"L": L, "beta": beta, "ln_z": float(ln_z), "energy_per_site": float(energy),
            "energy_variance": float(d2_ln_z / n_sites ** 2),
            "entropy_bits_per_site": float(entropy_nats / mpmath.log(2))}


def exact_mean_energy_enumeration(L: int, beta: float) -> dict[str, float]:
    """Exact ln Z, mean energy per site, its variance and the entropy (bits per site) by summing over all 2^(L*L)
    grids (L <= 4).

    The sum runs over the integer density of states in 50-digit arithmetic, so it is exact to far below 1e-15.
    """
    dos = density_of_states(L)
    with mpmath.workdps(50):
        k = mpmath.mpf(beta)
        weights = {b: g * mpmath.exp(k * b) for b, g in dos.items()}
        z = mpmath.fsum(weights.values())
        mean_b = mpmath.fsum(b * w for b, w in weights.items()) / z
        var_b = mpmath.fsum((b - mean_b) ** 2 * w for b, w in weights.items()) / z
        return _thermo(L, beta, mpmath.log(z), mean_b, var_b)


def _kaufman_ln_z(L: int, k):
    """ln Z of the L x L periodic Ising model at coupling k (an mpmath number), Kaufman (1949), eq. (39) there.

    Z = 1/2 (2 sinh 2K)^(N/2) [prod 2 cosh(L g_{2r+1} / 2) + prod 2 sinh(L g_{2r+1} / 2)
                               + prod 2 cosh(L g_{2r} / 2) + prod 2 sinh(L g_{2r} / 2)],  r = 0 .. L-1,
    with cosh g_l = cosh 2K coth 2K - cos(pi l / L) for l != 0 and, the subtle term, the *signed*
    g_0 = 2K + ln tanh K (negative below the critical coupling, which makes the last product negative there;
    taking |g_0| from the arccosh gives a wrong Z at finite L). The form follows Beale, PRL 76, 78 (1996), eq. (2).
    """
    c = mpmath.cosh(2 * k) * mpmath.coth(2 * k)

    def gamma(index: int):
        if index == 0:
            return 2 * k + mpmath.log(mpmath.tanh(k))
        return mpmath.acosh(c - mpmath.cos(mpmath.pi * index / L))

    odd = [gamma(2 * r + 1) * L / 2 for r in range(L)]
    even = [gamma(2 * r) * L / 2 for r in range(L)]
    total = (mpmath.fprod(2 * mpmath.cosh(g) for g in odd) + mpmath.fprod(2 * mpmath.sinh(g) for g in odd)
             + mpmath.fprod(2 * mpmath.cosh(g) for g in even) + mpmath.fprod(2 * mpmath.sinh(g) for g in even))
    return mpmath.log(total / 2) + L * L * mpmath.log(2 * mpmath.sinh(2 * k)) / 2


def exact_finite_torus(L: int, beta: float) -> dict[str, float]:
    """Exact ln Z, mean energy per site, its variance and the entropy (bits per site) of the finite L x L torus, from
    Kaufman's Z.

    d ln Z / dK and d^2 ln Z / dK^2 are taken by mpmath's numerical differentiation at 60 working digits (a finite
    difference whose step and precision mpmath chooses for it), so their error is far below float64's resolution.
    """
    if L < 2 or not beta > 0:
        raise ValueError(f"need L >= 2 and beta > 0, got L={L}, beta={beta}")
    with mpmath.workdps(60):
        k = mpmath.mpf(beta)
        ln_z = _kaufman_ln_z(L, k)
        d_ln_z = mpmath.diff(lambda x: _kaufman_ln_z(L, x), k)
        d2_ln_z = mpmath.diff(lambda x: _kaufman_ln_z(L, x), k, 2)
        return _thermo(L, beta, ln_z, d_ln_z, d2_ln_z)


def exact_reference(L: int, beta: float) -> dict[str, float]:
    """The exact facts for a dataset: enumeration where it is cheap (L <= 4), Kaufman's formula beyond."""
    if L <= _MAX_ENUM_L:
        return {**exact_mean_energy_enumeration(L, beta), "method": "enumeration"}
    return {**exact_finite_torus(L, beta), "method": "kaufman_1949"}


def integrated_autocorr_time(x: np.ndarray, c: float = 5.0) -> float:
    """tau_int = 1/2 + sum_t rho(t) of a time series, summed up to Sokal's self-consistent window M >= c tau_int.

    (A. Sokal, "Monte Carlo methods in statistical mechanics", 1996, sec. 3.) With this convention independent
    samples have tau_int = 1/2 and the variance of the mean is 2 tau_int var / n.
    """
    x = np.asarray(x, dtype=np.float64) - np.mean(x)
    n = x.size
    f = np.fft.rfft(x, 2 * n)  # zero padding: a linear, not circular, autocorrelation
    acf = np.fft.irfft(f * np.conj(f))[:n]
    if acf[0] == 0:
        return 0.5
    rho = acf / acf[0]
    tau = 0.5
    for window in range(1, n):
        tau += rho[window]
        if window >= c * tau:
            break
    return float(tau)


def ising_dataset(L: int, beta: float = BETA, n_train: int = 20000, n_val: int = 2000, seed: int = 0, *,
                  burn_in: int = DEFAULT_BURN_IN, thin: int = DEFAULT_THIN) -> dict:
    """Train and val token grids ((n, L, L) uint8, tokens 0/1 for spins -1/+1) and a manifest of facts.

    Train and val come from independent chains: ``np.random.SeedSequence(seed).spawn(2)`` seeds them. The
    manifest holds the exact mean energy and entropy (the target an ideal generator reaches: its bits/token on
    held-out grids cannot go below the entropy) and the energies the samples themselves reach.
    """
    train_seed, val_seed = np.random.SeedSequence(seed).spawn(2)
    kwargs = {"burn_in": burn_in, "thin": thin, "n_chains": DEFAULT_CHAINS}
    train = swendsen_wang(L, beta, n_train, seed=train_seed, **kwargs)
    val = swendsen_wang(L, beta, n_val, seed=val_seed, **kwargs)
    exact = exact_reference(L, beta)
    manifest = {
        "dataset": "ising", "L": L, "beta": beta, "J": 1.0, "field": 0.0, "boundary": "periodic", "vocab_size": 2,
        "tokens": {"0": -1, "1": +1},
        "exact_energy_per_site": exact["energy_per_site"],
        "exact_entropy_bits_per_site": exact["entropy_bits_per_site"],
        "exact_ln_z": exact["ln_z"], "exact_method": exact["method"],
        "sampler": "swendsen_wang", "burn_in": burn_in, "thin": thin, "n_chains": DEFAULT_CHAINS, "seed": seed,
        "seeds": "numpy SeedSequence(seed).spawn(2): train, val", "numpy": np.__version__,
        "n_train": n_train, "n_val": n_val,
        "train_energy_per_site": float(energy_per_site(train).mean()) if n_train else None,
        "val_energy_per_site": float(energy_per_site(val).mean()) if n_val else None,
        # <|m|> has no closed form on the finite torus: the val set's mean is the reference a generator is held to
        "train_abs_magnetisation": float(magnetisation(train, absolute=True).mean()) if n_train else None,
        "val_abs_magnetisation": float(magnetisation(val, absolute=True).mean()) if n_val else None,
    }
    return {"train": train, "val": val, "manifest": manifest}
