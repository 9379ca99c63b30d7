"""``with jaxbp.checking() as log:``: every backward of a ``jaxbp.custom_vjp`` layer,
inside any computation, also compared with ``jax.vjp`` of its forward.

How it works. While the block is on, a layer's custom bwd is *traced differently*:
besides your ``backward`` it computes ``jax.vjp(forward)`` at the same primals and
cotangent, and ``jax.debug.callback`` sends primals, dy, yours and that reference
to the host. The flag is a JAX config state that is part of the jit cache key and
the trace context, so a function jitted outside the block is retraced inside it
(and the other way round): outside the block the layer's jaxpr has no callback
and costs nothing extra.

The host screens each call with NumPy: yours against ``jax.vjp`` in the same
dtype, allowed ``ROUNDOFF_FLOOR[dtype] × 2`` of each leaf's scale (the budget
floor of ``check_vjp`` for one function). A call within that is right. A call
outside it is kept (the first ``KEEP`` per layer) and, when the block ends,
decided outside any trace with ``check_vjp``'s precision-aware budget: the
float64 ``jax.vjp`` as truth, 10 × the round-off of ``jax.vjp`` in your dtype
(or the floor). The log is complete after the block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import threading
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check import _report_view
from jaxbp.core._tolerances import ROUNDOFF_FLOOR, roundoff_budget

KEEP = 8  # flagged calls kept per layer for the exact decision after the block

try:  # a config state in the jit key: JAX retraces when the block starts or ends
    from jax._src import config as _jax_config

    _CHECKING = _jax_config.bool_state(
        "jaxbp_checking_vjp", False, help="jaxbp.checking(): compare custom_vjp backwards",
        include_in_jit_key=True, include_in_trace_context=True)

    def is_checking() -> bool:
        return bool(_CHECKING.value)

    def _switch(on: bool):
        return _CHECKING(on)
except (ImportError, AttributeError, TypeError):  # without that API: drop all compiled code
    _FLAG = threading.local()

    def is_checking() -> bool:
        return bool(getattr(_FLAG, "on", False))

    @contextlib.contextmanager
    def _switch(on: bool):
        before = is_checking()
        _FLAG.on = on
        jax.clear_caches()
        try:
            yield
        finally:
            _FLAG.on = before
            jax.clear_caches()


@dataclasses.dataclass
class FailedCall:
    """The first call of a layer whose backward disagreed with ``jax.vjp``.

    Attributes:
      call: the layer's call index (from 0, in the order the callbacks ran).
      order: the index among all checked calls in the block.
      primal: the first wrong cotangent, e.g. "primals[0]".
      error: its max |yours − float64 jax.vjp|, relative to its scale (inf for NaN).
      budget: the allowed relative error.
    """

    call: int
    order: int
    primal: str
    error: float
    budget: float


@dataclasses.dataclass
class LayerRecord:
    """One layer's calls in a ``checking`` block.

    Attributes:
      name: the layer's name (``custom_vjp(..., name=)`` or the forward's ``__name__``).
      calls: how many times its backward ran.
      max_error: the largest relative error over its calls (against ``jax.vjp`` in
        your dtype, or against float64 for the calls decided after the block).
      first_failure: the first failing call, or None.
    """

    name: str
    calls: int = 0
    max_error: float = 0.0
    first_failure: Optional[FailedCall] = None
    _kept: list = dataclasses.field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.first_failure is None


class CheckLog(_report_view.Viewable):
    """What a ``jaxbp.checking()`` block saw; complete when the block ends.

    Attributes:
      records: ``{name: LayerRecord}`` for every custom layer whose backward ran.
      ok: True when every call agreed with ``jax.vjp`` within the budget.
      first_bad: the name of the first layer (in call order) whose backward
        disagreed, or None.
    """

    def __init__(self):
        self.records: dict[str, LayerRecord] = {}
        self._order = 0
        self._layers: dict[str, tuple] = {}  # name -> (forward,)
        self._lock = threading.Lock()

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.records.values())

    @property
    def first_bad(self) -> Optional[str]:
        bad = [r for r in self.records.values() if not r.ok]
        return min(bad, key=lambda r: r.first_failure.order).name if bad else None

    def __repr__(self):
        parts = [f"{r.name}: {r.calls} calls, max error {r.max_error:.2g}"
                 + ("" if r.ok else f", FAILED at call {r.first_failure.call} "
                    f"({r.first_failure.primal})") for r in self.records.values()]
        return f"CheckLog(ok={self.ok}, first_bad={self.first_bad!r}; {'; '.join(parts)})"

    def _view(self):
        """The log in the views' row protocol (``jaxbp.check._report_view``): a row per layer."""
        rows = tuple(_report_view.ViewRow(
            label=r.name, max_rel_error=r.max_error,
            budget=None if r.ok else r.first_failure.budget, ok=r.ok,
            status="ok" if r.ok else ("NONFINITE" if math.isinf(r.first_failure.error)
                                      else "WRONG"),
            cells=(("calls", str(r.calls)),
                   ("first failing call", "-" if r.ok else
                    f"{r.first_failure.call} ({r.first_failure.primal})")))
            for r in self.records.values())
        if self.ok:
            verdict = (f"jaxbp.checking: OK — every backward of {len(rows)} custom layer(s) "
                       f"agreed with jax.vjp")
        else:
            verdict = f"jaxbp.checking: WRONG — first bad layer: {self.first_bad}"
        details = ("max rel err: the largest over each layer's calls; the budget is shown for "
                   "layers that failed (the one their first failing call was judged by)",)
        names = [r.name for r in self.records.values()]
        bad = None if self.ok else names.index(self.first_bad)  # first to fail, in call order
        return _report_view.View(self.ok, verdict, details, rows, bad)



    # -- host side, from the callback
    def _record(self, name, forward, primals, dy, yours, ref):
        with self._lock:
            order, self._order = self._order, self._order + 1
            record = self.records.setdefault(name, LayerRecord(name))
            call = record.calls
            record.calls += 1
            dtype = np.dtype(jnp.result_type(*jax.tree.leaves(primals)))
            floor = ROUNDOFF_FLOOR[jnp.dtype(dtype)] * 2
            worst, flagged = 0.0, False
            for y, r in zip(jax.tree.leaves(yours), jax.tree.leaves(ref)):
                y, r = np.asarray(y, np.float64), np.asarray(r, np.float64)
                scale = float(np.max(np.abs(r))) if r.size else 0.0
                err = float(np.max(np.abs(y - r))) if y.size else 0.0
                rel = math.inf if not np.all(np.isfinite(y)) else (
                    err / scale if scale > 0 else (0.0 if err == 0 else math.inf))
                worst = max(worst, rel)
                flagged |= not (rel <= floor)
            record.max_error = max(record.max_error, worst)
            if flagged and len(record._kept) < KEEP:
                record._kept.append((call, order, forward, primals, dy, yours))

    # -- after the block, outside any trace
    def _decide(self):
        for record in self.records.values():
            kept, record._kept = record._kept, []
            for call, order, forward, primals, dy, yours in kept:
                failure = _exact(forward, primals, dy, yours)
                if failure is not None:
                    primal, error, budget = failure
                    record.max_error = max(record.max_error, error)
                    record.first_failure = FailedCall(call, order, primal, error, budget)
                    break


