"""Which modules run the user's code, and swapping their NumPy names for the call's duration.

A module's globals are scanned for ``numpy`` itself (any alias: ``import numpy as np``), its
submodules ``linalg``/``fft``, and functions imported from it (``from numpy import exp``); each
is replaced by the routed one from ``NUMPY`` and put back in ``restore`` (called in a
``finally``, so also when the code raises or is interrupted). The global ``numpy`` module and
the user's source are never changed.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
import types

import numpy

from jaxbp.bridge._namespace import NUMPY

_LIBRARY_DIRS = tuple(sorted({os.path.realpath(p) + os.sep for key, p in sysconfig.get_paths().items()
                              if key in ("stdlib", "platstdlib", "purelib", "platlib")}
                             | {os.path.realpath(sys.base_prefix) + os.sep}))
_user_cache: dict = {}


def _numpy_names() -> dict:
    """id(numpy object) -> its routed replacement, for every public callable of numpy."""
    table = {id(numpy): NUMPY}
    for sub in ("linalg", "fft"):
        table[id(getattr(numpy, sub))] = getattr(NUMPY, sub)
    for name, value in vars(numpy).items():
        if name.startswith("_") or isinstance(value, (type, types.ModuleType)) or not callable(value):
            continue
        table.setdefault(id(value), (value, name))
    return table


_TABLE = _numpy_names()


def _replacement(value):
    entry = _TABLE.get(id(value))
    if entry is None:
        return None
    if isinstance(entry, tuple):
        original, name = entry
        return getattr(NUMPY, name) if original is value else None
    return entry


def is_user_module(module) -> bool:
    """True for modules of the user's code: not the standard library, an installed package
    or jaxbp; ``__main__`` (a notebook or script) is the user's."""
    name = getattr(module, "__name__", "")
    if name == "__main__":
        return True
    if name == "jaxbp" or name.startswith("jaxbp."):
        return False
    key = (name, id(module))
    hit = _user_cache.get(key)
    if hit is None:
        path = getattr(module, "__file__", None)
        hit = bool(path) and not os.path.realpath(path).startswith(_LIBRARY_DIRS)
        _user_cache[key] = hit
    return hit


def _function_globals(fn):
    seen = 0
    while seen < 8:
        seen += 1
        if isinstance(fn, functools.partial):
            fn = fn.func
        elif isinstance(fn, types.MethodType):
            fn = fn.__func__
        elif hasattr(fn, "__wrapped__"):
            fn = fn.__wrapped__
        else:
            break
    if isinstance(fn, types.FunctionType):
        return fn.__globals__
    call = getattr(type(fn), "__call__", None)
    return getattr(call, "__globals__", None)


def namespaces(fns, scope) -> list:
    """The globals dicts to swap in: each function's module, plus ``scope``."""
    dicts = {}
    for fn in fns:
        g = _function_globals(fn)
        name = "" if g is None else str(g.get("__name__", ""))
        if g is not None and name != "jaxbp" and not name.startswith("jaxbp."):
            dicts[id(g)] = g
    if scope == "auto":
        modules = [m for m in list(sys.modules.values())
                   if isinstance(m, types.ModuleType) and is_user_module(m)]
    else:
        modules = list(scope or ())
    for m in modules:
        if isinstance(m, str):
            m = sys.modules[m]
        g = getattr(m, "__dict__", None)
        if isinstance(g, dict):
            dicts[id(g)] = g
    return list(dicts.values())


def swap(dicts) -> list:
    """Routes the NumPy names in each dict; returns what ``restore`` needs."""
    saved = []
    for g in dicts:
        for name, value in list(g.items()):
            if isinstance(value, (int, float, str, bool)) or value is None:
                continue
            new = _replacement(value)
            if new is not None:
                saved.append((g, name, value))
                g[name] = new
    return saved


def restore(saved) -> None:
    for g, name, value in reversed(saved):
        g[name] = value
