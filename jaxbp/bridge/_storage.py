"""Array storage and view steps: what a ``BArray`` reads from and writes into.

A ``_Buffer`` holds one array's values (NumPy while everything written is concrete, a jax
value after the first traced write). A view is a chain of steps from the buffer: ``_Index``
(basic or advanced indexing), ``_Transpose``, ``_Reshape``; each step can ``get`` its part
of a value and ``put`` a new part back (functionally), which is how writes through views
reach the storage. Traced boxes use ``lax.dynamic_slice``/``dynamic_update_slice`` with
runtime starts, so every window of a loop shares one compiled program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.bridge._values import STATE, is_traced


class _Buffer:
    """The storage behind one array and its views.

    Element writes of traced values (``out[n, f, i, j] = v`` in a loop) are kept pending and
    applied together, as one scatter, when the storage is next read: one jax operation
    instead of one per entry (what makes loop-heavy forwards fast to differentiate).
    """

    __slots__ = ("_value", "version", "owned", "stale", "pending", "reads")

    def __init__(self, value, owned: bool):
        self._value, self.version, self.owned, self.stale = value, 0, owned, False
        self.pending, self.reads = {}, {}
        if is_traced(value):
            STATE.buffers.append(self)

    @property
    def value(self):
        if self.pending:
            self._flush()
        return self._value

    @value.setter
    def value(self, value):
        self.pending = {}
        self.set(value)

    def _flush(self):
        pending, self.pending = self.pending, {}
        root = self._value
        value = jnp.asarray(root)
        one = (1,) * value.ndim
        for key, v in pending.items():  # one shared program per entry, not a stack of n
            value = jax.lax.dynamic_update_slice(
                value, jnp.reshape(v if getattr(v, "dtype", None) == value.dtype else
                                   jnp.asarray(v, value.dtype), one), _starts(key))
        self._value = value

    def set(self, value):
        if is_traced(value) and not is_traced(self._value):
            STATE.buffers.append(self)
        self._value, self.owned = value, True
        self.version += 1
        self.reads = {}

    def write_entry(self, index: tuple, value) -> bool:
        """Defers ``root[index] = value`` for a full-rank tuple of ints; False if it can't."""
        root = self._value
        if len(index) != np.ndim(root) or np.ndim(value) != 0:
            return False
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in index):
            return False
        shape = np.shape(root)
        key = tuple(int(i) % n if -n <= i < n else None for i, n in zip(index, shape))
        if None in key:
            return False
        if not is_traced(root) and not is_traced(value):
            return False
        if not is_traced(root) and not self.pending:
            STATE.buffers.append(self)
        self.pending[key] = value
        self.version += 1
        self.reads = {}
        return True


class _Index:
    __slots__ = ("key", "index")

    def __init__(self, key, index):
        self.key, self.index = key, index  # key: as the user wrote it (identity test)

    def get(self, x):
        if is_traced(x):
            start = _slice_start(np.shape(x), self.index)
            if start is not None:  # runtime starts: one compiled program for every window
                starts, shape = start
                box = jax.lax.dynamic_slice(x, _starts(starts),
                                            tuple(n for n, _ in shape))
                return box.reshape(tuple(n for n, keep in shape if keep))
        return x[self.index]

    def put(self, x, sub):
        if is_traced(x) or is_traced(sub):
            start = _slice_start(np.shape(x), self.index)
            if start is not None:  # a box: dynamic_update_slice, cheaper than a scatter
                starts, shape = start
                sub = jnp.broadcast_to(jnp.asarray(sub, x.dtype), tuple(
                    n for n, keep in shape if keep)).reshape(tuple(n for n, _ in shape))
                return jax.lax.dynamic_update_slice(jnp.asarray(x), sub,
                                                    _starts(starts))
            return jnp.asarray(x).at[self.index].set(sub)
        x = x.copy()
        x[self.index] = sub
        return x


def _starts(starts):
    """Start indices as unsigned ints: jax normalizes signed ones with an op per axis."""
    return np.array(starts, np.uint32)


def _slice_start(shape, index):
    """For a basic index of ints and step-1 slices: (starts, ((size, kept), ...)), else None."""
    items = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in items) or len(items) > len(shape):
        return None
    starts, sizes = [], []
    for n, i in zip(shape, items + (slice(None),) * (len(shape) - len(items))):
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1 or stop <= start:
                return None
            starts.append(start)
            sizes.append((stop - start, True))
        elif isinstance(i, (int, np.integer)) and not isinstance(i, bool) and -n <= i < n:
            starts.append(int(i) % n)
            sizes.append((1, False))
        else:
            return None
    return tuple(starts), tuple(sizes)


def _read_key(index):
    items = index if isinstance(index, tuple) else (index,)
    return tuple((i.start, i.stop, i.step) if isinstance(i, slice) else i for i in items)


class _Transpose:
    __slots__ = ("axes",)

    def __init__(self, axes):
        self.axes = axes

    def get(self, x):
        return x.transpose(self.axes)

    def put(self, x, sub):
        return sub.transpose(np.argsort(self.axes))


class _Reshape:
    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = shape

    def get(self, x):
        return x.reshape(self.shape)

    def put(self, x, sub):
        return sub.reshape(x.shape)


def _fill(x, value):
    """``value`` cast to x's dtype and broadcast to x's shape (a fresh array)."""
    if is_traced(x) or is_traced(value):
        return jnp.broadcast_to(jnp.asarray(value).astype(x.dtype), x.shape)
    out = np.empty(x.shape, x.dtype)
    out[...] = value
    return out


def _write(x, ops, value):
    if not ops:
        return _fill(x, value)
    return ops[0].put(x, _write(ops[0].get(x), ops[1:], value))
