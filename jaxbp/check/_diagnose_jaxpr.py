"""The forward's structure, read from its jaxpr: masks, ties, repeated ids, padding, consumers.

Some kinds of mistake are decided by *where* the error sits: exactly where a ReLU is
inactive or dropout dropped ("masked"), at rows of an embedding table that several ids
gather ("repeated ids"), inside max windows that hold ties ("ties"), where a
convolution's padding reaches ("border"), at a ReLU's 0 ("kink"). jaxbp reads those
places from the forward itself, never from names:

* ``read_regions`` runs the forward's jaxpr (inlining ``jit``, ``custom_jvp`` and
  ``custom_vjp`` calls) in float64 and finds the sites: ``max(x, 0)`` (a mask x > 0 and
  its kink x = 0), ``select_n`` on a boolean (a mask), ``reduce_max``/``reduce_min`` and
  ``max(a, b)`` (ties), ``gather`` (repeated rows), ``conv_general_dilated`` with padding
  (the border). Each site's region is an indicator on the site's operand; one batched
  vjp of the forward's prefix pulls every indicator back to the leaves (params, inputs),
  so a region is known in the space of each gradient row. A region that covers the whole
  leaf says nothing and is dropped.
* ``missing_terms`` splits each value used by several consumers into one edge per
  consumer and gives, for every edge, the truth *without* that edge's contribution
  (the edge read as ``v·m + stop_gradient(v)·(1 − m)`` with m = 0): one batched vjp.

Both run eagerly on the arrays of one failing check, once each; a correct gradient
never reaches them.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

MAX_SITES = 24  # regions pulled back per check (the most specific first)
MAX_EDGES = 16  # consumer edges tried for "missing term"

_INLINE = {"jit": "jaxpr", "pjit": "jaxpr", "closed_call": "call_jaxpr",
           "core_call": "call_jaxpr", "custom_jvp_call": "call_jaxpr",
           "custom_vjp_call": "call_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}


class Region(NamedTuple):
    """Where on one site the forward is special, pulled back to every leaf.

    Attributes:
      kind: "masked", "kink", "ties", "repeated ids" or "border".
      site: the primitive and its index among the sites ("max #2").
      masks: one bool array per leaf (its shape), True where the region reaches.
      groups: for "ties", one float array per leaf labelling each tied entry's group
        (0 outside; equal labels, one group), else None.
    """

    kind: str
    site: str
    masks: tuple
    groups: Optional[tuple] = None


def _run(jaxpr, consts, args, hook):
    """Evaluates ``jaxpr`` eqn by eqn, call primitives inlined; ``hook(eqn, invals, outs)``."""
    env = {}

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts):
        env[v] = x
    for v, x in zip(jaxpr.invars, args):
        env[v] = x
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        key = _INLINE.get(eqn.primitive.name)
        sub = eqn.params.get(key) if key else None
        if sub is not None:
            inner, inner_consts = (sub.jaxpr, sub.consts) if hasattr(sub, "consts") else (sub, ())
            outs = _run(inner, inner_consts, invals[len(invals) - len(inner.invars):], hook)
        else:
            invals = hook.before(eqn, invals)
            outs = eqn.primitive.bind(*invals, **eqn.params)
            outs = list(outs) if eqn.primitive.multiple_results else [outs]
            hook.after(eqn, invals, outs)
        for v, x in zip(eqn.outvars, outs):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]


class _Hook:
    def before(self, eqn, invals):
        return invals

    def after(self, eqn, invals, outs):
        pass


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def _is_zero_literal(eqn, i) -> bool:
    v = eqn.invars[i]
    return isinstance(v, Literal) and np.ndim(v.val) == 0 and float(v.val) == 0.0


def _candidate(eqn) -> tuple:
    """The operand positions to capture when ``eqn`` may be a site (decided from its form)."""
    name, invars = eqn.primitive.name, eqn.invars
    floating = [jnp.issubdtype(v.aval.dtype, jnp.floating) for v in invars]
    if name == "max" and len(invars) == 2 and all(floating):
        zero = [k for k in (0, 1) if _is_zero_literal(eqn, k)]
        if len(zero) == 1:
            return (1 - zero[0],)
        if not zero and invars[0].aval.shape == invars[1].aval.shape:
            return (0, 1)
    if name in ("reduce_max", "reduce_min") and floating[0]:
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


class _Capture(_Hook):
    """Captures the candidate sites' operands (one jitted run; metadata at trace time)."""

    def __init__(self, picks=None):
        self.count, self.picks, self.meta, self.values = 0, picks, [], []

    def after(self, eqn, invals, outs):
        ks = _candidate(eqn) if self.picks is None else self.picks.get(self.count, ())
        if ks:
            self.meta.append((self.count, eqn, ks))
            self.values.append([invals[k] for k in ks])
        self.count += 1


