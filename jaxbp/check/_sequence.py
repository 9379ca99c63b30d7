"""Reading a wrong gradient along time and across gate blocks: when and which gate.

The one implementation that the verifier (``verify(model)``, ``check_module``),
the NumPy-code checks and the diagnosis layer share. Arrays in (jax or NumPy,
any float dtype), plain Python out; everything is measured in float64.

Time. A recurrent module's ∂L/∂x has a time axis (B, T, D: axis 1). Backprop
through time computes ∂L/∂x_t from the gradient carried back from t+1 … T−1,
so the pattern of wrong slices says what broke:

- "carried": right from t = T−1 down to t+1, wrong at t and every step before
  it (down to t = 0, or to where the error has decayed below round-off). The
  gradient carried back through the state (dh_next, dc_next) is lost or wrong
  from step t+1 to t; a carry dropped outright shows up as t = T−2.
- "local": wrong only at step t: a mistake in one step's local derivative that
  does not travel (e.g. ∂L/∂x_t computed from the wrong step's residuals).
- "spread": anything else, including every step wrong.

Gates. LSTM and GRU weights put k gate blocks of width H side by side along the
last axis (Wx: (D, kH), Wh: (H, kH), b: (kH,)). A mistake confined to one gate
(its bias gradient zeroed, two gates' blocks swapped) shows up in that gate's
block only; ``gate_errors`` measures each block.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np


class TimeLocation(NamedTuple):
    """Where along time a sequence gradient is wrong.

    Attributes:
      time_step: the latest t whose slice is wrong.
      pattern: "carried" (right from t = T−1 down to t+1, wrong at t and before),
        "local" (wrong only at t) or "spread" (anything else).
      message: one sentence a person reads, e.g. "right from t = 7 down to t = 5,
        wrong at t = 4 and before: the gradient carried back through the state
        is lost" or "wrong only at t = 3".
      per_step: max |yours − truth| per step, Python floats, length T.
    """

    time_step: int
    pattern: str
    message: str
    per_step: tuple


def _float64(x, name) -> np.ndarray:
    a = np.asarray(x)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise TypeError(f"{name}: expected a real array, got dtype {a.dtype}")
    return a.astype(np.float64)


def _abs_diff(yours, truth) -> np.ndarray:
    """|yours − truth| in float64, NaN/inf (in either) counted as inf."""
    y, t = _float64(yours, "yours"), _float64(truth, "truth")
    if y.shape != t.shape:
        raise ValueError(f"yours and truth differ in shape: yours {y.shape}, truth {t.shape}")
    diff = np.abs(y - t)
    diff[~(np.isfinite(y) & np.isfinite(t))] = np.inf
    return diff


def time_errors(yours, truth, *, axis: int) -> np.ndarray:
    """The largest |yours − truth| of each time step.

    Args:
      yours, truth: arrays of one shape with a time axis, e.g. (B, T, D).
      axis: the time axis (negative counts from the end).

    Returns:
      (T,) float64: entry t is max over every other axis of |yours − truth| at
      step t; inf where either holds NaN or inf.

    Example:
      >>> import numpy as np
      >>> truth = np.zeros((2, 3, 4)); yours = truth.copy(); yours[1, 0, 2] = 0.5
      >>> time_errors(yours, truth, axis=1).tolist()
      [0.5, 0.0, 0.0]
    """
    diff = _abs_diff(yours, truth)
    if diff.ndim == 0:
        raise ValueError("yours: expected an array with a time axis, got a scalar")
    if not -diff.ndim <= axis < diff.ndim:
        raise ValueError(f"axis: expected an axis of a {diff.ndim}-d array, got {axis}")
    moved = np.moveaxis(diff, axis, 0).reshape(diff.shape[axis], -1)
    if moved.shape[1] == 0:
        return np.zeros(diff.shape[axis])
    return moved.max(axis=1)


def _steps(ts) -> str:
    ts = sorted(ts, reverse=True)
    shown = ", ".join(str(t) for t in ts[:6])
    return shown + (f" and {len(ts) - 6} more" if len(ts) > 6 else "")


def locate_time(yours, truth, *, axis: int, budget_abs: float) -> Optional[TimeLocation]:
    """The latest wrong time step and the pattern of wrong steps, or None if none is wrong.

    A step is wrong when its largest error (``time_errors``) exceeds ``budget_abs``.
    With t the latest wrong step and T the number of steps:

    - "carried" when every step after t is right and the wrong steps are t, t−1,
      … down to some s < t (s = 0, or earlier steps within the budget because
      the carried error decayed); t = T−1 is "spread" (nothing was right first).
    - "local" when t is the only wrong step.
    - "spread" otherwise.

    Args:
      yours, truth: arrays of one shape with a time axis.
      axis: the time axis.
      budget_abs: the absolute error a step may have (e.g. the leaf's round-off
        budget).

    Returns:
      A ``TimeLocation``, or None when no step exceeds ``budget_abs``.

    Example:
      >>> import numpy as np
      >>> truth = np.ones((1, 6, 2)); yours = truth.copy(); yours[:, :4] += 0.1
      >>> loc = locate_time(yours, truth, axis=1, budget_abs=1e-8)
      >>> loc.time_step, loc.pattern
      (3, 'carried')
      >>> loc.message
      'right from t = 5 down to t = 4, wrong at t = 3 and before: the gradient carried back through the state is lost'
    """
    errors = time_errors(yours, truth, axis=axis)
    bad = ~(errors <= budget_abs)  # NaN budget or inf errors count as wrong
    wrong = np.flatnonzero(bad)
    if wrong.size == 0:
        return None
    T, t = errors.size, int(wrong[-1])
    per_step = tuple(float(e) for e in errors)
    start = t
    while start > 0 and bad[start - 1]:
        start -= 1
    contiguous = not np.any(bad[:start])
    if wrong.size == 1:
        return TimeLocation(t, "local", f"wrong only at t = {t}", per_step)
    if t < T - 1 and contiguous:
        right = (f"right from t = {T - 1} down to t = {t + 1}" if t + 1 < T - 1
                 else f"right at t = {T - 1}")
        wrong_part = (f"wrong at t = {t} and before" if start == 0
                      else f"wrong from t = {t} down to t = {start} (earlier steps within "
                           f"round-off)")
        return TimeLocation(t, "carried", f"{right}, {wrong_part}: the gradient carried back "
                                          f"through the state is lost", per_step)
    if contiguous and start == 0:
        return TimeLocation(t, "spread", f"wrong at every step, t = {T - 1} down to t = 0",
                            per_step)
    right = [s for s in range(T) if not bad[s]]
    return TimeLocation(t, "spread", f"wrong at t = {_steps(wrong)}; right at t = "
                                     f"{_steps(right)}", per_step)


def gate_errors(yours, truth, *, gates: tuple) -> dict:
    """The largest |yours − truth| within each gate's block of the last axis.

    Args:
      yours, truth: arrays of one shape whose last axis is k·H, k = len(gates)
        (e.g. an LSTM's Wx (D, 4H) or b (4H,)).
      gates: the k gate names in block order, e.g. ("i", "f", "o", "g").

    Returns:
      {gate name: max |yours − truth| over its block} as Python floats, in gate
      order; inf where either holds NaN or inf.

    Raises:
      ValueError: when gates is empty or the last axis is not a multiple of k.

    Example:
      >>> import numpy as np
      >>> truth = np.zeros(8); yours = truth.copy(); yours[5] = 2.0
      >>> gate_errors(yours, truth, gates=("i", "f", "o", "g"))
      {'i': 0.0, 'f': 0.0, 'o': 2.0, 'g': 0.0}
    """
    gates = tuple(gates)
    if not gates:
        raise ValueError("gates: expected at least one gate name, got ()")
    diff = _abs_diff(yours, truth)
    k = len(gates)
    n = diff.shape[-1] if diff.ndim else 0
    if n == 0 or n % k:
        raise ValueError(f"gates: the last axis must be {k}·H for {k} gates {gates}, got shape "
                         f"{diff.shape}")
    blocks = diff.reshape(diff.shape[:-1] + (k, n // k))
    blocks = np.moveaxis(blocks, -2, 0).reshape(k, -1)
    return {g: float(blocks[i].max()) if blocks.shape[1] else 0.0 for i, g in enumerate(gates)}


def locate_gates(yours, truth, *, gates: tuple, budget_abs: float) -> tuple:
    """The gates whose blocks carry an error above ``budget_abs``, most wrong first.

    Args:
      yours, truth: arrays of one shape (a weight or bias leaf).
      gates: the k gate names in block order.
      budget_abs: the absolute error a block may have.

    Returns:
      A tuple of gate names sorted by their block's error, largest first (ties in
      gate order); () when no block is wrong, or when the leaf is not gated
      (no last axis, or one that is not a multiple of k).

    Example:
      >>> import numpy as np
      >>> truth = np.zeros((3, 6)); yours = truth.copy()
      >>> yours[:, 0:2] += 1.0; yours[:, 4:6] += 3.0
      >>> locate_gates(yours, truth, gates=("r", "z", "n"), budget_abs=1e-6)
      ('n', 'r')
    """
    gates = tuple(gates)
    shape = np.shape(yours)
    if not gates or not shape or shape[-1] == 0 or shape[-1] % len(gates):
        return ()
    errors = gate_errors(yours, truth, gates=gates)
    wrong = [(-e, i, g) for i, (g, e) in enumerate(errors.items()) if not e <= budget_abs]
    return tuple(g for _, _, g in sorted(wrong))
