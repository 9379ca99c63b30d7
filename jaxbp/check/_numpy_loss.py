"""``check_loss``: "loss and gradients in one function", against float64 ``jax.grad``."""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.bridge._as_jax import call as _as_jax_call, check_scope
from jaxbp.check import _numpy_common as common
from jaxbp.check._compare import BackpropError, check_tolerance
from jaxbp.check._diagnose_numpy import for_numpy
from jaxbp.check._numpy_fd import fd_pairs
from jaxbp.check._numpy_eval import numpy_primitives
from jaxbp.check._numpy_report import numpy_report


def _leaves(params):
    """(names, arrays, rebuild) for an array, a tuple/list or a dict of arrays."""
    if isinstance(params, dict):
        keys = list(params)
        return ([str(k) for k in keys], [params[k] for k in keys],
                lambda values: dict(zip(keys, values)))
    if isinstance(params, (tuple, list)):
        kind = type(params)
        return ([f"params[{i}]" for i in range(len(params))], list(params),
                lambda values: kind(values))
    return ["params"], [params], lambda values: values[0]


def _match(grads, params, names) -> list:
    """Your gradients in params' order (a dict may key ``dW1`` for ``W1``)."""
    if isinstance(params, dict):
        if not isinstance(grads, dict):
            raise BackpropError(f"fn returned {type(grads).__name__} as grads; expected a dict "
                                f"keyed like params ({list(params)})")
        out = []
        for k in params:
            for cand in (k, f"d{k}", f"d_{k}", f"grad_{k}", f"{k}_grad"):
                if cand in grads:
                    out.append(grads[cand])
                    break
            else:
                raise BackpropError(f"grads: no entry for parameter {k!r} (looked for {k!r}, "
                                    f"'d{k}'); got keys {list(grads)}")
        return out
    if isinstance(params, (tuple, list)):
        if not isinstance(grads, (tuple, list)) or len(grads) != len(params):
            raise BackpropError(f"fn returned grads of type {type(grads).__name__}; expected "
                                f"a tuple of {len(params)} arrays like params")
        return list(grads)
    return [grads]


