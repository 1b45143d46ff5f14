"""Load a trained backbone (and what it needs to make pictures) from a Lightning checkpoint, without Lightning.

A checkpoint written by :class:`orderlab.train.module.OrderModule` carries ``checkpoint["orderlab"]``: the backbone's
config, the data's grid, vocabulary and tokenizer reference. That is all ``sample``, ``evaluate`` and
``search`` need; they never rebuild the LightningModule.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from orderlab.model.config import ModelConfig
from orderlab.model.registry import build_model

__all__ = ["Loaded", "load_checkpoint", "load_error", "tokenizer_from_info"]


@dataclass
class Loaded:
    """A backbone ready to sample, with its data facts."""

    model: torch.nn.Module
    config: ModelConfig
    data: dict[str, Any] = field(default_factory=dict)
    path: str = ""
    native: dict[str, Any] | None = None
    """A converted published model's own decoding (``orderlab convert``): ``{"row", "cfg_schedule", ...}``."""

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, H, W) tokens -> (B, C, Hpx, Wpx) images in [0, 1]."""
        tok = getattr(self, "_tok", None)
        if tok is None:
            tok = self._tok = tokenizer_from_info(self.data, self.config)
        return tok.decode(tokens.cpu()).clamp(0, 1)


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> Loaded:
    """The backbone of an orderlab checkpoint in eval mode; a clear error for a file that is not one."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # a text file, a truncated download, another program's pickle
        raise ValueError(f"checkpoint {path!r} is not an orderlab checkpoint (cannot be read: "
                         f"{load_error(err)})") from err
    meta = ckpt.get("orderlab") if isinstance(ckpt, dict) else None
    if not meta or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {path!r} was not written by orderlab fit (no 'orderlab' entry)")
    cfg = ModelConfig(**{**meta["model_config"], "preset": None})
    model = build_model(cfg)
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return Loaded(model=model.eval(), config=cfg, data=dict(meta.get("data") or {}), path=path,
                  native=meta.get("native"))


def load_error(err: BaseException) -> str:
    """The gist of a ``torch.load`` failure in one short line (its weights-only errors run to a paragraph)."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    first = lines[0] if lines else type(err).__name__
    return first if len(first) <= 160 else first[:157] + "..."


def tokenizer_from_info(info: dict[str, Any], cfg: ModelConfig):
    """The tokenizer named in a checkpoint's data facts; a pixel quantizer of the model's grid when none is known."""
    from orderlab.tokenizers import load_tokenizer
    from orderlab.tokenizers.pixel import PixelTokenizer

    ref = (info or {}).get("tokenizer")
    if not ref:
        return PixelTokenizer(levels=cfg.vocab_size, height=cfg.height, width=cfg.width)
    return load_tokenizer(ref, info.get("root") or ".")
