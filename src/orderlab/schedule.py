"""Schedule base types, the one shared merge/split rule, and the schedule registry.

A schedule turns a token grid and a step budget into a :class:`~orderlab.plan.Plan`. Schedules are frozen
dataclasses whose fields are their knobs; they are pure, run on the CPU and draw randomness only from the
``torch.Generator`` they are given. Built-ins live in the top-level ``schedules/`` folder (imported as
``orderlab.schedules``); other packages add theirs through the entry-point group ``orderlab.schedules``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from orderlab.checks import check_positive_int
from orderlab.plan import Plan, PlanError
from orderlab.registry import Registry
from orderlab.sizes import SizeSpec, resolve_sizes

__all__ = [
    "Schedule", "OrderSchedule", "GeometricSchedule", "fit_groups", "batch_known",
    "register_schedule", "get_schedule", "list_schedules", "schedule_class", "ENTRY_POINT_GROUP", "SCHEDULES",
]

ENTRY_POINT_GROUP = "orderlab.schedules"


def _grid(height: int, width: int) -> int:
    for key, v in (("height", height), ("width", width)):
        check_positive_int(v, key, error=PlanError)
    return height * width


def _known_positions(known: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
    """Row-major positions of the known cells, as a (K,) LongTensor (empty when nothing is known)."""
    if known is None:
        return torch.empty(0, dtype=torch.long)
    known = torch.as_tensor(known)
    if known.dtype != torch.bool or tuple(known.shape) != (height, width):
        raise PlanError(f"known must be a bool tensor of shape ({height}, {width}), "
                        f"got {known.dtype} {tuple(known.shape)}")
    pos = torch.nonzero(known.detach().cpu().reshape(-1)).flatten()
    if pos.numel() == height * width:
        raise PlanError("every position is known: there is nothing to generate")
    return pos


def batch_known(known: list | None, generators: list) -> list:
    """``plan_batch``'s known masks as one entry per generator (None: nothing known anywhere)."""
    known = [None] * len(generators) if known is None else list(known)
    if len(known) != len(generators):
        raise ValueError(f"{len(known)} known masks for {len(generators)} generators")
    return known


class Schedule:
    """Base type of every schedule plugin (the type LightningCLI's ``class_path`` resolves against)."""

    name: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False

    def plan(self, height: int, width: int, steps: int | None = None,
             generator: torch.Generator | None = None, known: torch.Tensor | None = None) -> Plan:
        """Plan the generation of an H x W grid in ``steps`` groups (None: the schedule's natural budget).

        Args:
            height: H.
            width: W.
            steps: T, 1 <= T <= number of unknown positions; None for the natural budget.
            generator: the only source of randomness (CPU); None means a fixed seed of 0.
            known: optional (H, W) bool tensor of positions that are given (inpainting); they lead the order,
                form no group, and the schedule orders only the rest.
        """
        n = _grid(height, width)
        kpos = _known_positions(known, height, width)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        is_known = torch.zeros(n, dtype=torch.bool)
        is_known[kpos] = True
        groups = self._groups(height, width, steps, generator, is_known)
        order = torch.cat([kpos, *groups])  # (N,)
        plan = Plan(order=order, sizes=tuple(int(g.numel()) for g in groups), height=height, width=width,
                    num_known=int(kpos.numel()))
        if steps is not None and plan.num_steps != steps:
            raise AssertionError(f"{type(self).__name__} returned {plan.num_steps} groups for steps={steps}")
        return plan

    def plan_batch(self, height: int, width: int, steps: int | None, generators: list[torch.Generator | None],
                   known: list[torch.Tensor | None] | None = None) -> list[Plan]:
        """One plan per generator: ``[self.plan(height, width, steps, g, known=k) for g, k in zip(generators, known)]``.

        Args:
            generators: B generators, one per sample (None: a fixed seed of 0, as in :meth:`plan`).
            known: None, or B per-sample (H, W) bool masks (or None), as ``known`` of :meth:`plan`.

        A schedule may override this with a faster batched path; it must return exactly the plans :meth:`plan`
        returns for the same generators and masks, and leave each generator where :meth:`plan` would.
        """
        known = batch_known(known, generators)
        return [self.plan(height, width, steps, g, known=k) for g, k in zip(generators, known)]

    def natural_steps(self, height: int, width: int) -> int:
        """T when ``steps`` is None (with nothing known)."""
        return self.plan(height, width).num_steps

    def _groups(self, height: int, width: int, steps: int | None, generator: torch.Generator,
                is_known: torch.Tensor) -> list[torch.Tensor]:
        """The T groups of unknown positions, in generation order."""
        raise NotImplementedError


