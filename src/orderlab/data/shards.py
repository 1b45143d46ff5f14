"""Webdataset token shards and their ``manifest.json``: writing, reading and validating.

A dataset folder holds ``{split}-{i:06d}.tar`` shards of samples ``{"__key__", "tokens.npy", "cls"}`` (tokens
``(H, W)`` int16, or int32 when V > 32767) and a ``manifest.json`` describing the grid, vocabulary, classes,
tokenizer reference, splits (sample counts, shard names, sizes and sha256 checksums) and source. Every read
validates what it reads and names the file at fault.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import webdataset as wds

from orderlab.checks import check_positive_int
from orderlab.data.atomic import atomic_write_json, sha256_file

__all__ = [
    "ShardError", "MANIFEST", "MANIFEST_FORMAT", "MIN_SHARDS", "token_dtype", "write_split", "write_manifest",
    "read_manifest", "verify_shards", "iter_shard", "read_split", "load_split", "check_compatible", "SampleChecker",
]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "orderlab-shards-v1"
MIN_SHARDS = 4  # recommended floor: 2 ranks x 2 loader workers must each get a shard (prepare writes 8)
_REQUIRED = ("format", "dataset", "grid", "vocab_size", "num_classes", "token_dtype", "tokenizer", "splits", "source")


class ShardError(ValueError):
    """A dataset folder, manifest or shard is missing, corrupt, or does not match what was asked for."""


def token_dtype(vocab_size: int) -> np.dtype:
    """int16 while every token fits (V <= 32767), else int32."""
    return np.dtype(np.int16) if vocab_size <= np.iinfo(np.int16).max else np.dtype(np.int32)


def write_split(folder: str, split: str, tokens: np.ndarray, labels: np.ndarray, num_shards: int,
                vocab_size: int) -> list[dict[str, Any]]:
    """Write one split as ``num_shards`` near-equal shards; returns their manifest entries.

    Shards are written in place: callers write into the temporary folder of :func:`prepare_dataset`, which is
    renamed into place as a whole, so readers never see a half-written shard.

    Args:
        folder: output folder (exists).
        split: split name, the shard file prefix.
        tokens: (N, H, W) integer tokens in [0, V).
        labels: (N,) integer class labels.
        num_shards: shard count in [1, N]; a later run needs at least ranks x loader workers of them.
        vocab_size: V (decides the stored dtype).
    """
    n = len(tokens)
    if not 1 <= num_shards <= n:
        raise ShardError(f"split {split!r}: num_shards={num_shards} must be in [1, N={n}]")
    if tokens.ndim != 3:
        raise ShardError(f"split {split!r}: tokens must be (N, H, W), got shape {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ShardError(f"split {split!r}: tokens must be integers, got dtype {tokens.dtype}")
    if len(labels) != n:
        raise ShardError(f"split {split!r}: {n} token grids but {len(labels)} labels")
    if n and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ShardError(f"split {split!r}: tokens outside [0, {vocab_size}): min={int(tokens.min())} "
                         f"max={int(tokens.max())}")
    stored = tokens.astype(token_dtype(vocab_size))
    entries = []
    for i, idx in enumerate(np.array_split(np.arange(n), num_shards)):
        name = f"{split}-{i:06d}.tar"
        path = os.path.join(folder, name)
        # mtime fixed so the same data gives byte-identical shards (reproducible checksums); an int, because a
        # float mtime adds a 1 KB pax header to every member and doubles the shard size
        with wds.TarWriter(path, mtime=0) as sink:
            for j in idx:
                sink.write({"__key__": f"{split}-{j:07d}", "tokens.npy": stored[j], "cls": int(labels[j])})
        entries.append({"name": name, "count": int(len(idx)), "bytes": os.path.getsize(path),
                        "sha256": sha256_file(path)})
    return entries


def write_manifest(folder: str, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` atomically (validated first)."""
    _validate_manifest(manifest, os.path.join(folder, MANIFEST))
    atomic_write_json(os.path.join(folder, MANIFEST), manifest)


