"""Dropout: inverted dropout, identity in evaluation (key None)."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxbp.nn._module import Module


def Dropout(rate: float) -> Module:
    """Y = X ⊙ m / (1 − rate), m_i ~ Bernoulli(1 − rate) independently; shape unchanged.

    Inverted dropout: each entry is kept with probability 1 − rate and scaled by
    1/(1 − rate), so E[Y] = X and evaluation needs no rescaling. With ``key=None``
    (evaluation) or ``rate == 0`` the module is the identity.

    Backward. Y is linear in X with a diagonal Jacobian m / (1 − rate):

        ∂L/∂X = ∂L/∂Y ⊙ m / (1 − rate)        (the same mask as the forward)

    and ∂L/∂X = ∂L/∂Y for the identity. No parameters.

    Args:
      rate: the probability of dropping an entry, in [0, 1).

    Returns:
      A ``Module`` with params ``()``; its residual is the boolean keep-mask m
      (None when it is the identity).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import nn
      >>> drop = nn.Dropout(0.5)
      >>> Y, mask = drop.forward((), jnp.ones((2, 4)), jax.random.key(0))
      >>> bool(jnp.all((Y == 0) | (Y == 2)))   # dropped, or kept and scaled by 1/(1 − 0.5)
      True
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (
            math.isfinite(rate) and 0 <= rate < 1):
        raise ValueError(f"Dropout: rate must be a number in [0, 1), got {rate!r}")
    return _dropout(float(rate))


@functools.lru_cache(maxsize=None)
def _dropout(rate: float) -> Module:
    name = f"Dropout({rate:g})"
    scale = 1.0 / (1.0 - rate)

    def init(key, in_shape, dtype):
        del key, dtype
        return (), tuple(int(s) for s in in_shape)

    def forward(params, X, key):
        del params
        if not jnp.issubdtype(X.dtype, jnp.floating):
            raise TypeError(f"{name}: expects a floating-point input, got dtype {X.dtype}")
        if key is None or rate == 0.0:
            return X, None
        # m: (B, ...) bool, drawn as float32 uniforms whatever X's dtype and the x64 mode
        # (a Python float p would draw float64 under x64): one key, one mask, so the
        # float64 truth of a check sees the mask of a float32 run
        keep = jax.random.bernoulli(key, jnp.float32(1.0 - rate), X.shape)
        return jnp.where(keep, X * jnp.asarray(scale, X.dtype), jnp.zeros((), X.dtype)), keep

    def backward(params, keep, dY):
        del params
        if keep is None:
            return (), dY
        return (), jnp.where(keep, dY * jnp.asarray(scale, dY.dtype), jnp.zeros((), dY.dtype))

    return Module(name, init, forward, backward)
