"""Training throughput and peak memory of the backbones against a plain causal LM (``orderlab bench train``).

The baseline is what a user of a plain LM gets: a token embedding, the same LlamaGen blocks as the backbones
(:class:`~orderlab.model.layers.Block`: RMSNorm, attention with 2D RoPE, SwiGLU; equal depth, width, heads and MLP
width), a norm and a head, over ``[cond] + x[:-1]`` in raster order (N rows, LlamaGen's layout: row i predicts
token i), attending with ``F.scaled_dot_product_attention(..., is_causal=True)`` and no mask tensor, trained with
the next-token loss. Its parameters are the backbone's minus the ``[MASK]`` embedding row.

A backbone's step is the one :class:`orderlab.train.module.OrderModule` takes: one random-order plan per sample at
one budget T (the sizes shared by the batch), its training rows (:meth:`~orderlab.model.base.Backbone.train_rows`,
the mask included), the forward, the cross-entropy of every target, backward and an AdamW step. Both models train
on the same random tokens and labels. Nothing here times anything by itself: :func:`train_row` and
:func:`profile_row` are run by ``orderlab bench train``, one process per row, so each row's peak memory is its own.
"""

from __future__ import annotations

import math
import resource
import statistics
import time
from collections import defaultdict
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from orderlab import seeding
from orderlab.model.config import ModelConfig
from orderlab.model.layers import Attention, Block, RMSNorm, apply_rope, find_multiple, rope_tables
from orderlab.model.registry import build_model
from orderlab.schedule import get_schedule

__all__ = ["CAUSAL", "GOALS", "CausalLM", "TrainStep", "train_row", "profile_row", "train_ratios", "train_markdown",
           "PeakMemory"]

