"""The dispatching namespace: ``np`` as the user's code sees it while ``as_jax`` runs.

``NUMPY.exp(x)`` calls ``numpy.exp`` when every argument is concrete (plain NumPy: shapes stay
ints, dtypes and round-off are NumPy's) and ``jax.numpy.exp`` when one is traced; array
results come back as ``BArray`` so that NumPy's in-place writes keep working. ``np.random``
is NumPy's own (the host's generator: seeds and masks match a plain run); ufunc methods
(``np.add.at``, ``.reduce``, ``.outer``) and ``out=`` become functional updates.
"""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy

from jaxbp.bridge._array import BArray, _traced_any, unwrap, wrap
from jaxbp.bridge._values import STATE, UntraceableError, is_traced

# Host-only: they call Python on each entry, which needs concrete numbers.
_HOST_ONLY = frozenset({"vectorize", "frompyfunc", "fromfunction", "piecewise"})


def _wrap_result(result):
    if isinstance(result, tuple) and type(result) is tuple:
        return tuple(_wrap_result(r) for r in result)
    if isinstance(result, list):
        return [_wrap_result(r) for r in result]
    return wrap(result)


def _note(error: BaseException, call: str):
    if getattr(error, "jaxbp_numpy_call", None) is None:
        try:
            error.jaxbp_numpy_call = call
        except Exception:  # an exception type without a __dict__
            pass


class _Function:
    """``np.<name>``: NumPy on concrete arguments, jax.numpy on traced ones."""

    def __init__(self, prefix: str, name: str, np_fn, jnp_fn):
        self.__name__ = name
        self._call, self._np, self._jnp = f"{prefix}.{name}", np_fn, jnp_fn

    def __repr__(self):
        return f"<{self._call} under jaxbp.as_jax>"

    def __call__(self, *args, **kwargs):
        out = kwargs.pop("out", None)
        raw, raw_kw = unwrap(args), {k: unwrap(v) for k, v in kwargs.items()}
        traced = _traced_any(raw) or _traced_any(tuple(raw_kw.values()))
        result = self._run(self._jnp if traced and self._jnp is not None else self._np,
                           raw, raw_kw)
        result = _wrap_result(result)
        if out is not None:
            return _into(out, result, self._call)
        return result

    def _run(self, fn, args, kwargs):
        previous, STATE.call = STATE.call, self._call
        try:
            return fn(*args, **kwargs)
        except BaseException as e:
            _note(e, self._call)
            raise
        finally:
            STATE.call = previous


def _into(out, result, call):
    if isinstance(out, tuple) and len(out) == 1:
        out = out[0]
    if isinstance(out, BArray):
        out._put(result)
        return out
    if is_traced(unwrap(result)):
        raise UntraceableError(f"{call}(..., out=a NumPy array created outside the call)")
    out[...] = unwrap(result)
    return out


class _Ufunc(_Function):
    """A ufunc: call, plus ``at`` (in place), ``reduce``, ``outer``, ``accumulate``."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        np_method = getattr(self._np, name)
        if not callable(np_method):
            return np_method
        return _Function(self._call, name, np_method, getattr(self._jnp, name, None))

    def at(self, a, indices, b=None):
        idx, rb = unwrap(indices), unwrap(b)
        value = unwrap(a)
        extra = () if b is None else (rb,)
        if is_traced(value) or _traced_any((idx,) + extra):
            method = getattr(self._jnp, "at", None)
            if method is None:
                raise UntraceableError(f"{self._call}.at", "jax.numpy has no such ufunc method")
            new = self._run(lambda: method(jnp.asarray(value), idx, *extra, inplace=False),
                            (), {})
        else:
            new = numpy.array(value)
            self._run(lambda: self._np.at(new, idx, *extra), (), {})
        if isinstance(a, BArray):
            a._put(new)
        elif is_traced(new):
            raise UntraceableError(f"{self._call}.at into a NumPy array created outside the call")
        else:
            a[...] = new


def _same(a, dtype=None, **kwargs):
    """``np.asarray(a)``: the array itself when nothing changes (writes go through)."""
    if isinstance(a, BArray) and (dtype is None or numpy.dtype(dtype) == a.dtype) and not kwargs:
        return a
    return None


class Namespace(types.ModuleType):
    """A module-like object standing in for ``numpy`` (or ``numpy.linalg``, ``numpy.fft``)."""

    def __init__(self, np_module, jnp_module, prefix: str):
        super().__init__(np_module.__name__)
        self._np_module, self._jnp_module, self._prefix = np_module, jnp_module, prefix

    def __repr__(self):
        return f"<{self._prefix} routed to jax.numpy by jaxbp.as_jax>"

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = getattr(self._np_module, name)
        routed = self._route(name, value)
        object.__setattr__(self, name, routed)  # cached
        return routed

    def _route(self, name, value):
        if name == "ndarray":
            return ndarray
        if name == "random" or isinstance(value, type) or not callable(value):
            if isinstance(value, types.ModuleType) and name in ("linalg", "fft"):
                return Namespace(value, getattr(self._jnp_module, name), f"np.{name}")
            return value
        jnp_fn = None if name in _HOST_ONLY else getattr(self._jnp_module, name, None)
        if isinstance(value, numpy.ufunc):
            return _Ufunc(self._prefix, name, value, jnp_fn)
        fn = _Function(self._prefix, name, value, jnp_fn)
        special = _SPECIAL.get(name) if self._prefix == "np" else None
        if special is None:
            return fn

        def call(*args, **kwargs):
            result = special(*args, **kwargs)
            if result is _NONE:
                return None
            return fn(*args, **kwargs) if result is None else result

        call.__name__ = name
        return call


_NONE = object()  # a special call that returns None


class _NdarrayType(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, (numpy.ndarray, BArray))

    def __subclasscheck__(cls, sub):
        return issubclass(sub, (numpy.ndarray, BArray))


class ndarray(metaclass=_NdarrayType):
    """``np.ndarray`` for ``isinstance`` tests: NumPy arrays and ``BArray`` alike."""


def _shape(a):
    return tuple(a.shape) if isinstance(a, BArray) else numpy.shape(a)


_SPECIAL = {
    "asarray": _same,
    "asanyarray": _same,
    "ascontiguousarray": _same,
    "array": lambda a, *args, copy=True, **kw: (a if copy is False and not args and not kw
                                                else None) if isinstance(a, BArray) else None,
    "copy": lambda a, *args, **kw: a.copy() if isinstance(a, BArray) and not args else None,
    "reshape": lambda a, *shape, **kw: (a.reshape(*shape) if isinstance(a, BArray) and not kw
                                        else None),
    "transpose": lambda a, axes=None: (a.transpose(*(() if axes is None else (axes,)))
                                       if isinstance(a, BArray) else None),
    "ravel": lambda a, order="C": a.ravel(order) if isinstance(a, BArray) else None,
    "shape": _shape,
    "ndim": lambda a: len(_shape(a)),
    "size": lambda a, axis=None: (int(numpy.prod(_shape(a))) if axis is None
                                  else _shape(a)[axis]),
    "copyto": lambda dst, src, **kw: _into(dst, wrap(unwrap(src)), "np.copyto") and _NONE,
}


NUMPY = Namespace(numpy, jnp, "np")
