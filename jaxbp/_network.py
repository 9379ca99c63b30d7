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
import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxbp import _checks, _ghost
from jaxbp._activations import ACTIVATIONS, get_activation
from jaxbp._losses import get_loss


class Dense(NamedTuple):
    """One layer's parameters: z = Wᵀa + W0.

    Attributes:
      W: weights, shape (m, n) = (inputs, outputs).
      W0: biases, shape (n,).
    """

    W: jax.Array
    W0: jax.Array


class Trace(NamedTuple):
    """The forward pass's intermediate values.

    Attributes:
      z: (z^1, ..., z^L), pre-activations, shapes (..., n^ℓ).
      a: (a^0, ..., a^L), activations with a^0 = x, shapes (..., n^ℓ).
    """

    z: tuple
    a: tuple


def _bias(W0: jax.Array, ndim: int) -> jax.Array:
    # Explicit rank so that jax_numpy_rank_promotion="raise" holds.
    return W0 if ndim == 1 else W0.reshape((1,) * (ndim - 1) + W0.shape)


# ---------------------------------------------------------------- pure cores
# `net` is static (hashable); shapes may be one example (n,) or a batch (B, n).

def _forward_trace(net: "Network", params, x) -> Trace:
    a = x
    zs, as_ = [], [x]
    for layer, act in zip(params, net._acts):
        z = a @ layer.W + _bias(layer.W0, a.ndim)  # (B, m) @ (m, n) -> (B, n)
        a = act.f(z)
        zs.append(z)
        as_.append(a)
    return Trace(tuple(zs), tuple(as_))


def _loss_value(net: "Network", trace: Trace, y) -> jax.Array:
    loss = net._loss
    if loss.value_from_z is not None:
        return loss.value_from_z(trace.z[-1], y)
    return loss.value(trace.a[-1], y)


def _deltas(net: "Network", params, trace: Trace, y, scale=None) -> tuple:
    """(∂L/∂z^1, ..., ∂L/∂z^L) by the notes' chain, from the loss backwards.

    Each ∂L/∂z^ℓ is linear in ∂L/∂z^L, so an optional ``scale`` (a scalar, e.g.
    1/B for a mean) multiplies ∂L/∂z^L once, at its small (B, n^L) size, instead
    of every (m, n) weight gradient afterwards.
    """
    L = net.num_layers
    loss, acts = net._loss, net._acts
    zL, aL = trace.z[L - 1], trace.a[L]
    if loss.dL_dz is not None:  # fused, stable: softmax+nll, sigmoid+binary_nll
        dL_dz = loss.dL_dz(zL, y)
    else:  # ∂L/∂a^L times ∂a^L/∂z^L
        dL_dz = acts[L - 1].vjp(zL, aL, loss.dL_da(aL, y))
    if scale is not None:
        dL_dz = dL_dz * scale
    deltas = [dL_dz]
    for l in range(L, 1, -1):  # from layer l to layer l-1
        dL_da = dL_dz @ params[l - 1].W.T  # link W^l: (B, n^l) @ (n^l, m^l) -> (B, m^l)
        dL_dz = acts[l - 2].vjp(trace.z[l - 2], trace.a[l - 1], dL_da)  # f^{l-1}'(z^{l-1})
        deltas.append(dL_dz)
    return tuple(reversed(deltas))


@functools.partial(jax.jit, static_argnums=0)
def _backprop(net, params, x, y):
    trace = _forward_trace(net, params, x)
    deltas = _deltas(net, params, trace, y)
    # weight factor a^{ℓ-1}: ∂L/∂W^ℓ = a^{ℓ-1} (∂L/∂z^ℓ)ᵀ, shape (m, n)
    return tuple(Dense(jnp.outer(a_prev, d), d) for a_prev, d in zip(trace.a[:-1], deltas))


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad(net, params, X, Y):
    B = X.shape[0]
    trace = _forward_trace(net, params, X)
    # The mean's 1/B scales δ^L (B, n^L), not each (m, n) product: no extra pass.
    deltas = _deltas(net, params, trace, Y, scale=1.0 / B)  # each (B, n^ℓ), divided by B
    grads = tuple(
        Dense(A_prev.T @ d, jnp.sum(d, axis=0))  # (m, B) @ (B, n) -> (m, n)
        for A_prev, d in zip(trace.a[:-1], deltas)
    )
    return jnp.mean(_loss_value(net, trace, Y)), grads


