"""The float64 truth behind ``jaxbp.check_intermediates``: the taps, and three programs.

Your forward runs in three modes, each a ``tap``:

* plain (``Tap``): records every tapped value, validates names;
* perturbed (``_Perturb``): tap(name, v) = v + ε_name, so ∂loss/∂ε_name = ∂loss/∂v summed
  over every use of v (one ``jax.grad``);
* split (``_Split``): tap(name, v) = constant(v) + ε_name, with v (before its tap) as an
  output. There a tapped value c depends on ε_u only through the computation u → c with no
  other tap in between: its jaxpr gives u's consumers, and its VJP with cotangent truth_c on
  c alone gives the contribution (∂c/∂u)ᵀ truth_c of that path.

The programs are jitted once per (forward, shapes) and cached by ``jax.jit`` (forward is a
static argument); array leaves of args are traced, other leaves (Python numbers, strings) are
static. So forward must be traceable in the tapped values (no Python ``if`` on them), as
anything under ``jax.jit`` or ``jax.grad`` must.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from jaxbp.check._intermediates_report import LOSS_PATH
from jaxbp.check._compare import max_abs as _max_abs

# ------------------------------------------------------------------- the taps

class Tap:
    """A ``tap`` for one run of the forward: validates names, records values in call order."""

    def __init__(self):
        self.values = {}

    def __call__(self, name, value):
        if not isinstance(name, str):
            raise TypeError(f"tap: expected a str name first, as in tap('h', h), got "
                            f"{type(name).__name__} {name!r}")
        if name in self.values:
            raise ValueError(f"tap: the name {name!r} was tapped twice; each tapped value needs "
                             f"its own name (tapped so far: {', '.join(self.values)})")
        try:
            value = jnp.asarray(value)
        except TypeError as e:
            raise TypeError(f"tap({name!r}, value): expected an array, got "
                            f"{type(value).__name__}") from e
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"tap({name!r}, value): expected a floating-point array (a value "
                            f"with a gradient), got dtype {value.dtype}")
        self.values[name] = value
        return self.output(name, value)

    def output(self, name, value):
        return value


class _Perturb(Tap):
    """tap(name, v) = v + ε_name: ∂loss/∂ε_name is ∂loss/∂v summed over v's uses."""

    def __init__(self, eps: dict):
        super().__init__()
        self.eps = eps

    def output(self, name, value):
        eps = self.eps.get(name)
        if eps is None or jnp.shape(eps) != value.shape:
            raise ValueError(f"forward tapped {name!r} with shape {value.shape} on this run but "
                             f"not on the first: forward must tap the same names and shapes on "
                             f"every call")
        return value + jnp.asarray(eps).astype(value.dtype)


class _Split(Tap):
    """tap(name, v) = constant(v) + ε_name, recording v (before the tap) as an output."""

    def __init__(self, eps: dict, constants: dict):
        super().__init__()
        self.eps, self.constants = eps, constants

    def output(self, name, value):
        if name not in self.constants:
            raise ValueError(f"forward tapped {name!r} on this run but not on the first: forward "
                             f"must tap the same names on every call")
        return jnp.asarray(self.constants[name]) + self.eps[name]


def forward_loss(forward, args, tap):
    loss = forward(*args, tap=tap)
    shape = getattr(loss, "shape", None)
    if isinstance(loss, (tuple, list, dict)) or shape is None and not isinstance(loss, float):
        raise ValueError(f"forward: expected a scalar loss (shape ()), got "
                         f"{type(loss).__name__}; return only the loss")
    if jnp.shape(loss) != ():
        raise ValueError(f"forward: expected a scalar loss (shape ()), got shape "
                         f"{tuple(jnp.shape(loss))}; reduce it (e.g. mean over the batch)")
    if not jnp.issubdtype(jnp.result_type(loss), jnp.floating):
        raise ValueError(f"forward: expected a floating-point scalar loss, got dtype "
                         f"{jnp.result_type(loss)}")
    return loss


