"""Nothing traced leaks out of ``as_jax``: after the outermost call every array that held a
traced value holds its concrete value, and the globals, dicts and objects the call wrote to
hold plain NumPy arrays (or, where no concrete value exists, as under ``jax.jit``, what they
held before).
"""

from __future__ import annotations

import sys
import types

import numpy as np

from jaxbp.bridge._array import BArray
from jaxbp.bridge._swap import is_user_module
from jaxbp.bridge._values import concrete, is_traced

_MISSING = object()
_DEPTH = 4


def settle(buffers) -> None:
    """Each buffer's traced value replaced by its concrete value (NaN where there is none)."""
    for buf in buffers:
        if is_traced(buf.value):
            value = concrete(buf.value)
            if value is None:
                value = np.full(buf.value.shape, np.nan, np.dtype(buf.value.dtype))
                buf.stale = True
            buf.value, buf.owned = np.array(value), True
            buf.version += 1


def _plain(value):
    """A BArray or tracer as a NumPy array (None if it has no concrete value)."""
    if isinstance(value, BArray):
        if value._buf.stale:
            return None
        return np.array(value._get())
    return concrete(value)


def _user_object(obj) -> bool:
    if isinstance(obj, (type, types.ModuleType, types.FunctionType, types.MethodType)):
        return False
    module = sys.modules.get(type(obj).__module__)
    return module is not None and is_user_module(module) and hasattr(obj, "__dict__")


def _clean(value, depth: int, seen: set):
    """(changed, new) for one value; dicts, lists and user objects are cleaned in place."""
    if isinstance(value, BArray) or is_traced(value):
        new = _plain(value)
        return True, (_MISSING if new is None else new)
    if depth <= 0 or id(value) in seen or isinstance(value, (np.ndarray, str, bytes, int, float)):
        return False, value
    seen.add(id(value))
    if type(value) is dict:
        _clean_mapping(value, depth, seen)
    elif type(value) is list:
        for i, item in enumerate(value):
            changed, new = _clean(item, depth - 1, seen)
            if changed and new is not _MISSING:
                value[i] = new
    elif isinstance(value, tuple):
        items = [_clean(item, depth - 1, seen) for item in value]
        if any(c for c, _ in items) and all(n is not _MISSING for _, n in items):
            new = [n for _, n in items]
            return True, (type(value)(*new) if hasattr(value, "_fields") else type(value)(new))
    elif _user_object(value):
        _clean_mapping(vars(value), depth, seen)
    return False, value


def _clean_mapping(mapping: dict, depth: int, seen: set, before: dict = None):
    for name, item in list(mapping.items()):
        changed, new = _clean(item, depth - 1, seen)
        if not changed:
            continue
        if new is _MISSING:  # no concrete value: what it held before, if known
            old = _MISSING if before is None else before.get(name, _MISSING)
            if old is _MISSING:
                continue
            new = old
        mapping[name] = new


def scrub(snapshots, roots) -> None:
    """Cleans module globals (given as ``(dict, copy before the call)``) and ``roots``."""
    seen: set = set()
    for g, before in snapshots:
        _clean_mapping(g, _DEPTH, seen, before)
    for root in roots:
        _clean(root, _DEPTH, seen)
