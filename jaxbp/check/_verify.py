"""``jaxbp.verify``: check anyone's hand-written backprop against jax.grad, and
say which layer and which factor of the chain rule is wrong.

The reference is ``jax.grad(net.loss)`` per example, in float64 whatever your
dtype (64-bit mode is switched on only inside the check). Your backprop is
called per example under ``jax.vmap`` (one example at a time if it cannot be
vmapped), and every leaf is compared over the whole batch (see ``Report``).

Budget: float64 gradients may differ by ~1e-10 relative (so 1e-6 fails); for
float32 jaxbp measures the round-off of its own correct backprop run in your
dtype on the same inputs and allows ``max(10 × that, 2e-6 × (L + 1))`` of each
leaf's scale (``jaxbp.core._tolerances.roundoff_budget``): a 3e-4 relative error in
one layer fails, correct float32 code passes. ``rtol``/``atol`` replace it
(allowed = atol + rtol × scale).

Localization follows the notes. The bias gradient of layer ℓ is ∂L/∂z^ℓ, so
walking from L down to 1 the first layer with a wrong leaf is where the error
entered:

* only ∂L/∂W^ℓ wrong: "weight" (the a^{ℓ−1} factor); only ∂L/∂W0^ℓ: "bias";
* both, at ℓ = L: "loss" (∂L/∂a^L and f^L', or the fused a^L − y);
* both, at ℓ < L (so ∂L/∂z^ℓ is wrong and ∂L/∂z^{ℓ+1} right): "activation" or
  "link", decided by the batch-wide fits in ``jaxbp.check._localize``;
* with ``batched=True``, your function is also called on batches of one: if
  those are all right the reduction over the batch is wrong: "batch";
* NaN or inf anywhere in your gradients: "nonfinite".
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check import _diagnose_reports, _layouts, _localize
from jaxbp.core._network import Network, _forward_trace, _per_example_grads
from jaxbp.check._compare import BackpropError, check_tolerance as _check_tolerance, max_abs as _max_abs, \
    budget, row as _row
from jaxbp.check._report import Report
from jaxbp.check._verify_calls import _call, _call_batch, _jit
from jaxbp.check._verify_nn import verify_model
from jaxbp.nn._sequential import Sequential
from jaxbp.core._tolerances import ROUNDOFF_FLOOR, ROUNDOFF_SAFETY, RTOL


class _Reference(NamedTuple):
    """The float64 truth and the round-off baseline for one (net, params, X, Y)."""

    net: Network
    params: tuple  # as given, validated
    X: jax.Array
    Y: jax.Array
    dtype: np.dtype
    params64: tuple  # ((W, W0), ...) numpy float64
    z: tuple  # z^1..z^L, (B, n^ℓ) numpy float64
    a: tuple  # a^0..a^L
    grads: tuple  # ((W (B, m, n), W0 (B, n)), ...) per example, numpy float64
    roundoff: tuple  # ((|err W|, |err W0|), ...) of jaxbp's backprop in dtype, per example
    mean_roundoff: tuple  # the same for the batch mean


def verify(net: Network, params, X, Y, *, backprop: Optional[Callable] = None,
           batched: Optional[bool] = None, layout: Optional[str] = None,
           reduction: Optional[str] = None,
           rtol: Optional[float] = None, atol: Optional[float] = None,
           finite_differences: bool = False, key: Optional[jax.Array] = None) -> Report:
    """Checks a hand-written backprop against float64 ``jax.grad`` and localizes errors.

    A ``jaxbp.nn.Sequential`` model is checked module by module instead (its
    backward is its modules' ``backward``): see ``jaxbp.check._verify_nn.verify_model``;
    ``first_bad_layer`` then counts modules, ``report.module`` names the wrong one
    and ``suspect`` is "loss", "input", "param" or "nonfinite".

    Args:
      net: the ``Network`` whose loss defines the gradient, or a
        ``jaxbp.nn.Sequential`` model.
      params: tuple of ``Dense`` (float32 or float64; budgets follow this dtype).
      X: inputs, shape (B, m^1).
      Y: targets, shape (B, n^L).
      backprop: your ``fn(params, x, y)`` for one example returning a tuple of
        ``Dense`` shaped like params (as ``net.backprop``); with ``batched=True``
        ``fn(params, X, Y)`` returning the batch-mean gradient. None checks
        jaxbp's own backprop.
      batched: whether ``backprop`` takes a batch and returns the mean. None: what
        ``backprop`` is marked with (``jaxbp.adapters.module_backprop``: True), else False.
      layout: "rows" (jaxbp's: x (m,), X (B, m), W0 (n,)) or "columns" (the
        6.390 homework's: x (m, 1), X (m, B), y (n, 1), Y (n, B), W0 (n, 1); your
        function returns per layer ``(dW (m, n), dW0 (n, 1))``). Your function is
        wrapped at the boundary, so rows, layers and suspects read the same. None: what
        ``backprop`` is marked with (``module_backprop``: "columns"), else "rows".
      reduction: "mean" or "sum": what a batched ``backprop`` returns, the
        gradient of the batch's mean loss or of its sum (the homework's NLL). None: the
        mark of ``backprop`` (``module_backprop``: "sum"), else "mean".
      rtol: allowed error relative to each leaf's largest reference entry.
      atol: allowed absolute error. Either one replaces the round-off budget.
      finite_differences: also compare with central differences in float64
        (``Report.finite_difference``): a third opinion at kinks. Costs two
        batch-loss evaluations per parameter: for small networks.

    Returns:
      A ``Report``: ``ok``, ``first_bad_layer``, ``suspect``, a row per leaf.

    Raises:
      BackpropError (a ValueError): your backprop raised or returned the wrong
        structure or shapes; the message names the layer and what was expected.

    Example:
      >>> import jax, jaxbp
      >>> net = jaxbp.Network(sizes=(3, 4, 2), activations=("tanh", "softmax"), loss="nll")
      >>> params = net.init(jax.random.key(0))
      >>> X = jax.random.normal(jax.random.key(1), (16, 3))
      >>> Y = jax.nn.one_hot(jax.numpy.arange(16) % 2, 2)
      >>> jaxbp.verify(net, params, X, Y).ok
      True
    """
    layout = getattr(backprop, "jaxbp_layout", "rows") if layout is None else layout
    reduction = getattr(backprop, "jaxbp_reduction", "mean") if reduction is None else reduction
    batched = bool(getattr(backprop, "jaxbp_batched", False)) if batched is None else batched
    if isinstance(net, Sequential):
        if backprop is not None or batched or finite_differences or (layout, reduction) != (
                "rows", "mean"):
            raise TypeError("backprop, batched, layout, reduction, finite_differences: not for a "
                            "jaxbp.nn model, whose backward is its modules' own backward functions")
        return verify_model(net, params, X, Y, key=key, rtol=rtol, atol=atol)
    if key is not None:
        raise TypeError("key: only for jaxbp.nn models (random modules such as Dropout)")
    if not isinstance(net, Network):
        raise TypeError(f"net: expected a jaxbp.Network or a jaxbp.nn.Sequential, got "
                        f"{type(net).__name__}")
    if backprop is not None and not callable(backprop):
        raise TypeError(f"backprop: expected a function (params, x, y) -> grads or None, "
                        f"got {type(backprop).__name__}")
    rtol, atol = _check_tolerance("rtol", rtol), _check_tolerance("atol", atol)
    layout, reduction = _layouts.check_layout(layout, reduction)
    if backprop is None and (layout, reduction) != ("rows", "mean"):
        raise ValueError(f"layout={layout!r}, reduction={reduction!r} describe your backprop "
                         f"function; pass it as backprop= (jaxbp's own is rows and mean)")
    params, X, Y = net._example(params, X, Y, batched=True)
    ref = reference(net, params, X, Y)
    if backprop is None:
        backprop = net.grad if batched else net.backprop
    backprop = _layouts.adapt(backprop, layout=layout, reduction=reduction, batched=batched)
    report = check_against(ref, backprop, batched=bool(batched), rtol=rtol, atol=atol)
    if finite_differences:
        report = _with_finite_differences(report, ref, backprop, batched)
    return report


# ----------------------------------------------------------------- reference

def _to64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def _np(tree):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def _truth64_fn(net: Network, params64, X64, Y64):
    """Per-example float64 jax.grad and the forward trace, one compiled program.

    One jit instead of eager ops: in a fresh process each eager op compiles on its
    own (~90 small compiles for a 5-layer net); one program compiles once.
    """
    truth = jax.vmap(jax.grad(net.loss), in_axes=(None, 0, 0))(params64, X64, Y64)
    return truth, _forward_trace(net, params64, X64)


def _own_grads_fn(net: Network, params, X, Y):
    """jaxbp's own per-example backprop in your dtype, and its batch mean (round-off runs)."""
    per = _per_example_grads.__wrapped__(net, params, X, Y)  # ((B, m, n), (B, n)) per layer
    return per, tuple((jnp.mean(g.W, axis=0), jnp.mean(g.W0, axis=0)) for g in per)


