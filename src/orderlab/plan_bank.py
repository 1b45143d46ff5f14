"""Plan banks: K plans of one schedule, planned once and saved, then drawn by a seeded index (as LPD draws its
precomputed orders).

Planning a locality order at 32x32 costs tens of milliseconds per plan on a CPU; a bank plans them once
(``orderlab plans build``) and decoding, evaluation and training then draw from the file.

Plan ``i`` of a bank is exactly ``schedule.plan(height, width, steps, seeding.generator(seed, "plan-bank", i))``:
the stream ``plan-bank`` (orderlab.seeding's naming rule) is used for nothing else, so a bank is reproducible from
its header alone, and the tests hold every bank plan to the schedule's own plan bit for bit.

The file is a ``torch.save``'d dict, written atomically (:func:`orderlab.data.atomic.atomic_torch_save`) and read
with ``weights_only=True``:

========================  ===========================================================================================
``format``                ``"orderlab-plan-bank-1"``
``schedule``              registered name of the schedule that planned it (``"locality"``)
``knobs``                 every knob (dataclass field) of that schedule, tuples as lists
``height``, ``width``     the token grid H x W
``steps``                 the budget asked for (None: the schedule's natural budget)
``num_steps``             T, the number of groups of every plan
``sizes``                 the T group sizes shared by every plan, or a list of K such lists when they vary per plan
``orders``                (K, N) int16 tensor (int32 when N > 32768): plan i's order
``seed``, ``stream``      plan i's generator is ``seeding.generator(seed, stream, i)``; stream is ``"plan-bank"``
``count``                 K
``sha256``                hex sha256 of the content (header fields above and the orders): see :func:`content_sha256`
``orderlab_version``      the version that wrote it
========================  ===========================================================================================

The registered schedule ``bank`` (:class:`Bank`) serves a file: its ``plan(height, width, steps, generator)`` draws
index ``int(torch.randint(K, (1,), generator=generator))`` and returns that stored plan. It refuses, with one
message naming the mismatch, a grid or budget other than the bank's, known tokens (a bank holds unconditional
plans), a ``schedule``/``knobs`` pin that differs from the bank's, a ``sha256`` pin that is not the file's, and a file
that is not a bank. Its ``repr`` names the path and the first 12 hex digits of the content hash, so a checkpoint
(which stores ``repr`` of its training schedule) records which bank trained it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from orderlab import seeding
from orderlab.checks import check_positive_int
from orderlab.plan import Plan, PlanError
from orderlab.schedule import Schedule, get_schedule, register_schedule

__all__ = ["FORMAT", "STREAM", "Bank", "bank_knobs", "build_bank", "content_sha256", "load", "plan_at", "save",
           "short_hash"]

FORMAT = "orderlab-plan-bank-1"
STREAM = "plan-bank"  # plan i of a bank: seeding.generator(seed, STREAM, i)
CHUNK = 64  # plans per plan_batch call (and per progress-bar update)
_HEADER = ("schedule", "knobs", "height", "width", "steps", "num_steps", "sizes")  # what content_sha256 covers
_KEYS = ("format", *_HEADER, "orders", "seed", "stream", "count", "sha256", "orderlab_version")


def _plain(value: Any) -> Any:
    """Knob values as plain JSON-like data: tuples become lists, recursively (dicts keep their keys)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def bank_knobs(schedule: Schedule) -> dict[str, Any]:
    """Every knob of ``schedule`` (its dataclass fields) as plain data; {} for a schedule that is no dataclass."""
    return _plain(dataclasses.asdict(schedule)) if dataclasses.is_dataclass(schedule) else {}


def short_hash(sha256: str) -> str:
    """The first 12 hex digits: what a schedule's repr and the command print."""
    return sha256[:12]


def content_sha256(bank: dict) -> str:
    """sha256 of the header fields (schedule, knobs, grid, budget, T, sizes; as sorted-key JSON), a NUL byte, and
    the orders as little-endian int32: independent of the file's int16/int32 storage and of torch's pickle layout."""
    header = json.dumps({k: bank[k] for k in _HEADER}, sort_keys=True, default=str).encode()
    orders = bank["orders"].to(torch.int32).contiguous().numpy().astype("<i4", copy=False)
    return hashlib.sha256(header + b"\0" + orders.tobytes()).hexdigest()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("orderlab")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------------------------- build
def _plans(schedule: Schedule, height: int, width: int, steps: int | None, gens: list[torch.Generator]) -> list[Plan]:
    batch = getattr(schedule, "plan_batch", None)
    if callable(batch):
        return list(batch(height, width, steps, gens))
    return [schedule.plan(height, width, steps, g) for g in gens]