CAUSAL = "causal-lm"
"""The name of the baseline in rows and ratios (not a registered backbone)."""
GOALS: dict[str, float] = {"stream": 0.5, "decoupled": 0.9}
"""Throughput goals, tokens/s as a fraction of the causal LM's: the query-stream model runs about 2N rows."""
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class CausalAttention(Attention):
    """The LlamaGen attention (same qkv/proj weights, 2D RoPE) with SDPA's ``is_causal`` instead of a mask tensor."""

    def forward(self, x: torch.Tensor, rope: tuple | None, mask=None, cache_rows=None) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 3 x (B, Hh, L, Dh)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, Hh, L, Dh)
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class CausalBlock(Block):
    """:class:`~orderlab.model.layers.Block` with :class:`CausalAttention` (the same parameters)."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__(dim, heads, hidden)
        self.attn = CausalAttention(dim, heads)


class CausalLM(nn.Module):
    """A plain class-conditional causal LM of a backbone's depth, width, heads and MLP width (the baseline)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        hidden = find_multiple(int(c.mlp_ratio * c.dim), 64)
        self.tok_emb = nn.Embedding(c.vocab_size, c.dim)
        self.cond_emb = nn.Embedding(c.num_classes + int(c.null_class), c.cond_tokens * c.dim)
        self.blocks = nn.ModuleList(CausalBlock(c.dim, c.heads, hidden) for _ in range(c.depth))
        self.norm = RMSNorm(c.dim)
        self.head = nn.Linear(c.dim, c.vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, labels: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """labels (B,), tokens (B, N) in raster order -> logits (B, N, V); logit i predicts token i."""
        c = self.config
        b, n = tokens.shape
        cond = self.cond_emb(labels).view(b, c.cond_tokens, c.dim)  # (B, C, D)
        x = torch.cat([cond, self.tok_emb(tokens[:, :-1])], dim=1)  # (B, C + N - 1, D)
        pos = torch.cat([torch.full((c.cond_tokens,), -1), torch.arange(n - 1)]).to(tokens.device)
        rope = None
        if c.position == "rope":
            rope = rope_tables(pos.unsqueeze(0), c.width, c.dim // c.heads, c.rope_base, x.dtype)
        for blk in self.blocks:
            x = blk(x, rope, None)
        return self.head(self.norm(x[:, c.cond_tokens - 1:]))  # (B, N, V)


class TrainStep:
    """One model, its AdamW optimiser and a fixed batch of random tokens; calling it takes one training step.

    Args:
        arch: a registered backbone, or :data:`CAUSAL` for the baseline.
        config: the model's config (``arch`` is overridden by the argument).
        batch: samples per step.
        steps: T of the random-order training plans (ignored by the baseline).
        device: "cpu" or "cuda".
        precision: "fp32", or "bf16"/"fp16" autocast.
    """

    def __init__(self, arch: str, config: ModelConfig, batch: int, steps: int, device: str = "cpu",
                 precision: str = "fp32", seed: int = 0, schedule: str = "random"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r} is not one of {sorted(PRECISIONS)}")
        self.dev = torch.device(device)
        self.arch, self.config, self.batch, self.steps, self.seed = arch, config, batch, steps, seed
        torch.manual_seed(seed)
        self.causal = arch == CAUSAL
        model = CausalLM(config) if self.causal else build_model(config)
        self.model = model.to(self.dev).train()
        decay = [p for p in self.model.parameters() if p.ndim >= 2]  # OrderModule's groups and hyper-parameters
        rest = [p for p in self.model.parameters() if p.ndim < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
                                     lr=3e-4, betas=(0.9, 0.95))
        g = torch.Generator().manual_seed(seed)
        n = config.num_tokens
        self.tokens = torch.randint(config.vocab_size, (batch, n), generator=g).to(self.dev)  # (B, N) row-major
        self.labels = torch.randint(max(config.num_classes, 1), (batch,), generator=g).to(self.dev)
        self.dtype = PRECISIONS[precision]
        self.schedule = get_schedule(schedule)  # training plans: planned every step, as OrderModule does
        self.last_rows = None

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def rows(self, index: int):
        """(targets (B, N), Rows or None): the plans of step ``index`` laid out by the backbone."""
        if self.causal:
            return self.tokens, None
        c = self.config
        gens = [seeding.generator(self.seed, "bench-train", index, i) for i in range(self.batch)]
        plans = self.schedule.plan_batch(c.height, c.width, self.steps, gens)
        orders = torch.stack([p.order for p in plans]).to(self.dev)  # (B, N)
        targets = torch.gather(self.tokens, 1, orders)  # (B, N) in plan order
        return targets, self.model.train_rows(targets, orders, plans[0].sizes)

    def __call__(self, index: int, mark=None) -> float:
        """Take training step ``index``; ``mark(name)`` is called at the end of each phase. Returns the loss."""
        mark = mark or (lambda name: None)
        targets, rows = self.rows(index)
        self.last_rows = rows
        mark("plans + rows (mask)")
        autocast = torch.autocast(self.dev.type, dtype=self.dtype) if self.dtype is not None else nullcontext()
        with autocast:
            if self.causal:
                logits = self.model(self.labels, self.tokens)  # (B, N, V)
            else:
                logits = self.model.forward_rows(self.labels, rows)  # (B, N, V) in plan order
            mark("forward")
            loss = F.cross_entropy(logits.float().transpose(1, 2), targets)
        mark("loss")
        loss.backward()
        mark("backward")
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        mark("optimizer")
        return float(loss.detach())

    def rows_per_sample(self) -> int:
        """Rows of one sample's forward, condition rows included (the baseline: N)."""
        if self.causal:
            return self.config.num_tokens
        _, rows = self.rows(0)
        return int(rows.mask.shape[0])


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


class PeakMemory:
    """Peak memory from now on: CUDA ``max_memory_allocated``, or the growth of the process's peak RSS over now."""

    def __init__(self, dev: torch.device):
        self.dev = dev
        self.base = _rss_mib()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)

    def mib(self) -> float:
        if self.dev.type == "cuda":
            return torch.cuda.max_memory_allocated(self.dev) / 2**20
        return max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.base)


def train_row(arch: str, config: ModelConfig, batch: int, steps: int, repeats: int, device: str = "cpu",
              precision: str = "fp32", schedule: str = "random", warmup: int = 1) -> dict:
    """Median wall time of ``repeats`` training steps after ``warmup`` (which allocate the optimiser state), and peak
    memory over all of them (from after the model and the batch are built: gradients, AdamW state, activations)."""
    step = TrainStep(arch, config, batch, steps, device, precision, schedule=schedule)
    dev = step.dev
    rows = step.rows_per_sample()
    meter = PeakMemory(dev)
    for i in range(warmup):
        step(i)
    times, loss = [], math.nan
    for r in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        loss = step(warmup + r)
        _sync(dev)
        times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    return dict(seconds=seconds, tokens_per_s=batch * config.num_tokens / seconds, peak_MiB=round(meter.mib(), 1),
                params=step.params, rows=rows, loss=round(loss, 3))


