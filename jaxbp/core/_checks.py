"""Input validation shared by the public functions.

Shape and dtype checks use only static information, so they run under
``jax.jit`` and ``jax.vmap`` too. Checks of *values* (NaN/inf in the data,
one-hot targets, labels in {0, 1} or {−1, +1}) need concrete arrays: they run
when a function is called eagerly and are skipped while JAX is tracing.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x: Any) -> bool:
    """True when x holds values (not a tracer inside jit/vmap/grad)."""
    return not isinstance(x, jax.core.Tracer)


def check_float_dtype(name: str, dtype: Any) -> jnp.dtype:
    """Returns dtype as a floating numpy dtype or raises a TypeError naming it."""
    try:
        dtype = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"{name}: {dtype!r} is not a dtype") from e
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name}: expected a floating dtype (float32 or float64), got {dtype}")
    if dtype == jnp.float64 and not jax.config.jax_enable_x64:
        raise TypeError(
            f"{name}: float64 needs 64-bit JAX; call "
            "jax.config.update('jax_enable_x64', True) first (or set JAX_ENABLE_X64=1)"
        )
    return dtype


def check_params(params: Any, layer_shapes: Sequence[tuple[int, int]]) -> jnp.dtype:
    """Checks params is a sequence of Dense(W, W0) with the net's shapes.

    Returns:
      The common floating dtype of the parameters.
    """
    L = len(layer_shapes)
    if not isinstance(params, (tuple, list)):
        raise TypeError(
            f"params: expected a tuple of {L} Dense(W, W0) (one per layer), "
            f"got {type(params).__name__}"
        )
    if len(params) != L:
        raise ValueError(f"params: expected {L} layers for this network, got {len(params)}")
    dtype = None
    for l, (layer, (m, n)) in enumerate(zip(params, layer_shapes), start=1):
        if not (hasattr(layer, "W") and hasattr(layer, "W0")):
            raise TypeError(
                f"params[{l - 1}] (layer {l}): expected Dense(W, W0), got {type(layer).__name__}"
            )
        for field, want in (("W", (m, n)), ("W0", (n,))):
            arr = getattr(layer, field)
            shape = tuple(np.shape(arr))
            if shape != want:
                raise ValueError(
                    f"params layer {l}: {field} has shape {shape}, expected {want} "
                    f"(W is (inputs, outputs) = (m^{l}, n^{l}), W0 is (n^{l},))"
                )
            dt = jnp.result_type(arr)
            if not jnp.issubdtype(dt, jnp.floating):
                raise TypeError(f"params layer {l}: {field} has dtype {dt}, expected a float dtype")
            if dtype is None:
                dtype = dt
            elif dt != dtype:
                raise TypeError(
                    f"params layer {l}: {field} has dtype {dt} but earlier parameters are {dtype}; "
                    "use one dtype for all parameters"
                )
    return dtype


def check_x(name: str, x: Any, m: int, *, batched: bool, dtype) -> jax.Array:
    """Checks an input (m,) or a batch (B, m) and casts it to the params' dtype."""
    x = jnp.asarray(x) if is_concrete(x) else x
    want = "(B, m)" if batched else "(m,)"
    ndim = 2 if batched else 1
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{name}: expected a floating-point array, got dtype {x.dtype}; "
            f"convert it first, e.g. {name}.astype(jnp.float32)"
        )
    if x.ndim != ndim or x.shape[-1] != m:
        raise ValueError(f"{name}: expected shape {want} with m={m}, got {tuple(x.shape)}")
    if batched and x.shape[0] == 0:
        raise ValueError(f"{name}: empty batch (B=0); need at least one example")
    # numpy, not jnp: inside a trace even ops on a concrete (captured) array give tracers.
    if is_concrete(x) and not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name}: contains NaN or inf")
    return x.astype(dtype)


def check_y(name: str, y: Any, n: int, loss, *, batched: bool, batch_size: int | None,
            dtype) -> jax.Array:
    """Checks a target (n,) or a batch (B, n) against the loss; casts to dtype.

    With one output unit (n = 1) a target of shape () or (B,) is accepted too.
    """
    y = jnp.asarray(y) if is_concrete(y) else y
    want = (batch_size, n) if batched else (n,)
    if n == 1 and y.shape == want[:-1]:
        y = y[..., None]
    if y.shape != want:
        hint = ""
        if loss.name == "nll" and y.shape == want[:-1] and jnp.issubdtype(y.dtype, jnp.integer):
            hint = f"; nll takes one-hot targets, e.g. jax.nn.one_hot({name}, {n})"
        shape = "(B, n)" if batched else "(n,)"
        raise ValueError(
            f"{name}: expected shape {shape} = {want} for loss {loss.name!r}, "
            f"got {tuple(y.shape)}{hint}"
        )
    if not (jnp.issubdtype(y.dtype, jnp.floating) or jnp.issubdtype(y.dtype, jnp.integer)
            or y.dtype == jnp.bool_):
        raise TypeError(f"{name}: expected a numeric array, got dtype {y.dtype}")
    y = y.astype(dtype)
    if is_concrete(y):
        check_target_values(name, y, loss)
    return y


def check_target_values(name: str, y: Any, loss) -> None:
    """Checks concrete targets (any shape, classes on the last axis) against the loss."""
    v = np.asarray(y)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{name}: contains NaN or inf")
    if loss.name == "nll":
        if not (np.all((v == 0) | (v == 1)) and np.all(v.sum(-1) == 1)):
            raise ValueError(f"{name}: loss 'nll' needs one-hot targets (one 1 per row)")
    elif loss.name == "binary_nll":
        if not np.all((v >= 0) & (v <= 1)):
            raise ValueError(f"{name}: loss 'binary_nll' needs targets in [0, 1] "
                             f"(labels in {{0, 1}})")
    elif loss.name == "hinge":
        if not np.all(np.abs(v) == 1):
            raise ValueError(f"{name}: loss 'hinge' needs targets in {{-1, +1}}")
