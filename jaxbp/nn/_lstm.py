"""LSTM: gates i, f, o, g (CS231n's order), backprop through time carrying dh and dc."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.core._activations import sigmoid
from jaxbp.nn._module import Module, bias
from jaxbp.nn._recurrent import (Recurrent, check_hidden, check_input, init_weights,
                                 recurrent_module, time_major)

LSTM_GATES = ("i", "f", "o", "g")


class LSTMResiduals(NamedTuple):
    """What the backward needs: X (B, T, D), H (B, T, H); time-major (the backward scan's
    order): C_prev = c_{t−1} and tanh_C = tanh(c_t) (T, B, H), gates (T, B, 4H) = [i f o g]."""

    X: jax.Array
    H: jax.Array
    C_prev: jax.Array
    tanh_C: jax.Array
    gates: jax.Array


def LSTM(hidden: int) -> Module:
    """Long short-term memory, all hidden states out: (B, T, D) -> (B, T, H).

    Forward at step t (gate blocks side by side in the order i, f, o, g, as in CS231n):

        A_t = x_t Wx + h_{t−1} Wh + b                   (B, 4H) = [A_i A_f A_o A_g]
        i = σ(A_i),  f = σ(A_f),  o = σ(A_o),  g = tanh(A_g)
        c_t = f ⊙ c_{t−1} + i ⊙ g,    h_t = o ⊙ tanh(c_t)        h_{−1} = c_{−1} = 0

    Backward through time: one reverse scan carrying (dh_next, dc_next), both 0 after
    the last step. At step t:

        dh   = ∂L/∂Y_t + dh_next                         the output's and the carried
        do   = dh ⊙ tanh(c_t)
        dc   = dc_next + dh ⊙ o ⊙ (1 − tanh²(c_t))       the cell's: carried plus via h_t
        di   = dc ⊙ g,   df = dc ⊙ c_{t−1},   dg = dc ⊙ i
        dA_t = [di ⊙ i(1−i), df ⊙ f(1−f), do ⊙ o(1−o), dg ⊙ (1−g²)]      (B, 4H)
        dh_next ← dA_t Whᵀ,   dc_next ← dc ⊙ f           carried to step t−1

    and ∂L/∂Wx, ∂L/∂Wh, ∂L/∂b, ∂L/∂X from dA out of the scan (``jaxbp.nn._recurrent``).
    The classic mistakes: dh_next or dc_next not added (right at t = T−1 only), the
    forget gate's df or dc ⊙ f left out, two gate blocks of dA swapped.

    Args:
      hidden: H, the state width.

    Returns:
      A ``Module`` with time_axis 1 and gates ("i", "f", "o", "g"); params
      ``Recurrent(Wx (D, 4H), Wh (H, 4H), b (4H,))``, Wx ~ N(0, 1/D), Wh ~ N(0, 1/H), b = 0
      except the forget gate's block, 1 (so the cell starts out remembering).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import nn
      >>> lstm = nn.LSTM(8)
      >>> params, out_shape = lstm.init(jax.random.key(0), (5, 3), jnp.float32)
      >>> H, residuals = lstm.forward(params, jnp.ones((2, 5, 3)), None)
      >>> dparams, dX = lstm.backward(params, residuals, jnp.ones_like(H))
      >>> out_shape, dparams.Wx.shape, lstm.gates
      ((5, 8), (3, 32), ('i', 'f', 'o', 'g'))
    """
    return _lstm(check_hidden("LSTM", hidden))


@functools.lru_cache(maxsize=None)
def _lstm(n: int) -> Module:
    name = f"LSTM({n})"

    def init(key, in_shape, dtype):
        Wx, Wh, b, out_shape = init_weights(name, key, in_shape, dtype, n, 4)
        return Recurrent(Wx, Wh, b.at[n:2 * n].set(1)), out_shape

    def forward(params, X, key):
        del key
        check_input(name, X, params.Wx)
        Ax = X @ params.Wx + bias(params.b, 3)  # every step's input part: (B, T, D) @ (D, 4H)

        def step(carry, ax):
            h, c = carry
            A = ax + h @ params.Wh  # (B, H) @ (H, 4H) -> (B, 4H)
            ifo, g = sigmoid(A[:, :3 * n]), jnp.tanh(A[:, 3 * n:])
            i, f, o = ifo[:, :n], ifo[:, n:2 * n], ifo[:, 2 * n:]
            c_prev, c = c, f * c + i * g
            tanh_c = jnp.tanh(c)
            h = o * tanh_c
            return (h, c), (h, c_prev, tanh_c, jnp.concatenate([ifo, g], axis=-1))

        zeros = jnp.zeros((X.shape[0], n), Ax.dtype)
        _, (H, C_prev, tanh_C, gates) = jax.lax.scan(step, (zeros, zeros), time_major(Ax))
        H = time_major(H)
        # The backward's scan reads these time-major: kept so, no transposes either way.
        return H, LSTMResiduals(X, H, C_prev, tanh_C, gates)

    def cotangents(params, res, dY):
        def step(carry, inputs):
            dh_next, dc_next = carry
            dy, c_prev, tanh_c, gates = inputs
            i, f, o, g = gates[:, :n], gates[:, n:2 * n], gates[:, 2 * n:3 * n], gates[:, 3 * n:]
            dh = dy + dh_next
            do = dh * tanh_c
            dc = dc_next + dh * o * (1 - tanh_c * tanh_c)
            di, df, dg = dc * g, dc * c_prev, dc * i
            dA = jnp.concatenate([di * i * (1 - i), df * f * (1 - f), do * o * (1 - o),
                                  dg * (1 - g * g)], axis=-1)  # (B, 4H)
            return (dA @ params.Wh.T, dc * f), dA  # carried to t−1: (B, 4H) @ (4H, H)

        zeros = jnp.zeros((dY.shape[0], n), dY.dtype)
        inputs = (time_major(dY), res.C_prev, res.tanh_C, res.gates)
        _, dA = jax.lax.scan(step, (zeros, zeros), inputs, reverse=True)
        dA = time_major(dA)
        return dA, dA, dA @ params.Wx.T  # (B, T, 4H) @ (4H, D)

    return recurrent_module(name, init, forward, cotangents, LSTM_GATES)
