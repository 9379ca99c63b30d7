"""Embedding: integer token ids -> rows of a table W; its backward scatter-adds into W."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.core._checks import check_float_dtype, is_concrete
from jaxbp.nn._module import Module
from jaxbp.nn._per_example import hook_from_backward, row_sq_norms, use_ghost


class EmbeddingTable(NamedTuple):
    """An embedding's parameters: W (vocab_size, dim), row v the vector of token v."""

    W: jax.Array


def _check_size(what: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"Embedding: {what} must be a positive int, got {n!r}")
    return int(n)


def Embedding(vocab_size: int, dim: int) -> Module:
    """Y[b, t] = W[ids[b, t]]: integer ids (B, T) -> (B, T, dim) (or (B,) -> (B, dim)).

    Backward. Y[b, t, k] = Σ_v [ids[b, t] = v] W[v, k], so

        ∂L/∂W[v] = Σ_{(b, t): ids[b, t] = v} ∂L/∂Y[b, t]      (vocab_size, dim)

    a scatter-add of ∂L/∂Y into the rows of the ids (a repeated id adds up its
    positions' gradients; an unused row gets 0). The ids are integers: ∂L/∂ids is None.

    Per example (private gradients): ‖dW_b‖² = Σ_v ‖Σ_{t: ids[b,t] = v} ∂L/∂Y[b, t]‖², a
    repeated token's positions summed into one row before squaring.

    Ids are checked against vocab_size when they are concrete (called eagerly);
    under ``jax.jit`` the check is skipped and JAX's indexing rules apply.

    Args:
      vocab_size: the number of rows of W (ids lie in [0, vocab_size)).
      dim: the width of each row.

    Returns:
      A ``Module`` whose params are ``EmbeddingTable(W (vocab_size, dim))``, W ~ N(0, 1);
      its residuals are the ids.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import nn
      >>> emb = nn.Embedding(10, 4)
      >>> params, out_shape = emb.init(jax.random.key(0), (3,), jnp.float32)
      >>> emb.forward(params, jnp.array([[1, 2, 1]]), None)[0].shape, out_shape
      ((1, 3, 4), (3, 4))
    """
    return _embedding(_check_size("vocab_size", vocab_size), _check_size("dim", dim))


@functools.lru_cache(maxsize=None)
def _embedding(vocab_size: int, dim: int) -> Module:
    name = f"Embedding({vocab_size}, {dim})"

    def init(key, in_shape, dtype):
        dtype = check_float_dtype(f"{name}: dtype", dtype)
        in_shape = tuple(int(s) for s in in_shape)
        W = jax.random.normal(key, (vocab_size, dim), dtype)
        return EmbeddingTable(W), in_shape + (dim,)

    def forward(params, ids, key):
        del key
        W = params.W
        if tuple(W.shape) != (vocab_size, dim):
            raise ValueError(f"{name}: W must have shape {(vocab_size, dim)}, "
                             f"got {tuple(W.shape)}")
        ids = jnp.asarray(ids) if is_concrete(ids) else ids
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise TypeError(f"{name}: Embedding takes integer token ids, got dtype {ids.dtype}")
        if ids.ndim < 1:
            raise ValueError(f"{name}: ids need a leading batch axis, got shape {tuple(ids.shape)}")
        if is_concrete(ids):
            v = np.asarray(ids)
            bad = v[(v < 0) | (v >= vocab_size)]
            if bad.size:
                raise ValueError(f"{name}: token id {int(bad[0])} is out of range for "
                                 f"vocab_size={vocab_size} (ids must lie in [0, {vocab_size}))")
        return W[ids], ids  # (V, dim)[(B, T)] -> (B, T, dim)

    def backward(params, ids, dY):
        dW = jnp.zeros_like(params.W).at[ids].add(dY)  # scatter-add: (B, T, dim) -> (V, dim)
        return EmbeddingTable(dW), None

    def sq_norms(params, ids, dY):
        # Example b's gradient has row v = Σ_{t: ids[b, t] = v} G_b[t] (repeats add up), so
        # ‖dW_b‖² = Σ_{t, s} [ids_t = ids_s] ⟨G_t, G_s⟩: the ghost form with one-hot inputs.
        B = dY.shape[0]
        ids, G = ids.reshape(B, -1), dY.reshape(B, -1, dim)  # (B, T), (B, T, dim)
        T = ids.shape[1]
        if T == 1:
            return row_sq_norms(G)
        if use_ghost(T, vocab_size, dim):
            same = (ids[:, :, None] == ids[:, None, :]).astype(G.dtype)  # (B, T, T)
            return jnp.einsum("bts,btk,bsk->b", same, G, G)
        dW = jnp.zeros((B, vocab_size, dim), G.dtype).at[
            jnp.arange(B)[:, None], ids].add(G)  # per-example tables (B, V, dim)
        return row_sq_norms(dW)

    return Module(name, init, forward, backward, hook_from_backward(backward, sq_norms))
