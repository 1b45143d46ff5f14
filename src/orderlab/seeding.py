"""The one rule for deriving seeds: every per-item generator comes from ``(seed, stream, index...)`` by a hash.

Seeding item i with ``seed + i`` makes runs with neighbouring seeds share all but one of their items (runs with
``--seed 0`` and ``--seed 1`` over 270 samples shared 269 generators). Here each derived seed is 63 bits of
BLAKE2b over the run seed, a stream name and the item's indices, so different seeds, streams or indices give
unrelated generators, while the same inputs give the same seed on every machine and Python build (no use of
``hash()``, whose string hashing is salted per process).

Streams in use (named so that two purposes never share a generator):

- ``sample``: sample i of a decode (its plan and its tokens); ``generate(seed=s, first_index=k)`` gives sample
  i the stream ``(s, "sample", k + i)``, so a batch decodes exactly like its items one by one, and evaluation
  batches continue the numbering of the batches before them.
- ``train-plan``, ``train-budget``, ``train-labels``: training plans per (step, rank, sample), the step budget
  per step, and label dropout per (step, rank).
- ``val-plan``: validation plans per (batch, sample).
- ``search-worker``: the Optuna sampler of worker w in the r-th invocation of a search.
- ``repeat``: repeat r of a timed benchmark row.
"""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "generator", "sample_seed", "sample_generator", "check_seed", "SEED_BITS", "PICTURE_SAMPLE"]

SEED_BITS = 63  # torch.Generator.manual_seed takes up to 64 bits; 63 keep every derived seed a positive int64
_DIGEST_BYTES = 8  # BLAKE2b digest size: 64 bits, of which the low SEED_BITS are kept
_MASK = (1 << SEED_BITS) - 1
# the sample index whose generator plans a lone picture of a schedule (``orderlab schedules``, the OrderPictures
# callback): it is sample 0 of ``orderlab sample --seed s``, so the picture shows the plan that sample was drawn with
PICTURE_SAMPLE = 0


def check_seed(seed) -> int:
    """The seed as an int; bools, floats and other types are an error naming the value."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return seed


def derive_seed(seed: int, stream: str, *index: int) -> int:
    """A 63-bit seed for item ``index`` of ``stream`` in a run seeded with ``seed`` (BLAKE2b, 8-byte digest)."""
    check_seed(seed)
    for i in index:
        check_seed(i)
    key = ":".join([str(seed), stream, *(str(i) for i in index)]).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=_DIGEST_BYTES).digest(), "little") & _MASK


def generator(seed: int, stream: str, *index: int) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, stream, *index))


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a decode or an evaluation seeded with ``seed``."""
    return derive_seed(seed, "sample", index)


def sample_generator(seed: int, index: int) -> torch.Generator:
    """The generator of sample ``index`` (its plan, then its tokens)."""
    return torch.Generator().manual_seed(sample_seed(seed, index))
