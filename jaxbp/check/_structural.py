"""Structural checks of a backward: does it scale with dy, repeat itself, leave its inputs alone?

Beyond its values, a backward (a VJP dy ↦ dyᵀ J) has three properties that
``torch.autograd.gradcheck`` also tests and that a value check on a few random
cotangents can miss or misread:

* **ignores upstream** — the result is linear in dy: doubling dy doubles it
  (and a zero dy gives zero). A backward that drops dy, or adds a term
  without it, fails this.
* **not reentrant** — two calls on the same inputs give the same result
  (up to round-off). Hidden state (a counter, an accumulator, a cache
  filled on the first call) fails this.
* **mutates input** — the backward leaves what it was given unchanged: the
  upstream gradient, the cache/residuals, the primals. JAX arrays are
  immutable, so for them only the containers (dicts, lists) can change;
  NumPy arrays are compared with copies taken before the calls.

Cost: two extra backward calls, made after the value trials. ``Guard`` is
taken *before* the trials (copies of the inputs and of the first trial's dy),
so a change made by any trial call is seen; then

    R = backward(inputs, copy of dy₀)      reentrancy: R = first trial's result?
    D = backward(inputs, 2 · dy₀)          linearity: D = 2 R?

each within the leaf's value budget (the one its row is judged by). After a
mutation the second call no longer sees the first call's inputs, so "not
reentrant" is only reported when nothing was mutated.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Callable, Sequence

import jax
import numpy as np

from jaxbp.check._diagnose import STRUCTURAL, merge
from jaxbp.check._report import Finding

FAILING = frozenset(STRUCTURAL)  # each makes a report's ok False, even with right values


def _freeze(leaf):
    """A value to compare with later: JAX arrays are immutable, the rest is copied."""
    if isinstance(leaf, jax.Array):
        return leaf
    if isinstance(leaf, np.ndarray):
        return leaf.copy()
    try:
        return copy.deepcopy(leaf)
    except Exception:  # an uncopyable object: compared by identity only
        return leaf


def _flatten(tree, prefix):
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return treedef, [(prefix + jax.tree_util.keystr(path), leaf) for path, leaf in flat]


def _children(tree, label):
    """(label, child) for a tuple's or dict's entries (a changed structure is named by entry)."""
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return [(f"{label}[{i}]", child) for i, child in enumerate(tree)]
    return [(label, tree)]


def _copy_tree(tree):
    """The same pytree with NumPy leaves copied (JAX leaves are shared: immutable)."""
    return jax.tree.map(lambda x: x.copy() if isinstance(x, np.ndarray) else x, tree)


class _Snapshot:
    """What ``tree`` held when taken; ``changes()`` lists what is different now."""

    def __init__(self, tree, prefix: str):
        self.tree, self.prefix = tree, prefix
        self.treedef, items = _flatten(tree, prefix)
        self.saved = [(name, leaf, _freeze(leaf)) for name, leaf in items]

    def changes(self) -> list:
        """[(label, max |change| or None)] for every leaf (or the structure) that changed."""
        treedef, items = _flatten(self.tree, self.prefix)
        if treedef != self.treedef:
            return [(self.prefix or "its input", None)]
        out = []
        for (name, _, before), (_, now) in zip(self.saved, items):
            if now is before:
                continue
            a, b = np.asarray(now), np.asarray(before)
            if a.shape != b.shape or a.dtype != b.dtype:
                out.append((name, None))
            elif not np.array_equal(a, b, equal_nan=True):
                diff = np.abs(a.astype(np.float64) - b.astype(np.float64)) \
                    if np.issubdtype(a.dtype, np.number) else None
                out.append((name, None if diff is None else float(np.nanmax(diff))))
        return out


class Guard:
    """Snapshots of a backward's inputs, taken before its first call.

    Args:
      inputs: ``{label: pytree}`` of what every call of the backward receives
        besides dy (e.g. ``{"primals": primals}`` or ``{"params": p,
        "residuals": r}``); labels prefix the leaf paths in findings.
      dy: the first trial's upstream gradient (a pytree).
      dy_label: how dy is named in findings ("dy", "dY").
    """

    def __init__(self, inputs: dict, dy, dy_label: str = "dy"):
        self.inputs = [_Snapshot(tree, label) for label, top in inputs.items()
                       for label, tree in _children(top, label)]
        self.dy = _Snapshot(dy, dy_label)
        self.dy_label = dy_label
        self.dy0 = _copy_tree(dy)  # untouched by the trials, whatever they do to dy

    def check(self, call: Callable, first: Sequence, names: Sequence[str],
              budgets: Sequence[float]) -> tuple:
        """Runs the two extra calls and returns the structural findings (most telling first).

        Args:
          call: ``dy -> [leaf, ...]``: the backward at the guarded inputs, its result as
            float64 NumPy leaves in row order.
          first: the first trial's result, the same leaves.
          names: each leaf's row label.
          budgets: each leaf's absolute budget (the one its row is judged by).

        Returns:
          A tuple of ``Finding``; () when the backward is linear in dy, repeats itself
          and changed nothing it was given.
        """
        before = [c for s in self.inputs for c in s.changes()]  # made by the trials
        dy_before = self.dy.changes()
        dy_again = _copy_tree(self.dy0)
        again_snapshot = _Snapshot(dy_again, self.dy_label)
        again = doubled = error = None
        try:
            again = call(dy_again)
            doubled = call(jax.tree.map(lambda d: d * 2, _copy_tree(self.dy0)))
        except Exception as e:  # it ran before on these inputs: a second call must too
            error = e
        inputs_changed = before + [c for s in self.inputs for c in s.changes()]
        findings, seen = [], set()
        for label, change in inputs_changed + dy_before + again_snapshot.changes():
            if label in seen:
                continue
            seen.add(label)
            how = "its structure or dtype" if change is None else f"by up to {change:.3g}"
            findings.append(Finding(
                "mutates input", label,
                f"the backward changed {label} in place ({how}): the caller's next use of it, "
                f"and the next call, see the changed values; work on a copy", change))
        if inputs_changed:  # later calls saw other inputs: reentrancy and linearity undecidable
            return tuple(findings)
        if error is not None:
            findings.append(Finding(
                "not reentrant", names[0] if names else self.dy_label,
                f"a second call of the backward on the same inputs raised "
                f"{type(error).__name__} ({error}) where the first call returned"))
            return tuple(findings)
        worst = None
        for name, a, b, budget in zip(names, again, first, budgets):
            err = _disagreement(a, b)
            if err > budget and (worst is None or err / max(budget, 1e-300) > worst[2]):
                worst = (name, err, err / max(budget, 1e-300))
        if worst is not None:
            findings.append(Finding(
                "not reentrant", worst[0],
                f"two calls of the backward on the same inputs disagree by {worst[1]:.3g} "
                f"on {worst[0]}: it keeps state between calls (an accumulator, a counter, "
                f"a cache)", worst[1]))
            return tuple(findings)  # the doubled call then says nothing about dy
        findings.extend(_upstream(again, doubled, names, budgets))
        return tuple(findings)


def _disagreement(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    same_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(same_nan, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    return float(np.max(diff)) if diff.size else 0.0


def _upstream(once, doubled, names, budgets) -> list:
    """"ignores upstream" when backward(2 dy) ≠ 2 backward(dy) beyond the budgets."""
    if not all(np.all(np.isfinite(x)) for x in list(once) + list(doubled)):
        return []  # NaN or inf: the value check reports it
    bad = [(name, _disagreement(d, 2 * o), budget)
           for name, o, d, budget in zip(names, once, doubled, budgets)]
    bad = [b for b in bad if b[1] > 2 * b[2]]
    if not bad:
        return []
    o = np.concatenate([np.ravel(x) for x in once])
    d = np.concatenate([np.ravel(x) for x in doubled])
    c = float(o @ d / (o @ o)) if np.any(o) else float("inf")
    name = max(bad, key=lambda b: b[1] / max(b[2], 1e-300))[0]
    if abs(c - 1) < 1e-3:
        detail = ("the result does not change when dy is doubled: the backward ignores the "
                  "upstream gradient (a zero dy gives the same non-zero result); multiply by dy")
    else:
        detail = (f"doubling dy scales the result by {c:.3g}, not 2: part of it does not depend "
                  f"on dy linearly (a zero dy would not give zero); every term must carry dy "
                  f"exactly once")
    return [Finding("ignores upstream", name, detail, c)]


def failing(findings) -> tuple:
    """The findings among ``findings`` that make a report's ``ok`` False."""
    return tuple(f for f in findings if f.kind in FAILING)


