"""The fallback truth for NumPy code jax cannot trace: float64 central differences of the
plain NumPy forward.

For an input θ with n entries and a cotangent dout of the outputs y, the truth is
dout · ∂y/∂θ, one entry at a time:

    (dout · (y(θ + h e_i) − y(θ − h e_i))) / (2 h),   h = eps64^(1/3) · max(1, |θ_i|),

two forward runs per entry, shared by every cotangent. Inputs larger than ``SMALL`` are first
checked along ``DIRECTIONS`` random directions v (two runs each: your ⟨g, v⟩ against
dout · ∂y/∂θ v); only an input that disagrees along some direction is then done entry by
entry, so the wrong entries are still named.
"""

from __future__ import annotations

import numpy as np

from jaxbp.check._numpy_common import Pair, as_float64, compare

STEP = float(np.finfo(np.float64).eps ** (1 / 3))
SMALL = 256
DIRECTIONS = 4


def _jvp(run, wrt, k: int, direction: np.ndarray) -> np.ndarray:
    """(y(θ + h v) − y(θ − h v)) / 2h for input k, outputs flattened and concatenated."""
    h = STEP * max(1.0, float(np.max(np.abs(wrt[k]))))
    ys = []
    for sign in (1.0, -1.0):
        moved = list(wrt)
        moved[k] = wrt[k] + sign * h * direction
        ys.append(np.concatenate([as_float64(y).ravel() for y in run(moved)]))
    return (ys[0] - ys[1]) / (2 * h)


def _entrywise(run, wrt, k: int, douts: np.ndarray) -> np.ndarray:
    x = wrt[k]
    h = STEP * np.maximum(1.0, np.abs(x)).ravel()
    truth = np.empty((douts.shape[0], x.size))
    for i in range(x.size):
        e = np.zeros(x.size)
        e[i] = h[i]
        ys = []
        for sign in (1.0, -1.0):
            moved = list(wrt)
            moved[k] = x + sign * e.reshape(x.shape)
            ys.append(np.concatenate([as_float64(y).ravel() for y in run(moved)]))
        truth[:, i] = douts @ ((ys[0] - ys[1]) / (2 * h[i]))
    return truth.reshape((douts.shape[0],) + x.shape)


def fd_pairs(run, wrt, names, douts, yours, *, dtype, layers=None) -> list:
    """One ``Pair`` per input in ``wrt`` with the central-difference truth.

    Args:
      run: list of float64 inputs -> the forward's outputs (plain NumPy).
      wrt: the inputs to differentiate, float64 NumPy arrays.
      names: their row names.
      douts: (trials, total output size) cotangents, flattened like ``run``'s outputs.
      yours: per input, your gradients stacked over trials (trials, *shape).
      dtype: your dtype (for the budget).
      layers: per input, the ``layer`` of its row (or None).
    """
    wrt = [as_float64(x) for x in wrt]
    rng = np.random.default_rng(0)
    pairs = []
    for k, (name, mine) in enumerate(zip(names, yours)):
        layer = None if layers is None else layers[k]
        mine = as_float64(mine)
        if wrt[k].size > SMALL:
            vs = rng.standard_normal((DIRECTIONS,) + wrt[k].shape)
            truth = np.stack([douts @ _jvp(run, wrt, k, v) for v in vs], axis=1)  # (trials, d)
            got = np.einsum("t...,d...->td", mine, vs)
            pair = Pair(name, got, truth, layer=layer)
            if compare([pair], dtype=dtype, fd=True)[0].ok:
                pairs.append(pair)
                continue
        pairs.append(Pair(name, mine, _entrywise(run, wrt, k, douts), layer=layer))
    return pairs
