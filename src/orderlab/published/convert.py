"""Converting a released checkpoint file into an orderlab checkpoint (the work behind ``orderlab convert``)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from orderlab.model.config import PUBLISHED, ModelConfig
from orderlab.model.registry import build_model
from orderlab.published import ConversionError, Converted, Hints, Taker, get_converter
from orderlab.published.files import read_weights
from orderlab.registry import UnknownNameError

__all__ = ["convert_checkpoint", "NATIVE_KEY"]

NATIVE_KEY = "native"
"""``checkpoint["orderlab"]["native"]``: the converted model's own decoding (see Converted.native)."""
_ARCH_FIELDS = ("arch", "depth", "dim", "heads", "query_depth", "vocab_size", "height", "width", "num_classes",
                "ffn_multiple", "block_style", "position")


def _check_preset(name: str | None, source: str) -> dict[str, Any]:
    if name is None:
        return {}
    if name not in PUBLISHED:
        from orderlab.suggest import did_you_mean

        raise ValueError(f"--preset {name!r} is not a published model{did_you_mean(name, list(PUBLISHED))}; choose "
                         f"one of {sorted(PUBLISHED)}")
    if not name.startswith(source + "-"):
        raise ValueError(f"--preset {name!r} is not a {source} model (--from {source})")
    return PUBLISHED[name]


def _check_against_preset(cfg: ModelConfig, preset: dict[str, Any], name: str) -> None:
    bad = [f"{k}: file {getattr(cfg, k)!r}, preset {preset[k]!r}" for k in _ARCH_FIELDS
           if k in preset and getattr(cfg, k) != preset[k]]
    if bad:
        raise ConversionError(f"the file does not hold the {name} model: " + "; ".join(bad) + "; nothing was written")


def _check_against_model(conv: Converted) -> None:
    """The mapped tensors are exactly the backbone's state dict: same names, same shapes (built on the meta device)."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(conv.config).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in conv.state.items()}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    shapes = [f"{k}: {got[k]} mapped, {expected[k]} expected" for k in sorted(set(got) & set(expected))
              if got[k] != expected[k]]
    if missing or extra or shapes:
        raise ConversionError(f"the mapped weights do not fit the orderlab backbone: missing {missing}, extra {extra}, "
                              f"shapes {shapes}; nothing was written")


def convert_checkpoint(source: str, ckpt: str, out: str, *, preset: str | None = None, heads: int | None = None,
                       grid: int | None = None, weights: str = "auto", tokenizer: str | None = None,
                       dtype: str = "float32") -> dict[str, Any]:
    """Read ``ckpt`` (a released ``source`` checkpoint), write the orderlab checkpoint ``out``; a summary dict.

    Everything is checked before ``out`` is written (atomically): a failure leaves no file behind.
    """
    from orderlab.data.atomic import atomic_open

    try:
        converter = get_converter(source)
    except UnknownNameError as err:
        raise ValueError(f"--from: {err}") from None
    preset_fields = _check_preset(preset, source)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype={dtype!r} is not one of ['bfloat16', 'float16', 'float32']")
    if tokenizer is not None and not os.path.isfile(tokenizer):
        raise ValueError(f"--tokenizer {tokenizer!r} does not exist (LlamaGen's vq_ds16_c2i.pt)")
    w = read_weights(ckpt, weights)
    conv = converter(Taker(w.state, source), Hints(heads=heads, grid=grid, preset=preset_fields))
    if preset:
        _check_against_preset(conv.config, preset_fields, preset)
    _check_against_model(conv)
    cast = getattr(torch, dtype)
    state = {f"model.{k}": v.detach().to(cast).clone().contiguous() for k, v in conv.state.items()}  # no shared storage
    cfg = conv.config
    meta = {"model_config": dataclasses.asdict(cfg), "train_schedule": None, "budgets": None,
            "data": {"name": f"{source} (converted)", "grid": [cfg.height, cfg.width], "vocab_size": cfg.vocab_size,
                     "num_classes": cfg.num_classes, "root": None,
                     "tokenizer": {"name": "llamagen", "path": os.path.abspath(tokenizer)} if tokenizer else {}},
            NATIVE_KEY: conv.native,
            "converted_from": {"source": source, "file": os.path.abspath(ckpt), "entry": w.entry, "notes": w.notes,
                               "facts": conv.facts, "preset": preset}}
    with atomic_open(out, "wb") as fh:
        torch.save({"orderlab": meta, "state_dict": state}, fh)
    params = sum(v.numel() for v in conv.state.values())
    return {"out": out, "params": params, "config": cfg, "entry": w.entry, "notes": w.notes, "facts": conv.facts,
            "native": conv.native}
