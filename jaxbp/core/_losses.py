"""Losses, each the value beside its hand-written ∂L/∂a^L, in one table.

One example: ``a`` and ``y`` have shape (n,) and the loss is a scalar; with a
leading batch axis, (B, n) -> (B,). The notes' loss factor is ∂L/∂a^L.

Where the notes fuse the loss with the last activation, the table also holds the
fused, numerically stable pair computed from the logits z^L:

* ``nll`` after ``softmax``: L = Σ_i y_i (logsumexp(z) − z_i),
  ∂L/∂z^L = (Σ_i y_i)·softmax(z) − y, which is a − y for one-hot y.
* ``binary_nll`` after ``sigmoid``: L = Σ_i softplus(z_i) − y_i z_i,
  ∂L/∂z^L = sigmoid(z) − y = a − y.

``Network.loss`` and ``Network.backprop`` use the fused forms, so logits of
±1e4 give finite losses and gradients.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp


class Loss(NamedTuple):
    """A loss L(a^L, y) and its hand-written derivative ∂L/∂a^L.

    Attributes:
      name: the table key.
      value: (a, y) -> L, shapes (..., n), (..., n) -> (...).
      dL_da: (a, y) -> ∂L/∂a^L, shape (..., n).
      requires_activation: the last activation the loss needs, or None.
      single_output: whether the loss needs exactly one output unit.
      value_from_z: fused stable L(z^L, y), or None.
      dL_dz: fused stable ∂L/∂z^L (z^L, y), or None.
      targets: a description of valid targets, for error messages.
    """

    name: str
    value: Callable[[jax.Array, jax.Array], jax.Array]
    dL_da: Callable[[jax.Array, jax.Array], jax.Array]
    requires_activation: Optional[str]
    single_output: bool
    value_from_z: Optional[Callable[[jax.Array, jax.Array], jax.Array]]
    dL_dz: Optional[Callable[[jax.Array, jax.Array], jax.Array]]
    targets: str


def squared(a, y):
    """L = Σ (a − y)²."""
    return jnp.sum((a - y) ** 2, axis=-1)


def squared_derivative(a, y):
    """∂L/∂a = 2 (a − y)."""
    return 2 * (a - y)


def hinge(a, y):
    """L = max(0, 1 − y·a), y in {−1, +1}, one output."""
    # jax.nn.relu has derivative 0 at 0, so at the margin y·a = 1 jax.grad and
    # hinge_derivative both give 0.
    return jnp.sum(jax.nn.relu(1 - y * a), axis=-1)


def hinge_derivative(a, y):
    """∂L/∂a = −y where y·a < 1, else 0."""
    return jnp.where(1 - y * a > 0, -y, jnp.zeros_like(y))


def binary_nll(a, y):
    """L = −Σ y log a + (1 − y) log(1 − a), a = sigmoid(z), y in {0, 1}."""
    return -jnp.sum(y * jnp.log(a) + (1 - y) * jnp.log1p(-a), axis=-1)


def binary_nll_derivative(a, y):
    """∂L/∂a = (a − y) / (a (1 − a))."""
    return (a - y) / (a * (1 - a))


def binary_nll_from_z(z, y):
    """Stable L from logits: Σ softplus(z) − y z."""
    return jnp.sum(jnp.logaddexp(z, 0.0) - y * z, axis=-1)


def binary_nll_dL_dz(z, y):
    """Fused ∂L/∂z^L = sigmoid(z) − y."""
    return jax.nn.sigmoid(z) - y


def nll(a, y):
    """L = −Σ y log a, a = softmax(z), y one-hot."""
    return -jnp.sum(y * jnp.log(a), axis=-1)


def nll_derivative(a, y):
    """∂L/∂a = −y / a."""
    return -y / a


def nll_from_z(z, y):
    """Stable L from logits: Σ y (logsumexp(z) − z)."""
    lse = jax.nn.logsumexp(z, axis=-1, keepdims=True)
    return jnp.sum(y * (lse - z), axis=-1)


def nll_dL_dz(z, y):
    """Fused ∂L/∂z^L = (Σ y)·softmax(z) − y (= a − y for one-hot y)."""
    return jnp.sum(y, axis=-1, keepdims=True) * jax.nn.softmax(z, axis=-1) - y


LOSSES: dict[str, Loss] = {
    "squared": Loss("squared", squared, squared_derivative, None, False, None, None,
                    "real targets of the output's shape"),
    "hinge": Loss("hinge", hinge, hinge_derivative, None, True, None, None,
                  "targets in {-1, +1}"),
    "binary_nll": Loss("binary_nll", binary_nll, binary_nll_derivative, "sigmoid", False,
                       binary_nll_from_z, binary_nll_dL_dz, "targets in {0, 1}"),
    "nll": Loss("nll", nll, nll_derivative, "softmax", False, nll_from_z, nll_dL_dz,
                "one-hot targets"),
}


def get_loss(name: str) -> Loss:
    """Looks up a loss by name; a clear ValueError for unknown names."""
    if not isinstance(name, str) or name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(LOSSES)}")
    return LOSSES[name]
