"""The fits that decide a kind, for one wrong row: cheap NumPy on arrays already computed.

``fit_row`` takes your values and the truth of one row (same shape; a leading trial or
example axis is fine), the row's absolute budget, and what the forward's structure gave
(regions from ``_diagnose_jaxpr.read_regions``, the truth without each consumer edge from
``_diagnose_jaxpr.missing_terms``, the upstream cotangents), and returns at most one
``Finding``: the first fit, most specific first, whose residual is within the budget.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np

from jaxbp.check._report import Finding


def _max(x) -> float:
    return float(np.max(np.abs(x))) if np.size(x) else 0.0


def _fits(candidate, yours, budget) -> bool:
    return candidate.shape == yours.shape and _max(candidate - yours) <= budget


def ratio(c: float) -> str:
    """c as a short number, with a small fraction beside it when it is one (31/32)."""
    f = Fraction(c).limit_denominator(1000)
    if f.denominator > 1 and abs(float(f) - c) <= 1e-6 * abs(c):
        return f"{c:.6g} = {f.numerator}/{f.denominator}"
    return f"{c:.6g}"


def scale_matches(c: float, sizes: dict, tol: float) -> str:
    """What a scale c matches among the sizes of the check ("1/B (B = 8)"), or ""."""
    cands = []
    for name, k in sizes.items():
        if k > 1:
            cands += [(k, f"{name} ({name} = {k})"), (1 / k, f"1/{name} ({name} = {k})"),
                      (k / (k - 1), f"{name}/({name} − 1): n vs n − 1 ({name} = {k})"),
                      ((k - 1) / k, f"({name} − 1)/{name}: n − 1 vs n ({name} = {k})")]
    cands += [(2.0, "2 (from a square?)"), (0.5, "1/2 (the 2 from a square?)")]
    for value, text in cands:
        if abs(c - value) <= tol * abs(value):
            return text
    return ""


def _perm_fit(yours, truth, lead, budget):
    """A non-identity permutation of the row's axes (then reshaped back) that fits, or None."""
    axes = tuple(range(lead, truth.ndim))
    if len([a for a in axes if truth.shape[a] > 1]) < 2 or len(axes) > 5:
        return None
    for perm in itertools.permutations(axes):
        if perm == axes:
            continue
        cand = truth.transpose(tuple(range(lead)) + perm).reshape(truth.shape)
        if _max(cand - truth) > budget and _fits(cand, yours, budget):
            return perm
    return None


def _flip_fit(yours, truth, lead, budget):
    """A spatial flip of a kernel (HWIO: the leading axes; OIHW: the trailing ones)."""
    nd = truth.ndim - lead
    if nd < 3:
        return None
    for spatial in (tuple(range(lead, lead + nd - 2)), tuple(range(lead + 2, lead + nd))):
        cand = np.flip(truth, axis=spatial)
        for swap in (False, True):
            c = cand
            if swap:  # flipped and in/out swapped (the input-gradient kernel)
                io = (lead + nd - 2, lead + nd - 1) if spatial[0] == lead else (lead, lead + 1)
                if truth.shape[io[0]] != truth.shape[io[1]]:
                    continue
                c = np.swapaxes(cand, *io)
            if _max(c - truth) > budget and _fits(c, yours, budget):
                return spatial, swap
    return None


def _reduction_fit(yours, truth, upstream, lead, budget):
    """yours = the upstream summed (or averaged) over some axes, the truth another reduction."""
    if upstream is None or lead != 1 or upstream.shape[0] != yours.shape[0]:
        return None
    size = int(np.prod(yours.shape[1:]))
    out_axes = tuple(range(1, upstream.ndim))
    for r in range(1, len(out_axes) + 1):
        for S in itertools.combinations(out_axes, r):
            summed = upstream.sum(axis=S)
            if int(np.prod(summed.shape[1:])) != size:
                continue
            n = int(np.prod([upstream.shape[a] for a in S]))
            for how, cand in (("summed", summed), ("averaged", summed / n)):
                cand = cand.reshape(yours.shape)
                if _max(cand - truth) > budget and _fits(cand, yours, budget):
                    return how, tuple(a - 1 for a in S)
    return None


