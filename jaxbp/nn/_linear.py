"""Linear: z = a W + W0 on the last axis, the notes' layer without its activation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxbp.core._network import Dense
from jaxbp.nn._module import Module, bias, check_last_axis, sum_but_last
from jaxbp.nn._per_example import hook_from_backward, outer_sq_norms, row_sq_norms


@functools.lru_cache(maxsize=None)
def Linear(n_out: int) -> Module:
    """z = a W + W0 on the last axis: (B, m) -> (B, n), (B, T, m) -> (B, T, n).

    Backward (the notes' link and weight factors, summed over every leading axis):

        ∂L/∂a  = ∂L/∂z Wᵀ                      (B, ..., n) @ (n, m) -> (B, ..., m)
        ∂L/∂W  = Σ_{b,...} a ⊗ ∂L/∂z           (m, n)
        ∂L/∂W0 = Σ_{b,...} ∂L/∂z               (n,)

    Per example (private gradients): W_b = A_bᵀ G_b over its T positions (T = 1 for
    (B, m)), its squared norm by ``jaxbp.nn._per_example.outer_sq_norms`` (ghost or
    materialized), plus ‖Σ_t G_b[t]‖² for W0.

    Args:
      n_out: n, the output width.

    Returns:
      A ``Module`` whose params are ``jaxbp.Dense(W (m, n), W0 (n,))``; W ~ N(0, 1/m), W0 = 0.
    """
    if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
        raise ValueError(f"Linear: n_out must be a positive int, got {n_out!r}")
    name = f"Linear({n_out})"

    def init(key, in_shape, dtype):
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) < 1:
            raise ValueError(f"{name}: expects at least a feature axis, got in_shape {in_shape}")
        m = in_shape[-1]
        W = jax.random.normal(key, (m, n_out), dtype) * jnp.asarray(1.0 / m, dtype) ** 0.5
        return Dense(W, jnp.zeros((n_out,), dtype)), in_shape[:-1] + (n_out,)

    def forward(params, X, key):
        del key
        check_last_axis(name, X, params.W.shape[0], f"W of shape {tuple(params.W.shape)}")
        return X @ params.W + bias(params.W0, X.ndim), X  # (B, ..., m) @ (m, n) -> (B, ..., n)

    def backward(params, X, dZ):
        dX = dZ @ params.W.T  # link: (B, ..., n) @ (n, m) -> (B, ..., m)
        A = X.reshape(-1, X.shape[-1])  # weight factor a: (B·T, m)
        dW = A.T @ dZ.reshape(-1, dZ.shape[-1])  # (m, B·T) @ (B·T, n) -> (m, n)
        return Dense(dW, sum_but_last(dZ)), dX

    def sq_norms(params, X, dZ):
        # Example b's gradient: W_b = A_bᵀ G_b over its T positions, W0_b = Σ_t G_b[t].
        B = dZ.shape[0]
        A, G = X.reshape(B, -1, X.shape[-1]), dZ.reshape(B, -1, dZ.shape[-1])  # (B, T, ·)
        return outer_sq_norms(A, G) + row_sq_norms(jnp.sum(G, axis=1))

    return Module(name, init, forward, backward, hook_from_backward(backward, sq_norms))
