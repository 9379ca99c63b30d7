"""What the checkers share: the error for a bad backprop, tolerances, one table row.

``jaxbp.verify`` (dense nets), the ``jaxbp.nn`` model checks and ``check_vjp``
compare arrays the same way: per leaf, max |yours − reference| against an
absolute budget, NaN or inf always failing.
"""

from __future__ import annotations

import math

import numpy as np

from jaxbp.check._report import Row
from jaxbp.core._tolerances import roundoff_budget


class BackpropError(ValueError):
    """The backprop under test raised, or returned something not shaped like params."""


def check_tolerance(name, value):
    """An explicit ``rtol``/``atol`` as a float (None stays None), or a clear error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a number >= 0 or None, got {type(value).__name__}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return float(value)


def max_abs(x) -> float:
    """max |x| as a Python float (0 for an empty array)."""
    x = np.abs(x)
    return float(np.max(x)) if x.size else 0.0


def row(layer, name, got, want, budget_abs, *, per_example: bool) -> Row:
    """One table row; with per_example the leading axis indexes examples (or trials)."""
    diff = np.abs(got - want)
    scale = max_abs(want)
    bad = ~np.isfinite(got)
    if np.any(bad):
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        err = rel = math.inf
    else:
        idx = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape)) \
            if diff.size else (0,) * max(diff.ndim, 1)
        err = float(diff[idx]) if diff.size else 0.0
        rel = err / scale if scale > 0 else (0.0 if err == 0 else math.inf)
    example, entry = (idx[0], idx[1:]) if per_example else (None, idx)
    budget = budget_abs / scale if scale > 0 else (math.inf if budget_abs > 0 else 0.0)
    return Row(layer, name, tuple(want.shape[1:] if per_example else want.shape), err, rel,
               budget, budget_abs, scale, example, entry, bool(err <= budget_abs),
               bool(np.any(bad)))


def as_outputs(out, count: int, what: str, expected: str) -> tuple:
    """A backward's result as a tuple of ``count`` values (a bare value when ``count`` is 1).

    Raises ``BackpropError`` "{what} returned …; expected {expected}" on any other count.
    """
    if count == 1 and not isinstance(out, (tuple, list)):
        out = (out,)
    if not isinstance(out, (tuple, list)) or len(out) != count:
        got = f"{len(out)} values" if isinstance(out, (tuple, list)) else type(out).__name__
        raise BackpropError(f"{what} returned {got}; expected {expected}")
    return tuple(out)


def budget(observed, scale, dtype, depth: int, rtol=None, atol=None, *, floor_scale=None) -> float:
    """The allowed absolute error of one row: explicit ``atol + rtol × scale`` when either is
    given, else the round-off budget (``roundoff_budget``) of ``observed`` in ``dtype``, its
    floor relative to ``floor_scale`` (default ``scale``) and ``depth`` chained steps."""
    if rtol is None and atol is None:
        return roundoff_budget(observed, scale if floor_scale is None else floor_scale, dtype,
                               depth)
    return (atol or 0.0) + (rtol or 0.0) * scale
