"""The truth of the NumPy checks without a compile per primitive: JAX's small eager programs
run as NumPy while a check computes its truth.

``check_layer``, ``check_loss`` and ``check_modules`` differentiate the user's NumPy forward
with eager ``jax.vjp``: every primitive the traced forward and its pullback apply (thousands
for a naive conv) runs on its own, and each new (primitive, shapes, parameters) is a new XLA
program, lowered and compiled once (20-60 ms each on CPU; 40-50 of them for a naive conv).
While ``numpy_primitives()`` is active, the primitives of the table below run as the same
float64 (or float32) NumPy arithmetic instead: ``add`` is ``np.add``, ``dot_general`` an
``np.einsum``, ``dynamic_slice`` a clamped slice, a ``jit`` of table primitives (``jnp.pad``,
``jnp.where``) its body evaluated eagerly. Results agree with XLA's to round-off (the order
of a sum, an ulp of ``exp``); nothing is approximated. A primitive outside the table, one
with a weak-typed operand or under any transformation other than eager evaluation runs as
JAX runs it. The table is the semantics of each primitive in ``jax.lax``'s documentation.

The primitives' ``impl`` is swapped for the duration of the truth and restored in
``finally`` (process-wide, like ``as_jax``'s name swap: not thread-safe).
"""

from __future__ import annotations

import contextlib
import string

import jax
import numpy as np
from jax import lax
from jax.extend import core as jex_core

try:  # where jax keeps the jit primitive and the staging primitive (private names)
    from jax._src.pjit import jit_p as _JIT_P
except ImportError:  # pragma: no cover - other jax versions: jit bodies run as jax runs them
    _JIT_P = None
try:
    from jax._src.core import stage_p as _STAGE_P
except ImportError:  # pragma: no cover
    _STAGE_P = None


def _clamped(starts, operand_shape, sizes):
    return tuple(int(min(max(int(s), 0), n - k)) for s, n, k in zip(starts, operand_shape, sizes))


def _dynamic_slice(x, *starts, slice_sizes):
    s = _clamped(starts, x.shape, slice_sizes)
    return x[tuple(slice(a, a + k) for a, k in zip(s, slice_sizes))]


def _dynamic_update_slice(x, update, *starts):
    s = _clamped(starts, x.shape, update.shape)
    out = x.copy()
    out[tuple(slice(a, a + k) for a, k in zip(s, update.shape))] = update
    return out


def _broadcast_in_dim(x, *dyn, shape, broadcast_dimensions, sharding=None):
    if dyn:
        raise NotImplementedError
    kept = [1] * len(shape)
    for axis, n in zip(broadcast_dimensions, x.shape):
        kept[axis] = n
    return np.broadcast_to(x.reshape(kept), shape)


def _dot_general(a, b, *, dimension_numbers, preferred_element_type=None, **_):
    (ca, cb), (ba, bb) = dimension_numbers
    letters = iter(string.ascii_letters)
    sa = [next(letters) for _ in range(a.ndim)]
    sb = [next(letters) for _ in range(b.ndim)]
    for i, j in zip(ca, cb):
        sb[j] = sa[i]
    for i, j in zip(ba, bb):
        sb[j] = sa[i]
    out = ([sa[i] for i in ba] + [sa[i] for i in range(a.ndim) if i not in ca and i not in ba]
           + [sb[j] for j in range(b.ndim) if j not in cb and j not in bb])
    y = np.einsum(f"{''.join(sa)},{''.join(sb)}->{''.join(out)}", a, b)
    return y if preferred_element_type is None else y.astype(preferred_element_type)


def _pad(x, value, *, padding_config):
    if any(interior for _, _, interior in padding_config):
        raise NotImplementedError
    grown = [(max(lo, 0), max(hi, 0)) for lo, hi, _ in padding_config]
    y = np.pad(x, grown, constant_values=value) if any(map(any, grown)) else x
    return y[tuple(slice(max(-lo, 0), y.shape[k] - max(-hi, 0))
                   for k, (lo, hi, _) in enumerate(padding_config))]


def _slice(x, *, start_indices, limit_indices, strides):
    return x[tuple(slice(a, b, s) for a, b, s in zip(
        start_indices, limit_indices, strides or (1,) * x.ndim))]


def _select_n(which, *cases):
    if which.dtype == np.bool_:
        return np.where(which, cases[1], cases[0]) if len(cases) == 2 else cases[0]
    return np.choose(which, np.broadcast_arrays(*cases))


def _convert(x, *, new_dtype, weak_type=False, sharding=None):
    if weak_type:
        raise NotImplementedError
    return np.asarray(x).astype(new_dtype)


def _argmax(x, *, axes, index_dtype):
    return np.argmax(x, axis=axes[0]).astype(index_dtype)


def _argmin(x, *, axes, index_dtype):
    return np.argmin(x, axis=axes[0]).astype(index_dtype)


def _float_only(fn):
    def run(*args, **params):
        if not all(np.issubdtype(a.dtype, np.inexact) for a in args):
            raise NotImplementedError  # integer division and powers round differently
        return fn(*args, **params)
    return run


def _elementwise(fn):
    """An elementwise primitive: ``out_dtype`` casts; any other setting (``accuracy=``)
    leaves the primitive to jax."""
    def run(*args, out_dtype=None, accuracy=None, **params):
        if accuracy is not None:
            raise NotImplementedError
        out = fn(*args, **params)
        return out if out_dtype is None else out.astype(out_dtype)
    return run