_ACTIVE: list[CheckLog] = []


def _exact(forward, primals, dy, yours):
    """(primal, relative error, relative budget) of the first wrong leaf, or None."""
    dtype = np.dtype(jnp.result_type(*jax.tree.leaves(primals)))
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), primals)
        truth = jax.vjp(forward, *p64)[1](jax.tree.map(lambda d: jnp.asarray(d, jnp.float64), dy))
        truth = [np.asarray(t, np.float64) for t in jax.tree.leaves(truth)]
    own = jax.vjp(forward, *jax.tree.map(jnp.asarray, primals))[1](jnp.asarray(dy))
    own = [np.asarray(o, np.float64) for o in jax.tree.leaves(own)]
    names = [f"primals[{i}]{jax.tree_util.keystr(path)}" for i, p in enumerate(primals)
             for path, _ in jax.tree_util.tree_flatten_with_path(p)[0]]
    for name, y, t, o in zip(names, jax.tree.leaves(yours), truth, own):
        y = np.asarray(y, np.float64)
        scale = float(np.max(np.abs(t))) if t.size else 0.0
        observed = float(np.max(np.abs(o - t))) if t.size else 0.0
        budget = roundoff_budget(observed, scale, dtype, 1)
        if not np.all(np.isfinite(y)):
            return name, math.inf, budget / scale if scale else math.inf
        err = float(np.max(np.abs(y - t))) if y.size else 0.0
        if err > budget:
            return name, (err / scale if scale else math.inf), budget / scale if scale else 0.0
    return None


def _on_call(name, forward, primals, dy, yours, ref):
    if _ACTIVE:
        _ACTIVE[-1]._record(name, forward, primals, dy, yours, ref)


def checked_bwd(name: str, forward: Callable, primals, dy, yours):
    """Inside a custom bwd while checking: send the call to the host log (traced)."""
    _, pullback = jax.vjp(forward, *primals)
    ref = pullback(dy)
    jax.debug.callback(functools.partial(_on_call, name, forward), primals, dy, yours, ref)


@contextlib.contextmanager
def checking():
    """Compares every ``jaxbp.custom_vjp`` backward with ``jax.vjp`` while on.

    Inside the block, wherever a layer made by ``jaxbp.custom_vjp`` is
    differentiated — under ``jax.grad``, ``jax.jit``, ``jax.vmap``, inside an
    Equinox or Flax model — its backward's cotangents are also compared with
    ``jax.vjp`` of its forward at the same primals and cotangent (see the module
    docstring for the budget). Outside the block nothing is added.

    Yields:
      A ``CheckLog``: ``log.ok``, ``log.first_bad`` (the first layer, in call order,
      whose backward disagreed; None when all agreed), ``log.records[name]``
      (``calls``, ``max_error``, ``first_failure``). Complete after the block.

    Example:
      >>> import jax, jax.numpy as jnp, jaxbp
      >>> cube = jaxbp.custom_vjp(lambda x: x ** 3, lambda x, dy: (2 * x ** 2 * dy,),
      ...                         name="cube")  # the derivative is 3x², not 2x²
      >>> with jaxbp.checking() as log:
      ...     _ = jax.jit(jax.grad(lambda x: cube(x).sum()))(jnp.arange(1.0, 4.0))
      >>> log.first_bad
      'cube'
    """
    log = CheckLog()
    _ACTIVE.append(log)
    try:
        with _switch(True):
            yield log
            jax.effects_barrier()  # callbacks still in flight reach the log
    finally:
        _ACTIVE.remove(log)
    log._decide()
