"""The study config (``experiments/study/NAME.yaml``), validated into a :class:`StudySpec` before any work.

A study trains K models per *arm* (a training recipe: overrides of one ``orderlab fit`` config), evaluates the
same grid of rows on every model, and compares named rows. Every key is checked here, so a typo fails at once with
one line naming it, before a dataset is prepared or a model trained::

    name: digits_parallel
    out: runs/study/digits_parallel
    data: {dataset: digits, root: data/digits, prepare: {seed: 0}}
    fit: {config: experiments/digits/base.yaml, args: [--trainer.max_steps=400]}
    seeds: [0, 1, 2]                     # K training seeds per arm (seed_everything and the data order)
    arms:
      random: {}                         # dotted `orderlab fit` keys -> values
      locality8: {model.train_schedule: locality, model.budgets: [8]}
    rows: [random:64, random:8, locality:8]
    metrics: [fcd, nll_bits_per_token]
    evaluate: {num_samples: 898, seed: 0, n_boot: 200}
    compare:                             # paired differences: "row" (within each model) or "arm/row"
      - {name: parallel, a: random:8, b: random:64}
      - {name: train_as_decode, a: locality8/locality:8, b: random/locality:8}
    findings:                            # claims read off comparisons: expect better | worse | no_worse
      - {claim: "T = N/8 is no worse than T = N (ARPG, LPD)", compare: parallel, metric: fcd, expect: no_worse}
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from orderlab.analysis.uncertainty import METRIC_DIRECTION  # the metrics a study can aggregate
from orderlab.suggest import did_you_mean

__all__ = ["StudySpec", "Compare", "Finding", "load_spec", "parse_spec", "EXPECT", "METRIC_DIRECTION"]

_TOP = ("name", "out", "data", "fit", "seeds", "arms", "rows", "metrics", "evaluate", "compare", "findings",
        "compare_to_full")
_DATA = ("dataset", "root", "prepare")
_FIT = ("config", "args")
_EVAL = ("num_samples", "seed", "n_boot", "batch_size", "split", "nll_samples", "level")
EXPECT = ("better", "worse", "no_worse", "no_better", "lower", "higher", "same")
_ARM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Compare:
    """A paired difference a - b, or with c and d the contrast (a - b) - (c - d) (e.g. how much more one order
    degrades from T = N to T = 8 than another). ``arm_*`` None: the same rows inside every arm's models."""

    name: str
    row_a: str
    row_b: str
    arm_a: str | None = None
    arm_b: str | None = None
    row_c: str | None = None
    row_d: str | None = None
    arm_c: str | None = None
    arm_d: str | None = None

    @property
    def within(self) -> bool:
        return self.arm_a is None


@dataclass(frozen=True)
class Finding:
    """A claim read off one comparison; ``arm``: only that arm's models (None: every arm, one line each)."""

    claim: str
    compare: str
    metric: str
    expect: str
    arm: str | None = None


@dataclass
class StudySpec:
    """A validated study: every name resolved, every key known."""

    name: str
    out: str
    dataset: str
    data_root: str
    prepare: dict[str, Any]
    fit_config: str
    fit_args: list[str]
    seeds: list[int]
    arms: dict[str, dict[str, Any]]
    rows: list[str]  # row specs as given ("locality:8" or mappings serialised by Row.label)
    metrics: list[str]
    evaluate: dict[str, Any] = field(default_factory=dict)
    compare: list[Compare] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def jobs(self) -> list[tuple[str, int]]:
        """(arm, seed) training jobs, arms in config order, then seeds."""
        return [(arm, s) for arm in self.arms for s in self.seeds]


def _unknown(where: str, got: dict, allowed: tuple[str, ...]) -> None:
    for key in got:
        if key not in allowed:
            raise ValueError(f"{where}{key}: unknown key{did_you_mean(str(key), allowed)} (keys: {', '.join(allowed)})")


def _need(cfg: dict, key: str, where: str = ""):
    if key not in cfg or cfg[key] in (None, "", [], {}):
        raise ValueError(f"{where}{key}: missing (a study needs it)")
    return cfg[key]


