"""The Lightning DataModule over token shards, with an explicit split of shards by rank and by loader worker.

Shard assignment: rank ``r`` of ``R`` takes shards ``r, r + R, r + 2R, ...``; its worker ``w`` of ``K`` takes every
K-th of those. So every sample belongs to exactly one (rank, worker) and none is read twice in an epoch.

Equal batch counts (DDP hangs when one rank runs out of batches before the others), computed from the
manifest's per-shard counts before any data is read:

* **train**: full batches only. Every rank yields ``min over ranks`` of its full-batch count; the surplus
  batches of a larger rank are taken from its workers with the most batches, and the remainder that does not
  fill a batch is dropped. The sample shuffle buffer is reseeded every epoch, so the dropped samples differ
  from epoch to epoch.
* **val / test**: every sample exactly once, no padding. Every rank yields ``max over ranks`` of its
  ``ceil(n / batch_size)``; a rank with fewer batches splits its last batches into smaller ones. Batches can
  therefore be smaller than ``batch_size``: weight per-sample metrics by batch size.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from orderlab.data.shards import (
    SampleChecker,
    ShardError,
    check_compatible,
    iter_shard,
    load_split,
    read_manifest,
    verify_shards,
)

__all__ = ["OrderDataModule", "ShardStream", "WorkerPlan", "plan_rank", "load_split"]

# Lightning warns about any IterableDataset with __len__ under several workers, in case workers duplicate data;
# here each worker reads its own shards (plan_rank) and __len__ is exact, so the warning is noise in every fit
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined", category=UserWarning)


@dataclass(frozen=True)
class WorkerPlan:
    """What one loader worker of one rank reads per epoch."""

    shards: tuple[int, ...]  # indices into the split's shard list
    samples: int  # samples in those shards
    batch_sizes: tuple[int, ...]  # sizes of the batches it yields (train: all equal, the rest dropped)


def _worker_counts(counts: list[int], rank: int, world: int, slots: int) -> list[tuple[tuple[int, ...], int]]:
    mine = list(range(len(counts)))[rank::world]
    out = []
    for w in range(slots):
        idx = tuple(mine[w::slots])
        out.append((idx, sum(counts[i] for i in idx)))
    return out


def plan_rank(counts: list[int], rank: int, world_size: int, num_workers: int, batch_size: int,
              train: bool) -> list[WorkerPlan]:
    """Per-worker plans of ``rank`` such that every rank yields the same number of batches (see module doc)."""
    slots = max(1, num_workers)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, world_size={world_size})")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(counts) < world_size * slots:
        raise ShardError(f"{len(counts)} shards cannot feed world_size {world_size} x {slots} loader workers; "
                         f"re-prepare with --num_shards {world_size * slots} or use fewer workers")
    ranks = [_worker_counts(counts, r, world_size, slots) for r in range(world_size)]
    if train:
        full = [[n // batch_size for _, n in workers] for workers in ranks]
        steps = min(sum(f) for f in full)
        if steps == 0:
            raise ShardError(f"batch_size {batch_size} is larger than a rank's share of the train split "
                             f"({min(sum(n for _, n in w) for w in ranks)} samples)")
        quota = full[rank]
        while sum(quota) > steps:  # drop surplus batches from the worker with the most (ties: the last)
            i = max(range(slots), key=lambda j: (quota[j], j))
            quota[i] -= 1
        return [WorkerPlan(idx, n, (batch_size,) * q) for (idx, n), q in zip(ranks[rank], quota)]
    need = [[-(-n // batch_size) for _, n in workers] for workers in ranks]
    steps = max(sum(b) for b in need)
    quota, workers = list(need[rank]), ranks[rank]
    for w, (_, n) in enumerate(workers):  # extra batches go to workers with spare samples, first come first
        take = min(steps - sum(quota), n - quota[w])
        quota[w] += max(0, take)
    if sum(quota) != steps:
        raise ShardError(f"rank {rank} has {sum(n for _, n in workers)} val samples, fewer than the {steps} "
                         f"batches another rank needs; use a smaller world size or batch size")
    plans = []
    for (idx, n), q in zip(workers, quota):
        sizes, left = [], n
        for i in range(q):  # full batches first, then the tail split so that each later batch keeps >= 1
            sizes.append(min(batch_size, left - (q - i - 1)))
            left -= sizes[-1]
        plans.append(WorkerPlan(idx, n, tuple(sizes)))
    return plans


class ShardStream(IterableDataset):
    """One rank's view of a split: yields ``(tokens (B, H, W) int64, labels (B,) int64)`` batches.

    Args:
        root: dataset folder.
        manifest: its manifest.
        split: split name.
        plans: per-worker plans from :func:`plan_rank` (one per DataLoader worker, or one for ``num_workers=0``).
        train: shuffle shards and samples (seeded by seed, epoch, rank and worker) when True.
        shuffle_buffer: sample shuffle buffer size (train).
        seed: base seed.
        rank: this rank, only to seed the shuffle.
    """

    def __init__(self, root: str, manifest: dict[str, Any], split: str, plans: list[WorkerPlan], train: bool,
                 shuffle_buffer: int = 1000, seed: int = 0, rank: int = 0) -> None:
        super().__init__()
        self.entries = manifest["splits"][split]["shards"]
        self.paths = [os.path.join(root, e["name"]) for e in self.entries]
        self.checker = SampleChecker(manifest)
        self.plans, self.train, self.shuffle_buffer, self.seed, self.rank = plans, train, shuffle_buffer, seed, rank
        self.epoch = 0  # bumped in the main process before each pass (see _EpochLoader)
        self._passes = 0  # passes made inside a persistent worker, where the main process's bumps do not arrive

    def __len__(self) -> int:
        return sum(len(p.batch_sizes) for p in self.plans)

    def _samples(self, shard_ids: list[int]) -> Iterator[tuple[np.ndarray, int]]:
        for i in shard_ids:
            for _, tok, label in iter_shard(self.paths[i], self.checker, self.entries[i]["count"]):
                yield tok, label

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        if info is not None and info.num_workers != len(self.plans):
            raise RuntimeError(f"planned for {len(self.plans)} workers, running under {info.num_workers}")
        epoch = self.epoch + self._passes
        if info is not None:
            self._passes += 1
        plan = self.plans[worker]
        shard_ids = list(plan.shards)
        rng = random.Random(f"orderlab/{self.seed}/{epoch}/{self.rank}/{worker}")  # local RNG; str seeds are stable
        if self.train:
            rng.shuffle(shard_ids)
        samples: Iterator[tuple[np.ndarray, int]] = self._samples(shard_ids)
        if self.train and self.shuffle_buffer > 1:
            samples = wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
        for size in plan.batch_sizes:
            batch = [next(samples) for _ in range(size)]
            yield (torch.from_numpy(np.stack([t for t, _ in batch]).astype(np.int64)),  # (B, H, W)
                   torch.tensor([y for _, y in batch], dtype=torch.int64))  # (B,)
        if not self.train:
            for _ in samples:  # reaching the end runs iter_shard's per-shard count check
                raise ShardError(f"shards {[self.paths[i] for i in shard_ids]} hold more samples than the "
                                 "manifest says")


class _EpochLoader(DataLoader):
    """DataLoader that advances the dataset's epoch in the main process before each pass (reseeds the shuffle)."""

    def __iter__(self):
        self.dataset.epoch += 1
        return super().__iter__()


