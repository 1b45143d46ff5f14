"""``orderlab evaluate``: a checkpoint under several (schedule, steps) rows -> a Markdown/CSV/JSON table + grids."""

from __future__ import annotations

import os
import re
import time
from typing import Any

from orderlab.checks import check_positive_int

DEFAULT_N_BOOT = 500  # = orderlab.analysis.uncertainty.DEFAULT_N_BOOT (not imported: `--help` stays light)
# comparisons.md's columns (the csv and json hold every key of compare_rows)
COMPARE_KEYS = ["a", "b", "fcd_a", "fcd_b", "fcd_diff", "fcd_verdict", "fid_a", "fid_b", "fid_diff", "fid_verdict",
                "kcd_diff", "kcd_verdict", "kid_diff", "kid_verdict", "energy_a", "energy_b", "energy_diff",
                "energy_verdict", "abs_mag_diff", "abs_mag_verdict", "nll_diff", "nll_verdict"]
_VS = re.compile(r"\s+vs\.?\s+", re.IGNORECASE)


def parse_compare(entries, rows) -> list[tuple[int, int]]:
    """``["locality:8 vs random:8", ...]`` (or ``[[a, b], ...]``) -> pairs of indices into ``rows`` (parsed Rows).

    A side names a row as it was given ("locality:8", "diagonal") or by its label ("locality T=8"); anything else
    is an error naming the entry and the side, raised before any sampling."""
    from orderlab.analysis.evaluation import parse_row

    labels = [r.label for r in rows]
    out = []
    for entry in entries or []:
        sides = list(entry) if isinstance(entry, (list, tuple)) else _VS.split(str(entry).strip())
        if len(sides) != 2:
            raise ValueError(f"compare entry {entry!r} must read 'ROW vs ROW' (e.g. 'locality:8 vs random:8')")
        pair = []
        for side in sides:
            idx = labels.index(side.strip()) if isinstance(side, str) and side.strip() in labels else None
            if idx is None:
                try:
                    want = parse_row(side.strip() if isinstance(side, str) else side)
                    idx = rows.index(want)
                except (ValueError, KeyError):
                    raise ValueError(f"compare entry {entry!r}: {side!r} is not one of the rows "
                                     f"({', '.join(labels)})") from None
            pair.append(idx)
        out.append((pair[0], pair[1]))
    return out