def apply(report, findings, **on_failure):
    """``report`` with ``findings`` merged into its diagnosis; a right report fails on a failing one.

    Args:
      report: a ``Report`` whose values were checked.
      findings: from ``Guard.check``.
      **on_failure: further ``Report`` fields to set when a finding fails a right report
        (``check_vjp``'s ``primal``, ``check_module``'s ``first_bad_layer``).

    Returns:
      The same report when there are no findings; else a copy with them in ``diagnosis``
      and, when every value was right but a finding fails the backward, ``ok`` False,
      ``suspect`` "structure" and ``first_bad`` the finding's ``where``.
    """
    findings = tuple(findings)
    if not findings:
        return report
    diagnosis = merge(report.diagnosis, findings)
    bad = failing(findings)
    if not report.ok or not bad:
        return dataclasses.replace(report, diagnosis=diagnosis)
    note = f"every value agrees with the reference, but {bad[0].kind} at {bad[0].where}: " \
           f"{bad[0].detail}"
    return dataclasses.replace(report, ok=False, suspect="structure", candidates=("structure",),
                               first_bad=bad[0].where, notes=(note,) + tuple(report.notes),
                               diagnosis=diagnosis, **on_failure)


def host_layer_findings(backward: Callable, douts: Sequence, cache, first: Sequence,
                        rows: Sequence) -> tuple:
    """The structural checks of a NumPy ``backward(*douts, cache)`` (CS231n's convention).

    The trials call the backward on fresh copies, so here the two extra calls get one
    more copy of the cache, kept to compare with afterwards ("mutates input" names
    ``cache[i]`` or ``dout``).

    Args:
      backward: ``backward(*douts, cache) -> gradients`` (a bare array for one).
      douts: the first trial's upstream gradients, one per output.
      cache: the forward's cache (copied here; the copy is what the calls receive).
      first: the first trial's gradients, float64 copies in row order.
      rows: the report's rows (labels and budgets), one per gradient.
    """
    cache = copy.deepcopy(cache)
    one = len(douts) == 1
    guard = Guard({"cache": cache}, douts[0] if one else tuple(douts), "dout")

    def call(dy):
        out = backward(*((dy,) if one else tuple(dy)), cache)
        out = (out,) if len(rows) == 1 and not isinstance(out, (tuple, list)) else out
        return [np.array(g, np.float64) for g in out]

    return guard.check(call, first, [r.parameter for r in rows], [r.budget_abs for r in rows])
