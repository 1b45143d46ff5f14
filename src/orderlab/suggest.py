""""Did you mean" for mistyped keys: one helper shared by the CLI, the fit config, search YAML and evaluate rows."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable

__all__ = ["closest", "did_you_mean", "suggest_for_message", "unknown_argument"]


def closest(key: str, choices: Iterable[str]) -> str | None:
    """The valid key nearest to ``key`` (difflib), or None when none is close.

    A dotted key is first matched among the keys with the same parent (``trainer.max_step`` -> ``trainer.max_steps``),
    then among all keys.
    """
    choices = sorted({str(c) for c in choices})
    parent, _, leaf = key.rpartition(".")
    if parent:
        siblings = {c.rpartition(".")[2]: c for c in choices if c.rpartition(".")[0] == parent}
        hit = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
        if hit:
            return siblings[hit[0]]
    hit = difflib.get_close_matches(key, choices, n=1, cutoff=0.75 if parent else 0.6)
    return hit[0] if hit else None


def did_you_mean(key: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest valid key, or ``""``."""
    hit = closest(key, choices)
    return f"; did you mean {hit!r}?" if hit else ""


# the argument / config-key errors of jsonargparse (and argparse) that name one unknown key
_UNKNOWN = (re.compile(r"unrecognized arguments: --([^\s=]+)"),
            re.compile(r"does not accept option '([^']+)'"),
            re.compile(r"^Option '([^']+)' is not accepted"))


def unknown_argument(message: str) -> str | None:
    """The unknown key a jsonargparse error message names, or None."""
    for pattern in _UNKNOWN:
        m = pattern.search(message)
        if m:
            return m[1]
    return None


def suggest_for_message(message: str, keys: Iterable[str]) -> str:
    """``message`` with a "did you mean" appended when it names one unknown key that is close to a valid one."""
    key = unknown_argument(message)
    if not key:
        return message
    hit = closest(key, keys)
    if not hit:
        return message
    flag = "--" if f"--{key}" in message else ""  # a command-line flag gets its suggestion as a flag
    return f"{message}; did you mean {flag + hit!r}?"