def run_evaluation(ckpt: str, rows: list[Any], out: str, *, num_samples: int = 256, data: str | None = None,
                   split: str = "val", extractor: str = "classifier", batch_size: int = 256, cfg_scale: float = 1.0,
                   cfg_schedule: str = "constant", temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int = 0, nll_samples: int | None = None, progress: bool = True,
                   stem: str = "results", precision: str = "fp32",
                   cache_dir: str | None = None, ref_stats: str | None = None, n_boot: int = DEFAULT_N_BOOT,
                   compare: list[Any] | None = None, keep_items: bool = False) -> list[dict[str, Any]]:
    """Evaluate every row; writes ``out``/results.{md,csv,json} and ``out``/grid_*.png. Returns the rows' dicts.

    Every number comes with its 95 % interval and N (:mod:`orderlab.analysis.uncertainty`); the table's meta names
    the methods and the real-vs-real floor at this N. ``compare``: "A vs B" row pairs, written with their paired
    differences, intervals and verdicts to ``out``/comparisons.{md,csv,json}. ``keep_items``: the returned dicts
    keep their per-sample ``items`` (for :func:`~orderlab.analysis.uncertainty.compare_rows`; never in a table).

    The real features are cached in ``cache_dir`` (None: ``default_cache_dir()``); the data and checkpoint folders
    are only read. ``ref_stats``: an ADM-style ``.npz`` (``mu``, ``sigma``) of the extractor's width; each row then
    also reports ``fid_ref``, its generated features' FID against those statistics. The file is checked (and a bad
    one refused, naming it) before the checkpoint is loaded; its width once the extractor is; both before sampling.
    """
    from orderlab.analysis.evaluation import evaluate_row, load_context, parse_row, write_table
    from orderlab.analysis.uncertainty import interval_methods
    from orderlab.decoding.sampling import check_sampling_args
    from orderlab.metrics import default_cache_dir, load_ref_stats
    from orderlab.progress import progress_bar

    parsed = [parse_row(r) for r in rows]  # all rows are checked before any sampling
    if not parsed:
        raise ValueError("rows is empty: give at least one 'schedule:steps'")
    for key, value in (("num_samples", num_samples), ("batch_size", batch_size), ("nll_samples", nll_samples)):
        if value is not None:
            check_positive_int(value, f"--{key}")
    check_positive_int(n_boot, "--n_boot", minimum=0)
    if n_boot == 1:
        raise ValueError("--n_boot=1: a bootstrap needs at least 2 replicates (0: no FD/KID intervals)")
    pairs = parse_compare(compare, parsed)
    if pairs and n_boot == 0:
        raise ValueError("--compare needs the bootstrap: give --n_boot >= 2 (not 0)")
    check_sampling_args(cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p,
                        cfg_schedule=cfg_schedule, names={k: f"--{k}" for k in
                                                          ("cfg_scale", "temperature", "top_k", "top_p", "cfg_schedule")})
    stats = load_ref_stats(ref_stats) if ref_stats is not None else None
    ctx = load_context(ckpt, data, split, extractor, nll_samples)
    if any(r.schedule == "native" for r in parsed):  # a converted published model's own decoding
        from orderlab.published.native import native_row

        parsed = [parse_row({**native_row(ctx.loaded, "--rows"), **({"steps": r.steps} if r.steps else {})})
                  if r.schedule == "native" else r for r in parsed]
    if stats is not None:
        stats.check_dim(ctx.extractor.num_features, extractor)
    from orderlab.analysis.uncertainty import compare_rows, floor_text, real_vs_real_floor

    n_real = ctx.real.manifest()["splits"][split]["count"]
    if num_samples > n_real:  # before any sampling
        raise ValueError(f"--num_samples={num_samples} exceeds the {n_real} real images of split {split!r} (the "
                         f"reference has as many images as each row generates)")
    results = []
    os.makedirs(out, exist_ok=True)
    with progress_bar(progress) as bar:  # rows, and samples within the row (stderr, terminals only)
        task = bar.add_task("rows", total=len(parsed))
        samples = bar.add_task("samples", total=num_samples)
        for i, row in enumerate(parsed):
            bar.update(task, description=f"row {i + 1}/{len(parsed)} {row.label}")
            bar.reset(samples, total=num_samples, description="  sampling")
            t0 = time.perf_counter()
            res = evaluate_row(ctx.loaded, row, num_samples=num_samples, real=ctx.real, extractor=ctx.extractor,
                               val_tokens=ctx.val_tokens, val_labels=ctx.val_labels, batch_size=batch_size,
                               cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, temperature=temperature,
                               top_k=top_k, top_p=top_p, seed=seed, cache_dir=cache_dir or default_cache_dir(),
                               precision=precision, grid_path=os.path.join(out, f"grid_{i:02d}_{row.slug}.png"),
                               ref_stats=stats, n_boot=n_boot, keep_items=keep_items or bool(pairs),
                               progress=lambda phase, done: bar.update(samples, completed=done,
                                                                       description=f"  {phase}"))
            results.append(res)
            bar.advance(task)
            print(f"  row {i + 1}/{len(parsed)} {row.label}: {row_line(res)}, {res['forward_passes']} passes, "
                  f"{res['ms_per_image']:.2f} ms/image ({time.perf_counter() - t0:.1f} s)", flush=True)
    exact = hasattr(ctx.extractor, "score_tokens")  # a ground-truth dataset: no features, no real-vs-real floor
    name = "energy" if exact else ("FCD" if "fcd" in results[0] else "FID")  # the column name of results.md
    meta = {"checkpoint": ckpt, "data": ctx.root, "split": split, "num_samples (real = generated)": num_samples,
            "N": f"{num_samples} generated images per row (sample i from seed {seed}, index i, in every row) vs "
                 f"{num_samples} real images: a seeded uniform sample of the {n_real} images of split {split!r}, "
                 f"the same for every row",
            "feature space": results[0].get("feature_space", ctx.extractor.label), "cfg": f"{cfg_scale} ({cfg_schedule})",
            "temperature": temperature, "seed": seed, "nll images": len(ctx.val_tokens), "precision": precision}
    if exact:
        meta["N"] = (f"{num_samples} generated samples per row (sample i from seed {seed}, index i, in every row), "
                     f"scored exactly; NLL on {len(ctx.val_tokens)} held-out samples of split {split!r}")
    else:
        floor = real_vs_real_floor(ctx.root, split, ctx.extractor, num_samples,
                                   cache_dir=cache_dir or default_cache_dir(), seed=seed)
        print(f"  real-vs-real floor: {floor_text(floor, name)}", flush=True)
        meta.update(interval_methods(n_boot, name.lower(), True, stats is not None))
        meta[f"real-vs-real floor ({name})"] = floor_text(floor, name)
    if stats is not None:
        meta["reference statistics (fid_ref)"] = (f"{stats.describe()}; fid_ref = FID of the {num_samples} generated "
                                                  f"images per row against them")
    write_table(results, out, stem, meta)
    if pairs:
        comps = [compare_rows(results[a], results[b], n_boot=n_boot, seed=seed) for a, b in pairs]
        for c in comps:
            print(f"  {c['a']} vs {c['b']}: {compare_line(c)}", flush=True)
        cmeta = {"N": meta["N"], "method": comps[0]["method"],
                 "verdict": "a relative to b: better / worse (the interval of a - b excludes 0) or no detectable "
                            "difference (it holds 0: at this N the data cannot tell them apart)"}
        if not exact:
            cmeta[f"real-vs-real floor ({name})"] = meta[f"real-vs-real floor ({name})"]
        write_table(comps, out, "comparisons", cmeta, keys=COMPARE_KEYS)
        if not keep_items:
            for r in results:
                r.pop("items", None)
    return results


