"""The LightningModule: a thin wrapper that trains either backbone on Plans drawn from a training schedule.

Training plans follow LPD's recipe by default: a random order per sample, with one group-size list per batch
drawn from a set of step budgets, so one model serves every budget at inference. ``train_schedule`` can name
any registered schedule instead ("train as you decode", an ablation no anchor reports). Side effects (sample
grids, order pictures, attention maps) live in :mod:`orderlab.train.callbacks`, not here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from orderlab import seeding
from orderlab.checks import check_positive_int
from orderlab.model.config import ModelConfig, check_data_matches, drop_labels
from orderlab.model.registry import build_model
from orderlab.plan import Plan
from orderlab.schedule import Schedule, get_schedule

__all__ = ["OrderModule", "default_budgets", "CHECKPOINT_KEY"]

CHECKPOINT_KEY = "orderlab"  # checkpoint["orderlab"]: what sampling needs without the Lightning class


def default_budgets(n: int) -> list[int]:
    """N, N/2, N/4, ... down to 4 steps: LPD's training lists for 256 tokens are of this kind (256..8)."""
    out, t = [], n
    while t >= 4:
        out.append(t)
        t //= 2
    return out or [n]


class OrderModule(L.LightningModule):
    """Train a flexible-order backbone on plans from a training schedule.

    Args:
        backbone: the backbone's config (``arch`` a registered backbone, preset or depth/dim/heads, grid, vocabulary).
        train_schedule: registered name or Schedule (class_path) whose plans train the model; "random" is
            LPD's recipe.
        budgets: step budgets T; each training batch draws one uniformly (None: N, N/2, ... 4).
        label_dropout: probability of replacing a label by the null class (classifier-free guidance).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay, applied to >= 2-D weights only (not norms or biases).
        betas: AdamW betas (LlamaGen/LPD use 0.9, 0.95).
        warmup_steps: linear warm-up before the cosine decay.
        min_lr_ratio: the cosine decays to ``lr * min_lr_ratio``.
        seed: seeds the training plans, budgets and label dropout through :mod:`orderlab.seeding` (streams
            ``train-plan`` per (step, rank, sample), ``train-budget`` per step, ``train-labels`` per (step, rank)).
        val_steps: the budget of validation plans (random order, seeded by batch index; None: N/4).
    """

    def __init__(self, backbone: ModelConfig | None = None, train_schedule: str | Schedule = "random",
                 budgets: list[int] | None = None, label_dropout: float = 0.1, lr: float = 3e-4,
                 weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100,
                 min_lr_ratio: float = 0.1, seed: int = 0, val_steps: int | None = None):
        super().__init__()
        cfg = backbone if backbone is not None else ModelConfig()
        if isinstance(cfg, dict):  # from an old checkpoint's hparams
            cfg = ModelConfig(**cfg)
        n = cfg.num_tokens
        self.train_plans = get_schedule(train_schedule)  # unknown names raise, listing the choices
        self.budgets = list(budgets) if budgets else default_budgets(n)
        for i, t in enumerate(self.budgets):
            try:
                check_positive_int(t, f"model.budgets[{i}]", maximum=n)
            except ValueError as err:  # say where the bound comes from
                raise ValueError(f"{err} (N={n}, the {cfg.height}x{cfg.width} grid)") from None
        if val_steps is not None and not 1 <= val_steps <= n:
            raise ValueError(f"model.val_steps={val_steps} is outside 1..N={n}")
        if not 0.0 <= label_dropout < 1.0:
            raise ValueError(f"model.label_dropout={label_dropout} must be in [0, 1)")
        if label_dropout > 0 and cfg.null_label is None:
            raise ValueError("model.label_dropout > 0 needs model.backbone.null_class=true")
        self.save_hyperparameters(ignore=["backbone"])
        self.hparams["backbone"] = dataclasses.asdict(cfg)  # plain dict: checkpoints load without this class
        self.config = cfg
        self.model = build_model(cfg)
        self.val_steps = val_steps or max(1, n // 4)
        self.data_info: dict[str, Any] = {}  # the data manifest's grid, vocabulary and tokenizer (set in setup)
        self._tokenizer = None

    # ----------------------------------------------------------------------------------------------- data link
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "manifest"):
            check_data_matches(self.config, dm.manifest)
            self.data_info = data_info(dm.manifest, getattr(dm, "root", None))

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, H, W) tokens -> (B, C, Hpx, Wpx) images in [0, 1], through the data's tokenizer."""
        if self._tokenizer is None:
            from orderlab.train.checkpoint import tokenizer_from_info

            self._tokenizer = tokenizer_from_info(self.data_info, self.config)
        return self._tokenizer.decode(tokens.cpu()).clamp(0, 1)

    # -------------------------------------------------------------------------------------------------- plans
    def plans_for(self, batch: int, steps: int, schedule: Schedule, seed: int, stream: str,
                  *index: int) -> list[Plan]:
        """One plan per sample, sample i drawn from ``generator(seed, stream, *index, i)`` (orderlab.seeding)."""
        gens = [seeding.generator(seed, stream, *index, i) for i in range(batch)]
        plans = schedule.plan_batch(self.config.height, self.config.width, steps, gens)
        if len({p.sizes for p in plans}) > 1:  # one mask per batch needs one size list
            raise ValueError(f"schedule {schedule!r} gave different group sizes within a batch at steps={steps}")
        return plans

    def _train_budget(self, step: int) -> int:
        g = seeding.generator(self.hparams.seed, "train-budget", step)  # every rank draws the same budget
        return self.budgets[int(torch.randint(len(self.budgets), (1,), generator=g))]

    # -------------------------------------------------------------------------------------------------- steps
    def shared_step(self, batch, plans: list[Plan], labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of every query against its target; returns (loss, per-token nats (B, N))."""
        tokens = batch[0]  # (B, H, W)
        b = tokens.shape[0]
        flat = tokens.reshape(b, -1).long()  # (B, N)
        orders = torch.stack([p.order for p in plans]).to(flat.device)  # (B, N)
        targets = torch.gather(flat, 1, orders)  # (B, N) in plan order
        logits = self.model.plan_logits(labels, targets, orders, plans[0].sizes)  # (B, N, V) in plan order
        nats = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, N)
        return nats.mean(), nats

    def _rank(self) -> int:
        # every rank draws the same budget (one mask per step) but different orders for its own samples
        return self.global_rank if self._trainer else 0

    def training_step(self, batch, batch_idx: int):
        tokens, labels = batch
        step = int(self.global_step)
        budget = self._train_budget(step)
        seed, rank = self.hparams.seed, self._rank()
        plans = self.plans_for(tokens.shape[0], budget, self.train_plans, seed, "train-plan", step, rank)
        g = seeding.generator(seed, "train-labels", step, rank)
        if self.hparams.label_dropout > 0:
            labels = drop_labels(labels, self.hparams.label_dropout, self.config.null_label, g)
        loss, _ = self.shared_step(batch, plans, labels)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/bits_per_token", loss / math.log(2))
        self.log("train/steps_T", float(budget))
        return loss

    def validation_step(self, batch, batch_idx: int):
        tokens, labels = batch
        # validation plans do not depend on the training seed, so runs with different seeds are scored alike
        plans = self.plans_for(tokens.shape[0], self.val_steps, get_schedule("random"), 0, "val-plan", batch_idx)
        loss, _ = self.shared_step(batch, plans, labels)
        bpt = loss / math.log(2)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=tokens.shape[0])
        self.log("val/bits_per_token", bpt, sync_dist=True, batch_size=tokens.shape[0])
        self.log("hp_metric", bpt, sync_dist=True, batch_size=tokens.shape[0])

    def test_step(self, batch, batch_idx: int):
        tokens, labels = batch
        plans = self.plans_for(tokens.shape[0], self.val_steps, get_schedule("random"), 0, "test-plan", batch_idx)
        loss, _ = self.shared_step(batch, plans, labels)
        self.log("test/bits_per_token", loss / math.log(2), sync_dist=True, batch_size=tokens.shape[0])

    # ---------------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim >= 2]
        no_decay = [p for p in self.model.parameters() if p.requires_grad and p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=self.hparams.lr, betas=tuple(self.hparams.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: lr_factor(s, self.hparams.warmup_steps, total, self.hparams.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --------------------------------------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {"model_config": dataclasses.asdict(self.config), "data": self.data_info,
                                      "train_schedule": repr(self.train_plans), "budgets": self.budgets}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.data_info = checkpoint.get(CHECKPOINT_KEY, {}).get("data", {})


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def data_info(manifest: dict, root: str | None) -> dict[str, Any]:
    """What a checkpoint keeps about its data: enough to decode tokens to pixels and to find the real images."""
    return {"name": manifest.get("dataset"), "grid": list(manifest["grid"]), "vocab_size": int(manifest["vocab_size"]),
            "num_classes": int(manifest.get("num_classes", 0)), "tokenizer": manifest.get("tokenizer", {}),
            "root": None if root is None else str(root)}
