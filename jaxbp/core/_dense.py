"""The dense net's pure cores: parameters, the forward trace and the notes' chain.

Split from ``_network`` so that the private-gradient functions (``_network_private``)
and the ``Network`` class both build on them without an import circle. ``net`` is
the static, hashable ``Network`` (annotated by name only: this module must not
import it); shapes may be one example (n,) or a batch (B, n).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp


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

def _forward_trace(net, params, x) -> Trace:
    a = x
    zs, as_ = [], [x]
    for layer, act in zip(params, net._acts):
        z = a @ layer.W + _bias(layer.W0, a.ndim)  # (B, m) @ (m, n) -> (B, n)
        a = act.f(z)
        zs.append(z)
        as_.append(a)
    return Trace(tuple(zs), tuple(as_))


def _loss_value(net, trace: Trace, y) -> jax.Array:
    loss = net._loss
    if loss.value_from_z is not None:
        return loss.value_from_z(trace.z[-1], y)
    return loss.value(trace.a[-1], y)


def _deltas(net, params, trace: Trace, y, scale=None) -> tuple:
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