def check_loss(fn: Callable, params, *args, rtol: Optional[float] = None,
               atol: Optional[float] = None, scope="auto"):
    """Checks ``fn(params, *args) -> (loss, grads)`` against float64 ``jax.grad`` of its loss.

    ``grads`` is shaped like ``params`` (an array, a tuple or a dict; a dict keyed ``dW1``
    for ``W1``, as many courses write it, is matched too, and extra entries such as ``dA1``
    are ignored). The truth is ``jax.grad`` of ``jaxbp.as_jax(fn)``'s loss in float64, once
    the traced loss has reproduced the NumPy loss; otherwise float64 central differences.

    Code that keeps its parameters in module globals (min-char-rnn) or on objects is checked
    through a small function that sets them and then calls your code::

        def loss_and_grads(params, inputs, targets, hprev):
            for name, value in params.items():
                setattr(char_rnn, name, value)  # the module's globals
            loss, dWxh, dWhh, dWhy, dbh, dby, _ = char_rnn.lossFun(inputs, targets, hprev)
            return loss, {"Wxh": dWxh, "Whh": dWhh, "Why": dWhy, "bh": dbh, "by": dby}

    Nothing traced is left behind: afterwards the globals hold NumPy arrays.

    Args:
      fn: ``fn(params, *args) -> (loss, grads)``, plain NumPy.
      params: an array, a tuple/list or a dict of float arrays.
      *args: fn's other arguments (data, labels, state), held fixed.
      rtol, atol: explicit budget (allowed = atol + rtol × scale) instead of round-off.
      scope: modules whose NumPy names are routed (see ``jaxbp.as_jax``).

    Returns:
      A ``Report`` (mode "loss") with a row per parameter named by its key or position.

    Raises:
      BackpropError: fn raised, or its grads do not match params.

    Example:
      >>> import numpy as np, jaxbp
      >>> def loss_and_grads(params, x):
      ...     r = x @ params["W"] - 1.0
      ...     return 0.5 * np.sum(r ** 2), {"dW": x.T @ r}
      >>> jaxbp.check_loss(loss_and_grads, {"W": np.ones((3, 2))}, np.eye(3)).ok
      True
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a function (params, *args) -> (loss, grads), got "
                        f"{type(fn).__name__}")
    rtol, atol = check_tolerance("rtol", rtol), check_tolerance("atol", atol)
    scope = check_scope(scope)
    names, arrays, rebuild = _leaves(params)
    for name, a in zip(names, arrays):
        if not common.is_float_array(a):
            raise TypeError(f"params: {name} is not a floating-point array "
                            f"({type(a).__name__})")
    arrays = [np.asarray(a) for a in arrays]
    params = rebuild(arrays)
    dtype = np.result_type(*[a.dtype for a in arrays])
    state = np.random.get_state()

    def plain(p):
        np.random.set_state(state)
        out = fn(common.fresh(p), *common.fresh(args))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(f"fn: expected (loss, grads), got {type(out).__name__}")
        return out

    try:
        loss, grads = plain(params)
    except TypeError:
        raise
    except Exception as e:
        raise BackpropError(f"fn raised {type(e).__name__}: {e}") from e
    after = np.random.get_state()
    yours = []
    for name, g, a in zip(names, _match(grads, params, names), arrays):
        if np.shape(g) != a.shape:
            raise BackpropError(f"grads: {name} has shape {np.shape(g)}; expected {a.shape} "
                                f"like params")
        yours.append(common.as_float64(g)[None])
    notes, truth_kind = [], "jax"
    try:
        pairs = _jax_pairs(fn, arrays, rebuild, args, names, yours, loss, dtype, state, scope)
    except _NoTruth as e:
        notes.append(f"{e}; the truth is float64 central differences of the NumPy loss")
        truth_kind = "finite differences"
        pairs = fd_pairs(lambda moved: [plain(rebuild(moved))[0]], arrays, names,
                         np.ones((1, 1)), yours, dtype=dtype)
    rows = common.compare(pairs, dtype=dtype, rtol=rtol, atol=atol, fd=truth_kind != "jax")
    report = numpy_report(rows, mode="loss", dtype=dtype, trials=1, truth=truth_kind,
                          network=getattr(fn, "__name__", repr(fn)), notes=notes)
    if not report.ok:
        def loss_of(*leaves):
            np.random.set_state(state)
            out = _as_jax_call(fn, [rebuild(list(leaves)), *common.fresh(args)], {},
                               scope=scope)
            return jnp.reshape(jnp.asarray(out[0]), ())

        lead = [np.shape(a)[0] for a in (*args, *arrays) if np.ndim(a) >= 1]
        report = for_numpy(report, pairs, labels=names,
                           fn=loss_of if truth_kind == "jax" else None, leaves=arrays,
                           leaf_of=list(range(len(arrays))), cotangents=[np.float64(1.0)],
                           sizes={"B": int(lead[0])} if lead else {})
    np.random.set_state(after)
    return report


class _NoTruth(Exception):
    pass


def _jax_pairs(fn, arrays, rebuild, args, names, yours, loss, dtype, state, scope):
    def grad_in(dt):
        def f(leaves):
            np.random.set_state(state)
            out = _as_jax_call(fn, [rebuild(list(leaves)), *common.fresh(args)], {},
                               scope=scope)
            return jnp.reshape(jnp.asarray(out[0]), ())
        return jax.value_and_grad(f)([jnp.asarray(a, dt) for a in arrays])

    with jax.enable_x64(True), numpy_primitives():
        try:
            value, truth = grad_in(jnp.float64)
        except Exception as e:
            raise _NoTruth(f"the loss could not be traced: {common.why_untraceable(e)}") from e
        problem = common.reproduce([value], [loss], dtype, "loss")
        if problem:
            raise _NoTruth(problem)
        own = None
        if np.dtype(dtype) != np.float64:
            try:
                own = grad_in(dtype)[1]
            except Exception:
                own = None
    return [common.Pair(n, y, common.as_float64(t)[None],
                        None if own is None else common.as_float64(own[k])[None])
            for k, (n, y, t) in enumerate(zip(names, yours, truth))]
