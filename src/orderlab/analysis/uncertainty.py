"""95 % intervals for an evaluated row, paired comparisons between rows, and the real-vs-real floor (issue 17).

Every metric of :func:`~orderlab.analysis.evaluation.evaluate_row` carries an interval, or says why it has none:

* FD (``fcd``/``fid``): :func:`orderlab.metrics.intervals.bootstrap_fd`, a two-sample bootstrap (the generated and
  the reference set resampled independently), bias-corrected. ``fcd`` stays the plug-in value (comparable with
  older tables and with the real-vs-real floor at the same N); ``fcd_bias`` is the bootstrap estimate of its
  upward bias at this N, ``fcd_corrected = fcd - fcd_bias``, and ``[fcd_low, fcd_high]`` is the 95 % interval for
  the population FCD around ``fcd_corrected`` (so it can lie wholly below the plug-in value).
* ``fid_ref`` (FD to published statistics): a one-sample bootstrap of the generated set (the statistics are
  fixed), bias-corrected the same way.
* KID (``kcd``/``kid``): :func:`orderlab.metrics.kid_intervals.bootstrap_kid` (same resampling, recentred on the
  reported KID; conservative when the two distributions nearly coincide).
* NLL (``nll_bits_per_token``): a Student t-interval over the held-out images (``nll_low``/``nll_high``).
* precision/recall: none. They are k-NN statistics: a with-replacement resample duplicates points, which
  collapses the k-NN radii, so the bootstrap does not estimate their spread.

:func:`compare_rows` gives paired differences a - b (same reference resample, sample i of both from seed i; NLL
paired per held-out image) with their interval and a verdict ("better", "worse", "no detectable difference").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from orderlab.metrics.intervals import (
    Interval,
    _counts,
    _fd_batch,
    _features,
    _interval,
    _weighted_moments,
    bootstrap_fd,
    fd_from_features,
    mean_interval,
    paired_difference,
    paired_mean_difference,
    real_floor,
    verdict,
)
from orderlab.metrics.kid_intervals import bootstrap_kid, paired_kid_difference

__all__ = ["LEVEL", "DEFAULT_N_BOOT", "INTERVAL_KEYS", "PLUGIN_KEYS", "interval_methods", "row_intervals",
           "compare_rows", "real_vs_real_floor", "floor_text", "ITEM_OF", "METRIC_DIRECTION", "paired_metric",
           "metric_verdict"]

LEVEL = 0.95
# replicates per bootstrap: at N=898 and D=64 (the digits classifier) the FD and KID intervals of a row take about
# 0.6 s together on 2 CPU cores, and the Monte Carlo error of an endpoint is ~2.5 % of the width (~5 % at B=200)
DEFAULT_N_BOOT = 500
# displayed column -> its (low, high) result keys; write_table shows "value [low, high]" in such a column
INTERVAL_KEYS = {"fcd_corrected": ("fcd_low", "fcd_high"), "fid_corrected": ("fid_low", "fid_high"),
                 "fid_ref_corrected": ("fid_ref_low", "fid_ref_high"), "kcd": ("kcd_low", "kcd_high"),
                 "kid": ("kid_low", "kid_high"), "nll_bits_per_token": ("nll_low", "nll_high")}
# plug-in Fréchet distances: their [low, high] belong to the "_corrected" column, never shown around the plug-in
PLUGIN_KEYS = frozenset({"fcd", "fid", "fid_ref"})
# metric -> the per-item array (evaluate_row's ``items``) its paired difference is computed on; "features": an FD
# (nll_gap = NLL - the exact entropy and energy_bias = energy - the exact energy: the row against the exact value;
# a paired difference of either is that of NLL or energy, the constant cancels)
ITEM_OF = {"fcd": "features", "fid": "features", "nll_bits_per_token": "nll_bits", "nll_gap": "nll_bits",
           "energy": "energy", "energy_bias": "energy", "abs_mag": "abs_mag"}
# metric -> which way is better. "none": verdicts say lower/higher. The Ising energy is one: parallel-decoding errors
# raise it, an over-ordered model lowers it below the exact value, so lower is not better in general
METRIC_DIRECTION = {"fcd": "lower", "fid": "lower", "kcd": "lower", "kid": "lower", "nll_bits_per_token": "lower",
                    "nll_gap": "lower",
                    "energy": "none", "energy_bias": "none", "abs_mag": "none", "precision": "higher",
                    "recall": "higher"}
NO_PR_INTERVAL = ("precision, recall: no interval (k-NN statistics: a with-replacement resample duplicates points and "
                  "collapses the k-NN radii, so the bootstrap does not estimate their spread)")


def interval_methods(n_boot: int, fd_key: str = "fcd", nll: bool = True, ref: bool = False) -> dict[str, str]:
    """The meta lines that name every interval's method (for tables and reports)."""
    kd_key = "kcd" if fd_key == "fcd" else "kid"
    pct = f"{LEVEL * 100:g} %"
    if n_boot:
        out = {f"{fd_key} interval": f"{pct}, two-sample bootstrap (generated and reference sets resampled "
                                     f"independently), bias-corrected, B={n_boot}: {fd_key} is the plug-in value, "
                                     f"{fd_key}_corrected = {fd_key} - {fd_key}_bias and [low, high] are for the "
                                     f"population {fd_key.upper()} (they may lie below the plug-in value)",
               f"{kd_key} interval": f"{pct}, two-sample bootstrap of the unbiased MMD², percentile recentred on "
                                     f"the estimate, B={n_boot} (conservative: up to 1.8x too wide when the two "
                                     f"distributions nearly coincide)"}
        if ref:
            out["fid_ref interval"] = (f"{pct}, one-sample bootstrap of the generated set (the reference statistics "
                                       f"are fixed), bias-corrected, B={n_boot}")
    else:
        out = {f"{fd_key}, {kd_key} interval": "none (n_boot=0)"}
    if nll:
        out["nll interval"] = f"{pct}, Student t-interval over the held-out images' bits/token"
    out["precision, recall"] = NO_PR_INTERVAL.split(": ", 1)[1]
    return out