def _parts(i, eqn, ks, xs) -> list:
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
    if name in ("reduce_max", "reduce_min"):
        x, axes = xs[0], tuple(eqn.params["axes"])
        m = x.max(axis=axes, keepdims=True) if name == "reduce_max" else x.min(
            axis=axes, keepdims=True)
        eq = x == m
        tie = eq & (eq.sum(axis=axes, keepdims=True) >= 2)
        if tie.any():
            kept = tuple(d for d in range(x.ndim) if d not in axes)
            ids = np.zeros(x.shape, np.int64)
            if kept:
                flat = np.arange(int(np.prod([x.shape[d] for d in kept]))).reshape(
                    tuple(x.shape[d] for d in kept))
                ids = np.broadcast_to(np.expand_dims(flat, axes), x.shape)
            weights = 1.0 + np.random.default_rng(i).random(int(ids.max()) + 1)
            return f"{name} #{i}", ks, [("ties", (tie,), (np.where(tie, weights[ids], 0.0),))]
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
        border = _conv_border(xs[0].shape, xs[1].shape, eqn.params)
        if border is not None:
            return f"conv #{i}", ks[:1], [("border", (border,), None)]
    return None


def _conv_border(lhs_shape, rhs_shape, params) -> Optional[np.ndarray]:
    """The input positions (lhs space) read by some window that also reads padding."""
    pads = params["padding"]
    if isinstance(pads, str) or not any(lo or hi for lo, hi in pads):
        return None
    if any(d != 1 for d in params["lhs_dilation"]):
        return None
    dn = params["dimension_numbers"]
    mask = np.zeros(lhs_shape, bool)
    for s, ((lo, hi), stride, rd) in enumerate(zip(pads, params["window_strides"],
                                                   params["rhs_dilation"])):
        n, k = lhs_shape[dn.lhs_spec[2 + s]], rhs_shape[dn.rhs_spec[2 + s]]
        reach = (k - 1) * rd + 1
        n_out = (n + lo + hi - reach) // stride + 1
        touched = np.zeros(n, bool)
        for o in range(n_out):
            start = o * stride - lo  # first input position of window o (may be < 0)
            taps = start + np.arange(k) * rd
            if taps.min() < 0 or taps.max() > n - 1:
                inside = taps[(taps >= 0) & (taps < n)]
                touched[inside] = True
        shape = [1] * len(lhs_shape)
        shape[dn.lhs_spec[2 + s]] = n
        mask |= touched.reshape(shape)
    return mask if mask.any() and not mask.all() else None


def _closed(fn, leaves):
    return jax.make_jaxpr(fn)(*leaves)


def read_regions(fn: Callable, leaves) -> tuple:
    """The regions of ``fn``'s forward at ``leaves``, each pulled back to every leaf.

    Args:
      fn: (*leaves) -> outputs, JAX-traceable.
      leaves: a list of float arrays (the point of the check).

    Returns:
      A tuple of ``Region`` (possibly empty).
    """
    with jax.enable_x64(True):
        leaves = [jnp.asarray(x, jnp.float64) if _is_float(x) else jnp.asarray(x)
                  for x in leaves]
        closed = _closed(fn, leaves)
        capture = _Capture()

        def collect(*args):
            _run(closed.jaxpr, closed.consts, list(args), capture)
            return capture.values

        values = jax.jit(collect)(*leaves)  # a fresh jit: traced (and captured) every time
        sites = [(m[0], p) for m, xs in zip(capture.meta, values)
                 if (p := _parts(m[0], m[1], m[2], xs)) is not None]
        cts = [(label, kind, masks, labels, i, ks) for i, (label, ks, parts) in sites
               for kind, masks, labels in parts][:MAX_SITES]
        if not cts:
            return ()
        picks = {}  # visit index -> the operand positions to take there
        for _, _, _, _, i, ks in cts:
            picks[i] = tuple(sorted(set(picks.get(i, ())) | set(ks)))
        floats = [j for j, x in enumerate(leaves) if _is_float(x)]

        def prefix(*float_leaves):
            args = list(leaves)
            for j, x in zip(floats, float_leaves):
                args[j] = x
            take = _Capture(picks)
            _run(closed.jaxpr, closed.consts, args, take)
            return {m[0]: dict(zip(m[2], v)) for m, v in zip(take.meta, take.values)}

        def pulled_fn(batch, *float_leaves):
            _, pull = jax.vjp(prefix, *float_leaves)
            return jax.vmap(pull)(batch)

        shapes = jax.eval_shape(prefix, *[leaves[j] for j in floats])
        K = len(cts)
        # Two pullbacks per part (its indicator, its group labels), one-hot over parts.
        batch = {i: {k: np.zeros((2 * K,) + s.shape) for k, s in d.items()}
                 for i, d in shapes.items()}
        for c, (label, kind, masks, labels, i, ks) in enumerate(cts):
            for o, k in enumerate(ks):
                batch[i][k][2 * c] = masks[o]
                if labels:
                    batch[i][k][2 * c + 1] = labels[o]
        pulled = jax.jit(pulled_fn)(batch, *[leaves[j] for j in floats])
        pulled = [np.asarray(p) for p in pulled]
        regions = []
        for c, (name, kind, masks, labels, _, _) in enumerate(cts):
            leaf_masks, leaf_groups = [], []
            for j, x in enumerate(leaves):
                if j in floats:
                    p = pulled[floats.index(j)]
                    leaf_masks.append(np.abs(p[2 * c]) > 0)
                    leaf_groups.append(p[2 * c + 1] if labels else None)
                else:
                    leaf_masks.append(np.zeros(np.shape(x), bool))
                    leaf_groups.append(None)
            if any(m.any() and not m.all() for m in leaf_masks) or kind in ("kink", "ties", "time steps"):
                if any(m.any() for m in leaf_masks):
                    regions.append(Region(kind, name, tuple(leaf_masks),
                                          tuple(leaf_groups) if labels else None))
    return tuple(regions)


