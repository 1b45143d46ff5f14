"""Offline sample-quality metrics at a fixed sample count: Fréchet distance, KID, improved precision/recall.

:func:`image_metrics` extracts features once per image set, then feeds them to torchmetrics'
``FrechetInceptionDistance`` and ``KernelInceptionDistance`` through a pass-through ``feature=`` module, and
computes improved precision/recall (Kynkäänniemi et al. 2019; k-NN radii, torchmetrics has none) on the same
features. Fréchet distances are strongly biased by the sample count, so every call uses exactly
``num_samples`` real and fake images and reports that number; the real ones are a seeded uniform sample of the
split (:class:`RealImages`), the same for every row. Real features are cached on disk (in
:func:`~orderlab.metrics.cache.default_cache_dir`, never in the dataset folder), keyed by dataset, split, count,
the shards' checksums and the extractor's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from orderlab.data.atomic import atomic_torch_save
from orderlab.metrics.cache import default_cache_dir
from orderlab.metrics.features import FeatureExtractor

__all__ = ["ImageMetrics", "RealImages", "SAMPLE_SEED", "extract_features", "precision_recall", "image_metrics", "format_metrics"]

SAMPLE_SEED = 0  # the permutation a reference (and a floor's real set) is drawn from: fixed, so rows share it


@dataclass(frozen=True)
class RealImages:
    """``n`` images of a prepared split, drawn uniformly at random: its tokens decoded by the dataset's tokenizer.

    The reference is an i.i.d. sample of the split (issue 17): :meth:`indices` draws ``n`` of its images without
    replacement from one fixed permutation (seed :data:`SAMPLE_SEED`), so every row, model and run compares against
    the same images, a smaller ``n`` takes a subset of a larger one, and ``n`` = the split's count is the whole
    split. (The first ``n`` in shard order would not do: sources are ordered by writer or collection, e.g. MNIST's
    test set.) Decoded tokens (not the raw pixels) are the reference, so the metrics measure the generator and not
    the tokenizer's reconstruction loss. For digits (pixel tokens) they are the raw images exactly.
    """

    root: str
    split: str = "val"

    def manifest(self) -> dict[str, Any]:
        """The dataset's validated manifest; a split it lacks is an error naming both."""
        from orderlab.data.shards import read_manifest

        m = read_manifest(self.root)
        if self.split not in m["splits"]:
            raise ValueError(f"{self.root} has no split {self.split!r}; it has {sorted(m['splits'])}")
        return m

    def images(self, n: int) -> torch.Tensor:
        """(n, C, H, W) float in [0, 1]; fewer than ``n`` images in the split is an error."""
        from orderlab.data.shards import read_split
        from orderlab.tokenizers import load_tokenizer

        manifest = self.manifest()
        have = manifest["splits"][self.split]["count"]
        if have < n:
            raise ValueError(f"{self.root} split {self.split!r} has {have} images, fewer than num_samples={n}")
        tokens, _ = read_split(self.root, self.split)  # (count, H, W)
        tokens = tokens[self.indices(n)]  # (n, H, W)
        tok = load_tokenizer(manifest["tokenizer"], self.root)
        t = torch.from_numpy(tokens)
        return torch.cat([tok.decode(t[i:i + 500]) for i in range(0, n, 500)])  # (n, C, H, W)

    def indices(self, n: int) -> np.ndarray:
        """Sorted positions (in shard order) of the ``n`` images :meth:`images` returns: the first ``n`` of one
        seeded permutation of the split (all of it when ``n`` is its count)."""
        count = self.manifest()["splits"][self.split]["count"]
        if not 0 <= n <= count:
            raise ValueError(f"{self.root} split {self.split!r} has {count} images, fewer than num_samples={n}")
        return np.sort(np.random.default_rng(SAMPLE_SEED).permutation(count)[:n])

    def key(self) -> dict[str, Any]:
        """Identity of the split's data: dataset name, its shards' checksums and how the images are drawn."""
        m = self.manifest()
        sums = "".join(s["sha256"] for s in m["splits"][self.split]["shards"])
        return {"dataset": m["dataset"], "split": self.split, "shards": hashlib.sha256(sums.encode()).hexdigest(),
                "sample": f"uniform without replacement, seed {SAMPLE_SEED}"}