def _in_region(e, mask, budget, groups, yours, truth):
    """(explains, valid subgradient) for the error e confined to a region's mask."""
    mask = np.broadcast_to(mask, e.shape)
    if not mask.any() or mask.all() or _max(e[~mask]) > budget or _max(e[mask]) <= budget:
        return False, False
    if groups is None:
        return True, False
    g = np.broadcast_to(groups, e.shape)
    valid = bool(np.all(yours[mask] * np.sign(truth[mask]) >= -budget))
    for lead in np.ndindex(e.shape[:e.ndim - np.ndim(groups)] or (1,)):
        idx = lead if e.ndim > np.ndim(groups) else ()
        ge, gm, gl = e[idx], mask[idx], g[idx]
        for label in np.unique(gl[gm]):
            if abs(float(np.sum(ge[gm & (gl == label)]))) > budget:
                valid = False
    return True, valid


def _subgradient(yours, mask, budget, bounds) -> bool:
    """At the kink entries yours lies between the truths with derivative 0 and 1 there."""
    if bounds is None or bounds.shape[1:] != yours.shape:
        return False
    lo, hi = np.minimum(bounds[0], bounds[1]), np.maximum(bounds[0], bounds[1])
    mask = np.broadcast_to(mask, yours.shape)
    return bool(np.all(yours[mask] >= lo[mask] - budget) and np.all(
        yours[mask] <= hi[mask] + budget))


def _time_fit(where, yours, truth, budget, site, labels):
    """A "time steps" finding when the labels mark a time axis and the wrong steps form the
    pattern of a lost carry, or one wrong first or last step (``_sequence.locate_time``)."""
    from jaxbp.check._sequence import locate_time

    labels = np.asarray(labels)
    lead = yours.ndim - labels.ndim
    for axis in range(labels.ndim):
        n = labels.shape[axis]
        steps = np.arange(1.0, n + 1).reshape((-1,) + (1,) * (labels.ndim - 1 - axis))
        if n > 1 and np.allclose(labels, steps):
            loc = locate_time(yours, truth, axis=lead + axis, budget_abs=budget)
            if loc is None:
                return None
            if loc.pattern == "carried" or (loc.pattern == "local" and loc.time_step in (
                    0, n - 1)):
                return (Finding("time steps", where, f"along {site}: "
                                f"{loc.message}", float(loc.time_step)),)
            return None
    return None


