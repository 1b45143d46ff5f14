"""FID against published reference statistics (an ADM-style .npz of mu/sigma): the distance, the loader's refusals,
and ``evaluate --ref_stats`` end to end with a tiny TorchScript feature network."""

import hashlib
import json

import numpy as np
import pytest
import torch

from orderlab.cli import main
from orderlab.metrics import RefStats, frechet_distance, frechet_to_stats, load_ref_stats
from orderlab.metrics.image_metrics import _fd_kid

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian_features(n, d, seed, shift=0.0):
    """(n, d) float64 correlated features: well-conditioned, with a covariance far from the identity."""
    rng = np.random.default_rng(seed)
    mix = np.eye(d) + 0.3 * rng.standard_normal((d, d))
    return rng.standard_normal((n, d)) @ mix + shift + rng.standard_normal(d)


def stats_of(x):
    return x.mean(axis=0), np.cov(x, rowvar=False)


def save_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


# ------------------------------------------------------------------------------------------------ the distance
def test_equals_orderlabs_torchmetrics_frechet_distance():
    """FD of B to (mean, cov) of A equals the FD torchmetrics computes between A and B (orderlab's image path)."""
    a, b = gaussian_features(400, 16, seed=0), gaussian_features(400, 16, seed=1, shift=0.5)
    want, _, _ = _fd_kid(torch.from_numpy(a), torch.from_numpy(b), subsets=2, subset_size=100, seed=0)
    mu, sigma = stats_of(a)
    assert want > 1
    assert frechet_to_stats(b, mu, sigma) == pytest.approx(want, rel=1e-6)
    assert frechet_to_stats(torch.from_numpy(b), mu, sigma) == pytest.approx(want, rel=1e-6)  # torch input
    assert frechet_to_stats(b, mu, sigma, method="sqrtm") == pytest.approx(want, rel=1e-6)  # ADM's route
    assert frechet_to_stats(a, mu, sigma) == pytest.approx(0.0, abs=1e-9)  # a set against its own statistics


def test_closed_form_for_diagonal_covariances():
    """Generated features whose sample mean and unbiased covariance are exactly mu_b, diag(s_b): against N(mu_r,
    diag(s_r)) the distance is |mu_b - mu_r|^2 + sum (sqrt(s_b) - sqrt(s_r))^2; a common rotation changes nothing."""
    rng = np.random.default_rng(3)
    n, d = 300, 12
    z = rng.standard_normal((n, d))
    q, _ = np.linalg.qr(z - z.mean(axis=0))  # orthonormal columns, each of zero mean
    mu_b, s_b = rng.standard_normal(d), rng.uniform(0.5, 3.0, d)
    b = mu_b + q * np.sqrt((n - 1) * s_b)
    np.testing.assert_allclose(np.cov(b, rowvar=False), np.diag(s_b), atol=1e-12)
    mu_r, s_r = rng.standard_normal(d), rng.uniform(0.5, 3.0, d)
    analytic = float(np.sum((mu_b - mu_r) ** 2) + np.sum((np.sqrt(s_b) - np.sqrt(s_r)) ** 2))
    for method in ("eigvals", "sqrtm"):
        assert frechet_to_stats(b, mu_r, np.diag(s_r), method=method) == pytest.approx(analytic, rel=1e-9)
    rot, _ = np.linalg.qr(rng.standard_normal((d, d)))
    assert frechet_to_stats(b @ rot, mu_r @ rot, rot.T @ np.diag(s_r) @ rot) == pytest.approx(analytic, rel=1e-9)
    assert frechet_distance(mu_b, np.diag(s_b), mu_r, np.diag(s_r)) == pytest.approx(analytic, rel=1e-12)


def test_singular_statistics_stay_finite():
    """Fewer samples than dimensions (a rank-deficient covariance, as with 256 images and D=2048): a number, not nan."""
    a, b = gaussian_features(500, 32, seed=4), gaussian_features(10, 32, seed=5)
    mu, sigma = stats_of(a)
    for method in ("eigvals", "sqrtm"):
        assert np.isfinite(frechet_to_stats(b, mu, sigma, method=method))
    assert frechet_to_stats(b, mu, sigma) == pytest.approx(frechet_to_stats(b, mu, sigma, method="sqrtm"), rel=1e-4)
    with pytest.raises(ValueError, match="method='exact'"):
        frechet_to_stats(b, mu, sigma, method="exact")
    with pytest.raises(ValueError, match="do not match statistics of width D=32"):
        frechet_to_stats(b[:, :8], mu, sigma)
    with pytest.raises(ValueError, match="at least 2 generated samples"):
        frechet_to_stats(b[:1], mu, sigma)