_truth64 = _jit(_truth64_fn, static_argnums=0)
_own_grads = _jit(_own_grads_fn, static_argnums=0)


def reference(net: Network, params, X, Y) -> _Reference:
    """The float64 jax.grad truth and the round-off baseline (validated inputs)."""
    dtype = np.dtype(params[0].W.dtype)
    with jax.enable_x64(True):
        p64, X64, Y64 = _np(tuple(params)), _np(X), _np(Y)  # numpy: no eager convert ops
        truth, trace = _truth64(net, p64, X64, Y64)
        grads = tuple((np.asarray(g.W), np.asarray(g.W0)) for g in truth)
        z, a = _np(trace.z), _np(trace.a)
        params64 = tuple((p.W, p.W0) for p in p64)
    for l, (gW, gW0) in enumerate(grads, start=1):
        if not (np.all(np.isfinite(gW)) and np.all(np.isfinite(gW0))):
            raise ValueError(
                f"the float64 reference gradient (jax.grad of net.loss) of layer {l} has NaN or "
                "inf on these inputs; nothing can be verified against it (check the scale of "
                "params and X)")
    # jaxbp's own backprop in your dtype: the round-off of a correct computation.
    lib, lib_means = _own_grads(net, tuple(params), X, Y)
    roundoff, mean_roundoff = [], []
    for g, means, (tW, tW0) in zip(lib, lib_means, grads):
        pairs = ((np.asarray(g.W, np.float64), tW), (np.asarray(g.W0, np.float64), tW0))
        roundoff.append(tuple(_max_abs(u - t) for u, t in pairs))
        mean_roundoff.append(tuple(_max_abs(np.asarray(m, np.float64) - t.mean(axis=0))
                                   for m, (_, t) in zip(means, pairs)))
    return _Reference(net, tuple(params), X, Y, dtype, params64, z, a, grads,
                      tuple(roundoff), tuple(mean_roundoff))


