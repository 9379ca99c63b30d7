"""The diagnosis wired into each check: which leaves, which forward, which sizes.

Each helper takes what its check already computed (your values, the truth, the budgets,
the cotangents) and returns the report with ``diagnosis`` filled (``_diagnose.settle``).
Nothing here runs unless a row failed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check import _diagnose, _diagnose_jaxpr


def _structure(fn, leaves, cotangents):
    """part -> the regions ("regions") or missing terms ("missing") of ``fn`` at ``leaves``."""
    def read(part):
        if part == "regions":
            return _diagnose_jaxpr.read_regions(fn, leaves)
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
    findings = _diagnose.diagnose(rows, structure=_structure(fn, leaves, cotangents),
                                  upstream=_upstream(cotangents), sizes=_sizes(np.shape(X)))
    return _diagnose.settle(report, findings)
