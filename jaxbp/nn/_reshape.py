"""Flatten: (B, ...) -> (B, prod(...)), e.g. a conv stack's feature maps into a Linear."""

from __future__ import annotations

import functools
import math

from jaxbp.nn._module import Module


@functools.lru_cache(maxsize=None)
def Flatten() -> Module:
    """Y = X reshaped to one feature axis per example: (B, d1, ..., dk) -> (B, d1·…·dk).

    Row-major (C order), so NHWC maps (h, w, c) to index (h·W + w)·C + c. Backward: a
    reshape moves no value, so its transpose is the reshape back,

        ∂L/∂X = reshape(∂L/∂Y, (B, d1, ..., dk))

    Returns:
      A ``Module`` with no params.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxbp import nn
      >>> nn.Flatten().forward((), jnp.ones((2, 4, 4, 3)), None)[0].shape
      (2, 48)
    """
    name = "Flatten()"

    def init(key, in_shape, dtype):
        del key, dtype
        return (), (math.prod(int(s) for s in in_shape),)

    def forward(params, X, key):
        del params, key
        if X.ndim < 1:
            raise ValueError(f"{name}: expects a batch axis first, got a scalar")
        return X.reshape(X.shape[0], -1), X  # X kept for its shape only (XLA drops its values)

    def backward(params, X, dY):
        del params
        return (), dY.reshape(X.shape)

    return Module(name, init, forward, backward)
