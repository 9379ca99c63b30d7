"""``verify(model)`` and ``check_module`` on a recurrent module: which time step, which gate.

Given a report whose first wrong module has a ``time_axis`` or ``gates``
(``jaxbp.nn.Module``), this fills in what ``jaxbp.check._sequence`` reads:

* Time. When the module's ∂L/∂input row is wrong, one row per time step of that
  input is added after it ("input t=3"), each held to the input row's budget;
  ``report.time_step`` is the latest wrong step and a note gives the pattern
  ("right from t = T−1 down to t+1, wrong at t and before": the gradient carried
  back through the state is lost; "wrong only at t": a local mistake).
* Gates. The module's gated leaves are those whose last axis is k·H, k = len(gates),
  with k·H the widest such last axis among its leaves (so a GRU's b_hn (H,) is not
  split). ``report.gate`` lists the gates whose blocks of a wrong gated leaf are
  wrong, ordered by their largest error relative to the leaf's scale.
* Where the error enters. A derivative left out inside one gate spreads, through
  the carried state, into every block of every step before. To find the gate it
  starts in, the module is probed on its first two steps with ∂L/∂Y on the last
  step only: there the last step's ∂L/∂A is local (nothing is carried in yet), and
  since h_{−1} = 0, ∂L/∂Wh = h_0 ⊗ ∂L/∂A_1 holds that step alone. If the probe's
  ∂L/∂x_1 is right, the last step is right and the mistake is in what is carried
  (no entering gate); else the gated leaf whose wrong blocks are fewest (nonempty)
  names the entering gates; they go first in ``report.gate`` and a note says so.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check._compare import max_abs, row as make_row
from jaxbp.check._sequence import gate_errors, locate_gates, locate_time
from jaxbp.core._tolerances import roundoff_budget


def gated_names(gates: tuple, shapes: dict) -> list:
    """The leaves (by name) split into gate blocks: last axis = the widest multiple of k."""
    k = len(gates)
    if not k:
        return []
    widths = [s[-1] for s in shapes.values() if len(s) and s[-1] and s[-1] % k == 0]
    if not widths:
        return []
    return [name for name, s in shapes.items() if len(s) and s[-1] == max(widths)]


def _time_rows(report, layer, got, want, axis, budget_abs):
    """(rows with one per time step inserted after the input row, TimeLocation or None)."""
    location = locate_time(got, want, axis=axis, budget_abs=budget_abs)
    if location is None:
        return report.rows, None
    steps = [make_row(layer, f"input t={t}", np.take(got, t, axis=axis),
                      np.take(want, t, axis=axis), budget_abs, per_example=layer is None)
             for t in range(got.shape[axis])]
    rows = list(report.rows)
    at = next(j for j, r in enumerate(rows) if r.layer == layer and r.parameter == "input")
    return tuple(rows[:at + 1] + steps + rows[at + 1:]), location


def _gates(report, layer, module, pairs):
    """The gates of the module's wrong gated leaves, most wrong (relative to scale) first."""
    shapes = {name: np.shape(got)[1 if layer is None else 0:] for name, (got, _) in pairs.items()
              if name != "input"}
    worst = {}
    for name in gated_names(module.gates, shapes):
        r = next((r for r in report.rows if r.layer == layer and r.parameter == name), None)
        if r is None or r.ok:
            continue
        got, want = pairs[name]
        errors = gate_errors(got, want, gates=module.gates)
        for g in locate_gates(got, want, gates=module.gates, budget_abs=r.budget_abs):
            worst[g] = max(worst.get(g, 0.0), errors[g] / max(r.scale, 1e-300))
    return tuple(sorted(worst, key=lambda g: (-worst[g], module.gates.index(g))))


