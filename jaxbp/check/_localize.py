"""Which factor of the chain rule broke ∂L/∂z^ℓ: activation or link?

At the first wrong layer ℓ < L, ∂L/∂z^{ℓ+1} is right, so the error of your
∂L/∂z^ℓ (your bias gradient) entered through one of the two factors between
them (the notes):

    ∂L/∂z^ℓ = f^ℓ'(z^ℓ) ⊙ (W^{ℓ+1} ∂L/∂z^{ℓ+1}) = f^ℓ'(z^ℓ) ⊙ g,   g = ∂L/∂a^ℓ.

Over the batch, with the error e = yours − true (B, n^ℓ) and D the true
∂L/∂z^{ℓ+1} (B, n^{ℓ+1}), each hypothesis is a least-squares fit, and its
*misfit* is ‖residual‖ / ‖e‖:

* link: e = f'(z^ℓ) ⊙ (D X) for one matrix X (n^{ℓ+1}, n^ℓ) shared by all
  examples, i.e. your values are f'(z) ⊙ (D M) with M ≠ W^{ℓ+1}ᵀ (transposed,
  another layer's W, scaled, dropped). Equivalently e / f'(z) is a linear map of
  D. It fits when the misfit is ≤ LINK_MISFIT_MAX; it is *undetermined* when
  the batch is too small for X (B not well above n^{ℓ+1}): any error then fits.
* activation (elementwise f): e = g ⊙ k(z) for one function k of z^ℓ shared by
  all units, i.e. your factor is f'(z) + k(z) ≠ f'(z). k is not parametrised:
  each point's k = e/g is predicted from its nearest neighbours in z (same sign
  of z, so the kinks of relu-like derivatives at 0 are allowed), and the
  misfit is that prediction's residual. It fits when ≤ ACTIVATION_MISFIT_MAX.
  For softmax (not elementwise) the wrong factor is fitted as a combination of
  the usual wrong products: g, a⊙g, a²⊙g, a⟨a, g⟩, ⟨a, g⟩, a Σg, z⊙g.

Exactly one fits: that suspect. Both fit: if e is (close to) a constant
multiple of the true ∂L/∂z^ℓ the two are the same thing (a scaled f' or a
scaled W^{ℓ+1}; with one unit a link *is* a scalar) and the report says
``ambiguous``; otherwise the true hypothesis fits down to round-off (link:
exactly; activation: up to interpolation error), so a fit 10× better than the
other one decides, unless both fit down to round-off. Neither fits (two factors wrong at once) or a test is
undetermined: ``ambiguous``, with both listed, the smaller misfit first, and
``evidence["ambiguity"]`` saying which case it was.
"""

from __future__ import annotations

import numpy as np

LINK_MISFIT_MAX = 0.1
ACTIVATION_MISFIT_MAX = 0.25
_MAX_DESIGN = 4_000_000  # entries of a non-elementwise link design matrix


def _spare_enough(rows: int, rank: int) -> bool:
    # A fit is a test only if the data has clearly more equations than unknowns.
    return rows - rank >= max(4, 0.25 * rows)


def link_misfit(e, D, fprime=None, vjp=None):
    """Misfit of e = f'(z) ⊙ (D X), X free (n', n).

    Args:
      e: error of ∂L/∂z^ℓ, (B, n).
      D: true ∂L/∂z^{ℓ+1}, (B, n').
      fprime: f'(z^ℓ) for an elementwise activation, (B, n); or None and
      vjp: g -> ∂L/∂z for a general activation, on (K, B, n) stacks.

    Returns:
      (misfit, determined).
    """
    B, n = e.shape
    k = D.shape[1]
    norm = np.linalg.norm(e)
    if norm == 0:
        return 0.0, False
    if fprime is not None:
        A = fprime.T[:, :, None] * D[None, :, :]  # (n, B, n'): unit i's design
        t = e.T[:, :, None]  # (n, B, 1)
        coef = np.linalg.pinv(A) @ t  # (n, n', 1)
        resid = t - A @ coef
        heavy = np.sum(e * e, axis=0) >= 1e-4 * norm**2  # units that carry the error
        rows = int(np.sum((np.any(A != 0, axis=2) | (t[..., 0] != 0))[heavy]))
        rank = int(np.sum(np.linalg.matrix_rank(A)[heavy])) if np.any(heavy) else 0
        return float(np.linalg.norm(resid) / norm), _spare_enough(rows, rank)
    if B * n * k * n > _MAX_DESIGN:
        return float("nan"), False
    basis = np.zeros((k * n, B, n))
    for i in range(k):
        basis[i * n:(i + 1) * n] = D[None, :, i, None] * np.eye(n)[:, None, :]
    cols = np.asarray(vjp(basis)).reshape(k * n, B * n).T  # (B n, n' n)
    coef, _, rank, _ = np.linalg.lstsq(cols, e.reshape(-1), rcond=None)
    resid = e.reshape(-1) - cols @ coef
    return float(np.linalg.norm(resid) / norm), _spare_enough(B * n, int(rank))