@functools.partial(jax.jit, static_argnums=0)
def _per_example_grads(net, params, X, Y):
    trace = _forward_trace(net, params, X)
    deltas = _deltas(net, params, trace, Y)
    return tuple(
        Dense(jnp.einsum("bm,bn->bmn", A_prev, d), d)  # (B, m, n)
        for A_prev, d in zip(trace.a[:-1], deltas)
    )


@functools.partial(jax.jit, static_argnums=0, static_argnames="per_layer")
def _per_example_grad_norms(net, params, X, Y, *, per_layer: bool = False):
    trace = _forward_trace(net, params, X)
    sq = _ghost.layer_sq_norms(trace.a[:-1], _deltas(net, params, trace, Y))  # (B, L)
    return jnp.sqrt(sq) if per_layer else jnp.sqrt(jnp.sum(sq, axis=-1))


def _clipped_sum(net, params, X, Y, max_norm, weight):
    """(losses (B,), Σ_b weight_b scale_b g_b per layer), scale_b = C / max(‖g_b‖, C)."""
    trace = _forward_trace(net, params, X)
    deltas = _deltas(net, params, trace, Y)  # each (B, n^ℓ)
    norms = jnp.sqrt(jnp.sum(_ghost.layer_sq_norms(trace.a[:-1], deltas), axis=-1))  # (B,)
    weight = _ghost.clip_scale(norms, max_norm) * weight
    return _loss_value(net, trace, Y), tuple(
        Dense(*pair) for pair in _ghost.clipped_layers(trace.a[:-1], deltas, weight))


@functools.partial(jax.jit, static_argnums=0)
def _clipped_grad(net, params, X, Y, max_norm):
    B = X.shape[0]
    return _clipped_sum(net, params, X, Y, max_norm, jnp.full((B,), 1.0 / B, X.dtype))[1]


@functools.partial(jax.jit, static_argnums=0)
def _private_value_and_grad(net, params, X, Y, max_norm, noise_multiplier, key, weight,
                            denominator):
    losses, clipped_sum = _clipped_sum(net, params, X, Y, max_norm, weight)
    loss = jnp.sum(losses * weight) / jnp.maximum(jnp.sum(weight), 1)  # over real examples
    return loss, _ghost.noisy_mean(clipped_sum, key, max_norm=max_norm,
                                   noise_multiplier=noise_multiplier, denominator=denominator)


def _init_scale(activation: str) -> float:
    # He for the relu family, LeCun (variance 1/m) otherwise.
    return 2.0 if activation in ("relu", "leaky_relu", "gelu") else 1.0


# ---------------------------------------------------------------- the network

