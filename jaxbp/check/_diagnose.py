"""What *kind* of mistake a wrong gradient is: the fixed vocabulary and how findings combine.

Every report (``verify``, ``check_module``, ``check_vjp``, ``check_intermediates``, the
NumPy checks) carries ``diagnosis``: a tuple of ``Finding(kind, where, detail, value)``,
most telling first. ``kind`` is one word of ``KINDS``; each is made only when it explains
the error to within the check's budget (what remains after the fit is within budget), so
a correct gradient has no findings, except "kink" (a valid subgradient at a point where
the forward is not differentiable, which leaves ``ok`` True).

One example of each kind:

* "scale": yours = c × truth, one c ≠ 1 (c = 1/B: a loss divided by B whose gradient is not);
* "sign": c = −1 (a minus sign lost in a subtraction's derivative);
* "transpose": dW equals the truth transposed (``x.T @ dy`` written ``dy.T @ x``);
* "flipped": a convolution's dW equals the truth flipped along its spatial axes;
* "masked": a ReLU's or a dropout's backward that forgets its mask (wrong exactly where the
  mask is off, right elsewhere);
* "repeated ids": an embedding gradient assigned (``dW[ids] = dy``) instead of accumulated;
* "ties": a max-pool backward that gives the whole gradient to every tied maximum;
* "border": a convolution's input gradient wrong only where the padding reaches;
* "time steps": a BPTT that forgets the carried state gradient (right at the last step only);
* "missing term": yours = truth − the contribution through one consumer (a forgotten ``+=``);
* "reduction": a mean where a sum is due, or the right numbers summed over the wrong axis;
* "clipped": yours = the truth clipped to ±c (min-char-rnn's ``np.clip(d, -5, 5)``);
* "ignores upstream": the backward's result does not scale with the upstream gradient;
* "not reentrant": two calls of the backward on the same inputs disagree;
* "mutates input": the backward changed an array it was given;
* "kink": the only disagreement is at a kink (ReLU at 0, a tie in a max) and yours is a
  valid subgradient there;
* "other": none of the above explains the error.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

from jaxbp.check import _diagnose_fits as _fits
from jaxbp.check._report import Finding

KINDS = ("scale", "sign", "transpose", "flipped", "masked", "repeated ids", "ties", "border",
         "time steps", "missing term", "reduction", "clipped", "ignores upstream",
         "not reentrant", "mutates input", "kink", "other")

# Findings about how the backward behaves as a function (it is wrong whatever its values).
STRUCTURAL = ("ignores upstream", "not reentrant", "mutates input")

# Most telling first: structural kinds, then the kinds read from the forward's structure,
# then the plain numeric fits; "kink" (not an error) and "other" (no explanation) last.
_RANK = {kind: i for i, kind in enumerate(
    STRUCTURAL + ("time steps", "repeated ids", "ties", "border", "masked", "missing term",
                  "flipped", "transpose", "reduction", "clipped", "sign", "scale", "kink",
                  "other"))}
assert set(_RANK) == set(KINDS)


def merge(*groups) -> tuple:
    """Concatenates tuples of ``Finding``, most telling first, without duplicates.

    The order is by kind (structural kinds first, "kink" and "other" last), stable
    within a kind, so the order each group gave its findings in is kept. A finding
    equal in (kind, where) to an earlier one is dropped.

    Args:
      *groups: tuples (or lists) of ``Finding``; None and () are skipped.

    Returns:
      One tuple of ``Finding``.

    Example:
      >>> from jaxbp import Finding
      >>> a = (Finding("scale", "layer 1 W", "yours is 2 × the truth", 2.0),)
      >>> b = (Finding("not reentrant", "layer 1 W", "two calls disagree"),)
      >>> [f.kind for f in merge(a, b, a)]
      ['not reentrant', 'scale']
    """
    seen, out = set(), []
    for group in groups:
        for f in group or ():
            if not isinstance(f, Finding):
                raise TypeError(f"merge: expected Finding values, got {type(f).__name__}")
            if f.kind not in _RANK:
                raise ValueError(f"merge: kind {f.kind!r} is not one of {KINDS}")
            key = (f.kind, f.where)
            if key not in seen:
                seen.add(key)
                out.append(f)
    clipped = {f.where for f in out if f.kind == "clipped"}  # a clip explains the nonlinearity

    def rank(f):
        if f.where in clipped and f.kind in ("clipped", "ignores upstream"):
            return (-1, f.kind != "clipped")
        return (_RANK[f.kind], False)
    return tuple(sorted(out, key=rank))


class RowData(NamedTuple):
    """One wrong row as the fits see it.

    Attributes:
      where: the row's label ("layer 2 W", "module 3 input", "primals[0]").
      yours, truth: float64 arrays of one shape, (trials or examples, *leaf shape).
      budget: the row's absolute budget.
      leaf: the index of the row's leaf among the structure's leaves, or None.
    """

    where: str
    yours: Any
    truth: Any
    budget: float
    leaf: Optional[int] = None


def diagnose(rows, *, structure: Optional[Callable] = None, upstream=None, sizes=None,
             batch_size=None) -> tuple:
    """The findings for the wrong rows of one check, most telling first.

    The plain numeric fits run first; only rows they leave unexplained ("other") pay for
    the forward's structure: its regions first, then (for rows still unexplained) the
    truth without each consumer edge.

    Args:
      rows: ``RowData`` of the rows that failed.
      structure: ("regions") -> tuple of ``Region``, ("missing") -> tuple of (edge,
        per-leaf truth without it), ("kinks") -> per leaf the truth with every kink's
        derivative 0 and 1 (a valid subgradient lies between), from ``_diagnose_jaxpr``;
        None when the forward is not at hand.
      upstream: the output cotangents stacked over trials, for reduction fits.
      sizes: named sizes a scale may match ({"B": 8, "T": 5}).
      batch_size: for batch-mean rows: B (a scale of B or 1/B is a reduction).

    Returns:
      A tuple of ``Finding``.
    """
    found = {}
    for r in rows:
        found[r.where] = _fits.fit_row(r.where, r.yours, r.truth, r.budget, upstream=upstream,
                                       sizes=sizes, batch_size=batch_size)
    def unexplained():
        return [r for r in rows if r.leaf is not None and found[r.where]
                and found[r.where][0].kind == "other"]

    for part in ("regions", "missing"):  # the costlier reading only where still needed
        todo = unexplained() if structure is not None else []
        if not todo or (part == "missing" and any(
                f and f[0].kind == "time steps" for f in found.values())):
            break  # a lost carry also spoils every weight's sum over steps: no term to find
        try:
            got = structure(part)
        except Exception as e:  # the structure is a bonus: an unreadable forward stays "other"
            note = f" (the forward's structure could not be read: {type(e).__name__})"
            for r in todo:
                f = found[r.where][0]
                found[r.where] = (f._replace(detail=f.detail + note),)
            break
        bounds = _kink_bounds(structure) if part == "regions" and any(
            g.kind == "kink" for g in got) else None
        for r in todo:
            regions = [(g.kind, g.site, g.masks[r.leaf], _bounds_of(bounds, r)
                        if g.kind == "kink" else None if g.groups is None else g.groups[r.leaf])
                       for g in (got if part == "regions" else ()) if g.masks[r.leaf].any()]
            missing = [(edge, np.reshape(by_leaf[r.leaf], np.shape(r.truth)))
                       for edge, by_leaf in (got if part == "missing" else ())
                       if by_leaf[r.leaf] is not None
                       and np.size(by_leaf[r.leaf]) == np.size(r.truth)]
            regions += _unions(regions)
            if regions or missing:
                found[r.where] = _fits.fit_row(r.where, r.yours, r.truth, r.budget,
                                               regions=regions, missing=missing,
                                               upstream=upstream, sizes=sizes,
                                               batch_size=batch_size)
    return merge(*found.values())


def _kink_bounds(structure):
    """Per leaf, the truth with the kinks' derivative 0 and 1 (None when unreadable)."""
    try:
        return structure("kinks")
    except Exception:  # no bounds: a disagreement at a kink is then not called one
        return None


