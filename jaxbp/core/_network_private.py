"""Private (DP-SGD) gradients of the dense net: per-example, ghost norms, clipped, noisy.

The jitted cores and the ``Network`` methods that call them; ``Network`` inherits
them from ``PrivateGradients``. Per-example quantities never build a (B, m, n)
tensor unless asked (``per_example_grads``): norms use the ghost identity
‖∂L/∂W^ℓ‖² = ‖a^{ℓ−1}‖²·‖∂L/∂z^ℓ‖² (``jaxbp.core._ghost``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxbp.core import _ghost
from jaxbp.core._dense import Dense, _deltas, _forward_trace, _loss_value


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


class PrivateGradients:
    """The private-gradient methods of ``Network`` (a mixin: it holds no state)."""

    def per_example_grads(self, params, X: ArrayLike, Y: ArrayLike) -> tuple[Dense, ...]:
        """Each example's gradient: W leaves (B, m, n), W0 leaves (B, n)."""
        params, X, Y = self._example(params, X, Y, batched=True)
        return _per_example_grads(self, params, X, Y)

    def per_example_grad_norms(self, params, X: ArrayLike, Y: ArrayLike, *,
                               per_layer: bool = False) -> jax.Array:
        """Each example's gradient norm by the ghost-norm identity, no (B, m, n) tensor.

        ‖∂L/∂W^ℓ‖² = ‖a^{ℓ−1}‖²·‖∂L/∂z^ℓ‖² and ‖∂L/∂W0^ℓ‖² = ‖∂L/∂z^ℓ‖² per example
        (see ``jaxbp.core._ghost``); equals the norms of ``per_example_grads``.

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
        per-example gradients (see ``jaxbp.core._ghost``).

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