def load_spec(path: str, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a study YAML; ``overrides`` replace top-level keys (e.g. ``out`` or ``seeds``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config={path!r} does not exist")
    with open(path) as fh:
        cfg = yaml.safe_load(fh)
    if not isinstance(cfg, dict):
        raise ValueError(f"config={path!r}: a study YAML is a mapping of keys ({', '.join(_TOP)})")
    cfg.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return parse_spec(cfg)


def parse_spec(cfg: dict[str, Any]) -> StudySpec:
    """Validate a study mapping; every error names its key."""
    from orderlab.analysis.evaluation import parse_row

    _unknown("", cfg, _TOP)
    name = str(_need(cfg, "name"))
    data = _need(cfg, "data")
    if not isinstance(data, dict):
        raise ValueError(f"data: {data!r} must be a mapping with dataset and root")
    _unknown("data.", data, _DATA)
    from orderlab.data.datasets import list_datasets

    dataset = str(_need(data, "dataset", "data."))
    if dataset not in list_datasets():
        raise ValueError(f"data.dataset: {dataset!r} is not a dataset{did_you_mean(dataset, list_datasets())} "
                         f"(datasets: {', '.join(list_datasets())})")
    prepare = dict(data.get("prepare") or {})
    from orderlab.data.datasets import PrepareOptions

    bad = sorted(set(prepare) - set(PrepareOptions.__dataclass_fields__) - {"num_shards"})
    if bad:
        raise ValueError(f"data.prepare.{bad[0]}: unknown option{did_you_mean(bad[0], PrepareOptions.__dataclass_fields__)}")
    fit = _need(cfg, "fit")
    if not isinstance(fit, dict):
        raise ValueError(f"fit: {fit!r} must be a mapping with config (and args)")
    _unknown("fit.", fit, _FIT)
    fit_config = str(_need(fit, "config", "fit."))
    if not os.path.isfile(fit_config):
        raise ValueError(f"fit.config: {fit_config!r} does not exist (paths are relative to the current folder)")
    fit_args = fit.get("args") or []
    if not isinstance(fit_args, list) or not all(isinstance(a, str) and a.startswith("--") for a in fit_args):
        raise ValueError(f"fit.args: {fit_args!r} must be a list of '--key=value' strings")
    seeds = _seeds(_need(cfg, "seeds"))
    arms = _arms(_need(cfg, "arms"))
    rows_in = _need(cfg, "rows")
    if not isinstance(rows_in, list):
        raise ValueError(f"rows: {rows_in!r} must be a list of 'schedule:steps' rows")
    rows, labels = [], {}
    for i, r in enumerate(rows_in):
        try:
            row = parse_row(r)
        except ValueError as err:
            raise ValueError(f"rows[{i}]: {err}") from None
        if row.label in labels:
            raise ValueError(f"rows[{i}]: {row.label!r} is listed twice")
        labels[row.label] = r
        rows.append(r)
    metrics = cfg.get("metrics") or ["nll_bits_per_token"]
    for m in metrics:
        if m not in METRIC_DIRECTION:
            raise ValueError(f"metrics: {m!r} is not a study metric{did_you_mean(str(m), METRIC_DIRECTION)} "
                             f"(metrics: {', '.join(METRIC_DIRECTION)})")
    evaluate = dict(cfg.get("evaluate") or {})
    _unknown("evaluate.", evaluate, _EVAL)
    from orderlab.checks import check_positive_int

    for key in ("num_samples", "batch_size", "nll_samples"):
        if evaluate.get(key) is not None:
            check_positive_int(evaluate[key], f"evaluate.{key}")
    if evaluate.get("n_boot") is not None:
        check_positive_int(evaluate["n_boot"], "evaluate.n_boot", minimum=0)
    level = evaluate.get("level", 0.95)
    if not isinstance(level, float) or not 0.5 <= level < 1:
        raise ValueError(f"evaluate.level: {level!r} must be a float in [0.5, 1)")
    compare = _compare(cfg.get("compare") or [], arms, labels, bool(cfg.get("compare_to_full")), rows)
    findings = _findings(cfg.get("findings") or [], {c.name for c in compare}, metrics, arms)
    out = str(cfg.get("out") or os.path.join("runs", "study", name))
    return StudySpec(name, out, dataset, str(_need(data, "root", "data.")), prepare, fit_config, list(fit_args),
                     seeds, arms, rows, list(metrics), evaluate, compare, findings)


def _seeds(value) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"seeds: {value} must be >= 1 (a count) or a list of seeds")
        return list(range(value))
    if not isinstance(value, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in value):
        raise ValueError(f"seeds: {value!r} must be a count or a list of non-negative integers")
    if len(set(value)) != len(value):
        raise ValueError(f"seeds: {value!r} repeats a seed")
    return list(value)


def _arms(value) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise ValueError(f"arms: {value!r} must map arm names to `orderlab fit` overrides")
    out = {}
    for arm, over in value.items():
        if not isinstance(arm, str) or not _ARM_RE.match(arm):
            raise ValueError(f"arms.{arm}: an arm name is letters, digits, '.', '_' or '-'")
        over = over or {}
        if not isinstance(over, dict):
            raise ValueError(f"arms.{arm}: {over!r} must map dotted fit keys (model.lr) to values")
        out[arm] = dict(over)
    return out


def _split(ref: str, key: str, arms: dict, labels: dict) -> tuple[str | None, str]:
    """``"ROW"`` or ``"ARM/ROW"``; ROW is a row spec (``locality:8``) or a row's label (``locality(repulsion=0)
    T=8``, for rows with knobs)."""
    arm, _, row = ref.rpartition("/") if "/" in ref else (None, None, ref)
    if row in labels:
        if arm is not None and arm not in arms:
            raise ValueError(f"{key}: arm {arm!r} is not in arms{did_you_mean(arm, arms)} (arms: {', '.join(arms)})")
        return arm, row
    if arm is not None and arm not in arms:
        raise ValueError(f"{key}: arm {arm!r} is not in arms{did_you_mean(arm, arms)} (arms: {', '.join(arms)})")
    from orderlab.analysis.evaluation import parse_row

    try:
        label = parse_row(row).label
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None
    if label not in labels:
        raise ValueError(f"{key}: row {row!r} is not in rows (rows: {', '.join(map(str, labels.values()))})")
    return arm, label


def _compare(items, arms, labels, to_full: bool, rows) -> list[Compare]:
    from orderlab.analysis.evaluation import parse_row

    if not isinstance(items, list):
        raise ValueError(f"compare: {items!r} must be a list of {{name, a, b}}")
    out: list[Compare] = []
    for i, c in enumerate(items):
        if not isinstance(c, dict):
            raise ValueError(f"compare[{i}]: {c!r} must be a mapping {{name, a, b}}")
        _unknown(f"compare[{i}].", c, ("name", "a", "b", "c", "d"))
        refs = {k: _split(str(_need(c, k, f"compare[{i}].")), f"compare[{i}].{k}", arms, labels)
                for k in ("a", "b") + (("c", "d") if "c" in c or "d" in c else ())}
        if len({arm is None for arm, _ in refs.values()}) > 1:
            raise ValueError(f"compare[{i}]: give every row as 'arm/row' or every row as 'row'")
        name = str(c.get("name") or (f"{c['a']} vs {c['b']}" if "c" not in refs else
                                     f"({c['a']} - {c['b']}) - ({c['c']} - {c['d']})"))
        (a_arm, a), (b_arm, b) = refs["a"], refs["b"]
        (c_arm, c_row), (d_arm, d_row) = refs.get("c", (None, None)), refs.get("d", (None, None))
        out.append(Compare(name, a, b, a_arm, b_arm, c_row, d_row, c_arm, d_arm))
    if to_full:  # every row against the same schedule and knobs at T = N (one token per step)
        parsed = [parse_row(r) for r in rows]
        for r in parsed:
            full = next((f for f in parsed if f.schedule == r.schedule and f.knobs == r.knobs
                         and f.decoder == r.decoder and f.steps and f is not r
                         and f.steps == max(p.steps or 0 for p in parsed)), None)
            if full is not None and r.steps and r.steps < full.steps:
                out.append(Compare(f"{r.label} vs T=N", r.label, full.label))
    names = [c.name for c in out]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ValueError(f"compare: the name {dup!r} is used twice")
    return out


def _findings(items, names: set[str], metrics: list[str], arms: dict) -> list[Finding]:
    out = []
    for i, f in enumerate(items):
        if not isinstance(f, dict):
            raise ValueError(f"findings[{i}]: {f!r} must be a mapping {{claim, compare, metric, expect}}")
        _unknown(f"findings[{i}].", f, ("claim", "compare", "metric", "expect", "arm"))
        arm = f.get("arm")
        if arm is not None and arm not in arms:
            raise ValueError(f"findings[{i}].arm: {arm!r} is not in arms{did_you_mean(str(arm), arms)}")
        comp = str(_need(f, "compare", f"findings[{i}]."))
        if comp not in names:
            raise ValueError(f"findings[{i}].compare: {comp!r} is not a compare name{did_you_mean(comp, names)}")
        metric = str(f.get("metric") or metrics[0])
        if metric not in metrics:
            raise ValueError(f"findings[{i}].metric: {metric!r} is not in metrics ({', '.join(metrics)})")
        expect = str(_need(f, "expect", f"findings[{i}]."))
        if expect not in EXPECT:
            raise ValueError(f"findings[{i}].expect: {expect!r} is not one of {', '.join(EXPECT)}")
        out.append(Finding(str(_need(f, "claim", f"findings[{i}].")), comp, metric, expect, arm))
    return out
