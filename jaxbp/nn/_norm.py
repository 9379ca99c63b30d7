"""LayerNorm and BatchNorm: normalise, then scale and shift; one hand-written backward for both.

Both compute, over a set of N "normalised" entries (LayerNorm: one example's last
axis; BatchNorm: one feature across the batch and every other leading axis),

    μ = mean(x),  σ² = mean((x − μ)²),  s = (σ² + ε)^(-1/2),
    x̂ = (x − μ) s,  y = γ ⊙ x̂ + β,

with γ (scale) and β (offset) of shape (d,) on the last axis. They differ only in
which axes the means run over, so they share ``_normalize`` and ``_norm_backward``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.nn._module import Module, bias, check_last_axis, sum_but_last
from jaxbp.nn._per_example import hook_from_backward, refuse, row_sq_norms


class Norm(NamedTuple):
    """A norm's parameters: scale γ (d,) (init 1) and offset β (d,) (init 0)."""

    gamma: jax.Array
    beta: jax.Array


class NormResiduals(NamedTuple):
    """What a norm's backward needs: x̂ (X's shape) and s = 1/√(σ² + ε) (keepdims shape)."""

    x_hat: jax.Array
    inv_std: jax.Array


def _check_eps(module: str, eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (
            math.isfinite(eps) and eps > 0):
        raise ValueError(f"{module}: eps must be a positive finite number, got {eps!r}")
    return float(eps)


def _check_input(name: str, params: Norm, X) -> None:
    if not jnp.issubdtype(X.dtype, jnp.floating):
        raise TypeError(f"{name}: expects a floating-point input, got dtype {X.dtype}")
    check_last_axis(name, X, params.gamma.shape[0], f"gamma of shape {tuple(params.gamma.shape)}")


def _init(name: str, key, in_shape, dtype):
    del key
    in_shape = tuple(int(s) for s in in_shape)
    if len(in_shape) < 1:
        raise ValueError(f"{name}: expects at least a feature axis, got in_shape {in_shape}")
    d = in_shape[-1]
    return Norm(jnp.ones((d,), dtype), jnp.zeros((d,), dtype)), in_shape


def _normalize(params: Norm, X: jax.Array, axes: tuple, eps: float):
    """y = γ x̂ + β with x̂ = (x − μ)/√(σ² + ε) over ``axes`` (two-pass variance)."""
    mu = jnp.mean(X, axis=axes, keepdims=True)
    centered = X - mu
    var = jnp.mean(centered * centered, axis=axes, keepdims=True)  # biased: divide by N
    inv_std = jax.lax.rsqrt(var + eps)
    x_hat = centered * inv_std
    Y = x_hat * bias(params.gamma, X.ndim) + bias(params.beta, X.ndim)
    return Y, NormResiduals(x_hat, inv_std)


def _norm_backward(params: Norm, residuals: NormResiduals, dY: jax.Array, axes: tuple):
    """(∂L/∂(γ, β), ∂L/∂x) for y = γ x̂ + β, x̂ normalised over ``axes`` (N entries).

    Derivation. With g = ∂L/∂x̂ = ∂L/∂y ⊙ γ, and within one group of N entries

        ∂μ/∂x_i = 1/N,   ∂σ²/∂x_i = 2 (x_i − μ)/N   (the μ term drops: Σ_j (x_j − μ) = 0),
        ∂s/∂x_i = −½ s³ ∂σ²/∂x_i = −s³ (x_i − μ)/N = −s² x̂_i / N,

    so, from x̂_j = (x_j − μ) s,

        ∂x̂_j/∂x_i = s (δ_ij − 1/N) + (x_j − μ) ∂s/∂x_i = s (δ_ij − 1/N) − s x̂_j x̂_i / N

    and

        ∂L/∂x_i = Σ_j g_j ∂x̂_j/∂x_i = s (g_i − mean(g) − x̂_i mean(g ⊙ x̂)).

    The parameters are the bias rule on the last axis:

        ∂L/∂γ = Σ_{all but last} ∂L/∂y ⊙ x̂   (d,),    ∂L/∂β = Σ_{all but last} ∂L/∂y   (d,).

    No (N, N) Jacobian is built: two means per group.
    """
    x_hat, inv_std = residuals
    dx_hat = dY * bias(params.gamma, dY.ndim)  # g = ∂L/∂x̂
    mean_g = jnp.mean(dx_hat, axis=axes, keepdims=True)
    mean_gx = jnp.mean(dx_hat * x_hat, axis=axes, keepdims=True)
    dX = inv_std * (dx_hat - mean_g - x_hat * mean_gx)
    return Norm(sum_but_last(dY * x_hat), sum_but_last(dY)), dX


def LayerNorm(eps: float = 1e-5) -> Module:
    """Normalise each example over its last axis, then scale and shift: (B, ..., d) -> same shape.

    μ, σ² are per position (means over the last axis, N = d); γ, β are (d,).
    Backward (derived in ``_norm_backward``), with g = ∂L/∂y ⊙ γ and means over the last axis:

        ∂L/∂x = s (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂))      (B, ..., d)
        ∂L/∂γ = Σ_{b,...} ∂L/∂y ⊙ x̂,   ∂L/∂β = Σ_{b,...} ∂L/∂y   (d,)

    Args:
      eps: ε > 0 added to the variance.

    Returns:
      A ``Module`` whose params are ``Norm(gamma (d,) = 1, beta (d,) = 0)``; residuals
      ``NormResiduals(x_hat, inv_std)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import nn
      >>> ln = nn.LayerNorm()
      >>> params, out_shape = ln.init(jax.random.key(0), (4, 8), jnp.float32)
      >>> Y, res = ln.forward(params, jnp.ones((2, 4, 8)), None)
      >>> Y.shape, out_shape
      ((2, 4, 8), (4, 8))
    """
    return _layer_norm(_check_eps("LayerNorm", eps))


@functools.lru_cache(maxsize=None)
def _layer_norm(eps: float) -> Module:
    name = "LayerNorm()" if eps == 1e-5 else f"LayerNorm(eps={eps:g})"

    def init(key, in_shape, dtype):
        return _init(name, key, in_shape, dtype)

    def forward(params, X, key):
        del key
        _check_input(name, params, X)
        return _normalize(params, X, (X.ndim - 1,), eps)

    def backward(params, residuals, dY):
        return _norm_backward(params, residuals, dY, (dY.ndim - 1,))

    def sq_norms(params, residuals, dY):
        # Example b's γ and β gradients, (B, d) each: Σ over its positions.
        B, d = dY.shape[0], dY.shape[-1]
        dgamma = jnp.sum((dY * residuals.x_hat).reshape(B, -1, d), axis=1)
        return row_sq_norms(dgamma) + row_sq_norms(jnp.sum(dY.reshape(B, -1, d), axis=1))

    return Module(name, init, forward, backward, hook_from_backward(backward, sq_norms))


def BatchNorm(eps: float = 1e-5) -> Module:
    """Normalise each feature over the batch (training mode), then scale and shift.

    Statistics over every axis but the last (B for (B, d); B·T for (B, T, d); B·H·W
    for NHWC), biased variance (divide by N, the product of those sizes); no running
    averages are kept. Backward (derived in ``_norm_backward``), with g = ∂L/∂y ⊙ γ
    and means over every axis but the last:

        ∂L/∂x = s (g − mean(g) − x̂ ⊙ mean(g ⊙ x̂))      (B, ..., d)
        ∂L/∂γ = Σ_{b,...} ∂L/∂y ⊙ x̂,   ∂L/∂β = Σ_{b,...} ∂L/∂y   (d,)

    ∂L/∂x sums to zero over the batch for each feature, so a bias added just before
    BatchNorm gets a zero gradient. Examples are not independent here: there are no
    per-example gradients.

    Args:
      eps: ε > 0 added to the variance.

    Returns:
      A ``Module`` whose params are ``Norm(gamma (d,) = 1, beta (d,) = 0)``; residuals
      ``NormResiduals(x_hat, inv_std)``.
    """
    return _batch_norm(_check_eps("BatchNorm", eps))


@functools.lru_cache(maxsize=None)
def _batch_norm(eps: float) -> Module:
    name = "BatchNorm()" if eps == 1e-5 else f"BatchNorm(eps={eps:g})"

    def init(key, in_shape, dtype):
        return _init(name, key, in_shape, dtype)

    def forward(params, X, key):
        del key
        _check_input(name, params, X)
        if X.shape[0] == 0:
            raise ValueError(f"{name}: empty batch (B=0); batch statistics need examples")
        return _normalize(params, X, tuple(range(X.ndim - 1)), eps)

    def backward(params, residuals, dY):
        return _norm_backward(params, residuals, dY, tuple(range(dY.ndim - 1)))

    no_per_example = refuse(
        f"{name} mixes examples: each output depends on the whole batch's mean and variance, "
        f"so an example's gradient is not its own and clipping cannot bound one example's "
        f"influence (no per-example gradient exists); use LayerNorm for private gradients")
    return Module(name, init, forward, backward, no_per_example)