def fit_row(where: str, yours, truth, budget: float, *, lead: int = 1, regions=(),
            missing=(), upstream=None, sizes=None, batch_size=None) -> tuple:
    """The finding that explains one wrong row, or ("other") when no fit does.

    Args:
      where: the row's label.
      yours, truth: float64 arrays of one shape; the first ``lead`` axes index trials
        or examples (a fit is shared by all of them).
      budget: the row's absolute budget.
      regions: ``(kind, site, mask, groups)`` with mask (and groups) broadcastable to
        the row: where the forward is special (``_diagnose_jaxpr.Region`` per leaf).
      missing: ``(edge, truth without that edge)`` pairs.
      upstream: the cotangents of the output, (trials, *out shape), for reductions.
      sizes: named sizes a scale may match ({"B": 8}).
      batch_size: in a batch-mean comparison, B: a scale of B or 1/B is a reduction.

    Returns:
      A tuple with one ``Finding``.
    """
    yours, truth = np.asarray(yours, np.float64), np.asarray(truth, np.float64)
    scale = _max(truth)
    if not np.all(np.isfinite(yours)):
        return (Finding("other", where, "yours holds NaN or inf, which no kind explains"),)
    e = yours - truth
    if _max(e) <= budget:
        return ()
    # 1. along time: a scan's steps, read from the labels its region carries
    for kind, site, mask, groups in regions:
        found = _time_fit(where, yours, truth, budget, site, groups) if kind == "time steps" \
            else None
        if found:
            return found
    # 2. where the error sits: the smallest region of the forward that holds all of it
    best = None
    for kind, site, mask, groups in regions:
        if kind == "time steps":
            continue
        explains, valid = _in_region(e, mask, budget, None if kind == "kink" else groups,
                                     yours, truth)
        if kind == "kink" and explains:  # yours must be t·upstream, t in [0, 1], there
            explains = _subgradient(yours, mask, budget, groups)
        size = int(np.sum(mask))
        if explains and (best is None or size < best[0]):
            best = (size, kind, site, valid)
    if best is not None:
        size, kind, site, valid = best
        if kind == "ties" and valid:
            kind = "kink"
        return (Finding(kind, where, _REGION_DETAIL[kind].format(site=site, n=size)),)
    red = _reduction_fit(yours, truth, upstream, min(lead, max(truth.ndim - 1, 0)), budget)
    if red is not None:
        how, axes = red
        detail = f"yours is the upstream gradient {how} over axes {axes}"
        if how == "averaged":
            detail += " (a mean where a sum is due)"
        return (Finding("reduction", where, detail),)
    # 3. one constant factor
    denom = float(np.sum(truth * truth))
    if denom > 0:
        c = float(np.sum(yours * truth)) / denom
        if c != 0 and _max(yours - c * truth) <= budget * max(1.0, abs(c)):
            tol = max(10 * budget / scale if scale else 0.0, 1e-7)
            if abs(c + 1) <= tol:
                return (Finding("sign", where, "yours is −1 × the truth: a lost minus sign",
                                -1.0),)
            if batch_size and scale_matches(c, {"B": batch_size}, tol):
                what = "the sum over the batch where the mean is due" if c > 1 else \
                    "a mean over the batch where the sum is due"
                return (Finding("reduction", where, f"yours is {ratio(c)} × the truth: {what}",
                                c),)
            match = scale_matches(c, sizes or {}, tol)
            detail = f"yours is {ratio(c)} × the truth" + (f", matching {match}" if match else "")
            return (Finding("scale", where, detail, c),)
    lead = min(lead, max(truth.ndim - 1, 0))
    # 4. the right numbers in the wrong places
    flip = _flip_fit(yours, truth, lead, budget)
    if flip is not None:
        spatial, swap = flip
        return (Finding("flipped", where, f"yours is the truth flipped along its spatial axes "
                        f"{tuple(a - lead for a in spatial)}"
                        + (" with in/out channels swapped" if swap else "")),)
    perm = _perm_fit(yours, truth, lead, budget)
    if perm is not None:
        return (Finding("transpose", where, f"yours is the truth transposed (axes "
                        f"{tuple(a - lead for a in perm)}) and reshaped to its shape"),)
    # 5. bounded, reduced the wrong way, a term missing
    bound = _max(yours)
    if 0 < bound < scale - budget and _fits(np.clip(truth, -bound, bound), yours, budget):
        return (Finding("clipped", where, f"yours is the truth clipped to ±{bound:.6g}",
                        bound),)
    for edge, without in missing:
        if _max(without - truth) > budget and _fits(np.asarray(without), yours, budget):
            return (Finding("missing term", where, f"yours lacks the contribution that flows "
                            f"back through {edge} (a forgotten +=)"),)
    if _max(yours) == 0:
        return (Finding("other", where, "yours is all zero; no kind explains it"),)
    return (Finding("other", where, f"no kind explains the error (max {_max(e):.3g} against "
                    f"a budget of {budget:.3g})"),)


_REGION_DETAIL = {
    "masked": "wrong exactly where a mask of the forward ({site}) is off ({n} entries) and "
              "right elsewhere: the mask is not applied, or applied where it should not be",
    "kink": "the only disagreement is at {n} points where the forward ({site}) is not "
            "differentiable, and yours is a valid subgradient there",
    "ties": "wrong only inside the {site} windows that hold ties ({n} entries), and not a "
            "valid subgradient there (the tied entries' shares must be ≥ 0 and sum to the "
            "window's gradient)",
    "repeated ids": "wrong exactly at the rows that several ids gather ({site}, {n} entries): "
                    "assignment where a scatter-add is due",
    "border": "wrong only where the padding of {site} reaches ({n} entries)",
}


def shape_kind(got: tuple, want: tuple) -> str:
    """The kind a shape mismatch suggests, as a clause for a ``BackpropError`` message."""
    got, want = tuple(got), tuple(want)
    if got == want:
        return ""
    if len(got) == len(want) and sorted(got) == sorted(want):
        return " (transpose: it looks transposed, the truth's axes permuted)"
    if math.prod(got) == math.prod(want):
        return " (transpose or reshape: the same entries in another shape)"
    squeezed = tuple(s for s in got if s != 1)
    if squeezed == tuple(s for s in want if s != 1):
        return " (broadcasting: a kept or missing axis of size 1, keepdims?)"
    if len(got) > len(want) and got[len(got) - len(want):] == want:
        return (f" (reduction: left unreduced over the broadcast axes "
                f"{tuple(range(len(got) - len(want)))}; sum them)")
    if len(got) <= len(want):
        return " (reduction: reduced over the wrong axis?)"
    return ""