def activation_misfit(e, g, z):
    """Misfit of e = g ⊙ k(z) for one function k of z (elementwise activations).

    Each point's k = e/g is predicted by linear interpolation between its two
    nearest neighbours in z on the same side of 0 (leaving the point out), using
    only points where |g| is not tiny as neighbours; the misfit is
    ‖e − g k̂‖ / ‖e‖ over the points that have a neighbour on both sides (the
    sparse ends of the z range cannot be interpolated and are left out).

    Args:
      e: error of ∂L/∂z^ℓ, (B, n).
      g: true ∂L/∂a^ℓ, (B, n).
      z: z^ℓ, (B, n).

    Returns:
      (misfit, determined): determined when at least 8 points are scored and
      they carry at least a tenth of ‖e‖².
    """
    e, g, z = e.reshape(-1), g.reshape(-1), z.reshape(-1)
    if not np.any(e):
        return 0.0, False
    reliable = np.abs(g) > 1e-3 * np.max(np.abs(g)) if np.any(g) else np.zeros(g.shape, bool)
    pred = np.zeros_like(e)
    scored = np.zeros(e.shape, bool)
    for side in (z < 0, z >= 0):
        r = np.flatnonzero(side & reliable)
        if r.size < 3:
            continue
        order = r[np.argsort(z[r], kind="stable")]
        zr, kr = z[order], e[order] / g[order]
        rank = np.full(z.shape, -1)
        rank[order] = np.arange(order.size)
        points = np.flatnonzero(side)
        own = rank[points]
        mine = own >= 0
        p = np.where(mine, own, np.searchsorted(zr, z[points]))  # insertion index
        inside = (p >= 1) & (p <= zr.size - 1 - mine)  # a neighbour on each side
        points, own, mine, p = points[inside], own[inside], mine[inside], p[inside]
        lo = p - 1 + (mine & (p - 1 >= own))  # indices into zr, skipping the point itself
        hi = p + (mine & (p >= own))
        span = zr[hi] - zr[lo]
        t = np.where(span > 0, (z[points] - zr[lo]) / np.where(span > 0, span, 1.0), 0.5)
        pred[points] = g[points] * ((1 - t) * kr[lo] + t * kr[hi])
        scored[points] = True
    total = float(np.sum(e * e))
    part = float(np.sum(e[scored] ** 2))
    if part == 0:
        return float("nan"), False
    misfit = float(np.linalg.norm((e - pred)[scored]) / np.sqrt(part))
    return misfit, int(np.sum(scored)) >= 8 and part >= 0.1 * total


def softmax_activation_misfit(e, g, z, a):
    """Misfit of e as a fixed combination of wrong softmax products of g (see module doc)."""
    B, n = e.shape
    norm = np.linalg.norm(e)
    if norm == 0:
        return 0.0, False
    ag = np.sum(a * g, axis=1, keepdims=True)
    sg = np.sum(g, axis=1, keepdims=True)
    cols = [g, a * g, a * a * g, a * ag, np.broadcast_to(ag, (B, n)), a * sg, z * g]
    A = np.stack([c.reshape(-1) for c in cols], axis=1)
    coef, _, rank, _ = np.linalg.lstsq(A, e.reshape(-1), rcond=None)
    resid = e.reshape(-1) - A @ coef
    return float(np.linalg.norm(resid) / norm), _spare_enough(B * n, int(rank))


