"""The verifier's report: one row per gradient leaf, a verdict, and the reason.

``jaxbp.verify`` and ``jaxbp.check_vjp`` both return a ``Report``. A row
compares one leaf (W^ℓ or W0^ℓ of a layer, or one primal's cotangent) with the
reference over every example:

    max_abs_error = max_{b, entry} |yours − reference|
    max_rel_error = max_abs_error / max_{b, entry} |reference|

and the leaf passes when ``max_abs_error <= budget_abs``; ``budget`` is the
same budget relative to the leaf's scale. NaN or inf in your values always fails.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, NamedTuple, Optional

from jaxbp.check import _report_view
from jaxbp.check._report_view import fmt as _fmt

SUSPECTS = ("loss", "activation", "link", "weight", "bias", "batch", "nonfinite", "backward",
            "input", "param", "second order", "structure")

_EXPLAIN = {
    "loss": "∂L/∂z^{l} is wrong at the top layer: check the loss factor ∂L/∂a^L times the last "
            "activation's factor f^L'(z^L) (fused with nll or binary_nll: ∂L/∂z^L = a^L − y).",
    "activation": "∂L/∂z^{l} is wrong while ∂L/∂z^{l1} is right, and the error is a factor "
                  "that depends on z^{l}: check the activation factor f^{l}'(z^{l}) of layer "
                  "{l} ({act}).",
    "link": "∂L/∂z^{l} is wrong while ∂L/∂z^{l1} is right, and the wrong values are a linear "
            "map of ∂L/∂z^{l1}: check the link ∂L/∂a^{l} = W^{l1} ∂L/∂z^{l1} (transposed? another "
            "layer's W? scaled?).",
    "weight": "your bias gradient ∂L/∂z^{l} is right but ∂L/∂W^{l} is wrong: check the weight "
              "factor in ∂L/∂W^{l} = a^{lm1} (∂L/∂z^{l})ᵀ.",
    "bias": "∂L/∂W^{l} is right but the bias gradient is wrong: ∂L/∂W0^{l} must be ∂L/∂z^{l}.",
    "batch": "every example's gradient is right but the batch reduction is wrong (first at "
             "layer {l}): the batch gradient is the mean (1/B) Σ_b of the per-example ones.",
    "nonfinite": "NaN or inf in your gradient of layer {l}.",
    "backward": "the cotangent of primal {primal} is wrong.",
    "second order": "your backward's values are right, but its own derivative is not (first "
                    "wrong: {first}; jax.grad of jax.grad takes it through the layer): a term "
                    "hidden from autodiff, e.g. behind jax.lax.stop_gradient or computed "
                    "outside JAX.",
    "structure": "every value is right, but the backward itself misbehaves at {first} (see "
                 "the diagnosis): it changes what it was given, or a second call disagrees "
                 "with the first, or it does not scale with the upstream gradient.",
    "input": "module {l} ({module}) received a right ∂L/∂output but returned a wrong ∂L/∂input: "
             "check its backward's local derivative (the input's factor).",
    "param": "module {l} ({module}) returned a right ∂L/∂input but wrong parameter gradients: "
             "check its backward's parameter factor (e.g. the a^{lm1} of ∂L/∂W).",
}
_MODULE_EXPLAIN = {
    "loss": "the gradient entering the chain at the top (module {l}, {module}) is wrong: the "
            "loss factor ∂L/∂a^L (fused with the last activation: (a − y)/N).",
    "nonfinite": "NaN or inf in the gradients returned by module {l} ({module}).",
}


_MODULE_MODES = ("model", "module", "modules")  # first_bad_layer counts modules
_CHECKS = {"vjp": "jaxbp.check_vjp", "module": "jaxbp.check_module",
           "layer": "jaxbp.check_layer", "loss": "jaxbp.check_loss",
           "modules": "jaxbp.check_modules"}
_NAMED_EXPLAIN = {"backward": "your gradient of {first} is wrong."}  # check_layer, check_loss


class Finding(NamedTuple):
    """One diagnosis: what kind of mistake explains the error, and where.

    Attributes:
      kind: one word from the fixed vocabulary (``jaxbp.check._diagnose.KINDS``),
        e.g. "scale", "transpose", "masked", "time steps".
      where: the label of the row it is about ("layer 2 W", "module 3 (LSTM) Wh",
        "input x", "gate f", "t = 4").
      detail: one sentence a person reads.
      value: the number that goes with the kind (the scale c, the clip bound), or None.
    """

    kind: str
    where: str
    detail: str
    value: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Row:
    """One compared leaf.

    Attributes:
      layer: the layer ℓ (from 1 at the input), or None for ``check_vjp`` rows.
      parameter: "W" or "W0" (or "primals[i]..." for ``check_vjp``).
      shape: the leaf's shape for one example.
      max_abs_error: max |yours − reference| over examples and entries.
      max_rel_error: max_abs_error / max |reference| (inf where the reference is all 0).
      budget: the allowed relative error (budget_abs / scale).
      budget_abs: the allowed absolute error.
      scale: max |reference| over examples and entries.
      worst_example: index of the example (or cotangent trial) with the largest error.
      worst_entry: index of that entry within the leaf.
      ok: whether the leaf is within budget and finite.
      nonfinite: whether your leaf holds NaN or inf (worst_* then point at the first one).
    """

    layer: Optional[int]
    parameter: str
    shape: tuple
    max_abs_error: float
    max_rel_error: float
    budget: float
    budget_abs: float
    scale: float
    worst_example: Optional[int]
    worst_entry: tuple
    ok: bool
    nonfinite: bool = False


class JsonReport:
    """Mixin for report dataclasses with an ``explanation()``: ``to_dict`` and ``to_json``."""

    def to_dict(self) -> dict:
        """A JSON-ready dict (inf and NaN become the strings "inf", "nan")."""
        d = dataclasses.asdict(self)
        d["explanation"] = self.explanation()
        if "diagnosis" in d:  # findings as objects, not bare lists
            d["diagnosis"] = [dict(f._asdict()) for f in d["diagnosis"]]
        return _jsonable(d)

    def to_json(self, **kwargs) -> str:
        """``json.dumps(self.to_dict())``; keyword arguments go to ``json.dumps``."""
        return json.dumps(self.to_dict(), **kwargs)


@dataclasses.dataclass(frozen=True)
class Report(JsonReport, _report_view.Viewable):
    """What ``verify`` (or ``check_vjp``) found.

    Attributes:
      ok: True when every leaf is finite and within its budget.
      first_bad_layer: the first layer in backprop order (L down to 1) whose
        gradients are wrong; None when ok (and for ``check_vjp``).
      suspect: None when ok, else one of "loss", "activation", "link", "weight",
        "bias", "batch", "nonfinite" (``check_vjp``: "backward", "nonfinite" or "second order"; "structure"
        when every value is right but a structural finding fails the backward).
      rows: one ``Row`` per leaf, in backprop order.
      ambiguous: True when the evidence fits more than one suspect, or none
        well; ``candidates`` then lists them, most likely first.
      candidates: the suspects consistent with the evidence.
      notes: why the suspect was chosen, what could not be decided, budgets.
      mode: "per-example", "batch" (the batch mean), or "vjp".
      dtype: your gradients' dtype (budgets are set for it).
      batch_size: B (for ``check_vjp``, the number of random cotangents).
      network: a description of the network or function checked.
      activations: the network's activation names (for the explanation).
      primal: for ``check_vjp``, the index of the first wrong primal.
      evidence: the numbers behind the suspect (e.g. each test's misfit).
      finite_difference: with ``verify(..., finite_differences=True)``, the
        relative errors of jax.grad and of yours against central differences.
      module: for a ``jaxbp.nn`` model (mode "model") or ``check_module``
        (mode "module"), the name of the module at ``first_bad_layer``
        (``first_bad_layer`` then counts modules from 1 at the input).
      first_bad: the first wrong row's label as a string ("layer 2 W",
        "module 3 input", "x"); None when ok. Every report type has it.
      time_step: for a sequence input (a recurrent module, or ``time_axis=``),
        the latest time step t whose slice of the gradient is wrong; else None.
      gate: for a parameter with gate blocks (LSTM i, f, o, g), the gates whose
        blocks carry the error, most wrong first; () when none applies.
      truth: where the reference came from: "jax" (float64 autodiff) or
        "finite differences" (a NumPy forward that could not be traced).
      diagnosis: what kind of mistake explains the error, a tuple of
        ``Finding``, most telling first; () when nothing was diagnosed.
    """

    ok: bool
    first_bad_layer: Optional[int]
    suspect: Optional[str]
    rows: tuple
    ambiguous: bool = False
    candidates: tuple = ()
    notes: tuple = ()
    mode: str = "per-example"
    dtype: str = ""
    batch_size: int = 0
    network: str = ""
    activations: tuple = ()
    primal: Optional[int] = None
    evidence: Any = None
    finite_difference: Any = None
    module: Optional[str] = None
    first_bad: Optional[str] = None
    time_step: Optional[int] = None
    gate: tuple = ()
    truth: str = "jax"
    diagnosis: tuple = ()

    def __post_init__(self):
        if self.first_bad is None and not self.ok:
            bad = next((r for r in self.rows if not r.ok), None)
            if bad is not None:
                unit = "module" if self.mode in _MODULE_MODES else "layer"
                label = bad.parameter if bad.layer is None else f"{unit} {bad.layer} {bad.parameter}"
                object.__setattr__(self, "first_bad", label)

    def __bool__(self) -> bool:
        """``if report:`` is ``if report.ok:``."""
        return self.ok

    @property
    def bad_rows(self) -> tuple:
        """The rows that failed."""
        return tuple(r for r in self.rows if not r.ok)

    def explanation(self) -> str:
        """One sentence on what the suspect means at ``first_bad_layer``."""
        if self.suspect is None:
            return "all gradients agree with the reference within budget."
        l = self.first_bad_layer
        act = self.activations[l - 1] if l and len(self.activations) >= l else "?"
        table = _EXPLAIN
        if self.mode in _MODULE_MODES:
            table = {**_EXPLAIN, **_MODULE_EXPLAIN}
        elif self.mode in ("layer", "loss"):
            table = {**_EXPLAIN, **_NAMED_EXPLAIN}
        return table[self.suspect].format(
            l=l, l1=(l or 0) + 1, lm1=(l or 1) - 1, act=act, primal=self.primal,
            module=self.module, first=self.first_bad)

    def _view(self):
        """The report in the views' row protocol (``jaxbp.check._report_view``)."""
        unit = "module" if self.mode in _MODULE_MODES else "layer"
        rows = tuple(_report_view.ViewRow(
            label=(r.parameter if r.layer is None else f"{unit} {r.layer} {r.parameter}"),
            max_rel_error=r.max_rel_error, budget=r.budget, ok=r.ok,
            status="NONFINITE" if r.nonfinite else ("ok" if r.ok else "WRONG"),
            cells=(("max abs err", _fmt(r.max_abs_error)),
                   ("worst ex", "-" if r.worst_example is None else str(r.worst_example)),
                   ("worst entry", str(tuple(r.worst_entry)))))
            for r in self.rows)
        verdict, details = _report_view.verdict_and_details(str(self), len(rows))
        return _report_view.View(self.ok, verdict, details, rows)

    def __str__(self) -> str:
        lines = []
        what = _CHECKS.get(self.mode, "jaxbp.verify")
        if self.ok:
            lines.append(f"{what}: OK — every gradient agrees with the reference within budget")
        else:
            where = (f"primal {self.primal}" if self.mode == "vjp" and self.primal is not None
                     else self.first_bad if self.mode in ("vjp", "layer", "loss")
                     else f"module {self.first_bad_layer} ({self.module})"
                     if self.mode in _MODULE_MODES else f"layer {self.first_bad_layer}")
            amb = (f" (ambiguous: {' or '.join(self.candidates)})" if self.ambiguous else "")
            lines.append(f"{what}: WRONG — {where}, suspect: {self.suspect}{amb}")
            lines.append("  " + self.explanation())
        size = "trials" if self.mode in ("vjp", "module", "layer") else "B"
        lines.append(f"  {self.network}  dtype={self.dtype}  {size}={self.batch_size}  "
                     f"mode={self.mode}")
        head = (f"{'module' if self.mode in _MODULE_MODES else 'layer':>6} {'param':<12} {'max abs err':>11} {'max rel err':>11} "
                f"{'budget':>9} {'worst ex':>8}  {'worst entry':<12} status")
        lines.append(head)
        for r in self.rows:
            layer = "-" if r.layer is None else str(r.layer)
            ex = "-" if r.worst_example is None else str(r.worst_example)
            status = "NONFINITE" if r.nonfinite else ("ok" if r.ok else "WRONG")
            lines.append(f"{layer:>6} {r.parameter:<12} {_fmt(r.max_abs_error):>11} "
                         f"{_fmt(r.max_rel_error):>11} {_fmt(r.budget):>9} {ex:>8}  "
                         f"{str(tuple(r.worst_entry)):<12} {status}")
        if self.time_step is not None:
            lines.append(f"  time step: t = {self.time_step} is the latest wrong step")
        if self.gate:
            lines.append(f"  gate: {', '.join(self.gate)} (most wrong first)")
        if self.truth != "jax":
            lines.append(f"  truth: {self.truth}")
        for f in self.diagnosis:
            value = "" if f.value is None else f" (value {_fmt(f.value)})"
            lines.append(f"  diagnosis: {f.kind} at {f.where}: {f.detail}{value}")
        if self.finite_difference:
            fd = self.finite_difference
            lines.append(f"  finite differences: jax.grad vs FD {_fmt(fd['jax_grad_vs_fd'])}, "
                         f"yours vs FD {_fmt(fd['yours_vs_fd'])} (relative, batch mean)")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):  # numpy scalars
        return _jsonable(x.item())
    return x
