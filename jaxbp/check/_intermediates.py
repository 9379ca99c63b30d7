"""``jaxbp.check_intermediates``: check ∂loss/∂v for every named intermediate v of any
forward pass, and name the step of your hand-written backward where the error entered.

Your ``forward(*args, tap)`` marks each value v to check with ``v = tap("v", v)``.
jaxbp runs it in float64 with ``tap(name, v) = v + ε_name`` (ε = 0), so

    truth_v = ∂loss/∂ε_v = ∂loss/∂v,  summed over every use of v,

by one ``jax.grad``. It also runs it "split": each tap returns a float64
constant equal to v plus ε, and outputs each tapped value before its tap.
There the value c (before its tap) depends on ε_u only through the direct
computation u → c, with no other tap in between, so

* the jaxpr of the split run says which taps c are computed directly from u
  (u's *consumers*), and which reach the returned loss with no tap between;
* its VJP with cotangent truth_c on c alone is the contribution
  (∂c/∂u)ᵀ truth_c of the path through c, exactly, and
  truth_u = Σ_c (∂c/∂u)ᵀ truth_c + (∂loss/∂u directly).

A forgotten ``+=`` on a value used twice leaves out some of these terms:
your gradient then equals truth_u − Σ_{c ∈ S} contribution_c for a subset S of
its paths ("missing path", ``report.missing`` = S).

Budget (per value, ``jaxbp.core._tolerances.roundoff_budget``): for float32 (and
float16/bfloat16) gradients, 10 × the measured round-off of ``jax.grad`` of the
same forward run in that dtype, or at least ROUNDOFF_FLOOR[dtype] × (depth + 1)
of the larger of max |truth_v| and the scale of the gradient flowing into v,
max |Σ_c (∂c/∂u)ᵀ |truth_c||; depth is v's number of backward steps from the loss
(at most 24, so a 1e-3 relative error is always caught). The second scale keeps
values whose gradient cancels to ~0 (a bias before a batchnorm, the max
subtracted from logits) from demanding relative accuracy that float32 cannot
have: your exact 0 or your round-off passes. float64: the floor alone
(1e-11 × (depth + 1), ~1e-10 relative). ``rtol``/``atol`` replace it
(allowed = atol + rtol × max |truth_v|).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Mapping
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.core._checks import is_concrete
from jaxbp.check import _diagnose_reports
from jaxbp.check._intermediates_report import IntermediateRow, IntermediatesReport
from jaxbp.check._intermediates_truth import Tap, Truth, discover, forward_loss, observed_roundoff
from jaxbp.core._tolerances import ROUNDOFF_FLOOR, roundoff_budget
from jaxbp.check._compare import check_tolerance as _check_tolerance, max_abs as _max_abs

MAX_DEPTH = 24  # the floor stops growing here: 2e-6 × 25 = 5e-5 ≪ 1e-3 in float32
MAX_SUBSETS_PATHS = 10  # every subset up to here; beyond, 1 or 2 paths, or all but 1 or 2


# ---------------------------------------------------------------- validation

def _check_forward(forward):
    if not callable(forward):
        raise TypeError(f"forward: expected a function forward(*args, tap) -> loss, got "
                        f"{type(forward).__name__}")
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # builtins, some wrappers: nothing to check
        return
    if "tap" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        name = getattr(forward, "__name__", "forward")
        raise TypeError(f"forward: jaxbp calls forward(*args, tap=tap); {name}"
                        f"{inspect.signature(forward)} has no parameter named tap")


def _check_args(args) -> tuple:
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args: expected a tuple of forward's positional arguments, e.g. "
                        f"(params, X, Y), or (x,) for one, got {type(args).__name__}")
    for leaf in jax.tree.leaves(tuple(args)):
        if not is_concrete(leaf):
            raise TypeError("args: check_intermediates needs concrete arrays; call it outside "
                            "jax.jit / jax.vmap")
    return tuple(args)


def _cast(args, dtype):
    """Floating leaves of args in dtype; integer leaves (indices, labels) as they are."""
    def cast(x):
        if jnp.issubdtype(jnp.result_type(x), jnp.floating):
            return jnp.asarray(x, dtype)
        return x
    return jax.tree.map(cast, args)


def _user_grads(grads, shapes: dict) -> dict:
    """grads as {name: numpy array}, names checked against the tapped ones."""
    if not isinstance(grads, Mapping):
        raise TypeError(f"grads: expected a dict {{tapped name: ∂loss/∂value}}, got "
                        f"{type(grads).__name__}")
    unknown = [n for n in grads if n not in shapes]
    if unknown:
        raise ValueError(f"grads: {', '.join(map(repr, unknown))} never tapped; the forward "
                         f"tapped: {', '.join(shapes)}")
    out = {}
    for name, g in grads.items():
        if not is_concrete(g):
            raise TypeError(f"grads[{name!r}]: expected a concrete array; call "
                            f"check_intermediates outside jax.jit / jax.vmap")
        try:
            arr = np.asarray(g)
        except Exception as e:
            raise TypeError(f"grads[{name!r}]: expected an array, got {type(g).__name__}") from e
        if jnp.dtype(arr.dtype) not in ROUNDOFF_FLOOR:
            raise TypeError(f"grads[{name!r}]: expected a float array (float64, float32, "
                            f"float16 or bfloat16), got dtype {arr.dtype}")
        out[name] = arr
    return out


# ---------------------------------------------------------------- public API

def intermediates(forward: Callable, args) -> dict:
    """Every tapped value of one run of ``forward(*args, tap=...)``, by name.

    For your hand-written backward: it needs the forward's intermediates
    (``h``, ``probs``, ...), as the exercise's backward reads them. The run uses
    args as given (their dtype); it works under ``jax.jit`` too.

    Args:
      forward: ``forward(*args, tap)`` returning a scalar loss, each value v to
        check marked as ``v = tap("v", v)``.
      args: a tuple of forward's positional arguments.

    Returns:
      ``{name: value}`` in tap order (the loss is there if you tapped it as "loss").

    Raises:
      ValueError: a name tapped twice, or a forward that does not return a scalar.

    Example:
      >>> import jax.numpy as jnp, jaxbp
      >>> def forward(w, x, *, tap):
      ...     w = tap("w", w)
      ...     h = tap("h", jnp.tanh(w * x))
      ...     return jnp.sum(h ** 2)
      >>> sorted(jaxbp.intermediates(forward, (jnp.ones(3), jnp.arange(3.0))))
      ['h', 'w']
    """
    _check_forward(forward)
    if not isinstance(args, (tuple, list)):
        raise TypeError(f"args: expected a tuple of forward's positional arguments, e.g. "
                        f"(params, X, Y), or (x,) for one, got {type(args).__name__}")
    tap = Tap()
    forward_loss(forward, tuple(args), tap)
    return dict(tap.values)


def check_intermediates(forward: Callable, args, grads: Mapping, *, rtol: Optional[float] = None,
                        atol: Optional[float] = None) -> IntermediatesReport:
    """Checks your ∂loss/∂v for each tapped v against float64 ``jax.grad``; names the bad step.

    The truth is ∂loss/∂v summed over every use of v (see the module docstring).
    Rows come in backward order (the reverse of the tap calls); the first
    failing one, ``first_bad``, is where the error entered: every value computed
    from it was right. There the ``suspect`` is

    * "missing path": yours = truth − the contribution through some of its
      consumers (``missing``; "(loss)": the path straight to the loss): a
      forgotten ``+=`` on a value used more than once;
    * "scale": yours = c × truth with c ≠ 1 (``scale`` = c): a missing 1/n,
      n vs n − 1, a factor 2;
    * "shape": your array's shape differs from the value's, e.g. (64,) for
      (1, 64);
    * "nonfinite": NaN or inf;
    * "local derivative": anything else: the derivative of a consumer with
      respect to the value is wrong.

    Args:
      forward: ``forward(*args, tap)`` returning a scalar loss, in
        ``jax.numpy``; jaxbp passes ``tap=`` by keyword. Mark each value v to
        check (parameters too) with ``v = tap("v", v)`` and use what tap
        returns in place of v.
      args: a tuple of forward's positional arguments (pytrees of arrays).
        Floating leaves are cast to float64 for the truth and to your
        gradients' dtype for the round-off measurement; others (indices,
        labels) are passed as they are.
      grads: ``{name: your ∂loss/∂value}``, JAX or NumPy arrays of any float
        dtype, for any subset of the tapped names.
      rtol, atol: an explicit budget, atol + rtol × max |truth| per value,
        instead of the round-off one.

    Returns:
      An ``IntermediatesReport``: ``ok``, ``first_bad``, ``consumers``,
      ``suspect``, ``missing``, ``scale``, one row per tapped value.

    Raises:
      ValueError: a name in grads that was never tapped, a name tapped twice,
        a forward that does not return a scalar, a tap whose result the loss
        does not use.
      TypeError: forward without a ``tap`` parameter, args not a tuple, grads
        not a dict of float arrays.

    Example:
      >>> import jax.numpy as jnp, jaxbp
      >>> def forward(w, x, *, tap):
      ...     w = tap("w", w)
      ...     h = tap("h", jnp.tanh(w * x))
      ...     return jnp.sum(h ** 2)
      >>> w, x = jnp.ones(3), jnp.arange(3.0)
      >>> v = jaxbp.intermediates(forward, (w, x))
      >>> dh = 2 * v["h"]
      >>> dw = dh * (1 - v["h"] ** 2) * x
      >>> jaxbp.check_intermediates(forward, (w, x), {"h": dh, "w": dw}).ok
      True
    """
    _check_forward(forward)
    args = _check_args(args)
    rtol, atol = _check_tolerance("rtol", rtol), _check_tolerance("atol", atol)
    with jax.enable_x64(True):
        args64 = _cast(args, jnp.float64)
        shapes = discover(forward, args64)
        user = _user_grads(grads, shapes)  # before anything compiles
        truth = Truth(forward, args64, shapes)
    explicit = rtol is not None or atol is not None
    observed = {}
    if not explicit:
        for dtype in sorted({jnp.dtype(g.dtype) for g in user.values()} - {jnp.dtype("float64")},
                            key=str):
            observed[dtype] = observed_roundoff(forward, _cast(args, dtype), truth, dtype)
    rows, notes = [], []
    for name in reversed(truth.names):
        rows.append(_row(name, truth, user.get(name), observed, rtol, atol, notes))
    return _judge(truth, user, tuple(rows), notes, explicit)


# --------------------------------------------------------------- comparison

def _row(name, truth: Truth, got, observed, rtol, atol, notes) -> IntermediateRow:
    want = truth.truth[name]
    scale = _max_abs(want)
    if got is None:
        return IntermediateRow(name, want.shape, None, "", None, None, None, None, scale, None,
                               "not given", True)
    dtype = jnp.dtype(got.dtype)
    if rtol is not None or atol is not None:
        budget_abs = (atol or 0.0) + (rtol or 0.0) * scale
    else:
        seen = observed.get(dtype, {}).get(name, 0.0)
        if not np.isfinite(seen):
            notes.append(f"jax.grad in {dtype.name} gives NaN/inf for {name}: its budget is the "
                         f"floor alone")
            seen = 0.0
        budget_abs = roundoff_budget(seen, max(scale, truth.scale_in[name]), dtype,
                                     min(truth.depth[name], MAX_DEPTH))
    got64 = got.astype(np.float64)
    status = "ok"
    if got.shape != want.shape:
        status = "shape"
        try:
            got64, want = np.broadcast_arrays(got64, want)
        except ValueError:
            return IntermediateRow(name, truth.shapes[name], got.shape, dtype.name, float("inf"),
                                   float("inf"), _rel(budget_abs, scale), budget_abs, scale,
                                   None, "shape", False)
    diff = np.abs(got64 - want)
    bad = ~np.isfinite(got64)
    if np.any(bad):
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        err = float("inf")
        status = "nonfinite" if status == "ok" else status
    else:
        index = (tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape))
                 if diff.size else ())
        err = float(diff[index]) if diff.size else 0.0
        if status == "ok" and err > budget_abs:
            status = "wrong"
    return IntermediateRow(name, truth.shapes[name], got.shape, dtype.name, err,
                           _rel(err, scale), _rel(budget_abs, scale), budget_abs, scale, index,
                           status, status == "ok")


def _rel(x, scale):
    if scale > 0:
        return x / scale
    return 0.0 if x == 0 else float("inf")


def _judge(truth: Truth, user, rows, notes, explicit) -> IntermediatesReport:
    notes = list(notes)
    notes.append("budget: atol + rtol × max |truth| of each value (explicit)" if explicit else
                 "budget: max(10 × the round-off of jax.grad in your dtype, a floor of "
                 "ROUNDOFF_FLOOR[dtype] × (depth + 1) × the scale of the gradient flowing in)")
    common = dict(rows=rows, loss=truth.loss)
    bad = [r for r in rows if not r.ok]
    if not bad:
        return IntermediatesReport(ok=True, notes=tuple(notes), **common)
    row = bad[0]
    u = row.name
    consumers = truth.consumers[u]
    unchecked = [c for c in consumers if c not in user]
    if unchecked:
        notes.insert(0, f"the gradients of {', '.join(unchecked)} (computed from {u}) were not "
                        f"given, so the error may have entered there or above")
    base = dict(first_bad=u, consumers=consumers, **common)
    if row.status in ("shape", "nonfinite"):
        return _diagnose_reports.for_intermediates(IntermediatesReport(
            ok=False, suspect=row.status, notes=tuple(notes), **base), None, None)
    got = user[u].astype(np.float64)
    want = truth.truth[u]
    tol = 2 * row.budget_abs + 1e-3 * row.max_abs_error
    evidence = {"tolerance": tol}
    missing, misfit = _missing_path(got, want, truth.paths(u), tol)
    evidence["missing_path_misfit"] = misfit
    c, scale_misfit = _scale_fit(got, want)
    evidence["scale_misfit"] = scale_misfit
    if missing is not None and misfit <= tol:
        if scale_misfit <= tol and c is not None and abs(c) > 1e-2:
            notes.insert(0, f"d{u} is also {c:.6g} × the true gradient")
        return _diagnose_reports.for_intermediates(IntermediatesReport(
            ok=False, suspect="missing path", missing=missing, evidence=evidence,
            notes=tuple(notes), **base), got, want)
    if c is not None and scale_misfit <= tol and abs(c - 1) > 1e-6:
        if np.count_nonzero(want) == 1:
            notes.insert(0, f"d{u} has one nonzero entry, so any error in it is a constant "
                            f"multiple: 'scale' cannot be told from 'local derivative' here")
        return _diagnose_reports.for_intermediates(IntermediatesReport(
            ok=False, suspect="scale", scale=c, evidence=evidence, notes=tuple(notes),
            **base), got, want)
    return _diagnose_reports.for_intermediates(IntermediatesReport(
        ok=False, suspect="local derivative", evidence=evidence, notes=tuple(notes), **base),
        got, want)


def _missing_path(got, want, paths, tol):
    """The smallest subset S of paths with max |got − (want − Σ_S contribution)| <= tol (the
    best fit if none is within tol), and its misfit."""
    if not paths:
        return None, float("inf")
    k = len(paths)
    if k <= MAX_SUBSETS_PATHS:
        subsets = [s for r in range(1, k + 1) for s in itertools.combinations(range(k), r)]
    else:  # one or two paths missing, or all but one or two
        small = [s for r in (1, 2) for s in itertools.combinations(range(k), r)]
        subsets = small + [tuple(j for j in range(k) if j not in s) for s in small]
    best, best_key = None, (float("inf"), float("inf"))
    for s in subsets:
        misfit = _max_abs(got - (want - sum(paths[i][1] for i in s)))
        key = (len(s) if misfit <= tol else float("inf"), misfit)
        if key < best_key:
            best, best_key = tuple(paths[i][0] for i in s), key
    return best, best_key[1]


def _scale_fit(got, want):
    """The least-squares c in got ≈ c × want, and max |got − c × want|."""
    norm = float(np.sum(want * want))
    if norm == 0:
        return None, float("inf")
    c = float(np.sum(got * want) / norm)
    return c, _max_abs(got - c * want)