def activation_or_link(e, D, W_next, z, a, fprime, vjp, noise=0.0, layer=None):
    """Decides between "activation" and "link" at a hidden layer.

    Args:
      e: error of your ∂L/∂z^ℓ, (B, n).
      D: true ∂L/∂z^{ℓ+1}, (B, n').
      W_next: W^{ℓ+1}, (n, n').
      z, a: z^ℓ and a^ℓ, (B, n).
      fprime: f'(z^ℓ) (B, n) for an elementwise activation, else None.
      vjp: the activation's vjp on stacks (for softmax).
      noise: the round-off expected in ‖e‖, relative to ‖e‖.
      layer: ℓ, for the notes.

    Returns:
      (suspect, ambiguous, candidates, notes, evidence).
    """
    g = D @ W_next.T  # (B, n') @ (n', n) -> (B, n): the true ∂L/∂a^ℓ
    l, l1 = ("ℓ", "ℓ+1") if layer is None else (layer, layer + 1)
    link, link_det = link_misfit(e, D, fprime, vjp)
    if fprime is not None:
        act, act_det = activation_misfit(e, g, z)
    else:
        act, act_det = softmax_activation_misfit(e, g, z, a)
    evidence = {"link_misfit": link, "link_determined": link_det,
                "activation_misfit": act, "activation_determined": act_det}
    link_fits = link_det and link <= LINK_MISFIT_MAX
    act_fits = act_det and act <= ACTIVATION_MISFIT_MAX
    notes = []
    if not link_det:
        notes.append(f"the link test is undetermined: B={e.shape[0]} examples are too few to "
                     f"rule out a linear map of ∂L/∂z^{l1} ({D.shape[1]} units); use a "
                     f"larger batch")
    if not act_det:
        notes.append("the activation test is undetermined (too few informative entries)")
    fits = (f"a linear map of ∂L/∂z^{l1} fits the error (misfit {link:.2g}), a factor "
            f"depending on z^{l} does not (misfit {act:.2g})")
    if link_fits and not act_fits and act_det:
        return "link", False, ("link",), notes + [fits], evidence
    fits = (f"a factor depending on z^{l} fits the error (misfit {act:.2g}), a linear map of "
            f"∂L/∂z^{l1} does not (misfit {link:.2g})")
    if act_fits and not link_fits and link_det:
        return "activation", False, ("activation",), notes + [fits], evidence
    evidence["ambiguity"] = ("link_undetermined" if not link_det else
                             "activation_undetermined" if not act_det else
                             "both_fit" if link_fits else "neither_fits")
    if link_fits and act_fits:
        delta = vjp(g[None])[0] if fprime is None else fprime * g  # the true ∂L/∂z^ℓ
        scale = float(np.sum(e * delta) / max(np.sum(delta * delta), 1e-300))
        multiple = np.linalg.norm(e - scale * delta) / np.linalg.norm(e)
        evidence["multiple_misfit"] = float(multiple)
        floor = max(10 * noise, 1e-6)
        if multiple > max(10 * min(link, act), floor):
            # The true hypothesis fits down to round-off (link: exactly; activation: up to
            # interpolation error); a 10× worse fit of the other one rules it out.
            if link <= floor and act > max(10 * link, floor):
                notes.append(f"a linear map of ∂L/∂z^{l1} fits the error exactly (misfit "
                             f"{link:.2g}), a factor depending on z^{l} only roughly ({act:.2g})")
                return "link", False, ("link",), notes, evidence
            if act < link / 10 and link > floor:
                notes.append(f"a factor depending on z^{l} fits the error (misfit {act:.2g}) "
                             f"10× better than a linear map of ∂L/∂z^{l1} ({link:.2g})")
                return "activation", False, ("activation",), notes, evidence
            notes.append(f"both a wrong activation factor (misfit {act:.2g}) and a wrong link "
                         f"(misfit {link:.2g}) explain the error")
        else:
            evidence["ambiguity"] = "scaled"
            notes.append(f"both a wrong activation factor and a wrong link explain the error: "
                         f"your ∂L/∂z^{l} is {1 + scale:.3g} × the true one (misfit "
                         f"{multiple:.2g}), and a scaled f' or a scaled W^{l1} give the same")
    elif not (link_fits or act_fits):
        notes.append(f"neither a wrong activation factor (misfit {act:.2g}) nor a wrong link "
                     f"(misfit {link:.2g}) alone explains the error; more than one factor "
                     f"may be wrong")
    if link_fits != act_fits:  # one fits, the other test was undetermined
        first = "link" if link_fits else "activation"
    else:
        first = "activation" if _rank(act, ACTIVATION_MISFIT_MAX) <= _rank(
            link, LINK_MISFIT_MAX) else "link"
    return first, True, (first, "link" if first == "activation" else "activation"), notes, evidence


def _rank(misfit, limit):
    return misfit / limit if np.isfinite(misfit) else np.inf
