"""Activation functions, each beside its hand-written derivative, in one table.

The notes' activation factor is ∂a^ℓ/∂z^ℓ = (f^ℓ)'(z^ℓ). For an elementwise f this
is a diagonal matrix, so the backward pass multiplies ∂L/∂a^ℓ by f'(z^ℓ) entry by
entry. Softmax is not elementwise: its derivative is the Jacobian
diag(a) − a aᵀ, which the backward pass applies as a vector product
(a ⊙ (g − ⟨a, g⟩)) so no (B, n, n) tensor is ever built.

Subgradients at kinks (they match what ``jax.grad`` of the forward returns):
  * ``relu``: f'(0) = 0 (``jax.nn.relu``'s convention).
  * ``leaky_relu``: f'(0) = 1 (the ``z >= 0`` branch, as ``jax.nn.leaky_relu``).
``gelu`` is the tanh approximation
0.5·z·(1 + tanh(√(2/π)(z + 0.044715 z³))), the same as ``jax.nn.gelu(approximate=True)``.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

LEAKY_RELU_SLOPE = 0.01
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715


class Activation(NamedTuple):
    """A forward function f and its hand-written derivative f'.

    Attributes:
      name: the table key.
      f: z -> a, shape (..., n) -> (..., n).
      df: z -> f'(z). For elementwise activations the elementwise derivative,
        shape (..., n); for softmax the Jacobian ∂a/∂z, shape (n, n) for one z.
      vjp: (z, a, dL_da) -> dL_dz, the product of ∂L/∂a with ∂a/∂z without
        building a Jacobian. Shapes (..., n).
      elementwise: whether ∂a/∂z is diagonal.
    """

    name: str
    f: Callable[[jax.Array], jax.Array]
    df: Callable[[jax.Array], jax.Array]
    vjp: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
    elementwise: bool


def identity(z):
    return z


def identity_derivative(z):
    return jnp.ones_like(z)


def relu(z):
    return jax.nn.relu(z)


def relu_derivative(z):
    return jnp.where(z > 0, 1.0, 0.0).astype(z.dtype)


def leaky_relu(z):
    return jnp.where(z >= 0, z, LEAKY_RELU_SLOPE * z)


def leaky_relu_derivative(z):
    return jnp.where(z >= 0, 1.0, LEAKY_RELU_SLOPE).astype(z.dtype)


def sigmoid(z):
    # jax.nn.sigmoid is lax.logistic: stable for large |z| (no exp overflow).
    return jax.nn.sigmoid(z)


def sigmoid_derivative(z):
    s = jax.nn.sigmoid(z)
    return s * (1 - s)


def tanh(z):
    return jnp.tanh(z)


def tanh_derivative(z):
    t = jnp.tanh(z)
    return 1 - t * t


def softplus(z):
    # log(1 + e^z) = logaddexp(z, 0): finite for any z.
    return jnp.logaddexp(z, 0.0)


def softplus_derivative(z):
    return jax.nn.sigmoid(z)


def gelu(z):
    return 0.5 * z * (1 + jnp.tanh(_GELU_C * (z + _GELU_K * z**3)))


def gelu_derivative(z):
    t = jnp.tanh(_GELU_C * (z + _GELU_K * z**3))
    return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_K * z * z)


def softmax(z):
    # z − logsumexp(z), exponentiated: finite for logits of any size.
    return jax.nn.softmax(z, axis=-1)


def softmax_derivative(z):
    """The Jacobian ∂a/∂z = diag(a) − a aᵀ of one vector z, shape (n, n)."""
    a = softmax(z)
    return jnp.diag(a) - jnp.outer(a, a)


def softmax_vjp(z, a, dL_da):
    """dL_dz = aᵀ-weighted centering: a ⊙ (g − ⟨a, g⟩); no (n, n) matrix."""
    del z
    return a * (dL_da - jnp.sum(a * dL_da, axis=-1, keepdims=True))


def _elementwise(name, f, df):
    return Activation(name, f, df, lambda z, a, dL_da: dL_da * df(z), True)


ACTIVATIONS: dict[str, Activation] = {
    "identity": _elementwise("identity", identity, identity_derivative),
    "relu": _elementwise("relu", relu, relu_derivative),
    "leaky_relu": _elementwise("leaky_relu", leaky_relu, leaky_relu_derivative),
    "sigmoid": _elementwise("sigmoid", sigmoid, sigmoid_derivative),
    "tanh": _elementwise("tanh", tanh, tanh_derivative),
    "softplus": _elementwise("softplus", softplus, softplus_derivative),
    "gelu": _elementwise("gelu", gelu, gelu_derivative),
    "softmax": Activation("softmax", softmax, softmax_derivative, softmax_vjp, False),
}


def get_activation(name: str) -> Activation:
    """Looks up an activation by name; a clear ValueError for unknown names."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; known activations: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]