def build_bank(schedule: str | Schedule, height: int, width: int, steps: int | None, count: int, seed: int = 0,
               knobs: dict[str, Any] | None = None, progress: bool = False) -> dict[str, Any]:
    """Plan ``count`` plans of ``schedule`` (a registered name or a Schedule, with ``knobs`` replacing its knobs) on
    an H x W grid at ``steps`` (None: natural budget); plan i from ``seeding.generator(seed, "plan-bank", i)``.

    Uses the schedule's ``plan_batch`` where it has one (in chunks of 64), else ``plan`` one by one, with one
    intra-op thread (restored after). ``progress`` shows a bar on a terminal's stderr. Returns the bank as the dict :func:`save` writes (see the module docstring).
    Bad input (unknown schedule or knob, count < 1, a bad grid or budget) raises a ValueError naming it.
    """
    check_positive_int(height, "height")
    check_positive_int(width, "width")
    check_positive_int(count, "count")
    seeding.check_seed(seed)
    n = height * width
    if steps is not None:
        check_positive_int(steps, "steps", maximum=n)
    try:
        sched = get_schedule(schedule, **(knobs or {}))
    except TypeError as err:  # a knob the schedule lacks
        raise ValueError(str(err)) from None
    if isinstance(sched, Bank):
        raise ValueError("a bank cannot be built from the 'bank' schedule: name the schedule that plans")
    name = getattr(type(sched), "name", "") or type(sched).__name__
    dtype = torch.int16 if n <= 2 ** 15 else torch.int32
    orders = torch.empty(count, n, dtype=dtype)  # (K, N)
    sizes: list[tuple[int, ...]] = []
    from orderlab.progress import progress_bar

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # planning is many tiny ops: more threads only spin-wait (3-10x slower on 2 cores)
    try:
        with progress_bar(progress) as bar:
            task = bar.add_task(f"planning {name} {height}x{width}", total=count)
            for start in range(0, count, CHUNK):
                idx = range(start, min(start + CHUNK, count))
                plans = _plans(sched, height, width, steps, [seeding.generator(seed, STREAM, i) for i in idx])
                for i, plan in zip(idx, plans):
                    orders[i] = plan.order.to(dtype)
                    sizes.append(tuple(plan.sizes))
                bar.advance(task, len(idx))
    finally:
        torch.set_num_threads(threads)
    steps_of = {len(s) for s in sizes}
    if len(steps_of) > 1:
        raise ValueError(f"schedule {name!r} gave plans of {sorted(steps_of)} steps at steps={steps}: a bank holds "
                         "one budget; give --steps")
    shared = len(set(sizes)) == 1
    bank = {"format": FORMAT, "schedule": name, "knobs": bank_knobs(sched), "height": height, "width": width,
            "steps": steps, "num_steps": len(sizes[0]),
            "sizes": list(sizes[0]) if shared else [list(s) for s in sizes], "orders": orders, "seed": seed,
            "stream": STREAM, "count": count, "orderlab_version": _version()}
    bank["sha256"] = content_sha256(bank)
    return {k: bank[k] for k in _KEYS}


def save(bank: dict[str, Any], path: str | os.PathLike) -> str:
    """Write ``bank`` to ``path`` atomically (a temporary file renamed into place); returns ``str(path)``."""
    from orderlab.data.atomic import atomic_torch_save

    _check(bank, str(path))
    atomic_torch_save(bank, os.fspath(path))
    return str(path)