def _dependencies(split_fn, eps: list) -> list:
    """For each output of split_fn(eps), the bitmask of the eps inputs it depends on.

    A walk over the jaxpr: an equation's outputs depend on all of its inputs
    (nested calls are taken whole, which can only add dependencies).
    """
    jaxpr = jax.make_jaxpr(split_fn)(eps).jaxpr
    reach = {v: 1 << i for i, v in enumerate(jaxpr.invars)}
    for eqn in jaxpr.eqns:
        mask = 0
        for v in eqn.invars:
            if not isinstance(v, Literal):
                mask |= reach.get(v, 0)
        for v in eqn.outvars:
            reach[v] = mask
    return [0 if isinstance(v, Literal) else reach.get(v, 0) for v in jaxpr.outvars]


# ------------------------------------------------------------------- the args

class _Static(NamedTuple):
    """The non-array part of args: its tree structure and its non-array leaves (hashable)."""

    treedef: object
    leaves: tuple  # (position, value) of each non-array leaf


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


def split_args(args):
    """args -> (array leaves, _Static), or (None, None) when a non-array leaf is unhashable."""
    leaves, treedef = jax.tree.flatten(args)
    static = tuple((i, x) for i, x in enumerate(leaves) if not _is_array(x))
    try:
        hash(static)
    except TypeError:
        return None, None
    return [x for x in leaves if _is_array(x)], _Static(treedef, static)


def _join(arrays, static: _Static):
    fixed = dict(static.leaves)
    it = iter(arrays)
    n = len(arrays) + len(fixed)
    return jax.tree.unflatten(static.treedef, [fixed[i] if i in fixed else next(it)
                                               for i in range(n)])


# ------------------------------------------------------------------- programs

def _grads(arrays, eps, *, forward, static):
    """(loss, {name: value}, {name: ∂loss/∂value}) with tap(name, v) = v + eps[name]."""
    args = _join(arrays, static)

    def perturbed(e):
        tap = _Perturb(e)
        return forward_loss(forward, args, tap), tap.values

    (loss, values), grads = jax.value_and_grad(perturbed, has_aux=True)(eps)
    return loss, values, grads


def _split_pullback(arrays, constants, eps, cotangents, *, forward, static):
    args = _join(arrays, static)

    def split(e):
        tap = _Split(e, constants)
        loss = forward_loss(forward, args, tap)
        return loss, {n: tap.values[n] for n in e}

    outputs, pullback = jax.vjp(split, eps)
    # A forward that computes some values in float32 even in the float64 run gets cotangents
    # of that dtype.
    cotangents = jax.tree.map(lambda c, o: c.astype(o.dtype), cotangents, outputs)
    return pullback(cotangents)[0]


# These programs run once or a few times: XLA's optimization level 0 halves their compile time.
_JITTED = {f: jax.jit(f, static_argnames=("forward", "static"),
                      compiler_options={"xla_backend_optimization_level": 0})
           for f in (_grads, _split_pullback)}


def run(program, forward, args, *operands):
    """program(*operands) for this forward and args: jitted and cached by jax.jit, or eagerly
    when a non-array leaf of args cannot be hashed (so cannot be a static argument)."""
    arrays, static = split_args(args)
    if arrays is not None:
        return _JITTED[program](arrays, *operands, forward=forward, static=static)
    arrays, static = [], _Static(jax.tree.structure(args), tuple(enumerate(jax.tree.leaves(args))))
    return program(arrays, *operands, forward=forward, static=static)


def observed_roundoff(forward, args_d, truth: "Truth", dtype) -> dict:
    """max |jax.grad in dtype − float64 truth| per tapped name (args_d already in dtype)."""
    eps = {n: np.zeros(truth.shapes[n], dtype) for n in truth.names}
    _, _, grads = run(_grads, forward, args_d, eps)
    return {n: _max_abs(np.asarray(grads[n], np.float64) - truth.truth[n]) for n in truth.names}


# ------------------------------------------------------------------- the truth