# ------------------------------------------------------------------------------------------------ the loader
def test_loader_reads_both_namings_and_hashes_the_file(tmp_path):
    mu, sigma = stats_of(gaussian_features(100, 6, seed=0))
    adm = save_npz(tmp_path / "adm.npz", mu=mu.astype(np.float32), sigma=sigma.astype(np.float32))
    stats = load_ref_stats(adm, 6)
    assert isinstance(stats, RefStats) and stats.dim == 6 and stats.keys == ("mu", "sigma")
    assert stats.mu.dtype == stats.sigma.dtype == np.float64
    assert stats.sha256 == hashlib.sha256(open(adm, "rb").read()).hexdigest()
    assert adm in stats.describe() and stats.sha256[:12] in stats.describe()
    jax = load_ref_stats(save_npz(tmp_path / "jax.npz", ref_mu=mu, ref_sigma=sigma))
    assert jax.keys == ("ref_mu", "ref_sigma") and np.array_equal(jax.sigma, sigma)
    # ADM's reference batches hold images and both statistics: mu/sigma are read, the rest ignored
    batch = load_ref_stats(save_npz(tmp_path / "batch.npz", arr_0=np.zeros((2, 4, 4, 3), np.uint8), mu=mu,
                                    sigma=sigma, mu_s=mu[:2], sigma_s=sigma[:2, :2]))
    assert batch.keys == ("mu", "sigma") and batch.dim == 6


def _bad_files(tmp_path):
    mu, sigma = stats_of(gaussian_features(100, 6, seed=0))
    nan_sigma = sigma.copy()
    nan_sigma[1, 2] = nan_sigma[2, 1] = np.nan
    skew = sigma.copy()
    skew[0, 1] += 1.0
    yield "missing key", save_npz(tmp_path / "nosigma.npz", mu=mu), "needs the arrays 'mu' and 'sigma'"
    yield "images only", save_npz(tmp_path / "images.npz", arr_0=np.zeros((2, 3))), "arr_0 alone is a batch of images"
    yield "half of each pair", save_npz(tmp_path / "mixed.npz", mu=mu, ref_sigma=sigma), "it holds ['mu', 'ref_sigma']"
    yield "mu shape", save_npz(tmp_path / "mu2d.npz", mu=mu[None], sigma=sigma), "mu has shape (1, 6), expected (D,)"
    yield "sigma shape", save_npz(tmp_path / "sig.npz", mu=mu, sigma=sigma[:, :5]), "sigma has shape (6, 5), expected (6, 6)"
    yield "nan", save_npz(tmp_path / "nan.npz", mu=mu, sigma=nan_sigma), "sigma has 2 non-finite values"
    yield "inf", save_npz(tmp_path / "inf.npz", mu=np.r_[mu[:5], np.inf], sigma=sigma), "mu has 1 non-finite value"
    yield "asymmetric", save_npz(tmp_path / "skew.npz", mu=mu, sigma=skew), "sigma is not symmetric"
    yield "negative variance", save_npz(tmp_path / "neg.npz", mu=mu, sigma=-sigma), "negative diagonal entry"
    yield "strings", save_npz(tmp_path / "str.npz", mu=np.array(["a"] * 6), sigma=sigma), "not real numbers"
    yield "pickled objects", save_npz(tmp_path / "obj.npz", mu=np.array([{}], dtype=object), sigma=sigma), "cannot read"
    np.save(tmp_path / "plain.npy", mu)
    yield "a .npy", str(tmp_path / "plain.npy"), "a single .npy array, not an .npz"
    (tmp_path / "text.npz").write_text("mu, sigma\n")
    yield "not numpy", str(tmp_path / "text.npz"), "not a readable .npz archive"
    yield "wrong width", save_npz(tmp_path / "wide.npz", mu=np.zeros(8), sigma=np.eye(8)), "width D=8, but"