# disjoint top-level profiler events -> category (forward ops, the autograd nodes of their backward, the optimiser)
_CATEGORIES = (
    ("attention kernel (fwd)", lambda n: n == "aten::scaled_dot_product_attention"),
    ("attention kernel (bwd)", lambda n: n.startswith("autograd::engine::evaluate_function: ScaledDotProduct")),
    ("linear layers (fwd)", lambda n: n == "aten::linear"),
    ("linear layers (bwd)", lambda n: n.startswith("autograd::engine::evaluate_function: ")
     and any(k in n for k in ("MmBackward", "AddmmBackward", "BmmBackward"))),
    ("loss (fwd)", lambda n: n == "aten::cross_entropy_loss"),
    ("optimizer", lambda n: n.startswith("Optimizer.step#")),
)


def profile_row(arch: str, config: ModelConfig, batch: int, steps: int, device: str = "cpu",
                precision: str = "fp32", repeats: int = 2, top: int = 12) -> dict:
    """Where one training step's time goes: phase timings (median of ``repeats``, after a warm-up step), then one
    step under torch.profiler: time by category (attention kernel, linear layers, loss, optimiser, the rest) and
    the top ops by self time. On CUDA the profiler times are device times."""
    from torch.profiler import ProfilerActivity, profile

    step = TrainStep(arch, config, batch, steps, device, precision)
    dev = step.dev
    step(0)
    phases: dict[str, list[float]] = defaultdict(list)
    for r in range(repeats):
        _sync(dev)
        last = [time.perf_counter()]

        def mark(name: str) -> None:
            _sync(dev)
            now = time.perf_counter()
            phases[name].append(now - last[0])
            last[0] = now

        step(1 + r, mark)
    phase_s = {k: statistics.median(v) for k, v in phases.items()}
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        _sync(dev)
        t0 = time.perf_counter()
        step(1 + repeats)
        _sync(dev)
        wall_ms = (time.perf_counter() - t0) * 1e3
    events = prof.key_averages()
    on_dev = dev.type == "cuda"
    total = (lambda e: e.device_time_total) if on_dev else (lambda e: e.cpu_time_total)
    own = (lambda e: e.self_device_time_total) if on_dev else (lambda e: e.self_cpu_time_total)
    sums = dict.fromkeys([name for name, _ in _CATEGORIES], 0.0)
    for e in events:
        for name, match in _CATEGORIES:
            if match(e.key):
                sums[name] += total(e) / 1e3
                break
    ref = sum(own(e) for e in events) / 1e3 if on_dev else wall_ms  # device: the kernels' sum; CPU: the step's wall
    sums["everything else (plans, mask, rope, norms, SwiGLU gates, embeddings, copies)"] = max(
        0.0, ref - sum(sums.values()))
    categories = [dict(what=k, ms=round(v, 2), share=round(v / ref, 3) if ref else None) for k, v in sums.items()]
    ops = sorted(events, key=own, reverse=True)[:top]
    mask = step.last_rows.mask if step.last_rows is not None else None
    return dict(arch=arch, grid=config.height, batch=batch, steps=None if step.causal else steps,
                rows=step.rows_per_sample(),
                mask_density=round(float(mask.float().mean()), 3) if mask is not None else None,
                step_s=round(sum(phase_s.values()), 4), phases_s={k: round(v, 4) for k, v in phase_s.items()},
                profiled_ms=round(ref, 1), clock="device" if on_dev else "cpu", categories=categories,
                top_ops=[dict(op=e.key, self_ms=round(own(e) / 1e3, 2), share=round(own(e) / 1e3 / ref, 3) if ref
                              else None, calls=e.count) for e in ops])


SCHEDULE_GOAL = 1.2
"""A training step on another schedule's plans (planning included) costs at most this many random-order steps."""


