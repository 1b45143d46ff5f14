"""Teacher-forced scoring: logits and log-likelihoods of given images under given Plans, by two code paths.

``training_logits`` runs one training forward of the backbone's training layout; ``stepwise_logits`` feeds the true tokens
through the cached decode loop, one forward per step. They agree by construction, and a test holds them to it.
"""

from __future__ import annotations

import math

import torch

from orderlab.decoding.decode import run_plans
from orderlab.plan import Plan

__all__ = ["training_logits", "stepwise_logits", "token_logprobs", "bits_per_token"]


def _orders(plans: list[Plan], device) -> tuple[torch.Tensor, tuple[int, ...]]:
    if len({p.sizes for p in plans}) != 1 or any(p.num_known for p in plans):
        raise ValueError("scoring needs plans with one shared list of group sizes and no known positions")
    return torch.stack([p.order for p in plans]).to(device), plans[0].sizes  # (B, N)


def training_logits(model, labels: torch.Tensor, tokens: torch.Tensor, plans: list[Plan],
                    mutual: bool | None = None, block: bool | None = None) -> torch.Tensor:
    """(B, N, V) logits of every position (row-major) from one training forward under the plans' mask."""
    b = tokens.shape[0]
    flat = tokens.reshape(b, -1)  # (B, N)
    orders, sizes = _orders(plans, flat.device)
    logits = model.plan_logits(labels, torch.gather(flat, 1, orders), orders, sizes, mutual, block)  # plan order
    return torch.empty_like(logits).scatter_(1, orders.unsqueeze(-1).expand_as(logits), logits)


def stepwise_logits(model, labels: torch.Tensor, tokens: torch.Tensor, plans: list[Plan],
                    mutual: bool | None = None, block: bool | None = None) -> torch.Tensor:
    """(B, N, V) logits of every position (row-major) from the cached decode loop fed with the true tokens."""
    b = tokens.shape[0]
    flat = tokens.reshape(b, -1)
    orders, _ = _orders(plans, flat.device)
    out = None

    def pick(t, logits, positions):
        nonlocal out
        if out is None:
            out = logits.new_zeros(b, flat.shape[1], logits.shape[-1])
        out.scatter_(1, positions.unsqueeze(-1).expand_as(logits), logits)
        return torch.gather(flat, 1, positions)

    run_plans(model, labels, plans, pick, mutual=mutual, block=block)
    return out


def token_logprobs(model, labels: torch.Tensor, tokens: torch.Tensor, plans: list[Plan],
                   method: str = "forward") -> torch.Tensor:
    """(B, N) log-likelihood (nats) of each true token, row-major; ``method`` is "forward" or "stepwise"."""
    paths = {"forward": training_logits, "stepwise": stepwise_logits}
    if method not in paths:
        raise ValueError(f"method={method!r} is not one of {sorted(paths)}")
    logits = paths[method](model, labels, tokens, plans)
    flat = tokens.reshape(tokens.shape[0], -1)
    return torch.gather(logits.float().log_softmax(-1), 2, flat.unsqueeze(-1)).squeeze(-1)


def bits_per_token(logprobs: torch.Tensor) -> float:
    """Mean negative log-likelihood in bits per token."""
    return float(-logprobs.mean() / math.log(2))