def row_line(res: dict[str, Any]) -> str:
    """``FCD 14.25 (bias-corrected 12.05 [11.30, 12.80]), KCD ..., NLL ... bits/token, N=898 vs 898``."""
    from orderlab.analysis.evaluation import fmt_interval

    if "energy" in res:  # exact scores (the Ising benchmark)
        parts = [f"energy {fmt_interval(res['energy'], res['energy_low'], res['energy_high'])} (exact "
                 f"{res['energy_exact']:.4f}), |m| {fmt_interval(res['abs_mag'], res['abs_mag_low'], res['abs_mag_high'])}"]
        if "nll_gap" in res:
            parts.append(f"NLL {fmt_interval(res['nll_bits_per_token'], res['nll_low'], res['nll_high'])} bits/token, "
                         f"{fmt_interval(res['nll_gap'], res['nll_gap_low'], res['nll_gap_high'])} above the exact "
                         f"entropy (n={res.get('nll_images', '?')})")
        return ", ".join(parts) + f", N={res['num_samples']}"
    fd = "fcd" if "fcd" in res else "fid"
    kd = "kcd" if fd == "fcd" else "kid"
    parts = [f"{fd.upper()} {res[fd]:.2f}"]
    if f"{fd}_low" in res:
        parts[0] += f" (bias-corrected {fmt_interval(res[f'{fd}_corrected'], res[f'{fd}_low'], res[f'{fd}_high'])})"
    if "fid_ref" in res:
        ref = f"FID_ref {res['fid_ref']:.2f}"
        if "fid_ref_low" in res:
            iv = fmt_interval(res["fid_ref_corrected"], res["fid_ref_low"], res["fid_ref_high"])
            ref += f" (bias-corrected {iv})"
        parts.append(ref)
    if kd in res:
        parts.append(f"{kd.upper()} " + (fmt_interval(res[kd], res[f"{kd}_low"], res[f"{kd}_high"])
                                         if f"{kd}_low" in res else f"{res[kd]:.4f}"))
    if "nll_bits_per_token" in res:
        nll = res["nll_bits_per_token"]
        parts.append("NLL " + (fmt_interval(nll, res["nll_low"], res["nll_high"]) if "nll_low" in res
                               else f"{nll:.3f}") + f" bits/token (n={res.get('nll_images', '?')})")
    return ", ".join(parts) + f", N={res['num_samples']} vs {res['num_samples']}"


def compare_line(c: dict[str, Any]) -> str:
    """``FCD -0.31 [-1.20, 0.58] no detectable difference; KCD ...; NLL ...`` (a - b)."""
    from orderlab.analysis.evaluation import fmt_interval

    parts = []
    for key in ("fcd", "fid", "kcd", "kid", "energy", "abs_mag", "nll"):
        if f"{key}_diff" in c:
            iv = fmt_interval(c[f"{key}_diff"], c[f"{key}_diff_low"], c[f"{key}_diff_high"])
            parts.append(f"{key.upper()} {iv} -> {c[f'{key}_verdict']}")
    return "; ".join(parts) + f" (a - b, N={c['n']})"


