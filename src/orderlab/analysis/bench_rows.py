"""Benchmark rows, each in its own process: one decode row (:func:`decode_row`) and the process runner.

Every row runs in a fresh process from a fork server, so its peak memory is its own: on CUDA
``max_memory_allocated``, on CPU the growth of the process's peak resident set over its size at the start of the row.
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import statistics
import time
from collections.abc import Callable

import torch

from orderlab.analysis.bench_grid import weight_bytes
from orderlab.decoding.decode import generate

__all__ = ["decode_row", "run_isolated", "isolated_decode"]


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def decode_row(model, schedule: str, steps: int, batch: int, repeats: int, device: str, decoder: dict | None,
         precision: str = "fp32") -> dict:
    """Warm up once, then time ``repeats`` generate() calls; returns times, passes, peak memory, the KV cache and
    what one decode step reads (the weights, and the KV cache at that step, averaged over the steps)."""
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
    cache = model.cache_nbytes()
    per_slot = cache / model.cache_slots()  # bytes of one cache entry, all layers, K and V, the whole batch
    model.reset_cache()
    kv_read = statistics.fmean(info.kv_lengths) * per_slot if info.kv_lengths else 0.0
    return dict(seconds=statistics.median(times), passes=info.passes_per_image, peak_MiB=round(peak, 1),
                kv_cache_MiB=round(cache / 2**20, 3), accepted_per_pass=getattr(info, "mean_accepted", None),
                kv_read_MiB=round(kv_read / 2**20, 6), weight_MiB=round(weight_bytes(model) / 2**20, 4))


def _child(conn, fn, args, threads) -> None:
    try:
        torch.set_num_threads(threads)
        conn.send(fn(*args))
    except BaseException as err:  # report, do not hang the parent
        conn.send({"error": f"{type(err).__name__}: {err}"})
    conn.close()


def run_isolated(fn: Callable[..., dict], *args) -> dict:
    """``fn(*args)`` in a fresh process with this one's thread count; its dict comes back, its error is raised."""
    # forkserver, not fork: a child forked from a parent whose OpenMP pool is running (after load_state_dict, say)
    # deadlocks in its first matmul. The server imports torch once and never runs an op, so children start clean.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "orderlab.decoding.decode", "orderlab.analysis.bench_rows",
                               "orderlab.analysis.bench_train"])
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, torch.get_num_threads()))
    proc.start()
    child.close()  # the child holds its own end now: a child that dies without a word ends recv() with EOFError
    try:
        out = parent.recv()
    except EOFError:
        proc.join()
        raise RuntimeError(f"benchmark row failed: its process exited with code {proc.exitcode} and sent nothing "
                           "(a script that starts rows needs an `if __name__ == '__main__':` guard)") from None
    proc.join()
    if "error" in out:
        raise RuntimeError(f"benchmark row failed: {out['error']}")
    return out


def isolated_decode(*args) -> dict:
    """One decode row (:func:`decode_row`) in its own process."""
    return run_isolated(decode_row, *args)
