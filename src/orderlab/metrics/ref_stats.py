"""FID against published reference statistics: an ADM-style ``.npz`` holding ``mu`` (D,) and ``sigma`` (D, D).

ARPG and LPD report FID against the ImageNet statistics of OpenAI's ADM evaluation suite (LPD ships
``fid_stats/adm_in256_stats.npz``; its ``engine.py`` hands the file to torch-fidelity's ``fid_statistics_file``,
which reads the keys ``mu`` and ``sigma``). Some JAX code bases save the same pair as ``ref_mu``/``ref_sigma``; both
namings are read. The generated side is the mean and the unbiased covariance (``np.cov(rowvar=False)``) of the
generated images' features, in float64, as ADM and torch-fidelity compute them.

The trace of the product's square root is taken from the eigenvalues of ``sigma_gen @ sigma_ref`` (complex square
roots, real parts summed): what torchmetrics (``_compute_fid``, the path of orderlab's own FID) and torch-fidelity
since 2023 (the LTH14 fork that LPD installs included) compute. ``method="sqrtm"`` gives the older
``scipy.linalg.sqrtm`` route of ADM's ``evaluator.py`` / TTUR / torch-fidelity <= 0.3.0 (a singular product gets
``eps * I`` added to both covariances); the two agree to about 1e-6 relative on well-conditioned statistics.

Usage::

    from orderlab.metrics import load_ref_stats, extract_features, load_extractor
    extractor = load_extractor("inception.pt")                    # a local TorchScript file, D = 2048
    stats = load_ref_stats("adm_in256_stats.npz", extractor.num_features)  # bad file: ValueError naming it
    fid = stats.fid(extract_features(extractor, images))          # images (N, C, H, W) in [0, 1]
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass

import numpy as np

__all__ = ["RefStats", "load_ref_stats", "frechet_to_stats", "frechet_distance", "KEY_PAIRS"]

# (mean key, covariance key) pairs read from the file, in order of preference
KEY_PAIRS = (("mu", "sigma"), ("ref_mu", "ref_sigma"))
METHODS = ("eigvals", "sqrtm")


@dataclass(frozen=True, eq=False)
class RefStats:
    """Validated reference statistics: ``mu`` (D,) and ``sigma`` (D, D), float64, from ``path``."""

    path: str
    mu: np.ndarray
    sigma: np.ndarray
    sha256: str  # of the file's bytes
    keys: tuple[str, str]  # the keys they were read from

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    def check_dim(self, dim: int, extractor: str | None = None) -> None:
        """Refuse features of another width than the statistics', naming the file and the extractor."""
        if int(dim) != self.dim:
            what = f"the extractor {extractor!r}" if extractor else "the feature extractor"
            raise ValueError(f"reference statistics {self.path}: width D={self.dim}, but {what} gives {dim}-dim "
                             f"features; FID against them needs the feature network they were made with (--extractor "
                             f"PATH of a local TorchScript Inception file, D=2048 for the ADM statistics)")

    def fid(self, features, method: str = "eigvals") -> float:
        """Fréchet distance of (N, D) generated features to these statistics."""
        self.check_dim(np.shape(features)[-1])
        return frechet_to_stats(features, self.mu, self.sigma, method=method)

    def describe(self) -> str:
        """One line for reports: the file, its sha256 prefix, D and the keys read."""
        return f"{self.path} (sha256 {self.sha256[:12]}, D={self.dim}, keys {'/'.join(self.keys)})"


def _refuse(path: str, problem: str) -> ValueError:
    return ValueError(f"reference statistics {path}: {problem}")