def evaluate(*, ckpt: str, rows: list[str | dict[str, Any]], out: str = "runs/eval", num_samples: int = 256, data: str | None = None,
             split: str = "val", extractor: str = "classifier", batch_size: int = 256, cfg_scale: float = 1.0,
             cfg_schedule: str = "constant", temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0, nll_samples: int | None = None, precision: str = "fp32",
             cache_dir: str | None = None, ref_stats: str | None = None, n_boot: int = DEFAULT_N_BOOT,
             compare: list[str] | None = None) -> None:
    """Evaluate a checkpoint under (schedule, steps) rows: FCD/FID, KID, precision/recall, NLL, passes, time.

    Every number is printed and tabled with its 95 % interval and N, and the table's meta names the interval
    methods and the real-vs-real floor at this N (the reference images against as many images of the other split).

    Args:
        ckpt: checkpoint written by ``orderlab fit``.
        rows: "schedule:steps" or "schedule" (natural budget), e.g. '[raster:64, random:8, locality:8]'.
            ``native``: a converted published model's own decoding (``orderlab convert``; ``native:T`` at budget T).
        out: output folder (results.md/.csv/.json and one sample grid per row).
        num_samples: images generated per row AND real images compared against (a fixed, reported count; the
            real ones a seeded uniform sample of the split, the same for every row). Use as many as the split
            holds: the intervals narrow and the FD's bias shrinks with N.
        data: dataset folder of the real images (default: the one the checkpoint was trained on).
        split: split of the real images and of the NLL images.
        extractor: "classifier" (the committed classifier features: FCD, not comparable with Inception FID)
            or the path of a local TorchScript Inception-v3 file (FID).
        batch_size: images generated at once.
        cfg_scale: classifier-free guidance weight (1 = off).
        cfg_schedule: constant | linear | linear_token.
        temperature: sampling temperature (0 = greedy).
        top_k: keep the k most likely tokens (0 = all).
        top_p: nucleus mass (1 = all).
        seed: sample i of a row uses ``sample_generator(seed, i)`` (orderlab.seeding).
        nll_samples: held-out images scored for NLL (None: the whole split).
        precision: fp32, or bf16/fp16 autocast while sampling (the GPU setting).
        cache_dir: folder of the real-feature cache (default: $ORDERLAB_CACHE, else $XDG_CACHE_HOME/orderlab, else
            ~/.cache/orderlab). The dataset and checkpoint folders are never written.
        ref_stats: published reference statistics, an ADM-style .npz holding mu (D,) and sigma (D, D) (or
            ref_mu/ref_sigma), e.g. LPD's fid_stats/adm_in256_stats.npz: each row also reports fid_ref, the FID of
            its num_samples generated images against them. Needs --extractor of the same width (the Inception
            TorchScript file, D=2048); a bad file or width stops the run before any sampling.
        n_boot: bootstrap replicates of the FD and KID intervals (two-sample: generated and reference sets both
            resampled); 0 = no FD/KID intervals. About 0.6 s per row at the default 500, N=898, D=64 on 2 CPU cores;
            the cost grows as n_boot x N x D^2 (Inception's D=2048: take far fewer, or 0, on a CPU).
        compare: row pairs to compare, e.g. '["locality:8 vs random:8", "random:8 vs random:64"]' (rows as given
            in --rows, or their labels): comparisons.md/.csv/.json get each difference a - b with its paired 95 %
            interval (same reference resample, same sample seeds; NLL paired per held-out image) and a verdict for
            a: better, worse, or no detectable difference.
    """
    created = not os.path.exists(out)
    try:
        run_evaluation(ckpt, rows, out, num_samples=num_samples, data=data, split=split, extractor=extractor,
                       batch_size=batch_size, cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, temperature=temperature,
                       top_k=top_k, top_p=top_p, seed=seed, nll_samples=nll_samples, precision=precision,
                       cache_dir=cache_dir, ref_stats=ref_stats, n_boot=n_boot, compare=compare)
    except BaseException:
        if created and os.path.isdir(out):  # a failed run leaves nothing behind in a folder it made itself
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    print(f"wrote {out}/results.md, results.csv, results.json"
          + (", comparisons.md, comparisons.csv, comparisons.json" if compare else "") + " and sample grids")
