"""Token sampling (temperature, top-k, top-p) and classifier-free-guidance scale schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from orderlab.registry import Registry, UnknownNameError

__all__ = ["filter_logits", "sample_from_logits", "cfg_scales", "CFG_SCHEDULES", "check_sampling_args",
           "register_cfg_schedule", "list_cfg_schedules"]


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top-k logits and the smallest set whose probability reaches top_p; the rest become -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, idx, drop), float("-inf"))
    return logits


def sample_from_logits(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                       top_p: float = 1.0) -> torch.Tensor:
    """Draw one token per row by inverting the CDF at the given uniforms; temperature 0 means argmax.

    Args:
        logits: (B, G, V).
        uniforms: (B, G) in [0, 1), drawn by the caller from per-sample generators so that a sample's tokens do not
            depend on the rest of the batch.
    Returns:
        (B, G) token ids.
    """
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got {temperature}, {top_k}, {top_p}")
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(-1)  # (B, G, V)
    cdf = probs.cumsum(-1)
    u = uniforms.to(cdf.dtype).unsqueeze(-1) * cdf[..., -1:]
    return torch.searchsorted(cdf, u).squeeze(-1).clamp(max=logits.shape[-1] - 1)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_sampling_args(*, names: dict[str, str] | None = None, **knobs) -> None:
    """Raise a ValueError naming the first bad sampling knob among those given.

    Knobs: ``cfg_scale`` >= 0 (1 = no guidance), ``temperature`` >= 0 (0 = greedy), ``top_k`` an int >= 0 (0 = all),
    ``0 < top_p <= 1``, ``cfg_schedule`` a name in :data:`CFG_SCHEDULES`. ``names`` maps a knob to the name the user
    wrote it under (``{"cfg_scale": "--cfg"}``), so the message names what to fix.
    """
    rules = {"cfg_scale": (lambda v: _number(v) and v >= 0, "the guidance weight must be a number >= 0 (1 = off)"),
             "temperature": (lambda v: _number(v) and v >= 0, "must be a number >= 0 (0 = greedy)"),
             "top_k": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                       "must be an int >= 0 (0 = all tokens)"),
             "top_p": (lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1] (1 = all tokens)")}
    for knob, value in knobs.items():
        label = (names or {}).get(knob, knob)
        if knob == "cfg_schedule":  # the registry's one message for an unknown name, led by the knob's name
            try:
                CFG_SCHEDULES.get(value)
            except UnknownNameError as err:
                raise UnknownNameError(f"{label}: {err}") from None
            continue
        ok, rule = rules[knob]
        if not ok(value):
            raise ValueError(f"{label}={value!r}: {rule}")


CfgSchedule = Callable[..., torch.Tensor]
# guidance-scale schedules by name, defined below; reads like a dict too (name in CFG_SCHEDULES, sorted(...))
CFG_SCHEDULES: Registry[CfgSchedule] = Registry("CFG schedule", entry_point_group="orderlab.cfg_schedules")


def register_cfg_schedule(name: str) -> Callable[[CfgSchedule], CfgSchedule]:
    """Decorator: make ``fn(scale, start, size, n, *, t, steps) -> (size,) tensor`` the CFG schedule ``name``.

    The group of ``size`` tokens starts at index ``start`` of the N = ``n``-token order and is decoded at step
    ``t`` of ``steps``; a schedule may use either clock (per token, as ``linear_token``; per step, e.g. guidance only
    in an interval of steps). Other packages register theirs through the entry-point group
    ``orderlab.cfg_schedules``.
    """
    return CFG_SCHEDULES.register(name)


def list_cfg_schedules() -> list[str]:
    """Registered CFG schedule names, sorted."""
    return CFG_SCHEDULES.names()


@register_cfg_schedule("constant")
def _constant(scale: float, start: int, size: int, n: int, *, t: int, steps: int) -> torch.Tensor:
    return torch.full((size,), float(scale))


@register_cfg_schedule("linear")
def _linear_step(scale: float, start: int, size: int, n: int, *, t: int, steps: int) -> torch.Tensor:
    # following ARPG: 1 + (w - 1) * (tokens generated once this step is done) / N, one value per step
    return torch.full((size,), 1 + (scale - 1) * (start + size) / n)


@register_cfg_schedule("linear_before")
def _linear_before(scale: float, start: int, size: int, n: int, *, t: int, steps: int) -> torch.Tensor:
    # following RandAR's generate: 1 + (w - 1) * (tokens generated before this step) / N, one value per step
    return torch.full((size,), 1 + (scale - 1) * start / n)


@register_cfg_schedule("linear_token")
def _linear_token(scale: float, start: int, size: int, n: int, *, t: int, steps: int) -> torch.Tensor:
    # following LPD: 1 + (w - 1) * j / N with j the token's 0-based index in the generation order
    return 1 + (scale - 1) * torch.arange(start, start + size, dtype=torch.float64) / n


def cfg_scales(schedule: str, scale: float, start: int, size: int, n: int, *, t: int, steps: int) -> torch.Tensor:
    """(G,) guidance scales for a group of ``size`` tokens that starts at index ``start`` of the N-token order.

    ``t`` is the 0-based step that decodes the group and ``steps`` the budget T (a decoder that emits one token per
    pass in raster order passes t = the token's index and T = N). An unknown name raises UnknownNameError.
    """
    return CFG_SCHEDULES.get(schedule)(scale, start, size, n, t=t, steps=steps)
