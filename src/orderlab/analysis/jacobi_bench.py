"""Benchmark of the Jacobi decoders (SJD, PJD) against plain raster decoding of the same model, and a toy raster
model trained in-process so that acceptance can be demonstrated without a checkpoint.

``bench_jacobi`` measures, per decoder setting: forward passes per image, tokens made final per pass, the draft
acceptance rate, and the median wall time of decoding the batch, with the speed-up against raster plan decoding
(one forward per token). Jacobi decoding is a latency method (SJD and PJD report batch-1 latency), and
orderlab's Jacobi decoders take a batch item by item, so the raster baseline is timed item by item too; its
batched time is reported as well.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from orderlab.decoding.decode import generate, make_plans
from orderlab.decoding.scoring import training_logits
from orderlab.model.config import ModelConfig
from orderlab.model.registry import build_model
from orderlab.seeding import derive_seed

__all__ = ["bench_jacobi", "toy_raster_data", "train_toy_raster_model", "DEFAULT_SETTINGS"]

# (decoder, decoder_args) rows of the default benchmark: SJD at two windows, PJD exact and row-wise
DEFAULT_SETTINGS: list[tuple[str, dict]] = [
    ("sjd", dict(window=4)),
    ("sjd", dict(window=16)),
    ("sjd", dict(window=16, init="repeat_left")),
    ("pjd", dict(window=4)),
    ("pjd", dict(window=4, init="repeat_left")),
    ("pjd", dict(window=4, commit="rowwise")),
]


def toy_raster_data(batch: int, height: int, width: int, vocab: int, generator: torch.Generator,
                    noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Stripes: class 0 horizontal ((b + r) % V), class 1 vertical ((b + c) % V), a random base b per image, and
    a fraction ``noise`` of tokens replaced at random. Returns labels (B,) and tokens (B, H, W)."""
    labels = torch.randint(0, 2, (batch,), generator=generator)  # (B,)
    base = torch.randint(0, vocab, (batch, 1, 1), generator=generator)
    r = torch.arange(height).view(1, -1, 1)
    c = torch.arange(width).view(1, 1, -1)
    tokens = torch.where(labels.view(-1, 1, 1) == 0, base + r + 0 * c, base + c + 0 * r) % vocab  # (B, H, W)
    flip = torch.rand(tokens.shape, generator=generator) < noise
    return labels, torch.where(flip, torch.randint(0, vocab, tokens.shape, generator=generator), tokens)


def train_toy_raster_model(height: int = 4, width: int = 4, vocab: int = 8, steps: int = 300, batch: int = 64,
                           lr: float = 3e-3, seed: int = 0, dim: int = 32, depth: int = 2, noise: float = 0.05):
    """Train a small raster model (one token per step, the raster training mask) on :func:`toy_raster_data`.

    Two classes and a null class (label dropout 0.1) so CFG can be tried; CPU, a few seconds. Returns the model
    in eval mode.
    """
    cfg = ModelConfig(vocab_size=vocab, height=height, width=width, num_classes=2, depth=depth, dim=dim, heads=2)
    with torch.random.fork_rng(devices=[]):  # weight init draws from the global RNG: seed it, then restore it
        torch.manual_seed(seed)
        model = build_model(cfg)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    plans, _ = make_plans("raster", height, width, None, batch, seed)  # raster, one token per step
    model.train()
    for _ in range(steps):
        labels, tokens = toy_raster_data(batch, height, width, vocab, gen, noise)
        drop = torch.rand(batch, generator=gen) < 0.1
        labels = torch.where(drop, torch.full_like(labels, cfg.null_label), labels)
        logits = training_logits(model, labels, tokens, plans)  # (B, N, V) row-major
        loss = F.cross_entropy(logits.reshape(-1, vocab), tokens.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _timed(fn, repeats: int, device: torch.device):
    fn(0)  # warm-up
    times, out = [], None
    for r in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        out = fn(r)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def bench_jacobi(model, batch: int = 4, repeats: int = 3, settings: list[tuple[str, dict]] | None = None,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, cfg_scale: float = 1.0,
                 labels: torch.Tensor | None = None, seed: int = 0) -> list[dict]:
    """Rows of passes, acceptance and wall-time speed-up of SJD/PJD settings against raster decoding.

    Args:
        model: a raster-trained backbone (its device is the device used).
        batch: images per timed call (labels cycle through the classes unless given).
        repeats: timed calls per row (median reported), after one warm-up call; repeat r uses the run seed
            ``derive_seed(seed, "repeat", r)`` (orderlab.seeding), item i of it sample index i.
        settings: (decoder, decoder_args) pairs; None for DEFAULT_SETTINGS.
        temperature, top_k, top_p, cfg_scale: sampling, shared by every row.
    Returns:
        one dict per row: decoder, args, passes_per_image, mean_accepted (tokens per pass), acceptance_rate,
        seconds (median per call), speedup_vs_raster (item-by-item raster seconds / seconds), pass_reduction
        (N / passes_per_image); the first row is the raster baseline, with raster_batched_seconds.
    """
    cfg = model.config
    device = model.head.weight.device
    n = cfg.num_tokens
    if labels is None:
        classes = max(1, cfg.num_classes)
        labels = torch.arange(batch, device=device) % classes if cfg.num_classes else torch.full(
            (batch,), cfg.null_label, device=device)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, cfg_scale=cfg_scale)

    def _rep(r: int) -> int:
        return derive_seed(seed, "repeat", r)

    def raster_items(r):
        return [generate(model, "raster", None, labels[i:i + 1], seed=_rep(r), first_index=i, **sampling)
                for i in range(labels.shape[0])]

    base_s, _ = _timed(raster_items, repeats, device)
    batched_s, _ = _timed(lambda r: generate(model, "raster", None, labels, seed=_rep(r), **sampling), repeats,
                             device)
    rows = [dict(decoder="raster", args={}, passes_per_image=float(n), mean_accepted=1.0, acceptance_rate=None,
                 seconds=round(base_s, 4), speedup_vs_raster=1.0, pass_reduction=1.0,
                 raster_batched_seconds=round(batched_s, 4))]
    for name, args in settings if settings is not None else DEFAULT_SETTINGS:
        def run(r, name=name, args=args):
            return generate(model, "raster", None, labels, seed=_rep(r), decoder=name, decoder_args=args,
                            return_info=True, **sampling)[1]

        sec, info = _timed(run, repeats, device)
        passes = statistics.mean(info.passes_per_sample)
        rows.append(dict(decoder=name, args=dict(args), passes_per_image=round(passes, 2),
                         mean_accepted=round(info.mean_accepted, 3), acceptance_rate=round(info.acceptance_rate, 3),
                         seconds=round(sec, 4), speedup_vs_raster=round(base_s / sec, 2),
                         pass_reduction=round(n / passes, 2)))
    return rows
