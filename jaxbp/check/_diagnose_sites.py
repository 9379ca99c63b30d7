"""The sites of a forward where a kind of mistake can hide, read one equation at a time.

``candidate(eqn)`` decides from an equation's form alone whether it may be a site and which
operands to capture; ``parts(...)`` turns the captured operand values into regions:

* ``max(x, 0)``: a ReLU, masked where x ≤ 0, a kink at x = 0;
* ``mul(a, b)`` where one factor holds exact zeros (not all): a mask of the other factor
  (inverted dropout ``x * mask``, ``x * (x > 0)``, a linearized mask);
* ``select_n`` on a boolean that chooses both ways: masked where the data is not chosen;
* ``max(a, b)``, ``reduce_max``/``reduce_min``, ``argmax``/``argmin`` (``nn.MaxPool2D``
  picks its first maximum by ``argmax``) and ``reduce_window_max``/``min``: ties;
* ``gather`` of rows: repeated ids;
* ``conv_general_dilated`` with padding, its own or an explicit ``pad`` of its input
  (``jnp.pad`` then a VALID conv): the border the padding reaches;
* ``scan``: each scanned entry labelled with its time step.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

MAX_WINDOWS = 200_000  # reduce_window windows read for ties (bigger: not read)


def is_zero_literal(eqn, i) -> bool:
    v = eqn.invars[i]
    return isinstance(v, Literal) and np.ndim(v.val) == 0 and float(v.val) == 0.0


def candidate(eqn) -> tuple:
    """The operand positions to capture when ``eqn`` may be a site (decided from its form)."""
    name, invars = eqn.primitive.name, eqn.invars
    floating = [jnp.issubdtype(v.aval.dtype, jnp.floating) for v in invars]
    if name == "max" and len(invars) == 2 and all(floating):
        zero = [k for k in (0, 1) if is_zero_literal(eqn, k)]
        if len(zero) == 1:
            return (1 - zero[0],)
        if not zero and invars[0].aval.shape == invars[1].aval.shape:
            return (0, 1)
    if name == "mul" and len(invars) == 2 and all(floating) and not any(
            isinstance(v, Literal) for v in invars) and invars[0].aval.shape == \
            invars[1].aval.shape and len(invars[0].aval.shape):
        return (0, 1)
    if name in ("reduce_max", "reduce_min", "argmax", "argmin", "reduce_window_max",
                "reduce_window_min") and floating[0]:
        return (0,)
    if name == "select_n" and len(invars) == 3 and invars[0].aval.dtype == jnp.bool_ and all(
            floating[1:]):
        return (0,) + tuple(k for k in (1, 2) if not isinstance(invars[k], Literal)
                            and invars[k].aval.shape == invars[0].aval.shape)
    if name == "gather" and floating[0]:
        dn = eqn.params["dimension_numbers"]
        if tuple(dn.start_index_map) == (0,) and not dn.operand_batching_dims:
            return (0, 1)
    if name == "conv_general_dilated":
        return (0, 1)
    if name == "scan" and not eqn.params.get("reverse", False):
        first = eqn.params["num_consts"] + eqn.params["num_carry"]
        return tuple(k for k in range(first, len(invars)) if floating[k])
    return ()


class Capture:
    """Captures the candidate sites' operands (one jitted run; metadata at trace time).

    ``meta`` holds (visit index, eqn, operand positions, extra): extra is the padding
    config of an explicit ``pad`` that made a conv's input, else None.
    """

    def __init__(self, picks=None):
        self.count, self.picks, self.meta, self.values = 0, picks, [], []
        self.pad_of, self.alive = {}, []

    def before(self, eqn, invals):
        return invals

    def after(self, eqn, invals, outs):
        name = eqn.primitive.name
        if self.picks is None and name == "pad" and np.ndim(invals[1]) == 0:
            self.pad_of[id(outs[0])] = tuple(eqn.params["padding_config"])
            self.alive.append(outs[0])  # ids stay unique while we look them up
        ks = candidate(eqn) if self.picks is None else self.picks.get(self.count, ())
        if ks:
            extra = self.pad_of.get(id(invals[0])) if name == "conv_general_dilated" else None
            self.meta.append((self.count, eqn, ks, extra))
            self.values.append([invals[k] for k in ks])
        self.count += 1


def _weights(i, n):
    return 1.0 + np.random.default_rng(i).random(n)


def _tie_part(i, name, ks, x, axes, largest):
    """Entries equal to the max (min) of their reduction that another entry equals too."""
    m = x.max(axis=axes, keepdims=True) if largest else x.min(axis=axes, keepdims=True)
    eq = x == m
    tie = eq & (eq.sum(axis=axes, keepdims=True) >= 2)
    if not tie.any():
        return None
    kept = tuple(d for d in range(x.ndim) if d not in axes)
    ids = np.zeros(x.shape, np.int64)
    if kept:
        flat = np.arange(int(np.prod([x.shape[d] for d in kept]))).reshape(
            tuple(x.shape[d] for d in kept))
        ids = np.broadcast_to(np.expand_dims(flat, axes), x.shape)
    weights = _weights(i, int(ids.max()) + 1)
    return f"{name} #{i}", ks, [("ties", (tie,), (np.where(tie, weights[ids], 0.0),))]


def _window_ties(i, name, ks, x, params):
    """Ties inside the windows of ``reduce_window_max``/``min`` (windows may overlap)."""
    dims, strides = params["window_dimensions"], params["window_strides"]
    pads, base, wdil = params["padding"], params["base_dilation"], params["window_dilation"]
    if any(d != 1 for d in base) or any(lo < 0 or hi < 0 for lo, hi in pads):
        return None
    out = [(n + lo + hi - ((k - 1) * r + 1)) // s + 1
           for n, k, s, r, (lo, hi) in zip(x.shape, dims, strides, wdil, pads)]
    if min(out) < 1 or int(np.prod(out)) > MAX_WINDOWS:
        return None
    fill = -np.inf if "max" in name else np.inf
    xp = np.pad(x.astype(np.float64), [tuple(p) for p in pads], constant_values=fill)
    tie, label = np.zeros(xp.shape, bool), np.zeros(xp.shape)
    weights = _weights(i, int(np.prod(out)))
    for w, o in enumerate(np.ndindex(*out)):
        idx = np.ix_(*[o_ * s + np.arange(k) * r for o_, s, k, r in zip(o, strides, dims, wdil)])
        window = xp[idx]
        best = window.max() if "max" in name else window.min()
        eq = window == best
        if eq.sum() >= 2 and np.isfinite(best):
            tie[idx] |= eq
            label[idx] = np.where(eq, weights[w], label[idx])
    crop = tuple(slice(lo, lo + n) for (lo, _), n in zip(pads, x.shape))
    tie, label = tie[crop], label[crop]
    if not tie.any():
        return None
    return f"{name} #{i}", ks, [("ties", (tie,), (label,))]


def parts(i, eqn, ks, xs, extra=None) -> Optional[tuple]:
    """(site label, operand positions, [(kind, masks per operand, labels or None)]) or None."""
    name = eqn.primitive.name
    xs = [np.asarray(x) for x in xs]
    if name == "max" and len(ks) == 1:  # a ReLU: mask x > 0, kink x = 0
        x = xs[0]
        return f"relu #{i}", ks, [("masked", (x <= 0,), None), ("kink", (x == 0,), None)]
    if name == "max":
        tie = xs[0] == xs[1]
        if tie.any():
            label = np.where(tie, 1.0 + np.random.default_rng(i).random(tie.shape), 0.0)
            return f"max #{i}", ks, [("ties", (tie, tie), (label, label))]
    if name == "mul":
        for k in (0, 1):  # operand k is masked where the other factor is exactly zero
            zero = xs[1 - k] == 0
            if 0 < zero.sum() < zero.size:
                return f"mul #{i}", (ks[k],), [("masked", (zero,), None)]
    if name in ("reduce_max", "reduce_min", "argmax", "argmin"):
        return _tie_part(i, name, ks, xs[0], tuple(eqn.params["axes"]),
                         name in ("reduce_max", "argmax"))
    if name in ("reduce_window_max", "reduce_window_min"):
        return _window_ties(i, name, ks, xs[0], eqn.params)
    if name == "select_n" and len(ks) > 1:
        pred = xs[0]
        if 0 < pred.sum() < pred.size:  # off: where the case holding the data is not chosen
            masks = tuple(~pred if k == 2 else pred for k in ks[1:])
            return f"select_n #{i}", ks[1:], [("masked", masks, None)]
    if name == "gather":
        operand, ids = xs
        ids = ids[..., 0].ravel()
        counts = np.bincount(ids[(ids >= 0) & (ids < operand.shape[0])],
                             minlength=operand.shape[0])
        rows = counts >= 2
        if rows.any():
            mask = np.broadcast_to(rows.reshape((-1,) + (1,) * (operand.ndim - 1)), operand.shape)
            return f"gather #{i}", ks[:1], [("repeated ids", (mask,), None)]
    if name == "scan":  # each scanned entry labelled with its step t + 1
        labels = tuple(np.broadcast_to(np.arange(1.0, x.shape[0] + 1).reshape(
            (-1,) + (1,) * (x.ndim - 1)), x.shape) for x in xs)
        return f"scan #{i}", ks, [("time steps", tuple(np.ones(x.shape, bool) for x in xs),
                                   labels)]
    if name == "conv_general_dilated":
        border = conv_border(xs[0].shape, xs[1].shape, eqn.params, extra)
        if border is not None:
            return (f"conv #{i}" + (" (after an explicit pad)" if extra else ""), ks[:1],
                    [("border", (border,), None)])
    return None


def _explicit_pad(n: int, config) -> np.ndarray:
    """Which of the n positions of a padded axis are padding, for a (lo, hi, interior) pad."""
    lo, hi, interior = config
    p = np.arange(n) - lo
    return (p < 0) | (np.arange(n) >= n - hi) | (p % (interior + 1) != 0)


def conv_border(lhs_shape, rhs_shape, params, explicit=None) -> Optional[np.ndarray]:
    """The input positions (lhs space) read by some window that also reads padding.

    Padding is the conv's own and, when ``explicit`` (the ``pad`` equation's config per lhs
    axis) is given, the positions of its input that an explicit ``pad`` added.
    """
    pads = params["padding"]
    if isinstance(pads, str) or any(d != 1 for d in params["lhs_dilation"]):
        return None
    if explicit is not None and any(lo < 0 or hi < 0 or it < 0 for lo, hi, it in explicit):
        explicit = None
    if not any(lo or hi for lo, hi in pads) and explicit is None:
        return None
    dn = params["dimension_numbers"]
    mask = np.zeros(lhs_shape, bool)
    for s, ((lo, hi), stride, rd) in enumerate(zip(pads, params["window_strides"],
                                                   params["rhs_dilation"])):
        d = dn.lhs_spec[2 + s]
        n, k = lhs_shape[d], rhs_shape[dn.rhs_spec[2 + s]]
        is_pad = np.ones(lo + n + hi, bool)  # extended axis: conv pads around the input
        is_pad[lo:lo + n] = False if explicit is None else _explicit_pad(n, explicit[d])
        reach = (k - 1) * rd + 1
        touched = np.zeros(lo + n + hi, bool)
        for o in range((lo + n + hi - reach) // stride + 1):
            taps = o * stride + np.arange(k) * rd
            if is_pad[taps].any():
                touched[taps[~is_pad[taps]]] = True
        shape = [1] * len(lhs_shape)
        shape[d] = n
        mask |= touched[lo:lo + n].reshape(shape)
    return mask if mask.any() and not mask.all() else None