@dataclasses.dataclass(frozen=True, init=False)
class Network:
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

    def per_example_grads(self, params, X: ArrayLike, Y: ArrayLike) -> tuple[Dense, ...]:
        """Each example's gradient: W leaves (B, m, n), W0 leaves (B, n)."""
        params, X, Y = self._example(params, X, Y, batched=True)
        return _per_example_grads(self, params, X, Y)

    def per_example_grad_norms(self, params, X: ArrayLike, Y: ArrayLike, *,
                               per_layer: bool = False) -> jax.Array:
        """Each example's gradient norm by the ghost-norm identity, no (B, m, n) tensor.

        ‖∂L/∂W^ℓ‖² = ‖a^{ℓ−1}‖²·‖∂L/∂z^ℓ‖² and ‖∂L/∂W0^ℓ‖² = ‖∂L/∂z^ℓ‖² per example
        (see ``jaxbp._ghost``); equals the norms of ``per_example_grads``.

        Args:
          params: tuple of ``Dense``.
          X: inputs, shape (B, m^1).
          Y: targets, shape (B, n^L) ((B,) accepted when n^L = 1).
          per_layer: if True, one norm per layer (W^ℓ and W0^ℓ together).

        Returns:
          Shape (B,): the L2 norm of each example's whole gradient; with
          ``per_layer=True`` shape (B, L), whose rows have those norms as their
          L2 norms.

        Example:
          >>> import jax, jaxbp
          >>> net = jaxbp.Network(sizes=(4, 8, 3), activations=("tanh", "softmax"), loss="nll")
          >>> X, Y = jax.numpy.ones((5, 4)), jax.nn.one_hot(jax.numpy.arange(5) % 3, 3)
          >>> net.per_example_grad_norms(net.init(jax.random.key(0)), X, Y).shape
          (5,)
        """
        params, X, Y = self._example(params, X, Y, batched=True)
        return _per_example_grad_norms(self, params, X, Y, per_layer=bool(per_layer))

    def clipped_grad(self, params, X: ArrayLike, Y: ArrayLike, max_norm) -> tuple[Dense, ...]:
        """Mean of per-example gradients each clipped to norm ≤ max_norm (DP-SGD, no noise).

        scale_b = max_norm / max(‖g_b‖, max_norm) and the result is
        (1/B) Σ_b scale_b g_b, computed as A^{ℓ−1}ᵀ (scale·δ^ℓ) / B without
        per-example gradients (see ``jaxbp._ghost``).

        Args:
          params: tuple of ``Dense``.
          X: inputs, shape (B, m^1).
          Y: targets, shape (B, n^L) ((B,) accepted when n^L = 1).
          max_norm: the clipping norm C, a finite number > 0 (may be traced).

        Returns:
          A tuple of ``Dense`` shaped like params.
        """
        params, X, Y = self._example(params, X, Y, batched=True)
        return _clipped_grad(self, params, X, Y, _ghost.check_max_norm(max_norm, X.dtype))

    def private_grad(self, params, X: ArrayLike, Y: ArrayLike, *, max_norm, noise_multiplier,
                     key: jax.Array, mask=None, batch_size=None) -> tuple[Dense, ...]:
        """The DP-SGD gradient: clipped sum plus N(0, (σ·C)²) on every entry, over the batch size.

        (Σ_b m_b scale_b g_b + N(0, (noise_multiplier · max_norm)² I)) / D, with scale_b as in
        ``clipped_grad``, m_b = mask (all ones by default) and D = batch_size (default B):
        without a mask, the clipped mean plus noise of standard deviation
        noise_multiplier · max_norm / B on every entry (Abadi et al. 2016).

        Args:
          params: tuple of ``Dense``.
          X: inputs, shape (B, m^1).
          Y: targets, shape (B, n^L) ((B,) accepted when n^L = 1).
          max_norm: the clipping norm C > 0.
          noise_multiplier: σ ≥ 0 (σ = 0: ``clipped_grad``, up to the mask and D).
          key: PRNG key for the noise.
          mask: optional (B,) booleans, false for padding rows of a batch padded to a
            fixed size (Poisson sampling); padding rows contribute nothing.
          batch_size: D, the divisor; default B. Under Poisson sampling with rate q from
            N examples, pass the expected batch size q·N.

        Returns:
          A tuple of ``Dense`` shaped like params.
        """
        return self._private_value_and_grad(params, X, Y, max_norm=max_norm,
                                            noise_multiplier=noise_multiplier, key=key,
                                            mask=mask, batch_size=batch_size)[1]

    def _private_value_and_grad(self, params, X, Y, *, max_norm, noise_multiplier, key,
                                mask=None, batch_size=None):
        """(mean loss over the real examples, ``private_grad``): for ``jaxbp.make_step``."""
        params, X, Y = self._example(params, X, Y, batched=True)
        max_norm = _ghost.check_max_norm(max_norm, X.dtype)
        _ghost.check_noise_multiplier(noise_multiplier)
        _ghost.check_key(key)
        weight = _ghost.example_weights(mask, X.shape[0], X.dtype)
        denominator = X.shape[0] if batch_size is None else batch_size
        return _private_value_and_grad(self, params, X, Y, max_norm, noise_multiplier, key,
                                       weight, denominator)
