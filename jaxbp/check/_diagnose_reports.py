"""The diagnosis wired into each check: which leaves, which forward, which sizes.

Each helper takes what its check already computed (your values, the truth, the budgets,
the cotangents) and returns the report with ``diagnosis`` filled (``_diagnose.settle``).
Nothing here runs unless a row failed.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check import _diagnose, _diagnose_jaxpr


def _structure(fn, leaves, cotangents):
    """part -> the regions ("regions") or missing terms ("missing") of ``fn`` at ``leaves``."""
    def read(part):
        if part == "regions":
            return _diagnose_jaxpr.read_regions(fn, leaves)
        if part == "kinks":
            return _diagnose_jaxpr.kink_bounds(fn, leaves, cotangents)
        return _diagnose_jaxpr.missing_terms(fn, leaves, cotangents)
    return read


def _upstream(cotangents):
    """The output cotangents stacked over trials when the output is one array, else None."""
    leaves = [jax.tree.leaves(c) for c in cotangents]
    if not leaves or len(leaves[0]) != 1:
        return None
    return np.stack([np.asarray(c[0], np.float64) for c in leaves])


def _sizes(shape) -> dict:
    """Named sizes of an input batch a scale may match: B, and T for a sequence."""
    sizes = {"B": int(shape[0])} if len(shape) else {}
    if len(shape) >= 3 or (len(shape) == 2 and shape[1] > 1):
        sizes["T"] = int(shape[1])
    return sizes


def time_regions(leaves, time_axis, length) -> tuple:
    """One "time steps" region for a sequence check with a declared time axis: every leaf
    shaped like a sequence batch (B, T, ...) with ``length`` steps, labelled t + 1."""
    if time_axis is None or length is None or length < 2:
        return ()
    masks, labels = [], []
    for x in leaves:
        shape = np.shape(x)
        if len(shape) > time_axis + 1 and time_axis >= 1 and shape[time_axis] == length:
            steps = np.arange(1.0, length + 1).reshape((-1,) + (1,) * (len(shape) - 1 - time_axis))
            masks.append(np.ones(shape, bool))
            labels.append(np.broadcast_to(steps, shape))
        else:
            masks.append(np.zeros(shape, bool))
            labels.append(None)
    if not any(m.any() for m in masks):
        return ()
    return (_diagnose_jaxpr.Region("time steps", f"the steps of axis {time_axis}",
                                   tuple(masks), tuple(labels)),)


def with_time(structure, leaves, time_axis, x):
    """``structure`` whose regions also hold the steps of x's declared time axis."""
    if time_axis is None or structure is None or np.ndim(x) <= time_axis:
        return structure

    def read(part):
        got = structure(part)
        return (time_regions(leaves, time_axis, np.shape(x)[time_axis]) + tuple(got)
                if part == "regions" else got)
    return read


def with_gates(report, gates):
    """Findings on a gated leaf name the gate blocks ``report.gate`` found wrong, when those
    are some of the module's gates, not all of them."""
    if not report.gate or not gates or set(report.gate) >= set(gates):
        return report
    where = f" (in gate block{'s' if len(report.gate) > 1 else ''} {', '.join(report.gate)})"
    found = tuple(f._replace(detail=f.detail + where) if not f.where.endswith("input")
                  and f.kind not in ("not reentrant", "mutates input", "ignores upstream")
                  else f for f in report.diagnosis)
    return dataclasses.replace(report, diagnosis=found)


def for_vjp(report, forward, primals, cotangents, arrays):
    """``check_vjp``: the leaves are the primals' leaves; arrays: [(yours, truth)] per row."""
    if report.ok:
        return report
    flat, tree = jax.tree.flatten(primals)

    def fn(*leaves):
        return forward(*jax.tree.unflatten(tree, list(leaves)))

    rows = [_diagnose.RowData(r.parameter, y, t, r.budget_abs, j)
            for j, (r, (y, t)) in enumerate(zip(report.rows, arrays)) if not r.ok]
    out = jax.eval_shape(fn, *flat)
    out_shape = jax.tree.leaves(out)[0].shape if len(jax.tree.leaves(out)) == 1 else ()
    sizes = _sizes(out_shape) if out_shape else {}
    findings = _diagnose.diagnose(rows, structure=_structure(fn, flat, cotangents),
                                  upstream=_upstream(cotangents), sizes=sizes)
    return _diagnose.settle(report, findings)


def for_module(report, module, params, X, key, cotangents, arrays, names):
    """``check_module``: leaves are the params' leaves, then X (when it is float)."""
    if report.ok:
        return report
    p_flat, tree = jax.tree.flatten(params)
    floating = jnp.issubdtype(jnp.asarray(X).dtype, jnp.floating)

    def fn(*leaves):
        x = leaves[-1] if floating else X
        return module.forward(jax.tree.unflatten(tree, list(leaves[:len(p_flat)])), x, key)[0]

    leaves = list(p_flat) + ([X] if floating else [])
    index = {name: j for j, name in enumerate(names)}
    index["input"] = len(p_flat) if floating else None
    rows = [_diagnose.RowData(_diagnose.row_label(report.mode, r), y, t, r.budget_abs,
                              index.get(r.parameter))
            for r, (y, t) in zip(report.rows, arrays) if not r.ok]
    structure = with_time(_structure(fn, leaves, cotangents), leaves,
                          module.time_axis if floating else None, X)
    findings = _diagnose.diagnose(rows, structure=structure, upstream=_upstream(cotangents),
                                  sizes=_sizes(np.shape(X)))
    return _diagnose.settle(report, findings)


