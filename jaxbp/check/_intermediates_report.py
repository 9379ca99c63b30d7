"""The report of ``jaxbp.check_intermediates``: one row per tapped value, backward order.

A row compares your ∂loss/∂v for one tapped value v with the float64 truth:

    max_abs_error = max_entry |yours − truth|
    max_rel_error = max_abs_error / max_entry |truth|   (inf where the truth is all 0)

and passes when ``max_abs_error <= budget_abs``; ``budget`` is the same budget
relative to ``scale`` = max |truth|. Its ``status`` is one of

* "ok": within budget;
* "wrong": finite, same shape, over budget;
* "shape": your array's shape differs from v's (broadcastable or not: always a
  failure; the errors are measured after broadcasting where that is possible);
* "nonfinite": NaN or inf in your array (``worst_index`` is the first one);
* "not given": v was tapped but ``grads`` has no entry for it (not a failure;
  the error columns are None).
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Optional

from jaxbp.check import _report_view
from jaxbp.check._report import JsonReport, _fmt

STATUSES = ("ok", "wrong", "shape", "nonfinite", "not given")
SUSPECTS = ("missing path", "scale", "shape", "nonfinite", "local derivative")
LOSS_PATH = "(loss)"  # the path from a value straight to the returned loss, no tap between


@dataclasses.dataclass(frozen=True)
class IntermediateRow:
    """One tapped value's gradient, compared.

    Attributes:
      name: the name given to ``tap``.
      shape: the value's shape (and so the shape its gradient must have).
      given_shape: the shape of your array (None when not given).
      dtype: your array's dtype (the budget is set for it); "" when not given.
      max_abs_error: max |yours − truth| (None when not given).
      max_rel_error: max_abs_error / scale (inf where the truth is all 0).
      budget: the allowed relative error (budget_abs / scale).
      budget_abs: the allowed absolute error.
      scale: max |truth|, the float64 ∂loss/∂value's largest entry.
      worst_index: the index of the largest error (or of the first NaN/inf).
      status: "ok", "wrong", "shape", "nonfinite" or "not given".
      ok: whether the row passed ("not given" counts as passed: nothing to check).
    """

    name: str
    shape: tuple
    given_shape: Optional[tuple]
    dtype: str
    max_abs_error: Optional[float]
    max_rel_error: Optional[float]
    budget: Optional[float]
    budget_abs: Optional[float]
    scale: float
    worst_index: Optional[tuple]
    status: str
    ok: bool


@dataclasses.dataclass(frozen=True)
class IntermediatesReport(JsonReport, _report_view.Viewable):
    """What ``check_intermediates`` found.

    Attributes:
      ok: True when every given gradient has the right shape, is finite and is
        within its budget.
      rows: one ``IntermediateRow`` per tapped name, in backward order (the
        reverse of the order of the ``tap`` calls).
      first_bad: the first failing name in backward order, or None. Every value
        computed from it (its consumers) came earlier and passed, so the step
        back from those consumers to it is where the error entered.
      consumers: the tapped names computed directly from ``first_bad`` (no
        other tap in between), in forward order.
      suspect: None when ok, else "missing path", "scale", "shape",
        "nonfinite" or "local derivative".
      missing: with "missing path", the consumers whose contribution your
        gradient lacks ("(loss)": the path straight to the returned loss).
      scale: with "scale", the constant c with yours ≈ c × truth.
      loss: the loss in float64.
      notes: budgets, consumers not given, fits that also matched.
      evidence: the numbers behind the suspect (misfit of each tested fit).
      diagnosis: what kind of mistake explains the error, a tuple of ``Finding``
        (``jaxbp.check._diagnose.KINDS``): "missing path" is reported as "missing
        term", "scale" as "scale" (or "sign"); () when ok.
    """

    ok: bool
    rows: tuple
    first_bad: Optional[str] = None
    consumers: tuple = ()
    suspect: Optional[str] = None
    missing: tuple = ()
    scale: Optional[float] = None
    loss: float = 0.0
    notes: tuple = ()
    evidence: Optional[dict] = None
    diagnosis: tuple = ()

    def __bool__(self) -> bool:
        """``if report:`` is ``if report.ok:``."""
        return self.ok

    @property
    def bad_rows(self) -> tuple:
        """The rows that failed."""
        return tuple(r for r in self.rows if not r.ok)

    def row(self, name: str) -> IntermediateRow:
        """The row of one tapped name."""
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"{name!r} was not tapped; tapped: {', '.join(r.name for r in self.rows)}")

    def explanation(self) -> str:
        """One sentence on what the suspect means at ``first_bad``."""
        u, used_by = self.first_bad, ", ".join(self.consumers) or LOSS_PATH
        if self.suspect is None:
            return "every given gradient agrees with the float64 truth within budget."
        if self.suspect == "missing path":
            return (f"d{u} lacks the gradient that flows back through {', '.join(self.missing)}: "
                    f"{u} is used by {used_by}, and the gradients from every use must be "
                    f"summed (a forgotten +=).")
        if self.suspect == "scale":
            return (f"d{u} is {_ratio(self.scale)} × the true gradient while the gradients of "
                    f"{used_by} are right: a missing or extra constant factor in the step back "
                    f"to {u} (1/n? n vs n − 1? a factor 2?).")
        r = self.row(u)
        if self.suspect == "shape":
            return (f"d{u} has shape {r.given_shape} but {u} has shape {r.shape}: a gradient "
                    f"has its value's shape (keepdims? a reshape?).")
        if self.suspect == "nonfinite":
            return f"d{u} holds NaN or inf (first at index {r.worst_index})."
        return (f"d{u} is wrong while the gradients of {used_by} are right: check the local "
                f"derivative of {used_by} with respect to {u} in the step back to {u}.")

    def _view(self):
        """The report in the views' row protocol (``jaxbp.check._report_view``)."""
        rows = tuple(_report_view.ViewRow(
            label=r.name, max_rel_error=r.max_rel_error, budget=r.budget, ok=r.ok,
            status=(f"SHAPE {r.given_shape}" if r.status == "shape"
                    else r.status if r.ok else r.status.upper()),
            cells=(("shape", str(r.shape)), ("max abs err", _fmt(r.max_abs_error)),
                   ("worst index", "-" if r.worst_index is None else str(tuple(r.worst_index)))))
            for r in self.rows)
        verdict, details = _report_view.verdict_and_details(str(self), len(rows))
        return _report_view.View(self.ok, verdict, details, rows)



    def __str__(self) -> str:
        what = "jaxbp.check_intermediates"
        if self.ok:
            lines = [f"{what}: OK — every given gradient agrees with the float64 truth"]
        else:
            detail = {"missing path": f" (through {', '.join(self.missing)})",
                      "scale": f" (× {_ratio(self.scale)})"}.get(self.suspect, "")
            lines = [f"{what}: WRONG — d{self.first_bad}, suspect: {self.suspect}{detail}",
                     "  " + self.explanation()]
        given = sum(r.status != "not given" for r in self.rows)
        lines.append(f"  {len(self.rows)} values tapped, {given} given; loss {self.loss:.6g}")
        width = max([4] + [len(r.name) for r in self.rows])
        shape_width = max([5] + [len(str(r.shape)) for r in self.rows])
        index_width = max([11] + [len(str(r.worst_index)) for r in self.rows])
        lines.append(f"{'name':<{width}} {'shape':<{shape_width}} {'max abs err':>11} "
                     f"{'max rel err':>11} {'budget':>9}  {'worst index':<{index_width}} status")
        for r in self.rows:
            status = r.status if r.ok else r.status.upper()
            if r.status == "shape":
                status = f"SHAPE {r.given_shape}"
            index = "-" if r.worst_index is None else str(tuple(r.worst_index))
            lines.append(f"{r.name:<{width}} {str(r.shape):<{shape_width}} "
                         f"{_fmt(r.max_abs_error):>11} {_fmt(r.max_rel_error):>11} "
                         f"{_fmt(r.budget):>9}  {index:<{index_width}} {status}")
        for f in self.diagnosis:
            value = "" if f.value is None else f" (value {_fmt(f.value)})"
            lines.append(f"  diagnosis: {f.kind} at {f.where}: {f.detail}{value}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


def _ratio(c: Optional[float]) -> str:
    """c as a short number, with a small fraction beside it when it is one (31/32)."""
    if c is None:
        return "?"
    f = Fraction(c).limit_denominator(1000)
    if f.denominator > 1 and abs(float(f) - c) <= 1e-6 * abs(c):
        return f"{c:.6g} = {f.numerator}/{f.denominator}"
    return f"{c:.6g}"
