"""GRU: gates r, z, n in PyTorch's form (the reset gate multiplies h Wh_n + b_hn), BPTT by hand."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.core._activations import sigmoid
from jaxbp.nn._module import Module, bias
from jaxbp.nn._recurrent import (GRUParams, check_hidden, check_input, init_weights, previous,
                                 recurrent_module, time_major)

GRU_GATES = ("r", "z", "n")


class GRUResiduals(NamedTuple):
    """X (B, T, D); H (B, T, H); gates (B, T, 3H) = [r z n]; hn (B, T, H) = h_{t−1} Wh_n + b_hn."""

    X: jax.Array
    H: jax.Array
    gates: jax.Array
    hn: jax.Array


def GRU(hidden: int) -> Module:
    """Gated recurrent unit (PyTorch's ``nn.GRU`` equations), all h_t out: (B, T, D) -> (B, T, H).

    Forward at step t, with ax = x_t Wx + b = [ax_r ax_z ax_n] and ah = h_{t−1} Wh =
    [ah_r ah_z ah_n] (gate blocks side by side in the order r, z, n):

        r  = σ(ax_r + ah_r),   z = σ(ax_z + ah_z)
        hn = ah_n + b_hn                          the reset gate acts on this, bias included
        n  = tanh(ax_n + r ⊙ hn)
        h_t = (1 − z) ⊙ n + z ⊙ h_{t−1}           h_{−1} = 0

    Backward through time: one reverse scan carrying dh_next (0 after the last step):

        dh   = ∂L/∂Y_t + dh_next
        dn   = dh ⊙ (1 − z),   dz = dh ⊙ (h_{t−1} − n)
        dA_n = dn ⊙ (1 − n²)                                  n's pre-activation
        dA_r = dA_n ⊙ hn ⊙ r(1 − r),   dA_z = dz ⊙ z(1 − z)
        dhn  = dA_n ⊙ r                                       into h_{t−1} Wh_n + b_hn
        dAx_t = [dA_r dA_z dA_n],   dAh_t = [dA_r dA_z dhn]   (B, 3H) each
        dh_next ← dh ⊙ z + dAh_t Whᵀ                          carried to step t−1

    then ∂L/∂Wx = Σ x ⊗ dAx, ∂L/∂b = Σ dAx, ∂L/∂X = dAx Wxᵀ, ∂L/∂Wh = Σ h_{t−1} ⊗ dAh and
    ∂L/∂b_hn = Σ dhn, out of the scan (``jaxbp.nn._recurrent``).

    Args:
      hidden: H, the state width.

    Returns:
      A ``Module`` with time_axis 1 and gates ("r", "z", "n"); params
      ``GRUParams(Wx (D, 3H), Wh (H, 3H), b (3H,), b_hn (H,))``, Wx ~ N(0, 1/D),
      Wh ~ N(0, 1/H), biases 0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import nn
      >>> gru = nn.GRU(8)
      >>> params, out_shape = gru.init(jax.random.key(0), (5, 3), jnp.float32)
      >>> H, residuals = gru.forward(params, jnp.ones((2, 5, 3)), None)
      >>> dparams, dX = gru.backward(params, residuals, jnp.ones_like(H))
      >>> out_shape, dparams.b_hn.shape, gru.gates
      ((5, 8), (8,), ('r', 'z', 'n'))
    """
    return _gru(check_hidden("GRU", hidden))


@functools.lru_cache(maxsize=None)
def _gru(n: int) -> Module:
    name = f"GRU({n})"

    def init(key, in_shape, dtype):
        Wx, Wh, b, out_shape = init_weights(name, key, in_shape, dtype, n, 3)
        return GRUParams(Wx, Wh, b, jnp.zeros((n,), b.dtype)), out_shape

    def forward(params, X, key):
        del key
        check_input(name, X, params.Wx)
        Ax = X @ params.Wx + bias(params.b, 3)  # every step's input part: (B, T, D) @ (D, 3H)
        b_hn = bias(params.b_hn, 2)

        def step(h, ax):
            ah = h @ params.Wh  # (B, H) @ (H, 3H)
            rz = sigmoid(ax[:, :2 * n] + ah[:, :2 * n])
            r, z = rz[:, :n], rz[:, n:]
            hn = ah[:, 2 * n:] + b_hn
            g = jnp.tanh(ax[:, 2 * n:] + r * hn)
            h = (1 - z) * g + z * h
            return h, (h, jnp.concatenate([rz, g], axis=-1), hn)

        h0 = jnp.zeros((X.shape[0], n), Ax.dtype)
        _, outs = jax.lax.scan(step, h0, time_major(Ax))
        H, gates, hn = (time_major(x) for x in outs)
        return H, GRUResiduals(X, H, gates, hn)

    def cotangents(params, res, dY):
        def step(dh_next, inputs):
            dy, h_prev, gates, hn = inputs
            r, z, g = gates[:, :n], gates[:, n:2 * n], gates[:, 2 * n:]
            dh = dy + dh_next
            dA_n = dh * (1 - z) * (1 - g * g)
            dA_r = dA_n * hn * r * (1 - r)
            dA_z = dh * (h_prev - g) * z * (1 - z)
            dhn = dA_n * r
            dAh = jnp.concatenate([dA_r, dA_z, dhn], axis=-1)  # (B, 3H)
            return dh * z + dAh @ params.Wh.T, (dA_n, dAh)  # carried: (B, 3H) @ (3H, H)

        h0 = jnp.zeros((dY.shape[0], n), dY.dtype)
        inputs = (dY, previous(res.H), res.gates, res.hn)
        _, (dA_n, dAh) = jax.lax.scan(step, h0, tuple(time_major(x) for x in inputs),
                                      reverse=True)
        dA_n, dAh = time_major(dA_n), time_major(dAh)
        dAx = jnp.concatenate([dAh[..., :2 * n], dA_n], axis=-1)  # (B, T, 3H)
        return dAx, dAh, dAx @ params.Wx.T  # (B, T, 3H) @ (3H, D)

    return recurrent_module(name, init, forward, cotangents, GRU_GATES)
