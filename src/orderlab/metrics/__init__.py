"""Offline image metrics: Fréchet distance, KID and improved precision/recall on pluggable feature extractors.

The entry point::

    ImageMetrics(extractor: FeatureExtractor | str, reference: Tensor | RealImages | str, num_samples: int, *,
                 split="val", cache=True, k=3, kid_subsets=50, kid_subset_size=1000, seed=0, batch_size=500)
    ImageMetrics.compute(fake: Tensor (N, C, H, W) in [0, 1]) -> dict
    load_extractor(name_or_path="classifier", dataset=None) -> FeatureExtractor

Usage (real features of the val split are extracted once and cached in ``default_cache_dir()``:
``$ORDERLAB_CACHE``, else ``$XDG_CACHE_HOME/orderlab``, else ``~/.cache/orderlab``; never in the dataset folder)::

    from orderlab.metrics import ImageMetrics, load_extractor
    extractor = load_extractor("classifier", dataset="digits")       # or a local Inception TorchScript file
    metrics = ImageMetrics(extractor, "data/digits", num_samples=256)  # reference: the folder's val split
    result = metrics.compute(fake_images)                            # (>= 256, 1, 8, 8) floats in [0, 1]
    print(result["fcd"], result["kcd"], result["precision"], result["recall"], result["metric"])

Result keys are named honestly by feature space: ``fcd``/``kcd`` ("FCD (classifier features)", a project-trained
CNN; not comparable with papers' Inception FIDs) or ``fid``/``kid`` (a TorchScript Inception file), plus
``precision``, ``recall``, ``num_samples``, ``k``, ``metric``, ``feature_space`` and ``extractor`` (fingerprint).
Compare numbers only at equal ``num_samples`` and extractor fingerprint.

FID against published reference statistics (an ADM-style ``.npz`` of ``mu``/``sigma``, as ARPG and LPD report):
``load_ref_stats(path, extractor.num_features).fid(features)`` (:mod:`orderlab.metrics.ref_stats`).
"""

from orderlab.metrics.cache import default_cache_dir
from orderlab.metrics.features import (
    ClassifierFeatures,
    FeatureCNN,
    FeatureExtractor,
    TorchScriptFeatures,
    asset_path,
    classifier_features,
    load_extractor,
)
from orderlab.metrics.image_metrics import (
    ImageMetrics,
    RealImages,
    extract_features,
    format_metrics,
    image_metrics,
    precision_recall,
)
from orderlab.metrics.ref_stats import RefStats, frechet_distance, frechet_to_stats, load_ref_stats

__all__ = [
    "ImageMetrics", "load_extractor", "ClassifierFeatures", "FeatureCNN", "FeatureExtractor", "TorchScriptFeatures",
    "asset_path", "classifier_features", "RealImages", "extract_features", "format_metrics", "image_metrics",
    "precision_recall", "default_cache_dir", "RefStats", "load_ref_stats", "frechet_to_stats", "frechet_distance",
]