def for_model(report, model, params, X, key, i, arrays, x_truth):
    """``verify(model)``: the first wrong module i, at its input from this batch.

    Every module above i is right, so module i received the true ∂L/∂output: its rows
    are diagnosed as ``check_module`` would, with that one cotangent as the upstream.
    """
    from jaxbp.nn._compose import split_key

    n = len(model.modules)
    module = model.modules[i - 1]
    keys = split_key(key, n - 1 if model.fused else n) + (None,)
    A = X
    for m, p, k in zip(model.modules[:i - 1], params[:i - 1], keys):
        A, _ = m.forward(p, A, k)
    p_flat, tree = jax.tree.flatten(params[i - 1])
    floating = jnp.issubdtype(A.dtype, jnp.floating)
    top = i == n  # its upstream is the loss's gradient, not a module's input gradient

    def fn(*leaves):
        x = leaves[-1] if floating else A
        return module.forward(jax.tree.unflatten(tree, list(leaves[:len(p_flat)])), x,
                              keys[i - 1])[0]

    leaves = list(p_flat) + ([A] if floating else [])
    names = [jax.tree_util.keystr(path).lstrip(".") or "params"
             for path, _ in jax.tree_util.tree_flatten_with_path(params[i - 1])[0]]
    index = {name: j for j, name in enumerate(names)}
    index["input"] = len(p_flat) if floating else None
    rows = [_diagnose.RowData(_diagnose.row_label(report.mode, r), arrays[i, r.parameter][0][None],
                              arrays[i, r.parameter][1][None], r.budget_abs,
                              None if top else index.get(r.parameter))
            for r in report.rows if r.layer == i and not r.ok and (i, r.parameter) in arrays]
    upstream = None if top or x_truth[i] is None else [x_truth[i]]
    findings = _diagnose.diagnose(
        rows, structure=None if upstream is None else with_time(
            _structure(fn, leaves, upstream), leaves, module.time_axis if floating else None,
            A),
        upstream=None if upstream is None else np.asarray(upstream[0])[None],
        sizes=_sizes(np.shape(X)))
    return _diagnose.settle(report, findings)


def for_network(report, user, ref, *, batch_mean: bool):
    """``verify(net)``: per-example rows (B, m, n) against the per-example truth, or the
    batch means (a scale of B or 1/B there is the batch reduction)."""
    if report.ok or user is None:
        return report
    rows = []
    for r in report.rows:
        if r.ok:
            continue
        k = 0 if r.parameter == "W" else 1
        truth = ref.grads[r.layer - 1][k]
        yours = user[r.layer - 1][k]
        if batch_mean:
            truth, yours = truth.mean(axis=0)[None], np.asarray(yours)[None]
        rows.append(_diagnose.RowData(_diagnose.row_label(report.mode, r), yours, truth,
                                      r.budget_abs, 2 * (r.layer - 1) + k))
    from jaxbp.core._dense import Dense

    net = ref.net
    B = int(ref.X.shape[0])

    def per_example(*leaves):  # each example its own copy of the params: per-example regions
        params = tuple(Dense(leaves[2 * l], leaves[2 * l + 1]) for l in range(net.num_layers))
        return jnp.sum(jax.vmap(net.loss)(params, ref.X, ref.Y))

    stacked = [np.broadcast_to(p, (B,) + np.shape(p)) for W, W0 in ref.params64 for p in (W, W0)]
    structure = None if batch_mean else _structure(per_example, stacked, [np.float64(1.0)])
    findings = _diagnose.diagnose(rows, structure=structure, sizes={"B": B},
                                  batch_size=B if batch_mean else None)
    return _diagnose.settle(report, findings)


def for_intermediates(report, got, want):
    """``check_intermediates``: its own suspects as findings ("missing path" is "missing
    term", "scale" is "scale" or "sign"); "local derivative" goes through the fits."""
    from jaxbp.check._diagnose_fits import ratio, shape_kind
    from jaxbp.check._report import Finding

    u = report.first_bad
    row = report.row(u)
    where = f"d{u}"
    if report.suspect == "missing path":
        found = (Finding("missing term", where, f"yours lacks the gradient that flows back "
                         f"through {', '.join(report.missing)} (a forgotten +=)"),)
    elif report.suspect == "scale":
        c = report.scale
        found = ((Finding("sign", where, "yours is −1 × the truth: a lost minus sign", c),)
                 if abs(c + 1) <= 1e-6 else
                 (Finding("scale", where, f"yours is {ratio(c)} × the truth", c),))
    elif report.suspect == "shape":
        hint = shape_kind(row.given_shape, row.shape)
        kind = next((k for k in ("transpose", "reduction", "broadcasting") if k in hint), None)
        kind = "reduction" if kind == "broadcasting" else kind
        found = (Finding(kind or "other", where, f"shape {row.given_shape} where {row.shape} "
                         f"is due{hint}"),)
    elif report.suspect == "nonfinite":
        found = (Finding("other", where, "yours holds NaN or inf, which no kind explains"),)
    else:
        want = np.asarray(want, np.float64)
        found = _diagnose.merge(_diagnose._fits.fit_row(
            where, np.asarray(got, np.float64)[None], want[None], row.budget_abs))
    return dataclasses.replace(report, diagnosis=_diagnose.merge(found))
