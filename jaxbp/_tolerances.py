"""The one per-dtype tolerance table, and the error measure it applies to.

Errors are measured per leaf relative to the reference's scale:

    relative_error(got, want) = max|got − want| / max(max|want|, tiny)

(an elementwise ratio would blow up on entries that are zero up to round-off).

float64: correct backprop agrees with ``jax.grad`` to a few ulp of the
largest entry (measured ≤ 1e-14 for depths 1–5); 1e-10 leaves four orders of
margin. float32: eps = 1.2e-7; each layer of the backward chain adds a few
eps of relative error, and sums over up to ~64 terms (a matmul's reduction)
add about √64·eps; five layers then stay under ~1e-5. 1e-4 keeps a factor of
ten above that and still sits far below any factor-sized bug.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

RTOL = {
    jnp.dtype(jnp.float64): 1e-10,
    jnp.dtype(jnp.float32): 1e-4,
    jnp.dtype(jnp.bfloat16): 3e-2,
    jnp.dtype(jnp.float16): 5e-3,
}


def rtol_for(dtype) -> float:
    """Tolerance on ``relative_error`` for gradients computed in ``dtype``."""
    return RTOL[jnp.dtype(dtype)]


def relative_error(got, want) -> float:
    """max|got − want| / max|want| for one leaf, as a Python float; inf on NaN/inf."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shapes differ: got {got.shape}, want {want.shape}")
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(want))):
        return float("inf")
    if got.size == 0:
        return 0.0
    scale = max(float(np.max(np.abs(want))), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(got - want)) / scale)


def tree_relative_error(got, want) -> float:
    """The largest ``relative_error`` over matching leaves of two pytrees."""
    errs = jax.tree.map(relative_error, got, want)
    return max(jax.tree.leaves(errs), default=0.0)
