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


# ------------------------------------------------------------ verifier budget
# jaxbp.verify and jaxbp.check_vjp do not use RTOL as is: they measure the
# round-off of a correct computation (jaxbp's own backprop, or jax.vjp) run in
# your dtype on the same inputs, against the float64 reference, and allow
#
#     budget = max(ROUNDOFF_SAFETY × that observed error,
#                  ROUNDOFF_FLOOR[dtype] × (L + 1) × scale)
#
# per leaf (scale = the leaf's largest reference entry). The floor covers a
# correct backprop whose summation order differs from ours (float32:
# 2e-6 ≈ 16 eps per layer, so 1.2e-5 at L = 5, 25× below a 3e-4 bug);
# float64 keeps the floor far below the 1e-6 that must fail.
ROUNDOFF_SAFETY = 10.0
ROUNDOFF_FLOOR = {
    jnp.dtype(jnp.float64): 1e-11,
    jnp.dtype(jnp.float32): 2e-6,
    jnp.dtype(jnp.bfloat16): 1.6e-2,
    jnp.dtype(jnp.float16): 2e-3,
}


def roundoff_budget(observed_abs: float, scale: float, dtype, depth: int) -> float:
    """The absolute error allowed on one leaf: see ROUNDOFF_SAFETY above.

    Args:
      observed_abs: max |correct computation in ``dtype`` − float64 reference|.
      scale: max |float64 reference| of the leaf.
      dtype: the dtype the gradients were computed in.
      depth: the number of layers L (1 for a single function).
    """
    floor = ROUNDOFF_FLOOR[jnp.dtype(dtype)] * (depth + 1) * scale
    return float(max(ROUNDOFF_SAFETY * observed_abs, floor))
