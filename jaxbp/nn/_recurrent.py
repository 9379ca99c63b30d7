"""Recurrent modules' shared parts, and RNN: backprop through time by one reverse scan.

Every recurrent module here maps X (B, T, D) to all its hidden states (B, T, H),
from h_{-1} = 0 (and c_{-1} = 0 for the LSTM). Its pre-activations at step t are
an input part and a hidden part, k gate blocks side by side on the last axis:

    A_t = x_t Wx + b + h_{t−1} Wh        (B, D) @ (D, kH) + (B, H) @ (H, kH) -> (B, kH)

The forward computes X Wx + b for every step in one matmul before its scan; only
h_{t−1} Wh is inside. The backward is one reverse ``jax.lax.scan`` carrying ∂L/∂h
(and ∂L/∂c) from t to t−1: at step t it adds ∂L/∂Y_t to the carried gradient and
emits ∂L/∂A_t. Everything that does not recur leaves the scan: with ∂L/∂A (B, T, kH)
collected over all steps (split, for the GRU, into the input part dAx and the
hidden part dAh),

    ∂L/∂Wx = Σ_{b,t} x_t ⊗ dAx_t         (D, B·T) @ (B·T, kH)
    ∂L/∂Wh = Σ_{b,t} h_{t−1} ⊗ dAh_t     (H, B·T) @ (B·T, kH)
    ∂L/∂b  = Σ_{b,t} dAx_t               (kH,)
    ∂L/∂X  = dAx Wxᵀ                     (B, T, kH) @ (kH, D)

Per example (private gradients): example b's weight gradients are X_bᵀ dAx_b and
H_prev,bᵀ dAh_b, sums of T outer products, so their squared norms come from
``outer_sq_norms`` with its written rule: the ghost form ⟨X_b X_bᵀ, dAx_b dAx_bᵀ⟩
over two (T, T) Grams when 2T² < D·kH (and 2T² < H·kH for Wh), else the (D, kH)
gradient itself; the biases add ‖Σ_t dAx_b,t‖². The clipped sum Σ_b c_b g_b is the
parameter part above with the rows of dAx, dAh scaled by c: one scan, not two.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.core._activations import ACTIVATIONS, get_activation
from jaxbp.core._checks import check_float_dtype
from jaxbp.nn._module import Module, bias, check_rank
from jaxbp.nn._per_example import PerExample, outer_sq_norms, row_sq_norms, scale_rows


class Recurrent(NamedTuple):
    """An RNN's or LSTM's parameters: k gate blocks of width H side by side.

    Attributes:
      Wx: (D, kH), the input weights.
      Wh: (H, kH), the hidden (recurrent) weights.
      b: (kH,), the bias.
    """

    Wx: jax.Array
    Wh: jax.Array
    b: jax.Array


class GRUParams(NamedTuple):
    """A GRU's parameters: blocks r, z, n, and the hidden bias of n (PyTorch's form).

    Attributes:
      Wx: (D, 3H); Wh: (H, 3H); b: (3H,), the input-side biases of r, z, n.
      b_hn: (H,), the bias added to h_{t−1} Wh_n before the reset gate multiplies it.
    """

    Wx: jax.Array
    Wh: jax.Array
    b: jax.Array
    b_hn: jax.Array


# ---------------------------------------------------------------- shared helpers

def check_hidden(family: str, hidden) -> int:
    """hidden as a positive int, or a ValueError naming the module."""
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"{family}: hidden must be a positive int, got {hidden!r}")
    return hidden


def init_weights(name: str, key, in_shape, dtype, hidden: int, k: int):
    """(Wx (D, kH) ~ N(0, 1/D), Wh (H, kH) ~ N(0, 1/H), b = 0, out_shape (T, H))."""
    dtype = check_float_dtype(f"{name}: dtype", dtype)
    in_shape = tuple(int(s) for s in in_shape)
    if len(in_shape) == 1:
        raise ValueError(f"{name}: expects one example of shape (T, D) (rank 2, no batch axis), "
                         f"got in_shape {in_shape}; token ids (T,) need an nn.Embedding(V, D) "
                         f"before it")
    T, D = check_rank(name, in_shape, 2, "(T, D)")
    kx, kh = jax.random.split(key)
    Wx = jax.random.normal(kx, (D, k * hidden), dtype) * jnp.asarray(1.0 / D, dtype) ** 0.5
    Wh = jax.random.normal(kh, (hidden, k * hidden), dtype) * jnp.asarray(1.0 / hidden, dtype) ** 0.5
    return Wx, Wh, jnp.zeros((k * hidden,), dtype), (T, hidden)


def check_input(name: str, X, Wx) -> None:
    """X must be floats (B, T, D) with D the rows of Wx; errors name the module and both shapes."""
    D = Wx.shape[0]
    if not jnp.issubdtype(X.dtype, jnp.floating):
        raise TypeError(f"{name}: expects float inputs of shape (B, T, {D}), got {X.dtype} of "
                        f"shape {tuple(X.shape)}; integer token ids need an nn.Embedding(V, {D}) "
                        f"before it")
    if X.ndim != 3 or X.shape[-1] != D:
        raise ValueError(f"{name}: expects X of shape (B, T, {D}) (batch, time, features), got "
                         f"{tuple(X.shape)}" + ("; a (B, D) batch has no time axis: use shape "
                                                "(B, 1, D) for one step" if X.ndim == 2 else ""))


def time_major(x):
    """(B, T, ...) <-> (T, B, ...): the scans run over the leading axis."""
    return jnp.swapaxes(x, 0, 1)


def previous(H):
    """h_{t−1} for every t: H (B, T, H) shifted one step later, h_{−1} = 0 first."""
    return jnp.concatenate([jnp.zeros_like(H[:, :1]), H[:, :-1]], axis=1)


def param_grads(params, X, H_prev, dAx, dAh):
    """The gradients that do not recur, out of the scan (see the module docstring)."""
    B, T, D = X.shape
    n = H_prev.shape[-1]
    dWx = X.reshape(B * T, D).T @ dAx.reshape(B * T, -1)  # (D, BT) @ (BT, kH) -> (D, kH)
    dWh = H_prev.reshape(B * T, n).T @ dAh.reshape(B * T, -1)  # (H, BT) @ (BT, kH) -> (H, kH)
    db = jnp.sum(dAx, axis=(0, 1))  # (kH,)
    if isinstance(params, GRUParams):
        return GRUParams(dWx, dWh, db, jnp.sum(dAh[..., 2 * n:], axis=(0, 1)))
    return Recurrent(dWx, dWh, db)


def sq_norms(params, X, H_prev, dAx, dAh):
    """‖∂ℓ_b/∂params‖² (B,): ghost or materialized per weight (``outer_sq_norms``), plus biases."""
    sq = (outer_sq_norms(X, dAx) + outer_sq_norms(H_prev, dAh)
          + row_sq_norms(jnp.sum(dAx, axis=1)))
    if isinstance(params, GRUParams):
        sq = sq + row_sq_norms(jnp.sum(dAh[..., 2 * H_prev.shape[-1]:], axis=1))
    return sq


def recurrent_module(name, init, forward, cotangents, gates) -> Module:
    """A Module from a forward and its BPTT ``cotangents(params, res, dY) -> (dAx, dAh, dX)``.

    ``res`` must have fields X (B, T, D) and H (B, T, H); time_axis is 1.
    """
    def backward(params, res, dY):
        dAx, dAh, dX = cotangents(params, res, dY)
        return param_grads(params, res.X, previous(res.H), dAx, dAh), dX

    def per_example(params, res, dY):
        dAx, dAh, dX = cotangents(params, res, dY)
        H_prev = previous(res.H)
        return PerExample(dX, sq_norms(params, res.X, H_prev, dAx, dAh),
                          lambda c: param_grads(params, res.X, H_prev, scale_rows(c, dAx),
                                                scale_rows(c, dAh)))

    return Module(name, init, forward, backward, per_example, time_axis=1, gates=gates)


# ---------------------------------------------------------------- RNN

class RNNResiduals(NamedTuple):
    """X (B, T, D), Z (B, T, H) the pre-activations, H (B, T, H) the hidden states."""

    X: jax.Array
    Z: jax.Array
    H: jax.Array


def RNN(hidden: int, activation: str = "tanh") -> Module:
    """A vanilla (Elman) RNN: h_t = f(x_t Wx + h_{t−1} Wh + b), all h_t out: (B, T, D) -> (B, T, H).

    Backward through time (CS231n's rnn_step_backward, looped by a reverse scan). With
    dh_T = 0 carried in, at t = T−1 down to 0:

        dh_t  = ∂L/∂Y_t + dh_next            (B, H): the output's and the carried gradient
        dA_t  = dh_t ⊙ f'(z_t)               (B, H)
        dh_next ← dA_t Whᵀ                   (B, H) @ (H, H): carried to step t−1

    then ∂L/∂Wx, ∂L/∂Wh, ∂L/∂b and ∂L/∂X from dA out of the scan (module
    ``jaxbp.nn._recurrent``). Dropping the carried dh_next is the classic bug: the
    last step stays right, every earlier one goes wrong.

    Args:
      hidden: H, the state width.
      activation: an elementwise key of ``jaxbp.ACTIVATIONS`` ("tanh", "relu", ...).

    Returns:
      A ``Module`` (time_axis 1, no gates); params ``Recurrent(Wx (D, H), Wh (H, H), b (H,))``,
      Wx ~ N(0, 1/D), Wh ~ N(0, 1/H), b = 0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import nn
      >>> rnn = nn.RNN(8)
      >>> params, out_shape = rnn.init(jax.random.key(0), (5, 3), jnp.float32)
      >>> H, residuals = rnn.forward(params, jnp.ones((2, 5, 3)), None)
      >>> dparams, dX = rnn.backward(params, residuals, jnp.ones_like(H))
      >>> out_shape, dparams.Wh.shape, dX.shape
      ((5, 8), (8, 8), (2, 5, 3))
    """
    hidden = check_hidden("RNN", hidden)
    act = get_activation(activation)
    if not act.elementwise:
        raise ValueError(f"RNN: activation must be elementwise, one of "
                         f"{[k for k, a in ACTIVATIONS.items() if a.elementwise]}, got "
                         f"{activation!r}")
    return _rnn(hidden, activation)


@functools.lru_cache(maxsize=None)
def _rnn(hidden: int, activation: str) -> Module:
    act = get_activation(activation)
    name = f"RNN({hidden})" if activation == "tanh" else f"RNN({hidden}, {activation!r})"

    def init(key, in_shape, dtype):
        Wx, Wh, b, out_shape = init_weights(name, key, in_shape, dtype, hidden, 1)
        return Recurrent(Wx, Wh, b), out_shape

    def forward(params, X, key):
        del key
        check_input(name, X, params.Wx)
        Ax = X @ params.Wx + bias(params.b, 3)  # every step's input part: (B, T, D) @ (D, H)

        def step(h, ax):
            z = ax + h @ params.Wh  # (B, H) @ (H, H)
            h = act.f(z)
            return h, (z, h)

        h0 = jnp.zeros((X.shape[0], hidden), Ax.dtype)
        _, (Z, H) = jax.lax.scan(step, h0, time_major(Ax))
        H = time_major(H)
        return H, RNNResiduals(X, time_major(Z), H)

    def cotangents(params, res, dY):
        def step(dh_next, inputs):
            dy, z, h = inputs
            dh = dy + dh_next  # the output's gradient plus the one carried from t+1
            dA = act.vjp(z, h, dh)  # through f: dh ⊙ f'(z)
            return dA @ params.Wh.T, dA  # carried to t−1: (B, H) @ (H, H)

        dh0 = jnp.zeros((dY.shape[0], hidden), dY.dtype)
        _, dA = jax.lax.scan(step, dh0, (time_major(dY), time_major(res.Z), time_major(res.H)),
                             reverse=True)
        dA = time_major(dA)
        return dA, dA, dA @ params.Wx.T  # (B, T, H) @ (H, D)

    return recurrent_module(name, init, forward, cotangents, ())