def _validate_manifest(m: Any, path: str) -> dict[str, Any]:
    """Check the manifest's structure and types; every error names ``path`` and the bad key."""
    if not isinstance(m, dict):
        raise ShardError(f"{path}: manifest must be a JSON object")
    missing = [k for k in _REQUIRED if k not in m]
    if missing:
        raise ShardError(f"{path}: manifest lacks key(s) {missing}")
    if m["format"] != MANIFEST_FORMAT:
        raise ShardError(f"{path}: format {m['format']!r} is not {MANIFEST_FORMAT!r}")
    grid = m["grid"]
    if not (isinstance(grid, list) and len(grid) == 2 and all(_is_int(v) and v > 0 for v in grid)):
        raise ShardError(f"{path}: grid must be [H, W] positive ints, got {grid!r}")
    for key, lo in (("vocab_size", 2), ("num_classes", 0)):
        check_positive_int(m[key], f"{path}: {key}", minimum=lo, error=ShardError)
    try:
        dtype = np.dtype(m["token_dtype"])
    except TypeError as exc:
        raise ShardError(f"{path}: token_dtype {m['token_dtype']!r} is not a numpy dtype") from exc
    if dtype != token_dtype(m["vocab_size"]):
        raise ShardError(f"{path}: token_dtype {m['token_dtype']!r} does not fit vocab_size {m['vocab_size']}")
    if not isinstance(m["tokenizer"], dict) or "name" not in m["tokenizer"]:
        raise ShardError(f"{path}: tokenizer must be an object with a 'name', got {m['tokenizer']!r}")
    if not isinstance(m["splits"], dict) or not m["splits"]:
        raise ShardError(f"{path}: splits must be a non-empty object, got {m['splits']!r}")
    for split, info in m["splits"].items():
        try:
            shards = info["shards"]
            ok = all(isinstance(s["name"], str) and _is_int(s["count"]) and _is_int(s["bytes"])
                     and isinstance(s["sha256"], str) for s in shards)
        except (KeyError, TypeError) as exc:
            raise ShardError(f"{path}: split {split!r} is malformed ({exc!r}); expected "
                             "{count, shards: [{name, count, bytes, sha256}]}") from exc
        if not ok or not shards or not _is_int(info.get("count")):
            raise ShardError(f"{path}: split {split!r} needs an int count and a non-empty shard list of "
                             "{name, count, bytes, sha256}")
        if sum(s["count"] for s in shards) != info["count"]:
            raise ShardError(f"{path}: split {split!r} count {info['count']} != sum of its shard counts")
    return m


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def read_manifest(root: str) -> dict[str, Any]:
    """The validated manifest of a dataset folder; a missing folder or manifest is a clear error."""
    if not os.path.isdir(root):
        raise ShardError(f"dataset folder {root!r} does not exist; create it with `orderlab prepare NAME --out {root}`")
    path = os.path.join(root, MANIFEST)
    if not os.path.isfile(path):
        raise ShardError(f"{path} is missing: {root!r} is not a prepared dataset (run `orderlab prepare`)")
    try:
        with open(path, encoding="utf-8") as f:
            m = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ShardError(f"{path} is not valid JSON: {exc}") from exc
    return _validate_manifest(m, path)


def check_compatible(manifest: dict[str, Any], grid: tuple[int, int] | list[int] | None = None,
                     vocab_size: int | None = None, num_classes: int | None = None) -> None:
    """Raise a ShardError naming the first key whose value differs from what a model expects (None: not checked)."""
    for key, want in (("grid", None if grid is None else list(grid)), ("vocab_size", vocab_size),
                      ("num_classes", num_classes)):
        if want is not None and manifest[key] != want:
            raise ShardError(f"dataset {manifest['dataset']!r} is incompatible: {key} is {manifest[key]!r} in its "
                             f"manifest but the model expects {want!r}")


def verify_shards(root: str, manifest: dict[str, Any], splits: list[str] | None = None,
                  checksums: bool = True) -> None:
    """Check that every shard of ``splits`` exists, is non-empty, has its recorded size and (optionally) sha256."""
    for split in splits if splits is not None else list(manifest["splits"]):
        if split not in manifest["splits"]:
            raise ShardError(f"{root}: no split {split!r}; the manifest has {sorted(manifest['splits'])}")
        for entry in manifest["splits"][split]["shards"]:
            path = os.path.join(root, entry["name"])
            if not os.path.isfile(path):
                raise ShardError(f"shard {path} is missing")
            size = os.path.getsize(path)
            if size == 0:
                raise ShardError(f"shard {path} is empty (0 bytes)")
            if size != entry["bytes"]:
                raise ShardError(f"shard {path} has {size} bytes, the manifest says {entry['bytes']} (truncated?)")
            if checksums and sha256_file(path) != entry["sha256"]:
                raise ShardError(f"shard {path}: sha256 checksum mismatch (file changed or corrupt)")