def test_loader_refuses_bad_files_naming_them(tmp_path):
    for what, path, needle in _bad_files(tmp_path):
        with pytest.raises(ValueError) as err:
            load_ref_stats(path, 6, extractor="tiny.pt")
        msg = str(err.value)
        assert path in msg and needle in msg and "\n" not in msg, (what, msg)
    with pytest.raises(FileNotFoundError, match="missing.npz do not exist"):
        load_ref_stats(str(tmp_path / "missing.npz"), 6)
    stats = load_ref_stats(save_npz(tmp_path / "ok.npz", mu=np.zeros(6), sigma=np.eye(6)))  # no width: any
    with pytest.raises(ValueError, match=r"width D=6, but the extractor 'classifier' gives 64-dim features"):
        stats.check_dim(64, "classifier")
    with pytest.raises(ValueError, match="width D=6"):
        stats.fid(np.zeros((4, 5)))


# ------------------------------------------------------------------------------------------------ evaluate
@pytest.fixture(scope="module")
def tiny_torchscript(tmp_path_factory):
    """A scripted stand-in for Inception: 1x1 conv to gray, 4x4 average pool, Linear(16, 8), tanh (D=8)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                              torch.nn.Linear(16, 8), torch.nn.Tanh())
    path = tmp_path_factory.mktemp("net") / "tiny_inception.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    return str(path)


@pytest.fixture(scope="module")
def real_stats(tiny_torchscript, digits_root, tmp_path_factory):
    """mu/sigma of the first 32 val images' features: the reference that evaluate's own FID also uses."""
    from orderlab.metrics import RealImages, TorchScriptFeatures, extract_features

    feats = extract_features(TorchScriptFeatures(tiny_torchscript), RealImages(digits_root, "val").images(32))
    mu, sigma = stats_of(feats.numpy())
    return save_npz(tmp_path_factory.mktemp("stats") / "real_stats.npz", mu=mu, sigma=sigma)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")
def test_evaluate_reports_fid_against_the_stats(tiny_ckpt, digits_root, tiny_torchscript, real_stats, tmp_path):
    from orderlab.commands.evaluate_cmd import run_evaluation

    out = tmp_path / "eval"
    rows = run_evaluation(tiny_ckpt, ["raster:8", "random:4"], str(out), num_samples=32, data=digits_root,
                          extractor=tiny_torchscript, nll_samples=8, progress=False, ref_stats=real_stats)
    for row in rows:  # the stats are those of the very real images `fid` compares against: the same number
        assert np.isfinite(row["fid_ref"]) and row["fid_ref"] > 0
        assert row["fid_ref"] == pytest.approx(row["fid"], rel=1e-6)
    md = (out / "results.md").read_text()
    sha = hashlib.sha256(open(real_stats, "rb").read()).hexdigest()[:12]
    assert f"- reference statistics (fid_ref): {real_stats} (sha256 {sha}, D=8, keys mu/sigma)" in md
    assert "FID of the 32 generated images per row" in md
    header = next(line for line in md.splitlines() if line.startswith("| row"))
    assert "| fid | fid_ref |" in header
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"][0]["fid_ref"] == rows[0]["fid_ref"] and real_stats in saved["meta"][
        "reference statistics (fid_ref)"]
    assert "fid_ref" in (out / "results.csv").read_text().splitlines()[0]


def _fails(argv, capsys):
    """``orderlab argv`` in-process: exit code 2 and exactly one error line, no traceback. Returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    cap = capsys.readouterr()
    assert exc.value.code == 2 and "Traceback" not in cap.err + cap.out, cap.err[-2000:]
    assert len(cap.err.strip().splitlines()) == 1, cap.err
    return cap.err.strip()


@pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")
def test_evaluate_refuses_bad_stats_before_sampling(tiny_ckpt, digits_root, tiny_torchscript, tmp_path, capsys):
    base = ["evaluate", "--ckpt", tiny_ckpt, "--data", digits_root, "--rows", "[raster:8]", "--num_samples", "8"]
    bad = save_npz(tmp_path / "bad.npz", mu=np.zeros(8))
    line = _fails([*base, "--extractor", tiny_torchscript, "--ref_stats", bad, "--out", tmp_path / "o1"], capsys)
    assert line.startswith("orderlab evaluate: error:") and bad in line and "'sigma'" in line
    line = _fails([*base, "--ref_stats", tmp_path / "none.npz", "--out", tmp_path / "o2"], capsys)
    assert "none.npz do not exist" in line
    wide = save_npz(tmp_path / "adm_like.npz", mu=np.zeros(2048), sigma=np.eye(2048))  # the classifier gives 64
    line = _fails([*base, "--ref_stats", wide, "--out", tmp_path / "o3"], capsys)
    assert wide in line and "width D=2048, but the extractor 'classifier' gives 64-dim features" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adm_like.npz", "bad.npz"]  # no output folder, no file
