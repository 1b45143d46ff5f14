"""Atomic file writes and checksums: a killed process leaves either the old file or the new one, never half of one.

Every file orderlab writes goes through :func:`atomic_open` (directly or through the helpers below); only whole
folders (``prepare``'s dataset, built beside its target and renamed) and the ``last.ckpt`` symlink of
:class:`orderlab.train.lightning_cli.LastCheckpointLink` do their own rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any

import torch

__all__ = [
    "default_mode", "atomic_open", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
    "atomic_savefig", "sha256_file", "sha256_bytes",
]


def default_mode(base: int = 0o666) -> int:
    """``base`` masked by the process umask: the mode ``open()`` would give (mkstemp/mkdtemp use 0o600/0o700)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None) -> Iterator[IO]:
    """A file to write ``path`` through: a temporary file in the same folder (created with its parents), renamed onto
    ``path`` with ``os.replace`` once the block ends cleanly (after ``fsync``, with the mode ``open()`` would give).

    If the block raises, the temporary file is removed and ``path`` keeps whatever it held before (or stays absent).
    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding`` default utf-8).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode={mode!r}: only 'wb' and 'w' write a whole new file")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, encoding=None if mode == "wb" else encoding or "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())  # mkstemp makes it 0600: give it the mode open() would (umask applied)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path, "w", encoding=encoding) as f:
        f.write(text)


def atomic_savefig(fig: Any, path: str | os.PathLike, **kwargs: Any) -> str:
    """``fig.savefig`` (a matplotlib Figure) to ``path`` atomically; returns ``str(path)``.

    The format defaults to the file's extension (``png`` when it has none); ``kwargs`` go to ``savefig``. Readers
    (TensorBoard, a browser, a concurrent run) never see a half-written picture.
    """
    kwargs.setdefault("format", os.path.splitext(os.fspath(path))[1][1:].lower() or "png")
    with atomic_open(path, "wb") as f:
        fig.savefig(f, **kwargs)
    return str(path)


def atomic_write_json(path: str, obj: Any) -> None:
    """JSON with sorted keys and a trailing newline, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to memory, then an atomic write."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()
