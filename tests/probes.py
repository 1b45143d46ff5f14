"""Callbacks that record what a training run did, for tests that run ``orderlab fit`` in subprocesses.

Importable as ``probes`` when ``tests/`` is on PYTHONPATH; set in YAML as ``class_path: probes.RecordBatches``.
"""

import hashlib
import os
import time

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


class PauseAt(Callback):
    """Before the batch at global step ``step``, write ``path`` and wait there (up to ``seconds``) to be killed.

    A test kills the run at a known step instead of racing a fast or slow machine. A run that finds ``path``
    already there (the resumed run) does not pause.
    """

    def __init__(self, step: int, path: str, seconds: float = 600.0):
        self.step, self.path, self.seconds = step, path, seconds

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step and not os.path.exists(self.path):
            with open(self.path, "w") as fh:
                fh.write(f"{trainer.global_step}\n")
            time.sleep(self.seconds)
