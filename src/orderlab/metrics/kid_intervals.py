"""Intervals for KID (the squared MMD with the cubic polynomial kernel of Bińkowski et al. 2018, as torchmetrics
computes it) by the same two-sample resampling as :func:`orderlab.metrics.intervals.bootstrap_fd`.

* :func:`kid_unbiased`: the unbiased MMD² U-statistic of the whole two sets (torchmetrics' ``KernelInceptionDistance``
  averages the same statistic over random half-size subsets; both estimate the same population value).
* :func:`bootstrap_kid`: every replicate resamples the real and the generated set independently (multinomial
  counts w, v; nothing copied) and evaluates the MMD² over pairs of DISTINCT original items weighted by the
  counts: sum_{i != j} w_i w_j k_ij / (n-1)^2 within a set (E[w_i w_j] = (n-1)/n, so its bootstrap expectation is
  exactly the U-statistic's term) and w^T K v / (n m) across. The U-statistic of the materialised resample would
  also pair copies of one item (k_ii terms), which inflates the spread. With E[replicate] = U exactly,
  ``replicate - U`` is the bootstrap copy of ``estimate - KID`` and the interval is
  ``estimate + quantiles(replicates - U)``: the percentile interval recentred on the estimate. (The FD's
  bias-corrected shift of -2 x bias does not apply: the U-statistic is unbiased.)
  Measured (40 draws each, D=64, N=898, B=200, cubic kernel): the interval was 1.0-1.3x as wide as 3.92 sd of
  the estimate when KID is many standard errors from 0 (Gaussian and t(5) features), and 1.7-1.8x when the two
  distributions nearly coincide (a U-statistic near degeneracy, where the naive bootstrap overstates the spread;
  excluding same-item pairs from the replicates, as here, brought it down from 2.6x). Coverage: 1.0 (60 draws, t(5)
  features) and 0.995 (200 draws, Gaussian, D=8, N=200): conservative, so verdicts err towards "no detectable
  difference". Paired differences of two close generators: 1.35x.
* :func:`paired_kid_difference`: KID(a) - KID(b) against one reference, one real resample per replicate shared by
  both and one index vector for a and b (row i of each from generation seed i). The real-real term cancels.

Cost: three kernel quadratic forms per replicate, O(B N²) multiply-adds in blocks of at most 2^22 kernel entries
(32 MB): about 0.1 s for B=200 at N=900 on 2 CPU cores.
"""

from __future__ import annotations

import numpy as np

from orderlab.metrics.intervals import Interval, _check, _counts, _features

__all__ = ["kid_unbiased", "bootstrap_kid", "paired_kid_difference"]


def _kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """torchmetrics' ``poly_kernel`` with its defaults: (a b^T / D + 1)^3."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def _quad(a: np.ndarray, b: np.ndarray, wa: np.ndarray, wb: np.ndarray) -> np.ndarray:
    """(R,) sums over i, j of wa[r, i] K(a_i, b_j) wb[r, j], the kernel built in row blocks."""
    out = np.zeros(len(wa))
    step = max(1, (1 << 22) // len(b))
    for i in range(0, len(a), step):
        out += ((wa[:, i:i + step] @ _kernel(a[i:i + step], b)) * wb).sum(1)
    return out


def _within(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    """The within-set term over pairs of distinct items for each count row of ``w`` (R, n): row 0 (all ones, the
    original set) as the U-statistic's term, the others as replicates (module docstring); and the U term, which
    is the replicates' expectation."""
    n = len(x)
    diag = ((x * x).sum(1) / x.shape[1] + 1.0) ** 3
    q = _quad(x, x, w, w) - (w * w) @ diag  # pairs of distinct items only
    return np.concatenate([q[:1] / (n * (n - 1)), q[1:] / (n - 1) ** 2]), float(q[0] / (n * (n - 1)))


def _prepare(real, fakes: list, kid_scale: float) -> tuple[np.ndarray, list[np.ndarray]]:
    if not kid_scale > 0:
        raise ValueError(f"kid_scale={kid_scale}: must be > 0")
    r = _features(real, "real") / kid_scale
    fs = [_features(f, name) / kid_scale for f, name in zip(fakes, ("fake", "fake_b"))]
    if any(f.shape[1] != r.shape[1] for f in fs):
        raise ValueError(f"feature widths differ: real {r.shape[1]}, fake {[f.shape[1] for f in fs]}")
    return r, fs


