"""TensorBoard callbacks: sample grids, order pictures and attention-locality maps (side effects live here), and
a per-run training time guard (:class:`TimeLimit`).

Each callback is configured from YAML through its typed ``__init__``::

    trainer:
      callbacks:
        - class_path: orderlab.train.callbacks.AttentionLocality
          init_args: {schedules: [random, locality], steps: 16, radius: 1}

They expect the LightningModule to expose ``model`` (the backbone) and ``decode_tokens(tokens (B, H, W)) -> images
(B, C, Hpx, Wpx) in [0, 1]`` (SampleGrids only). Everything runs on global rank 0 only and is a no-op without a
TensorBoardLogger. Under DDP the other ranks do not wait for rank 0's extra forwards; with a sharded strategy
(FSDP) rank 0 cannot run the backbone alone, so do not use these callbacks there.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from orderlab.analysis.attention_maps import LocalityMaps, attention_locality, query_layers
from orderlab.analysis.evaluation import image_grid
from orderlab.analysis.pictures import plot_plan
from orderlab.checks import check_positive_int
from orderlab.decoding.decode import generate
from orderlab.plan import PlanError
from orderlab.schedule import get_schedule, list_schedules
from orderlab.seeding import PICTURE_SAMPLE, sample_generator

__all__ = ["SampleGrids", "OrderPictures", "AttentionLocality", "TimeLimit", "upscale", "locality_figure",
           "tensorboard_writer"]


# ----------------------------------------------------------------------------------------------------------- helpers
def tensorboard_writer(trainer):
    """The SummaryWriter of the trainer's first TensorBoardLogger, or None (then the callbacks do nothing)."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


def upscale(images: torch.Tensor, min_side: int) -> torch.Tensor:
    """Nearest-neighbour upscale (B, C, h, w) by a whole factor so the short side reaches ``min_side`` pixels: an 8 x 8
    digit is unreadable at its own size in TensorBoard; 256 px images stay as they are."""
    k = max(1, math.ceil(min_side / min(images.shape[-2:])))
    return images if k == 1 else images.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)


def _figure() -> Figure:
    fig = Figure(figsize=(4.6, 3.8), dpi=100)
    FigureCanvasAgg(fig)  # the Agg canvas directly, not pyplot: no display, no global backend switch
    return fig


