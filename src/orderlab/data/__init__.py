"""Datasets as webdataset token shards: preparation, validation and the Lightning DataModule.

The main names are reachable from here but imported lazily, so that ``import orderlab.data`` stays cheap
(``datamodule`` pulls Lightning, about 5 s; ``shards`` pulls webdataset)::

    from orderlab.data import OrderDataModule, load_split, prepare_dataset, read_manifest
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "OrderDataModule": "orderlab.data.datamodule",
    "load_split": "orderlab.data.shards",
    "read_split": "orderlab.data.shards",
    "read_manifest": "orderlab.data.shards",
    "check_compatible": "orderlab.data.shards",
    "ShardError": "orderlab.data.shards",
    "prepare_dataset": "orderlab.data.datasets",
    "write_dataset": "orderlab.data.datasets",
    "PrepareOptions": "orderlab.data.datasets",
    "Prepared": "orderlab.data.datasets",
    "list_datasets": "orderlab.data.datasets",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'orderlab.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)
