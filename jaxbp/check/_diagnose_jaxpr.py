"""The forward's structure, read from its jaxpr: masks, ties, repeated ids, padding, consumers.

Some kinds of mistake are decided by *where* the error sits: exactly where a ReLU is
inactive or dropout dropped ("masked"), at rows of an embedding table that several ids
gather ("repeated ids"), inside max windows that hold ties ("ties"), where a
convolution's padding reaches ("border"), at a ReLU's 0 ("kink"). jaxbp reads those
places from the forward itself, never from names:

* ``read_regions`` runs the forward's jaxpr (inlining ``jit``, ``custom_jvp`` and
  ``custom_vjp`` calls) in float64 and finds the sites (``_diagnose_sites``: ReLUs, masks,
  max reductions, argmax and max windows, gathers, padded convolutions, scans). Each site's region is an indicator on the site's operand; one batched
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

from jaxbp.check._diagnose_sites import Capture as _Capture, is_zero_literal, parts as _parts

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
                 if (p := _parts(m[0], m[1], m[2], xs, m[3])) is not None]
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


class _KinkAt(_Hook):
    """Every ReLU ``max(x, 0)`` with its derivative at x = 0 set to ``s`` (values unchanged)."""

    def __init__(self, s):
        self.s = s

    def after(self, eqn, invals, outs):
        zero = [k for k in (0, 1) if eqn.primitive.name == "max" and len(eqn.invars) == 2
                and is_zero_literal(eqn, k)]
        if len(zero) == 1:
            x = invals[1 - zero[0]]
            none = jnp.zeros_like(x)
            outs[0] = jnp.where(x > 0, x, none) + self.s * jnp.where(
                x == 0, x - jax.lax.stop_gradient(x), none)


def kink_bounds(fn: Callable, leaves, cotangents) -> list:
    """The truth with every ReLU's derivative at 0 taken as 0 and as 1: a subgradient's range.

    A valid subgradient at a kink takes t·upstream there with t in [0, 1]; per leaf entry,
    yours must lie between these two (checked entrywise).

    Returns:
      Per leaf a (2, trials, *leaf shape) float64 array (derivative 0, derivative 1), or
      None for a non-float leaf.
    """
    with jax.enable_x64(True):
        leaves = [jnp.asarray(x, jnp.float64) if _is_float(x) else jnp.asarray(x)
                  for x in leaves]
        closed = _closed(lambda *a: jax.tree.leaves(fn(*a)), leaves)
        floats = [j for j, x in enumerate(leaves) if _is_float(x)]

        def grads(s, dy, float_leaves):
            def f(*fl):
                args = list(leaves)
                for j, x in zip(floats, fl):
                    args[j] = x
                return _run(closed.jaxpr, closed.consts, args, _KinkAt(s))
            return jax.vjp(f, *float_leaves)[1](dy)

        dys = [[jnp.asarray(d, jnp.float64) for d in jax.tree.leaves(dy)] for dy in cotangents]
        dys = [jnp.stack([d[i] for d in dys]) for i in range(len(dys[0]))]
        per = jax.jit(lambda dys, fl: [jax.vmap(lambda *d: grads(s, list(d), fl))(*dys)
                                       for s in (0.0, 1.0)])(dys, [leaves[j] for j in floats])
        return [np.stack([np.asarray(per[0][floats.index(j)]), np.asarray(per[1][floats.index(j)])])
                if j in floats else None for j in range(len(leaves))]