def discover(forward, args) -> dict:
    """{name: shape} of every tap, in tap order, from an abstract run (compiles nothing).

    Raises the tap's and forward_loss's errors (a name tapped twice, a loss that is not a
    scalar), and a ValueError when nothing was tapped.
    """
    order = {}

    def abstract(a):
        tap = Tap()
        loss = forward_loss(forward, a, tap)
        order.update((n, tuple(v.shape)) for n, v in tap.values.items())
        return loss

    jax.eval_shape(lambda: abstract(args))  # args closed over: Python numbers stay numbers
    if not order:
        raise ValueError("forward never called tap: mark each value to check with "
                         "v = tap('v', v)")
    return order


class Truth:
    """The float64 loss, values, gradients, consumers and path contributions.

    Call inside ``jax.enable_x64(True)`` with float64 args.
    """

    def __init__(self, forward, args64, shapes: dict):
        """``shapes``: ``discover(forward, args64)``, {name: shape} in tap order."""
        self.forward, self.args = forward, args64
        self.names = names = list(shapes)
        self.shapes = dict(shapes)
        self._zeros = {n: np.zeros(self.shapes[n], np.float64) for n in names}
        self._dependencies()  # (ValueError on an unused tap before anything compiles)
        loss, values, grads = run(_grads, forward, args64, self._zeros)
        self.loss = float(loss)
        self.values = {n: np.asarray(values[n]) for n in names}
        self.truth = {n: np.asarray(grads[n]) for n in names}
        bad = [n for n in names if not np.all(np.isfinite(self.truth[n]))]
        if bad:
            raise ValueError(f"the float64 truth ∂loss/∂{bad[0]} (jax.grad of forward) has NaN "
                             f"or inf on these inputs; nothing can be checked against it")
        self.depth = {}
        for n in reversed(names):
            self.depth[n] = 1 + max((self.depth[c] for c in self.consumers[n]), default=0)
        # The scale of the gradient flowing into each value, without the cancellation
        # between terms of opposite sign: Σ_c (∂c/∂u)ᵀ |truth_c| plus the direct path.
        flowing = self.pull(1.0, {n: np.abs(self.truth[n]) for n in names})
        self.scale_in = {n: _max_abs(flowing[n]) for n in names}

    def _dependencies(self):
        """consumers and direct (see the module docstring); ValueError on an unused tap."""
        names = self.names

        def split(eps):
            tap = _Split(dict(zip(names, eps)), self._zeros)  # constants: only shapes matter
            loss = forward_loss(self.forward, self.args, tap)
            return loss, [tap.values[n] for n in names]

        masks = _dependencies(split, [self._zeros[n] for n in names])
        bit = {n: 1 << i for i, n in enumerate(names)}
        self.direct = {n: bool(masks[0] & bit[n]) for n in names}
        self.consumers = {u: tuple(c for c, m in zip(names, masks[1:]) if m & bit[u])
                          for u in names}
        unused = [n for n in names if not self.direct[n] and not self.consumers[n]]
        if unused:
            n = unused[0]
            raise ValueError(f"tap({n!r}, ...): the loss does not depend on what tap returned for "
                             f"{', '.join(map(repr, unused))}; use tap's result in place of the "
                             f"value ({n} = tap({n!r}, {n})), and tap only values the loss is "
                             f"computed from")

    def pull(self, loss_cotangent, cotangents: dict) -> dict:
        """The split run's VJP: {u: Σ_c (∂c/∂u)ᵀ cotangent_c + loss_cotangent × ∂loss/∂u
        directly}."""
        cts = {n: np.asarray(cotangents[n], np.float64) if n in cotangents else self._zeros[n]
               for n in self.names}
        with jax.enable_x64(True):
            out = run(_split_pullback, self.forward, self.args, self.values, self._zeros,
                      (np.float64(loss_cotangent), cts))
            return {n: np.asarray(out[n]) for n in self.names}

    def paths(self, u) -> list:
        """[(consumer, its contribution to truth_u)]; "(loss)" for the direct path."""
        out = [(c, self.pull(0.0, {c: self.truth[c]})[u]) for c in self.consumers[u]]
        if self.direct[u]:
            out.append((LOSS_PATH, self.pull(1.0, {})[u]))
        return out
