"""A training step that checks its gradient against ``jax.grad`` every N steps.

``make_step(net, optimizer, grad=fn, check_every=N)`` returns a ``CheckedStep``:
the plain jitted step, plus, on steps 0, N, 2N, ..., a check of the gradient
on that step's batch at that step's params — the state a long run reaches,
where a backward pass may go wrong only after hours.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check._compare import BackpropError, max_abs, row
from jaxbp.check._report import Report
from jaxbp.core._tolerances import roundoff_budget, rtol_for
from jaxbp.nn._sequential import Sequential


def _mean_loss(net):
    return net.loss if isinstance(net, Sequential) else net.batch_loss


def _screen(net, grad: Callable, params, X, Y) -> jax.Array:
    """Per leaf max|yours − jax.grad| / max|jax.grad|, in the params' dtype, one per leaf."""
    yours = jax.tree.leaves(grad(params, X, Y))
    truth = jax.tree.leaves(jax.grad(_mean_loss(net))(params, X, Y))
    tiny = jnp.finfo(truth[0].dtype).tiny
    return jnp.stack([jnp.max(jnp.abs(u - t)) / jnp.maximum(jnp.max(jnp.abs(t)), tiny)
                      for u, t in zip(yours, truth)])


class CheckedStep:
    """``step(params, opt_state, X, Y) -> (params, opt_state, loss)`` with a check every N.

    How the count is kept: in Python, on this object. ``count`` is the number of
    steps taken; the call with index ``count`` (from 0) is checked first when
    ``count % every == 0``. The jitted step itself (``.step``) stays pure and is
    what runs on every call, so the steps in between cost exactly the plain step
    (no callback or counter inside the compiled program). ``lower`` lowers that
    pure step, for ahead-of-time compilation as ``experiments/train.py`` does; a
    step compiled that way is the plain step: it keeps no count and checks nothing.

    A check costs one extra jitted program per checked step: your gradient and
    ``jax.grad`` of the mean batch loss in the params' dtype, compared per leaf
    with the dtype's usual tolerance (``jaxbp.core._tolerances.RTOL``, 1e-4 for float32).
    Only when that flags a leaf (or NaN/inf) does ``jaxbp.verify(net, params, X, Y,
    backprop=grad, batched=True)`` run, outside jit: the float64 reference with the
    round-off budget decides, and names the first bad layer and the suspect.

    Attributes:
      step: the pure jitted step.
      every: N.
      count: steps taken so far.
      last_report: the ``Report`` of the last check that ran ``verify`` (None before).
    """

    def __init__(self, step: Callable, net, grad: Callable, every: int, *,
                 own_chain: bool = False):
        self.step, self.net, self.grad, self.every = step, net, grad, every
        self.own_chain = own_chain  # a jaxbp.nn model's own modules: verify(model) names one
        self.count = 0
        self.last_report: Optional[Report] = None
        self._screen = jax.jit(functools.partial(_screen, net, grad))

    def __call__(self, params, opt_state, X, Y):
        if self.count % self.every == 0:
            self.check(params, X, Y)
        out = self.step(params, opt_state, X, Y)
        self.count += 1
        return out

    def check(self, params, X, Y) -> bool:
        """Checks ``grad`` at params on (X, Y) now, as step ``count``; True when it ran verify.

        Raises:
          jaxbp.BackpropError: the gradient disagrees with ``jax.grad`` beyond the
            budget; the message names the step, the first bad layer and the suspect,
            then the report; the ``Report`` is the exception's ``report``.
        """
        dtype = jax.tree.leaves(params)[0].dtype
        errors = np.asarray(self._screen(params, X, Y))
        if np.all(errors <= rtol_for(dtype)):  # False for NaN
            return False
        from jaxbp.check._verify import verify  # imported late: _verify pulls in jaxbp.nn

        if isinstance(self.net, Sequential):
            report = (verify(self.net, params, X, Y) if self.own_chain
                      else _model_grad_report(self.net, self.grad, params, X, Y))
            where = f"first bad module {report.first_bad_layer} ({report.module})"
        else:
            report = verify(self.net, params, X, Y, backprop=self.grad, batched=True)
            where = f"first bad layer {report.first_bad_layer}"
        self.last_report = report
        if not report.ok:
            error = BackpropError(
                f"step {self.count}: your gradient disagrees with jax.grad on this batch "
                f"(checked every {self.every} steps): {where}, "
                f"suspect {report.suspect!r}\n{report}")
            error.report = report
            raise error
        return True

    def lower(self, *args, **kwargs):
        """``step.lower(...)`` of the pure jitted step (ahead-of-time compilation)."""
        return self.step.lower(*args, **kwargs)


def _model_grad_report(model: Sequential, grad: Callable, params, X, Y) -> Report:
    """Your batch gradient of a ``jaxbp.nn`` model against float64 ``jax.grad(model.loss)``.

    A row per parameter leaf, modules from the last down; the first module with a wrong
    leaf is named (suspect "param", or "nonfinite"). Budgets as in ``verify``: 10 × the
    round-off of ``jax.grad`` in the params' dtype, at least the dtype's floor × (n + 1)
    of the module's largest gradient.
    """
    dtype = np.dtype(jax.tree.leaves(params)[0].dtype)
    yours = grad(params, X, Y)
    own = jax.grad(model.loss)(params, X, Y)
    with jax.enable_x64(True):
        to64 = functools.partial(jax.tree.map, lambda x: jnp.asarray(x, jnp.float64)
                                 if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x)
        truth = jax.grad(model.loss)(to64(params), to64(X), to64(Y))
    n, rows, first = len(model.modules), [], None
    for i in range(n, 0, -1):
        leaves = [(jax.tree_util.keystr(path).lstrip(".") or "params", np.asarray(t, np.float64),
                   np.asarray(u, np.float64), np.asarray(o, np.float64))
                  for (path, t), u, o in zip(jax.tree_util.tree_flatten_with_path(truth[i - 1])[0],
                                             jax.tree.leaves(yours[i - 1]),
                                             jax.tree.leaves(own[i - 1]))]
        module_scale = max([max_abs(t) for _, t, _, _ in leaves] + [0.0])
        for name, t, u, o in leaves:
            budget = roundoff_budget(max_abs(o - t), max(max_abs(t), module_scale), dtype, n)
            rows.append(row(i, name, u, t, budget, per_example=False))
            if not rows[-1].ok and first is None:
                first = i
    common = dict(rows=tuple(rows), mode="model", dtype=dtype.name, batch_size=int(X.shape[0]),
                  network=repr(model))
    if first is None:
        return Report(ok=True, first_bad_layer=None, suspect=None, **common)
    suspect = "nonfinite" if any(r.nonfinite for r in rows if r.layer == first) else "param"
    return Report(ok=False, first_bad_layer=first, suspect=suspect, candidates=(suspect,),
                  module=model.modules[first - 1].name, **common)