def _fid_ref_interval(fake: np.ndarray, ref_stats, n_boot: int, seed: int) -> dict[str, float]:
    """One-sample bootstrap of the generated set's FD to fixed published statistics, bias-corrected."""
    g = _features(fake, "fake")
    est = float(ref_stats.fid(g))
    counts = _counts(np.random.default_rng(seed), len(g), n_boot)
    mu, sigma = np.asarray(ref_stats.mu, np.float64)[None], np.asarray(ref_stats.sigma, np.float64)[None]
    step = max(1, (1 << 24) // g.shape[1] ** 2)
    reps = np.concatenate([_fd_batch(*_weighted_moments(g, counts[i:i + step]), mu, sigma)
                           for i in range(0, n_boot, step)])
    low, high, bias = _interval(est, reps, LEVEL, "bias-corrected")
    return {"fid_ref_low": max(low, 0.0), "fid_ref_high": max(high, 0.0), "fid_ref_bias": bias,
            "fid_ref_corrected": est - bias}


def row_intervals(real, fake, *, fd_key: str, kd: float, kid_scale: float = 1.0, n_boot: int, seed: int,
                  nll: np.ndarray | None = None, ref_stats=None) -> dict[str, Any]:
    """The interval keys of one row (module docstring) from its (N, D) reference and generated features."""
    kd_key = "kcd" if fd_key == "fcd" else "kid"
    out: dict[str, Any] = {}
    if n_boot:
        iv = bootstrap_fd(real, fake, n_boot=n_boot, seed=seed, level=LEVEL)
        out.update({f"{fd_key}_low": iv.low, f"{fd_key}_high": iv.high, f"{fd_key}_bias": iv.bias,
                    f"{fd_key}_corrected": iv.corrected})
        kv = bootstrap_kid(real, fake, kid_scale=kid_scale, estimate=kd, n_boot=n_boot, seed=seed, level=LEVEL)
        out.update({f"{kd_key}_low": kv.low, f"{kd_key}_high": kv.high})
        if ref_stats is not None:
            out.update(_fid_ref_interval(fake, ref_stats, n_boot, seed))
    if nll is not None and len(nll) >= 2:
        mi = mean_interval(nll, LEVEL)
        out.update({"nll_low": mi.low, "nll_high": mi.high})
    out["fd_interval_method"] = (f"two-sample bootstrap, bias-corrected, B={n_boot}" if n_boot else "none (n_boot=0)")
    out["interval_method"] = "; ".join(f"{k}: {v}" for k, v in interval_methods(
        n_boot, fd_key, nll is not None, ref_stats is not None).items())
    return out


def _items(result: dict[str, Any], side: str) -> dict[str, Any]:
    items = result.get("items")
    exact = isinstance(items, dict) and items.get("energy") is not None
    if not isinstance(items, dict) or not exact and (items.get("features") is None or items.get("real_features") is None):
        raise ValueError(f"compare_rows: row {result.get('row')!r} ({side}) has no per-sample features; evaluate it "
                         f"with evaluate_row(..., keep_items=True)")
    return items


def paired_metric(ia: dict[str, Any], ib: dict[str, Any], metric: str, *, n_boot: int = DEFAULT_N_BOOT,
                  seed: int = 0, level: float = LEVEL) -> Interval | None:
    """a - b of ``metric`` from two rows' per-item arrays (``items``, paired by sample seed or held-out image) with
    its interval: a paired bootstrap for a Fréchet distance (one reference resample per replicate, shared), a paired
    t-interval for a per-item metric. None when the arrays are missing or unpaired."""
    kind = ITEM_OF.get(metric)
    if kind == "features":
        if any(x.get(k) is None for x in (ia, ib) for k in ("features", "real_features")):
            return None
        return paired_difference(ia["real_features"], ia["features"], ib["features"], n_boot=n_boot, seed=seed,
                                 level=level)
    va, vb = (ia.get(kind), ib.get(kind)) if kind else (None, None)
    if va is None or vb is None or len(va) != len(vb) or len(va) < 2:
        return None
    return paired_mean_difference(va, vb, level)


def metric_verdict(diff: Interval | None, metric: str) -> str:
    """"better"/"worse"/"no detectable difference" for a metric with a direction; "lower"/"higher" otherwise."""
    if diff is None:
        return "not available"
    direction = METRIC_DIRECTION.get(metric, "none")
    if direction in ("lower", "higher"):
        return verdict(diff, lower_is_better=direction == "lower")
    return {"better": "lower", "worse": "higher"}.get(verdict(diff), "no detectable difference")


def compare_rows(a: dict[str, Any], b: dict[str, Any], *, n_boot: int = DEFAULT_N_BOOT, seed: int = 0
                 ) -> dict[str, Any]:
    """Paired differences a - b of two evaluate_row results (``keep_items=True``), each with a 95 % interval and a
    verdict for a relative to b: "better", "worse" or "no detectable difference" (the interval holds 0).

    FD: :func:`~orderlab.metrics.intervals.paired_difference` (one reference resample per replicate shared by a
    and b, one index vector for both: sample i of each came from generation seed i); KID: the same resampling
    (:func:`~orderlab.metrics.kid_intervals.paired_kid_difference`); NLL:
    :func:`~orderlab.metrics.intervals.paired_mean_difference` per held-out image. Both results must share the
    reference set, the sample count and the sampling seed.
    """
    ia, ib = _items(a, "a"), _items(b, "b")
    if "energy" in ia:  # exact scores (the Ising benchmark): per-sample values, paired by sample seed
        return _compare_exact(a, b, ia, ib)
    if not np.array_equal(ia["real_features"], ib["real_features"]):
        raise ValueError(f"compare_rows: {a.get('row')!r} and {b.get('row')!r} were scored against different "
                         f"reference sets; paired differences need the same one")
    if len(ia["features"]) != len(ib["features"]) or a.get("seed") != b.get("seed"):
        raise ValueError(f"compare_rows: {a.get('row')!r} and {b.get('row')!r} are not paired (samples "
                         f"{len(ia['features'])} vs {len(ib['features'])}, seeds {a.get('seed')} vs {b.get('seed')})")
    if n_boot < 2:
        raise ValueError(f"n_boot={n_boot}: a paired comparison needs a bootstrap of at least 2 replicates")
    fd_key = "fcd" if "fcd" in a else "fid"
    kd_key = "kcd" if fd_key == "fcd" else "kid"
    out: dict[str, Any] = {"a": a.get("row"), "b": b.get("row"), "n": len(ia["features"]),
                           "n_real": len(ia["real_features"])}

    _put(out, fd_key, a, b, fd_key, paired_metric(ia, ib, fd_key, n_boot=n_boot, seed=seed))
    real, fa, fb = ia["real_features"], ia["features"], ib["features"]
    if kd_key in a and kd_key in b:
        est = float(a[kd_key]) - float(b[kd_key]) if not np.array_equal(fa, fb) else 0.0
        _put(out, kd_key, a, b, kd_key, paired_kid_difference(
            real, fa, fb, kid_scale=float(a.get("kid_scale", 1.0)), estimate=est, n_boot=n_boot, seed=seed,
            level=LEVEL))
    _put(out, "nll", a, b, "nll_bits_per_token", paired_metric(ia, ib, "nll_bits_per_token"))
    out["method"] = (f"{LEVEL * 100:g} % intervals of a - b: {fd_key} and {kd_key} paired bootstrap (one shared "
                     f"reference resample and one index vector for both rows per replicate, B={n_boot}; {fd_key} "
                     f"bias-corrected); nll paired t-interval over the held-out images")
    return out


def _put(out: dict[str, Any], name: str, a: dict[str, Any], b: dict[str, Any], metric: str,
         iv: Interval | None) -> None:
    """``NAME_a``, ``NAME_b``, ``NAME_diff`` [low, high] and ``NAME_verdict`` of one paired difference."""
    if iv is None:
        return
    out.update({f"{name}_a": a.get(metric), f"{name}_b": b.get(metric), f"{name}_diff": iv.estimate,
                f"{name}_diff_low": iv.low, f"{name}_diff_high": iv.high, f"{name}_verdict": metric_verdict(iv, metric)})


def _compare_exact(a: dict[str, Any], b: dict[str, Any], ia: dict[str, Any], ib: dict[str, Any]) -> dict[str, Any]:
    """compare_rows for exact per-sample scores: paired t-intervals over sample i of both rows (same seed)."""
    if len(ia["energy"]) != len(ib["energy"]) or a.get("seed") != b.get("seed"):
        raise ValueError(f"compare_rows: {a.get('row')!r} and {b.get('row')!r} are not paired (samples "
                         f"{len(ia['energy'])} vs {len(ib['energy'])}, seeds {a.get('seed')} vs {b.get('seed')})")
    out: dict[str, Any] = {"a": a.get("row"), "b": b.get("row"), "n": len(ia["energy"])}
    for key, metric in (("energy", "energy"), ("abs_mag", "abs_mag"), ("nll", "nll_bits_per_token")):
        _put(out, key, a, b, metric, paired_metric(ia, ib, metric))
    out["method"] = (f"{LEVEL * 100:g} % paired t-intervals of a - b over the samples (energy, |m|; sample i of both "
                     f"rows from the same seed) and over the held-out samples (nll)")
    return out


def real_vs_real_floor(root: str, split: str, extractor, n: int, *, reference=None, cache_dir: str | None = None,
                       seed: int = 0, n_pairs: int = 50) -> dict[str, Any] | None:
    """The real-vs-real floor at n/n: what the plug-in FD gives when both sets are real (its bias at n).

    ``fd``: the n reference images of ``split`` (``reference``: their features, else read from the cache) against
    n images of the other split ("train", or "val" when ``split`` is train): the disjoint real set, drawn like the
    reference (:class:`~orderlab.metrics.RealImages`). ``mean``/``low``/``high``/``sd``:
    :func:`~orderlab.metrics.intervals.real_floor` over ``n_pairs`` random disjoint n/n splits of those 2n real
    images: the central 95 % range of the draws. (With a pool of exactly 2n the draws only re-partition it; in
    simulations, Gaussian and t(5) features with D=64 at n=898, their spread matched that of independent sets
    within 10 %.) None when the other split has fewer than n images.
    """
    import torch

    from orderlab.metrics import ImageMetrics, RealImages, precision_recall

    ref_images = RealImages(root, split)
    splits = ref_images.manifest()["splits"]
    other = "train" if split != "train" else "val"
    if other not in splits or splits[other]["count"] < n or n < 4:
        return None
    if reference is None:
        reference = ImageMetrics(extractor, ref_images, n, cache=cache_dir or False).real_features
    ref = _features(reference, "reference")
    disjoint = ImageMetrics(extractor, RealImages(root, other), n, cache=cache_dir or False).real_features
    fl = real_floor(np.concatenate([ref, _features(disjoint, other)]), n, n_pairs=n_pairs, seed=seed, level=LEVEL)
    precision, recall = precision_recall(torch.from_numpy(ref), disjoint.double())
    return {"n": n, "split": split, "other_split": other, "fd": fd_from_features(ref, disjoint), "mean": fl.estimate,
            "low": fl.low, "high": fl.high, "sd": fl.sd, "pool": 2 * n, "n_pairs": n_pairs, "precision": precision,
            "recall": recall}


def floor_text(floor: dict[str, Any] | None, name: str = "FCD") -> str:
    """One sentence for tables and reports."""
    if floor is None:
        return "not available (no disjoint real set of the same size)"
    n = floor["n"]
    return (f"{name} {floor['fd']:.2f} at N={n}: the {n} reference images ({floor['split']} split) against {n} "
            f"other real images ({floor['other_split']} split); over {floor['n_pairs']} random disjoint {n}/{n} "
            f"splits of these {floor['pool']} real images: mean {floor['mean']:.2f}, {LEVEL * 100:g} % range "
            f"[{floor['low']:.2f}, {floor['high']:.2f}] (plug-in values, as the {name.split()[0].lower()} column; "
            f"the population value is 0)")
