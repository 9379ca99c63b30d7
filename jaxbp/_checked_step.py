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

from jaxbp._compare import BackpropError
from jaxbp._network import Network
from jaxbp._report import Report
from jaxbp._tolerances import rtol_for


def _screen(net: Network, grad: Callable, params, X, Y) -> jax.Array:
    """Per leaf max|yours − jax.grad| / max|jax.grad|, in the params' dtype, shape (2L,)."""
    yours = jax.tree.leaves(grad(params, X, Y))
    truth = jax.tree.leaves(jax.grad(net.batch_loss)(params, X, Y))
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
    with the dtype's usual tolerance (``jaxbp._tolerances.RTOL``, 1e-4 for float32).
    Only when that flags a leaf (or NaN/inf) does ``jaxbp.verify(net, params, X, Y,
    backprop=grad, batched=True)`` run, outside jit: the float64 reference with the
    round-off budget decides, and names the first bad layer and the suspect.

    Attributes:
      step: the pure jitted step.
      every: N.
      count: steps taken so far.
      last_report: the ``Report`` of the last check that ran ``verify`` (None before).
    """

    def __init__(self, step: Callable, net: Network, grad: Callable, every: int):
        self.step, self.net, self.grad, self.every = step, net, grad, every
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
        from jaxbp._verify import verify  # imported late: _verify pulls in jaxbp.nn

        report = verify(self.net, params, X, Y, backprop=self.grad, batched=True)
        self.last_report = report
        if not report.ok:
            error = BackpropError(
                f"step {self.count}: your gradient disagrees with jax.grad on this batch "
                f"(checked every {self.every} steps): first bad layer {report.first_bad_layer}, "
                f"suspect {report.suspect!r}\n{report}")
            error.report = report
            raise error
        return True

    def lower(self, *args, **kwargs):
        """``step.lower(...)`` of the pure jitted step (ahead-of-time compilation)."""
        return self.step.lower(*args, **kwargs)
