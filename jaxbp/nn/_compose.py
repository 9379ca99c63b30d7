"""Running modules in a chain, forward then backward, and ``Residual``.

``forward_chain`` keeps each module's residuals; ``backward_chain`` walks the
modules from the last to the first, handing each the ∂L/∂output its successor
returned as ∂L/∂input: the notes' chain rule, one module at a time.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from jaxbp.nn._module import Module
from jaxbp.nn._per_example import PerExample, per_example_chain


def split_key(key: Optional[jax.Array], n: int) -> tuple:
    """n independent keys, or n Nones when key is None (deterministic modules)."""
    if key is None:
        return (None,) * n
    return tuple(jax.random.split(key, n))


def _shapes(tree) -> str:
    shapes = [tuple(getattr(x, "shape", ())) for x in jax.tree.leaves(tree)]
    return ", ".join(map(str, shapes)) if shapes else "no params"


def _where(prefix: str, i: int, module: Module) -> str:
    return f"{prefix}{i} ({module.name})"


def forward_chain(modules: Sequence[Module], params, X, key, *, prefix: str = "module "):
    """Each module's forward in turn.

    Returns:
      (Y, residuals, inputs): the last output, each module's residuals, and
      each module's input (X first), both tuples with one entry per module.

    Errors from a module's forward (e.g. a width that does not fit its params)
    are re-raised naming the module's index and the input's per-example shape.
    """
    residuals, inputs = [], []
    for i, (module, p, k) in enumerate(zip(modules, params, split_key(key, len(modules))), 1):
        inputs.append(X)
        try:
            X, r = module.forward(p, X, k)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{_where(prefix, i, module)}: input of per-example shape "
                          f"{tuple(X.shape[1:])} (batch {X.shape[0]}) with params of shapes "
                          f"[{_shapes(p)}]: {e}") from None
        residuals.append(r)
    return X, tuple(residuals), tuple(inputs)


def check_backward(module: Module, where: str, p, dp, X, dX) -> None:
    """Static checks of one module's backward output: structure and shapes like params and X."""
    if jax.tree.structure(dp) != jax.tree.structure(p):
        raise ValueError(f"{where}: backward returned dparams of structure "
                         f"{jax.tree.structure(dp)}; expected the structure of params "
                         f"{jax.tree.structure(p)}")
    for got, want in zip(jax.tree.leaves(dp), jax.tree.leaves(p)):
        if jnp.shape(got) != jnp.shape(want):
            raise ValueError(f"{where}: backward returned a parameter gradient of shape "
                             f"{jnp.shape(got)}; expected {jnp.shape(want)} like the parameter")
    if jnp.issubdtype(X.dtype, jnp.integer):
        if dX is not None:
            raise ValueError(f"{where}: backward must return dX=None for integer input")
    elif dX is None or jnp.shape(dX) != X.shape:
        raise ValueError(f"{where}: backward returned dX of shape "
                         f"{None if dX is None else jnp.shape(dX)}; expected {tuple(X.shape)} "
                         f"like its input")


def backward_chain(modules: Sequence[Module], params, inputs, residuals, dY, *,
                   prefix: str = "module ", trail: Optional[list] = None):
    """The modules' backward passes from the last to the first.

    Args:
      modules, params: as for ``forward_chain``.
      inputs: each module's input (for the static shape checks).
      residuals: from ``forward_chain``.
      dY: ∂L/∂(the last module's output).
      trail: optional list; each module's (dparams, dX) is appended, last module first.

    Returns:
      ((dparams_1, ..., dparams_n), ∂L/∂(the first module's input)).
    """
    grads = [None] * len(modules)
    for i in range(len(modules) - 1, -1, -1):
        module = modules[i]
        dp, dY_prev = module.backward(params[i], residuals[i], dY)
        check_backward(module, _where(prefix, i + 1, module), params[i], dp, inputs[i], dY_prev)
        if trail is not None:
            trail.append((dp, dY_prev))
        grads[i], dY = dp, dY_prev
    return tuple(grads), dY


@functools.lru_cache(maxsize=None)
def _residual(modules: tuple) -> Module:
    for i, m in enumerate(modules, 1):
        if not isinstance(m, Module):
            raise TypeError(f"Residual: argument {i} is a {type(m).__name__}, expected a "
                            f"jaxbp.nn.Module")
    name = f"Residual({', '.join(m.name for m in modules)})"

    def init(key, in_shape, dtype):
        in_shape = tuple(int(s) for s in in_shape)
        shape, params = in_shape, []
        for m, k in zip(modules, jax.random.split(key, len(modules))):
            p, shape = m.init(k, shape, dtype)
            params.append(p)
        if tuple(shape) != in_shape:
            raise ValueError(f"{name}: the inner modules map shape {in_shape} to "
                             f"{tuple(shape)}; x + inner(x) needs the same shape")
        return tuple(params), in_shape

    def forward(params, X, key):
        Y, residuals, inputs = forward_chain(modules, params, X, key, prefix=f"{name}: inner ")
        if Y.shape != X.shape:
            raise ValueError(f"{name}: inner output {tuple(Y.shape)} differs from input "
                             f"{tuple(X.shape)}")
        return X + Y, (inputs, residuals)

    def backward(params, res, dY):
        inputs, residuals = res
        dparams, dX_inner = backward_chain(modules, params, inputs, residuals, dY,
                                           prefix=f"{name}: inner ")
        return dparams, dY + dX_inner  # the skip path passes ∂L/∂Y unchanged

    def per_example(params, res, dY):
        _, residuals = res
        dX_inner, sq, sums = per_example_chain(modules, params, residuals, dY,
                                               prefix=f"{name}: inner ")
        return PerExample(dY + dX_inner, jnp.sum(sq, axis=-1),
                          lambda c: tuple(weighted_sum(c) for weighted_sum in sums))

    module = Module(name, init, forward, backward, per_example)
    RESIDUAL_INNER[module] = modules
    return module


# A Residual module -> its inner modules, so that a checker can look inside it.
RESIDUAL_INNER: dict = {}


def Residual(*modules: Module) -> Module:
    """x + inner(x), inner the given modules in sequence (shape-preserving).

    Backward: the skip connection's Jacobian is the identity, so

        ∂L/∂x = ∂L/∂Y + (the inner chain's ∂L/∂x, from ∂L/∂Y)

    and the inner modules' parameter gradients are those of the inner chain (and their
    per-example norms add up, for private gradients).
    Params: a tuple, one entry per inner module.

    Example:
      >>> from jaxbp import nn
      >>> block = nn.Residual(nn.LayerNorm(), nn.Linear(16))  # doctest: +SKIP
    """
    if not modules:
        raise ValueError("Residual: needs at least one inner module")
    return _residual(tuple(modules))
