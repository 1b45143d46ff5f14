"""A mixture of orders: each plan comes from one of several schedules, drawn per sample with fixed weights.

Why: a model trained in random order alone rarely sees the contexts another order builds. LPD's locality order at
one token per step grows one compact patch, while a random subset of the same size is scattered. A mixture such as
``random`` with some ``locality`` trains the model on both kinds of context, which is what it needs to give the
same distribution under every order it will be decoded with (the order-consistency check of the Ising study).
"""

from dataclasses import dataclass
from typing import ClassVar

import torch

from orderlab.plan import Plan, PlanError
from orderlab.schedule import Schedule, batch_known, get_schedule, register_schedule


@register_schedule("mixture")
@dataclass(frozen=True)
class Mixture(Schedule):
    """Per sample, one draw from the generator picks a component (with probability ``weights[i]`` after
    normalising), and that component plans with the same generator.

    The components must agree on the group sizes at a budget (``random`` and ``locality`` both use LPD's size rule by
    default), since one training batch shares one mask. Natural budget: the first component's, for every sample.
    """

    stochastic: ClassVar[bool] = True
    components: tuple[str, ...] = ("random", "locality")
    """Registered schedule names, each with its default knobs."""
    weights: tuple[float, ...] = (0.5, 0.5)
    """Relative weights, one per component (normalised; each >= 0, at least one > 0)."""

    def __post_init__(self) -> None:
        comps, weights = tuple(self.components), tuple(self.weights)
        if not comps or any(not isinstance(c, str) or c == "mixture" for c in comps):
            raise PlanError(f"mixture: components must be registered schedule names other than 'mixture', "
                            f"got {list(comps)!r}")
        if len(weights) != len(comps):
            raise PlanError(f"mixture: {len(weights)} weights for {len(comps)} components")
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 for w in weights) \
                or not sum(weights) > 0:
            raise PlanError(f"mixture: weights must be numbers >= 0 with a positive sum, got {list(weights)!r}")
        for name in comps:
            try:
                get_schedule(name)
            except ValueError as err:
                raise PlanError(f"mixture: {err}") from None
        object.__setattr__(self, "components", comps)
        object.__setattr__(self, "weights", tuple(float(w) for w in weights))

    def _schedules(self) -> list[Schedule]:
        return [get_schedule(name) for name in self.components]

    def _pick(self, generator: torch.Generator) -> int:
        """One uniform draw from ``generator``: the index of the component (inverse CDF of the weights)."""
        u = float(torch.rand((), generator=generator, dtype=torch.float64)) * sum(self.weights)
        acc = 0.0
        for i, w in enumerate(self.weights):
            acc += w
            if u < acc:
                return i
        return max(i for i, w in enumerate(self.weights) if w > 0)  # u == total up to rounding

    def _budget(self, height: int, width: int, steps: int | None, known: torch.Tensor | None) -> int | None:
        """``steps``, or for None the first component's natural budget, so that every sample of a batch gets the
        same number of groups whichever component it draws (a throwaway generator: the sample's is not touched)."""
        if steps is not None:
            return steps
        return self._schedules()[0].plan(height, width, None, torch.Generator().manual_seed(0), known).num_steps

    def plan(self, height: int, width: int, steps: int | None = None,
             generator: torch.Generator | None = None, known: torch.Tensor | None = None) -> Plan:
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        steps = self._budget(height, width, steps, known)
        return self._schedules()[self._pick(generator)].plan(height, width, steps, generator, known)

    def plan_batch(self, height: int, width: int, steps: int | None, generators: list[torch.Generator | None],
                   known: list[torch.Tensor | None] | None = None) -> list[Plan]:
        """:meth:`plan` per generator, through each component's own batched path (locality's is much faster)."""
        if steps is None:  # the natural budget may depend on each sample's known cells: one at a time
            return super().plan_batch(height, width, steps, generators, known)
        known = batch_known(known, generators)
        gens = [torch.Generator().manual_seed(0) if g is None else g for g in generators]
        picks = [self._pick(g) for g in gens]
        plans: list[Plan | None] = [None] * len(gens)
        for i, sched in enumerate(self._schedules()):
            idx = [j for j, p in enumerate(picks) if p == i]
            if idx:
                got = sched.plan_batch(height, width, steps, [gens[j] for j in idx], [known[j] for j in idx])
                for j, plan in zip(idx, got):
                    plans[j] = plan
        return plans

    def natural_steps(self, height: int, width: int) -> int:
        return self._schedules()[0].natural_steps(height, width)
