"""Decode cost against grid size (``orderlab bench decode --grids``): growth exponents and the bandwidth bound.

How a quantity grows with the number of tokens N is the least-squares slope of log(quantity) against log(N) over
the grids of one run (1: linear, 2: quadratic). The memory-bandwidth bound of a decode step is the time to read
what the step must read, once: the weights of every layer (embedding tables are only gathered, so they are left
out) plus the filled part of every KV cache at that step, divided by the machine's memory bandwidth, measured once
per run by :func:`memory_bandwidth`.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

__all__ = ["loglog_slope", "fit_exponents", "memory_bandwidth", "weight_bytes", "FIT_QUANTITIES"]

FIT_QUANTITIES = {"seconds_per_image": "time per image", "kv_cache_MiB": "KV cache", "peak_MiB": "peak memory"}
"""Row field -> the name of its fit in tables."""


def loglog_slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y against log x over the points with x, y > 0; None with fewer than two x."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y is not None and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    mx = statistics.fmean(p[0] for p in pts)
    my = statistics.fmean(p[1] for p in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def fit_exponents(rows: list[dict]) -> list[dict]:
    """Per (arch, batch, T rule) with two grids or more: the exponent of N in time per image, KV cache and peak
    memory (None where fewer than two rows have a positive value, e.g. a peak below the RSS resolution)."""
    out = []
    keys = dict.fromkeys((r["arch"], r["batch"], r["rule"]) for r in rows if r.get("decoder", "plan") == "plan")
    for arch, batch, rule in keys:
        rs = [r for r in rows if (r["arch"], r["batch"], r["rule"]) == (arch, batch, rule)
              and r.get("decoder", "plan") == "plan"]
        ns = [r["N"] for r in rs]
        if len(set(ns)) < 2:
            continue
        for field, name in FIT_QUANTITIES.items():
            slope = loglog_slope(ns, [r[field] for r in rs])
            out.append(dict(quantity=name, field=field, arch=arch, batch=batch, T=rule, points=len(rs),
                            N=sorted(set(ns)), exponent=None if slope is None else round(slope, 3)))
    return out


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters a forward reads in full: all but the embedding tables (gathered a row at a time)."""
    skip = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in skip)


def memory_bandwidth(device: str = "cpu", mib: int = 256, repeats: int = 5) -> dict:
    """The machine's memory bandwidth: median time to sum (read) and to copy (read + write) a ``mib`` MiB float32
    tensor. ``bytes_per_s`` is the better of the two, the bound a decode step is held to."""
    dev = torch.device(device)
    a = torch.ones(mib * 2**20 // 4, device=dev)
    b = torch.empty_like(a)
    nbytes = a.numel() * 4

    def timed(fn) -> float:
        fn()  # warm-up (first touch of the pages)
        ts = []
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    read = nbytes / timed(lambda: a.sum())
    copy = 2 * nbytes / timed(lambda: b.copy_(a))
    return dict(read_GiB_s=round(read / 2**30, 2), copy_GiB_s=round(copy / 2**30, 2), bytes_per_s=max(read, copy),
                tensor_MiB=mib, threads=torch.get_num_threads())
