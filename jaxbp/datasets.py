"""Small classification data sets for the experiments, and labels <-> targets per loss.

* ``digits``: scikit-learn's bundled 8×8 handwritten digits (1797 images, 64
  pixels, 10 classes; shipped inside scikit-learn, so no download), split
  80/20 by a fixed permutation.
* ``xor``, ``spirals``, ``moons``: 2-D, two classes, generated with NumPy from
  a fixed seed.

Every set is standardized with the training split's mean and standard
deviation. Arrays are NumPy float64 (X) and int (labels): host data, cast to
the parameters' dtype and placed on devices by the caller. scikit-learn is an
optional extra (``pip install "jaxbp[experiments]"``) imported only by ``digits``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

NAMES = ("digits", "xor", "spirals", "moons")


class Dataset(NamedTuple):
    """A train/test split.

    Attributes:
      name: the data set's name.
      X_train: inputs, shape (N_train, d), float64, standardized.
      y_train: integer class labels, shape (N_train,).
      X_test: inputs, shape (N_test, d).
      y_test: labels, shape (N_test,).
      num_classes: K; labels are 0..K−1.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def load(name: str, *, seed: int = 0) -> Dataset:
    """The named data set (see ``NAMES``); ``seed`` fixes the split / generated points."""
    loaders = {"digits": digits, "xor": xor, "spirals": spirals, "moons": moons}
    if name not in loaders:
        raise ValueError(f"name: unknown data set {name!r}; known: {', '.join(NAMES)}")
    return loaders[name](seed=seed)


def _standardized(name, X_train, y_train, X_test, y_test, num_classes) -> Dataset:
    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)  # digits has always-blank corner pixels
    return Dataset(name, (X_train - mean) / std, y_train.astype(np.int32),
                   (X_test - mean) / std, y_test.astype(np.int32), num_classes)


def digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8×8 digits: X (N, 64), 10 classes, 1437 train / 360 test by default."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError('the digits data set needs scikit-learn: pip install "jaxbp[experiments]"'
                          ) from e
    data = load_digits()
    X, y = data.data.astype(np.float64), data.target
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    test, train = order[:n_test], order[n_test:]
    return _standardized("digits", X[train], y[train], X[test], y[test], 10)


def _two_class(name, sample, n_train, n_test, seed) -> Dataset:
    rng = np.random.default_rng(seed)
    X_train, y_train = sample(rng, n_train)
    X_test, y_test = sample(rng, n_test)
    return _standardized(name, X_train, y_train, X_test, y_test, 2)


def xor(*, n_train: int = 600, n_test: int = 200, noise: float = 0.35, seed: int = 0) -> Dataset:
    """Four Gaussian blobs at (±1, ±1); label 1 where the signs of x₁ and x₂ differ."""
    def sample(rng, n):
        corners = rng.choice(np.array([-1.0, 1.0]), size=(n, 2))
        X = corners + noise * rng.standard_normal((n, 2))
        return X, (corners[:, 0] != corners[:, 1]).astype(int)
    return _two_class("xor", sample, n_train, n_test, seed)


def spirals(*, n_train: int = 600, n_test: int = 200, noise: float = 0.1, turns: float = 1.5,
            seed: int = 0) -> Dataset:
    """Two interleaved spirals, r from 0.1 to 1 over ``turns`` turns; one per class."""
    def sample(rng, n):
        y = rng.integers(0, 2, size=n)
        t = rng.uniform(0.1, 1.0, size=n)
        angle = 2 * np.pi * turns * t + np.pi * y
        X = t[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        return X + noise * t[:, None] * rng.standard_normal((n, 2)), y
    return _two_class("spirals", sample, n_train, n_test, seed)


def moons(*, n_train: int = 600, n_test: int = 200, noise: float = 0.15, seed: int = 0) -> Dataset:
    """Two interleaving half circles (as scikit-learn's make_moons), Gaussian noise added."""
    def sample(rng, n):
        y = rng.integers(0, 2, size=n)
        t = rng.uniform(0.0, np.pi, size=n)
        X = np.where(y[:, None] == 0,
                     np.stack([np.cos(t), np.sin(t)], axis=1),
                     np.stack([1 - np.cos(t), 0.5 - np.sin(t)], axis=1))
        return X + noise * rng.standard_normal((n, 2)), y
    return _two_class("moons", sample, n_train, n_test, seed)


# ------------------------------------------------------------- labels <-> targets

def num_outputs(loss: str, num_classes: int) -> int:
    """n^L a classifier with this loss needs: 1 for binary_nll/hinge (two classes), else K."""
    if loss in ("binary_nll", "hinge"):
        if num_classes != 2:
            raise ValueError(f"loss {loss!r} is for two classes; this data set has {num_classes}")
        return 1
    return num_classes


def targets(labels: np.ndarray, num_classes: int, loss: str) -> np.ndarray:
    """Targets for ``loss`` from integer labels, shape (N, n^L) float64.

    nll and squared: one-hot (N, K); binary_nll: labels in {0, 1} (N, 1);
    hinge: {−1, +1} (N, 1).
    """
    labels = np.asarray(labels)
    if num_outputs(loss, num_classes) == 1:
        y = labels[:, None].astype(np.float64)
        return 2 * y - 1 if loss == "hinge" else y
    return np.eye(num_classes)[labels]


def predict(outputs, loss: str):
    """Class labels from the net's outputs a^L (N, n^L): argmax, or a threshold for one output."""
    if outputs.shape[-1] == 1:
        threshold = 0.0 if loss == "hinge" else 0.5  # hinge: sign; sigmoid/squared: 0.5
        return (outputs[:, 0] > threshold).astype(np.int32)
    return outputs.argmax(axis=-1)