class SampleChecker:
    """Validates decoded samples against the manifest; every error names the shard file and sample key."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.grid = tuple(manifest["grid"])
        self.vocab = int(manifest["vocab_size"])
        self.num_classes = int(manifest["num_classes"])
        self.dtype = np.dtype(manifest["token_dtype"])

    def __call__(self, sample: dict[str, Any]) -> tuple[np.ndarray, int]:
        where = f"shard {sample.get('__url__', '?')}, sample {sample.get('__key__', '?')!r}"
        if "tokens.npy" not in sample or "cls" not in sample:
            raise ShardError(f"{where}: expected entries tokens.npy and cls, found {sorted(sample)} "
                             "(truncated or corrupt shard?)")
        try:
            tok = np.load(io.BytesIO(sample["tokens.npy"]), allow_pickle=False)  # (H, W)
            label = int(sample["cls"].decode() if isinstance(sample["cls"], bytes) else sample["cls"])
        except Exception as exc:
            raise ShardError(f"{where}: cannot decode ({exc})") from exc
        if tok.dtype != self.dtype:
            raise ShardError(f"{where}: tokens have dtype {tok.dtype}, the manifest says {self.dtype}")
        if tok.shape != self.grid:
            raise ShardError(f"{where}: tokens have shape {tok.shape}, the manifest grid is {self.grid}")
        lo, hi = int(tok.min()), int(tok.max())
        if lo < 0:
            raise ShardError(f"{where}: negative token value {lo}")
        if hi >= self.vocab:
            raise ShardError(f"{where}: token value {hi} is out of vocabulary (vocab_size {self.vocab})")
        if not 0 <= label < self.num_classes:
            raise ShardError(f"{where}: class label {label} outside [0, {self.num_classes})")
        return tok, label


def _raise_with_file(exc: Exception) -> bool:
    """webdataset handler: re-raise read errors (truncated tar, bad member) as ShardError naming the shard."""
    if isinstance(exc, ShardError):
        raise exc
    url = next((a for a in reversed(exc.args) if isinstance(a, str) and a.endswith(".tar")), "?")
    raise ShardError(f"shard {url} is corrupt or truncated: {type(exc).__name__}: {exc.args[0] if exc.args else ''}") \
        from exc


def iter_shard(path: str, checker: SampleChecker, expected: int | None = None) -> Iterator[tuple[str, np.ndarray, int]]:
    """Yield ``(key, tokens (H, W), label)`` of one shard; a sample count other than ``expected`` is an error."""
    pipe = wds.DataPipeline(wds.SimpleShardList([path]), wds.tarfile_to_samples(handler=_raise_with_file))
    n = 0
    for sample in pipe:
        tok, label = checker(sample)
        n += 1
        yield sample["__key__"], tok, label
    if expected is not None and n != expected:
        raise ShardError(f"shard {path} holds {n} samples, the manifest says {expected} (truncated?)")


def read_split(root: str, split: str, limit: int | None = None, checksums: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """All (or the first ``limit``) samples of a split in shard order: tokens (N, H, W) int64, labels (N,) int64."""
    manifest = read_manifest(root)
    verify_shards(root, manifest, [split], checksums=checksums)
    checker = SampleChecker(manifest)
    toks, labels = [], []
    for entry in manifest["splits"][split]["shards"]:
        for _, tok, label in iter_shard(os.path.join(root, entry["name"]), checker, entry["count"]):
            toks.append(tok)
            labels.append(label)
            if limit is not None and len(toks) >= limit:
                break
        if limit is not None and len(toks) >= limit:
            break
    grid = tuple(manifest["grid"])
    tokens = np.stack(toks).astype(np.int64) if toks else np.zeros((0, *grid), np.int64)  # (N, H, W)
    return tokens, np.asarray(labels, dtype=np.int64)


def load_split(root: str, split: str = "val", limit: int | None = None, checksums: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split (or its first ``limit`` samples) in memory, in shard order, every sample validated.

    Returns:
        tokens LongTensor (N, H, W) and labels LongTensor (N,).
    """
    tokens, labels = read_split(root, split, limit=limit, checksums=checksums)
    return torch.from_numpy(tokens), torch.from_numpy(labels)