def _terms(r: np.ndarray, g: np.ndarray, cr: np.ndarray, cg: np.ndarray) -> tuple[np.ndarray, float]:
    """(yy - 2 xy) per count row (first row: the original sets, then the replicates of ``cr``, ``cg``) and the
    replicates' expectation (the original sets' value)."""
    ones_g = np.vstack([np.ones(len(g)), cg])
    yy, yy_v = _within(g, ones_g)
    xy = _quad(r, g, np.vstack([np.ones(len(r)), cr]), ones_g) / (len(r) * len(g))
    return yy - 2 * xy, yy_v - 2 * float(xy[0])


def kid_unbiased(real, fake, kid_scale: float = 1.0) -> float:
    """The unbiased MMD² of (N, D) real and (M, D) fake features (divided by ``kid_scale`` first), cubic kernel."""
    r, (g,) = _prepare(real, [fake], kid_scale)
    xx, _ = _within(r, np.ones((1, len(r))))
    t, _ = _terms(r, g, np.zeros((0, len(r))), np.zeros((0, len(g))))
    return float(xx[0] + t[0])


def _recentred(estimate: float, reps: np.ndarray, v: float, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(reps - v, [(1 - level) / 2, (1 + level) / 2])
    return float(estimate + lo), float(estimate + hi)


def bootstrap_kid(real, fake, *, kid_scale: float = 1.0, estimate: float | None = None, n_boot: int = 200,
                  seed: int, level: float = 0.95) -> Interval:
    """KID with a two-sample bootstrap interval (module docstring). ``estimate``: the number to report and centre
    on (e.g. torchmetrics' subset mean); default the full-set U-statistic. ``bias`` is None: the estimator is
    unbiased."""
    _check(level, n_boot)
    r, (g,) = _prepare(real, [fake], kid_scale)
    rng = np.random.default_rng(seed)
    cr, cg = _counts(rng, len(r), n_boot), _counts(rng, len(g), n_boot)
    xx, xx_v = _within(r, np.vstack([np.ones(len(r)), cr]))
    t, t_v = _terms(r, g, cr, cg)
    u = xx + t
    est = float(u[0]) if estimate is None else float(estimate)
    low, high = _recentred(est, u[1:], xx_v + t_v, level)
    return Interval(est, low, high, level, "two-sample bootstrap, recentred (unbiased MMD²)", len(r), len(g), n_boot)


def paired_kid_difference(real, fake_a, fake_b, *, kid_scale: float = 1.0, estimate: float | None = None,
                          n_boot: int = 200, seed: int, level: float = 0.95) -> Interval:
    """KID(a) - KID(b) against the same reference with a paired bootstrap interval (negative: a is closer).

    Rows of ``fake_a`` and ``fake_b`` are paired (equal lengths). ``estimate``: the difference to report (e.g. of
    the two reported KIDs); default the difference of the full-set U-statistics. Identical a and b give 0 [0, 0]."""
    _check(level, n_boot)
    r, (a, b) = _prepare(real, [fake_a, fake_b], kid_scale)
    if len(a) != len(b):
        raise ValueError(f"paired resampling needs fake_a and fake_b of equal length, got {len(a)} and {len(b)}")
    name = "paired bootstrap, shared reference, recentred (unbiased MMD²)"
    if np.array_equal(a, b):
        return Interval(0.0, 0.0, 0.0, level, name, len(r), len(a), n_boot)
    rng = np.random.default_rng(seed)
    cr, cg = _counts(rng, len(r), n_boot), _counts(rng, len(a), n_boot)
    ta, va = _terms(r, a, cr, cg)
    tb, vb = _terms(r, b, cr, cg)
    d = ta - tb
    est = float(d[0]) if estimate is None else float(estimate)
    low, high = _recentred(est, d[1:], va - vb, level)
    return Interval(est, low, high, level, name, len(r), len(a), n_boot)