def load_ref_stats(path: str, dim: int | None = None, *, extractor: str | None = None) -> RefStats:
    """Read and check an ADM-style statistics file; ``dim`` (the extractor's feature width) must equal its D.

    The file is read with ``allow_pickle=False``; it must hold ``mu`` (D,) and ``sigma`` (D, D) (or
    ``ref_mu``/``ref_sigma``), real numbers, all finite, ``sigma`` symmetric with a non-negative diagonal. Any
    problem is a one-line ``ValueError`` naming the file (a missing file: ``FileNotFoundError``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference statistics {path} do not exist (--ref_stats: a local .npz with mu and "
                                f"sigma, e.g. LPD's fid_stats/adm_in256_stats.npz)")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:  # not a numpy file, truncated, a pickle
        raise _refuse(path, f"not a readable .npz archive ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise _refuse(path, "a single .npy array, not an .npz archive holding mu and sigma")
    with data:
        names = list(data.files)
        keys = next((pair for pair in KEY_PAIRS if set(pair) <= set(names)), None)
        if keys is None:
            hint = " (arr_0 alone is a batch of images, not statistics)" if names == ["arr_0"] else ""
            want = " or ".join(f"{m!r} and {s!r}" for m, s in KEY_PAIRS)
            raise _refuse(path, f"needs the arrays {want}; it holds {sorted(names)}{hint}")
        try:
            mu, sigma = data[keys[0]], data[keys[1]]
        except (ValueError, OSError, zipfile.BadZipFile) as exc:  # object arrays (pickles) or a damaged member
            raise _refuse(path, f"cannot read {keys[0]}/{keys[1]}: {exc}") from None
    for key, arr in zip(keys, (mu, sigma)):
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            raise _refuse(path, f"{key} has dtype {arr.dtype}, not real numbers")
    if mu.ndim != 1 or mu.shape[0] < 1:
        raise _refuse(path, f"{keys[0]} has shape {mu.shape}, expected (D,)")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise _refuse(path, f"{keys[1]} has shape {sigma.shape}, expected ({d}, {d}) to match {keys[0]} {mu.shape}")
    mu, sigma = mu.astype(np.float64), sigma.astype(np.float64)
    for key, arr in zip(keys, (mu, sigma)):
        bad = int(np.size(arr) - np.isfinite(arr).sum())
        if bad:
            raise _refuse(path, f"{key} has {bad} non-finite value{'s' if bad > 1 else ''} (nan or inf)")
    scale = float(np.abs(sigma).max()) or 1.0
    asym = float(np.abs(sigma - sigma.T).max())
    if asym > 1e-6 * scale:
        raise _refuse(path, f"{keys[1]} is not symmetric (max |sigma - sigma.T| = {asym:.3g}, max |sigma| = "
                            f"{scale:.3g}): not a covariance matrix")
    if float(np.diagonal(sigma).min()) < -1e-9 * scale:
        raise _refuse(path, f"{keys[1]} has a negative diagonal entry (a variance): not a covariance matrix")
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    stats = RefStats(path, mu, sigma, digest, keys)
    if dim is not None:
        stats.check_dim(dim, extractor)
    return stats


def frechet_distance(mu1, sigma1, mu2, sigma2, method: str = "eigvals", eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``; ``method`` picks how the last trace
    is taken (module docstring): "eigvals" (torchmetrics, torch-fidelity) or "sqrtm" (ADM's evaluator, with
    ``eps * I`` added to both covariances when the product's square root is not finite).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {list(METHODS)}")
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    diff = mu1 - mu2
    if method == "eigvals":
        tr_covmean = float(np.sqrt(np.linalg.eigvals(s1 @ s2).astype(np.complex128)).real.sum())
    else:
        from scipy import linalg

        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all():  # product almost singular
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
        if np.iscomplexobj(covmean):  # numerical error: a slight imaginary component
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                raise ValueError(f"the square root of sigma1 @ sigma2 has an imaginary component of up to "
                                 f"{np.abs(covmean.imag).max():.3g}")
            covmean = covmean.real
        tr_covmean = float(np.trace(covmean))
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def frechet_to_stats(features, mu, sigma, method: str = "eigvals") -> float:
    """Fréchet distance of generated features (N, D) (numpy or torch) to the reference statistics ``mu``, ``sigma``.

    The features' mean and unbiased covariance (``np.cov(rowvar=False)``) are taken in float64.
    """
    if hasattr(features, "detach"):  # a torch tensor
        features = features.detach().cpu().double().numpy()
    x = np.asarray(features, dtype=np.float64)
    mu = np.asarray(mu, np.float64)
    if x.ndim != 2 or x.shape[1] != mu.shape[0]:
        raise ValueError(f"features of shape {x.shape} do not match statistics of width D={mu.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 generated samples, got {x.shape[0]}")
    return frechet_distance(x.mean(axis=0), np.cov(x, rowvar=False), mu, sigma, method=method)
