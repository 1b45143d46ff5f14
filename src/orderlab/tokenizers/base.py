"""The tokenizer interface, its registry, and the loader that rebuilds a tokenizer from a manifest reference.

A tokenizer maps images ``(B, C, H, W)`` float in [0, 1] to a grid of discrete tokens ``(B, h, w)`` int64 and
back. Implementations register under a short name; a dataset's ``manifest.json`` names one with a reference such
as ``{"name": "pixel", "levels": 17, ...}`` (constructor arguments) or ``{"name": "vqvae", "path": "tokenizer.pt"}``
(a checkpoint written by :meth:`Tokenizer.save`, relative to the dataset folder).
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import torch
from torch import nn

from orderlab.data.atomic import atomic_torch_save
from orderlab.registry import Registry

__all__ = [
    "Tokenizer", "TokenizerError", "register_tokenizer", "tokenizer_class", "list_tokenizers", "load_tokenizer",
    "seeded_init_", "CHECKPOINT_FORMAT", "TOKENIZERS",
]

CHECKPOINT_FORMAT = "orderlab-tokenizer-v1"


class TokenizerError(ValueError):
    """A tokenizer was given images or tokens it cannot handle, or a checkpoint it cannot read."""


class Tokenizer(nn.Module):
    """Base class: ``encode``/``decode`` plus ``grid``, ``vocab_size``, ``save`` and ``load``.

    Subclasses implement ``_encode``/``_decode`` and ``config()`` (their constructor arguments, JSON-able), and
    declare ``image_shape`` (C, H, W) of the images they take.
    """

    name: ClassVar[str] = ""

    # ------------------------------------------------------------------------------------------------ interface
    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) of the token grid."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        """V, the number of distinct token values."""
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the images this tokenizer encodes and decodes."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this tokenizer (JSON-able)."""
        raise NotImplementedError

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------ checked API
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` float in [0, 1] -> tokens ``(B, h, w)`` int64 in [0, V)."""
        if images.dim() != 4 or tuple(images.shape[1:]) != self.image_shape:
            shape = ", ".join(map(str, self.image_shape))
            raise TokenizerError(f"{self.name} tokenizer expects images of shape (B, {shape}), "
                                 f"got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TokenizerError(f"{self.name} tokenizer expects float images in [0, 1], got dtype {images.dtype}")
        return self._encode(images).long()

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens ``(B, h, w)`` int -> images ``(B, C, H, W)`` float in [0, 1]."""
        if tokens.dim() != 3 or tuple(tokens.shape[1:]) != self.grid:
            raise TokenizerError(f"{self.name} tokenizer expects tokens of shape (B, {self.grid[0]}, {self.grid[1]}),"
                                 f" got {tuple(tokens.shape)}")
        if tokens.is_floating_point():
            raise TokenizerError(f"tokens must be integers, got dtype {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise TokenizerError(f"tokens outside [0, {self.vocab_size}): min={int(tokens.min())} "
                                 f"max={int(tokens.max())}")
        return self._decode(tokens.long()).clamp(0.0, 1.0)

    # ------------------------------------------------------------------------------------------------ persistence
    def reference(self, path: str | None = None) -> dict[str, Any]:
        """The manifest reference: ``{"name", "path"}`` for checkpointed tokenizers, else name + config."""
        if path is not None:
            return {"name": self.name, "path": path}
        return {"name": self.name, **self.config()}

    def save(self, path: str) -> None:
        """Write name, config and weights to ``path`` atomically (loadable with :meth:`Tokenizer.load`)."""
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "name": self.name, "config": self.config(),
                           "state_dict": state}, path)

    @classmethod
    def load(cls, path: str) -> Tokenizer:
        """Rebuild a tokenizer saved by :meth:`save`; on a subclass, a checkpoint of another kind is an error."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"tokenizer checkpoint {path!r} does not exist")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt files, or pickles holding objects other than tensors and containers
            raise TokenizerError(f"cannot read tokenizer checkpoint {path!r} with weights_only=True: {exc}. If the "
                                 "file is trusted and holds extra objects (argparse args), re-save only its "
                                 "state_dict: torch.save(torch.load(path, weights_only=False)['model'], new_path)"
                                 ) from exc
        if not (isinstance(ckpt, dict) and ckpt.get("format") == CHECKPOINT_FORMAT):
            for kind in ([cls] if cls is not Tokenizer else [c for _, c in TOKENIZERS.items()]):
                tok = kind._from_foreign(ckpt, path)
                if tok is not None:
                    return tok.eval()
            raise TokenizerError(f"{path!r} is not an orderlab tokenizer checkpoint (no format={CHECKPOINT_FORMAT!r})"
                                 f" and no registered tokenizer recognises it")
        target = tokenizer_class(ckpt["name"])
        if cls is not Tokenizer and not issubclass(target, cls):
            raise TokenizerError(f"{path!r} holds a {ckpt['name']!r} tokenizer, not {cls.name!r}")
        tok = target(**ckpt["config"])
        tok.load_state_dict(ckpt["state_dict"])
        return tok.eval()

    @classmethod
    def _from_foreign(cls, ckpt: Any, path: str) -> Tokenizer | None:
        """Hook for checkpoints in another project's format (LlamaGen): a tokenizer, or None if not recognised."""
        return None


# -------------------------------------------------------------------------------------------------------- registry
def _check_tokenizer(cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Tokenizer)):
        raise TypeError(f"{cls!r} is not a Tokenizer subclass")


# built-ins (pixel, vqvae, llamagen) come from importing orderlab.tokenizers on the first lookup
TOKENIZERS: Registry[type[Tokenizer]] = Registry("tokenizer", entry_point_group="orderlab.tokenizers",
                                                 builtins="orderlab.tokenizers", check=_check_tokenizer,
                                                 name_attr="name")


def register_tokenizer(name: str):
    """Class decorator: register a Tokenizer subclass under a short name."""
    return TOKENIZERS.register(name)


def list_tokenizers() -> list[str]:
    """Registered tokenizer names, sorted."""
    return TOKENIZERS.names()


def tokenizer_class(name: str) -> type[Tokenizer]:
    """The class registered under ``name``; an unknown name raises UnknownNameError (a KeyError) with the choices."""
    return TOKENIZERS.get(name)


def load_tokenizer(ref: dict[str, Any], root: str = ".") -> Tokenizer:
    """Rebuild a tokenizer from a manifest's ``tokenizer`` entry; a relative ``path`` is resolved against ``root``.

    Args:
        ref: ``{"name": "pixel", **constructor args}`` or ``{"name": "vqvae" | "llamagen", "path": file}``.
        root: the dataset folder (where ``orderlab prepare`` saved the tokenizer checkpoint).
    """
    if not isinstance(ref, dict) or "name" not in ref:
        raise TokenizerError(f"a tokenizer reference must be a dict with a 'name' key, got {ref!r}")
    args = dict(ref)
    cls = tokenizer_class(args.pop("name"))
    if "path" in args:
        path = args.pop("path")
        if args:
            raise TokenizerError(f"tokenizer reference {ref!r}: a 'path' reference takes no other keys, "
                                 f"got {sorted(args)}")
        full = path if os.path.isabs(path) else os.path.join(root, path)
        if not os.path.isfile(full):
            raise FileNotFoundError(f"tokenizer checkpoint {full!r} (reference {ref!r}, dataset folder {root!r}) does "
                                    f"not exist; a relative path is resolved against the dataset folder")
        return cls.load(full)
    try:
        return cls(**args).eval()
    except TypeError as exc:  # an unknown or missing constructor argument in the reference
        raise TokenizerError(f"tokenizer reference {ref!r} does not fit {cls.__name__}: {exc}") from exc


def seeded_init_(module: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-draw every conv/linear/embedding weight from ``generator`` (PyTorch's default init laws).

    Module constructors draw from the global RNG; re-drawing here makes the result depend only on the seed.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # kaiming_uniform(a=sqrt(5)) and U(-1/sqrt(fan_in), +) are torch's reset_parameters laws
            nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=generator)
            if m.bias is not None:
                # torch computes the bias bound from the weight tensor's fan-in for transposed convs too
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(m.weight)
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(m.bias, -bound, bound, generator=generator)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, generator=generator)
    return module
