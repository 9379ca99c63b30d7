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

DP-SGD (Abadi et al. 2016) adds Gaussian noise of standard deviation σ·C to the
clipped *sum* (its sensitivity is C: one example moves it by at most C), so the
noisy mean over a batch of B has noise σ·C/B on every entry.

This module is a leaf: array helpers only, shared by ``jaxbp.Network`` (which
feeds it its forward trace and deltas) and ``jaxbp.nn``'s private gradients.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.core import _checks


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


def clipped_layers(A_prevs, deltas, weight) -> tuple:
    """Σ_b weight_b g_b per dense layer: ((A^{ℓ−1}ᵀ (weight·δ^ℓ), Σ_b weight_b δ_b^ℓ), ...).

    Args:
      A_prevs: (A^0, ..., A^{L−1}), shapes (B, m^ℓ).
      deltas: (δ^1, ..., δ^L), shapes (B, n^ℓ).
      weight: (B,), e.g. scale_b / B.

    Returns:
      One (W (m^ℓ, n^ℓ), W0 (n^ℓ,)) pair per layer.
    """
    # Folding weight into δ (B, n) is cheaper than scaling each (m, n) result.
    weight = weight[:, None]  # (B, 1)
    return tuple((A_prev.T @ (weight * d), jnp.sum(weight * d, axis=0))  # (m, B) @ (B, n)
                 for A_prev, d in zip(A_prevs, deltas))


def check_noise_multiplier(noise_multiplier) -> None:
    """σ ≥ 0 and finite (checked when concrete); a TypeError for non-numbers."""
    if isinstance(noise_multiplier, bool) or not (
            isinstance(noise_multiplier, numbers.Real) or hasattr(noise_multiplier, "dtype")):
        raise TypeError(f"noise_multiplier: expected a real number ≥ 0, got {noise_multiplier!r}")
    if jnp.ndim(noise_multiplier) != 0:
        raise ValueError(f"noise_multiplier: expected a scalar, got shape "
                         f"{jnp.shape(noise_multiplier)}")
    if _checks.is_concrete(noise_multiplier):
        value = float(np.asarray(noise_multiplier))
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"noise_multiplier: expected a finite number ≥ 0, got {value}")


def check_key(key) -> None:
    """A PRNG key (new-style ``jax.random.key`` or raw uint32 ``PRNGKey``), else a TypeError."""
    if key is None or not hasattr(key, "dtype") or not (
            jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
            or (key.dtype == jnp.uint32 and jnp.shape(key) == (2,))):
        raise TypeError(f"key: expected a PRNG key (jax.random.key(seed)) for the noise, "
                        f"got {key!r}")


def example_weights(mask, B: int, dtype) -> jax.Array:
    """The (B,) 0/1 weights of a padded batch's real examples (all ones when mask is None)."""
    if mask is None:
        return jnp.ones((B,), dtype)
    if jnp.shape(mask) != (B,):
        raise ValueError(f"mask: expected shape ({B},), one entry per example (true for real "
                         f"examples, false for padding), got {jnp.shape(mask)}")
    return jnp.asarray(mask).astype(dtype)


def noisy_mean(clipped_sum, key, *, max_norm, noise_multiplier, denominator):
    """(Σ_b clip(g_b) + N(0, (σ·C)² I)) / denominator, the DP-SGD gradient.

    Args:
      clipped_sum: a pytree, Σ_b scale_b g_b over the (real) examples.
      key: PRNG key; one independent normal draw per leaf entry.
      max_norm: C.
      noise_multiplier: σ.
      denominator: the batch size to average over (B, or the expected batch size
        q·N under Poisson sampling).

    Returns:
      A pytree like clipped_sum.
    """
    leaves, treedef = jax.tree.flatten(clipped_sum)
    keys = jax.random.split(key, max(len(leaves), 1))
    noisy = []
    for leaf, k in zip(leaves, keys):
        std = jnp.asarray(noise_multiplier, leaf.dtype) * jnp.asarray(max_norm, leaf.dtype)
        noise = std * jax.random.normal(k, leaf.shape, leaf.dtype)
        noisy.append((leaf + noise) / jnp.asarray(denominator, leaf.dtype))
    return jax.tree.unflatten(treedef, noisy)
