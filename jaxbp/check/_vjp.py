"""Check one custom layer's hand-written backward pass, then train with it.

``check_vjp(forward, backward, *primals)`` compares your ``backward`` with
``jax.vjp(forward, ...)`` evaluated in float64 for a few random cotangents dy,
primal by primal and entry by entry, with the same budget rule as
``jaxbp.verify`` (round-off of ``jax.vjp`` itself in your dtype, times 10, or
a floor; see ``jaxbp.core._tolerances.roundoff_budget``).
``custom_vjp(forward, backward)`` wraps ``jax.custom_vjp`` so that ``jax.grad``
of anything built on the layer uses your backward.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check import _structural
from jaxbp.check._diagnose import merge
from jaxbp.check import _diagnose_reports
from jaxbp.check._diagnose_fits import shape_kind
from jaxbp.check._numpy_common import numpy_code_errors
from jaxbp.check._report import Report
from jaxbp.check._vjp_order2 import SUFFIX, order2_rows
from jaxbp.check._vjp_checking import checked_bwd, is_checking
from jaxbp.check._compare import BackpropError, as_outputs, check_tolerance as _check_tolerance, max_abs as _max_abs, \
    budget as _budget, row as _row


def _float_primals(primals):
    for i, p in enumerate(primals):
        for leaf in jax.tree.leaves(p):
            dtype = jnp.result_type(leaf)
            if not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(f"primals[{i}]: expected floating-point arrays, got dtype {dtype}")
    return tuple(jax.tree.map(jnp.asarray, p) for p in primals)


def _as_cotangents(out, primals, what="backward"):
    """Your backward's output as one pytree per primal, shapes checked."""
    n = len(primals)
    out = as_outputs(out, n, what, f"a tuple of {n} cotangents, one per primal (shaped like the "
                     "primals)")
    result = []
    for i, (ct, p) in enumerate(zip(out, primals)):
        want, got = jax.tree.structure(p), jax.tree.structure(ct)
        if want != got:
            raise BackpropError(f"{what}: cotangent {i} has structure {got}; expected {want} "
                                f"like primals[{i}]")
        for leaf_ct, leaf_p in zip(jax.tree.leaves(ct), jax.tree.leaves(p)):
            if jnp.shape(leaf_ct) != jnp.shape(leaf_p):
                raise BackpropError(f"{what}: cotangent {i} has shape {jnp.shape(leaf_ct)}; "
                                    f"expected {jnp.shape(leaf_p)} like primals[{i}]"
                                    + shape_kind(jnp.shape(leaf_ct), jnp.shape(leaf_p)))
        result.append(ct)
    return tuple(result)