class OrderSchedule(Schedule):
    """A schedule that is one permutation of the grid cut into consecutive groups by a size rule."""

    sizes: SizeSpec

    def permutation(self, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
        """(N,) the generation order of all positions."""
        raise NotImplementedError

    def _groups(self, height, width, steps, generator, is_known):
        perm = self.permutation(height, width, generator)  # (N,)
        perm = perm[~is_known[perm]]  # (M,) unknown positions keep their relative order
        m = perm.numel()
        if steps is None and isinstance(self.sizes, str):
            steps = m
        sizes = resolve_sizes(self.sizes, m, steps)
        return list(torch.split(perm, list(sizes)))


class GeometricSchedule(Schedule):
    """A schedule with natural groups (diagonals, rings, lattices), fitted to any budget by :func:`fit_groups`."""

    def natural_groups(self, height: int, width: int) -> list[torch.Tensor]:
        """Natural groups of row-major positions, each in its within-group order."""
        raise NotImplementedError

    def _groups(self, height, width, steps, generator, is_known):
        groups = [g[~is_known[g]] for g in self.natural_groups(height, width)]
        groups = [g for g in groups if g.numel()]
        return groups if steps is None else fit_groups(groups, steps)


def fit_groups(groups: list[torch.Tensor], steps: int) -> list[torch.Tensor]:
    """orderlab's one rule for fitting ordered groups to a budget of ``steps`` groups.

    Too many groups: merge the adjacent pair with the smallest combined size (ties: the earliest), so the coarse,
    small groups merge first. Too few: split the largest group (ties: the earliest) into its even- and odd-indexed
    members, first half first; within-group orders walk along the structure, so halves stay spread out.
    """
    n = sum(int(g.numel()) for g in groups)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n:  # "N=" says what bounds it
        raise PlanError(f"steps={steps!r} is outside 1..N={n}")
    out = list(groups)
    while len(out) > steps:
        pair = [int(out[i].numel() + out[i + 1].numel()) for i in range(len(out) - 1)]
        i = pair.index(min(pair))
        out[i:i + 2] = [torch.cat([out[i], out[i + 1]])]
    while len(out) < steps:
        size = [int(g.numel()) for g in out]
        i = size.index(max(size))
        out[i:i + 1] = [out[i][0::2], out[i][1::2]]
    return out


# ---------------------------------------------------------------------------------------------------------- registry
def _check_schedule(cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Schedule)):
        raise TypeError(f"{cls!r} is not a Schedule subclass")


# built-ins come from importing orderlab.schedules on the first lookup (its modules import this one)
SCHEDULES: Registry[type[Schedule]] = Registry("schedule", entry_point_group=ENTRY_POINT_GROUP,
                                               builtins="orderlab.schedules", check=_check_schedule,
                                               name_attr="name")


def register_schedule(name: str):
    """Class decorator: register a Schedule subclass under a short name (duplicates are an error)."""
    return SCHEDULES.register(name)


def list_schedules() -> list[str]:
    """Names of every registered schedule that plans from the grid alone (built-ins and entry-point plugins), sorted.

    Schedules that need a file (``needs_file``, e.g. ``bank``) are registered and found by :func:`get_schedule`, but
    left out here, so loops over "every schedule" (contract tests, ``orderlab schedules``, order pictures) skip them.
    """
    return [name for name, cls in SCHEDULES.items() if not getattr(cls, "needs_file", False)]


def schedule_class(name: str) -> type[Schedule]:
    """The class registered under ``name``; an unknown name raises UnknownNameError (a KeyError) with the choices."""
    return SCHEDULES.get(name)


def get_schedule(name: str | Schedule, **knobs: Any) -> Schedule:
    """A schedule by registered name with its knobs, e.g. ``get_schedule("locality", repulsion=2)``."""
    if isinstance(name, Schedule):
        return dataclasses.replace(name, **knobs) if knobs else name
    cls = schedule_class(name)
    fields = {f.name for f in dataclasses.fields(cls) if f.init} if dataclasses.is_dataclass(cls) else set()
    bad = sorted(set(knobs) - fields)
    if bad:
        from orderlab.suggest import did_you_mean

        raise TypeError(f"schedule {name!r} has no knob {bad[0]!r}{did_you_mean(bad[0], fields)} (its knobs are "
                        f"{sorted(fields)})")
    return cls(**knobs)
