"""DP-SGD for train.py --private: Poisson-sampled batches, padded and masked, and the accountant.

Sampling. Each step takes every training example independently with probability
q = batch_size / N (Poisson subsampling: the sampling the accountant assumes), so
a batch has a random size with mean q·N. Shapes stay static: the drawn indices are
padded to a fixed ``capacity`` and a (capacity,) mask marks the real rows; the
step (``jaxbp.make_step(..., private=...)``) gives padding rows no weight and
divides the noisy clipped sum by the expected batch size q·N.

Accounting. The privacy spent after T steps is that of T compositions of the
Poisson-subsampled Gaussian mechanism with noise multiplier σ, reported as ε at a
given δ by ``dp_accounting``'s RDP accountant (optional extra ``privacy``).
"""

from __future__ import annotations

import math

import numpy as np

from _common import FlagError  # noqa: I001

SAMPLING = "poisson"
DELTA = 1e-5


def check(*, max_norm, noise_multiplier, delta, n_train: int) -> dict:
    """The validated private settings (also the checkpoint's "computation" entries)."""
    for flag, value, low in (("--max-norm", max_norm, "> 0"),
                             ("--noise-multiplier", noise_multiplier, ">= 0")):
        ok = isinstance(value, (int, float)) and math.isfinite(value) and (
            value > 0 if low == "> 0" else value >= 0)
        if not ok:
            raise FlagError(flag, f"expected a finite number {low}, got {value!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise FlagError("--delta", f"expected a number in (0, 1), got {delta!r}")
    if delta >= 1.0 / n_train:
        raise FlagError("--delta", f"should be well below 1/N = {1.0 / n_train:.2g} (N = {n_train} "
                                   f"training examples), got {delta!r}")
    try:
        import dp_accounting  # noqa: F401
    except ImportError:
        raise FlagError("--private", "needs dp-accounting: pip install 'jaxbp[privacy]'") from None
    return dict(max_norm=float(max_norm), noise_multiplier=float(noise_multiplier),
                delta=float(delta))


def capacity(n: int, q: float) -> int:
    """The padded batch size: the mean q·n plus 7 standard deviations (overflow ~1e-12 a step)."""
    return min(n, math.ceil(q * n + 7 * math.sqrt(q * n * (1 - q))) + 1)


def poisson_batches(order: dict, n: int, q: float, cap: int, start: int, steps: int):
    """(t, idx (cap,), mask (cap,) bool, dropped) per step: every example kept with probability q.

    ``order["rng"]`` (NumPy bit-generator state, from ``train._data_order`` or a checkpoint)
    is advanced and stored after every step, so a resumed run draws the same batches.
    ``dropped`` counts drawn examples beyond ``cap`` (left out; about never happens).
    """
    rng = np.random.default_rng()
    rng.bit_generator.state = order["rng"]
    for t in range(start, steps):
        drawn = np.flatnonzero(rng.random(n) < q)
        order["rng"] = rng.bit_generator.state
        dropped = max(0, len(drawn) - cap)
        idx = np.zeros(cap, dtype=np.int64)  # padding rows repeat example 0, masked out
        idx[:min(len(drawn), cap)] = drawn[:cap]
        mask = np.arange(cap) < len(drawn)
        yield t, idx, mask, dropped


def epsilon(*, noise_multiplier: float, q: float, steps: int, delta: float) -> float:
    """ε at δ after ``steps`` Poisson-subsampled Gaussian steps (RDP accountant); inf for σ = 0."""
    import dp_accounting

    if noise_multiplier == 0:
        return math.inf
    # Integer orders: the fractional ones fail to converge (with warnings) at large q.
    accountant = dp_accounting.rdp.RdpAccountant(orders=list(range(2, 257)))
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(noise_multiplier))
    accountant.compose(event, steps)
    return float(accountant.get_epsilon(delta))