class _Uses(_Hook):
    """Counts the consumers of every float value (by identity) in a concrete run."""

    def __init__(self):
        self.count = 0
        self.uses = {}  # id(value) -> [(visit, operand position)]
        self.alive = []  # keep values alive so ids stay unique

    def before(self, eqn, invals):
        for k, x in enumerate(invals):
            if not isinstance(eqn.invars[k], Literal) and _is_float(x):
                self.uses.setdefault(id(x), []).append((self.count, k, eqn.primitive.name))
                self.alive.append(x)
        return invals

    def after(self, eqn, invals, outs):
        self.count += 1


def missing_terms(fn: Callable, leaves, cotangents) -> tuple:
    """The truth without each consumer edge's contribution, for every multi-consumer value.

    Args:
      fn: (*leaves) -> outputs (a pytree), JAX-traceable.
      leaves: the point (list of arrays).
      cotangents: a list of output cotangents (trials), each shaped like fn's output.

    Returns:
      A tuple of (edge label, [per leaf: (trials, *leaf shape) float64 array]): for edge
      e, the vjp of fn with e's contribution removed. () when no value has two consumers.
    """
    with jax.enable_x64(True):
        leaves = [jnp.asarray(x, jnp.float64) if _is_float(x) else jnp.asarray(x)
                  for x in leaves]
        closed = _closed(lambda *a: jax.tree.leaves(fn(*a)), leaves)
        hook = _Uses()

        def count(*args):  # traced only: the consumers are known from the trace
            outs = _run(closed.jaxpr, closed.consts, list(args), hook)
            for x in outs:
                if _is_float(x):
                    hook.uses.setdefault(id(x), []).append((-1, 0, "output"))
                    hook.alive.append(x)
            return outs

        jax.make_jaxpr(count)(*leaves)
        edges = [u for us in hook.uses.values() if len(us) >= 2 for u in us]
        edges = edges[:MAX_EDGES]
        if not edges:
            return ()
        index = {(v, k): e for e, (v, k, _) in enumerate(edges)}
        floats = [j for j, x in enumerate(leaves) if _is_float(x)]

        def split(m, *float_leaves):
            args = list(leaves)
            for j, x in zip(floats, float_leaves):
                args[j] = x

            class Cut(_Hook):
                count = 0

                def before(self, eqn, invals):
                    invals = list(invals)
                    for k, x in enumerate(invals):
                        e = index.get((Cut.count, k))
                        if e is not None:
                            invals[k] = x * m[e] + jax.lax.stop_gradient(x) * (1 - m[e])
                    return invals

                def after(self, eqn, invals, outs):
                    Cut.count += 1

            outs = _run(closed.jaxpr, closed.consts, args, Cut())
            return [o * m[index[(-1, 0)]] + jax.lax.stop_gradient(o) * (1 - m[index[(-1, 0)]])
                    if (-1, 0) in index and _is_float(o) else o for o in outs]

        def grads(m, dy, float_leaves):
            _, pull = jax.vjp(lambda *fl: split(m, *fl), *float_leaves)
            return pull(dy)

        E = len(edges)
        ms = jnp.ones((E, E)) - jnp.eye(E)
        dys = [[jnp.asarray(d, jnp.float64) for d in jax.tree.leaves(dy)] for dy in cotangents]
        dys = [jnp.stack([d[i] for d in dys]) for i in range(len(dys[0]))]
        per = jax.jit(lambda ms, dys, fl: jax.vmap(lambda m: jax.vmap(
            lambda *d: grads(m, list(d), fl))(*dys))(ms))(ms, dys, [leaves[j] for j in floats])
        result = []
        for e, (v, k, prim) in enumerate(edges):
            label = "the returned value" if v < 0 else f"operand {k} of {prim} #{v}"
            by_leaf = []
            for j, x in enumerate(leaves):
                by_leaf.append(np.asarray(per[floats.index(j)][e]) if j in floats else None)
            result.append((label, by_leaf))
    return tuple(result)
