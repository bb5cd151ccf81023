"""Data sets that need no download: the handwritten digits that ship inside scikit-learn.

`load_digits(split)` gives scikit-learn's 1,797 8x8 digits (pixel counts 0..16, ten classes, about 180 each) as
float32 images in [0, 1], upsampled to 16x16 by bilinear interpolation (align_corners=False), with a fixed
stratified split: per class, a permutation drawn from
`np.random.default_rng(SPLIT_SEED)` sends round(20 %) to "test" and the rest to "train" (1,438 / 359 images).
The split depends only on SPLIT_SEED, never on a global random state, so every machine and every run sees the
same images in the same order.

Scalers follow score_sde's `data.centered`: VE models take data in [0, 1] (the network centres it itself), VP and
subVP models take [-1, 1]. `get_data_scaler(centered)` / `get_data_inverse_scaler(centered)` convert.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

__all__ = ["DATASETS", "SPLIT_SEED", "TEST_FRACTION", "load_digits", "load_dataset", "get_data_scaler",
           "get_data_inverse_scaler"]

SPLIT_SEED = 20210112
MAX_SIZE = 1024  # 1,797 digits at 1024 x 1024 float32 are 7.5 GB
TEST_FRACTION = 0.2
DATASETS = ("digits",)
_SPLITS = ("train", "test", "all")


def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ((1797, 8, 8) pixel counts, (1797,) labels).

    The data is the file scikit-learn ships, datasets/data/digits.csv.gz (64 pixel counts and the label per row),
    read directly: `import sklearn.datasets` alone costs ~0.8 s, half of a `fastsde sample` call. Where that file
    is not where this expects it, sklearn.datasets.load_digits reads it (tests/test_digits.py checks both agree)."""
    import gzip
    import importlib.util
    import os

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None:
        raise RuntimeError("the digits data set needs scikit-learn (pip install scikit-learn)")
    for root in spec.submodule_search_locations or ():
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",")
            if table.shape == (1797, 65):
                return table[:, :64].reshape(-1, 8, 8), table[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    return bunch.images, bunch.target


@functools.lru_cache(maxsize=None)
def _digits_arrays():
    pixels, target = _sklearn_digits()
    images = pixels.astype(np.float32) / 16.0  # (1797, 8, 8), pixel counts 0..16 -> [0, 1]
    labels = target.astype(np.int64)
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for k in range(10):
        idx = np.flatnonzero(labels == k)
        idx = idx[rng.permutation(len(idx))]
        test[idx[: int(round(TEST_FRACTION * len(idx)))]] = True
    return images, labels, test


def load_digits(split: str = "train", size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, 1, size, size) float32 in [0, 1], labels (N,) int64) of the fixed digits split.

    split: "train" (1,438 images), "test" (359) or "all" (1,797, in scikit-learn's order). size: 8 gives the
    original pixels; larger sizes are bilinear upsamplings (16 is what the shipped models use).
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer in [8, {MAX_SIZE}], got {size!r}")
    images, labels, test = _digits_arrays()
    if split != "all":
        keep = test if split == "test" else ~test
        images, labels = images[keep], labels[keep]
    # copies: the arrays are cached, and a caller may change what it gets in place
    x = torch.tensor(images).unsqueeze(1)
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(int(size), int(size)), mode="bilinear", align_corners=False)
        x = x.clamp_(0.0, 1.0)
    return x.contiguous(), torch.tensor(labels)


def load_dataset(name: str, split: str = "train", size: int = 16):
    """A data set by name (DATASETS): (images in [0, 1], labels)."""
    if name != "digits":
        raise ValueError(f"unknown dataset {name!r}; known: {DATASETS}")
    return load_digits(split, size)


def get_data_scaler(centered: bool):
    """Data in [0, 1] -> the model's input range: [-1, 1] when centered (VP/subVP), unchanged otherwise (VE)."""
    return (lambda x: 2.0 * x - 1.0) if centered else (lambda x: x)


def get_data_inverse_scaler(centered: bool):
    """Inverse of get_data_scaler."""
    return (lambda x: (x + 1.0) / 2.0) if centered else (lambda x: x)


MASKS = ("right", "left", "bottom", "top", "checker")


def make_mask(kind: str, n: int, size: int = 16) -> torch.Tensor:
    """(n, 1, size, size) mask, 1 where the pixel is known: 'right' keeps the left half known and so on."""
    m = torch.zeros(size, size)
    half = size // 2
    if kind == "right":
        m[:, :half] = 1
    elif kind == "left":
        m[:, half:] = 1
    elif kind == "bottom":
        m[:half, :] = 1
    elif kind == "top":
        m[half:, :] = 1
    elif kind == "checker":
        m = ((torch.arange(size)[:, None] // 4 + torch.arange(size)[None, :] // 4) % 2).float()
    else:
        raise ValueError(f"mask must be one of {MASKS}, got {kind!r}")
    return m.expand(n, 1, size, size).contiguous()
