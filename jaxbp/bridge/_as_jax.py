"""``as_jax``: run unchanged NumPy code with NumPy routed to ``jax.numpy``."""

from __future__ import annotations

import functools

import jax
import numpy as np

from jaxbp.bridge import _scrub, _swap
from jaxbp.bridge._array import BArray, wrap
from jaxbp.bridge._values import STATE, is_traced

_SCOPES = "None, 'auto', or a list of modules (or module names)"


def check_scope(scope):
    if scope is None or scope == "auto":
        return scope
    if isinstance(scope, (str, bytes)) or not hasattr(scope, "__iter__"):
        raise TypeError(f"scope: expected {_SCOPES}, got {scope!r}")
    return tuple(scope)


def as_jax(fn, *, scope=None):
    """``fn`` with NumPy routed to ``jax.numpy`` while it runs, so jax can differentiate it.

    While ``fn_jax`` runs, the NumPy names in ``fn``'s module (``import numpy as np``,
    ``from numpy import exp``), in the modules of ``scope``, or with ``scope="auto"`` in every
    loaded module that is not a library (nor jaxbp) are swapped for a dispatching namespace:
    a call whose arguments are all concrete is plain NumPy (shape arithmetic stays ints), one
    with a traced argument is ``jax.numpy``'s; ``np.random`` stays NumPy's own (seeds and
    masks match a plain run). Arrays made inside accept NumPy's in-place writes (item and
    slice assignment, ``+=`` on slices, views that write through, boolean masks,
    ``np.add.at``, ``out=``) as functional updates. The names are restored when the call
    returns, raises or is interrupted; afterwards the module globals, dicts and objects the
    call wrote to hold concrete NumPy values (or, without one, what they held before).

    Code that needs a number where jax has a traced value (``float(x)``, ``.item()``,
    ``math.exp`` of an entry, ``np.vectorize``) raises ``jaxbp.bridge.UntraceableError``.
    Not thread-safe: the swap is visible to other threads while the call runs.

    Args:
      fn: a function of NumPy arrays (or a bound method, or a callable object).
      scope: None (``fn``'s module only), "auto", or a list of modules or module names.

    Returns:
      ``fn_jax(*args, **kwargs)``: array arguments may be jax arrays or tracers; array
      results are jax values (traced under a transformation) or NumPy arrays.

    Example:
      >>> import jax, numpy as np, jaxbp
      >>> def f(x):
      ...     out = np.zeros_like(x)
      ...     for i in range(len(x)):
      ...         out[i] = x[i] ** 2
      ...     return out.sum()
      >>> float(jax.grad(jaxbp.as_jax(f))(np.array([1.0, 2.0]))[1])
      4.0
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a function, got {type(fn).__name__}")
    scope = check_scope(scope)

    @functools.wraps(fn)
    def fn_jax(*args, **kwargs):
        return call(fn, args, kwargs, scope=scope)

    fn_jax.jaxbp_numpy = fn
    return fn_jax


def call(fn, args, kwargs, *, scope, extra=()):
    """``fn(*args, **kwargs)`` with NumPy routed (``extra``: more functions whose modules
    are swapped in)."""
    dicts = _swap.namespaces((fn,) + tuple(extra), scope)
    outer = STATE.depth == 0
    snapshots = [(g, dict(g)) for g in dicts] if outer else []
    if outer:
        STATE.buffers = []
    STATE.depth += 1
    saved = _swap.swap(dicts)
    try:
        with jax.numpy_rank_promotion("allow"):
            out = fn(*[_wrap_in(a) for a in args], **{k: _wrap_in(v) for k, v in kwargs.items()})
            return unwrap_out(out)
    finally:
        _swap.restore(saved)
        STATE.depth -= 1
        if outer:
            buffers, STATE.buffers = STATE.buffers, []
            _scrub.settle(buffers)
            _scrub.scrub(snapshots, (args, kwargs, getattr(fn, "__self__", None)))


def _has_traced(x, depth=3) -> bool:
    if is_traced(x):
        return True
    if depth and type(x) in (tuple, list) or (isinstance(x, tuple) and hasattr(x, "_fields")):
        return any(_has_traced(v, depth - 1) for v in x)
    if depth and type(x) is dict:
        return any(_has_traced(v, depth - 1) for v in x.values())
    return False


def _wrap_in(x):
    """An argument as the user's code sees it: arrays as BArray (written copy-on-write)."""
    if is_traced(x) or isinstance(x, (np.ndarray, jax.Array)):
        return wrap(x, owned=False)
    if not _has_traced(x):
        return x
    if type(x) is dict:
        return {k: _wrap_in(v) for k, v in x.items()}
    if hasattr(x, "_fields"):
        return type(x)(*[_wrap_in(v) for v in x])
    return type(x)(_wrap_in(v) for v in x)


def unwrap_out(x):
    """Results as jax values: BArray -> its value, inside tuples, lists and dicts too."""
    if isinstance(x, BArray):
        return x._get()
    if type(x) in (tuple, list):
        return type(x)(unwrap_out(v) for v in x)
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return type(x)(*[unwrap_out(v) for v in x])
    if type(x) is dict:
        return {k: unwrap_out(v) for k, v in x.items()}
    return x
