"""What the NumPy checks share: fresh copies, calling the user's code, the truth by ``jax.vjp``
of ``as_jax(forward)``, and the one comparison of yours against the truth.

``check_layer``, ``check_loss`` and ``check_modules`` differ only in how they run the user's
code; each then hands ``compare`` a list of named pairs (yours, truth) and gets the rows of a
``Report``. Budgets: float64 allows the round-off floor of ``jaxbp.core._tolerances`` (1e-11
× (depth + 1) of each row's scale); other dtypes measure the truth computed in that dtype and
allow 10× its error (``roundoff_budget``); central differences allow 1e-6 of the scale.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import linecache
import os
import traceback
from typing import NamedTuple, Optional

import jax
import numpy as np

from jaxbp.bridge._values import STATE, UntraceableError
from jaxbp.check._compare import BackpropError, as_outputs, budget, max_abs, row

FD_RTOL = 1e-6  # central differences in float64: ~1e-10 relative on smooth code
_UNTRACEABLE = (UntraceableError, jax.errors.TracerArrayConversionError,
                jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError,
                jax.errors.TracerBoolConversionError, jax.errors.NonConcreteBooleanIndexError)
_LIBRARY_PARTS = (os.sep + "jaxbp" + os.sep, "site-packages", "dist-packages",
                  os.sep + "numpy" + os.sep, os.sep + "jax" + os.sep, "<frozen", "python3.")


def fresh(value):
    """A deep copy (NumPy arrays, dicts, lists, caches): the user's code may write into it."""
    return copy.deepcopy(value)


def is_float_array(x) -> bool:
    return isinstance(x, (np.ndarray, jax.Array)) and np.issubdtype(np.dtype(x.dtype),
                                                                   np.floating)


def parameter_names(fn, count: int) -> list:
    """forward's positional parameter names ("x", "w", "b"), or "inputs[i]"."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(count):
        p = params[i] if i < len(params) else None
        if p is None or p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(f"inputs[{i}]")
        else:
            names.append(p.name)
    return names


def user_line(error: BaseException) -> str:
    """The innermost frame of the user's code in the error's traceback: 'file:line: source'."""
    frames = traceback.extract_tb(error.__traceback__)
    for frame in reversed(frames):
        if not any(part in frame.filename for part in _LIBRARY_PARTS):
            source = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
            return f"{os.path.basename(frame.filename)}:{frame.lineno}: {source}"
    return ""


def why_untraceable(error: BaseException) -> str:
    """One sentence: which NumPy call (or conversion) could not be traced, and where."""
    call = getattr(error, "jaxbp_numpy_call", None) or getattr(error, "call", None)
    if call is None:
        call = type(error).__name__
    where = user_line(error)
    first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    return (f"{call} could not be traced ({type(error).__name__}: {first})"
            + (f" at {where}" if where else ""))


def is_untraceable(error: BaseException) -> bool:
    return isinstance(error, _UNTRACEABLE) or getattr(error, "jaxbp_numpy_call", None) is not None


class Pair(NamedTuple):
    """One compared quantity: yours and the truth, stacked over trials (leading axis)."""

    name: str
    yours: np.ndarray
    truth: np.ndarray
    own: Optional[np.ndarray] = None  # the truth computed in your dtype (round-off), or None
    layer: Optional[int] = None


def compare(pairs, *, dtype, depth: int = 1, rtol=None, atol=None, fd: bool = False) -> tuple:
    """The rows of a report: each pair against its budget (see the module docstring)."""
    rows = []
    for p in pairs:
        scale = max_abs(p.truth)
        observed = 0.0 if p.own is None else max_abs(p.own - p.truth)
        allowed = budget(observed, scale, dtype, depth, rtol, atol)
        if fd and rtol is None and atol is None:
            allowed = max(allowed, FD_RTOL * scale)
        rows.append(row(p.layer, p.name, p.yours, p.truth, allowed, per_example=True))
    return tuple(rows)


def as_float64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def call_backward(backward, args, count: int, what: str = "backward") -> tuple:
    """``backward(*args)`` on fresh copies; its gradients as a tuple of ``count`` arrays."""
    try:
        out = backward(*fresh(args))
    except Exception as e:
        raise BackpropError(f"{what} raised {type(e).__name__}: {e}") from e
    return as_outputs(out, count, what, f"{count} gradient(s), one per checked input in input "
                      "order")


def reproduce(traced, plain, dtype, what: str) -> Optional[str]:
    """None when the traced forward reproduces the NumPy output to round-off, else why not."""
    for i, (t, p) in enumerate(zip(traced, plain)):
        t, p = as_float64(t), as_float64(p)
        if t.shape != p.shape:
            return f"{what} output {i} traced has shape {t.shape}, NumPy gave {p.shape}"
        scale = max(max_abs(p), 1.0)
        err = max_abs(t - p) if np.all(np.isfinite(t)) else float("inf")
        tol = (1e-12 if np.dtype(dtype) == np.float64 else 1e-5) * scale
        if not err <= tol:
            return (f"the traced {what} does not reproduce the NumPy output {i} (max difference "
                    f"{err:.3g}, scale {scale:.3g}): randomness or state that differs between runs?")
    return None


def numpy_call_in_progress() -> Optional[str]:
    return STATE.call


def numpy_code_error(error: BaseException, what: str, instead: str) -> Optional[BackpropError]:
    """A jaxbp error for NumPy code handed to a JAX check (None if ``error`` is not that)."""
    if not isinstance(error, _UNTRACEABLE):
        return None
    frames = traceback.extract_tb(error.__traceback__)
    call = next((f"numpy {f.name}" for f in frames if os.sep + "numpy" + os.sep in f.filename),
                "a NumPy call")
    where = user_line(error)
    return BackpropError(
        f"{what} looks like NumPy code: {call} was handed a jax tracer"
        + (f" at {where}" if where else "") + f" ({type(error).__name__}). jax cannot trace "
        f"NumPy; check it with {instead}, which run your NumPy code as it is written "
        f"(jaxbp.as_jax routes its np calls to jax.numpy)")


@contextlib.contextmanager
def numpy_code_errors(what: str, instead: str):
    """Re-raises NumPy code's tracer errors inside the block as ``numpy_code_error``'s message."""
    try:
        yield
    except Exception as e:
        numpy_error = numpy_code_error(e, what, instead)
        if numpy_error is not None:
            raise numpy_error from e
        raise