def check_vjp(forward: Callable, backward: Callable, *primals, key: Optional[jax.Array] = None,
              trials: int = 3, rtol: Optional[float] = None,
              atol: Optional[float] = None, order: int = 1) -> Report:
    """Checks ``backward`` against ``jax.vjp(forward)`` for random cotangents.

    For y = forward(*primals) and a cotangent dy of y's shape, the cotangent of
    primal i is dyᵀ ∂y/∂primal_i; your ``backward(*primals, dy)`` must return
    one per primal (a bare array is fine for one primal).

    Two more calls test the backward as a function (``report.diagnosis``, see
    ``jaxbp.check._structural``): doubling dy must double its result ("ignores
    upstream"), a second call on the same inputs must repeat the first ("not
    reentrant"), and it must not change what it was given ("mutates input").
    Either of the last two makes ``ok`` False even when the values are right.

    Args:
      forward: (*primals) -> y (an array or pytree).
      backward: (*primals, dy) -> (cotangent of primals[0], ...).
      *primals: the point to check at (float arrays or pytrees of them).
      key: PRNG key for the cotangents (default ``jax.random.key(0)``).
      trials: how many random cotangents dy ~ N(0, 1).
      rtol: explicit relative budget (allowed = atol + rtol × scale) instead
        of the round-off-derived one.
      atol: explicit absolute budget (the same rule).
      order: 2 also checks the derivative of your backward with respect to the
        primals and dy (what ``jax.grad`` of ``jax.grad`` takes through a
        ``custom_vjp`` layer) against float64 ``jax.vjp`` of ``jax.vjp(forward)``:
        extra rows "<primal> (order 2)" and "dy (order 2)"; the backward must
        then be written in JAX (traceable).

    Returns:
      A ``Report`` (mode "vjp"): one row per primal (per leaf for pytrees),
      ``primal`` the first wrong one, ``suspect`` "backward", "nonfinite",
      "second order" (values right, their derivative wrong) or "structure"
      (values right, a finding of ``diagnosis`` wrong); ``worst_example`` is the
      trial (cotangent) index.

    Example:
      >>> import jax.numpy as jnp, jaxbp
      >>> fwd = lambda W, x: jnp.tanh(x @ W)
      >>> def bwd(W, x, dy):
      ...     dz = dy * (1 - jnp.tanh(x @ W) ** 2)
      ...     return jnp.outer(x, dz), W @ dz
      >>> jaxbp.check_vjp(fwd, bwd, jnp.ones((3, 2)) / 3, jnp.arange(3.0)).ok
      True
    """
    if not callable(forward) or not callable(backward):
        raise TypeError("forward and backward: expected functions")
    if not primals:
        raise ValueError("primals: expected at least one array to differentiate at")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials: expected a positive int, got {trials!r}")
    if order not in (1, 2) or isinstance(order, bool):
        raise ValueError(f"order: expected 1 or 2, got {order!r}")
    rtol, atol = _check_tolerance("rtol", rtol), _check_tolerance("atol", atol)
    primals = _float_primals(primals)
    key = jax.random.key(0) if key is None else key
    dtype = np.dtype(jnp.result_type(*jax.tree.leaves(primals)))
    with numpy_code_errors("forward", "jaxbp.check_layer (a forward/backward pair with a "
                           "cache) or jaxbp.check_loss"):
        y, pullback = jax.vjp(forward, *primals)
    keys = jax.random.split(key, trials)
    y_leaves, y_tree = jax.tree.flatten(y)
    dys = [jax.tree.unflatten(y_tree, [jax.random.normal(k2, jnp.shape(leaf), jnp.result_type(leaf))
                                       for k2, leaf in zip(jax.random.split(k, len(y_leaves)),
                                                           y_leaves)])
           for k in keys]
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), primals)
        _, pullback64 = jax.vjp(forward, *p64)
        truth = [_leaves64(pullback64(jax.tree.map(lambda d: jnp.asarray(d, jnp.float64), dy)))
                 for dy in dys]
    own = [_leaves64(pullback(dy)) for dy in dys]  # jax.vjp in your dtype: the round-off
    guard = _structural.Guard({"primals": primals}, dys[0], "dy")
    template = jax.tree.map(lambda x: x, primals)  # new containers: what a backward changes
    yours = []
    for t, dy in enumerate(dys):
        try:
            out = backward(*primals, dy)
        except Exception as e:
            raise BackpropError(f"backward raised {type(e).__name__} on trial {t} (called as "
                                f"backward(*primals, dy) with dy of shape "
                                f"{jax.tree.map(jnp.shape, dy)}): {e}") from e
        yours.append(_leaves64(_as_cotangents(out, template)))
    names = _leaf_names(template)
    rows, arrays = [], []  # arrays: (yours, truth) per row, for the diagnosis
    for j, (i, name) in enumerate(names):
        want = np.stack([tr[j] for tr in truth])
        got = np.stack([yo[j] for yo in yours])
        observed = max(_max_abs(o[j] - tr[j]) for o, tr in zip(own, truth))
        scale = _max_abs(want)
        rows.append(_row(None, name, got, want, _budget(observed, scale, dtype, 1, rtol, atol),
                         per_example=True))
        arrays.append((got, want))
    index = [i for i, _ in names]  # each row's primal
    findings = guard.check(lambda dy: _leaves64(_as_cotangents(backward(*primals, dy), template)),
                           yours[0], [r.parameter for r in rows], [r.budget_abs for r in rows])
    if order == 2:
        second = order2_rows(forward, backward, primals, dys, jax.random.fold_in(key, 2), dtype,
                             _as_cotangents, [name for _, name in names], rtol, atol)
        rows += list(second)  # the primal leaves again, then dy's leaves (primal None)
        index = index + index + [None] * (len(second) - len(index))
    common = dict(rows=tuple(rows), mode="vjp", dtype=dtype.name, batch_size=trials,
                  network=getattr(forward, "__name__", repr(forward)), diagnosis=merge(findings))
    bad = [(i, r) for i, r in zip(index, rows) if not r.ok]
    if not bad:
        return _structure_verdict(findings, common)
    if all(r.parameter.endswith(SUFFIX) for _, r in bad) and not any(r.nonfinite for _, r in bad):
        primal, row = bad[0]
        note = (f"your backward's values are right, but its derivative is not: {row.parameter} "
                f"worst entry {row.worst_entry} at trial {row.worst_example}, error "
                f"{row.max_abs_error:.3g} (relative {row.max_rel_error:.3g})")
        return Report(ok=False, first_bad_layer=None, suspect="second order", primal=primal,
                      candidates=("second order",), notes=(note,), **common)
    primal, row = bad[0]
    suspect = "nonfinite" if any(r.nonfinite for _, r in bad) else "backward"
    if suspect == "nonfinite":
        primal, row = next((i, r) for i, r in bad if r.nonfinite)
    note = (f"{row.parameter}: worst entry {row.worst_entry} at trial {row.worst_example}, "
            f"error {row.max_abs_error:.3g} (relative {row.max_rel_error:.3g})")
    report = Report(ok=False, first_bad_layer=None, suspect=suspect, primal=primal,
                    candidates=(suspect,), notes=(note,), **common)
    return _diagnose_reports.for_vjp(report, forward, primals, dys, arrays)


