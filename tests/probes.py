"""Callbacks that record what a training run did, for tests that run ``orderlab fit`` in subprocesses.

Importable as ``probes`` when ``tests/`` is on PYTHONPATH; set in YAML as ``class_path: probes.RecordBatches``.
"""

import hashlib
import os

from lightning.pytorch.callbacks import Callback


class RecordBatches(Callback):
    """Append one line per training sample: ``global_step sha1(tokens)`` to ``folder/rank{r}.txt``."""

    def __init__(self, folder: str):
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        os.makedirs(self.folder, exist_ok=True)
        tokens, labels = batch
        with open(os.path.join(self.folder, f"rank{trainer.global_rank}.txt"), "a") as fh:
            for t, y in zip(tokens.cpu().numpy(), labels.cpu().tolist()):
                fh.write(f"{trainer.global_step} {hashlib.sha1(t.tobytes() + bytes([y])).hexdigest()}\n")


class RecordStart(Callback):
    """Write the global step at which training (re)starts to ``path``."""

    def __init__(self, path: str):
        self.path = path

    def on_train_start(self, trainer, pl_module):
        with open(self.path, "a") as fh:
            fh.write(f"{trainer.global_step}\n")