def entry_gates(module, params, X, key) -> tuple:
    """The gates a two-step probe with ∂L/∂Y on the last step finds wrong (see the docstring).

    Returns () when the probe finds nothing, cannot run (T < 2, the module refuses the
    shorter input) or the module has no gates.
    """
    axis = module.time_axis
    if not module.gates or axis is None or X.ndim <= axis or X.shape[axis] < 2:
        return ()
    names = [jax.tree_util.keystr(p).lstrip(".") or "params"
             for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    leaves = jax.tree.leaves(params)
    gated = gated_names(module.gates, {n: np.shape(v) for n, v in zip(names, leaves)})
    dtype = leaves[0].dtype
    try:
        X2 = jax.lax.slice_in_dim(X, 0, 2, axis=axis)
        Y, residuals = module.forward(params, X2, key)
        rng = np.random.default_rng(0)
        last = np.zeros(Y.shape)
        np.moveaxis(last, axis, 0)[1] = rng.standard_normal(np.moveaxis(last, axis, 0)[1].shape)
        dY = jnp.asarray(last, Y.dtype)
        dp, dX = module.backward(params, residuals, dY)

        def pullback(p, x, dy):
            return jax.vjp(lambda p, x: module.forward(p, x, key)[0], p, x)[1](dy)

        own = pullback(params, X2, dY)
        with jax.enable_x64(True):
            to64 = lambda t: jax.tree.map(  # noqa: E731
                lambda v: v.astype(jnp.float64) if jnp.issubdtype(v.dtype, jnp.floating) else v, t)
            truth = jax.tree.map(np.asarray, pullback(to64(params), to64(X2),
                                                      dY.astype(jnp.float64)))
    except Exception:  # noqa: BLE001 - a probe the module cannot run says nothing
        return ()
    last = [np.take(np.asarray(v, np.float64), 1, axis=axis) for v in (dX, own[1], truth[1])]
    if max_abs(last[0] - last[2]) <= roundoff_budget(max_abs(last[1] - last[2]),
                                                     max_abs(last[2]), dtype, 1):
        return ()  # the last step, with nothing carried in, is right: the carry is wrong
    yours, own, truth = (jax.tree.leaves(t) for t in (dp, own[0], truth[0]))
    found = []
    for name, y, o, t in zip(names, yours, own, truth):
        if name not in gated:
            continue
        y, o = np.asarray(y, np.float64), np.asarray(o, np.float64)
        scale = max_abs(t)
        wrong = locate_gates(y, t, gates=module.gates,
                             budget_abs=roundoff_budget(max_abs(o - t), scale, dtype, 1))
        if wrong:
            found.append(wrong)
    return min(found, key=len) if found else ()


def read(report, module, layer, pairs, *, probe=None):
    """``report`` with the time rows, ``time_step``, ``gate`` and notes of a recurrent module.

    Args:
      report: a failing report whose first wrong module is ``module``.
      module: a ``jaxbp.nn.Module``; nothing changes without ``time_axis`` or ``gates``.
      layer: the rows' ``layer`` for this module (None in ``check_module``, whose arrays
        carry a leading trial axis).
      pairs: {row name ("input", leaf names): (yours, truth)} as float64 arrays.
      probe: optional ``() -> entry gates`` (``entry_gates`` at the module's input).

    Returns:
      A new ``Report`` (or the same one when nothing applies).
    """
    if report.ok or (module.time_axis is None and not module.gates):
        return report
    rows, notes, time_step, gate = report.rows, [], None, ()
    where = f"module {report.first_bad_layer} ({module.name})"
    input_row = next((r for r in rows if r.layer == layer and r.parameter == "input"), None)
    if module.time_axis is not None and input_row is not None and not input_row.ok \
            and "input" in pairs:
        got, want = pairs["input"]
        axis = module.time_axis + (1 if layer is None else 0)
        rows, location = _time_rows(report, layer, got, want, axis, input_row.budget_abs)
        if location is not None:
            time_step = location.time_step
            notes.append(f"{where} ∂L/∂input along time: {location.message}")
    if module.gates:
        gate = _gates(report, layer, module, pairs)
        entry = probe() if (probe is not None and gate) else ()
        if entry and set(entry) < set(gate):
            gate = entry + tuple(g for g in gate if g not in entry)
            notes.append(f"{where}: the error enters in gate {', '.join(entry)} (its block "
                            f"alone is wrong at the last step with nothing carried in) and "
                            f"spreads through the carried state into {', '.join(gate[len(entry):])}")
    notes = report.notes[:1] + tuple(notes) + report.notes[1:]
    return dataclasses.replace(report, rows=rows, notes=notes, time_step=time_step,
                               gate=gate)


def for_model(report, model, params, X, key, i, pairs):
    """``read`` for module i of a ``Sequential`` (``verify(model)``), probing it at its input."""
    module = model.modules[i - 1]
    if report.ok or (module.time_axis is None and not module.gates):
        return report

    def probe():
        from jaxbp.nn._compose import split_key

        n = len(model.modules)
        keys = split_key(key, n - 1 if model.fused else n) + (None,)
        A = X
        for m, p, k in zip(model.modules[:i - 1], params[:i - 1], keys):
            A, _ = m.forward(p, A, k)
        return entry_gates(module, params[i - 1], A, keys[i - 1])

    return read(report, module, i, pairs, probe=probe)
