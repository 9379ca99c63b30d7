"""Calling the backprop under test for ``jaxbp.verify``, and reading its output.

Your function is tried, in order, as one compiled ``jax.jit(jax.vmap(fn))``, as eager
``jax.vmap(fn)``, and one example at a time (host NumPy functions from ``jaxbp.adapters`` go
straight to the loop); its output is checked against the net's shapes and returned as
float64 NumPy arrays, with a ``BackpropError`` that names the layer when it does not fit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check._diagnose_fits import shape_kind
from jaxbp.check._compare import BackpropError
from jaxbp.core._network import Network


# The checker runs each of its programs once per problem, so compile time is most of a
# first call. XLA's CPU backend spends most of it in LLVM's optimizer: ask for -O0 there
# (about half the compile time; the same IEEE arithmetic, run a little slower).
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _jit(fn, **kwargs):
    """``jax.jit(fn, **kwargs)``, compiled without LLVM optimization on the CPU."""
    plain = jax.jit(fn, **kwargs)
    fast = jax.jit(fn, compiler_options=_FAST_COMPILE, **kwargs)

    @functools.wraps(fn)
    def call(*args):
        return (fast if jax.default_backend() == "cpu" else plain)(*args)

    return call


def _as_layers(out, net: Network, lead: tuple, what: str):
    """Your output as [(W, W0)] numpy float64 arrays; BackpropError if misshapen."""
    L = net.num_layers
    if not isinstance(out, (tuple, list)):
        raise BackpropError(f"{what} returned {type(out).__name__}; expected a tuple of {L} "
                            f"Dense(W, W0), one per layer, shaped like params")
    if len(out) != L:
        raise BackpropError(f"{what} returned {len(out)} layers; expected {L} "
                            f"(one Dense(W, W0) per layer, like params)")
    layers, dtypes = [], set()
    for l, (item, (m, n)) in enumerate(zip(out, net.layer_shapes), start=1):
        if hasattr(item, "W") and hasattr(item, "W0"):
            pair = (item.W, item.W0)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            pair = tuple(item)
        else:
            raise BackpropError(f"{what} returned {type(item).__name__} for layer {l}; "
                                f"expected Dense(W, W0)")
        arrays = []
        for name, arr, want in (("W", pair[0], (m, n)), ("W0", pair[1], (n,))):
            try:
                arr = np.asarray(arr)
            except Exception as e:  # e.g. a tracer leaked out, or None
                raise BackpropError(f"{what}: layer {l} {name} is not an array "
                                    f"({type(arr).__name__})") from e
            if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == jnp.bfloat16):
                raise BackpropError(f"{what}: layer {l} {name} has dtype {arr.dtype}; "
                                    f"expected a float dtype like params")
            got = arr.shape[len(lead):] if arr.shape[:len(lead)] == lead else arr.shape
            if arr.shape != lead + want:
                hint = shape_kind(got, want)
                if name == "W0" and len(got) != 1:
                    hint = " (reduction or broadcasting: a bias gradient of the wrong rank)"
                raise BackpropError(
                    f"{what}: layer {l} {name} has shape {got}; expected {want} like "
                    f"params[{l - 1}].{name} (W is (inputs, outputs) = (m^{l}, n^{l})){hint}")
            dtypes.add(str(arr.dtype))
            arrays.append(arr.astype(np.float64))
        layers.append(tuple(arrays))
    return tuple(layers), dtypes


def _vmapped_fn(fn, per_example, params, X, Y):
    if per_example:
        return jax.vmap(fn, in_axes=(None, 0, 0))(params, X, Y)
    return jax.vmap(lambda x, y: fn(params, x[None], y[None]))(X, Y)  # batches of one


# Your function compiled as one program (fn is a static argument: hashed by identity, so
# calling verify again with the same function reuses the compiled code).
_vmapped = _jit(_vmapped_fn, static_argnums=(0, 1))
_jitted = _jit(lambda fn, params, X, Y: fn(params, X, Y), static_argnums=0)


def is_host_function(fn) -> bool:
    """True for functions that run NumPy on the host (``jaxbp.adapters``): never traced."""
    return bool(getattr(fn, "jaxbp_host", False))


def _call(fn, params, X, Y, net, what: str, *, per_example: bool, vectorized: bool = False):
    """Your per-example grads (B, ...) via vmap, or one example at a time.

    Tried in order: ``jax.jit(jax.vmap(fn))``, eager ``jax.vmap(fn)``, a Python loop
    over examples (host NumPy functions go straight to the loop).
    ``vectorized``: fn already maps a batch to per-example rows (no vmap needed).
    """
    notes = []
    B = X.shape[0]
    try:
        if is_host_function(fn):
            raise _HostFunction()
        if vectorized:
            out = fn(params, X, Y)
        else:
            try:
                out = _vmapped(fn, per_example, params, X, Y)
            except Exception:  # e.g. not jittable, or unhashable: JAX's eager vmap
                out = _vmapped_fn(fn, per_example, params, X, Y)
    except _HostFunction:
        pass
    except Exception as e:  # not vmappable: fall back to a loop, which names the example
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        notes.append(f"{what} does not run under jax.vmap ({type(e).__name__}: {first}); "
                     f"it was called one example at a time")
    else:
        try:
            layers, dtypes = _as_layers(out, net, (B,), what)
        except BackpropError as e:
            if per_example and not vectorized:
                raise BackpropError(f"{e}. (If {what} takes a whole batch and returns the mean "
                                    f"gradient, pass batched=True.)") from e
            raise
        return layers, dtypes, notes
    outs, dtypes = [], set()
    for b in range(B):
        x, y = (X[b], Y[b]) if per_example else (X[b:b + 1], Y[b:b + 1])
        try:
            out = fn(params, x, y)
        except BackpropError:
            raise
        except Exception as e:
            raise BackpropError(
                f"{what} raised {type(e).__name__} on example {b} (called as "
                f"{what}(params, x, y) with x of shape {tuple(x.shape)}, y of shape "
                f"{tuple(y.shape)}): {e}{layout_hint(fn)}") from e
        layers, dt = _as_layers(out, net, (), what)
        outs.append(layers)
        dtypes |= dt
    stacked = tuple(tuple(np.stack([o[l][k] for o in outs]) for k in range(2))
                    for l in range(net.num_layers))
    return stacked, dtypes, notes


def layout_hint(fn) -> str:
    """For host (NumPy) code that raised: a layout mismatch, saying which layout was tried."""
    if not is_host_function(fn):
        return ""
    layout = getattr(fn, "layout", "rows")
    other = "rows" if layout == "columns" else "columns"
    marked = getattr(getattr(fn, "fn", fn), "jaxbp_layout", None)
    return (f". This looks like a layout mismatch: jaxbp called your NumPy code with "
            f"layout={layout!r}" + (f" (your function is marked {marked!r})" if marked else "")
            + f"; if it expects {other[:-1]} vectors, pass layout={other!r}")


class _HostFunction(Exception):
    pass


def _call_batch(fn, params, X, Y, net, what):
    out = None
    if not is_host_function(fn):
        try:
            out = _jitted(fn, params, X, Y)
        except Exception:  # not jittable: called as is below, where errors are reported
            out = None
    if out is None:
        try:
            out = fn(params, X, Y)
        except BackpropError:
            raise
        except Exception as e:
            raise BackpropError(f"{what} raised {type(e).__name__} (called as {what}(params, X, "
                                f"Y) with X of shape {tuple(X.shape)}, Y of shape "
                                f"{tuple(Y.shape)}): {e}{layout_hint(fn)}") from e
    return _as_layers(out, net, (), what)
