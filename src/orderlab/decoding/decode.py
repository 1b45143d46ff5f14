"""Parallel decoding with a KV cache: one model forward per step, driven by a Plan (free functions, LlamaGen style).

Step t feeds the tokens chosen at step t-1 (the condition, and any known tokens, at t = 0) plus the queries of
group t, fused into one forward as in LPD. The cache keeps condition + known + generated tokens; query K/V are
never kept. CFG doubles the batch with null-class rows. Sample i of a batch draws its plan and its tokens from
its own generator, derived from ``(seed, first_index + i)`` by :func:`orderlab.seeding.sample_seed`, so a batch
decodes exactly like its items one by one and different seeds give unrelated samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from orderlab.decoding.info import DecodeInfo
from orderlab.decoding.jacobi import JACOBI_DECODERS, check_decoder_args, check_raster
from orderlab.decoding.sampling import cfg_scales, sample_from_logits
from orderlab.plan import Plan
from orderlab.registry import Registry
from orderlab.schedule import Schedule, get_schedule
from orderlab.seeding import check_seed, sample_generator

__all__ = ["generate", "make_plans", "run_plans", "DecodeInfo", "DECODERS"]

Pick = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def _check_known(known, batch: int, height: int, width: int):
    """Validate ``known = (tokens (B, H, W), mask (H, W) or (B, H, W))``; return tokens (B, N) and masks (B, H, W)."""
    if known is None:
        return None, [None] * batch
    tokens, mask = known
    if tuple(tokens.shape) != (batch, height, width):
        raise ValueError(f"known tokens must have shape ({batch}, {height}, {width}), got {tuple(tokens.shape)}")
    if mask.dtype != torch.bool or tuple(mask.shape) not in ((height, width), (batch, height, width)):
        raise ValueError(f"known mask must be bool of shape ({height}, {width}) or ({batch}, {height}, {width}), "
                         f"got {mask.dtype} {tuple(mask.shape)}")
    masks = mask.expand(batch, height, width).cpu()
    return tokens.reshape(batch, -1), list(masks)


def make_plans(schedule: Schedule | str, height: int, width: int, steps: int | None, batch: int, seed: int,
               known_masks=None, first_index: int = 0) -> tuple[list[Plan], list[torch.Generator]]:
    """One plan per sample, sample i from its own generator ``sample_generator(seed, first_index + i)``; all must
    share their group sizes."""
    schedule = get_schedule(schedule)
    gens = [sample_generator(seed, first_index + i) for i in range(batch)]
    known_masks = known_masks if known_masks is not None else [None] * batch
    plans = schedule.plan_batch(height, width, steps, gens, known=known_masks)
    if len({(p.sizes, p.num_known) for p in plans}) > 1:
        raise ValueError("samples of one batch got different group sizes (different known masks?); decode them apart")
    return plans, gens


def run_plans(model, labels: torch.Tensor, plans: list[Plan], pick: Pick, *, known_tokens: torch.Tensor | None = None,
              cfg_scale: float = 1.0, cfg_schedule: str = "constant", mutual: bool | None = None,
              block: bool | None = None) -> tuple[torch.Tensor, DecodeInfo]:
    """Drive the cached decode loop over per-sample plans; ``pick(t, logits (B, G, V), positions (B, G))`` chooses
    the tokens of group t (sampling, or the true tokens for teacher forcing).

    Returns:
        tokens (B, N) in row-major order, and a DecodeInfo.
    """
    cfg = model.config
    b, n = labels.shape[0], cfg.num_tokens
    device = labels.device
    if len(plans) != b:
        raise ValueError(f"{len(plans)} plans for a batch of {b}")
    if (plans[0].height, plans[0].width) != (cfg.height, cfg.width):
        raise ValueError(f"plans are for a {plans[0].height}x{plans[0].width} grid, the model for "
                         f"{cfg.height}x{cfg.width}")
    sizes, k = plans[0].sizes, plans[0].num_known
    guided = cfg_scale != 1.0
    if guided and cfg.null_label is None:
        raise ValueError(f"cfg_scale={cfg_scale} needs a model trained with a null class (model.null_class=true)")
    if guided:
        labels = torch.cat([labels, torch.full_like(labels, cfg.null_label)])
    orders = torch.stack([p.order for p in plans]).to(device)  # (B, N)
    out = torch.zeros(b, n, dtype=torch.long, device=device)  # (B, N) row-major
    prev_tok = prev_pos = orders[:, :0]  # (B, 0)
    if k:
        if known_tokens is None:
            raise ValueError("plans have known positions but no known tokens were given")
        prev_pos = orders[:, :k]
        prev_tok = torch.gather(known_tokens.to(device), 1, prev_pos)  # (B, K)
        out.scatter_(1, prev_pos, prev_tok)
    info = DecodeInfo(plans=plans)
    rows = 2 * b if guided else b
    model.setup_cache(rows, device=device)
    try:
        for t, size in enumerate(sizes):
            start = k + sum(sizes[:t])
            q_pos = orders[:, start:start + size]  # (B, G)
            step = model.step_rows(sizes, t, k, prev_tok, prev_pos, q_pos, mutual, block)
            if guided:
                step.tokens, step.positions = step.tokens.repeat(2, 1), step.positions.repeat(2, 1)
            logits = model.forward_rows(labels if t == 0 else None, step, step=True)  # (rows, G, V)
            info.forward_passes += 1
            info.rows_per_pass.append(step.tokens.shape[0])
            info.accepted_per_pass.append(size)
            info.kv_lengths.append(model.cache_length)
            if guided:
                w = cfg_scales(cfg_schedule, cfg_scale, start - k, size, n - k, t=t,
                               steps=len(sizes)).to(device, logits.dtype)  # (G,) step t of T = len(sizes)
                cond, uncond = logits[:b], logits[b:]
                logits = uncond + w.view(1, -1, 1) * (cond - uncond)
            chosen = pick(t, logits, q_pos)  # (B, G)
            out.scatter_(1, q_pos, chosen)
            prev_tok, prev_pos = chosen, q_pos
    finally:
        model.reset_cache()
    return out, info


def _plan_decoder(model, schedule, steps, labels, known, args: dict, sampling: dict):
    """The Plan-driven decoder: exactly one forward per step of the schedule's plan."""
    if args:
        raise ValueError(f"decoder 'plan' takes no decoder_args, got {sorted(args)}")
    cfg = model.config
    b = labels.shape[0]
    known_tokens, known_masks = _check_known(known, b, cfg.height, cfg.width)
    plans, gens = make_plans(schedule, cfg.height, cfg.width, steps, b, sampling["seed"], known_masks,
                             sampling["first_index"])
    if known_tokens is not None:
        bad = known_tokens[torch.stack(known_masks).reshape(b, -1).to(known_tokens.device)]
        if bad.numel() and (bad.min() < 0 or bad.max() >= cfg.vocab_size):
            raise ValueError(f"known tokens must lie in 0..{cfg.vocab_size - 1}, "
                             f"got {int(bad.min())}..{int(bad.max())}")
    temperature, top_k, top_p = sampling["temperature"], sampling["top_k"], sampling["top_p"]

    def pick(t: int, logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        u = torch.stack([torch.rand(positions.shape[1], generator=g) for g in gens])  # (B, G)
        return sample_from_logits(logits, u.to(logits.device), temperature, top_k, top_p)

    return run_plans(model, labels, plans, pick, known_tokens=known_tokens, cfg_scale=sampling["cfg_scale"],
                     cfg_schedule=sampling["cfg_schedule"])


def _jacobi_decoder(name: str):
    """Adapter from generate()'s arguments to a Jacobi decoder of orderlab.decoding.jacobi (raster models only)."""

    def run(model, schedule, steps, labels, known, args: dict, sampling: dict):
        cfg = model.config
        knobs = check_decoder_args(name, args, cfg.width)
        if known is not None:
            raise ValueError(f"decoder={name!r} does not support known tokens (inpainting); use decoder='plan'")
        check_raster(schedule, steps, cfg.height, cfg.width, name)
        return JACOBI_DECODERS[name](model, labels, **knobs, **sampling)

    return run


PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

# generate(decoder=...) -> decoder(model, schedule, steps, labels, known, decoder_args, sampling) -> (tokens, info);
# other packages add theirs under the entry-point group "orderlab.decoders"
DECODERS: Registry[Callable] = Registry("decoder", entry_point_group="orderlab.decoders")
DECODERS.register("plan", _plan_decoder)
for _name in JACOBI_DECODERS:
    DECODERS.register(_name, _jacobi_decoder(_name))


@torch.inference_mode()
def generate(model, schedule: Schedule | str, steps: int | None, labels: torch.Tensor, *, cfg_scale: float = 1.0,
             cfg_schedule: str = "constant", temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int = 0, first_index: int = 0, known=None, return_info: bool = False, decoder: str = "plan",
             decoder_args: dict | None = None, precision: str = "fp32"):
    """Generate token grids with a schedule at a step budget; exactly one model forward per step.

    Args:
        model: a backbone (orderlab.model.base.Backbone).
        schedule: a Schedule or a registered name.
        steps: T; None for the schedule's natural budget.
        labels: (B,) class labels (the null label for unconditional samples); their device is the device used.
        cfg_scale, cfg_schedule: guidance weight and its schedule ("constant", "linear" per step as in ARPG,
            "linear_token" per token as in LPD).
        temperature, top_k, top_p: sampling; temperature 0 is greedy.
        seed: the run seed; sample i draws its plan and its tokens from ``sample_generator(seed, first_index + i)``
            (orderlab.seeding), so different seeds share no per-sample generator.
        first_index: the index of this batch's first sample in a longer run (evaluation passes the batch offset), so
            a run cut into batches decodes exactly like one batch, or like its items one by one.
        known: optional ``(tokens (B, H, W), mask (H, W) or (B, H, W) bool)`` for in/out-painting and editing: known
            tokens are prefilled into the cache and come back unchanged; the schedule orders only the rest.
        decoder: "plan" (one forward per step of the plan), or a training-free Jacobi decoder of a raster model,
            "sjd" or "pjd" (orderlab.decoding.jacobi; the schedule must be raster with one token per step).
        decoder_args: knobs of a Jacobi decoder, e.g. ``{"window": 8, "init": "repeat_left"}``; for "pjd" also
            ``row_lag`` and ``commit``.
        precision: "fp32", or "bf16"/"fp16" autocast on the labels' device (bf16 is the GPU setting of LlamaGen,
            ARPG and LPD; sampling itself always runs in float32).
    Returns:
        tokens (B, H, W), plus a DecodeInfo when ``return_info``.
    """
    cfg = model.config
    model.check_labels(labels)
    run = DECODERS.get(decoder)  # an unknown name lists the choices
    if decoder_args is not None and not isinstance(decoder_args, dict):
        raise ValueError(f"decoder_args must be a dict or None, got {type(decoder_args).__name__}")
    sampling = dict(cfg_scale=cfg_scale, cfg_schedule=cfg_schedule, temperature=temperature, top_k=top_k,
                    top_p=top_p, seed=check_seed(seed), first_index=check_seed(first_index))
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {sorted(PRECISIONS)}")
    amp = PRECISIONS[precision]
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(labels.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            tokens, info = run(model, schedule, steps, labels, known, dict(decoder_args or {}), sampling)
    finally:
        model.train(was_training)
    tokens = tokens.view(labels.shape[0], cfg.height, cfg.width)
    return (tokens, info) if return_info else tokens
