"""The demo report: results table with 95 % intervals, the real-vs-real floor at N, FCD-vs-steps plot, sample
grids, and the two anchor findings checked by paired comparisons (a difference with its interval and a verdict:
better, worse, or no detectable difference at this N; never a verdict on a difference inside the noise)."""

from __future__ import annotations

import os
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orderlab.analysis.evaluation import fmt_interval
from orderlab.analysis.pictures import save_figure
from orderlab.analysis.uncertainty import DEFAULT_N_BOOT, compare_rows, floor_text, interval_methods
from orderlab.data.atomic import atomic_write_bytes

__all__ = ["write_report", "findings", "real_floor"]

_LPD = "LPD's finding (locality-aware order better than random; 1.92 vs 2.11 FID on ImageNet)"
_ARPG = "the ARPG/LPD finding (N/8 steps about as good as N)"


def _fd(r: dict[str, Any]) -> float:
    return float(r.get("fcd", r.get("fid")))


def _find(results, schedule: str, passes: int) -> dict | None:
    return next((r for r in results if r["schedule"] == schedule and r["forward_passes"] == passes
                 and r.get("decoder", "plan") == "plan"), None)


def _difference(a: dict, b: dict, n_boot: int, seed: int) -> tuple[str, str | None]:
    """("FCD 14.25 vs 14.56, difference -0.31 [-1.20, 0.58] (paired, N=898)", verdict) of a - b; verdict None
    when the rows hold no per-sample features."""
    key = "fcd" if "fcd" in a else "fid"
    text = f"{key.upper()} {_fd(a):.2f} vs {_fd(b):.2f}"
    if not (a.get("items") and b.get("items")):
        return text + " (no per-sample features kept: no paired interval)", None
    c = compare_rows(a, b, n_boot=n_boot, seed=seed)
    iv = fmt_interval(c[f"{key}_diff"], c[f"{key}_diff_low"], c[f"{key}_diff_high"])
    return text + f", difference {iv} (95 % paired bootstrap, N={c['n']})", c[f"{key}_verdict"]


def _line(head: str, claim: str, v: str | None, void: str | None, words: dict[str, str]) -> str:
    """One finding: ``head`` + what verdict ``v`` says of ``claim`` (``words``), or why there is no verdict."""
    if void:
        return head + f"{claim}: {void}."
    if v is None:
        return head + f"no verdict on {claim}."
    return head + words[v].format(claim=claim)


