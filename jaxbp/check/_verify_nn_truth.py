"""The truth for ``verify(model)`` and ``check_module``: compiled jax.grad/jax.vjp programs.

Each is one jitted program per (model or module, shapes, dtype), so a second check of the same
model reuses it; run eagerly, the same autodiff would compile every primitive on its own.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.nn._compose import split_key
from jaxbp.nn._sequential import Sequential, _chain, _loss_terms


def _to(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, tree)


def _loss_with_taps(model: Sequential, params, eps, X, Y, key):
    """model.loss with eps[i] added to module i's input (None for integer input)."""
    n = len(model.modules)
    keys = split_key(key, n - 1 if model.fused else n) + (None,)
    A, Z = X, None
    for i, (m, p) in enumerate(zip(model.modules, params)):
        if eps[i] is not None:
            A = A + eps[i]
        if model.fused and i == n - 1:
            Z = A
        A, _ = m.forward(p, A, keys[i])
    return jnp.mean(_loss_terms(model, A, Z, Y))


@functools.partial(jax.jit, static_argnums=0)
def _chain_with_trail(model: Sequential, params, X, Y, key):
    """The model's own chain, compiled once: (grads, trail), trail as ``_chain`` fills it."""
    trail = []
    _, grads, _, _ = _chain(model, params, X, Y, key, trail=trail)
    return grads, tuple(trail)


# One jitted program per (model, shapes, dtype) (``_grads_with_taps_jit``): a second verify
# of the same model reuses it.


def _input_shapes(model, params, X, key):
    def run(p, x):
        shapes, A = [], x
        keys = split_key(key, len(model.modules))
        for m, pi, k in zip(model.modules, p, keys):
            shapes.append(A)
            A, _ = m.forward(pi, A, k)
        return shapes
    return jax.eval_shape(run, params, X)


def _grads_with_taps(model, params, X, Y, key, dtype):
    """(∂L/∂params, (∂L/∂input_i)_i) by jax.grad in dtype; None for integer inputs."""
    return _grads_with_taps_jit(model, np.dtype(dtype), params, X, Y, key)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _grads_with_taps_jit(model, dtype, params, X, Y, key):
    # The casts and zero taps inside the one program: eagerly, each would compile on its own.
    params, X, Y = _to(params, dtype), _to(X, dtype), Y.astype(dtype)
    shapes = _input_shapes(model, params, X, key)
    eps = tuple(None if not jnp.issubdtype(s.dtype, jnp.floating)
                else jnp.zeros(s.shape, dtype) for s in shapes)
    return jax.grad(_loss_with_taps, argnums=(1, 2))(model, params, eps, X, Y, key)


def _leaf_names(p) -> list:
    return [jax.tree_util.keystr(path).lstrip(".") or "params"
            for path, _ in jax.tree_util.tree_flatten_with_path(p)[0]]


def _np64(x):
    return None if x is None else np.asarray(x, np.float64)


@functools.partial(jax.jit, static_argnums=0)
def _forward(module, p, x, key):
    return module.forward(p, x, key)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _pullback(module, integer_input, p, x, dY, key):
    """jax.vjp of the module's forward, one compiled program (eager vjp compiles op by op)."""
    if integer_input:
        _, vjp = jax.vjp(lambda p: module.forward(p, x, key)[0], p)
        return vjp(dY)[0], None
    _, vjp = jax.vjp(lambda p, x: module.forward(p, x, key)[0], p, x)
    return vjp(dY)
