"""The one registry behind schedules, size rules, tokenizers, datasets and CFG schedules: one error format, one
duplicate rule, entry-point plugins, and CFG schedules that see the step clock (t, T)."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from helpers import tiny_model

import orderlab.registry as registry_mod
from orderlab import PlanError, list_schedules, list_size_rules, resolve_sizes, schedule_class
from orderlab.data.datasets import DATASETS, list_datasets, prepare_dataset
from orderlab.decoding.decode import generate
from orderlab.decoding.sampling import (
    CFG_SCHEDULES,
    cfg_scales,
    check_sampling_args,
    list_cfg_schedules,
    register_cfg_schedule,
)
from orderlab.registry import Registry, UnknownNameError
from orderlab.schedule import SCHEDULES
from orderlab.sizes import SIZE_RULES
from orderlab.tokenizers.base import TOKENIZERS, list_tokenizers, tokenizer_class
from orderlab.tokenizers.pixel import PixelTokenizer

UNKNOWN = "no-such-plugin"
Raster = SCHEDULES.get("raster")


@dataclass
class Case:
    registry: Registry
    kind: str
    near: str  # a near miss ...
    meant: str  # ... of this built-in
    make: Callable[[], Any]  # a new object this registry accepts
    listed: Callable[[], list[str]]  # the public list_* function
    lookup: Callable[[str], Any]  # the public way to use a name


def _size_rule():
    def front(n, steps):
        return [n - steps + 1] + [1] * (steps - 1)
    return front


def _preparer():
    def preparer(options, workdir):
        raise AssertionError("never run")
    return preparer


def _cfg_schedule():
    def flat(scale, start, size, n, *, t, steps):
        return torch.full((size,), float(scale))
    return flat


CASES = [
    Case(SCHEDULES, "schedule", "rastr", "raster", lambda: type("Plugin", (Raster,), {}), list_schedules,
         schedule_class),
    Case(SIZE_RULES, "size rule", "cosin", "cosine", _size_rule, list_size_rules,
         lambda name: resolve_sizes(name, 16, 4)),
    Case(TOKENIZERS, "tokenizer", "pixl", "pixel", lambda: type("Plugin", (PixelTokenizer,), {}), list_tokenizers,
         tokenizer_class),
    Case(DATASETS, "dataset", "digit", "digits", _preparer, list_datasets,
         lambda name: prepare_dataset(name, "/nonexistent/never-written")),
    Case(CFG_SCHEDULES, "CFG schedule", "linear_tokn", "linear_token", _cfg_schedule, list_cfg_schedules,
         lambda name: cfg_scales(name, 2.0, 0, 1, 4, t=0, steps=4)),
]
IDS = [c.kind for c in CASES]


@pytest.fixture
def scratch(monkeypatch):
    """Give a test a copy of a registry (built-ins loaded) to change, with its entry points to be read anew."""

    def copy(reg: Registry) -> Registry:
        reg.names()
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
        monkeypatch.setattr(reg, "_loaded", False)
        return reg

    return copy


def test_unknown_name_error_is_a_key_and_value_error_and_reads_plainly():
    err = UnknownNameError("unknown thing 'x'; choose one of ['y']")
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    assert str(err) == "unknown thing 'x'; choose one of ['y']"  # KeyError alone would quote it


def _listable(case, names):
    """What the public list function shows: every name, except schedules that plan from a file (``bank``)."""
    return [n for n in names if not getattr(case.registry.get(n), "needs_file", False)]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_unknown_name_has_one_format(case):
    names = case.registry.names()
    assert names == sorted(names) and case.listed() == _listable(case, names) and case.meant in names
    with pytest.raises(UnknownNameError) as err:
        case.registry.get(UNKNOWN)
    assert str(err.value) == f"unknown {case.kind} '{UNKNOWN}'; choose one of {names}"
    with pytest.raises(UnknownNameError) as err:
        case.registry[case.near]
    assert str(err.value) == f"unknown {case.kind} {case.near!r}; did you mean {case.meant!r}?; choose one of {names}"
    # the public lookups raise the same text (size rules as a PlanError, like every other impossible size spec)
    with pytest.raises((UnknownNameError, PlanError)) as err:
        case.lookup(UNKNOWN)
    assert str(err.value).startswith(f"unknown {case.kind} '{UNKNOWN}'; choose one of {names}")
    assert UNKNOWN not in case.registry and case.meant in case.registry and ["x"] not in case.registry


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_duplicates_are_refused_and_the_same_object_twice_is_harmless(case, scratch):
    reg = scratch(case.registry)
    taken = reg.get(case.meant)
    with pytest.raises(ValueError, match=f"{case.kind} name {case.meant!r} is taken by "
                                         f"{taken.__module__}.{taken.__qualname__}"):
        reg.register(case.meant, case.make())
    assert reg.get(case.meant) is taken
    obj = case.make()
    assert reg.register("plugin", obj) is obj
    assert reg.register("plugin")(obj) is obj  # as a decorator too
    assert reg.get("plugin") is obj and "plugin" in reg.names() and dict(reg.items())["plugin"] is obj


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_entry_point_plugins_are_picked_up_once(case, scratch, monkeypatch):
    plugin, builtin = case.make(), case.registry.get(case.meant)
    reg = scratch(case.registry)
    groups = []

    class EntryPoint:
        def __init__(self, name, obj):
            self.name, self.value, self._obj = name, f"otherpkg:{name}", obj

        def load(self):
            return self._obj

    def entry_points(*, group):
        groups.append(group)
        return [EntryPoint("plugin", plugin), EntryPoint(case.meant, builtin)]  # the second: already registered

    monkeypatch.setattr(registry_mod.metadata, "entry_points", entry_points)
    assert "plugin" in reg.names() and reg.get("plugin") is plugin and reg.get(case.meant) is builtin
    assert case.listed() == _listable(case, reg.names())
    assert groups == [reg.entry_point_group] and reg.entry_point_group.startswith("orderlab.")  # read once


def test_a_broken_entry_point_is_skipped_with_a_warning(scratch, monkeypatch):
    reg = scratch(TOKENIZERS)

    class EntryPoint:
        name, value = "broken", "otherpkg:Broken"

        def load(self):
            return dict  # not a Tokenizer subclass

    monkeypatch.setattr(registry_mod.metadata, "entry_points", lambda *, group: [EntryPoint()])
    with pytest.warns(UserWarning, match="tokenizer plugin 'broken' .*otherpkg:Broken.* is skipped"):
        assert "broken" not in reg.names()
    assert "pixel" in reg.names()


def test_registered_classes_get_their_name(scratch):
    reg = scratch(SCHEDULES)
    cls = reg.register("plugin", type("Plugin", (Raster,), {}))
    assert cls.name == "plugin" and Raster.name == "raster"


# ---------------------------------------------------------------------------------------- CFG schedules see (t, T)
def test_a_step_interval_cfg_schedule_gets_the_step_clock(scratch):
    scratch(CFG_SCHEDULES)
    calls = []

    @register_cfg_schedule("interval")
    def interval(scale, start, size, n, *, t, steps):
        """Guidance only in the middle half of the steps, t in [T/4, 3T/4); no guidance (1) elsewhere."""
        calls.append((t, steps))
        on = steps // 4 <= t < 3 * steps // 4
        return torch.full((size,), float(scale) if on else 1.0)

    assert "interval" in list_cfg_schedules()
    check_sampling_args(cfg_schedule="interval")
    weights = [cfg_scales("interval", 3.0, 2 * t, 2, 16, t=t, steps=8).tolist() for t in range(8)]
    assert weights == [[1.0, 1.0]] * 2 + [[3.0, 3.0]] * 4 + [[1.0, 1.0]] * 2
    assert calls == [(t, 8) for t in range(8)]

    calls.clear()  # the plan decoder passes its step index and budget: t of T = the plan's steps
    model = tiny_model()
    generate(model, "raster", 5, torch.tensor([0, 1]), cfg_scale=2.0, cfg_schedule="interval", seed=0)
    assert calls == [(t, 5) for t in range(5)]

    calls.clear()  # the Jacobi decoder: one token per pass in raster order, so t = the token's index and T = N
    generate(model, "raster", None, torch.tensor([0]), cfg_scale=2.0, cfg_schedule="interval", seed=0,
             decoder="pjd", decoder_args=dict(window=3))
    n = model.config.num_tokens
    assert calls == [(i, n) for i in range(n)]


def test_sampling_check_names_the_knob_in_the_one_format():
    with pytest.raises(UnknownNameError) as err:
        check_sampling_args(cfg_schedule="linear_tokn", names={"cfg_schedule": "--cfg_schedule"})
    assert str(err.value) == ("--cfg_schedule: unknown CFG schedule 'linear_tokn'; did you mean 'linear_token'?; "
                              f"choose one of {list_cfg_schedules()}")