def _bounds_of(bounds, r):
    """Row r's (2, *row shape) subgradient bounds, or None."""
    b = None if bounds is None or r.leaf is None else bounds[r.leaf]
    if b is None or np.size(b) != 2 * np.size(r.truth):
        return None
    return np.reshape(b, (2,) + np.shape(r.truth))


def _unions(regions) -> list:
    """One region per kind that several sites share (a loop's windows, one per step)."""
    out = []
    for kind in dict.fromkeys(k for k, *_ in regions):
        same = [r for r in regions if r[0] == kind]
        if len(same) < 2 or kind == "time steps":
            continue
        mask = np.logical_or.reduce([np.asarray(r[2]) for r in same])
        groups = None if any(r[3] is None for r in same) else sum(
            np.asarray(r[3], np.float64) for r in same)
        out.append((kind, f"{len(same)} sites ({same[0][1]}, …, {same[-1][1]})", mask, groups))
    return out


def row_label(mode: str, row) -> str:
    """A report row's label, as ``Report.first_bad`` spells it."""
    if row.layer is None:
        return row.parameter
    return f"{'module' if mode in ('model', 'module') else 'layer'} {row.layer} {row.parameter}"


def settle(report, findings, label: Optional[Callable] = None):
    """``report`` with its diagnosis; wrong only at kinks (valid subgradients): ``ok``.

    Every wrong row explained by a "kink" finding becomes ok; when no wrong row is left,
    the report is ok (this is on purpose: a valid subgradient is not a mistake).
    ``label(row)`` is a row's ``where`` when the check labels rows its own way.
    """
    label = label or (lambda r: row_label(report.mode, r))
    findings = merge(report.diagnosis, findings)
    kinks = {f.where for f in findings if f.kind == "kink"}
    if not kinks:
        return dataclasses.replace(report, diagnosis=tuple(findings))
    rows = tuple(dataclasses.replace(r, ok=True) if not r.ok and label(r) in kinks else r
                 for r in report.rows)
    note = ("the only disagreement is at kinks of the forward (ReLU at 0, ties in a max), "
            "where yours is a valid subgradient: ok")
    if any(not r.ok for r in rows):
        return dataclasses.replace(report, rows=rows, diagnosis=tuple(findings))
    return dataclasses.replace(report, ok=True, rows=rows, first_bad_layer=None, suspect=None,
                               ambiguous=False, candidates=(), primal=None,
                               first_bad=None, diagnosis=tuple(findings),
                               notes=(note,) + tuple(report.notes))
