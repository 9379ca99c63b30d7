"""The diagnosis of the NumPy checks (``check_layer``, ``check_loss``, ``check_modules``).

The numeric fits (scale, sign, transpose, clipped, reduction, ...) need only your values
and the truth. The kinds decided by the forward's structure read it from the traced NumPy
forward (``jaxbp.as_jax``): its jaxpr when it traces abstractly, else (boolean-mask writes
such as ``out[out < 0] = 0`` need concrete values) the jaxpr of its linearization at the
point of the check, ``jax.linearize``, where a mask appears as a ``select_n`` on a
constant predicate or a product with a constant 0/1 array, and a gather keeps its ids.
A check given ``time_axis`` labels that axis of its inputs with the time steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check import _diagnose, _diagnose_jaxpr
from jaxbp.check._diagnose_reports import _upstream, time_regions


def _traceable(fn, leaves):
    """``fn`` when it traces abstractly at ``leaves``, else its linearization there."""
    with jax.enable_x64(True):
        try:
            jax.make_jaxpr(fn)(*leaves)
            return fn
        except Exception:  # value-dependent NumPy (boolean masks): the linear map instead
            _, linear = jax.linearize(fn, *leaves)
            return linear


def _structure(fn, leaves, cotangents, time_axis):
    length = np.shape(leaves[0])[time_axis] if time_axis is not None and leaves and np.ndim(
        leaves[0]) > time_axis else None

    cached = {}

    def read(part):
        if "fn" not in cached:
            cached["fn"] = _traceable(fn, leaves)
        target = cached["fn"]
        if part == "regions":
            return time_regions(leaves, time_axis, length) + _diagnose_jaxpr.read_regions(target,
                                                                                  leaves)
        if part == "kinks":
            return _diagnose_jaxpr.kink_bounds(target, leaves, cotangents)
        return _diagnose_jaxpr.missing_terms(target, leaves, cotangents)
    return read


def for_numpy(report, pairs, *, labels, fn=None, leaves=(), leaf_of=(), cotangents=(),
              sizes=None, time_axis=None):
    """``report`` with its diagnosis, from the pairs its rows were judged on.

    Args:
      report: the NumPy check's ``Report``; its rows align with ``pairs``.
      pairs: ``_numpy_common.Pair`` (yours and the truth, stacked over trials).
      labels: each row's label (its ``where``).
      fn: (*leaves) -> the traced forward's outputs (float64), or None (no jax truth).
      leaves: the float64 arrays fn differentiates.
      leaf_of: per row, the index of its leaf, or None.
      cotangents: the output cotangents, one pytree per trial.
      sizes: named sizes a scale may match ({"B": 8}).
      time_axis: the inputs' time axis, when the check was given one.
    """
    if report.ok:
        return report
    rows = [_diagnose.RowData(labels[k], p.yours, p.truth, r.budget_abs,
                              leaf_of[k] if fn is not None else None)
            for k, (p, r) in enumerate(zip(pairs, report.rows))
            if not r.ok and np.shape(p.yours) == np.shape(p.truth)]
    with jax.enable_x64(True):
        leaves = [jnp.asarray(x, jnp.float64) for x in leaves] if fn is not None else []
        findings = _diagnose.diagnose(
            rows, structure=None if fn is None else _structure(fn, leaves, cotangents,
                                                                time_axis),
            upstream=_upstream(cotangents) if cotangents else None, sizes=sizes)
    label = dict(zip([id(r) for r in report.rows], labels))
    return _diagnose.settle(report, findings, label=lambda r: label[id(r)])
