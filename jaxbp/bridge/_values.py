"""Raw values, and the calls that are running: NumPy arrays on the host, jax tracers under a
transformation.

A value is *traced* when it is a ``jax.core.Tracer``; every other array is concrete and lives
as a NumPy array (a concrete ``jax.Array`` is copied to the host), so code that only touches
concrete values runs as plain NumPy.
"""

from __future__ import annotations

import threading

import jax
import numpy as np

Tracer = jax.core.Tracer


def is_traced(x) -> bool:
    return isinstance(x, Tracer)


def concrete(x):
    """A traced value's concrete NumPy value (eager ``jax.vjp``/``jax.grad``), else None."""
    while isinstance(x, Tracer):
        try:
            x = x.to_concrete_value()
        except Exception:  # a tracer without a value (jax.jit)
            return None
        if x is None:
            return None
    return np.asarray(x)


def host(x):
    """A concrete jax array as NumPy (read-only view); anything else as is."""
    if isinstance(x, jax.Array) and not isinstance(x, Tracer):
        return np.asarray(x)
    return x


class _State(threading.local):
    def __init__(self):
        self.depth = 0  # nested as_jax calls
        self.buffers = []  # buffers that held a traced value during the outermost call
        self.call = None  # the NumPy call being dispatched (for error messages)
        self.floats = None  # a list while a loss's float() of a traced scalar is allowed


STATE = _State()


class UntraceableError(TypeError):
    """The NumPy forward needs a concrete number where jax has a traced value.

    Attributes:
      call: what needed the number ("float()", ".item()", "np.vectorize", ...).
    """

    def __init__(self, call: str, detail: str = ""):
        self.call = call
        super().__init__(f"{call} of a traced array: the value is not known while jax "
                         f"differentiates the code{'; ' + detail if detail else ''}")
