"""Fully connected networks as pure functions, with the notes' manual backprop.

Notation (the notes): layer ℓ = 1..L has W^ℓ of shape (m^ℓ, n^ℓ) = (inputs,
outputs) and W0^ℓ of shape (n^ℓ,);

    z^ℓ = W^ℓᵀ a^{ℓ−1} + W0^ℓ   (a row batch: A^{ℓ−1} @ W^ℓ + W0^ℓ),
    a^ℓ = f^ℓ(z^ℓ),  a^0 = x.

Backprop appends the chain rule's factors layer by layer from the loss:

    ∂L/∂z^L = ∂L/∂a^L · f^L'(z^L)              (loss and activation factors)
    ∂L/∂a^{ℓ−1} = W^ℓ ∂L/∂z^ℓ                   (link: ∂z^ℓ/∂a^{ℓ−1} = W^ℓ)
    ∂L/∂z^{ℓ−1} = ∂L/∂a^{ℓ−1} · f^{ℓ−1}'(z^{ℓ−1})
    ∂L/∂W^ℓ = a^{ℓ−1} (∂L/∂z^ℓ)ᵀ                (weight: ∂z^ℓ/∂W^ℓ = a^{ℓ−1})
    ∂L/∂W0^ℓ = ∂L/∂z^ℓ

No ``jax.grad``, ``jax.vjp`` or ``jax.jacobian`` is used on this path.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxbp.core import _checks
from jaxbp.core._activations import ACTIVATIONS, get_activation
from jaxbp.core._losses import get_loss
from jaxbp.core._dense import (  # noqa: F401  (the pure cores, re-exported)
    Dense, Trace, _backprop, _bias, _deltas, _forward_trace, _loss_value, _value_and_grad)
from jaxbp.core._network_private import (  # noqa: F401
    PrivateGradients, _per_example_grads)




def _init_scale(activation: str) -> float:
    # He for the relu family, LeCun (variance 1/m) otherwise.
    return 2.0 if activation in ("relu", "leaky_relu", "gelu") else 1.0


# ---------------------------------------------------------------- the network

@dataclasses.dataclass(frozen=True, init=False)
class Network(PrivateGradients):
    """A fully connected network: its static structure, hashable.

    Example:
      >>> import jax, jaxbp
      >>> net = jaxbp.Network(sizes=(4, 8, 3), activations=("tanh", "softmax"), loss="nll")
      >>> params = net.init(jax.random.key(0))
      >>> x, y = jax.numpy.ones(4), jax.nn.one_hot(1, 3)
      >>> grads = net.backprop(params, x, y)   # tuple of Dense, like params
      >>> grads[0].W.shape
      (4, 8)

    Attributes:
      sizes: (m^1, n^1, n^2, ..., n^L): input size, then each layer's output size.
      activations: one activation name per layer (see ``jaxbp.ACTIVATIONS``).
      loss_name: the loss's name (see ``jaxbp.LOSSES``); ``net.loss`` is the
        loss *function* of params, x, y.

    Value checks (NaN/inf in x or y, one-hot targets for ``nll``, labels in
    {0, 1} for ``binary_nll`` and {−1, +1} for ``hinge``) run when a method is
    called on concrete arrays and are skipped while tracing under
    ``jit``/``vmap``/``grad``; shape and dtype checks always run. Inputs and
    targets are cast to the parameters' dtype.
    """

    sizes: tuple[int, ...]
    activations: tuple[str, ...]
    loss_name: str

    def __init__(self, sizes: Sequence[int], activations: Sequence[str], loss: str):
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
            raise TypeError(f"sizes: expected a sequence of ints such as (4, 8, 3), got {sizes!r}")
        if len(sizes) < 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                     for s in sizes):
            raise ValueError(
                f"sizes: expected at least two positive ints (inputs, ..., outputs), got {sizes!r}"
            )
        if isinstance(activations, str):
            raise TypeError(
                f"activations: expected a sequence of names, one per layer, got the string "
                f"{activations!r}; write ({activations!r},)"
            )
        activations = tuple(activations)
        for name in activations:
            get_activation(name)
        if len(activations) != len(sizes) - 1:
            raise ValueError(
                f"activations: expected len(sizes) - 1 = {len(sizes) - 1} names (one per layer), "
                f"got {len(activations)}: {activations!r}"
            )
        spec = get_loss(loss)
        if spec.requires_activation and activations[-1] != spec.requires_activation:
            raise ValueError(
                f"loss {loss!r} needs a {spec.requires_activation!r} last activation, "
                f"got {activations[-1]!r}"
            )
        if spec.single_output and sizes[-1] != 1:
            raise ValueError(f"loss {loss!r} needs exactly one output unit, got sizes[-1]={sizes[-1]}")
        object.__setattr__(self, "sizes", tuple(int(s) for s in sizes))
        object.__setattr__(self, "activations", activations)
        object.__setattr__(self, "loss_name", loss)

    # -- structure
    @property
    def num_layers(self) -> int:
        """L, the number of layers."""
        return len(self.activations)

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        """((m^1, n^1), ..., (m^L, n^L)), the shapes of W^1..W^L."""
        return tuple(zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def _acts(self):
        return tuple(ACTIVATIONS[a] for a in self.activations)

    @property
    def _loss(self):
        return get_loss(self.loss_name)

    def init(self, key: jax.Array, *, dtype: Any = jnp.float32) -> tuple[Dense, ...]:
        """Random parameters: W^ℓ ~ N(0, s/m^ℓ) (s = 2 for relu-like, else 1), W0^ℓ = 0.

        Args:
          key: a PRNG key (``jax.random.key`` or ``jax.random.PRNGKey``).
          dtype: float32 (default) or float64 (needs ``jax_enable_x64``).

        Returns:
          A tuple of ``Dense``, one per layer.
        """
        dtype = _checks.check_float_dtype("dtype", dtype)
        keys = jax.random.split(key, self.num_layers)
        return tuple(
            Dense(jax.random.normal(k, (m, n), dtype) * jnp.sqrt(_init_scale(act) / m).astype(dtype),
                  jnp.zeros((n,), dtype))
            for k, (m, n), act in zip(keys, self.layer_shapes, self.activations)
        )

    # -- validation
    def _example(self, params, x, y=None, *, batched: bool):
        dtype = _checks.check_params(params, self.layer_shapes)
        xn, yn = ("X", "Y") if batched else ("x", "y")
        x = _checks.check_x(xn, x, self.sizes[0], batched=batched, dtype=dtype)
        if y is not None:
            y = _checks.check_y(yn, y, self.sizes[-1], self._loss, batched=batched,
                                batch_size=x.shape[0] if batched else None, dtype=dtype)
        return tuple(params), x, y

    # -- forward
    def forward(self, params, x: ArrayLike) -> jax.Array:
        """a^L for one input x of shape (m,) or a batch of shape (B, m)."""
        params, x, _ = self._example(params, x, batched=jnp.ndim(x) == 2)
        return _forward_trace(self, params, x).a[-1]

    def forward_trace(self, params, x: ArrayLike) -> Trace:
        """All z^ℓ and a^ℓ for x of shape (m,) or (B, m)."""
        params, x, _ = self._example(params, x, batched=jnp.ndim(x) == 2)
        return _forward_trace(self, params, x)

    def loss(self, params, x: ArrayLike, y: ArrayLike) -> jax.Array:
        """L(params; x, y) for one example, a scalar (fused stable forms where they apply)."""
        params, x, y = self._example(params, x, y, batched=False)
        return _loss_value(self, _forward_trace(self, params, x), y)

    def batch_loss(self, params, X: ArrayLike, Y: ArrayLike) -> jax.Array:
        """Mean loss over a batch X (B, m), Y (B, n^L)."""
        params, X, Y = self._example(params, X, Y, batched=True)
        return jnp.mean(_loss_value(self, _forward_trace(self, params, X), Y))

    # -- manual backprop
    def deltas(self, params, x: ArrayLike, y: ArrayLike) -> tuple:
        """(∂L/∂z^1, ..., ∂L/∂z^L) for one example (n^ℓ,) or a batch (B, n^ℓ)."""
        batched = jnp.ndim(x) == 2
        params, x, y = self._example(params, x, y, batched=batched)
        return _deltas(self, params, _forward_trace(self, params, x), y)

    def backprop(self, params, x: ArrayLike, y: ArrayLike) -> tuple[Dense, ...]:
        """One example's gradient by the notes' chain rule.

        ∂L/∂W^ℓ = a^{ℓ−1} (∂L/∂z^ℓ)ᵀ and ∂L/∂W0^ℓ = ∂L/∂z^ℓ, with ∂L/∂z^ℓ built
        from ∂L/∂a^L, f'(z), and the links W back from layer L.

        Args:
          params: tuple of ``Dense``.
          x: input, shape (m^1,).
          y: target, shape (n^L,) (() also accepted when n^L = 1).

        Returns:
          A tuple of ``Dense`` shaped like params.
        """
        params, x, y = self._example(params, x, y, batched=False)
        return _backprop(self, params, x, y)

    def value_and_grad(self, params, X: ArrayLike, Y: ArrayLike):
        """(mean loss, mean gradient) over a batch, in matrix form.

        δ^ℓ is a (B, n^ℓ) array; ∂L/∂W^ℓ = A^{ℓ−1}ᵀ δ^ℓ / B and ∂L/∂W0^ℓ = mean_b δ^ℓ.

        Args:
          X: inputs, shape (B, m^1), B ≥ 1.
          Y: targets, shape (B, n^L) ((B,) accepted when n^L = 1).
        """
        params, X, Y = self._example(params, X, Y, batched=True)
        return _value_and_grad(self, params, X, Y)

    def grad(self, params, X: ArrayLike, Y: ArrayLike) -> tuple[Dense, ...]:
        """Mean gradient over a batch; same numbers as vmap(backprop) then mean."""
        return self.value_and_grad(params, X, Y)[1]