def _rgb(fig: Figure) -> np.ndarray:
    """(Hpx, Wpx, 3) uint8 rendering of a figure, for ``add_image(..., dataformats="HWC")``."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _due(trainer, every_n_epochs: int) -> bool:
    # the sanity check runs an untrained model on two batches: nothing worth a picture
    return not trainer.sanity_checking and (trainer.current_epoch + 1) % every_n_epochs == 0


def _check_every(every_n_epochs: int) -> int:
    return check_positive_int(every_n_epochs, "every_n_epochs")


def _steps_tag(steps: int | None) -> str:
    return "natural" if steps is None else f"T{steps}"


def locality_figure(maps: LocalityMaps, layer: int, title: str | None = None) -> Figure:
    """Heat map of one layer's offset map: x = column offset, y = row offset, the target marked at the centre and the
    Chebyshev radius drawn as a dashed box."""
    h, w, r = maps.height, maps.width, maps.radius
    fig = _figure()
    ax = fig.add_subplot()
    data = maps.maps[layer].numpy()  # (2H - 1, 2W - 1)
    im = ax.imshow(data, cmap="magma", interpolation="nearest",
                   extent=(-(w - 1) - 0.5, (w - 1) + 0.5, (h - 1) + 0.5, -(h - 1) - 0.5))
    ax.add_patch(Rectangle((-r - 0.5, -r - 0.5), 2 * r + 1, 2 * r + 1, fill=False, edgecolor="cyan", lw=1.0,
                           ls="--"))
    ax.plot([0], [0], marker="x", color="cyan", markersize=7, mew=2)  # the query's own target
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # offsets are whole cells
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("column offset dc")
    ax.set_ylabel("row offset dr")
    share, base = maps.share[layer], maps.uniform_share[layer]
    ax.set_title(title or f"layer {layer}: share r<={r} {share:.3f} (uniform {base:.3f})", fontsize=9)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("attention mass")
    fig.tight_layout()
    return fig


def _grid_size(pl_module) -> tuple[int, int]:
    cfg = pl_module.model.config
    return cfg.height, cfg.width


# --------------------------------------------------------------------------------------------------------- callbacks
class SampleGrids(Callback):
    """At validation end, generate ``num`` samples per (schedule, steps) and log them as one image grid.

    Args:
        schedules: registered schedule names.
        steps: step budgets T; None for each schedule's natural budget.
        num: samples per grid; labels cycle through the classes (the null class for an unconditional model).
        every_n_epochs: log at validations of epochs e with (e + 1) % every_n_epochs == 0.
        cfg_scale: classifier-free guidance weight (1 = off; needs a null class otherwise).
        seed: sample i uses ``sample_generator(seed, i)`` (orderlab.seeding), so grids of one run are comparable
            across epochs.
        min_side: images are upscaled (nearest neighbour, whole factor) until their short side has this many pixels.
    """

    def __init__(self, schedules: list[str], steps: list[int] | None = None, num: int = 16, every_n_epochs: int = 1,
                 cfg_scale: float = 1.0, seed: int = 0, min_side: int = 64):
        if not schedules:
            raise ValueError("SampleGrids needs at least one schedule")
        for name in schedules:
            get_schedule(name)  # unknown names fail at config time, listing the choices
        check_positive_int(num, "num")
        self.schedules, self.steps = list(schedules), list(steps) if steps else [None]
        self.num, self.every_n_epochs = num, _check_every(every_n_epochs)
        self.cfg_scale, self.seed, self.min_side = cfg_scale, seed, max(1, min_side)

    def setup(self, trainer, pl_module, stage: str) -> None:
        cfg = pl_module.model.config
        if self.cfg_scale != 1.0 and cfg.null_label is None:
            raise ValueError(f"SampleGrids(cfg_scale={self.cfg_scale}) needs a model with a null class")
        bad = [t for t in self.steps if t is not None and not 1 <= t <= cfg.num_tokens]
        if bad:
            raise ValueError(f"SampleGrids steps {bad} are outside 1..N={cfg.num_tokens}")

    def labels(self, pl_module) -> torch.Tensor:
        """(num,) labels cycling through the classes, on the module's device."""
        cfg = pl_module.model.config
        if cfg.num_classes > 0:
            return torch.arange(self.num, device=pl_module.device) % cfg.num_classes
        return torch.full((self.num,), cfg.null_label, dtype=torch.long, device=pl_module.device)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not _due(trainer, self.every_n_epochs):
            return
        labels = self.labels(pl_module)
        for name in self.schedules:
            for steps in self.steps:
                tokens = generate(pl_module.model, name, steps, labels, cfg_scale=self.cfg_scale,
                                  seed=self.seed)  # (B, H, W)
                images = pl_module.decode_tokens(tokens).detach().float().clamp(0, 1).cpu()  # (B, C, Hpx, Wpx)
                images = upscale(images, self.min_side)
                grid = image_grid(images, nrow=max(1, math.ceil(math.sqrt(len(images)))))  # (Hg, Wg, 3) uint8
                writer.add_image(f"samples/{name}/{_steps_tag(steps)}", grid, trainer.global_step,
                                 dataformats="HWC")