# ------------------------------------------------------------ the comparison

def _budget(observed, scale, floor_scale, ref, rtol, atol):
    return budget(observed, scale, ref.dtype, ref.net.num_layers, rtol, atol,
                  floor_scale=floor_scale)


def _rows(ref, user, truth, roundoff, rtol, atol, *, per_example):
    rows = []
    for l in range(ref.net.num_layers, 0, -1):
        for k, name in enumerate(("W", "W0")):
            want = truth[l - 1][k]
            scale = _max_abs(want)
            # The round-off floor scales with what was summed: for the batch mean that is
            # mean_b |g_b| (≥ |mean_b g_b|, which may cancel to round-off).
            floor_scale = scale if per_example else max(
                scale, _max_abs(np.mean(np.abs(ref.grads[l - 1][k]), axis=0)))
            budget = _budget(roundoff[l - 1][k], scale, floor_scale, ref, rtol, atol)
            rows.append(_row(l, name, user[l - 1][k], want, budget, per_example=per_example))
    return tuple(rows)


def _budget_note(ref, rows, rtol, atol) -> str:
    if rtol is not None or atol is not None:
        return f"budget: atol={atol or 0:g} + rtol={rtol or 0:g} × each leaf's scale (explicit)"
    L, dtype = ref.net.num_layers, ref.dtype
    floor = ROUNDOFF_FLOOR[jnp.dtype(dtype)] * (L + 1)
    worst = max((r.budget for r in rows if math.isfinite(r.budget)), default=0.0)
    note = (f"budget: max({ROUNDOFF_SAFETY:g} × the round-off of jaxbp's own backprop in "
            f"{dtype.name} on these inputs, {floor:.1e} of each leaf's scale); largest "
            f"{worst:.1e}")
    if worst > RTOL[jnp.dtype(dtype)]:
        note += (f" — above the usual {RTOL[jnp.dtype(dtype)]:g}: round-off is unusually large "
                 "here, so smaller errors cannot be told from it")
    return note


