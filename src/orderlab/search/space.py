"""The search space of an ``orderlab search`` YAML: parameter specs, their validation, and what a trial's values mean.

A space is a mapping ``name -> {type, ...}`` in YAML order::

    space:
      schedule: {type: categorical, choices: [random, locality]}
      steps:    {type: int, low: 4, high: 32, log: true}
      sizes:    {type: categorical, choices: [cosine, arccos, power]}
      power:    {type: float, low: -1.0, high: 3.0, when: {sizes: power}}   # group sizes ~ ((t+1)/T)^p
      knobs.repulsion: {type: int, low: 0, high: 3, when: {schedule: locality}}

``when`` makes a parameter conditional on others (Optuna's define-by-run space), so a knob is only drawn for
the schedule that has it. Every mistake is a ``ValueError`` that names the key (``space.steps.low``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from orderlab.suggest import did_you_mean

__all__ = ["Param", "parse_space", "suggest", "INFERENCE_TARGETS", "inference_setting", "train_overrides"]

# what an inference-time parameter may set; "knobs.<name>" sets a schedule knob
INFERENCE_TARGETS = ("schedule", "steps", "sizes", "power", "temperature", "cfg_scale", "cfg_schedule", "top_k",
                     "top_p")
TRAIN_PREFIXES = ("model.", "data.", "trainer.")  # a training-time parameter is a `orderlab fit` key
_KEYS = {"categorical": {"type", "choices", "when"},
         "int": {"type", "low", "high", "step", "log", "when"},
         "float": {"type", "low", "high", "step", "log", "when"}}
_PRIMITIVE = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class Param:
    """One searched parameter. Non-primitive categorical choices (lists, mappings) travel as JSON strings."""

    name: str
    type: str
    choices: tuple = ()
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    when: dict[str, tuple] = field(default_factory=dict)
    encoded: bool = False

    def active(self, values: dict[str, Any]) -> bool:
        """Whether the conditions of ``when`` hold for the values drawn so far."""
        return all(k in values and values[k] in allowed for k, allowed in self.when.items())


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_name(key: str, name: str, kind: str) -> None:
    """A parameter name (searched or fixed) must be something a trial of this kind can set."""
    if kind == "inference":
        if not (name in INFERENCE_TARGETS or (name.startswith("knobs.") and len(name) > len("knobs."))):
            raise ValueError(f"{key}: unknown parameter for an inference search{did_you_mean(name, INFERENCE_TARGETS)}"
                             f" (choose one of {list(INFERENCE_TARGETS)} or knobs.<schedule knob>)")
    elif not name.startswith(TRAIN_PREFIXES):
        raise ValueError(f"{key}: a training search parameter is an `orderlab fit` key starting with one of "
                         f"{list(TRAIN_PREFIXES)} (e.g. model.lr)")


def _parse_param(name: str, spec: Any, earlier: dict[str, Param], kind: str) -> Param:
    key = f"space.{name}"
    _check_name(key, name, kind)
    if not isinstance(spec, dict):
        raise ValueError(f"{key}={spec!r} must be a mapping like {{type: int, low: 4, high: 32}}")
    ptype = spec.get("type")
    if ptype not in _KEYS:
        raise ValueError(f"{key}.type={ptype!r}: choose one of {sorted(_KEYS)}")
    unknown = sorted(set(spec) - _KEYS[ptype])
    if unknown:
        raise ValueError(f"{key}.{unknown[0]}: unknown key for a {ptype} parameter"
                         f"{did_you_mean(unknown[0], _KEYS[ptype])} (keys are {sorted(_KEYS[ptype])})")
    when = _parse_when(key, spec.get("when") or {}, earlier)
    if ptype == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{key}.choices={choices!r} must be a non-empty list")
        encoded = not all(isinstance(c, _PRIMITIVE) for c in choices)
        enc = tuple(json.dumps(c) for c in choices) if encoded else tuple(choices)
        if len(set(enc)) != len(enc):
            raise ValueError(f"{key}.choices={choices!r} has duplicates")
        return Param(name, ptype, choices=enc, when=when, encoded=encoded)
    low, high, step, log = spec.get("low"), spec.get("high"), spec.get("step"), spec.get("log", False)
    for k, v in (("low", low), ("high", high)):
        if not _is_number(v) or (ptype == "int" and not isinstance(v, int)):
            raise ValueError(f"{key}.{k}={v!r} must be a{'n int' if ptype == 'int' else ' finite number'}")
    if low > high or (ptype == "float" and low == high):
        raise ValueError(f"{key}: low={low} must be below high={high}")
    if not isinstance(log, bool):
        raise ValueError(f"{key}.log={log!r} must be true or false")
    if log and low <= 0:
        raise ValueError(f"{key}.low={low}: a log-scale parameter needs low > 0")
    if step is not None and (not _is_number(step) or step <= 0 or (ptype == "int" and not isinstance(step, int))):
        raise ValueError(f"{key}.step={step!r} must be a positive {'int' if ptype == 'int' else 'number'}")
    if step is not None and log:
        raise ValueError(f"{key}: step and log cannot be combined (Optuna's rule)")
    return Param(name, ptype, low=low, high=high, step=step, log=log, when=when)


def _parse_when(key: str, when: Any, earlier: dict[str, Param]) -> dict[str, tuple]:
    if not isinstance(when, dict):
        raise ValueError(f"{key}.when={when!r} must map another parameter to a value or a list of values")
    out = {}
    for other, allowed in when.items():
        if other not in earlier:  # parse_space orders conditions first; this guards direct callers
            raise ValueError(f"{key}.when.{other}: no parameter of that name before it; got {list(earlier)}")
        allowed = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        cat = earlier[other]
        if cat.type == "categorical":
            enc = tuple(json.dumps(a) for a in allowed) if cat.encoded else allowed
            bad = [a for a in enc if a not in cat.choices]
            if bad:
                raise ValueError(f"{key}.when.{other}={bad[0]!r} is not among space.{other}.choices")
            allowed = enc
        out[other] = allowed
    return out


def _conditions(name: str, spec: Any) -> dict:
    when = (spec.get("when") or {}) if isinstance(spec, dict) else {}
    if not isinstance(when, dict):
        raise ValueError(f"space.{name}.when={when!r} must map another parameter to a value or a list of values")
    return when


def parse_space(space: Any, kind: str, fixed: dict[str, Any] | None = None) -> list[Param]:
    """Validate a YAML space (and the names of ``fixed`` values) for an ``inference`` or ``train`` search.

    Returns the parameters in an order where every ``when`` condition is drawn before the parameter it guards
    (YAML order otherwise), so the space may be written in any order.
    """
    if not isinstance(space, dict) or not space:
        raise ValueError(f"space={space!r} must be a non-empty mapping of parameter name -> spec")
    names = [str(n) for n in space]
    for n in names:  # names, types and ranges first, so a condition can be checked against what it names
        _parse_param(n, {k: v for k, v in space[n].items() if k != "when"} if isinstance(space[n], dict)
                     else space[n], {}, kind)
        for other in _conditions(n, space[n]):
            if other not in names or other == n:
                raise ValueError(f"space.{n}.when.{other}: no other parameter of that name; parameters are {names}")
    params: dict[str, Param] = {}
    pending = list(names)
    while pending:  # topological order over `when`
        ready = [n for n in pending if set(_conditions(n, space[n])) <= set(params)]
        if not ready:
            raise ValueError(f"space: the `when` conditions of {pending} form a cycle")
        for n in ready:
            params[n] = _parse_param(n, space[n], params, kind)
            pending.remove(n)
    for name in fixed or {}:
        if name in params:
            raise ValueError(f"fixed.{name}: also in space; a parameter is either searched or fixed")
        _check_name(f"fixed.{name}", str(name), kind)
    if kind == "inference":
        _check_inference(params, fixed or {})
    return list(params.values())


def _check_inference(params: dict[str, Param], fixed: dict[str, Any]) -> None:
    """What is knowable before any trial: a schedule is given, and budgets and top-k are at least 1 / 0."""
    if "schedule" not in params and "schedule" not in fixed:
        raise ValueError("space.schedule: an inference search needs a schedule, searched (space.schedule) or fixed "
                         "(fixed.schedule)")
    for name, least in (("steps", 1), ("top_k", 0)):
        p = params.get(name)
        if p is not None and p.type == "int" and p.low < least:
            raise ValueError(f"space.{name}.low={p.low}: {name} is at least {least}")
        if p is not None and p.type == "float":
            raise ValueError(f"space.{name}.type=float: {name} is an int (use type: int)")
    from orderlab.decoding.sampling import check_sampling_args

    for name in ("cfg_scale", "temperature", "top_k", "top_p", "cfg_schedule"):  # e.g. a negative guidance weight
        p = params.get(name)
        if name in fixed:
            values = [(f"fixed.{name}", fixed[name])]
        elif p is not None and p.type == "categorical":
            values = [(f"space.{name}.choices", json.loads(c) if p.encoded else c) for c in p.choices]
        elif p is not None:  # a range is valid when both its ends are: every rule is an interval
            values = [(f"space.{name}.low", p.low), (f"space.{name}.high", p.high)]
        else:
            values = []
        for key, value in values:
            check_sampling_args(**{name: value}, names={name: key})


def suggest(trial, params: list[Param]) -> dict[str, Any]:
    """Draw this trial's values in space order; inactive conditional parameters are not drawn."""
    values: dict[str, Any] = {}
    raw: dict[str, Any] = {}  # encoded categorical values, which ``when`` compares against
    for p in params:
        if not p.active(raw):
            continue
        if p.type == "categorical":
            v = trial.suggest_categorical(p.name, list(p.choices))
            raw[p.name] = v
            values[p.name] = json.loads(v) if p.encoded else v
        elif p.type == "int":
            v = trial.suggest_int(p.name, p.low, p.high, step=p.step or 1, log=p.log)
            raw[p.name] = values[p.name] = v
        else:
            v = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
            raw[p.name] = values[p.name] = v
    return values


