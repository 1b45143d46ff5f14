"""The Plan: a generation order plus group sizes. Everything downstream is a function of it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from orderlab.checks import check_positive_int

__all__ = ["Plan", "PlanError"]


class PlanError(ValueError):
    """A Plan, a schedule or a size rule was asked for something impossible."""


@dataclass(frozen=True, eq=False)
class Plan:
    """Which tokens are generated together, and when.

    Args:
        order: (N,) permutation of the row-major positions ``r * width + c``.
        sizes: T positive ints summing to N - num_known; group ``t`` is
            ``order[num_known + sum(sizes[:t]) : num_known + sum(sizes[:t+1])]``.
        height: token-grid rows H.
        width: token-grid columns W.
        num_known: K leading entries of ``order`` that are given, not generated (inpainting); they form no group
            and their ``step_of`` is -1. Zero for ordinary generation and for training.
    """

    order: torch.Tensor
    sizes: tuple[int, ...]
    height: int
    width: int
    num_known: int = 0
    groups: list[torch.Tensor] = field(init=False, repr=False)
    step_of: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        h, w = self.height, self.width
        check_positive_int(h, "height", error=PlanError)
        check_positive_int(w, "width", error=PlanError)
        n = h * w
        order = torch.as_tensor(self.order)
        if order.dtype != torch.long:
            if order.is_floating_point():
                raise PlanError(f"order must hold integers, got dtype {order.dtype}")
            order = order.long()
        order = order.detach().to("cpu").reshape(-1)  # (N,)
        if order.numel() != n:
            raise PlanError(f"order has {order.numel()} entries but the {h}x{w} grid has N={n}")
        if order.numel() and (order.min() < 0 or order.max() >= n):
            raise PlanError(f"order holds positions outside [0, {n}): min={int(order.min())} max={int(order.max())}")
        seen = torch.zeros(n, dtype=torch.bool)
        seen[order] = True
        if not bool(seen.all()):
            missing = torch.nonzero(~seen).flatten()[:5].tolist()
            raise PlanError(f"order is not a permutation of range({n}): positions {missing} are missing")
        k = self.num_known
        check_positive_int(k, "num_known", minimum=0, maximum=n - 1, error=PlanError)
        sizes = tuple(int(s) for s in self.sizes)
        if not sizes or any(s < 1 for s in sizes):
            raise PlanError(f"sizes must be a non-empty list of ints >= 1, got sizes={list(sizes)}")
        if sum(sizes) != n - k:
            raise PlanError(f"sizes sum to {sum(sizes)} but N - num_known = {n - k} (sizes={list(sizes)})")
        groups = list(torch.split(order[k:], list(sizes)))
        step_of = torch.full((n,), -1, dtype=torch.long)  # (N,)
        for t, g in enumerate(groups):
            step_of[g] = t
        object.__setattr__(self, "order", order)
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "step_of", step_of)

    @property
    def num_tokens(self) -> int:
        """N = H * W."""
        return self.height * self.width

    @property
    def num_steps(self) -> int:
        """T, the number of groups (= forward passes when decoding)."""
        return len(self.sizes)

    @property
    def known(self) -> torch.Tensor:
        """(K,) the given positions, prefilled before the first step."""
        return self.order[: self.num_known]

    @property
    def offsets(self) -> tuple[int, ...]:
        """T + 1 cumulative offsets into ``order``: group t is ``order[offsets[t]:offsets[t+1]]``."""
        out = [self.num_known]
        for s in self.sizes:
            out.append(out[-1] + s)
        return tuple(out)

    def rows_cols(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid row and column of every entry of ``order``: two (N,) LongTensors."""
        return self.order // self.width, self.order % self.width

    def step_map(self) -> torch.Tensor:
        """(H, W) step index of every grid cell: the picture of the order."""
        return self.step_of.reshape(self.height, self.width)

    @classmethod
    def from_groups(cls, groups: list[list[int]] | list[torch.Tensor], height: int, width: int) -> Plan:
        """Build a Plan from explicit groups of row-major positions (validated like any Plan)."""
        parts = [torch.as_tensor(g, dtype=torch.long).reshape(-1) for g in groups]
        if not parts:
            raise PlanError("a Plan needs at least one group")
        order = torch.cat(parts)  # (N,)
        return cls(order=order, sizes=tuple(p.numel() for p in parts), height=height, width=width)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Plan):
            return NotImplemented
        return (
            (self.height, self.width, self.sizes, self.num_known)
            == (other.height, other.width, other.sizes, other.num_known)
            and torch.equal(self.order, other.order)
        )

    def __hash__(self) -> int:
        return hash((self.height, self.width, self.sizes, self.num_known, tuple(self.order.tolist())))

    def __repr__(self) -> str:
        sizes = list(self.sizes) if len(self.sizes) <= 12 else [*self.sizes[:6], "...", *self.sizes[-3:]]
        known = f", known={self.num_known}" if self.num_known else ""
        return f"Plan({self.height}x{self.width}, T={self.num_steps}, sizes={sizes}{known})"
