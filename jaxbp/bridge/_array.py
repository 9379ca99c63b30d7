"""``BArray``: a NumPy-like array that accepts NumPy's in-place writes while jax traces.

A ``BArray`` is a window onto a ``_Buffer`` (the storage) through a chain of view steps
(basic indexing, transposes, reshapes), so ``v = x[0]; v[1] = 2`` writes through to ``x`` as
NumPy does. Storage is a NumPy array while every value written is concrete (then writes are
NumPy's own, in place); the first traced write turns it into a jax value, and each later write
becomes the functional ``x.at[index].set(value)`` on the whole storage. Reads of a view are
cached until the storage changes.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.bridge._storage import _Buffer, _Index, _Transpose, _Reshape, _read_key, _write
from jaxbp.bridge._values import STATE, UntraceableError, concrete, host, is_traced


def _is_basic(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(isinstance(i, (int, np.integer, slice)) or i is Ellipsis for i in items) \
        and not any(isinstance(i, bool) for i in items)


def unwrap(x):
    """The raw value of a BArray; lists and tuples (of arrays) unwrapped inside."""
    if isinstance(x, BArray):
        return x._get()
    if isinstance(x, (list, tuple)) and type(x) in (list, tuple):
        return type(x)(unwrap(v) for v in x)
    return host(x)


def wrap(x, owned: bool = True):
    """A raw result as a BArray (arrays), or as is (scalars, other objects)."""
    if is_traced(x):
        return BArray(_Buffer(x, True))
    if isinstance(x, jax.Array):
        x, owned = host(x), False
    if isinstance(x, np.ndarray):
        return BArray(_Buffer(x, owned and x.base is None))
    return x


def _key(key):
    """An index as NumPy reads it: ranges and lists become integer arrays."""
    if isinstance(key, tuple):
        return tuple(_key_item(k) for k in key)
    return _key_item(key)


def _key_item(k):
    k = unwrap(k)
    if isinstance(k, range):
        return np.arange(k.start, k.stop, k.step)
    if isinstance(k, list):
        return np.asarray(k) if not _traced_any(k) else jnp.asarray(k)
    return k


def _traced_any(values) -> bool:
    return any(is_traced(v) or (isinstance(v, (list, tuple)) and _traced_any(v))
               for v in values)


def _binary(np_op, jnp_op):
    def op(self, other):
        a, b = self._get(), unwrap(other)
        return wrap(jnp_op(a, b) if is_traced(a) or is_traced(b) else np_op(a, b))

    def rop(self, other):
        a, b = self._get(), unwrap(other)
        return wrap(jnp_op(b, a) if is_traced(a) or is_traced(b) else np_op(b, a))

    def iop(self, other):
        self._put(op(self, other))
        return self

    return op, rop, iop


def _unary(np_op, jnp_op):
    def op(self):
        a = self._get()
        return wrap(jnp_op(a) if is_traced(a) else np_op(a))
    return op


# array methods that return a new array the same way on NumPy and jax values
_METHODS = frozenset("""all any argmax argmin argsort astype clip conj cumprod cumsum diagonal dot
    flatten max mean min nonzero prod repeat round squeeze std sum take trace var""".split())


class BArray:
    """A NumPy-like array over NumPy or jax storage that accepts in-place writes."""

    __slots__ = ("_buf", "_ops", "_cache", "_seen", "__weakref__")
    __array_ufunc__ = None  # NumPy arrays and scalars defer their operators to ours
    __array_priority__ = 1000
    __hash__ = None

    def __init__(self, buffer: _Buffer, ops: tuple = ()):
        self._buf, self._ops, self._cache, self._seen = buffer, ops, None, -1

    # ------------------------------------------------------------ storage
    def _get(self):
        buf = self._buf
        if not self._ops:
            return buf.value
        if self._seen != buf.version:
            value = buf.value
            if len(self._ops) == 1 and isinstance(self._ops[0], _Index) and is_traced(value):
                key = _read_key(self._ops[0].index)  # w[f] read again in a loop: cached
                hit = buf.reads.get(key)
                if hit is None:
                    hit = buf.reads[key] = self._ops[0].get(value)
                value = hit
            else:
                for step in self._ops:
                    value = step.get(value)
            self._cache, self._seen = value, buf.version
        return self._cache

    def _put(self, value, ops: tuple = None):
        """Writes ``value`` into this view (or into ``self[ops]``), as NumPy would in place."""
        value = unwrap(value)
        ops = self._ops if ops is None else self._ops + ops
        buf = self._buf
        if len(ops) == 1 and isinstance(ops[0], _Index) and isinstance(ops[0].index, tuple) \
                and buf.write_entry(ops[0].index, value):
            return
        root = buf.value
        if isinstance(root, np.ndarray) and not is_traced(value) and not (
                isinstance(value, (list, tuple)) and _traced_any(value)):
            if not buf.owned:
                root = root.copy()
                buf.value, buf.owned = root, True
            parent = root
            for step in ops[:-1]:
                parent = step.get(parent)
            if parent is root or (isinstance(parent, np.ndarray)
                                  and np.may_share_memory(parent, root)):
                if ops and isinstance(ops[-1], _Index):
                    parent[ops[-1].index] = value
                else:
                    target = ops[-1].get(parent) if ops else parent
                    if target is parent or np.may_share_memory(target, root):
                        target[...] = value
                    else:
                        buf.set(_write(root, ops, value))
                        return
                buf.version += 1
                return
        if isinstance(value, (list, tuple)):
            value = jnp.asarray(value)
        buf.set(_write(root, ops, value))

    # ------------------------------------------------------------ NumPy's array API
    @property
    def shape(self):
        return tuple(np.shape(self._get()))

    @property
    def ndim(self):
        return len(self.shape)

    @property
    def size(self):
        return int(np.prod(self.shape))

    @property
    def dtype(self):
        return np.dtype(self._get().dtype)

    @property
    def T(self):
        return self.transpose()

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of unsized object")
        return self.shape[0]

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, key):
        index = _key(key)
        value = self._get()
        if _is_basic(index):
            out = BArray(self._buf, self._ops + (_Index(key, index),))
            if not is_traced(value) and np.ndim(out._get()) == 0:
                return out._get()[()]  # a NumPy scalar, as NumPy returns
            return out
        return wrap(value[index] if not is_traced(index) and not _traced_any(
            index if isinstance(index, tuple) else (index,)) else jnp.asarray(value)[index])

    def __setitem__(self, key, value):
        if isinstance(value, BArray) and value._buf is self._buf and value._ops and \
                value._ops[-1].__class__ is _Index and value._ops[-1].key is key and \
                value._ops[:-1] == self._ops:
            return  # x[k] += v: the view already wrote through
        self._put(value, (_Index(key, _key(key)),))

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = tuple(axes) or tuple(reversed(range(self.ndim)))
        return BArray(self._buf, self._ops + (_Transpose(axes),))

    def swapaxes(self, a, b):
        axes = list(range(self.ndim))
        axes[a], axes[b] = axes[b], axes[a]
        return self.transpose(axes)

    def reshape(self, *shape, order="C"):
        if order != "C":
            return wrap(np.reshape(self._get(), shape, order=order))
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = tuple(int(s) for s in shape)
        new = np.empty(self.shape, dtype=np.bool_).reshape(shape).shape  # resolves -1
        if any(isinstance(step, (_Transpose,)) for step in self._ops):
            return wrap(self._get().reshape(new), owned=False)  # not contiguous: a copy
        return BArray(self._buf, self._ops + (_Reshape(new),))

    def ravel(self, order="C"):
        return self.reshape(-1, order=order)

    def copy(self, order="C"):
        value = self._get()
        return wrap(value if is_traced(value) else np.array(value, order=order))

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def fill(self, value):
        self._put(value)

    def sort(self, axis=-1):
        value = self._get()
        self._put(jnp.sort(value, axis=axis) if is_traced(value) else np.sort(value, axis=axis))

    def view(self, *args):
        if args:
            raise UntraceableError(".view(dtype)", "reinterpreting bytes has no derivative")
        return BArray(self._buf, self._ops)

    def __getattr__(self, name):
        if name not in _METHODS:
            raise AttributeError(f"'ndarray' object has no attribute {name!r} (under jaxbp.as_jax)")

        def method(*args, **kwargs):
            value = self._get()
            args, kwargs = unwrap(args), {k: unwrap(v) for k, v in kwargs.items()}
            if not is_traced(value) and _traced_any(args + tuple(kwargs.values())):
                value = jnp.asarray(value)
            return wrap(getattr(value, name)(*args, **kwargs))

        return method

    # ------------------------------------------------------------ to Python numbers
    def _number(self, what: str, convert):
        value = self._get()
        if is_traced(value):
            raise UntraceableError(what)
        return convert(value)

    def __float__(self):
        value = self._get()
        if is_traced(value) and STATE.floats is not None and np.ndim(value) == 0:
            number = concrete(value)  # a loss module's `return float(np.sum(...))`
            if number is not None:
                STATE.floats.append((float(number), value))
                return float(number)
        return self._number("float()", float)

    def __int__(self):
        return self._number("int()", int)

    def __complex__(self):
        return self._number("complex()", complex)

    def __index__(self):
        return self._number("an index", operator.index)

    def item(self, *args):
        return self._number(".item()", lambda v: np.asarray(v).item(*args))

    def tolist(self):
        return self._number(".tolist()", lambda v: np.asarray(v).tolist())

    def __bool__(self):
        return bool(self._get())

    def __array__(self, dtype=None, copy=None):
        value = self._get()
        if is_traced(value):
            raise UntraceableError("a NumPy array made of it (np.asarray by code outside the "
                                   "swapped modules, or a write into a NumPy array created "
                                   "outside the call)")
        return np.asarray(value, dtype=dtype)

    def __jax_array__(self):
        return jnp.asarray(self._get())

    def __repr__(self):
        value = self._get()
        shown = concrete(value) if is_traced(value) else value
        return f"BArray({shown!r}{', traced' if is_traced(value) else ''})"

    __str__ = __repr__

    def __format__(self, spec):
        value = self._get()
        shown = concrete(value) if is_traced(value) else value
        return format(shown if shown is not None else repr(value), spec)

    def __neg__(self):
        return _unary(operator.neg, jnp.negative)(self)

    def __pos__(self):
        return self

    def __abs__(self):
        return _unary(abs, jnp.abs)(self)

    def __invert__(self):
        return _unary(operator.invert, jnp.invert)(self)


for _name, _np_op, _jnp_op in [
        ("add", operator.add, jnp.add), ("sub", operator.sub, jnp.subtract),
        ("mul", operator.mul, jnp.multiply), ("truediv", operator.truediv, jnp.true_divide),
        ("floordiv", operator.floordiv, jnp.floor_divide), ("mod", operator.mod, jnp.mod),
        ("pow", operator.pow, jnp.power), ("matmul", operator.matmul, jnp.matmul),
        ("and", operator.and_, jnp.bitwise_and), ("or", operator.or_, jnp.bitwise_or),
        ("xor", operator.xor, jnp.bitwise_xor), ("lshift", operator.lshift, jnp.left_shift),
        ("rshift", operator.rshift, jnp.right_shift)]:
    _op, _rop, _iop = _binary(_np_op, _jnp_op)
    setattr(BArray, f"__{_name}__", _op)
    setattr(BArray, f"__r{_name}__", _rop)
    setattr(BArray, f"__i{_name}__", _iop)
for _name, _np_op, _jnp_op in [
        ("lt", operator.lt, jnp.less), ("le", operator.le, jnp.less_equal),
        ("gt", operator.gt, jnp.greater), ("ge", operator.ge, jnp.greater_equal),
        ("eq", operator.eq, jnp.equal), ("ne", operator.ne, jnp.not_equal)]:
    setattr(BArray, f"__{_name}__", _binary(_np_op, _jnp_op)[0])
