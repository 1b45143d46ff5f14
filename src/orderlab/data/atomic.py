"""Atomic file writes and checksums: a killed process leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from typing import Any

import torch

__all__ = [
    "default_mode", "atomic_write_bytes", "atomic_write_json", "atomic_torch_save", "sha256_file", "sha256_bytes",
]


def default_mode(base: int = 0o666) -> int:
    """``base`` masked by the process umask: the mode ``open()`` would give (mkstemp/mkdtemp use 0o600/0o700)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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
