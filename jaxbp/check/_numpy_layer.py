"""``check_layer``: a NumPy layer pair with a cache (CS231n's convention) against ``jax.vjp``."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.bridge._as_jax import call as _as_jax_call, check_scope
from jaxbp.check import _numpy_common as common, _structural
from jaxbp.check._compare import BackpropError, check_tolerance
from jaxbp.check._diagnose_numpy import for_numpy
from jaxbp.check._numpy_fd import fd_pairs
from jaxbp.check._numpy_eval import few_optimizations, numpy_primitives
from jaxbp.check._numpy_report import numpy_report
from jaxbp.check._sequence import locate_gates, locate_time


def _split(result, what: str):
    if not isinstance(result, tuple) or len(result) < 2:
        raise TypeError(f"{what}: expected forward(*inputs) to return its outputs followed by "
                        f"a cache, e.g. (out, cache); got {type(result).__name__}")
    return tuple(result[:-1]), result[-1]


def _resolve_wrt(wrt, inputs, names) -> list:
    if wrt is None:
        idx = [i for i, x in enumerate(inputs) if common.is_float_array(x)]
        if not idx:
            raise TypeError("inputs: none is a floating-point array; nothing to differentiate")
        return idx
    items = [wrt] if isinstance(wrt, (int, str)) else list(wrt)
    idx = []
    for item in items:
        if isinstance(item, str):
            if item not in names:
                raise ValueError(f"wrt: {item!r} is not a parameter of forward ({names})")
            item = names.index(item)
        if not isinstance(item, int) or not 0 <= item < len(inputs):
            raise ValueError(f"wrt: expected input indices in [0, {len(inputs)}) or names, got "
                             f"{item!r}")
        if not common.is_float_array(inputs[item]):
            raise TypeError(f"wrt: input {names[item]} is not a floating-point array")
        idx.append(item)
    return idx


def check_layer(forward: Callable, backward: Callable, *inputs, wrt=None,
                time_axis: Optional[int] = None, gates: Optional[tuple] = None, trials: int = 3,
                key: Optional[jax.Array] = None, rtol: Optional[float] = None,
                atol: Optional[float] = None, scope="auto"):
    """Checks a NumPy layer pair with a cache against float64 ``jax.vjp`` of its forward.

    ``forward(*inputs)`` returns its outputs followed by a cache (``(out, cache)``, or
    ``(next_h, next_c, cache)``); ``backward(*douts, cache)`` returns one gradient per
    checked input, in input order (a bare array for one). For random cotangents dout
    (``trials`` of them) the truth is dout · ∂out/∂input by ``jax.vjp`` of
    ``jaxbp.as_jax(forward)`` in float64 (also with JAX's 64-bit mode off), once the traced
    forward has reproduced the NumPy outputs to round-off. When the forward cannot be traced
    (``float(x)``, ``.item()``, ``math.exp`` of an entry, ``np.vectorize``) or does not
    reproduce, the report says why and the truth is float64 central differences of the
    NumPy forward (``report.truth``).

    Speed: the forward runs once as NumPy and once traced by eager ``jax.vjp`` (JAX applies
    each NumPy call as it comes; loops are not compiled as one program). Eager JAX would
    compile a program per new (primitive, shapes), 40-50 for a naive conv; instead, while
    the truth is computed, the common ``jax.lax`` primitives run as the same NumPy
    arithmetic (``jaxbp.check._numpy_eval``: equal to XLA's to round-off, no compile), element
    writes in loops share one ``dynamic_update_slice``, and what is still compiled (the
    cotangents' ``jax.random.normal``) compiles with XLA's optimizations off. At course sizes
    the first call in a process takes ~1 s (naive conv on x (2, 3, 5, 5), w (3, 3, 3, 3):
    1.3 s, max-pool, RNN, batch norm 0.9-1.1 s, on 2 busy CPU cores), a repeat 0.02-0.5 s.

    Args:
      forward: ``forward(*inputs) -> (*outputs, cache)``, plain NumPy.
      backward: ``backward(*douts, cache) -> gradients`` of the checked inputs.
      *inputs: forward's arguments: arrays, dicts (``bn_param``), ints.
      wrt: which inputs backward returns gradients for: indices or parameter names. By
        default every floating-point array input, in order.
      time_axis: for sequence inputs (N, T, ...): the time axis (1); a wrong input gets
        ``report.time_step``, the latest wrong step.
      gates: names of equal blocks along the last axis of the weights, e.g. ("i", "f",
        "o", "g"); a wrong weight gets ``report.gate``.
      trials: how many random cotangents.
      key: PRNG key for the cotangents (default ``jax.random.key(0)``).
      rtol, atol: explicit budget (allowed = atol + rtol × scale) instead of round-off.
      scope: modules whose NumPy names are routed (see ``jaxbp.as_jax``); "auto" is every
        loaded module of your own code.

    Returns:
      A ``Report`` (mode "layer"): a row per checked input named by forward's parameter
      names ("x", "w", "b"), ``first_bad`` the first wrong one, ``truth`` "jax" or "finite
      differences".

    Raises:
      BackpropError: backward raised or returned the wrong number or shapes of gradients.

    Example:
      >>> import numpy as np, jaxbp
      >>> def forward(x, w):
      ...     return x @ w, (x, w)
      >>> def backward(dout, cache):
      ...     x, w = cache
      ...     return dout @ w.T, x.T @ dout
      >>> x, w = np.ones((2, 3)), np.arange(12.0).reshape(3, 4)
      >>> jaxbp.check_layer(forward, backward, x, w).ok
      True
    """
    if not callable(forward) or not callable(backward):
        raise TypeError("forward and backward: expected functions")
    if not inputs:
        raise ValueError("inputs: expected forward's arguments")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials: expected a positive int, got {trials!r}")
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    scope = check_scope(scope)
    names = common.parameter_names(forward, len(inputs))
    idx = _resolve_wrt(wrt, inputs, names)
    inputs = tuple(np.asarray(x) if isinstance(x, jax.Array) else x for x in inputs)
    state = np.random.get_state()

    def plain(values):
        np.random.set_state(state)
        return _split(forward(*common.fresh(values)), "forward")

    outs, cache = plain(inputs)
    after = np.random.get_state()
    dtype = np.result_type(*[inputs[i].dtype for i in idx])
    keys = jax.random.split(jax.random.key(0) if key is None else key, trials)
    with jax.enable_x64(True), few_optimizations():
        douts = [[np.asarray(jax.random.normal(jax.random.fold_in(k, j), np.shape(y),
                                               jnp.float64)) for j, y in enumerate(outs)]
                 for k in keys]
    yours = []
    for t in range(trials):
        dy = [d.astype(np.result_type(y)) for d, y in zip(douts[t], outs)]
        got = common.call_backward(backward, (*dy, cache), len(idx))
        for g, i in zip(got, idx):
            if np.shape(g) != np.shape(inputs[i]):
                raise BackpropError(f"backward: the gradient of {names[i]} has shape "
                                    f"{np.shape(g)}; expected {np.shape(inputs[i])} like "
                                    f"{names[i]}")
        yours.append([common.as_float64(g) for g in got])
    yours = [np.stack([y[k] for y in yours]) for k in range(len(idx))]
    notes, truth_kind = [], "jax"
    try:
        pairs = _jax_pairs(forward, inputs, idx, names, douts, yours, outs, dtype, state, scope)
    except _NoTruth as e:
        notes.append(f"{e}; the truth is float64 central differences of the NumPy forward")
        truth_kind = "finite differences"

        def run(moved):
            values = list(inputs)
            for k, i in enumerate(idx):
                values[i] = moved[k]
            return plain(values)[0]

        flat = np.stack([np.concatenate([d.ravel() for d in dt]) for dt in douts])
        pairs = fd_pairs(run, [inputs[i] for i in idx], [names[i] for i in idx], flat, yours,
                         dtype=dtype)
    rows = common.compare(pairs, dtype=dtype, rtol=rtol, atol=atol,
                          fd=truth_kind != "jax")
    time_step, gate = None, ()
    bad = next((k for k, r in enumerate(rows) if not r.ok), None)
    if bad is not None and pairs[bad].truth.shape == pairs[bad].yours.shape:
        p, r = pairs[bad], rows[bad]
        if time_axis is not None and p.yours.ndim >= 3:
            loc = locate_time(p.yours, p.truth, axis=time_axis + 1, budget_abs=r.budget_abs)
            if loc is not None:
                time_step = loc.time_step
                notes.append(f"{p.name}: {loc.message}")
        if gates:
            wrong = [(k, rr) for k, rr in enumerate(rows) if not rr.ok]
            for k, rr in wrong:
                found = locate_gates(pairs[k].yours, pairs[k].truth, gates=tuple(gates),
                                     budget_abs=rr.budget_abs)
                if found and pairs[k].yours.shape[-1] != np.shape(inputs[idx[0]])[-1]:
                    gate = found
                    notes.append(f"{pairs[k].name}: the error is in gate block(s) "
                                 f"{', '.join(found)}")
                    break
    report = numpy_report(rows, mode="layer", dtype=dtype, trials=trials, truth=truth_kind,
                          network=getattr(forward, "__name__", repr(forward)), notes=notes,
                          time_step=time_step, gate=gate)
    report = _diagnose_layer(report, pairs, forward, inputs, idx, names, douts, state, scope,
                             truth_kind, time_axis)
    np.random.set_state(after)
    dout = [d.astype(np.result_type(y)) for d, y in zip(douts[0], outs)]  # trial 0's
    return _structural.apply(report, _structural.host_layer_findings(
        backward, dout, cache, [y[0] for y in yours], rows))  # two more backward calls


def _diagnose_layer(report, pairs, forward, inputs, idx, names, douts, state, scope,
                    truth_kind, time_axis):
    """The report's diagnosis (only when a row failed): the traced forward's structure."""
    if report.ok:
        return report

    fn = _traced_forward(forward, inputs, idx, state, scope)
    first = np.shape(inputs[idx[0]])
    sizes = {"B": int(first[0])} if first else {}
    if time_axis is not None and len(first) > time_axis:
        sizes["T"] = int(first[time_axis])
    return for_numpy(report, pairs, labels=[p.name for p in pairs],
                     fn=fn if truth_kind == "jax" else None,
                     leaves=[inputs[i] for i in idx], leaf_of=list(range(len(idx))),
                     cotangents=[tuple(d) for d in douts], sizes=sizes, time_axis=time_axis)


class _NoTruth(Exception):
    """The traced forward is not usable as the truth (why, in the message)."""


def _traced_forward(forward, inputs, idx, state, scope):
    """The forward's outputs as a function of the checked inputs, run through ``as_jax``.

    The other inputs are fresh copies and NumPy's random state is reset each call, so a
    seeded mask is the one the plain run drew.
    """
    def f(*w):
        values = common.fresh(list(inputs))
        for k, i in enumerate(idx):
            values[i] = w[k]
        np.random.set_state(state)
        return _split(_as_jax_call(forward, values, {}, scope=scope), "forward")[0]
    return f


def _jax_pairs(forward, inputs, idx, names, douts, yours, outs, dtype, state, scope):
    f = _traced_forward(forward, inputs, idx, state, scope)

    def vjp_in(dt):
        primals = [jnp.asarray(inputs[i], dt) for i in idx]
        return jax.vjp(f, *primals)

    with jax.enable_x64(True), numpy_primitives():
        try:
            traced, pullback = vjp_in(jnp.float64)
        except Exception as e:
            raise _NoTruth(f"the forward could not be traced: {common.why_untraceable(e)}") from e
        problem = common.reproduce(traced, outs, dtype, "forward")
        if problem:
            raise _NoTruth(problem)
        truth = [pullback(tuple(jnp.asarray(d) for d in dt)) for dt in douts]
        own = None
        if np.dtype(dtype) != np.float64:
            try:
                _, pb_own = vjp_in(dtype)
                own = [pb_own(tuple(jnp.asarray(d, np.result_type(y)) for d, y in zip(dt, outs)))
                       for dt in douts]
            except Exception:
                own = None
    pairs = []
    for k, i in enumerate(idx):
        t = np.stack([common.as_float64(tr[k]) for tr in truth])
        o = None if own is None else np.stack([common.as_float64(ow[k]) for ow in own])
        pairs.append(common.Pair(names[i], yours[k], t, o))
    return pairs