class OrderPictures(Callback):
    """Once at fit start, log the order picture (:func:`orderlab.analysis.pictures.plot_plan`) of each schedule.

    Args:
        schedules: registered names; None for every registered schedule.
        steps: T for every picture; None for each schedule's natural budget.
        seed: plans come from ``sample_generator(seed, 0)``, the plan of sample 0 of a decode with this seed.
    """

    def __init__(self, schedules: list[str] | None = None, steps: int | None = None, seed: int = 0):
        for name in schedules or []:
            get_schedule(name)
        self.schedules, self.steps, self.seed = schedules, steps, seed

    @rank_zero_only
    def on_fit_start(self, trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None:
            return
        h, w = _grid_size(pl_module)
        for name in self.schedules or list_schedules():
            try:
                plan = get_schedule(name).plan(h, w, self.steps, sample_generator(self.seed, PICTURE_SAMPLE))
            except PlanError as err:  # e.g. a budget a geometric schedule cannot meet: skip the picture, not the fit
                rank_zero_warn(f"OrderPictures: no picture for schedule {name!r} at steps={self.steps}: {err}")
                continue
            fig = _figure()
            plot_plan(plan, fig.add_subplot(), title=f"{name}, {h}x{w}, T={plan.num_steps}")
            fig.tight_layout()
            writer.add_image(f"orders/{name}", _rgb(fig), trainer.global_step, dataformats="HWC")


class AttentionLocality(Callback):
    """At validation end, log attention-locality maps (:mod:`orderlab.analysis.attention_maps`) of the first ``num`` val samples.

    Per schedule and probed layer it logs the heat map ``locality/map/layer{l}/{schedule}`` and the scalars
    ``locality/share_r{r}/layer{l}/{schedule}`` (content mass within Chebyshev radius r of the target),
    ``locality/uniform_share_r{r}/layer{l}/{schedule}`` (its uniform-attention baseline) and
    ``locality/cond_mass/layer{l}/{schedule}``.

    Args:
        layers: indices into ``model.attention_modules()``; None for every query layer (for the decoupled backbone
            only the pass-2 cross-attention layers hold queries).
        schedules: registered names whose plans lay out the teacher-forced forward.
        steps: T of those plans; None for each schedule's natural budget.
        radius: Chebyshev radius r of the scalar.
        num: validation samples (the first ones, cached from the first validation batches).
        every_n_epochs: log at validations of epochs e with (e + 1) % every_n_epochs == 0.
        seed: sample i's plan uses ``sample_generator(seed, i)`` (orderlab.seeding).
    """

    def __init__(self, layers: list[int] | None = None, schedules: list[str] = ["random"],  # noqa: B006
                 steps: int | None = None, radius: int = 1, num: int = 16, every_n_epochs: int = 1, seed: int = 0):
        if not schedules:
            raise ValueError("AttentionLocality needs at least one schedule")
        for name in schedules:
            get_schedule(name)
        check_positive_int(radius, "radius", minimum=0)
        check_positive_int(num, "num")
        self.layers = None if layers is None else list(layers)
        self.schedules, self.steps, self.radius = list(schedules), steps, radius
        self.num, self.every_n_epochs, self.seed = num, _check_every(every_n_epochs), seed
        self._tokens: list[torch.Tensor] = []  # cached (b, H, W) val tokens, on the CPU
        self._labels: list[torch.Tensor] = []

    def setup(self, trainer, pl_module, stage: str) -> None:
        model = pl_module.model
        valid, count = query_layers(model), len(model.attention_modules())
        bad = [i for i in self.layers or [] if not -count <= i < count or i % count not in valid]
        if bad:
            raise ValueError(f"AttentionLocality layers {bad} hold no position queries; this "
                             f"{type(model).__name__} has query layers {valid}")
        if self.steps is not None and not 1 <= self.steps <= model.config.num_tokens:
            raise ValueError(f"AttentionLocality steps={self.steps} is outside 1..N={model.config.num_tokens}")

    @property
    def cached(self) -> int:
        return sum(t.shape[0] for t in self._tokens)

    @rank_zero_only
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        # the first val batches are the same every validation (val loaders do not shuffle): cache them once
        if dataloader_idx != 0 or self.cached >= self.num or tensorboard_writer(trainer) is None:
            return
        tokens, labels = batch[0], batch[1]
        take = self.num - self.cached
        self._tokens.append(tokens[:take].detach().long().cpu())
        self._labels.append(labels[:take].detach().long().cpu())

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        writer = tensorboard_writer(trainer)
        if writer is None or not _due(trainer, self.every_n_epochs) or not self._tokens:
            return
        tokens = torch.cat(self._tokens).to(pl_module.device)  # (B, H, W)
        labels = torch.cat(self._labels).to(pl_module.device)  # (B,)
        step, r = trainer.global_step, self.radius
        for name in self.schedules:
            maps = attention_locality(pl_module.model, tokens, labels, schedule=name, steps=self.steps,
                                      seed=self.seed, layers=self.layers, radius=r)
            for layer in maps.maps:
                fig = locality_figure(maps, layer, title=f"{name}, layer {layer}\nshare r<={r} "
                                      f"{maps.share[layer]:.3f} (uniform {maps.uniform_share[layer]:.3f})")
                writer.add_image(f"locality/map/layer{layer}/{name}", _rgb(fig), step, dataformats="HWC")
                writer.add_scalar(f"locality/share_r{r}/layer{layer}/{name}", maps.share[layer], step)
                writer.add_scalar(f"locality/uniform_share_r{r}/layer{layer}/{name}", maps.uniform_share[layer], step)
                writer.add_scalar(f"locality/cond_mass/layer{layer}/{name}", maps.cond_mass[layer], step)


# ------------------------------------------------------------------------------------------------------ time guard
class TimeLimit(Callback):
    """Stop training after ``minutes`` of wall time in THIS run: a guard, not a budget.

    Unlike ``Trainer(max_time=...)``, whose elapsed-time counter is saved in the checkpoint (so a resumed run adds
    almost nothing), this keeps no state: a resumed run gets the whole limit again and continues towards
    ``max_steps``. When the limit stops training before ``max_steps``, it says so on stderr and writes ``last.ckpt``
    (for every ModelCheckpoint with ``save_last``) at the step reached, so a rerun resumes there rather than at the
    last periodic checkpoint. ``stopped_at`` holds that step (None when the limit did not stop training).

    Args:
        minutes: wall-time limit of one run's training (validation included), >= 0.
    """

    def __init__(self, minutes: float = 10.0):
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not minutes >= 0:
            raise ValueError(f"TimeLimit minutes={minutes!r} must be a number >= 0")
        self.minutes = float(minutes)
        self.stopped_at: int | None = None
        self._start: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._start, self.stopped_at = time.monotonic(), None

    def on_train_batch_end(self, trainer, *args, **kwargs) -> None:
        if self._start is None or trainer.should_stop:
            return
        stop = trainer.strategy.broadcast(time.monotonic() - self._start >= 60 * self.minutes)
        if stop:
            trainer.should_stop = True
            self.stopped_at = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        if self.stopped_at is None or 0 <= trainer.max_steps <= trainer.global_step:
            return
        if trainer.is_global_zero:
            of = f" of {trainer.max_steps}" if trainer.max_steps >= 0 else ""
            sys.stderr.write(f"\n!!! TimeLimit: training stopped by the {self.minutes:g}-minute limit of this run at "
                             f"step {trainer.global_step}{of}. Run the same command again to continue from "
                             "last.ckpt.\n\n")
            sys.stderr.flush()
        for cb in trainer.checkpoint_callbacks:
            if getattr(cb, "save_last", None) is True and cb.dirpath:
                path = cb.last_model_path or os.path.join(cb.dirpath, cb.CHECKPOINT_NAME_LAST + cb.FILE_EXTENSION)
                trainer.save_checkpoint(path)
                cb.last_model_path = path  # its own end-of-training save then overwrites this file, not last-v1.ckpt
