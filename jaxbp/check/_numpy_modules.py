"""``check_modules``: module objects with ``forward(A)``/``backward(dA)`` (the 6.390
homework, "Neural Networks from Scratch") against float64 ``jax.grad`` of their own forwards.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.bridge._as_jax import call as _as_jax_call, check_scope
from jaxbp.bridge._values import STATE
from jaxbp.check import _numpy_common as common
from jaxbp.check._compare import BackpropError
from jaxbp.check._diagnose_numpy import for_numpy
from jaxbp.check._numpy_fd import fd_pairs
from jaxbp.check._numpy_eval import numpy_primitives
from jaxbp.check._numpy_report import numpy_report

_GRAD_NAMES = ("dLd{}", "d{}", "d_{}", "grad_{}", "{}_grad")
_NOT_PARAMS = frozenset({"inputs", "output", "A", "Z", "X", "Y", "Ypred"})


def _run(module, method, *args, attr=None):
    out = getattr(module, method)(*args)
    return getattr(module, attr) if out is None and attr else out


def _loss_forward(loss_module, A, Y):
    out = _run(loss_module, "forward", A, Y, attr="output")
    if len(getattr(out, "shape", ())) > 0:
        out = out.mean()  # per-example losses (a book's forward): their mean
    return out


def _loss_backward(loss_module, A, Y):
    try:
        required = [p for p in inspect.signature(loss_module.backward).parameters.values()
                    if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                           p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        required = []
    # the book's loss backward takes (dvalues, y_true), dvalues its own output when it has one
    first = getattr(loss_module, "output", A)
    args = () if not required else (first, Y) if len(required) >= 2 else (first,)
    return _run(loss_module, "backward", *args, attr="dinputs")


def _param_pairs(module, before: dict, after: dict, grads) -> list:
    pairs = []
    for name, value in before.items():
        if (name in _NOT_PARAMS or not common.is_float_array(value) or name.startswith("_")
                or after.get(name) is not value):
            continue
        if grads is not None:
            g = grads.get(name)
            if g is not None and common.is_float_array(getattr(module, g, None)):
                pairs.append((name, g))
            continue
        for pattern in _GRAD_NAMES:
            g = pattern.format(name)
            if np.shape(getattr(module, g, None)) == np.shape(value) and common.is_float_array(
                    getattr(module, g, None)):
                pairs.append((name, g))
                break
    return pairs


def check_modules(modules, loss_module, X, Y, *, grads=None, rtol=None, atol=None,
                  scope="auto"):
    """Checks module objects' backward passes against float64 ``jax.grad`` of their forwards.

    Runs ``A = modules[-1].forward(... modules[0].forward(X))``, the loss
    ``loss_module.forward(A, Y)`` and the backward chain ``loss_module.backward()`` (or
    ``backward(A, Y)``), ``modules[i].backward(dA)`` from the last module down, as your code
    does (arrays are passed as given: any layout). Where ``forward``/``backward`` return
    None their results are read from ``output``/``dinputs`` (the "from scratch" book); a
    loss that returns per-example losses is averaged. Each module's returned input gradient
    and its parameter gradients (found as ``W``/``W0`` → ``dLdW``/``dLdW0``,
    ``weights``/``biases`` → ``dweights``/``dbiases``, ``W``/``b`` → ``dW``/``db``, or given as
    ``grads={"W": "dLdW", ...}``) are compared with ``jax.grad`` of ``jaxbp.as_jax`` of the
    modules' own forwards. The homework's fused convention (NLL's backward returns ∂L/∂z of
    the SoftMax's input, SoftMax's backward passes it on) is recognized and passes.

    When the forwards cannot be traced (``float()`` of an entry, ``.item()``, ``math.exp``
    of an entry, ``np.vectorize``) or the traced loss does not reproduce the NumPy loss, a
    note says why (the NumPy call and your source line) and the truth is float64 central
    differences of the plain NumPy chain (``report.truth == "finite differences"``): each
    parameter and each activation moved entry by entry (random directions first for ones
    over 256 entries), as ``check_layer`` does.

    Args:
      modules: the layers and activations in forward order.
      loss_module: the loss, with ``forward(A, Y)`` and ``backward()``.
      X, Y: the inputs and targets, as your modules take them.
      grads: optional {parameter attribute: gradient attribute}.
      rtol, atol: explicit budget instead of round-off.
      scope: modules whose NumPy names are routed (see ``jaxbp.as_jax``).

    Returns:
      A ``Report`` (mode "modules"): rows in backprop order, ``first_bad_layer`` the first
      wrong module (1-based, the loss module is len(modules) + 1), ``module`` its class
      name, ``first_bad`` e.g. "module 2 (Tanh) input", ``truth`` "jax" or "finite
      differences".

    Example:
      >>> import numpy as np, jaxbp
      >>> class Square:
      ...     def forward(self, A):
      ...         self.A = A
      ...         return A ** 2
      ...     def backward(self, dA):
      ...         return 2 * self.A * dA
      >>> class Total:
      ...     def forward(self, A, Y):
      ...         return np.sum(A * Y)
      ...     def backward(self):
      ...         return self.Y
      ...     Y = np.ones((2, 3))
      >>> jaxbp.check_modules([Square()], Total(), np.ones((2, 3)), np.ones((2, 3))).ok
      True
    """
    modules = list(modules) if isinstance(modules, (list, tuple)) else None
    if not modules:
        raise TypeError("modules: expected a non-empty list of module objects")
    for i, m in enumerate(modules + [loss_module]):
        for method in ("forward", "backward"):
            if not callable(getattr(m, method, None)):
                what = "loss_module" if i == len(modules) else f"modules[{i}]"
                raise TypeError(f"{what}: {type(m).__name__} has no {method} method")
    if grads is not None and not (isinstance(grads, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in grads.items())):
        raise TypeError(f"grads: expected {{parameter name: gradient name}}, got {grads!r}")
    scope = check_scope(scope)
    X, Y = np.asarray(X), np.asarray(Y)
    state = np.random.get_state()
    # ---- your chain, as plain NumPy
    before = [dict(vars(m)) for m in modules]
    acts, A = [X], X.copy()
    for m in modules:
        A = _run(m, "forward", A, attr="output")
        acts.append(A)
    after = [dict(vars(m)) for m in modules]
    loss = _loss_forward(loss_module, A, Y)
    dA = _loss_backward(loss_module, A, Y)
    top = np.array(dA, dtype=np.float64)
    returned, params = {}, []
    for i in reversed(range(len(modules))):
        try:
            dA = _run(modules[i], "backward", dA, attr="dinputs")
        except Exception as e:
            raise BackpropError(f"module {i + 1} ({type(modules[i]).__name__}).backward raised "
                                f"{type(e).__name__}: {e}") from e
        returned[i] = np.array(dA, dtype=np.float64)
    for i, m in enumerate(modules):
        pairs = _param_pairs(m, before[i], after[i], grads)
        params.append([(p, g, np.array(getattr(m, p), dtype=np.float64),
                        np.array(getattr(m, g), dtype=np.float64)) for p, g in pairs])
    dtype = np.result_type(X.dtype, *[p[2].dtype for ps in params for p in ps]) \
        if np.issubdtype(X.dtype, np.floating) else np.float64
    snapshot = [dict(vars(m)) for m in modules + [loss_module]]
    after_state = np.random.get_state()
    L, notes, truth_kind = len(modules), [], "jax"
    try:
        try:
            value, (g_params, g_acts) = _truth(modules, loss_module, params, acts, X, Y,
                                               state, scope)
            problem = common.reproduce([value], [loss], dtype, "loss")
        except Exception as e:
            problem = f"the modules' forward could not be traced: {common.why_untraceable(e)}"
        if problem is None:
            fused = not _close(top, g_acts[L]) and _close(top, g_acts[L - 1])

            def pair(name, k, yours, layer, param=None):  # k: the activation, or the module
                truth = g_acts[k] if param is None else g_params[k][param]
                return common.Pair(name, yours[None], np.asarray(truth)[None], layer=layer)
        else:
            notes.append(f"{problem}; the truth is float64 central differences of the NumPy "
                         f"forward")
            truth_kind = "finite differences"
            pair = _fd_pair(modules, loss_module, params, acts, X, Y, state, dtype)
            fused = (not common.compare([pair("input", L, top, L + 1)], dtype=dtype,
                                        fd=True)[0].ok
                     and common.compare([pair("input", L - 1, top, L)], dtype=dtype,
                                        fd=True)[0].ok)
        # ---- the one comparison, in backprop order
        labels = [(L + 1, type(loss_module).__name__, "input")]
        pairs_ = [pair("input", L - 1 if fused else L, top, L + 1)]  # fused: ∂L/∂z
        for i in reversed(range(L)):
            cls = type(modules[i]).__name__
            pairs_.append(pair("input", i, returned[i], i + 1))
            labels.append((i + 1, cls, "input"))
            for k, (p, g, _, mine) in enumerate(params[i]):
                pairs_.append(pair(g, i, mine, i + 1, param=k))
                labels.append((i + 1, cls, g))
    finally:
        for m, snap in zip(modules + [loss_module], snapshot):
            vars(m).clear()
            vars(m).update(snap)
    rows = common.compare(pairs_, dtype=dtype, depth=L, rtol=rtol, atol=atol,
                          fd=truth_kind != "jax")
    if fused:
        notes.append(f"fused: {type(loss_module).__name__}.backward returns ∂L/∂z of "
                     f"{type(modules[-1]).__name__}'s input, and "
                     f"{type(modules[-1]).__name__}.backward passes it on")
    bad = next((k for k, r in enumerate(rows) if not r.ok), None)
    extra = {}
    if bad is not None:
        index, cls, which = labels[bad]
        suspect = ("nonfinite" if rows[bad].nonfinite else "loss" if index == L + 1
                   else "input" if which == "input" else "param")
        extra = dict(first_bad=f"module {index} ({cls}) {which}", first_bad_layer=index,
                     module=cls, suspect=suspect)
    report = numpy_report(rows, mode="modules", dtype=dtype, trials=1, truth=truth_kind,
                          network=" → ".join(type(m).__name__ for m in modules + [loss_module]),
                          notes=notes, **extra)
    if report.ok:
        return report
    # the diagnosis: leaves are the parameters, module by module, then every E[k] (at 0)
    starts = np.cumsum([0] + [len(ps) for ps in params]).tolist()
    leaves = [p[2] for ps in params for p in ps] + [np.zeros(np.shape(a)) for a in acts]
    leaf_of = [starts[-1] + (L - 1 if fused else L)]
    for i in reversed(range(L)):
        leaf_of += [starts[-1] + i] + [starts[i] + k for k in range(len(params[i]))]
    f = _traced_loss(modules, loss_module, params, X, Y, state, scope)

    def fn(*flat):
        return f([list(flat[starts[i]:starts[i + 1]]) for i in range(L)],
                 list(flat[starts[-1]:]))

    try:
        return for_numpy(report, pairs_, labels=[f"module {index} ({cls}) {which}"
                                                 for index, cls, which in labels],
                         fn=fn if truth_kind == "jax" else None, leaves=leaves,
                         leaf_of=leaf_of, cotangents=[np.float64(1.0)])
    finally:
        for m, snap in zip(modules + [loss_module], snapshot):
            vars(m).clear()
            vars(m).update(snap)
        np.random.set_state(after_state)


def _close(a, b) -> bool:
    return np.shape(a) == np.shape(b) and bool(
        np.max(np.abs(a - b), initial=0.0) <= 1e-8 * max(np.max(np.abs(b), initial=0.0), 1e-30))


def _chain(modules, loss_module, params, X, Y, P, E):
    """The loss with parameters P set on the modules and E[k] added to activation k."""
    for i, (m, ps) in enumerate(zip(modules, P)):
        for (name, *_), value in zip(params[i], ps):
            setattr(m, name, value)
    A = X + E[0]
    for i, m in enumerate(modules):
        A = _run(m, "forward", A, attr="output") + E[i + 1]
    STATE.floats = []
    try:
        out = _loss_forward(loss_module, A, Y)
        floats = STATE.floats
    finally:
        STATE.floats = None
    if isinstance(out, float) and len(floats) == 1 and floats[0][0] == out:
        out = floats[0][1]  # `return float(np.sum(...))`: the traced sum
    return out


def _fd_pair(modules, loss_module, params, acts, X, Y, state, dtype):
    """``pair(name, k, yours, layer, param=None)`` with the central-difference truth of the
    plain NumPy chain (``jaxbp.check._numpy_fd``): activation k, or module k's parameter."""
    P = [[p[2] for p in ps] for ps in params]
    E = [np.zeros(np.shape(a)) for a in acts]

    def pair(name, k, yours, layer, param=None):
        def run(moved):
            P_, E_ = [list(ps) for ps in P], list(E)
            if param is None:
                E_[k] = moved[0]
            else:
                P_[k][param] = moved[0]
            np.random.set_state(state)
            return [np.asarray(_chain(modules, loss_module, params, X, Y, P_, E_))]
        value = E[k] if param is None else P[k][param]
        return fd_pairs(run, [value], [name], np.ones((1, 1)), [yours[None]], dtype=dtype,
                        layers=[layer])[0]
    return pair


def _traced_loss(modules, loss_module, params, X, Y, state, scope):
    """f(P, E): the loss of the modules' own forwards, traced (as_jax), with parameters P
    set on the modules and E[k] added to activation k."""
    def chain(P, E):
        return _chain(modules, loss_module, params, X, Y, P, E)

    extra = tuple(type(m).forward for m in modules) + (type(loss_module).forward,)

    def f(P, E):
        np.random.set_state(state)
        out = _as_jax_call(chain, [P, E], {}, scope=scope, extra=extra)
        return jnp.reshape(jnp.asarray(out), ())
    return f


def _truth(modules, loss_module, params, acts, X, Y, state, scope):
    f = _traced_loss(modules, loss_module, params, X, Y, state, scope)
    with jax.enable_x64(True), numpy_primitives():
        P = [[jnp.asarray(p[2]) for p in ps] for ps in params]
        E = [jnp.zeros(np.shape(a)) for a in acts]
        value, (gP, gE) = jax.value_and_grad(f, argnums=(0, 1))(P, E)
        return (float(value), ([[np.asarray(g) for g in gs] for gs in gP],
                               [np.asarray(g) for g in gE]))
