"""Verify a ``jaxbp.nn`` model module by module, and one module alone.

``verify_model`` runs the model's own chain (each module's hand-written
``backward``, last to first) and compares, module by module from the top,
its ∂L/∂input and every parameter gradient with the truth: ``jax.grad`` of
``model.loss`` in float64, taken with respect to the params and to a zero
perturbation added to each module's input (so ∂L/∂input is exact too).

Each module receives the ∂L/∂output that its successor returned; walking from
the top, the first module whose outputs are wrong received a right one, so:

* its ∂L/∂input wrong: "input" (its local derivative);
* only its parameter gradients wrong: "param";
* the fused top (softmax + nll, sigmoid + binary_nll) wrong: "loss";
* NaN or inf: "nonfinite".

Budgets as in ``jaxbp.verify``: the round-off of ``jax.grad`` of the same loss
in your dtype, ×10, or a floor of ``ROUNDOFF_FLOOR[dtype] × (n + 1)`` of the
scale (n modules). A parameter leaf is held to the scale of its module's
largest parameter gradient, so a leaf whose true gradient is exactly 0 (a bias
before BatchNorm, the key projection's bias) accepts round-off.
Parameter gradients are batch gradients (BatchNorm mixes examples, so
per-example ones do not exist).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check import _structural
from jaxbp.check._diagnose import merge
from jaxbp.check import _diagnose_reports
from jaxbp.check import _verify_sequence
from jaxbp.check._diagnose_fits import shape_kind
from jaxbp.check._report import Report
from jaxbp.check._compare import BackpropError, check_tolerance as _check_tolerance, max_abs as _max_abs, \
    budget as _budget, row as _row
from jaxbp.nn._compose import RESIDUAL_INNER, check_backward, split_key
from jaxbp.nn._module import Module
from jaxbp.check._verify_nn_truth import (
    _chain_with_trail, _forward, _grads_with_taps, _leaf_names, _np64, _pullback, _to)
from jaxbp.nn._sequential import Sequential, _chain


def verify_model(model: Sequential, params, X, Y, *, key: Optional[jax.Array] = None,
                 rtol: Optional[float] = None, atol: Optional[float] = None) -> Report:
    """Checks every module's backward in ``model``'s chain; see the module docstring.

    Args:
      model: a ``jaxbp.nn.Sequential``.
      params: from ``model.init`` (float32 or float64; budgets follow the dtype).
      X: a batch (leading batch axis); Y: targets shaped like the output.
      key: the PRNG key for random modules (Dropout): the same key is used for
        the truth, so the masks agree.
      rtol, atol: explicit budget (atol + rtol × scale) instead of the round-off one.

    Returns:
      A ``Report`` (mode "model"): a row per module from the last down (its
      ∂L/∂input as "input", then each parameter leaf), ``first_bad_layer`` the
      1-based index of the first wrong module in backward order, ``module`` its
      name, ``suspect`` one of "loss", "input", "param", "nonfinite".
    """
    rtol, atol = _check_tolerance("rtol", rtol), _check_tolerance("atol", atol)
    params, X, Y = model._inputs(params, X, Y)
    floats = [x for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
    dtype = np.dtype(floats[0].dtype if floats else X.dtype)
    n = len(model.modules)
    trail = []
    try:
        try:  # one compiled program; eagerly (op by op) only to report a failure as it happens
            grads, trail = _chain_with_trail(model, params, X, Y, key)
            trail = list(trail)
        except Exception:
            trail = []
            _, grads, _, _ = _chain(model, params, X, Y, key, trail=trail)
    except (ValueError, TypeError) as e:
        raise BackpropError(str(e)) from e
    except Exception as e:
        raise BackpropError(f"a module's backward raised {type(e).__name__}: {e}") from e
    # trail: (dparams, ∂L/∂input) per module, last first (a fused top: its (a − y)/N)
    dX_user = [dX for _, dX in reversed(trail)]
    with jax.enable_x64(True):
        p_truth, x_truth = _grads_with_taps(model, params, X, Y, key, jnp.float64)
        p_truth, x_truth = jax.tree.map(_np64, p_truth), [_np64(v) for v in x_truth]
    p_own, x_own = _grads_with_taps(model, params, X, Y, key, dtype)  # round-off of jax.grad
    for name, tree in (("∂L/∂params", p_truth), ("∂L/∂input", x_truth)):
        if not all(np.all(np.isfinite(v)) for v in jax.tree.leaves(tree)):
            raise ValueError(f"the float64 reference {name} (jax.grad of model.loss) has NaN or "
                             "inf on these inputs; nothing can be verified against it")

    def budget(observed, scale, floor_scale):
        return _budget(observed, scale, dtype, n, rtol, atol, floor_scale=floor_scale)

    rows, verdicts, arrays = [], [], {}  # arrays: (module, name) -> (yours, truth)
    for i in range(n, 0, -1):
        module_rows = []
        if x_truth[i - 1] is not None:
            want, got = x_truth[i - 1], _np64(dX_user[i - 1])
            observed = _max_abs(_np64(x_own[i - 1]) - want)
            scale = _max_abs(want)
            module_rows.append(("input", _row(i, "input", got, want,
                                              budget(observed, scale, scale),
                                              per_example=False)))
            arrays[i, "input"] = (got, want)
        if not (model.fused and i == n):
            wants = jax.tree.leaves(p_truth[i - 1])
            gots = [_np64(g) for g in jax.tree.leaves(grads[i - 1])]
            owns = [_np64(g) for g in jax.tree.leaves(p_own[i - 1])]
            module_scale = max([_max_abs(w) for w in wants] + [0.0])
            for name, want, got, own in zip(_leaf_names(params[i - 1]), wants, gots, owns):
                scale = _max_abs(want)
                module_rows.append(("param", _row(i, name, got, want,
                                                  budget(_max_abs(own - want), scale,
                                                         max(scale, module_scale)),
                                                  per_example=False)))
                arrays[i, name] = (got, want)
        rows.extend(r for _, r in module_rows)
        verdicts.append((i, module_rows))
    common = dict(rows=tuple(rows), mode="model", dtype=dtype.name,
                  batch_size=int(X.shape[0]), network=repr(model))
    for i, module_rows in verdicts:
        bad = [(kind, r) for kind, r in module_rows if not r.ok]
        if not bad:
            continue
        name = model.modules[i - 1].name
        if any(r.nonfinite for _, r in bad):
            suspect = "nonfinite"
        elif model.fused and i == n:
            suspect = "loss"
        elif any(kind == "input" for kind, _ in bad):
            suspect = "input"
        else:
            suspect = "param"
        worst = bad[0][1]
        note = (f"module {i} ({name}) {worst.parameter}: error {worst.max_abs_error:.3g} "
                f"(relative {worst.max_rel_error:.3g}, budget {worst.budget:.3g}) at entry "
                f"{worst.worst_entry}")
        notes = (note,) + _inside_residual(model, params, X, key, i, suspect)
        report = Report(ok=False, first_bad_layer=i, suspect=suspect, candidates=(suspect,),
                        notes=notes + (_budget_note(dtype, n, rtol, atol),), module=name,
                        **common)
        report = _diagnose_reports.for_model(report, model, params, X, key, i, arrays, x_truth)
        report = _verify_sequence.for_model(report, model, params, X, key, i,
                                            {r: v for (j, r), v in arrays.items() if j == i})
        return _diagnose_reports.with_gates(report, model.modules[i - 1].gates)
    return Report(ok=True, first_bad_layer=None, suspect=None,
                  notes=(_budget_note(dtype, n, rtol, atol),), **common)


def _inside_residual(model, params, X, key, i, suspect) -> tuple:
    """For a wrong Residual (module i): which inner module fails ``check_module`` on its input.

    The Residual's skip path is the identity, so a wrong Residual means a wrong inner
    module; each is checked alone against ``jax.vjp``, last first, at the inputs this
    batch gives it. Returns a note naming the first that fails (none: no note).
    """
    module = model.modules[i - 1]
    inner = RESIDUAL_INNER.get(module)
    if inner is None or suspect == "loss":
        return ()
    keys = split_key(key, len(model.modules) - (1 if model.fused else 0)) + (None,)
    A = X
    for m, p, k in zip(model.modules[:i - 1], params[:i - 1], keys):
        A, _ = m.forward(p, A, k)
    _, (inputs, _) = module.forward(params[i - 1], A, keys[i - 1])
    for j in range(len(inner), 0, -1):
        report = check_module(inner[j - 1], params[i - 1][j - 1], inputs[j - 1])
        if not report.ok:
            return (f"inside module {i} ({module.name}): inner module {j} ({inner[j - 1].name}) "
                    f"fails jaxbp.check_module on its input from this batch, suspect "
                    f"{report.suspect!r}",)
    return ()


def _shape_hint(message: str) -> str:
    """The kind a "shape (…); expected (…)" message suggests (transpose, reduction, …)."""
    import re
    found = re.search(r"shape (\([\d, ]*\)); expected (\([\d, ]*\))", message)
    if not found:
        return ""
    got, want = (tuple(int(v) for v in re.findall(r"\d+", g)) for g in found.groups())
    return shape_kind(got, want)


def _budget_note(dtype, n, rtol, atol) -> str:
    if rtol is not None or atol is not None:
        return f"budget: atol={atol or 0:g} + rtol={rtol or 0:g} × each leaf's scale (explicit)"
    return (f"budget: 10 × the round-off of jax.grad in {np.dtype(dtype).name}, at least "
            f"the {np.dtype(dtype).name} floor × {n + 1} of the scale (parameter leaves: of "
            f"their module's largest gradient)")


def check_module(module: Module, params, X, *, key: Optional[jax.Array] = None,
                 trials: int = 3, rtol: Optional[float] = None,
                 atol: Optional[float] = None) -> Report:
    """Checks one module's ``backward`` against ``jax.vjp`` of its ``forward``.

    For ``trials`` random cotangents dY ~ N(0, 1) of the output's shape, your
    ``backward(params, residuals, dY)`` must give dYᵀ ∂Y/∂params and dYᵀ ∂Y/∂X;
    the truth is ``jax.vjp`` of ``forward`` in float64.

    Args:
      module: a ``jaxbp.nn.Module``.
      params: its params (from ``module.init``).
      X: a batch (leading batch axis).
      key: the PRNG key passed to ``forward`` (random modules); the cotangents
        use ``jax.random.key(0)``.
      trials: how many random cotangents.
      rtol, atol: explicit budget instead of the round-off one.

    Returns:
      A ``Report`` (mode "module"): rows "input" and each parameter leaf (the
      worst trial in ``worst_example``), ``first_bad_layer`` 1 when wrong,
      ``suspect`` "input", "param", "nonfinite" or "structure" (every value
      right, but two extra calls show the backward changing its params,
      residuals or dY, disagreeing with itself, or not linear in dY: see
      ``diagnosis``).

    Example:
      >>> import jax, jax.numpy as jnp, jaxbp
      >>> from jaxbp import nn
      >>> layer = nn.Linear(3)
      >>> params, _ = layer.init(jax.random.key(0), (4,), jnp.float32)
      >>> jaxbp.check_module(layer, params, jnp.ones((2, 4))).ok
      True
    """
    if not isinstance(module, Module):
        raise TypeError(f"module: expected a jaxbp.nn.Module, got {type(module).__name__}")
    if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials: expected a positive int, got {trials!r}")
    rtol, atol = _check_tolerance("rtol", rtol), _check_tolerance("atol", atol)
    X = jnp.asarray(X)
    floats = [x for x in jax.tree.leaves(params) if jnp.issubdtype(x.dtype, jnp.floating)]
    dtype = np.dtype(floats[0].dtype if floats else X.dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"X: expected floats when the module has no float params, got {dtype}")
    integer_input = jnp.issubdtype(X.dtype, jnp.integer)
    Y, residuals = _forward(module, params, X, key)
    dYs = [jax.random.normal(k, Y.shape, Y.dtype)
           for k in jax.random.split(jax.random.key(0), trials)]

    def pullback(p, x, dY):
        return _pullback(module, integer_input, p, x, dY, key)

    names = _leaf_names(params)
    guard = _structural.Guard({"params": params, "residuals": residuals}, dYs[0], "dY")
    yours, own, truth = [], [], []
    for t, dY in enumerate(dYs):
        try:
            dp, dX = module.backward(params, residuals, dY)
        except Exception as e:
            raise BackpropError(f"{module.name}: backward raised {type(e).__name__} on trial "
                                f"{t}: {e}") from e
        try:
            check_backward(module, module.name, params, dp, X, dX)
        except ValueError as e:
            raise BackpropError(str(e) + _shape_hint(str(e))) from e
        yours.append(([_np64(v) for v in jax.tree.leaves(dp)], _np64(dX)))
        p_own, x_own = pullback(params, X, dY)
        own.append(([_np64(v) for v in jax.tree.leaves(p_own)], _np64(x_own)))
        with jax.enable_x64(True):
            p_t, x_t = pullback(_to(params, jnp.float64), _to(X, jnp.float64),
                                dY.astype(jnp.float64))
            truth.append(([_np64(v) for v in jax.tree.leaves(p_t)], _np64(x_t)))

    def budget(observed, scale, floor_scale):
        return _budget(observed, scale, dtype, 1, rtol, atol, floor_scale=floor_scale)

    rows, arrays = [], []
    if not integer_input:
        want = np.stack([t[1] for t in truth])
        got = np.stack([y[1] for y in yours])
        observed = max(_max_abs(o[1] - t[1]) for o, t in zip(own, truth))
        rows.append(("input", _row(None, "input", got, want,
                                   budget(observed, _max_abs(want), _max_abs(want)),
                                   per_example=True)))
        arrays.append((got, want))
    module_scale = max([_max_abs(np.stack([t[0][j] for t in truth])) for j in range(len(names))]
                       + [0.0])
    for j, name in enumerate(names):
        want = np.stack([t[0][j] for t in truth])
        got = np.stack([y[0][j] for y in yours])
        observed = max(_max_abs(o[0][j] - t[0][j]) for o, t in zip(own, truth))
        scale = _max_abs(want)
        rows.append(("param", _row(None, name, got, want,
                                   budget(observed, scale, max(scale, module_scale)),
                                   per_example=True)))
        arrays.append((got, want))
    def call(dY):  # the backward's result as leaves in row order, for the structural checks
        dp, dX = module.backward(params, residuals, dY)
        return ([] if integer_input else [_np64(dX)]) + [_np64(v) for v in jax.tree.leaves(dp)]

    first = ([] if integer_input else [yours[0][1]]) + yours[0][0]
    findings = guard.check(call, first, [r.parameter for _, r in rows],
                           [r.budget_abs for _, r in rows])
    common = dict(rows=tuple(r for _, r in rows), mode="module", dtype=dtype.name,
                  batch_size=trials, network=module.name, module=module.name,
                  diagnosis=merge(findings))
    bad = [(kind, r) for kind, r in rows if not r.ok]
    if not bad:
        return _structural.apply(Report(ok=True, first_bad_layer=None, suspect=None, **common),
                                 findings, first_bad_layer=1)
    suspect = ("nonfinite" if any(r.nonfinite for _, r in bad)
               else "input" if any(kind == "input" for kind, _ in bad) else "param")
    r = bad[0][1]
    note = (f"{r.parameter}: worst entry {r.worst_entry} at trial {r.worst_example}, error "
            f"{r.max_abs_error:.3g} (relative {r.max_rel_error:.3g})")
    report = Report(ok=False, first_bad_layer=1, suspect=suspect, candidates=(suspect,),
                    notes=(note,), **common)
    report = _diagnose_reports.for_module(report, module, params, X, key, dYs, arrays, names)
    report = _verify_sequence.read(
        report, module, None, {r.parameter: a for (_, r), a in zip(rows, arrays)},
        probe=lambda: _verify_sequence.entry_gates(module, params, X, key))
    return _diagnose_reports.with_gates(report, module.gates)
