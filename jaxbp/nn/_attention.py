"""SelfAttention: multi-head (optionally causal) self-attention with a hand-written backward."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.core._network import Dense
from jaxbp.nn._module import Module, check_last_axis, check_rank
from jaxbp.nn._per_example import PerExample, outer_sq_norms, row_sq_norms, scale_rows


class Attention(NamedTuple):
    """SelfAttention's parameters: four (d, d) projections, each ``Dense(W, W0)``.

    Attributes:
      query: Q = X W_q + W0_q.
      key: K = X W_k + W0_k.
      value: V = X W_v + W0_v.
      output: Y = O W_o + W0_o (O: the heads' outputs, concatenated).
    """

    query: Dense
    key: Dense
    value: Dense
    output: Dense


class _Residuals(NamedTuple):
    """What the backward needs from the forward, named after the math.

    Shapes: X, O (B, T, d); Q, K, V (B, T, h, dh); P (B, h, T, T).
    """

    X: jax.Array
    Q: jax.Array
    K: jax.Array
    V: jax.Array
    P: jax.Array
    O: jax.Array


def SelfAttention(num_heads: int, *, causal: bool = False) -> Module:
    """Multi-head self-attention on (B, T, d), d = h·dh, h = ``num_heads``.

    Forward (one batch entry b and head j; all heads at once with einsum):

        Q = X W_q + W0_q,  K = X W_k + W0_k,  V = X W_v + W0_v     (B, T, d) -> (B, T, h, dh)
        S = Q Kᵀ / √dh                                              (B, h, T, T)
        S_qk = very negative (finfo.min) where k > q, if causal
        P = softmax(S) on the last axis (minus the row max: stable)  (B, h, T, T)
        O = P V, heads concatenated                                  (B, T, h, dh) -> (B, T, d)
        Y = O W_o + W0_o                                             (B, T, d)

    The diagonal is never masked, so every row keeps a finite maximum and the
    masked entries of P are exactly 0 (exp underflows), with no NaN anywhere.

    Backward (∂L/∂Y = dY given; each step is the vjp of one line above):

        dW_o = Σ_{b,t} O ⊗ dY                 (d, d)       dW0_o = Σ_{b,t} dY   (d,)
        dO   = dY W_oᵀ                         (B, T, d) -> (B, T, h, dh)
        dP   = dO Vᵀ                           (B, h, T, T)
        dV   = Pᵀ dO                           (B, T, h, dh)
        dS   = P ⊙ (dP − rowsum(dP ⊙ P))       the softmax vjp, (B, h, T, T)
        dQ   = dS K / √dh,   dK = dSᵀ Q / √dh  (B, T, h, dh)
        dW_• = Σ_{b,t} X ⊗ d•,  dW0_• = Σ_{b,t} d•      for • = q, k, v  (d, d), (d,)
        dX   = dQ W_qᵀ + dK W_kᵀ + dV W_vᵀ     (B, T, d)

    Two facts make it cheaper than the lines read literally:
    rowsum(dP ⊙ P)_q = Σ_k P_qk Σ_e dO_qe V_ke = Σ_e dO_qe O_qe, a (B, T, h) sum of
    dO ⊙ O instead of a (B, h, T, T) one; and the three input projections share X, so
    their weight gradients are one (d, B·T) @ (B·T, 3d) matmul on [dQ, dK, dV] and dX
    one (B·T, 3d) @ (3d, d) matmul. Masked entries need no care: P = 0 there, so dS = 0.

    The key bias's true gradient is exactly 0: K's bias adds W0_k·q/√dh to every entry of
    row q of S, and softmax is shift-invariant per row (indeed dW0_k = Σ_k dK_k =
    Σ_q (Σ_k dS_qk) Q_q / √dh and every row of dS sums to 0). The backward returns it
    as round-off (~1e-16 of the gradients' scale in float64), as autodiff does.

    Per example (private gradients): each projection is a Linear on (B, T, d) (inputs X
    for q, k, v and O for the output), its norms by ``outer_sq_norms`` from the same
    cotangents; the clipped sum rescales dQ, dK, dV and dY per example (no second backward).

    Args:
      num_heads: h, the number of heads; the width d must be divisible by it.
      causal: if True, position q attends only to positions k ≤ q.

    Returns:
      A ``Module``; params are ``Attention(query, key, value, output)`` of
      ``jaxbp.Dense(W (d, d), W0 (d,))``, W ~ N(0, 1/d) (LeCun), W0 = 0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import nn
      >>> attn = nn.SelfAttention(2, causal=True)
      >>> params, out_shape = attn.init(jax.random.key(0), (5, 8), jnp.float32)
      >>> Y, residuals = attn.forward(params, jnp.ones((3, 5, 8)), None)
      >>> dparams, dX = attn.backward(params, residuals, jnp.ones_like(Y))
      >>> out_shape, dX.shape
      ((5, 8), (3, 5, 8))
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"SelfAttention: num_heads must be a positive int, got {num_heads!r}")
    if not isinstance(causal, bool):
        raise TypeError(f"SelfAttention: causal must be a bool, got {causal!r}")
    return _self_attention(num_heads, causal)


@functools.lru_cache(maxsize=None)
def _self_attention(h: int, causal: bool) -> Module:
    """The module for h heads; cached so equal settings give the same (hashable) object."""
    name = f"SelfAttention({h}, causal=True)" if causal else f"SelfAttention({h})"

    def check_width(d: int, where: str) -> int:
        if d % h:
            raise ValueError(f"{name}: the width d must be divisible by num_heads={h}, "
                             f"got d={d} ({where})")
        return d // h

    def init(key, in_shape, dtype):
        T, d = check_rank(name, in_shape, 2, "(T, d)")
        check_width(d, f"in_shape {(T, d)}")
        scale = jnp.asarray(1.0 / d, dtype) ** 0.5
        projections = [Dense(jax.random.normal(k, (d, d), dtype) * scale, jnp.zeros((d,), dtype))
                       for k in jax.random.split(key, 4)]
        return Attention(*projections), (T, d)

    def forward(params, X, key):
        del key
        d = params.query.W.shape[0]
        check_last_axis(name, X, d, f"the projections' W of shape {tuple(params.query.W.shape)}")
        if X.ndim != 3:
            raise ValueError(f"{name}: expects X of shape (B, T, d), got {tuple(X.shape)}")
        dh = check_width(d, f"the projections' W of shape {tuple(params.query.W.shape)}")
        B, T, _ = X.shape
        # The three input projections as one matmul: (B, T, d) @ (d, 3d) -> (B, T, 3d).
        W_qkv = jnp.concatenate([params.query.W, params.key.W, params.value.W], axis=1)
        W0_qkv = jnp.concatenate([params.query.W0, params.key.W0, params.value.W0])
        QKV = (X @ W_qkv + W0_qkv.reshape(1, 1, 3 * d)).reshape(B, T, 3, h, dh)
        Q, K, V = QKV[:, :, 0], QKV[:, :, 1], QKV[:, :, 2]  # (B, T, h, dh) each
        S = jnp.einsum("bqhe,bkhe->bhqk", Q, K) / jnp.sqrt(jnp.asarray(dh, X.dtype))
        if causal:
            mask = jnp.tril(jnp.ones((T, T), bool)).reshape(1, 1, T, T)  # k ≤ q
            S = jnp.where(mask, S, jnp.finfo(S.dtype).min)
        E = jnp.exp(S - jax.lax.stop_gradient(jnp.max(S, axis=-1, keepdims=True)))
        P = E / jnp.sum(E, axis=-1, keepdims=True)  # (B, h, T, T)
        O = jnp.einsum("bhqk,bkhe->bqhe", P, V).reshape(B, T, d)  # heads concatenated
        Y = O @ params.output.W + params.output.W0.reshape(1, 1, d)  # (B, T, d) @ (d, d)
        return Y, _Residuals(X, Q, K, V, P, O)

    def cotangents(params, residuals, dY):
        """(∂L/∂[Q K V] (B, T, 3d), ∂L/∂X): everything but the parameter gradients."""
        X, Q, K, V, P, O = residuals
        B, T, d = X.shape
        dh = d // h
        dO = (dY.reshape(B * T, d) @ params.output.W.T).reshape(B, T, h, dh)  # (BT, d) @ (d, d)
        dP = jnp.einsum("bqhe,bkhe->bhqk", dO, V)  # (B, h, T, T)
        dV = jnp.einsum("bhqk,bqhe->bkhe", P, dO)  # Pᵀ dO: (B, T, h, dh)
        # rowsum(dP ⊙ P) = rowsum(dO ⊙ O) per head: (B, T, h) -> (B, h, T, 1).
        rowsum = jnp.sum(dO * O.reshape(B, T, h, dh), axis=-1).transpose(0, 2, 1)[..., None]
        dS = P * (dP - rowsum) / jnp.sqrt(jnp.asarray(dh, X.dtype))  # with the 1/√dh of S
        dQ = jnp.einsum("bhqk,bkhe->bqhe", dS, K)  # (B, T, h, dh)
        dK = jnp.einsum("bhqk,bqhe->bkhe", dS, Q)  # dSᵀ Q: (B, T, h, dh)
        dQKV = jnp.stack([dQ, dK, dV], axis=2).reshape(B, T, 3 * d)  # [dQ, dK, dV]
        W_qkv = jnp.concatenate([params.query.W, params.key.W, params.value.W], axis=1)
        dX = (dQKV.reshape(B * T, 3 * d) @ W_qkv.T).reshape(B, T, d)  # (BT, 3d) @ (3d, d)
        return dQKV, dX

    def param_grads(residuals, dQKV, dY):
        """The four projections' gradients from their inputs (X, O) and cotangents."""
        X, O = residuals.X, residuals.O
        B, T, d = X.shape
        dY2, dQKV2 = dY.reshape(B * T, d), dQKV.reshape(B * T, 3 * d)
        d_output = Dense(O.reshape(B * T, d).T @ dY2, jnp.sum(dY2, axis=0))  # (d, BT) @ (BT, d)
        dW_qkv = X.reshape(B * T, d).T @ dQKV2  # (d, BT) @ (BT, 3d) -> (d, 3d)
        dW0_qkv = jnp.sum(dQKV2, axis=0)  # (3d,)
        d_query, d_key, d_value = (Dense(dW_qkv[:, i * d:(i + 1) * d], dW0_qkv[i * d:(i + 1) * d])
                                   for i in range(3))
        return Attention(d_query, d_key, d_value, d_output)

    def backward(params, residuals, dY):
        dQKV, dX = cotangents(params, residuals, dY)
        return param_grads(residuals, dQKV, dY), dX

    def per_example(params, residuals, dY):
        # Each projection is a Linear on (B, T, d): X feeds q, k, v (their cotangents side by
        # side, [dQ dK dV], give the three weight norms in one), O feeds the output.
        dQKV, dX = cotangents(params, residuals, dY)
        sq = (outer_sq_norms(residuals.X, dQKV) + row_sq_norms(jnp.sum(dQKV, axis=1))
              + outer_sq_norms(residuals.O, dY) + row_sq_norms(jnp.sum(dY, axis=1)))
        return PerExample(dX, sq, lambda c: param_grads(residuals, scale_rows(c, dQKV),
                                                          scale_rows(c, dY)))

    return Module(name, init, forward, backward, per_example)
