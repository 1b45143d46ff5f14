"""``orderlab evaluate``: a checkpoint under several (schedule, steps) rows -> a Markdown/CSV/JSON table + grids."""

from __future__ import annotations

import os
import time
from typing import Any

from orderlab.checks import check_positive_int


def run_evaluation(ckpt: str, rows: list[Any], out: str, *, num_samples: int = 256, data: str | None = None,
                   split: str = "val", extractor: str = "classifier", batch_size: int = 256, cfg_scale: float = 1.0,
                   cfg_schedule: str = "constant", temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   seed: int = 0, nll_samples: int | None = None, progress: bool = True,
                   stem: str = "results", precision: str = "fp32",
                   cache_dir: str | None = None, ref_stats: str | None = None) -> list[dict[str, Any]]:
    """Evaluate every row; writes ``out``/results.{md,csv,json} and ``out``/grid_*.png. Returns the rows' dicts.

    The real features are cached in ``cache_dir`` (None: ``default_cache_dir()``); the data and checkpoint folders
    are only read. ``ref_stats``: an ADM-style ``.npz`` (``mu``, ``sigma``) of the extractor's width; each row then
    also reports ``fid_ref``, its generated features' FID against those statistics. The file is checked (and a bad
    one refused, naming it) before the checkpoint is loaded; its width once the extractor is; both before sampling.
    """
    from orderlab.analysis.evaluation import evaluate_row, load_context, parse_row, write_table
    from orderlab.decoding.sampling import check_sampling_args
    from orderlab.metrics import default_cache_dir, load_ref_stats
    from orderlab.progress import progress_bar

    parsed = [parse_row(r) for r in rows]  # all rows are checked before any sampling
    if not parsed:
        raise ValueError("rows is empty: give at least one 'schedule:steps'")
    for key, value in (("num_samples", num_samples), ("batch_size", batch_size), ("nll_samples", nll_samples)):
        if value is not None:
            check_positive_int(value, f"--{key}")
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
                               ref_stats=stats,
                               progress=lambda phase, done: bar.update(samples, completed=done,
                                                                       description=f"  {phase}"))
            results.append(res)
            bar.advance(task)
            name = "FCD" if "fcd" in res else "FID"  # the column name of results.md
            fd = f"{name} {res.get(name.lower(), float('nan')):.2f}"
            fd += f", FID_ref {res['fid_ref']:.2f}" if stats else ""
            print(f"  row {i + 1}/{len(parsed)} {row.label}: {fd}, NLL "
                  f"{res.get('nll_bits_per_token', float('nan')):.3f} bits/token, {res['forward_passes']} passes, "
                  f"{res['ms_per_image']:.2f} ms/image ({time.perf_counter() - t0:.1f} s)", flush=True)
    meta = {"checkpoint": ckpt, "data": ctx.root, "split": split, "num_samples (real = generated)": num_samples,
            "feature space": results[0]["feature_space"], "cfg": f"{cfg_scale} ({cfg_schedule})",
            "temperature": temperature, "seed": seed, "nll images": len(ctx.val_tokens), "precision": precision}
    if stats is not None:
        meta["reference statistics (fid_ref)"] = (f"{stats.describe()}; fid_ref = FID of the {num_samples} generated "
                                                  f"images per row against them")
    write_table(results, out, stem, meta)
    return results


def evaluate(*, ckpt: str, rows: list[str | dict[str, Any]], out: str = "runs/eval", num_samples: int = 256, data: str | None = None,
             split: str = "val", extractor: str = "classifier", batch_size: int = 256, cfg_scale: float = 1.0,
             cfg_schedule: str = "constant", temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0, nll_samples: int | None = None, precision: str = "fp32",
             cache_dir: str | None = None, ref_stats: str | None = None) -> None:
    """Evaluate a checkpoint under (schedule, steps) rows: FCD/FID, KID, precision/recall, NLL, passes, time.

    Args:
        ckpt: checkpoint written by ``orderlab fit``.
        rows: "schedule:steps" or "schedule" (natural budget), e.g. '[raster:64, random:8, locality:8]'.
            ``native``: a converted published model's own decoding (``orderlab convert``; ``native:T`` at budget T).
        out: output folder (results.md/.csv/.json and one sample grid per row).
        num_samples: images generated per row AND real images compared against (a fixed, reported count).
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
    """
    created = not os.path.exists(out)
    try:
        run_evaluation(ckpt, rows, out, num_samples=num_samples, data=data, split=split, extractor=extractor,
                       batch_size=batch_size, cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, temperature=temperature,
                       top_k=top_k, top_p=top_p, seed=seed, nll_samples=nll_samples, precision=precision,
                       cache_dir=cache_dir, ref_stats=ref_stats)
    except BaseException:
        if created and os.path.isdir(out):  # a failed run leaves nothing behind in a folder it made itself
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    print(f"wrote {out}/results.md, results.csv, results.json and sample grids")