def _structure_verdict(findings, common) -> Report:
    """Every value within budget: ok, unless a structural finding says the backward is wrong."""
    failing = _structural.failing(findings)
    where = failing[0].where if failing else ""
    primal = int(where[len("primals["):where.index("]")]) if where.startswith("primals[") else None
    return _structural.apply(Report(ok=True, first_bad_layer=None, suspect=None, **common),
                             findings, primal=primal)


def _leaves64(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _leaf_names(primals):
    names = []
    for i, p in enumerate(primals):
        paths = jax.tree_util.tree_flatten_with_path(p)[0]
        for path, _ in paths:
            names.append((i, f"primals[{i}]{jax.tree_util.keystr(path)}"))
    return names


def custom_vjp(forward: Callable, backward: Callable, *, name: Optional[str] = None) -> Callable:
    """``forward`` whose gradient uses your ``backward``, via ``jax.custom_vjp``.

    Inside ``with jaxbp.checking() as log:`` every call of ``backward`` is also
    compared with ``jax.vjp(forward)`` at the same primals and cotangent (see
    ``jaxbp.checking``); outside it the layer is the plain ``jax.custom_vjp``.

    Higher derivatives. With a backward written in JAX, reverse-over-reverse
    (``jax.jacrev(jax.grad(loss))``, ``jax.grad(jax.grad(...))``) and
    forward-over-reverse (``jax.hessian``, ``jax.jacfwd(jax.grad(loss))``)
    differentiate your backward as ordinary JAX code: check that derivative with
    ``check_vjp(..., order=2)``. Forward mode applied to the layer directly
    (``jax.jvp``, ``jax.jacfwd`` or ``jax.linearize`` of ``loss`` itself, not of
    its gradient) is refused by JAX: a ``custom_vjp`` function has no JVP rule.
    Use ``jax.jacrev`` there, or ``jax.custom_jvp`` for a layer that needs
    forward mode.

    Args:
      forward: (*primals) -> y.
      backward: (*primals, dy) -> one cotangent per primal (check it first with
        ``check_vjp``). Cotangents are cast to their primal's dtype.
      name: the layer's name in a ``checking`` log (default ``forward.__name__``).

    Returns:
      A function like ``forward``; ``jax.grad``, ``jax.vjp`` and ``jax.jit``
      of anything built from it call ``backward`` for the backward pass.

    Example:
      >>> import jax, jax.numpy as jnp, jaxbp
      >>> square = jaxbp.custom_vjp(lambda x: x * x, lambda x, dy: (2 * x * dy,))
      >>> float(jax.grad(lambda x: square(x).sum())(jnp.array([3.0])).sum())
      6.0
    """
    if not callable(forward) or not callable(backward):
        raise TypeError("forward and backward: expected functions")
    if name is None:
        name = getattr(forward, "__name__", None) or repr(forward)
    if not isinstance(name, str):
        raise TypeError(f"name: expected a string or None, got {type(name).__name__}")
    wrapped = jax.custom_vjp(forward)

    def fwd(*primals):
        return forward(*primals), primals

    def bwd(primals, dy):
        cts = _as_cotangents(backward(*primals, dy), primals)
        cts = tuple(jax.tree.map(lambda c, p: jnp.asarray(c).astype(jnp.result_type(p)), ct, p)
                    for ct, p in zip(cts, primals))
        if is_checking():  # read while tracing: part of the jit key, so traced apart
            checked_bwd(name, forward, primals, dy, cts)
        return cts

    wrapped.defvjp(fwd, bwd)
    return functools.wraps(forward)(lambda *primals: wrapped(*primals))