def inference_setting(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trial values -> (a row mapping for :func:`orderlab.analysis.evaluation.parse_row`, sampling keyword arguments).

    ``power: p`` becomes the size rule ``"power:p"`` (sizes proportional to ((t+1)/T)^p), so Optuna searches group
    sizes and not only step counts. Knobs a schedule lacks fail in ``parse_row``, naming the knob.
    """
    if "schedule" not in values:
        raise ValueError("space/fixed: an inference search needs 'schedule' (searched or fixed)")
    knobs = {k[len("knobs."):]: v for k, v in values.items() if k.startswith("knobs.")}
    sizes = values.get("sizes")
    if "power" in values:
        if sizes not in (None, "power"):
            raise ValueError(f"power={values['power']} is set but sizes={sizes!r}; make power conditional "
                             "(when: {sizes: power})")
        knobs["sizes"] = f"power:{float(values['power']):g}"
    elif sizes is not None:
        if sizes == "power":
            raise ValueError("sizes='power' needs the exponent parameter 'power'")
        knobs["sizes"] = sizes
    steps = values.get("steps")
    row = {"schedule": values["schedule"], "steps": None if steps is None else int(steps), "knobs": knobs}
    sampling = {k: values[k] for k in ("temperature", "cfg_scale", "cfg_schedule", "top_k", "top_p") if k in values}
    return row, sampling


def train_overrides(values: dict[str, Any]) -> list[str]:
    """Trial values -> ``orderlab fit`` command-line overrides (``--model.lr=0.001``; lists and maps as JSON)."""
    out = []
    for k, v in values.items():
        text = v if isinstance(v, str) else json.dumps(v)
        out.append(f"--{k}={text}")
    return out
