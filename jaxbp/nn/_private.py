"""Private gradients for ``Sequential``: per-example norms, clipping and DP-SGD in one backward pass.

Example b's loss ℓ_b is ``model.loss`` on that example alone (a sequence model's
mean over its positions), g_b = ∂ℓ_b/∂params its gradient, and

    scale_b = C / max(‖g_b‖, C),     clipped = (1/B) Σ_b scale_b g_b           (Abadi et al. 2016)
    private = (Σ_b m_b scale_b g_b + N(0, (σ·C)² I)) / D                      (D = B, m_b = 1 by default)

One forward pass, then one backward pass in which every module's ``per_example``
hook (``jaxbp.nn._per_example``) returns ∂L/∂(its input) for the chain, the squared
norms ‖g_b^(module)‖² (ghost or materialized, whichever is cheaper for that module)
and a function c ↦ Σ_b c_b g_b^(module) over the residuals and cotangents it already
holds. The norms add up over modules to ‖g_b‖²; once scale_b is known, each module's
clipped sum is one product like the non-private gradient's, (c ⊙ G)ᵀ A (book-keeping,
Bu et al. 2023). No per-example gradient of the whole model and no second backward.

The model is reached only through ``model._per_example_start`` (its forward and the
loss's cotangent), so this module does not import ``_sequential`` (which imports it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxbp.core import _ghost
from jaxbp.nn._per_example import per_example_chain


def _pass(model, params, X, Y, key):
    """(per-example losses (B,), squared norms (B, n_modules), weighted-sum functions)."""
    losses, residuals, dY, n = model._per_example_start(params, X, Y, key)
    _, sq, sums = per_example_chain(model.modules[:n], params[:n], residuals[:n], dY)
    for p in params[n:]:  # the fused last activation: no parameters
        sq = jnp.concatenate([sq, jnp.zeros((sq.shape[0], 1), sq.dtype)], axis=-1)
        sums = sums + (lambda c, p=p: jax.tree.map(jnp.zeros_like, p),)
    return losses, sq, sums


def _clipped_sum(model, params, X, Y, key, max_norm, weight):
    """(losses (B,), Σ_b weight_b scale_b g_b shaped like params)."""
    losses, sq, sums = _pass(model, params, X, Y, key)
    c = _ghost.clip_scale(jnp.sqrt(jnp.sum(sq, axis=-1)), max_norm) * weight  # (B,)
    return losses, tuple(weighted_sum(c) for weighted_sum in sums)


@functools.partial(jax.jit, static_argnums=0, static_argnames="per_layer")
def per_example_grad_norms(model, params, X, Y, key, *, per_layer: bool):
    """‖g_b‖ (B,), or one column per module (B, len(model.modules))."""
    _, sq, _ = _pass(model, params, X, Y, key)
    return jnp.sqrt(sq) if per_layer else jnp.sqrt(jnp.sum(sq, axis=-1))


def grad_dtype(params, X):
    """The float dtype of the gradients: the params' (X may hold integer token ids)."""
    leaves = [x for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
    return leaves[0].dtype if leaves else X.dtype


@functools.partial(jax.jit, static_argnums=0)
def clipped_grad(model, params, X, Y, max_norm, key):
    """(1/B) Σ_b scale_b g_b."""
    weight = jnp.full((X.shape[0],), 1.0 / X.shape[0], grad_dtype(params, X))
    return _clipped_sum(model, params, X, Y, key, max_norm, weight)[1]


@functools.partial(jax.jit, static_argnums=0)
def private_value_and_grad(model, params, X, Y, max_norm, noise_multiplier, key, dropout_key,
                           weight, denominator):
    """(mean loss over the weighted examples, the DP-SGD gradient)."""
    losses, clipped_sum = _clipped_sum(model, params, X, Y, dropout_key, max_norm, weight)
    loss = jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1)
    grads = _ghost.noisy_mean(clipped_sum, key, max_norm=max_norm,
                              noise_multiplier=noise_multiplier, denominator=denominator)
    return loss, grads


def check_private(dtype, X, max_norm, noise_multiplier, key, mask, batch_size):
    """Validated (max_norm, weight (B,), denominator) for ``private_value_and_grad``."""
    max_norm = _ghost.check_max_norm(max_norm, dtype)
    _ghost.check_noise_multiplier(noise_multiplier)
    _ghost.check_key(key)
    weight = _ghost.example_weights(mask, X.shape[0], dtype)
    return max_norm, weight, X.shape[0] if batch_size is None else batch_size
