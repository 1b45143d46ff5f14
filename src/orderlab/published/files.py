"""Reading the released checkpoint files of published models: torch pickles and safetensors, EMA preferred.

A released file is one of: a torch pickle holding ``{"model": ..., "ema": ..., ...}`` (ARPG's training checkpoints),
``{"model": ..., "optimizer": ..., "args": Namespace}`` (LPD's ``checkpoint-last.pth``), a bare state dict, or a
``.safetensors`` file (RandAR). :func:`read_weights` returns the state dict to convert and says which entry it took.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

import torch

__all__ = ["Weights", "read_weights", "EMA_KEYS", "MODEL_KEYS"]

EMA_KEYS = ("ema", "model_ema", "ema_state_dict", "ema_model")
"""Entries that hold EMA weights, preferred when present (ARPG saves ``ema`` with ``--ema``)."""
MODEL_KEYS = ("model", "module", "state_dict")
"""Entries that hold the raw weights (DDP ``model``, DeepSpeed ``module``, Lightning-style ``state_dict``)."""
_PREFIXES = ("module.", "_orig_mod.")  # DDP / DeepSpeed and torch.compile wrappers


@dataclass
class Weights:
    """The tensors to convert and how they were found."""

    state: dict[str, torch.Tensor]
    entry: str
    """Which entry of the file (``ema``, ``model``, ...; ``(whole file)`` for a bare state dict)."""
    notes: list[str] = field(default_factory=list)
    """One line each: EMA or not, weights-only loading or not, stripped prefixes."""


def _is_safetensors(path: str) -> bool:
    if path.endswith(".safetensors"):
        return True
    with open(path, "rb") as fh:  # 8-byte little-endian header length, then a JSON header starting with '{'
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


def _load_pickle(path: str, notes: list[str]):
    try:  # argparse.Namespace is plain data; allowing it lets LPD's checkpoints load weights-only
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        notes.append("loaded with torch.load(weights_only=True)")
        return obj
    except Exception as err:  # noqa: BLE001 - any refusal of the safe loader falls back below, and says so
        from orderlab.train.checkpoint import load_error

        reason = load_error(err)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # not a torch file at all
        from orderlab.train.checkpoint import load_error

        raise ValueError(f"--ckpt {path!r} cannot be read as a torch checkpoint or safetensors file: "
                         f"{load_error(err)}") from None
    notes.append(f"weights_only=True refused this file ({reason}); it was loaded as a full pickle, which runs "
                 "code stored in it: convert only files you trust")
    return obj


def _tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _pick(obj, path: str, prefer: str) -> tuple[dict, str, list[str]]:
    """The state dict of a loaded file: EMA (prefer='auto' or 'ema'), else the raw model entry, else the file."""
    notes: list[str] = []
    if _tensor_dict(obj):
        if prefer == "ema":
            raise ValueError(f"--weights ema: {path!r} is a bare state dict with no EMA entry")
        return obj, "(whole file)", ["the file is a bare state dict (no EMA entry to prefer)"]
    if not isinstance(obj, dict):
        raise ValueError(f"--ckpt {path!r} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    ema = next((k for k in EMA_KEYS if _tensor_dict(obj.get(k))), None)
    raw = next((k for k in MODEL_KEYS if _tensor_dict(obj.get(k))), None)
    if prefer in ("auto", "ema") and ema is not None:
        return obj[ema], ema, [f"using the EMA weights (entry {ema!r})"]
    if prefer == "ema":
        raise ValueError(f"--weights ema: {path!r} has no EMA entry (looked for {list(EMA_KEYS)}; it has "
                         f"{sorted(map(str, obj))})")
    if raw is None:
        raise ValueError(f"--ckpt {path!r} has no weights entry: looked for {list(EMA_KEYS + MODEL_KEYS)}, it has "
                         f"{sorted(map(str, obj))}")
    why = "as asked (--weights model)" if prefer == "model" else "the file has no EMA weights"
    notes.append(f"using entry {raw!r}: {why}")
    return obj[raw], raw, notes


def read_weights(path: str, prefer: str = "auto") -> Weights:
    """The state dict of a released checkpoint file.

    Args:
        path: a torch pickle (.pt/.pth/.bin) or a .safetensors file.
        prefer: ``auto`` (EMA when present), ``ema`` (fail without EMA) or ``model`` (the raw weights).
    """
    if prefer not in ("auto", "ema", "model"):
        raise ValueError(f"--weights={prefer!r} is not one of ['auto', 'ema', 'model']")
    if not os.path.isfile(path):
        raise ValueError(f"--ckpt {path!r} does not exist")
    notes: list[str] = []
    if _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(path, device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"--ckpt {path!r} is not a readable safetensors file: {err}") from None
        notes.append("safetensors file (no code can run from it)")
    else:
        obj = _load_pickle(path, notes)
    state, entry, picked = _pick(obj, path, prefer)
    stripped = {}
    for key, val in state.items():
        for pre in _PREFIXES:
            while key.startswith(pre):
                key = key[len(pre):]
        stripped[key] = val
    if any(k != s for k, s in zip(state, stripped)):
        notes.append(f"stripped wrapper prefixes {list(_PREFIXES)} from the keys")
    return Weights(stripped, entry, notes + picked)
