"""Feature extractors for Fréchet / kernel distances and precision-recall, all offline.

* :class:`ClassifierFeatures`: the penultimate layer of a small CNN classifier that orderlab trains per dataset
  (:mod:`orderlab.metrics.feature_train`) and ships under ``orderlab/assets``. The Fréchet distance on these
  features is reported as **FCD** ("Fréchet classifier distance", TF-GAN's name for FID with another
  classifier); it is *not* comparable with Inception FIDs in papers.
* :class:`TorchScriptFeatures`: an Inception-v3 (or any) TorchScript feature network loaded from a local file
  (none ships with orderlab); its Fréchet distance is reported as FID, with the file named.

Every extractor is a frozen, always-eval ``nn.Module`` taking images ``(B, C, H, W)`` float in [0, 1] and
returning ``(B, D)`` features, with ``num_features`` set (torchmetrics would otherwise probe it with a
3x299x299 dummy) and a ``fingerprint()`` for caches and reports. :func:`load_extractor` picks one by name or path.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FeatureExtractor", "FeatureCNN", "ClassifierFeatures", "TorchScriptFeatures", "classifier_features",
    "load_extractor", "asset_path", "FEATURE_NET_FORMAT", "ASSETS", "MAX_FEATURES",
]

FEATURE_NET_FORMAT = "orderlab-feature-net-v1"
ASSETS = {"digits": "fcd_digits.pt", "mnist": "fcd_mnist.pt"}  # committed weights, by dataset
# torchmetrics' Fréchet distance takes eigenvalues of a D x D product: under 1 s on CPU up to D = 512, about 10 s at
# 2048 (Inception); project-trained feature nets stay at or under this width
MAX_FEATURES = 512


class FeatureExtractor(nn.Module):
    """Base: frozen, eval-only; subclasses set ``num_features``, ``key`` (fcd / fid), ``short_label`` and ``label``."""

    kid_scale: float = 1.0  # features are divided by this before KID (1: standard KID, as for Inception)

    num_features: int
    key: str  # the distance's short name in metric dicts: "fcd" (classifier) or "fid" (Inception)
    short_label: str  # the honest name for tables, e.g. "FCD (classifier features)"
    label: str  # the honest, human-readable name of the feature space, with its provenance

    def freeze(self) -> FeatureExtractor:
        self.requires_grad_(False)
        return super().train(False)

    def train(self, mode: bool = True) -> FeatureExtractor:
        return super().train(False)  # stays in eval when Lightning calls .train() on a parent module

    def fingerprint(self) -> str:
        """Hex sha256 identifying the extractor (weights and config); keys feature caches."""
        raise NotImplementedError


class FeatureCNN(nn.Module):
    """conv3x3-ReLU-maxpool stages, then a ReLU fully-connected feature layer and a linear class head.

    Args:
        in_channels: C.
        image_size: H = W of the input.
        widths: channels of each conv stage (each stage halves the resolution).
        feature_dim: D, width of the feature layer.
        num_classes: classes of the head.
    """

    def __init__(self, in_channels: int = 1, image_size: int = 8, widths: tuple[int, ...] = (16, 32),
                 feature_dim: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        if not 1 <= feature_dim <= MAX_FEATURES:
            raise ValueError(f"feature_dim={feature_dim} must be in [1, {MAX_FEATURES}] (Fréchet distance cost)")
        layers, c, s = [], in_channels, image_size
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, s = w, s // 2
        if s < 1:
            raise ValueError(f"{len(widths)} pooling stages are too many for image_size {image_size}")
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(c * s * s, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)
        self.register_buffer("mean", torch.zeros(()))  # input normalisation, from the training images
        self.register_buffer("std", torch.ones(()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, D)."""
        return F.relu(self.fc(self.body((x - self.mean) / self.std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> class logits (B, classes)."""
        return self.head(self.features(x))


class ClassifierFeatures(FeatureExtractor):
    """Penultimate features of a project-trained :class:`FeatureCNN` (the FCD feature space).

    Args:
        net: the trained classifier.
        dataset: dataset it was trained on (names the metric).
        config: its constructor arguments (part of the fingerprint).
        meta: training facts (accuracy, seed, recipe, ``feature_rms``: the KID scale) kept for reports.
    """

    key = "fcd"

    def __init__(self, net: FeatureCNN, dataset: str, config: dict[str, Any], meta: dict[str, Any] | None = None):
        super().__init__()
        self.net, self.dataset, self.config, self.meta = net, dataset, dict(config), dict(meta or {})
        self.num_features = int(config["feature_dim"])
        s = int(config["image_size"])
        self.image_shape = (int(config["in_channels"]), s, s)
        # KID's cubic kernel (x.y / D + 1) ** 3 is tuned for Inception features of RMS below 1; these ReLU features
        # have RMS about 6, where the cube makes KID noisy and non-monotone in corruption. Dividing by the RMS of
        # the training images' features (fixed per net, in its meta) puts them in the kernel's intended range.
        self.kid_scale = float(self.meta.get("feature_rms", 1.0))
        self.short_label = "FCD (classifier features)"
        self.label = (f"FCD: Fréchet distance on orderlab's {dataset}-classifier features (D={self.num_features}) — "
                      f"not comparable with Inception FID")
        self.freeze()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"the {self.dataset} feature net takes images (B, {', '.join(map(str, self.image_shape))})"
                             f", got {tuple(images.shape)}")
        return self.net.features(images.float())  # (B, D)

    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps({"kind": "classifier", "dataset": self.dataset, "config": self.config,
                                       "kid_scale": self.kid_scale}, sort_keys=True).encode())
        for k, v in sorted(self.net.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def save(self, path: str) -> None:
        """Write the net with its config and meta, atomically."""
        from orderlab.data.atomic import atomic_torch_save

        atomic_torch_save({"format": FEATURE_NET_FORMAT, "dataset": self.dataset, "config": self.config,
                           "meta": self.meta, "state_dict": {k: v.cpu() for k, v in self.net.state_dict().items()}},
                          path)

    @classmethod
    def load(cls, path: str) -> ClassifierFeatures:
        """Read a file written by :meth:`save`."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature-net weights {path!r} do not exist; train them with "
                                    f"`python -m orderlab.metrics.feature_train DATASET --out {path}`")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, or a pickle holding more than tensors
            raise ValueError(f"cannot read feature-net file {path!r}: {exc}") from exc
        if not (isinstance(ckpt, dict) and ckpt.get("format") == FEATURE_NET_FORMAT):
            raise ValueError(f"{path!r} is not an orderlab feature-net file (format {FEATURE_NET_FORMAT!r})")
        net = FeatureCNN(**ckpt["config"])
        net.load_state_dict(ckpt["state_dict"])
        return cls(net, ckpt["dataset"], ckpt["config"], ckpt.get("meta"))


def asset_path(dataset: str) -> str:
    """Path of the committed feature-net weights of ``dataset``; an unknown dataset lists the choices."""
    if dataset not in ASSETS:
        raise KeyError(f"no committed feature net for dataset {dataset!r}; choose one of {sorted(ASSETS)} or train "
                       f"one with `python -m orderlab.metrics.feature_train {dataset} --out PATH`")
    return str(resources.files("orderlab") / "assets" / ASSETS[dataset])


def classifier_features(dataset: str = "digits", path: str | None = None) -> ClassifierFeatures:
    """The FCD extractor of ``dataset`` from the committed asset, or from ``path``."""
    return ClassifierFeatures.load(path or asset_path(dataset))


class TorchScriptFeatures(FeatureExtractor):
    """A feature network from a local TorchScript file (e.g. Inception-v3 for FID); nothing is downloaded.

    Images are resized to ``input_size`` (bilinear), gray is repeated to 3 channels, and [0, 1] is mapped
    linearly onto ``input_range`` (the TF-Inception files expect about [-1, 1]).

    Args:
        path: the TorchScript file.
        input_size: side the network expects (299 for Inception-v3).
        input_range: value range the network expects.
        key: short metric name ("fid" for Inception).
    """

    def __init__(self, path: str, input_size: int = 299, input_range: tuple[float, float] = (-1.0, 1.0),
                 key: str = "fid") -> None:
        super().__init__()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"feature network file {path!r} does not exist; orderlab ships no Inception "
                                    f"weights — pass a local TorchScript file (see data/README.md, 'FID')")
        try:
            with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript, the format the Inception files use
                warnings.filterwarnings("ignore", ".*torch.jit.load.* is deprecated", DeprecationWarning)
                self.net = torch.jit.load(path, map_location="cpu")
        except Exception as exc:
            raise ValueError(f"{path!r} is not a loadable TorchScript module: {exc}") from exc
        self.path, self.input_size, self.input_range, self.key = path, input_size, tuple(input_range), key
        with open(path, "rb") as f:
            self._file_hash = hashlib.sha256(f.read()).hexdigest()
        self.freeze()
        with torch.no_grad():
            out = self.forward(torch.zeros(1, 3, input_size, input_size))  # probe D once, as torchmetrics would
        if out.dim() != 2:
            raise ValueError(f"{path!r} returns shape {tuple(out.shape)} for one image; expected (1, D)")
        self.num_features = int(out.shape[1])
        self.short_label = f"{key.upper()} ({os.path.basename(path)} features)"
        self.label = (f"{key.upper()}: Fréchet distance on features of {os.path.basename(path)} (TorchScript, "
                      f"sha256 {self._file_hash[:12]}); equals published Inception FIDs only if that file and "
                      f"its preprocessing are the standard ones")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        lo, hi = self.input_range
        out = self.net(x * (hi - lo) + lo)
        return out.flatten(1) if out.dim() > 2 else out  # (B, D)

    def fingerprint(self) -> str:
        cfg = json.dumps({"kind": "torchscript", "file": self._file_hash, "size": self.input_size,
                          "range": list(self.input_range)}, sort_keys=True)
        return hashlib.sha256(cfg.encode()).hexdigest()


def load_extractor(name_or_path: str = "classifier", dataset: str | None = None) -> FeatureExtractor:
    """The feature extractor named by a short name or a local file; nothing is downloaded.

    Args:
        name_or_path: ``"classifier"`` (or ``"fcd"``): the committed FCD net of ``dataset``; a dataset with a
            committed net (``"digits"``, ``"mnist"``); a feature-net file written by
            :mod:`orderlab.metrics.feature_train`; or a TorchScript feature network (Inception-v3 -> FID).
        dataset: the data's name (a manifest's ``dataset``), needed for ``"classifier"``.
    """
    if name_or_path in ("classifier", "fcd"):
        if dataset is None:
            raise ValueError(f"extractor {name_or_path!r} needs the dataset name (one of {sorted(ASSETS)})")
        return classifier_features(dataset)
    if name_or_path in ASSETS:
        return classifier_features(name_or_path)
    if not os.path.isfile(name_or_path):
        raise ValueError(f"extractor {name_or_path!r} is not 'classifier', a dataset with a committed feature net "
                         f"({sorted(ASSETS)}), nor an existing file")
    if _is_torchscript(name_or_path):
        return TorchScriptFeatures(name_or_path)
    return ClassifierFeatures.load(name_or_path)


def _is_torchscript(path: str) -> bool:
    """TorchScript archives are zips holding ``*/constants.pkl``; ``torch.save`` files are not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") for n in z.namelist())
