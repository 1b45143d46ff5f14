"""Offline image metrics: FCD sanity on real digits, KID, precision/recall, caching and extractor loading."""

import os

import pytest
import torch

from orderlab.metrics import (
    ClassifierFeatures,
    ImageMetrics,
    RealImages,
    TorchScriptFeatures,
    asset_path,
    extract_features,
    format_metrics,
    image_metrics,
    load_extractor,
    precision_recall,
)
from orderlab.metrics.features import MAX_FEATURES, FeatureCNN

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def digits(digits_root):
    """The session's prepared digits (tests/conftest.py); tests that damage files use a copy."""
    return digits_root


@pytest.fixture(scope="module")
def train_images(digits):
    # (1024, 1, 8, 8) in [0, 1]: 1,024 distinct real digits, the 899 of train and then val (half/half split)
    return torch.cat([RealImages(digits, "train").images(899), RealImages(digits, "val").images(898)])[:1024]


@pytest.fixture(scope="module")
def fcd():
    return load_extractor("classifier", dataset="digits")


def noisy(images, sigma, seed=0):
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed))
    return (images + sigma * noise).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ sanity
def test_fcd_sanity_real_real_small_noise_large_monotone(fcd, train_images):
    metrics = ImageMetrics(fcd, train_images[:512], num_samples=512)
    real = metrics.compute(train_images[512:])  # disjoint images of the same split
    assert real["fcd"] < 12 and real["precision"] > 0.7 and real["recall"] > 0.7, real
    uniform = metrics.compute(torch.rand(512, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    assert uniform["fcd"] > 200 and uniform["precision"] < 0.2, uniform
    sigmas = [0.0, 0.1, 0.2, 0.3, 0.5]
    runs = [metrics.compute(noisy(train_images[512:], s)) for s in sigmas]
    fds = [r["fcd"] for r in runs]
    assert fds == sorted(fds) and fds[-1] > 3 * fds[0], fds
    kds = [r["kcd"] for r in runs]
    assert kds[0] < kds[2] < kds[4], kds  # KID is noisier; every other noise level
    assert runs[0]["precision"] > runs[-1]["precision"] + 0.3


def test_same_inputs_give_the_same_numbers(fcd, train_images):
    metrics = ImageMetrics(fcd, train_images[:300], num_samples=300)
    fake = noisy(train_images[300:600], 0.1)
    a, b = metrics.compute(fake), metrics.compute(fake.clone())
    assert a == b
    again = image_metrics(train_images[:300], fake, fcd, num_samples=300)
    assert again["fcd"] == a["fcd"] and again["kcd"] == a["kcd"] and again["precision"] == a["precision"]
    assert a["num_samples"] == 300 and a["metric"] == "FCD (classifier features)"
    assert "FCD" in format_metrics(a) and "300 real vs 300 generated" in format_metrics(a)


def test_reference_features_are_cached_in_the_cache_folder(fcd, digits, train_images, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("ORDERLAB_CACHE", str(folder))
    data_before = sorted(os.listdir(digits))
    first = ImageMetrics("classifier", digits, num_samples=256)  # extractor named, reference = the val split
    (cache,) = os.listdir(folder)
    assert cache.startswith("digits-val-n256-fcd-") and cache.endswith(".pt") and not cache.startswith(".")
    second = ImageMetrics(fcd, RealImages(digits, "val"), num_samples=256)
    assert torch.equal(first.real_features, second.real_features)
    fresh = ImageMetrics(fcd, RealImages(digits, "val").images(256), num_samples=256)
    assert torch.equal(first.real_features, fresh.real_features)
    by_path = ImageMetrics(fcd, str(folder / cache), num_samples=256)
    assert by_path.compute(train_images[:256]) == first.compute(train_images[:256])
    with pytest.raises(ValueError, match=f"{cache}.* holds 256 images, not num_samples=200"):
        ImageMetrics(fcd, str(folder / cache), num_samples=200)
    ImageMetrics(fcd, digits, num_samples=128, cache=False)
    assert os.listdir(folder) == [cache]
    other = tmp_path / "other"
    ImageMetrics(fcd, digits, num_samples=128, cache=str(other))  # an explicit folder
    assert [p.name.split("-")[2] for p in other.iterdir()] == ["n128"]
    assert sorted(os.listdir(digits)) == data_before  # the dataset folder is only read


def test_an_unwritable_cache_only_warns(fcd, digits, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="cannot write the feature cache"):
        metrics = ImageMetrics(fcd, digits, num_samples=64, cache=str(blocked / "cache"))
    assert metrics.real_features.shape[0] == 64


def test_metric_input_errors(fcd, digits, train_images):
    with pytest.raises(ValueError, match="has 898 images, fewer than num_samples=1000"):
        ImageMetrics(fcd, digits, num_samples=1000)
    with pytest.raises(ValueError, match="got 100 generated images, fewer than num_samples=128"):
        ImageMetrics(fcd, train_images[:128], num_samples=128).compute(train_images[:100])
    with pytest.raises(ValueError, match="no split 'test'"):
        ImageMetrics(fcd, digits, num_samples=64, split="test")
    with pytest.raises(FileNotFoundError, match="neither a dataset folder nor a features file"):
        ImageMetrics(fcd, os.path.join(digits, "missing"), num_samples=64)
    with pytest.raises(ValueError, match=r"takes images \(B, 1, 8, 8\), got \(4, 1, 28, 28\)"):
        fcd(torch.zeros(4, 1, 28, 28))


# ------------------------------------------------------------------------------------------------ precision/recall
def test_precision_recall_on_known_sets():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(200, 8, generator=g, dtype=torch.float64)
    assert precision_recall(a, a.clone()) == (1.0, 1.0)
    assert precision_recall(a, a + 100) == (0.0, 0.0)
    # fakes collapsed onto a tenth of the reals: precise but with poor recall
    p, r = precision_recall(a, a[:20].repeat(10, 1) + 1e-6)
    assert p == 1.0 and r < 0.5
    with pytest.raises(ValueError, match="needs more than 3 samples"):
        precision_recall(a[:3], a[:3])


# ------------------------------------------------------------------------------------------------ extractors
def test_committed_feature_nets_are_small_accurate_and_load(digits):
    for name, max_bytes in (("digits", 100_000), ("mnist", 2_000_000)):
        path = asset_path(name)
        assert os.path.getsize(path) < max_bytes
        net = load_extractor(name)
        assert isinstance(net, ClassifierFeatures) and net.num_features <= MAX_FEATURES and net.key == "fcd"
        assert net.meta["held_out_accuracy"] > 0.95 and net.meta["feature_rms"] > 0
        assert "python -m orderlab.metrics.feature_train" in net.meta["recipe"]
        assert not any(p.requires_grad for p in net.parameters()) and not net.train().training
    from orderlab.data.shards import load_split
    from orderlab.metrics.feature_train import accuracy

    tokens, labels = load_split(digits, "val")
    assert accuracy(load_extractor("digits").net, tokens[:, None].float() / 16, labels) > 0.95


def test_load_extractor_choices_and_errors(tmp_path):
    with pytest.raises(ValueError, match="needs the dataset name"):
        load_extractor("classifier")
    with pytest.raises(KeyError, match="no committed feature net for dataset 'fashion'"):
        load_extractor("classifier", dataset="fashion")
    with pytest.raises(ValueError, match="'inception.pt' is not 'classifier'"):
        load_extractor("inception.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt"):
        load_extractor(str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match="feature_dim=2048 must be in"):
        FeatureCNN(feature_dim=2048)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")
def test_torchscript_extractor_from_a_local_file(tmp_path, train_images):
    """The Inception path, with a tiny scripted stand-in: resized to its input size, 3 channels, named FID."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten())
    torch.jit.save(torch.jit.script(net), str(tmp_path / "tiny_inception.pt"))
    feats = load_extractor(str(tmp_path / "tiny_inception.pt"))
    assert isinstance(feats, TorchScriptFeatures) and feats.num_features == 8 and feats.key == "fid"
    assert extract_features(feats, train_images[:5]).shape == (5, 8)
    result = ImageMetrics(feats, train_images[:64], num_samples=64).compute(train_images[64:128])
    assert {"fid", "kid", "kid_std", "precision", "recall"} <= set(result) and "fcd" not in result


def test_feature_net_recipe_trains_and_saves(tmp_path):
    from orderlab.metrics.feature_train import train_feature_net

    feats, stats = train_feature_net("digits", str(tmp_path / "fcd.pt"), epochs=1, limit=256, progress=False)
    again = load_extractor(str(tmp_path / "fcd.pt"))
    assert again.fingerprint() == feats.fingerprint() and again.meta["feature_rms"] == stats["feature_rms"]
    assert 0 < stats["held_out_accuracy"] <= 1 and stats["train_images"] == 256