def findings(results: list[dict[str, Any]], n: int, trained: tuple[int, int] | None = None, *,
             n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> list[str]:
    """Check the anchors' two claims by paired comparisons (rows evaluated with ``keep_items=True``).

    Each line gives a - b with its 95 % interval and the verdict: "better"/"worse" when the interval excludes 0,
    "no detectable difference at this N" when it holds 0 (which neither supports nor refutes a claim of a
    difference). ``trained`` = (steps trained, target steps): when the model stopped short of its target, every
    verdict is replaced by "not meaningful (trained S of M steps)".
    """
    out = []
    short = trained is not None and 0 <= trained[1] and trained[0] < trained[1]
    void = f"not meaningful (trained {trained[0]} of {trained[1]} steps)" if short else None
    full, eighth = _find(results, "random", n), _find(results, "random", max(1, n // 8))
    if full and eighth:
        text, v = _difference(eighth, full, n_boot, seed)
        rel = 100 * (_fd(eighth) - _fd(full)) / max(_fd(full), 1e-9)
        out.append(_line(f"Parallel decoding at N/8 = {n // 8} steps vs N = {n} steps (random order, same model): "
                         f"{text} -> ", _ARPG, v, void, {
                             "worse": f"worse at N/8 ({rel:+.0f} % of the T = N value; the interval excludes 0): "
                                      "{claim} does not hold at this N.",
                             "better": "better at N/8: consistent with {claim}.",
                             "no detectable difference": "no detectable difference at this N: consistent with "
                                                         "{claim}."}))
    for t in sorted({r["forward_passes"] for r in results if r["schedule"] == "locality"}):
        loc, rnd = _find(results, "locality", t), _find(results, "random", t)
        if loc and rnd:
            text, v = _difference(loc, rnd, n_boot, seed)
            out.append(_line(f"Locality vs random order at T = {t}: {text} -> ", _LPD, v, void, {
                "better": "better: consistent with {claim}.",
                "worse": "worse (the interval excludes 0): {claim} does not hold here.",
                "no detectable difference": "no detectable difference at this N: this run neither supports nor "
                                            "contradicts {claim}."}))
    return out


def real_floor(data: str, num_samples: int, cache_dir: str | None = None, seed: int = 0) -> dict[str, Any] | None:
    """The real-vs-real floor at N = ``num_samples``: :func:`orderlab.analysis.uncertainty.real_vs_real_floor` of
    the val reference against as many train images (None when train has fewer).

    The features are cached in ``cache_dir`` (None: ``default_cache_dir()``), never in ``data``.
    """
    from orderlab.analysis.uncertainty import real_vs_real_floor
    from orderlab.metrics import RealImages, classifier_features, default_cache_dir

    try:
        extractor = classifier_features(RealImages(data, "val").manifest()["dataset"])
        return real_vs_real_floor(data, "val", extractor, num_samples, cache_dir=cache_dir or default_cache_dir(),
                                  seed=seed)
    except ValueError:
        return None


def _plot(results, path: str, floor: dict[str, Any] | None = None) -> None:
    """FCD (plug-in) against steps per schedule; bars: the 95 % bootstrap interval of the plug-in value at this N
    (the bias-corrected interval moved up by the bias); band: the real-vs-real floor's range at this N."""
    fig = Figure(figsize=(6.5, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if floor is not None:
        ax.axhspan(floor["low"], floor["high"], color="0.8", alpha=0.6, label=f"real vs real, N={floor['n']}")
    names = sorted({r["schedule"] for r in results})
    for i, name in enumerate(names):
        rows = sorted((r for r in results if r["schedule"] == name), key=lambda r: r["forward_passes"])
        shift = 2 ** ((i - (len(names) - 1) / 2) * 0.03)  # schedules side by side at the same T: bars stay apart
        xs, ys = [r["forward_passes"] * shift for r in rows], [_fd(r) for r in rows]
        key = "fcd" if "fcd" in rows[0] else "fid"
        if all(f"{key}_low" in r for r in rows):
            lo = [y - (r[f"{key}_low"] + r[f"{key}_bias"]) for y, r in zip(ys, rows)]
            hi = [(r[f"{key}_high"] + r[f"{key}_bias"]) - y for y, r in zip(ys, rows)]
            ax.errorbar(xs, ys, yerr=[[max(v, 0.0) for v in lo], [max(v, 0.0) for v in hi]], marker="o",
                        capsize=3, label=name)
        else:
            ax.plot(xs, ys, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("steps T (forward passes)")
    ax.set_ylabel("FCD (plug-in, classifier features; lower is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _samples(results, out: str, path: str) -> None:
    import matplotlib.image

    shown = [r for r in results if r.get("grid")]
    cols = 4
    rows = (len(shown) + cols - 1) // cols
    fig = Figure(figsize=(3.2 * cols, 3.4 * rows), dpi=100)
    FigureCanvasAgg(fig)
    for i, r in enumerate(shown):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(matplotlib.image.imread(os.path.join(out, r["grid"])))
        ax.set_title(f"{r['row']}\nFCD {_fd(r):.1f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def write_report(results: list[dict[str, Any]], out: str, *, data: str, ckpt: str, num_samples: int,
                 fit_seconds: float, total_seconds: float, n: int = 64, cache_dir: str | None = None,
                 training: dict[str, Any] | None = None, n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> str:
    """Write ``out``/report.md (+ fcd_vs_steps.png, samples.png); returns its path.

    ``results``: the rows of :func:`~orderlab.commands.evaluate_cmd.run_evaluation` with their ``items``
    (``keep_items=True``), for the paired comparisons; ``n_boot``, ``seed``: their bootstrap.

    ``training``: steps, max_steps, start_step, seconds, threads, time_limit_minutes of the demo's training run.
    A model trained short of max_steps gets a warning at the top and every verdict marked not meaningful.
    """
    floor = real_floor(data, num_samples, cache_dir, seed)
    _plot(results, os.path.join(out, "fcd_vs_steps.png"), floor)
    _samples(results, out, os.path.join(out, "samples.png"))
    with open(os.path.join(out, "results.md")) as fh:  # the table; its settings are stated above and in the file
        table = "\n".join(line for line in fh.read().splitlines() if line.startswith("|"))
    tr = training or {}
    trained = (tr["steps"], tr["max_steps"]) if "steps" in tr and "max_steps" in tr else None
    short = trained is not None and 0 <= trained[1] and trained[0] < trained[1]
    lines = ["# orderlab demo report", ""]
    if short:
        lines += [f"> **WARNING: training stopped short: {trained[0]} of {trained[1]} steps.** The model is "
                  "under-trained, so every number below describes an unfinished model and every verdict is not "
                  "meaningful. Run the same `orderlab demo` command again: it continues from `last.ckpt` to step "
                  f"{trained[1]}.", ""]
    if trained is not None:
        resumed = f", resumed at step {tr['start_step']}" if tr.get("start_step") else ""
        limit = tr.get("time_limit_minutes")
        guard = f"a {limit:g}-minute guard per run" if limit is not None else "no time limit"
        lines += [f"Training: **{trained[0]} of {trained[1]} steps**{resumed}; this run's training took "
                  f"{tr.get('seconds', fit_seconds):.0f} s of wall time with {tr.get('threads', '?')} torch "
                  f"thread(s), OMP_WAIT_POLICY {tr.get('omp_wait_policy', '?')} ({guard}).", ""]
    lines += [
        f"Model: `{ckpt}` (trained {fit_seconds:.0f} s on this machine; whole demo {total_seconds:.0f} s).", "",
        f"Metric: **FCD**, the Fréchet distance on features of a small digits classifier that orderlab trains and "
        f"ships; it is NOT comparable with Inception FIDs in papers. **N = {num_samples}**: {num_samples} generated "
        f"images per row (sample i from seed {seed}, index i, in every row) against the same {num_samples} real "
        f"held-out images (a seeded uniform sample of the val split). The plug-in FCD is biased upwards by the "
        f"count: compare rows only at equal N. NLL = bits per token of the held-out images under the row's plans "
        "(teacher forcing).", "",
        "Intervals (95 %; the FCD and KCD ones cover the noise of the generated AND the reference set, the NLL one "
        "that of the held-out images):", "",
    ]
    lines += [f"- {k}: {v}" for k, v in interval_methods(n_boot, "fcd").items()]
    lines += ["- comparisons: a - b, paired (one shared reference resample and one index vector for both rows per "
              f"replicate, B={n_boot}; NLL paired per held-out image). 'better'/'worse': the interval excludes 0; "
              "'no detectable difference at this N': it holds 0, so at this N the data cannot tell the two rows "
              "apart (not evidence that they are equal).",
              "- one trained model (K=1): the spread across training seeds is unknown and in none of these intervals "
              "(a training-seed study, `orderlab study`, measures it).", ""]
    lines += [f"Real-vs-real floor: {floor_text(floor, 'FCD')}.", ""]
    lines += ["## Results", "", "(results.md, .csv and .json hold the settings and every number; in the csv and "
              "json, `KEY_low`/`KEY_high` are the interval ends, `nll_low`/`nll_high` those of nll_bits_per_token.)",
              "", table, "", "## What the anchors found, checked here", ""]
    lines += [f"- {f}" for f in findings(results, n, trained, n_boot=n_boot, seed=seed)] or [
        "- (the rows needed for the checks were not evaluated)"]
    lines += ["", "## Pictures", "", "![FCD vs steps](fcd_vs_steps.png)", "", "![samples](samples.png)", ""]
    path = os.path.join(out, "report.md")
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path