# ----------------------------------------------------------------------------------------------------------- load
def _check(bank: Any, where: str) -> None:
    """A ValueError (PlanError) naming ``where`` unless ``bank`` is a well-formed bank whose hash matches."""
    def bad(why: str) -> PlanError:
        return PlanError(f"{where} is not an orderlab plan bank ({why}); build one with `orderlab plans build`")

    if not isinstance(bank, dict) or bank.get("format") != FORMAT:
        got = bank.get("format") if isinstance(bank, dict) else type(bank).__name__
        raise bad(f"format {got!r}, expected {FORMAT!r}")
    missing = [k for k in _KEYS if k not in bank]
    if missing:
        raise bad(f"keys {missing} are missing")
    orders, k, n = bank["orders"], bank["count"], bank["height"] * bank["width"]
    if not isinstance(orders, torch.Tensor) or tuple(orders.shape) != (k, n) or orders.is_floating_point():
        shape = tuple(orders.shape) if isinstance(orders, torch.Tensor) else type(orders).__name__
        raise bad(f"orders {shape}, expected an int tensor of shape ({k}, {n})")
    if content_sha256(bank) != bank["sha256"]:
        raise bad("its content does not match its sha256: the file is damaged or was edited")


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a bank file (format, keys, shapes, content hash); a PlanError (a ValueError) names the path."""
    path = os.fspath(path)
    try:
        bank = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PlanError(f"plan bank {path} does not exist; build one with `orderlab plans build`") from None
    except IsADirectoryError:
        raise PlanError(f"plan bank {path} is a folder, not a bank file") from None
    except Exception as err:  # not a torch file, or one holding more than plain data
        raise PlanError(f"{path} is not an orderlab plan bank (torch.load: {' '.join(str(err).split())[:200]})") \
            from None
    _check(bank, path)
    return bank


@functools.lru_cache(maxsize=8)
def _cached(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    return load(path)


def _load_cached(path: str) -> dict[str, Any]:
    """:func:`load`, cached per (absolute path, mtime, size): a rebuilt file is read again."""
    full = os.path.abspath(path)
    try:
        st = os.stat(full)
    except FileNotFoundError:
        raise PlanError(f"plan bank {path} does not exist; build one with `orderlab plans build`") from None
    return _cached(full, st.st_mtime_ns, st.st_size)


def plan_at(bank: dict[str, Any], i: int) -> Plan:
    """Plan ``i`` of a loaded bank."""
    sizes = bank["sizes"]
    if sizes and isinstance(sizes[0], list):
        sizes = sizes[i]
    return Plan(order=bank["orders"][i].long(), sizes=tuple(sizes), height=bank["height"], width=bank["width"])


# ------------------------------------------------------------------------------------------------------- schedule
def _budget(bank: dict[str, Any]) -> str:
    asked = "natural budget" if bank["steps"] is None else f"steps={bank['steps']}"
    return f"T={bank['num_steps']} ({asked})"


@register_schedule("bank")
@dataclass(frozen=True)
class Bank(Schedule):
    """Plans drawn from a plan bank file (``orderlab plans build``) by a seeded index.

    ``plan(h, w, steps, generator)`` returns stored plan ``int(torch.randint(K, (1,), generator=generator))``. The
    grid must be the bank's, and ``steps`` its T (None: the bank's T); known tokens are refused.
    """

    stochastic: ClassVar[bool] = True
    needs_file: ClassVar[bool] = True
    """It cannot plan without its ``path``: code that plans every registered schedule with default knobs (the
    ``orderlab schedules`` table, OrderPictures, contract tests) should leave it out."""
    path: str | None = None
    """The bank file (required: without it the schedule cannot plan)."""
    schedule: str | None = None
    """Pin: refuse a bank planned by another schedule (None: any)."""
    knobs: dict[str, Any] | None = None
    """Pin: refuse a bank whose schedule knobs differ from ``schedule``'s with these (None: no knob check)."""
    sha256: str | None = None
    """Pin: refuse a bank whose content hash does not start with this (e.g. the 12 digits a result recorded)."""

    def __post_init__(self) -> None:
        if self.path is not None:
            self._check_pins(self.bank)

    def __hash__(self) -> int:  # knobs is a dict: hash its JSON
        return hash((self.path, self.schedule, json.dumps(self.knobs, sort_keys=True, default=str), self.sha256))

    @property
    def bank(self) -> dict[str, Any]:
        """The loaded bank (cached per path, mtime and size)."""
        if self.path is None:
            raise PlanError("schedule 'bank' needs its knob path: the file `orderlab plans build` wrote")
        return _load_cached(os.fspath(self.path))

    def _check_pins(self, bank: dict[str, Any]) -> None:
        where = f"plan bank {self.path}"
        if self.sha256 is not None and not bank["sha256"].startswith(str(self.sha256).lower()):
            raise PlanError(f"{where} has sha256 {short_hash(bank['sha256'])}, asked for {self.sha256}")
        if self.schedule is None and self.knobs is None:
            return
        name = self.schedule if self.schedule is not None else bank["schedule"]
        if name != bank["schedule"]:
            raise PlanError(f"{where} holds {bank['schedule']!r} plans, asked for {name!r}")
        try:
            want = bank_knobs(get_schedule(name, **(self.knobs or {})))
        except TypeError as err:  # a knob the schedule lacks
            raise PlanError(f"{where}: {err}") from None
        have = bank["knobs"]
        for key in sorted(set(want) | set(have)):
            if key not in have or key not in want or want[key] != have[key]:
                raise PlanError(f"{where} was built with {name} {key}={have.get(key, '<none>')!r}, asked for "
                                f"{key}={want.get(key, '<none>')!r}")

    def plan(self, height: int, width: int, steps: int | None = None,
             generator: torch.Generator | None = None, known: torch.Tensor | None = None) -> Plan:
        bank = self.bank
        where = f"plan bank {self.path}"
        if (height, width) != (bank["height"], bank["width"]):
            raise PlanError(f"{where} was built for {bank['height']}x{bank['width']}, asked for {height}x{width}")
        if steps is not None and steps != bank["num_steps"]:
            raise PlanError(f"{where} was built for {_budget(bank)}, asked for steps={steps}")
        if known is not None and bool(torch.as_tensor(known).any()):
            raise PlanError(f"{where} holds unconditional plans and cannot order around known tokens (inpainting); "
                            f"use its schedule {bank['schedule']!r} instead")
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        i = int(torch.randint(bank["count"], (1,), generator=generator))
        return plan_at(bank, i)

    def natural_steps(self, height: int, width: int) -> int:
        return self.bank["num_steps"]

    def __repr__(self) -> str:
        if self.path is None:
            return "Bank(path=None)"
        try:
            bank = self.bank
        except ValueError as err:  # the file went away or changed into something else since
            return f"Bank(path={self.path!r}, unreadable: {err})"
        knobs = ", ".join(f"{k}={v!r}" for k, v in sorted(bank["knobs"].items()))
        return (f"Bank(path={self.path!r}, sha256={short_hash(bank['sha256'])!r}, count={bank['count']}, "
                f"seed={bank['seed']}, plans={bank['schedule']}({knobs}) {bank['height']}x{bank['width']} "
                f"{_budget(bank)})")
