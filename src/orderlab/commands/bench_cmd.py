"""``orderlab bench decode``: speed and memory of parallel decoding at several step budgets, in one run."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from orderlab.backbone import ModelConfig, build_model
from orderlab.decode import generate


def _time_generate(model, steps: int, batch: int, repeats: int, device) -> tuple[float, int]:
    labels = torch.arange(batch, device=device) % model.config.num_classes
    generate(model, "raster" if steps == model.config.num_tokens else "random", steps, labels, seed=0)  # warm-up
    times, cache = [], 0
    for r in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        generate(model, "raster" if steps == model.config.num_tokens else "random", steps, labels, seed=r)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    model.setup_cache(batch)
    cache = model.cache_nbytes()
    model.reset_cache()
    return statistics.median(times), cache


def bench(what: str, out: str = "runs/bench", grid: int = 16, depth: int = 6, dim: int = 256,
          heads: int = 4, vocab: int = 1024, batches: tuple[int, ...] = (1, 64), repeats: int = 3,
          device: str = "cpu") -> None:
    """Benchmark decoding of one model at T = N, N/4, N/8, N/16; writes bench.json and bench.md.

    Args:
        what: the benchmark to run (only "decode" so far).
        out: output folder.
        grid: H = W of the token grid.
        depth: layers of the benchmarked model.
        dim: width D.
        heads: attention heads.
        vocab: V.
        batches: batch sizes to measure (1 = latency, 64 = throughput).
        repeats: timed runs per row (the median is reported), after one warm-up run.
        device: "cpu" or "cuda".
    """
    if what != "decode":
        raise SystemExit(f"orderlab bench: unknown benchmark {what!r}; choose one of ['decode']")
    dev = torch.device(device)
    torch.manual_seed(0)
    rows = []
    n = grid * grid
    for arch in ("flex", "decoupled"):
        cfg = ModelConfig(vocab_size=vocab, height=grid, width=grid, num_classes=10, depth=depth, dim=dim,
                          heads=heads, arch=arch, mutual=arch == "flex")
        model = build_model(cfg).to(dev).eval()
        for batch in batches:
            base = None
            for steps in (n, n // 4, n // 8, n // 16):
                sec, cache = _time_generate(model, steps, batch, repeats, dev)
                base = base or sec
                rows.append(dict(arch=arch, batch=batch, steps=steps, seconds=round(sec, 4),
                                 images_per_s=round(batch / sec, 2), speedup_vs_T_N=round(base / sec, 2),
                                 kv_cache_MiB=round(cache / 2**20, 3)))
                print(rows[-1], flush=True)
    meta = dict(device=str(dev), torch=torch.__version__, threads=torch.get_num_threads(), grid=[grid, grid],
                depth=depth, dim=dim, heads=heads, vocab=vocab, repeats=repeats,
                note="seconds = median wall time of one generate() call; kv_cache = bytes of all KV caches "
                     "at batch size (decoupled: pass-1 layers + one shared K/V)")
    os.makedirs(out, exist_ok=True)
    _atomic_write(Path(out) / "bench.json", json.dumps(dict(meta=meta, rows=rows), indent=2))
    head = "| arch | batch | steps T | seconds | images/s | speed-up vs T=N | KV cache MiB |\n|---|---|---|---|---|---|---|\n"
    body = "".join(f"| {r['arch']} | {r['batch']} | {r['steps']} | {r['seconds']} | {r['images_per_s']} | "
                   f"{r['speedup_vs_T_N']}x | {r['kv_cache_MiB']} |\n" for r in rows)
    _atomic_write(Path(out) / "bench.md", f"Decode benchmark on {meta['device']} ({grid}x{grid} grid, "
                  f"{depth}x{dim} model, torch {torch.__version__}, {meta['threads']} threads)\n\n" + head + body)
    print(f"wrote {out}/bench.json and {out}/bench.md")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