class OrderDataModule(pl.LightningDataModule):
    """Token shards written by ``orderlab prepare`` as train/val loaders of ``(tokens (B, H, W), labels (B,))``.

    Args:
        root: dataset folder (with ``manifest.json``).
        batch_size: samples per batch.
        num_workers: DataLoader workers per rank (0: read in the main process).
        shuffle_buffer: sample-level shuffle buffer of the train loader.
        seed: seed of the train shuffle (combined with epoch, rank and worker).
        val_batch_size: batch size of val/test loaders (default: ``batch_size``).
        verify_checksums: check every shard's sha256 against the manifest in ``setup``.
        rank: this process's rank; None takes it from the trainer, else torch.distributed, else 0.
        world_size: number of ranks; None as for ``rank``.
    """

    def __init__(self, root: str, batch_size: int = 64, num_workers: int = 0, shuffle_buffer: int = 1000,
                 seed: int = 0, val_batch_size: int | None = None, verify_checksums: bool = True,
                 rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        for key, value, lo in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0),
                               ("shuffle_buffer", shuffle_buffer, 0), ("val_batch_size", val_batch_size or 1, 1),
                               ("world_size", world_size or 1, 1)):
            if value < lo:
                raise ValueError(f"data.{key}={value} must be >= {lo}")
        if rank is not None and not 0 <= rank < (world_size or 1):
            raise ValueError(f"data.rank={rank} must be in [0, world_size={world_size or 1})")
        self.root, self.batch_size, self.num_workers = root, batch_size, num_workers
        self.shuffle_buffer, self.seed, self.verify_checksums = shuffle_buffer, seed, verify_checksums
        self.val_batch_size = val_batch_size or batch_size
        self._rank, self._world = rank, world_size
        self.manifest = read_manifest(root)  # read now: a model may need vocab_size / grid before setup
        self._verified = False

    # ------------------------------------------------------------------------------------------------ facts
    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.manifest["grid"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def tokenizer_ref(self) -> dict[str, Any]:
        return dict(self.manifest["tokenizer"])

    def check_compatible(self, grid: tuple[int, int] | None = None, vocab_size: int | None = None,
                         num_classes: int | None = None) -> None:
        """Raise :class:`ShardError` naming the first of grid / vocab_size / num_classes that differs."""
        check_compatible(self.manifest, grid, vocab_size, num_classes)

    def load_split(self, split: str = "val", limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole split in memory (every rank gets all of it): tokens (N, H, W) and labels (N,), both int64."""
        return load_split(self.root, split, limit=limit, checksums=self.verify_checksums)

    def tokenizer(self):
        """The dataset's tokenizer, rebuilt from the manifest reference."""
        from orderlab.tokenizers import load_tokenizer

        return load_tokenizer(self.manifest["tokenizer"], self.root)

    def rank_and_world(self) -> tuple[int, int]:
        """(rank, world size): explicit arguments, else the trainer, else torch.distributed, else (0, 1)."""
        if self._rank is not None or self._world is not None:
            return int(self._rank or 0), int(self._world or 1)
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    # ------------------------------------------------------------------------------------------------ loaders
    def setup(self, stage: str | None = None) -> None:
        if not self._verified:
            verify_shards(self.root, self.manifest, checksums=self.verify_checksums)
            self._verified = True

    def dataset(self, split: str, train: bool) -> ShardStream:
        """This rank's :class:`ShardStream` over ``split``."""
        if split not in self.manifest["splits"]:
            raise ShardError(f"{self.root}: no split {split!r}; the manifest has {sorted(self.manifest['splits'])}")
        self.setup()
        rank, world = self.rank_and_world()
        counts = [e["count"] for e in self.manifest["splits"][split]["shards"]]
        plans = plan_rank(counts, rank, world, self.num_workers, self.batch_size if train else self.val_batch_size,
                          train)
        return ShardStream(self.root, self.manifest, split, plans, train, self.shuffle_buffer, self.seed, rank)

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.dataset(split, train)
        return _EpochLoader(ds, batch_size=None, num_workers=self.num_workers,
                            persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test" if "test" in self.manifest["splits"] else "val", False)