def train_ratios(rows: list[dict]) -> list[dict]:
    """From the rows of one run: each backbone's tokens/s over the causal LM's of the same grid and batch (on the
    first schedule's plans; and the same for peak memory), with the goal where there is one; and each other
    schedule's step time over the first schedule's, for the same backbone, grid and batch (goal: <= 1.2)."""
    base = {(r["grid"], r["batch"]): r for r in rows if r["arch"] == CAUSAL}
    first = next((r["schedule"] for r in rows if r["arch"] != CAUSAL), None)
    ref = {(r["arch"], r["grid"], r["batch"]): r for r in rows if r["arch"] != CAUSAL and r["schedule"] == first}
    out = []
    for r in rows:
        b = base.get((r["grid"], r["batch"]))
        if r["arch"] == CAUSAL or b is None or r["schedule"] != first:
            continue
        value = round(r["tokens_per_s"] / b["tokens_per_s"], 3)
        goal = GOALS.get(r["arch"])
        out.append(dict(what=f"tokens/s {r['arch']}/{CAUSAL}", arch=r["arch"], grid=r["grid"], batch=r["batch"],
                        value=value, goal=goal, met=None if goal is None else value >= goal,
                        peak_ratio=round(r["peak_MiB"] / b["peak_MiB"], 2) if b["peak_MiB"] > 0 else None))
    for r in rows:
        f = ref.get((r["arch"], r["grid"], r["batch"]))
        if r["arch"] == CAUSAL or f is None or r["schedule"] == first:
            continue
        value = round(r["seconds"] / f["seconds"], 3)
        out.append(dict(what=f"step time {r['arch']} {r['schedule']}/{first}", arch=r["arch"], grid=r["grid"],
                        batch=r["batch"], value=value, goal=f"<= {SCHEDULE_GOAL}", met=value <= SCHEDULE_GOAL,
                        peak_ratio=round(r["peak_MiB"] / f["peak_MiB"], 2) if f["peak_MiB"] > 0 else None))
    return out


def train_markdown(meta: dict, rows: list[dict], ratios: list[dict], profiles: list[dict]) -> str:
    """The Markdown report: rows, the ratio table against the causal LM, and the profiles."""
    head = (f"Training benchmark on {meta['device']} ({meta['depth']} layers x {meta['dim']} wide, {meta['heads']} "
            f"heads, V={meta['vocab']}, attention={meta['attention']}, torch {meta['torch']}, {meta['threads']} "
            f"threads, {meta['precision']}; batch {meta['batches']}, plans of {meta.get('train_schedules')} at T = N/"
            f"{meta['budget_divisor']}; median of {meta['repeats']} steps after {meta['warmup']} warm-up)\n\n")
    cols = ["arch", "schedule", "grid", "batch", "steps", "rows", "params", "seconds", "tokens_per_s", "peak_MiB"]
    body = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    for r in rows:
        body += "| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in cols) + " |\n"
    body += ("\n| ratio (this run) | grid | batch | tokens/s ratio | goal | met | peak memory ratio |\n"
             "|---|---|---|---|---|---|---|\n")
    for q in ratios:
        met = "" if q["met"] is None else ("yes" if q["met"] else "**no**")
        goal, peak = ("" if q[k] is None else q[k] for k in ("goal", "peak_ratio"))
        body += (f"| {q['what']} | {q['grid']}x{q['grid']} | {q['batch']} | {q['value']} | {goal} | {met} | "
                 f"{peak} |\n")
    for p in profiles:
        budget = "" if p["steps"] is None else f", T={p['steps']}"
        density = "" if p["mask_density"] is None else f", mask density {p['mask_density']}"
        phases = ", ".join(f"{k} {v} s" for k, v in p["phases_s"].items())
        body += (f"\nWhere the time goes: {p['arch']} at {p['grid']}x{p['grid']}, batch {p['batch']}{budget}: "
                 f"{p['rows']} rows per sample{density}; step {p['step_s']} s = {phases}\n\n")
        body += f"| category ({p['clock']} time, one profiled step) | ms | share |\n|---|---|---|\n"
        for c in p["categories"]:
            body += f"| {c['what']} | {c['ms']} | {c['share']} |\n"
        body += "\n| top op (self time) | ms | share | calls |\n|---|---|---|---|\n"
        for o in p["top_ops"]:
            body += f"| `{o['op']}` | {o['self_ms']} | {o['share']} | {o['calls']} |\n"
    return head + body
