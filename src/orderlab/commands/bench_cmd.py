"""``orderlab bench decode``: speed and memory of parallel decoding at several step budgets, in one run.

Every row runs in its own process (from a fork server), so its peak memory is its own: on CUDA ``max_memory_allocated``, on
CPU the growth of the process's peak resident set over its size at the start of the row. Ratios compare rows of
one run on one machine; wall times on a shared machine are noisy, so each row reports the median of repeats.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import resource
import statistics
import time
from pathlib import Path

import torch

from orderlab.checks import check_positive_int
from orderlab.data.atomic import atomic_write_bytes
from orderlab.decoding.decode import generate
from orderlab.model.config import ModelConfig
from orderlab.model.registry import build_model, get_backbone, list_backbones


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def _row(model, schedule: str, steps: int, batch: int, repeats: int, device: str, decoder: dict | None,
         precision: str = "fp32") -> dict:
    """Warm up once, then time ``repeats`` generate() calls; returns times, passes and peak memory."""
    dev = torch.device(device)
    model = model.to(dev).eval()
    labels = torch.arange(batch, device=dev) % max(model.config.num_classes, 1)
    kw = {**(decoder or {}), "precision": precision}
    base = _rss_mib()  # before the warm-up: the warm-up reaches the same peak as the timed runs
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    generate(model, schedule, steps, labels, seed=0, **kw)  # warm-up
    times, info = [], None
    for r in range(repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        _, info = generate(model, schedule, steps, labels, seed=r + 1, return_info=True, **kw)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base)
    model.setup_cache(batch, device=dev)
    cache = model.cache_nbytes() / 2**20
    model.reset_cache()
    return dict(seconds=statistics.median(times), passes=info.passes_per_image, peak_MiB=round(peak, 1),
                kv_cache_MiB=round(cache, 3), accepted_per_pass=getattr(info, "mean_accepted", None))


def _child(conn, *args) -> None:
    try:
        torch.set_num_threads(args[-1])
        conn.send(_row(*args[:-1]))
    except BaseException as err:  # report, do not hang the parent
        conn.send({"error": f"{type(err).__name__}: {err}"})
    conn.close()


def _isolated(*args) -> dict:
    # forkserver, not fork: a child forked from a parent whose OpenMP pool is running (after load_state_dict, say)
    # deadlocks in its first matmul. The server imports torch once and never runs an op, so children start clean.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "orderlab.decoding.decode"])
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, *args, torch.get_num_threads()))
    proc.start()
    out = parent.recv()
    proc.join()
    if "error" in out:
        raise RuntimeError(f"benchmark row failed: {out['error']}")
    return out


def bench(what: str, out: str = "runs/bench", grid: int = 16, depth: int = 6, dim: int = 256, heads: int = 4,
          vocab: int = 1024, batches: tuple[int, ...] = (1, 64), repeats: int = 3, device: str = "cpu",
          attention: str = "sdpa", archs: tuple[str, ...] | None = None, ckpt: str | None = None,
          precision: str = "fp32") -> None:
    """Benchmark decoding of one model at T = N (raster, one token per step) and T = N/4, N/8, N/16 (random order).

    Args:
        what: the benchmark to run ("decode").
        out: output folder (bench.json, bench.md).
        grid: H = W of the token grid (ignored with ckpt).
        depth: layers of the benchmarked model.
        dim: width D.
        heads: attention heads.
        vocab: V.
        batches: batch sizes (1 = latency, 64 = throughput).
        repeats: timed runs per row (median reported), after one warm-up run.
        device: "cpu" or "cuda".
        attention: attention kernel, "sdpa" or "flex".
        archs: registered backbones to compare at equal depth/width (None: every registered one); KV-cache ratios
            are against the first.
        ckpt: benchmark a trained checkpoint instead (its own arch and size; adds Jacobi rows for raster decoding).
        precision: fp32, or bf16/fp16 autocast (the GPU setting).
    """
    if what != "decode":
        raise ValueError(f"unknown benchmark {what!r}; choose one of ['decode']")
    for key, value in (("repeats", repeats), *((f"batches[{i}]", b) for i, b in enumerate(batches))):
        check_positive_int(value, key)
    archs = tuple(list_backbones() if archs is None else archs)
    if not batches or not archs:
        raise ValueError(f"batches={list(batches)} and archs={list(archs)} must not be empty")
    torch.manual_seed(0)
    models = []
    if ckpt:
        from orderlab.train.checkpoint import load_checkpoint

        loaded = load_checkpoint(ckpt)
        models.append((loaded.config.arch, loaded.model))
    else:
        for arch in archs:
            cfg = ModelConfig(vocab_size=vocab, height=grid, width=grid, num_classes=10, depth=depth, dim=dim,
                              heads=heads, arch=arch, attention=attention)  # resolves old names (flex -> stream)
            cfg = dataclasses.replace(cfg, mutual=get_backbone(cfg.arch).mutual_queries)
            models.append((cfg.arch, build_model(cfg)))
    rows = []
    for arch, model in models:
        n = model.config.num_tokens
        for batch in batches:
            plain = [("raster", n, None)] + [("random", t, None) for t in (n // 4, n // 8, n // 16) if t >= 1]
            base = None
            for schedule, steps, decoder in plain + _jacobi_rows(ckpt, n):
                r = _isolated(model, schedule, steps, batch, repeats, device, decoder, precision)
                base = base or r["seconds"]
                rows.append(dict(arch=arch, batch=batch, schedule=schedule, steps=steps,
                                 decoder=(decoder or {}).get("decoder", "plan"), **r,
                                 images_per_s=round(batch / r["seconds"], 2),
                                 speedup_vs_T_N=round(base / r["seconds"], 2)))
                rows[-1]["seconds"] = round(r["seconds"], 4)
                print({k: v for k, v in rows[-1].items() if v is not None}, flush=True)
    cfg0 = models[0][1].config
    meta = dict(device=device if device == "cpu" else torch.cuda.get_device_name(), torch=torch.__version__,
                threads=torch.get_num_threads(), grid=[cfg0.height, cfg0.width], depth=cfg0.depth, dim=cfg0.dim,
                heads=cfg0.heads, vocab=cfg0.vocab_size, attention=cfg0.attention, repeats=repeats, ckpt=ckpt,
                precision=precision,
                note="seconds: median wall time of one generate() call; peak_MiB: CUDA max allocated, or CPU "
                     "peak-RSS growth during the row; kv_cache: bytes of all KV caches at batch size")
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(str(Path(out) / "bench.json"),
                       json.dumps(dict(meta=meta, rows=rows, ratios=ratios(rows)), indent=2).encode())
    atomic_write_bytes(str(Path(out) / "bench.md"), _markdown(meta, rows).encode())
    print(f"wrote {out}/bench.json and {out}/bench.md")


def _jacobi_rows(ckpt: str | None, n: int) -> list[tuple[str, int, dict]]:
    """SJD/PJD rows (raster model, training-free parallel decoding) where a trained checkpoint is benchmarked."""
    if not ckpt:
        return []  # acceptance on an untrained model says nothing
    return [("raster", n, {"decoder": "sjd", "decoder_args": {"window": 8}}),
            ("raster", n, {"decoder": "pjd", "decoder_args": {"window": 4}})]


def ratios(rows: list[dict]) -> list[dict]:
    """The ratios the benchmark exists for, from rows of this one run: time(T=N)/time(T=N/k) per backbone and
    batch, and each backbone's KV cache against the first backbone's of the run."""
    out = []
    for (arch, batch) in dict.fromkeys((r["arch"], r["batch"]) for r in rows):
        rs = [r for r in rows if r["arch"] == arch and r["batch"] == batch and r["decoder"] == "plan"]
        base = next((r for r in rs if r["schedule"] == "raster"), None)
        if base is None:
            continue
        n = base["steps"]
        for r in rs:
            if r["schedule"] == "random":
                out.append(dict(what=f"time(T=N)/time(T=N/{n // r['steps']})", arch=arch, batch=batch,
                                value=round(base["seconds"] / r["seconds"], 2), ideal=round(n / r["steps"], 2)))
        for r in rows:
            if r["arch"] == arch and r["batch"] == batch and r["decoder"] != "plan":
                out.append(dict(what=f"time(raster)/time({r['decoder']})", arch=arch, batch=batch,
                                value=round(base["seconds"] / r["seconds"], 2),
                                ideal=round(n / r["passes"], 2)))
    first = rows[0]["arch"] if rows else None
    ref = {r["batch"]: r["kv_cache_MiB"] for r in rows if r["arch"] == first}
    for r in rows:
        if r["arch"] != first and r["batch"] in ref and r["schedule"] == "raster" and r["decoder"] == "plan":
            out.append(dict(what=f"KV cache {r['arch']}/{first}", arch=r["arch"], batch=r["batch"],
                            value=round(r["kv_cache_MiB"] / ref[r["batch"]], 3), ideal=None))
    return out


def _markdown(meta: dict, rows: list[dict]) -> str:
    head = (f"Decode benchmark on {meta['device']} ({meta['grid'][0]}x{meta['grid'][1]} grid, {meta['depth']} layers "
            f"x {meta['dim']} wide, V={meta['vocab']}, attention={meta['attention']}, torch {meta['torch']}, "
            f"{meta['threads']} threads, {meta['precision']}, median of {meta['repeats']})\n\n")
    cols = ["arch", "batch", "schedule", "decoder", "steps", "passes", "seconds", "images_per_s", "speedup_vs_T_N",
            "peak_MiB", "kv_cache_MiB"]
    body = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    for r in rows:
        body += "| " + " | ".join(str(r.get(c)) for c in cols) + " |\n"
    body += "\n| ratio (this run) | arch | batch | measured | ideal (step ratio) |\n|---|---|---|---|---|\n"
    for q in ratios(rows):
        body += f"| {q['what']} | {q['arch']} | {q['batch']} | {q['value']} | {q['ideal'] or ''} |\n"
    return head + body
