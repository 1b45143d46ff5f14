"""``orderlab bench``: speed and memory of parallel decoding (``bench decode``) and of training (``bench train``).

Every row runs in its own process (from a fork server), so its peak memory is its own: on CUDA
``max_memory_allocated``, on CPU the growth of the process's peak resident set over its size at the start of the row.
Ratios compare rows of one run on one machine; wall times on a shared machine are noisy, so each row reports the
median of repeats.

- ``bench decode``: one model per backbone at T = N (raster, one token per step) and T = N/4, N/8, N/16 (random
  order), at batch 1 and 64. With ``--grids '[8,16,32]'`` it runs T = N and T = N/8 on every grid instead and fits
  how time per image, KV cache and peak memory grow with N (:mod:`orderlab.analysis.bench_grid`). Every row also
  states the memory-bandwidth bound of a decode step (weights plus the KV cache read at that step, over the
  machine's bandwidth, measured once per run) and how far the measured step time is from it.
- ``bench train``: training throughput (tokens/s) and peak memory of every backbone against a plain causal LM of
  equal depth and width on the same tokens (:mod:`orderlab.analysis.bench_train`), on 8x8, 16x16 and 32x32 grids,
  with the ratios against the goals and a profile of where the query-stream model's time goes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path

import torch

from orderlab.analysis.bench_grid import FIT_QUANTITIES, fit_exponents, memory_bandwidth
from orderlab.analysis.bench_plan import LPD_SETTINGS, PLAN_GOAL, plan_markdown, plan_ratios, plan_row
from orderlab.analysis.bench_rows import isolated_decode, run_isolated
from orderlab.analysis.bench_train import CAUSAL, GOALS, profile_row, train_markdown, train_ratios, train_row
from orderlab.checks import check_positive_int
from orderlab.data.atomic import atomic_write_bytes
from orderlab.model.config import ModelConfig
from orderlab.model.registry import build_model, get_backbone, list_backbones
from orderlab.schedule import get_schedule
from orderlab.schedules.locality import natural_locality_steps

# each row in its own process (orderlab.analysis.bench_rows); the short names are what the rows below call
_run_isolated, _isolated = run_isolated, isolated_decode


@dataclasses.dataclass
class _Settings:
    """The arguments of :func:`bench`, checked, as every benchmark kind gets them."""

    out: str
    grid: int
    grids: tuple[int, ...] | None
    depth: int
    dim: int
    heads: int
    vocab: int
    batches: tuple[int, ...]
    repeats: int
    device: str
    attention: str
    archs: tuple[str, ...]
    ckpt: str | None
    precision: str
    budget_divisor: int
    profile: bool
    train_schedules: tuple[str, ...]

    def config(self, arch: str, grid: int) -> ModelConfig:
        cfg = ModelConfig(vocab_size=self.vocab, height=grid, width=grid, num_classes=10, depth=self.depth,
                          dim=self.dim, heads=self.heads, arch=arch, attention=self.attention)  # flex -> stream
        return dataclasses.replace(cfg, mutual=get_backbone(cfg.arch).mutual_queries)

    def machine(self) -> dict:
        return dict(device=self.device if self.device == "cpu" else torch.cuda.get_device_name(),
                    torch=torch.__version__, threads=torch.get_num_threads())


def bench(what: str, out: str = "runs/bench", grid: int = 16, grids: list[int] | None = None, depth: int = 6,
          dim: int = 256, heads: int = 4, vocab: int = 1024, batches: tuple[int, ...] | None = None, repeats: int = 3,
          device: str = "cpu", attention: str = "sdpa", archs: tuple[str, ...] | None = None, ckpt: str | None = None,
          precision: str = "fp32", budget_divisor: int = 4, profile: bool = True,
          train_schedules: tuple[str, ...] = ("random", "locality")) -> None:
    """Benchmark decoding (T = N, N/4, N/8, N/16; or T = N, N/8 on several grids) or training (against a causal LM).

    Args:
        what: the benchmark to run: "decode" (writes bench.json, bench.md), "train" (bench_train.json,
            bench_train.md) or "plan" (locality planning against decoding at LPD's settings: bench_plan.json,
            bench_plan.md; ``grids`` picks other grids at their natural locality budget).
        out: output folder.
        grid: decode: H = W of the token grid (ignored with ckpt) when ``grids`` is not given.
        grids: H = W of each grid to run, e.g. [8, 16, 32]. decode: rows at T = N and T = N/8 on each, and the
            exponents of N in time per image, KV cache and peak memory (None: ``grid`` alone, with the T = N, N/4,
            N/8, N/16 rows). train: default [8, 16, 32].
        depth: layers of the benchmarked models.
        dim: width D.
        heads: attention heads.
        vocab: V.
        batches: batch sizes. decode: default [1, 64] (latency, throughput); train: default [16]; plan: [64].
        repeats: timed runs per row (median reported): decode calls after one warm-up call, training steps after one
            warm-up step.
        device: "cpu" or "cuda".
        attention: attention kernel of the backbones, "sdpa" or "flex" (the causal LM always uses SDPA's is_causal).
        archs: registered backbones to compare at equal depth/width (None: every registered one); KV-cache ratios
            are against the first.
        ckpt: decode: benchmark a trained checkpoint instead (its own arch and size; adds Jacobi rows for raster
            decoding).
        precision: fp32, or bf16/fp16 autocast (the GPU setting).
        budget_divisor: train: the plans are random orders at T = N / budget_divisor steps (LPD trains at several
            budgets; N/4 is the validation budget).
        profile: train: also profile one step of the models with a throughput goal (the query-stream and the
            decoupled model) and of the causal LM on the grid nearest 16x16: phase times, time by op category, top
            ops.
        train_schedules: train: the schedules whose plans each backbone trains on (the first is the reference of the
            causal-LM ratios; the others are timed against it, planning included, as a training step pays it).
    """
    run = BENCHMARKS.get(what)
    if run is None:
        raise ValueError(f"unknown benchmark {what!r}; choose one of {sorted(BENCHMARKS)}")
    batches = tuple(DEFAULT_BATCHES[what] if batches is None else batches)
    grids = None if grids is None else tuple(grids)
    for key, value in (("repeats", repeats), ("grid", grid), ("budget_divisor", budget_divisor),
                       *((f"batches[{i}]", b) for i, b in enumerate(batches)),
                       *((f"grids[{i}]", g) for i, g in enumerate(grids or ()))):
        check_positive_int(value, key)
    if grids is not None and not grids:
        raise ValueError("grids=[] must name at least one grid (or be left out)")
    archs = tuple(list_backbones() if archs is None else archs)
    if not batches or not archs:
        raise ValueError(f"batches={list(batches)} and archs={list(archs)} must not be empty")
    for arch in archs:
        get_backbone(arch)  # an unknown name lists the choices
    train_schedules = tuple(train_schedules)
    if not train_schedules:
        raise ValueError("train_schedules=[] must name at least one schedule")
    for name in train_schedules:
        get_schedule(name)  # an unknown name lists the choices
    run(_Settings(out=out, grid=grid, grids=grids, depth=depth, dim=dim, heads=heads, vocab=vocab, batches=batches,
                  repeats=repeats, device=device, attention=attention, archs=archs, ckpt=ckpt, precision=precision,
                  budget_divisor=budget_divisor, profile=bool(profile), train_schedules=train_schedules))


def _write(out: str, stem: str, data: dict, markdown: str) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(str(Path(out) / f"{stem}.json"), json.dumps(data, indent=2).encode())
    atomic_write_bytes(str(Path(out) / f"{stem}.md"), markdown.encode())
    print(f"wrote {out}/{stem}.json and {out}/{stem}.md")


# ------------------------------------------------------------------------------------------------------ decode
# (schedule, T rule, N divided by): the single-grid default, and the rows of a run over several grids
_SINGLE_GRID_ROWS = (("raster", "N", 1), ("random", "N/4", 4), ("random", "N/8", 8), ("random", "N/16", 16))
_GRIDS_ROWS = (("raster", "N", 1), ("random", "N/8", 8))


def _bench_decode(s: _Settings) -> None:
    if s.ckpt and s.grids is not None:
        raise ValueError(f"grids={list(s.grids)} does not apply with ckpt={s.ckpt!r} (a checkpoint has its own grid)")
    torch.manual_seed(0)
    models = []
    if s.ckpt:
        from orderlab.train.checkpoint import load_checkpoint

        loaded = load_checkpoint(s.ckpt)
        models.append((loaded.config.arch, loaded.model))
    else:
        for g in s.grids or (s.grid,):
            for arch in s.archs:
                cfg = s.config(arch, g)
                models.append((cfg.arch, build_model(cfg)))
    plan_rows = _SINGLE_GRID_ROWS if s.grids is None else _GRIDS_ROWS
    bandwidth = _run_isolated(memory_bandwidth, s.device)
    print({"memory_bandwidth_GiB_s": {k: bandwidth[k] for k in ("read_GiB_s", "copy_GiB_s")}}, flush=True)
    rows = []
    for arch, model in models:
        n = model.config.num_tokens
        for batch in s.batches:
            plain = [(sched, rule, n // div, None) for sched, rule, div in plan_rows if n // div >= 1]
            base = None
            for schedule, rule, steps, decoder in plain + [("raster", "N", n, d) for d in _jacobi_rows(s.ckpt)]:
                r = _isolated(model, schedule, steps, batch, s.repeats, s.device, decoder, s.precision)
                base = base or r["seconds"]
                kind = (decoder or {}).get("decoder", "plan")
                bound = None
                if kind == "plan":  # one forward per step: each step reads the weights and the KV cache once
                    bound = (r["weight_MiB"] + r["kv_read_MiB"]) * 2**20 / bandwidth["bytes_per_s"]
                step = r["seconds"] / r["passes"] if kind == "plan" else None
                rows.append(dict(arch=arch, grid=model.config.height, N=n, batch=batch, schedule=schedule, rule=rule,
                                 steps=steps, decoder=kind, **r, seconds_per_image=r["seconds"] / batch,
                                 images_per_s=round(batch / r["seconds"], 2),
                                 speedup_vs_T_N=round(base / r["seconds"], 2),
                                 step_ms=None if step is None else round(step * 1e3, 3),
                                 # significant digits: a tiny model's bound is ~1e-3 ms, where 4 decimals are 5 %
                                 bound_ms=None if bound is None else float(f"{bound * 1e3:.4g}"),
                                 x_bound=None if bound is None else round(step / bound, 1)))
                rows[-1]["seconds"] = round(r["seconds"], 4)
                rows[-1]["seconds_per_image"] = round(rows[-1]["seconds_per_image"], 6)
                print({k: v for k, v in rows[-1].items() if v is not None}, flush=True)
    cfg0 = models[0][1].config
    meta = dict(**s.machine(), grid=[cfg0.height, cfg0.width],
                grids=sorted({m.config.height for _, m in models}), depth=cfg0.depth, dim=cfg0.dim,
                heads=cfg0.heads, vocab=cfg0.vocab_size, attention=cfg0.attention, repeats=s.repeats, ckpt=s.ckpt,
                precision=s.precision, memory_bandwidth=bandwidth,
                note="seconds: median wall time of one generate() call; peak_MiB: CUDA max allocated, or CPU "
                     "peak-RSS growth during the row; kv_cache: bytes of all KV caches at batch size; step_ms: "
                     "seconds / passes; bound_ms: (weights read per step, embeddings left out, + the KV cache filled "
                     "at that step, mean over steps) / memory bandwidth; x_bound: step_ms / bound_ms; fits: "
                     "least-squares slope of log(quantity) against log(N) over the grids")
    fits = fit_exponents(rows)
    _write(s.out, "bench", dict(meta=meta, rows=rows, ratios=ratios(rows), fits=fits), _markdown(meta, rows, fits))


def _jacobi_rows(ckpt: str | None) -> list[dict]:
    """SJD/PJD rows (raster model, training-free parallel decoding) where a trained checkpoint is benchmarked."""
    if not ckpt:
        return []  # acceptance on an untrained model says nothing
    return [{"decoder": "sjd", "decoder_args": {"window": 8}}, {"decoder": "pjd", "decoder_args": {"window": 4}}]


def ratios(rows: list[dict]) -> list[dict]:
    """The ratios the benchmark exists for, from rows of this one run: time(T=N)/time(T=N/k) per backbone, grid and
    batch, and each backbone's KV cache against the first backbone's of the run (same grid and batch)."""
    out = []
    for (arch, grid, batch) in dict.fromkeys((r["arch"], r.get("grid"), r["batch"]) for r in rows):
        mine = [r for r in rows if (r["arch"], r.get("grid"), r["batch"]) == (arch, grid, batch)]
        rs = [r for r in mine if r["decoder"] == "plan"]
        base = next((r for r in rs if r["schedule"] == "raster"), None)
        if base is None:
            continue
        n = base["steps"]
        for r in rs:
            if r["schedule"] == "random":
                out.append(dict(what=f"time(T=N)/time(T=N/{n // r['steps']})", arch=arch, grid=grid, batch=batch,
                                value=round(base["seconds"] / r["seconds"], 2), ideal=round(n / r["steps"], 2)))
        for r in mine:
            if r["decoder"] != "plan":
                out.append(dict(what=f"time(raster)/time({r['decoder']})", arch=arch, grid=grid, batch=batch,
                                value=round(base["seconds"] / r["seconds"], 2),
                                ideal=round(n / r["passes"], 2)))
    first = rows[0]["arch"] if rows else None
    ref = {(r["batch"], r.get("grid")): r["kv_cache_MiB"] for r in rows if r["arch"] == first}
    for r in rows:
        key = (r["batch"], r.get("grid"))
        if r["arch"] != first and key in ref and r["schedule"] == "raster" and r["decoder"] == "plan":
            out.append(dict(what=f"KV cache {r['arch']}/{first}", arch=r["arch"], grid=r.get("grid"), batch=r["batch"],
                            value=round(r["kv_cache_MiB"] / ref[key], 3), ideal=None))
    return out


def _markdown(meta: dict, rows: list[dict], fits: list[dict]) -> str:
    grids = meta["grids"]
    where = (f"{meta['grid'][0]}x{meta['grid'][1]} grid" if len(grids) == 1
             else "grids " + ", ".join(f"{g}x{g}" for g in grids))
    bw = meta["memory_bandwidth"]
    head = (f"Decode benchmark on {meta['device']} ({where}, {meta['depth']} layers "
            f"x {meta['dim']} wide, V={meta['vocab']}, attention={meta['attention']}, torch {meta['torch']}, "
            f"{meta['threads']} threads, {meta['precision']}, median of {meta['repeats']})\n\n")
    cols = ["arch", "grid", "batch", "schedule", "decoder", "steps", "passes", "seconds", "seconds_per_image",
            "images_per_s", "speedup_vs_T_N", "peak_MiB", "kv_cache_MiB", "step_ms", "bound_ms", "x_bound"]
    body = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    for r in rows:
        body += "| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |\n"
    body += "\n| ratio (this run) | arch | batch | grid | measured | ideal (step ratio) |\n|---|---|---|---|---|---|\n"
    for q in ratios(rows):
        body += (f"| {q['what']} | {q['arch']} | {q['batch']} | {q['grid']} | {q['value']} | "
                 f"{q['ideal'] or ''} |\n")
    ones = [r["x_bound"] for r in rows if r["batch"] == 1 and r.get("x_bound") is not None]
    body += (f"\nMemory-bandwidth bound of a decode step: the weights (embedding tables left out) and the KV cache "
             f"filled at that step, read once at {bw['read_GiB_s']} GiB/s (sum) / {bw['copy_GiB_s']} GiB/s (copy) "
             f"measured here, the better one used (bound_ms).")
    if ones:
        body += (f" Batch-1 steps run at {min(ones)}x to {max(ones)}x that bound (x_bound; median "
                 f"{statistics.median(ones)}x).")
    body += "\n"
    if fits:
        names = list(FIT_QUANTITIES.values())
        body += ("\n| arch | batch | T | exponent of N: " + " | ".join(names) + " | grids (N) |\n|"
                 + "---|" * (len(names) + 4) + "\n")
        table: dict[tuple, dict] = {}
        for f in fits:
            table.setdefault((f["arch"], f["batch"], f["T"], tuple(f["N"])), {})[f["quantity"]] = f["exponent"]
        for (arch, batch, rule, ns), got in table.items():
            cells = " | ".join("" if got.get(n) is None else str(got[n]) for n in names)
            body += f"| {arch} | {batch} | {rule} | {cells} | {list(ns)} |\n"
    return head + body


# ------------------------------------------------------------------------------------------------------- train
def _train_steps(grid: int, divisor: int) -> int:
    steps = grid * grid // divisor
    if steps < 1:
        raise ValueError(f"budget_divisor={divisor} leaves no step on the {grid}x{grid} grid (N={grid * grid})")
    return steps


def _bench_train(s: _Settings) -> None:
    if s.ckpt:
        raise ValueError(f"ckpt={s.ckpt!r} applies to bench decode only")
    grids = s.grids or TRAIN_GRIDS
    for g in grids:
        _train_steps(g, s.budget_divisor)
    rows = []
    for g in grids:
        steps = _train_steps(g, s.budget_divisor)
        for batch in s.batches:
            runs = [(CAUSAL, None)] + [(a, sched) for a in s.archs for sched in s.train_schedules]
            for arch, sched in runs:
                cfg = s.config(s.archs[0] if arch == CAUSAL else arch, g)
                r = _run_isolated(train_row, arch, cfg, batch, steps, s.repeats, s.device, s.precision,
                                  sched or "random")
                rows.append(dict(arch=arch if arch == CAUSAL else cfg.arch, schedule=sched, grid=g, N=g * g,
                                 batch=batch, steps=None if arch == CAUSAL else steps, rows=r["rows"],
                                 params=r["params"],
                                 seconds=round(r["seconds"], 4), tokens_per_s=round(r["tokens_per_s"], 1),
                                 peak_MiB=r["peak_MiB"], loss=r["loss"]))
                print(rows[-1], flush=True)
    profiles = []
    if s.profile:
        g = min(grids, key=lambda x: (abs(math.log(x / 16)), x))
        for arch in (CAUSAL, *(a for a in s.archs if a in GOALS)):
            cfg = s.config(s.archs[0] if arch == CAUSAL else arch, g)
            p = _run_isolated(profile_row, arch, cfg, s.batches[0], _train_steps(g, s.budget_divisor), s.device,
                              s.precision)
            profiles.append(p)
            print({k: p[k] for k in ("arch", "grid", "step_s", "phases_s")}, flush=True)
    meta = dict(**s.machine(), grids=list(grids), depth=s.depth, dim=s.dim, heads=s.heads, vocab=s.vocab,
                attention=s.attention, precision=s.precision, repeats=s.repeats, warmup=1, batches=list(s.batches),
                budget_divisor=s.budget_divisor, goals=GOALS,
                train_schedules=list(s.train_schedules),
                note=f"one step = plans (of the row's schedule, T = N/{s.budget_divisor}) and their rows and mask, forward, "
                     "cross-entropy, backward, AdamW; seconds: median step time; tokens_per_s = batch * N / "
                     f"seconds; peak_MiB: CUDA max allocated, or CPU peak-RSS growth from after the model was built; "
                     f"{CAUSAL}: the same blocks over [cond] + x[:-1] with SDPA is_causal and no mask tensor")
    q = train_ratios(rows)
    _write(s.out, "bench_train", dict(meta=meta, rows=rows, ratios=q, profiles=profiles),
           train_markdown(meta, rows, q, profiles))


def _bench_plan(s: _Settings) -> None:
    if s.ckpt:
        raise ValueError(f"ckpt={s.ckpt!r} applies to bench decode only")
    settings = LPD_SETTINGS if s.grids is None else tuple((g, natural_locality_steps(g * g)) for g in s.grids)
    torch.manual_seed(0)
    rows = []
    for g, steps in settings:
        for batch in s.batches:
            for how in ("batched", "reference"):
                r = _run_isolated(plan_row, g, steps, batch, s.repeats, how)
                rows.append(dict(what=f"plan {how}", arch=None, grid=g, steps=steps, batch=batch,
                                 seconds=round(r["seconds"], 4), per_plan_ms=round(1000 * r["seconds"] / batch, 3)))
                print(rows[-1], flush=True)
            for arch in s.archs:
                cfg = s.config(arch, g)
                r = _isolated(build_model(cfg), "random", steps, batch, s.repeats, s.device, None, s.precision)
                rows.append(dict(what="decode", arch=cfg.arch, grid=g, steps=steps, batch=batch,
                                 seconds=round(r["seconds"], 4), per_plan_ms=None))
                print(rows[-1], flush=True)
    meta = dict(**s.machine(), depth=s.depth, dim=s.dim, heads=s.heads, vocab=s.vocab, repeats=s.repeats,
                batches=list(s.batches), settings=[list(x) for x in settings], goal=PLAN_GOAL,
                note="seconds: median wall time after one warm-up; plan rows: locality plans for the batch (batched "
                     "planner, or the per-sample reference; identical plans); decode rows: generate() of the batch "
                     "in random order at the same T (no planning cost inside)")
    q = plan_ratios(rows)
    _write(s.out, "bench_plan", dict(meta=meta, rows=rows, ratios=q), plan_markdown(meta, rows, q))


TRAIN_GRIDS = (8, 16, 32)
"""The grids ``bench train`` runs by default (H = W)."""
DEFAULT_BATCHES: dict[str, tuple[int, ...]] = {"decode": (1, 64), "train": (16,), "plan": (64,)}
BENCHMARKS: dict[str, Callable[[_Settings], None]] = {"decode": _bench_decode, "train": _bench_train,
                                                     "plan": _bench_plan}
"""``orderlab bench WHAT``: the benchmark kinds."""
__all__ = ["bench", "ratios", "BENCHMARKS", "FIT_QUANTITIES"]