def check_against(ref: _Reference, fn: Callable, *, batched: bool = False, rtol=None,
                  atol=None, what: str = "backprop", vectorized: bool = False) -> Report:
    """``verify`` against a precomputed reference (the self-test reuses one per config).

    ``vectorized=True`` declares that the per-example ``fn`` also accepts a batch
    and returns each example's gradient with a leading axis (no vmap needed).
    """
    net, truth = ref.net, ref.grads
    mean_truth = tuple((W.mean(axis=0), W0.mean(axis=0)) for W, W0 in truth)
    if not batched:
        user, dtypes, notes = _call(fn, ref.params, ref.X, ref.Y, net, what, per_example=True,
                                    vectorized=vectorized)
        rows = _rows(ref, user, truth, ref.roundoff, rtol, atol, per_example=True)
        return _judge(ref, user, rows, notes, dtypes, "per-example", rtol, atol)
    user_mean, dtypes = _call_batch(fn, ref.params, ref.X, ref.Y, net, what)
    rows_mean = _rows(ref, user_mean, mean_truth, ref.mean_roundoff, rtol, atol,
                      per_example=False)
    if all(r.ok for r in rows_mean):
        return _judge(ref, None, rows_mean, [], dtypes, "batch", rtol, atol)
    try:  # your function on batches of one: the per-example gradients
        user, _, notes = _call(fn, ref.params, ref.X, ref.Y, net, what, per_example=False)
    except BackpropError as e:
        notes = [f"your function fails on a batch of one example, so the batch reduction "
                 f"cannot be right: {e}"]
        return _judge(ref, user_mean, rows_mean, notes, dtypes, "batch", rtol, atol, force="batch")
    rows = _rows(ref, user, truth, ref.roundoff, rtol, atol, per_example=True)
    if all(r.ok for r in rows):
        notes.append("called on one example at a time your function is right for every "
                     "example; only the reduction over the batch is wrong")
        return _judge(ref, user_mean, rows_mean, notes, dtypes, "batch", rtol, atol, force="batch")
    notes.append("your batch gradient is wrong and so is each example's (your function on "
                 "batches of one): the rows compare those per-example gradients")
    return _judge(ref, user, rows, notes, dtypes, "per-example", rtol, atol)


def _judge(ref, user, rows, notes, dtypes, mode, rtol, atol, force=None) -> Report:
    net = ref.net
    notes = list(notes)
    if dtypes and dtypes != {ref.dtype.name}:
        notes.append(f"your gradients are {', '.join(sorted(dtypes))} while params are "
                     f"{ref.dtype.name}; budgets are set for {ref.dtype.name}")
    notes.append(_budget_note(ref, rows, rtol, atol))
    common = dict(rows=rows, mode=mode, dtype=ref.dtype.name, batch_size=int(ref.X.shape[0]),
                  network=repr(net), activations=net.activations)
    if all(r.ok for r in rows):
        return Report(ok=True, first_bad_layer=None, suspect=None, notes=tuple(notes), **common)
    nonfinite = [r for r in rows if r.nonfinite]
    if nonfinite:
        r = nonfinite[0]
        notes.insert(0, f"NaN/inf in layer {r.layer} {r.parameter} at example "
                        f"{r.worst_example}, entry {r.worst_entry}")
        return Report(ok=False, first_bad_layer=r.layer, suspect="nonfinite",
                      candidates=("nonfinite",), notes=tuple(notes), **common)
    layer = max(r.layer for r in rows if not r.ok)
    if force is not None:
        report = Report(ok=False, first_bad_layer=layer, suspect=force, candidates=(force,),
                        notes=tuple(notes), **common)
        return _diagnose_reports.for_network(report, user, ref, batch_mean=True)
    suspect, ambiguous, candidates, more, evidence = _suspect(ref, user, rows, layer)
    report = Report(ok=False, first_bad_layer=layer, suspect=suspect, ambiguous=ambiguous,
                    candidates=tuple(candidates), notes=tuple(more + notes), evidence=evidence,
                    **common)
    return _diagnose_reports.for_network(report, user, ref, batch_mean=False)