_TABLE = {p: _elementwise(f) for p, f in {
    lax.add_p: np.add, lax.sub_p: np.subtract, lax.mul_p: np.multiply,
    lax.div_p: _float_only(np.divide), lax.neg_p: np.negative, lax.max_p: np.maximum,
    lax.min_p: np.minimum, lax.abs_p: np.abs, lax.sign_p: np.sign, lax.exp_p: np.exp,
    lax.log_p: np.log, lax.log1p_p: np.log1p, lax.expm1_p: np.expm1, lax.tanh_p: np.tanh,
    lax.sqrt_p: np.sqrt, lax.rsqrt_p: _float_only(lambda x: 1.0 / np.sqrt(x)),
    lax.logistic_p: _float_only(lambda x: 1.0 / (1.0 + np.exp(-x))),
    lax.pow_p: _float_only(np.power), lax.square_p: np.square,
    lax.integer_pow_p: lambda x, *, y: x ** y if y >= 0 else _float_only(
        lambda v: 1.0 / v ** -y)(x),
    lax.eq_p: np.equal, lax.ne_p: np.not_equal, lax.lt_p: np.less, lax.le_p: np.less_equal,
    lax.gt_p: np.greater, lax.ge_p: np.greater_equal, lax.and_p: np.bitwise_and,
    lax.or_p: np.bitwise_or, lax.not_p: np.invert}.items()}
_TABLE.update({
    lax.reshape_p: lambda x, *d, new_sizes, dimensions=None, sharding=None: (
        np.reshape(x, new_sizes) if not d and dimensions is None else _unsupported()),
    lax.broadcast_in_dim_p: _broadcast_in_dim,
    lax.transpose_p: lambda x, *, permutation: np.transpose(x, permutation),
    lax.squeeze_p: lambda x, *, dimensions: np.squeeze(x, tuple(dimensions)),
    lax.convert_element_type_p: _convert,
    lax.reduce_sum_p: lambda x, *, axes, out_sharding=None: np.sum(x, axis=tuple(axes),
                                                                   dtype=x.dtype),
    lax.reduce_max_p: lambda x, *, axes, out_sharding=None: np.max(x, axis=tuple(axes)),
    lax.reduce_min_p: lambda x, *, axes, out_sharding=None: np.min(x, axis=tuple(axes)),
    lax.argmax_p: _argmax, lax.argmin_p: _argmin, lax.dot_general_p: _dot_general,
    lax.dynamic_slice_p: _dynamic_slice, lax.dynamic_update_slice_p: _dynamic_update_slice,
    lax.slice_p: _slice, lax.pad_p: _pad, lax.select_n_p: _select_n,
    lax.concatenate_p: lambda *xs, dimension: np.concatenate(xs, axis=dimension),
})


def _unsupported():
    raise NotImplementedError


def _host(x):
    """An eager operand as NumPy (no copy on CPU), or None when it must stay with jax."""
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        if getattr(x, "weak_type", False) or not isinstance(x.dtype, np.dtype):
            return None  # weak types promote differently; PRNG keys are not NumPy
        return np.asarray(x)
    if isinstance(x, np.generic):
        return np.asarray(x)
    return None


def _numpy_impl(prim, original):
    fn = _TABLE[prim]

    def impl(*args, **params):
        host = [_host(a) for a in args]
        if any(h is None for h in host):
            return original(*args, **params)
        try:
            out = fn(*host, **params)
        except (NotImplementedError, TypeError, ValueError):  # a setting not in the table
            return original(*args, **params)
        return np.asarray(out, order="C")
    return impl


def _supported(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if eqn.primitive is _JIT_P:
            if not _supported(eqn.params["jaxpr"].jaxpr):
                return False
        elif eqn.primitive not in _TABLE:
            return False
    return True


def _jit_impl(original):
    def impl(*args, jaxpr, **params):
        if not _supported(jaxpr.jaxpr):
            return original(*args, jaxpr=jaxpr, **params)
        return jex_core.jaxpr_as_fun(jaxpr)(*args)  # each equation through the table
    return impl


def _stage_impl(original):
    def impl(x):
        h = _host(x)
        return original(x) if h is None else jax.device_put(h)
    return impl


@contextlib.contextmanager
def few_optimizations():
    """XLA's optimization passes off while the check compiles what the table leaves to jax
    (the cotangents' threefry and ``normal``: ~0.1 s instead of ~2 s on CPU). The flag is
    read when a program is compiled; the user's setting is restored in ``finally``."""
    before = bool(jax.config.read("jax_disable_most_optimizations"))
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)


@contextlib.contextmanager
def numpy_primitives():
    """While active, the table's primitives evaluate eagerly as NumPy (see the module), and
    the rest compiles with ``few_optimizations``."""
    saved = [(p, p.impl) for p in _TABLE]
    saved += [(p, p.impl) for p in (_JIT_P, _STAGE_P) if p is not None]
    try:
        for p, original in saved:
            if p is _JIT_P:
                p.impl = _jit_impl(original)
            elif p is _STAGE_P:
                p.impl = _stage_impl(original)
            else:
                p.impl = _numpy_impl(p, original)
        with few_optimizations():
            yield
    finally:
        for p, original in saved:
            p.impl = original