@torch.no_grad()
def extract_features(extractor: FeatureExtractor, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """(N, C, H, W) images -> (N, D) float64 features, in batches on the extractor's device."""
    device = next(iter(extractor.parameters()), torch.empty(0)).device
    out = [extractor(images[i:i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, extractor.num_features, dtype=torch.float64)


def _kth_radius(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(N,) distance of each row of ``x`` to its k-th nearest other row (the row itself is the 0-th)."""
    return torch.cat([torch.cdist(x[i:i + chunk], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), chunk)])


def _covered(query: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor, chunk: int) -> torch.Tensor:
    """(Q,) bool: query point inside at least one ball (ref_j, radii_j)."""
    return torch.cat([(torch.cdist(query[i:i + chunk], ref) <= radii[None]).any(dim=1)
                      for i in range(0, len(query), chunk)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of (N, D) fake vs (M, D) real features.

    Precision: share of fake samples inside the real manifold (union of balls reaching each real sample's k-th
    nearest real neighbour); recall: the same with the roles swapped. Identical sets give (1, 1).
    """
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples per set, got {len(real)}, "
                         f"{len(fake)}")
    precision = _covered(fake, real, _kth_radius(real, k, chunk), chunk).double().mean()
    recall = _covered(real, fake, _kth_radius(fake, k, chunk), chunk).double().mean()
    return float(precision), float(recall)


class _Precomputed(nn.Module):
    """Pass-through ``feature=`` module: the 'images' given to torchmetrics are already features (B, D)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_features = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _fd_kid(real: torch.Tensor, fake: torch.Tensor, subsets: int, subset_size: int, seed: int,
            kid_scale: float = 1.0) -> tuple[float, float, float]:
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    d = real.shape[1]
    fid = FrechetInceptionDistance(feature=_Precomputed(d), normalize=True).double()
    fid.update(real, real=True)
    fid.update(fake, real=False)
    fd = float(fid.compute())
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(feature=_Precomputed(d), subsets=subsets, subset_size=subset_size,
                                      normalize=True)
    kid.update(real / kid_scale, real=True)
    kid.update(fake / kid_scale, real=False)
    # torchmetrics' KID draws its subsets with torch.randperm from the global generator and takes no generator
    # argument: seed it inside fork_rng so the result depends on `seed` only and the caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = kid.compute()
    return fd, float(mean), float(std)


class ImageMetrics:
    """Fréchet distance, KID and improved precision/recall of generated images against one fixed real reference.

    The real features are extracted (or read from the cache) once, here; :meth:`compute` then scores any number
    of generated sets against them, each on exactly ``num_samples`` images (Fréchet distances are strongly
    biased by the sample count, so only equal counts compare).

    Args:
        extractor: a :class:`FeatureExtractor`, or a name or path for :func:`load_extractor` (``"classifier"``
            takes the committed FCD net of the reference dataset).
        reference: real images (N, C, H, W) in [0, 1]; a :class:`RealImages`; a prepared dataset folder (its
            ``split``); or a cached-features file written by this class.
        num_samples: real and generated images compared, each.
        split: split of a dataset-folder reference.
        cache: where the real features of a dataset reference are cached: True = the cache folder
            (:func:`~orderlab.metrics.cache.default_cache_dir`; the dataset folder is never written), a str =
            that folder, False = nowhere. Files are keyed by dataset, split, shard checksums, count and extractor.
        k: neighbourhood size of precision/recall.
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size, capped at ``num_samples // 2`` (subsets as large as the sets would all
            be the same draw and report a std of 0).
        seed: seed of KID's subset draws.
        batch_size: feature-extraction batch size.
    """

    def __init__(self, extractor: FeatureExtractor | str, reference: torch.Tensor | RealImages | str,
                 num_samples: int, *, split: str = "val", cache: bool | str = True, k: int = 3,
                 kid_subsets: int = 50, kid_subset_size: int = 1000, seed: int = 0, batch_size: int = 500) -> None:
        if num_samples <= k:
            raise ValueError(f"num_samples={num_samples} must exceed k={k}")
        if isinstance(reference, str) and os.path.isdir(reference):
            reference = RealImages(reference, split)
        if isinstance(extractor, str):
            from orderlab.metrics.features import load_extractor

            dataset = reference.key()["dataset"] if isinstance(reference, RealImages) else None
            extractor = load_extractor(extractor, dataset=dataset)
        self.extractor, self.num_samples, self.k, self.seed = extractor, num_samples, k, seed
        self.batch_size = batch_size
        self.kid_subsets, self.kid_subset_size = kid_subsets, min(kid_subset_size, max(2, num_samples // 2))
        self.cache_path: str | None = None
        if isinstance(reference, RealImages):
            folder = default_cache_dir() if cache is True else (cache or None)
            self.real_features = _cached_real(reference, extractor, num_samples, folder, batch_size)  # (N, D)
        elif isinstance(reference, str):
            if not os.path.isfile(reference):
                raise FileNotFoundError(f"reference {reference!r} is neither a dataset folder nor a features file")
            self.real_features = _read_cache(reference, extractor, num_samples)
            self.cache_path = reference
        elif isinstance(reference, torch.Tensor):
            if len(reference) < num_samples:
                raise ValueError(f"got {len(reference)} real images, fewer than num_samples={num_samples}")
            self.real_features = extract_features(extractor, reference[:num_samples], batch_size)  # (N, D)
        else:
            raise TypeError(f"reference must be images, RealImages, a dataset folder or a features file; got "
                            f"{type(reference).__name__} {reference!r:.80}")

    @property
    def name(self) -> str:
        """Short honest name of the Fréchet distance: "FCD (classifier features)" or "FID (TorchScript ...)"."""
        return getattr(self.extractor, "short_label", self.extractor.key.upper())

    def compute(self, fake: torch.Tensor) -> dict[str, Any]:
        """Score generated images (N, C, H, W) in [0, 1]; the first ``num_samples`` are used.

        Returns:
            ``{fd_key: FD, kd_key: KID, kd_key + "_std", "precision", "recall", "num_samples", "k",
            "metric" (short name), "feature_space" (full label), "extractor" (fingerprint)}`` where
            fd_key/kd_key are ``fcd``/``kcd`` for classifier features and ``fid``/``kid`` for Inception.
        """
        if len(fake) < self.num_samples:
            raise ValueError(f"got {len(fake)} generated images, fewer than num_samples={self.num_samples}")
        fake_f = extract_features(self.extractor, fake[:self.num_samples], self.batch_size)  # (N, D)
        return self.compute_features(fake_f)

    def compute_features(self, fake_f: torch.Tensor) -> dict[str, Any]:
        """As :meth:`compute`, from already-extracted (N, D) features of the generated images."""
        fd, kd, kd_std = _fd_kid(self.real_features, fake_f.double(), self.kid_subsets, self.kid_subset_size,
                                 self.seed, getattr(self.extractor, "kid_scale", 1.0))
        precision, recall = precision_recall(self.real_features, fake_f.double(), self.k)
        fd_key = self.extractor.key
        kd_key = "kcd" if fd_key == "fcd" else "kid"
        return {fd_key: fd, kd_key: kd, f"{kd_key}_std": kd_std, "precision": precision, "recall": recall,
                "num_samples": self.num_samples, "k": self.k, "metric": self.name,
                "feature_space": self.extractor.label, "extractor": self.extractor.fingerprint()[:16]}


def _cache_key(real: RealImages, extractor: FeatureExtractor, n: int) -> dict[str, Any]:
    return {**real.key(), "count": n, "extractor": extractor.fingerprint()}


def _read_cache(path: str, extractor: FeatureExtractor, n: int, key: dict[str, Any] | None = None) -> torch.Tensor:
    """Real features from a cache file; a file for another extractor, count or dataset is an error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference features file {path!r} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        feats, stored = blob["features"], blob["key"]
    except Exception as exc:  # truncated, foreign or hand-edited
        raise ValueError(f"reference features file {path!r} is unreadable or not an orderlab cache: {exc}") from exc
    if stored.get("extractor") != extractor.fingerprint():
        raise ValueError(f"reference features file {path!r} was made with another feature extractor "
                         f"({str(stored.get('extractor'))[:16]}, not {extractor.fingerprint()[:16]})")
    if stored.get("count") != n or len(feats) != n:
        raise ValueError(f"reference features file {path!r} holds {stored.get('count')} images, not num_samples={n}")
    if key is not None and stored != key:
        raise ValueError(f"reference features file {path!r} belongs to other data ({stored}, wanted {key})")
    return feats


def _cached_real(real: RealImages, extractor: FeatureExtractor, n: int, cache_dir: str | None,
                 batch_size: int) -> torch.Tensor:
    key = _cache_key(real, extractor, n)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = None if cache_dir is None else os.path.join(
        cache_dir, f"{key['dataset']}-{real.split}-n{n}-{extractor.key}-{digest}.pt")
    if path is not None and os.path.isfile(path):
        try:
            return _read_cache(path, extractor, n, key)
        except ValueError as exc:  # a damaged cache is rebuilt, not trusted
            warnings.warn(f"ignoring and rewriting the feature cache: {exc}", stacklevel=3)
    feats = extract_features(extractor, real.images(n), batch_size)  # (N, D)
    if path is not None:
        try:
            atomic_torch_save({"key": key, "features": feats}, path)
        except OSError as exc:  # an unwritable cache folder still evaluates, just without the cache
            warnings.warn(f"cannot write the feature cache {path}: {exc}", stacklevel=3)
    return feats


def image_metrics(real: torch.Tensor | RealImages | str, fake: torch.Tensor, extractor: FeatureExtractor,
                  num_samples: int, k: int = 3, kid_subsets: int = 50, kid_subset_size: int = 1000,
                  seed: int = 0, cache_dir: str | None = None, batch_size: int = 500) -> dict[str, Any]:
    """One-shot form of :class:`ImageMetrics`: ``ImageMetrics(extractor, real, num_samples, ...).compute(fake)``.

    ``cache_dir`` None means no cache here (unlike the class, whose default is the cache folder).
    """
    metrics = ImageMetrics(extractor, real, num_samples, cache=cache_dir or False, k=k, kid_subsets=kid_subsets,
                           kid_subset_size=kid_subset_size, seed=seed, batch_size=batch_size)
    return metrics.compute(fake)


def format_metrics(result: dict[str, Any]) -> str:
    """One human-readable block that names the feature space and the sample count."""
    fd_key = "fcd" if "fcd" in result else "fid"
    kd_key = "kcd" if fd_key == "fcd" else "kid"
    return (f"{result['feature_space']}\n"
            f"  {fd_key.upper()} = {result[fd_key]:.3f}   {kd_key.upper()} = {result[kd_key]:.5f} "
            f"± {result[kd_key + '_std']:.5f}   precision = {result['precision']:.3f}   "
            f"recall = {result['recall']:.3f}   (k = {result['k']}, {result['num_samples']} real vs "
            f"{result['num_samples']} generated, extractor {result['extractor']})")
