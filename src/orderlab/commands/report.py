"""The demo report: results table, the real-vs-real floor, FCD-vs-steps plot, sample grids, and the two anchor
findings checked against the numbers (stated as holding or not, never assumed)."""

from __future__ import annotations

import os
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orderlab.analysis.pictures import save_figure
from orderlab.data.atomic import atomic_write_bytes

__all__ = ["write_report", "findings", "real_floor"]

_CLOSE = 1.25  # "close": within 25 % of the T = N value (our threshold; LPD's 256 -> 20 steps moved FID 2.1 -> 2.1x)


def _fd(r: dict[str, Any]) -> float:
    return float(r.get("fcd", r.get("fid")))


def _find(results, schedule: str, passes: int) -> dict | None:
    return next((r for r in results if r["schedule"] == schedule and r["forward_passes"] == passes
                 and r.get("decoder", "plan") == "plan"), None)


def findings(results: list[dict[str, Any]], n: int, trained: tuple[int, int] | None = None) -> list[str]:
    """Check the anchors' two claims on these numbers; each line says whether it holds here.

    ``trained`` = (steps trained, target steps): when the model stopped short of its target, every verdict is
    replaced by "not meaningful (trained S of M steps)".
    """
    out = []
    short = trained is not None and 0 <= trained[1] and trained[0] < trained[1]
    void = f"not meaningful (trained {trained[0]} of {trained[1]} steps)" if short else None
    full, eighth = _find(results, "random", n), _find(results, "random", max(1, n // 8))
    if full and eighth:
        ratio = _fd(eighth) / max(_fd(full), 1e-9)
        verdict = "holds" if ratio <= _CLOSE else "does NOT hold"
        out.append(f"Parallel decoding at N/8 = {n // 8} steps vs N = {n} steps (random order, same model): FCD "
                   f"{_fd(eighth):.2f} vs {_fd(full):.2f} (ratio {ratio:.2f}; 'close' means <= {_CLOSE}) -> "
                   + (f"the ARPG/LPD finding: {void}." if void else f"the ARPG/LPD finding {verdict} here."))
    for t in sorted({r["forward_passes"] for r in results if r["schedule"] == "locality"}):
        loc, rnd = _find(results, "locality", t), _find(results, "random", t)
        if loc and rnd:
            verdict = "holds" if _fd(loc) <= _fd(rnd) else "does NOT hold"
            out.append(f"Locality vs random order at T = {t}: FCD {_fd(loc):.2f} vs {_fd(rnd):.2f} -> LPD's finding "
                       f"(locality at least as good; 1.92 vs 2.11 FID on ImageNet)"
                       + (f": {void}." if void else f" {verdict} here."))
    return out


def real_floor(data: str, num_samples: int, cache_dir: str | None = None) -> dict[str, Any] | None:
    """FCD of real held-out images against as many real training images: the noise floor at this count.

    The val features are cached in ``cache_dir`` (None: ``default_cache_dir()``), never in ``data``.
    """
    from orderlab.metrics import RealImages, classifier_features, default_cache_dir, image_metrics

    try:
        return image_metrics(RealImages(data, "val"), RealImages(data, "train").images(num_samples),
                             classifier_features("digits"), num_samples=num_samples,
                             cache_dir=cache_dir or default_cache_dir())
    except ValueError:
        return None


def _plot(results, path: str) -> None:
    fig = Figure(figsize=(6.5, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name in sorted({r["schedule"] for r in results}):
        pts = sorted((r["forward_passes"], _fd(r)) for r in results if r["schedule"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("steps T (forward passes)")
    ax.set_ylabel("FCD (classifier features; lower is better)")
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
                 training: dict[str, Any] | None = None) -> str:
    """Write ``out``/report.md (+ fcd_vs_steps.png, samples.png); returns its path.

    ``training``: steps, max_steps, start_step, seconds, threads, time_limit_minutes of the demo's training run.
    A model trained short of max_steps gets a warning at the top and every verdict marked not meaningful.
    """
    _plot(results, os.path.join(out, "fcd_vs_steps.png"))
    _samples(results, out, os.path.join(out, "samples.png"))
    floor = real_floor(data, num_samples, cache_dir)
    with open(os.path.join(out, "results.md")) as fh:
        table = fh.read()
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
        f"ships; it is NOT comparable with Inception FIDs in papers. {num_samples} generated images per row against "
        f"{num_samples} real held-out images (FCD is biased by the count: compare rows only at equal count). "
        "NLL = bits per token of the held-out images under the row's plans (teacher forcing).", "",
    ]
    if floor is not None:
        lines += [f"Noise floor: real held-out vs {num_samples} real training images gives FCD "
                  f"{_fd(floor):.2f} (precision {floor['precision']:.2f}, recall {floor['recall']:.2f}).", ""]
    lines += ["## Results", "", table, "", "## What the anchors found, checked here", ""]
    lines += [f"- {f}" for f in findings(results, n, trained)] or [
        "- (the rows needed for the checks were not evaluated)"]
    lines += ["", "## Pictures", "", "![FCD vs steps](fcd_vs_steps.png)", "", "![samples](samples.png)", ""]
    path = os.path.join(out, "report.md")
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path
