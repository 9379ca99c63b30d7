"""Per-example gradient norms and clipped gradients without per-example gradients.

One example's weight gradient is an outer product (the notes' weight factor
a^{ℓ−1} times ∂L/∂z^ℓ), ∂L/∂W^ℓ = a^{ℓ−1} (∂L/∂z^ℓ)ᵀ, so its squared Frobenius
norm factors ("ghost norm", Goodfellow 2015):

    ‖∂L/∂W^ℓ‖² = Σ_ij (a_i δ_j)² = ‖a^{ℓ−1}‖² · ‖δ^ℓ‖²,     δ^ℓ = ∂L/∂z^ℓ,
    ‖∂L/∂W0^ℓ‖² = ‖δ^ℓ‖²,

and the layer's squared norm is (‖a^{ℓ−1}‖² + 1)·‖δ^ℓ‖². Over a batch these are
(B,) vectors built from the forward trace A^{ℓ−1} (B, m) and the deltas
δ^ℓ (B, n): O(B(m + n)) work per layer on top of one forward and backward
pass, and no (B, m, n) tensor.

Clipping (DP-SGD without noise, Abadi et al. 2016) scales each example's whole
gradient g_b (all layers) to norm at most C = max_norm:

    scale_b = C / max(‖g_b‖, C)        (= min(1, C/‖g_b‖); 1 when g_b = 0)
    clipped = (1/B) Σ_b scale_b g_b,

and since g_b is linear in δ_b the sum is again one matrix product per layer:
∂W^ℓ = A^{ℓ−1}ᵀ (scale[:, None] · δ^ℓ) / B, ∂W0^ℓ = Σ_b scale_b δ_b^ℓ / B.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import _checks
from jaxbp._network import Dense, _deltas, _forward_trace


def check_max_norm(max_norm, dtype) -> jax.Array:
    """Checks the clipping norm C is a real scalar, finite and > 0; casts it to dtype.

    The value checks run on concrete numbers and are skipped while tracing.
    """
    if isinstance(max_norm, bool) or not (
            isinstance(max_norm, numbers.Real) or hasattr(max_norm, "dtype")):
        raise TypeError(f"max_norm: expected a positive real number, got {max_norm!r}")
    if hasattr(max_norm, "dtype") and not (jnp.issubdtype(max_norm.dtype, jnp.floating)
                                           or jnp.issubdtype(max_norm.dtype, jnp.integer)):
        raise TypeError(f"max_norm: expected a real number, got dtype {max_norm.dtype}")
    if jnp.ndim(max_norm) != 0:
        raise ValueError(f"max_norm: expected a scalar, got shape {jnp.shape(max_norm)}")
    if _checks.is_concrete(max_norm):
        value = float(np.asarray(max_norm))
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"max_norm: expected a finite number > 0, got {value}")
    return jnp.asarray(max_norm).astype(dtype)


def layer_sq_norms(A_prevs, deltas) -> jax.Array:
    """Squared per-example norms of each layer's gradient, by the ghost-norm identity.

    (‖a^{ℓ−1}‖² + 1)·‖δ^ℓ‖² per example: the W^ℓ part ‖a^{ℓ−1}‖²‖δ^ℓ‖² plus the
    W0^ℓ part ‖δ^ℓ‖².

    Args:
      A_prevs: (A^0, ..., A^{L−1}), shapes (B, m^ℓ).
      deltas: (δ^1, ..., δ^L), shapes (B, n^ℓ).

    Returns:
      Shape (B, L); column ℓ−1 holds layer ℓ's squared norm.
    """
    cols = [
        (jnp.sum(A_prev * A_prev, axis=-1) + 1) * jnp.sum(d * d, axis=-1)  # (B,)
        for A_prev, d in zip(A_prevs, deltas)
    ]
    return jnp.stack(cols, axis=-1)


def clip_scale(norms: jax.Array, max_norm) -> jax.Array:
    """scale_b = max_norm / max(‖g_b‖, max_norm): 1 for short gradients, never 0/0."""
    max_norm = jnp.asarray(max_norm, norms.dtype)
    return max_norm / jnp.maximum(norms, max_norm)


@functools.partial(jax.jit, static_argnums=0, static_argnames="per_layer")
def per_example_grad_norms(net, params, X, Y, *, per_layer: bool = False) -> jax.Array:
    """‖g_b‖ for each example b, shape (B,), or per layer, shape (B, L)."""
    trace = _forward_trace(net, params, X)
    deltas = _deltas(net, params, trace, Y)  # each (B, n^ℓ)
    sq = layer_sq_norms(trace.a[:-1], deltas)  # (B, L)
    return jnp.sqrt(sq) if per_layer else jnp.sqrt(jnp.sum(sq, axis=-1))


@functools.partial(jax.jit, static_argnums=0)
def clipped_grad(net, params, X, Y, max_norm) -> tuple[Dense, ...]:
    """(1/B) Σ_b scale_b g_b with scale_b = max_norm / max(‖g_b‖, max_norm)."""
    B = X.shape[0]
    trace = _forward_trace(net, params, X)
    deltas = _deltas(net, params, trace, Y)
    norms = jnp.sqrt(jnp.sum(layer_sq_norms(trace.a[:-1], deltas), axis=-1))  # (B,)
    # Folding scale_b / B into δ (B, n) is cheaper than scaling each (m, n) result.
    weight = (clip_scale(norms, max_norm) / B)[:, None]  # (B, 1)
    return tuple(
        Dense(A_prev.T @ (weight * d), jnp.sum(weight * d, axis=0))  # (m, B) @ (B, n) -> (m, n)
        for A_prev, d in zip(trace.a[:-1], deltas)
    )