def _suspect(ref, user, rows, l):
    """The suspect at the first bad layer l (see the module docstring)."""
    bad = {r.parameter: not r.ok for r in rows if r.layer == l}
    row_W = next(r for r in rows if r.layer == l and r.parameter == "W")
    WU, dU = user[l - 1]
    WT = ref.grads[l - 1][0]
    # What your ∂L/∂W^l would be if it were a^{l-1} (your ∂L/∂W0^l)ᵀ.
    implied = ref.a[l - 1][:, :, None] * dU[:, None, :]  # (B, m, 1) * (B, 1, n) -> (B, m, n)
    if bad["W"] and not bad["W0"]:
        return "weight", False, ("weight",), [], None
    if not bad["W"]:
        if _max_abs(implied - WT) > row_W.budget_abs:
            return "bias", False, ("bias",), [], None
        # a^{l-1} ≈ 0 on this batch: ∂L/∂W^l cannot tell whether ∂L/∂z^l itself is wrong.
        lower_bad = any(not r.ok for r in rows if r.layer < l)
        suspect, _, candidates, notes, evidence = _delta_suspect(ref, user, l)
        notes.insert(0, f"a^{l - 1} is (nearly) zero on this batch, so ∂L/∂W^{l} cannot tell a "
                        f"wrong bias gradient from a wrong ∂L/∂z^{l}")
        evidence = dict(evidence or {}, ambiguity="dead_input")
        if lower_bad:
            return suspect, True, tuple(candidates) + ("bias",), notes, evidence
        return "bias", True, ("bias",) + tuple(candidates), notes, evidence
    notes, extra = [], ()
    if _max_abs(WU - implied) > max(0.1 * _max_abs(WU - WT), row_W.budget_abs):
        notes.append(f"your ∂L/∂W^{l} is not a^{l - 1} (your ∂L/∂W0^{l})ᵀ either: the weight "
                     f"factor of layer {l} may be wrong too")
        extra = ("weight",)
    suspect, ambiguous, candidates, more, evidence = _delta_suspect(ref, user, l)
    if extra:
        evidence = dict(evidence or {}, ambiguity="weight_too")
    return (suspect, ambiguous or bool(extra), tuple(candidates) + extra, notes + more,
            evidence)


def _delta_suspect(ref, user, l):
    """Your ∂L/∂z^l (bias gradient) is wrong and ∂L/∂z^{l+1} right: which factor?"""
    net = ref.net
    if l == net.num_layers:
        return "loss", False, ("loss",), [], None
    act = net._acts[l - 1]
    e = user[l - 1][1] - ref.grads[l - 1][1]  # (B, n^l)
    D = ref.grads[l][1]  # true ∂L/∂z^{l+1}, (B, n^{l+1})
    z, a = ref.z[l - 1], ref.a[l]
    with jax.enable_x64(True):
        fprime = np.asarray(act.df(jnp.asarray(z))) if act.elementwise else None

        def vjp(G):  # the activation's vjp on a (K, B, n) stack of cotangents
            zz, aa = (jnp.broadcast_to(jnp.asarray(v), G.shape) for v in (z, a))
            return np.asarray(act.vjp(zz, aa, jnp.asarray(G)))

        # round-off in ‖e‖: about √(B n) entries of jaxbp's own error in your dtype
        noise = math.sqrt(e.size) * ref.roundoff[l - 1][1] / max(np.linalg.norm(e), 1e-300)
        suspect, ambiguous, candidates, notes, evidence = _localize.activation_or_link(
            e, D, ref.params64[l][0], z, a, fprime, vjp, noise, layer=l)
    return suspect, ambiguous, tuple(candidates), list(notes), evidence


# ------------------------------------------------------------ third opinion

def _with_finite_differences(report: Report, ref: _Reference, fn, batched) -> Report:
    from jaxbp.check._finite_difference import finite_difference_grad
    from jaxbp.core._tolerances import tree_relative_error

    net = ref.net
    with jax.enable_x64(True):
        fd = finite_difference_grad(net.batch_loss, _to64(ref.params), _to64(ref.X),
                                    _to64(ref.Y))
    fd = tuple((np.asarray(g.W), np.asarray(g.W0)) for g in fd)
    truth = tuple((W.mean(axis=0), W0.mean(axis=0)) for W, W0 in ref.grads)
    if batched:
        yours, _ = _call_batch(fn, ref.params, ref.X, ref.Y, net, "backprop")
    else:
        per, _, _ = _call(fn, ref.params, ref.X, ref.Y, net, "backprop", per_example=True)
        yours = tuple((W.mean(axis=0), W0.mean(axis=0)) for W, W0 in per)
    jax_fd, yours_fd = tree_relative_error(truth, fd), tree_relative_error(yours, fd)
    notes = list(report.notes)
    if jax_fd > 1e-5:
        notes.append(f"jax.grad and central differences disagree ({jax_fd:.1e}): some input "
                     "sits at or near a kink (relu at 0, the hinge margin), where the two "
                     "need not agree")
        if yours_fd < 1e-5:
            notes.append("your gradient agrees with central differences there")
    fd_info = {"jax_grad_vs_fd": jax_fd, "yours_vs_fd": yours_fd}
    return dataclasses.replace(report, notes=tuple(notes), finite_difference=fd_info)
