"""Central finite differences in float64: a third opinion beside jax.grad.

    ∂f/∂θ_i ≈ (f(θ + h_i e_i) − f(θ − h_i e_i)) / (2 h_i),   h_i = step · max(1, |θ_i|).

The truncation error is O(h²) and the round-off O(eps/h), so the default step
eps64^(1/3) ≈ 6e-6 gives about 1e-10 relative accuracy on smooth functions.
At a kink (relu at 0, the hinge margin) central differences return the mean
of the two one-sided slopes, where ``jax.grad`` returns one subgradient: that
is when a second opinion helps.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jaxbp.check._numpy_common import numpy_code_errors

_DEFAULT_STEP = float(np.finfo(np.float64).eps ** (1 / 3))


def _to64(tree):
    def cast(x):
        x = jnp.asarray(x)
        return x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, tree)


def finite_difference_grad(fun: Callable[..., Any], params, *args,
                           step: Optional[float] = None, chunk: int = 256):
    """The gradient of a scalar ``fun(params, *args)`` w.r.t. params by central differences.

    Everything is evaluated in float64 (params and floating args are cast; 64-bit
    mode is on only inside the call), 2 evaluations per entry of params, vmapped
    ``chunk`` entries at a time.

    Args:
      fun: (params, *args) -> a scalar.
      params: a pytree of float arrays (e.g. a tuple of ``Dense``).
      *args: further arguments of ``fun``, held fixed.
      step: the relative step h (default eps64^(1/3) ≈ 6.1e-6).
      chunk: how many entries to perturb at once.

    Returns:
      A pytree like params of NumPy float64 arrays (NumPy so the precision
      survives when JAX's 64-bit mode is off).

    Example:
      >>> import jax.numpy as jnp, jaxbp
      >>> g = jaxbp.finite_difference_grad(lambda w: jnp.sum(w ** 3), jnp.array([1.0, 2.0]))
      >>> [round(float(v), 6) for v in g]
      [3.0, 12.0]
    """
    if not callable(fun):
        raise TypeError(f"fun: expected a function (params, *args) -> scalar, got "
                        f"{type(fun).__name__}")
    step = _DEFAULT_STEP if step is None else step
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step < 1:
        raise ValueError(f"step: expected a number in (0, 1), got {step!r}")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk: expected a positive int, got {chunk!r}")
    with jax.enable_x64(True):
        params64, args64 = _to64(params), _to64(args)
        leaves = jax.tree.leaves(params64)
        if not leaves or not all(jnp.issubdtype(x.dtype, jnp.floating) for x in leaves):
            raise TypeError("params: expected a pytree of floating-point arrays")
        theta, unravel = ravel_pytree(params64)
        with numpy_code_errors("fun", "jaxbp.check_loss (loss and gradients in one "
                               "function) or jaxbp.check_layer"):
            value = jnp.asarray(fun(params64, *args64))
            jax.eval_shape(fun, params64, *args64)  # traced below: NumPy code fails here
        if value.shape != ():
            raise ValueError(f"fun: expected a scalar output, got shape {value.shape}")
        h = step * jnp.maximum(1.0, jnp.abs(theta))

        # theta and args enter as arguments, not closures: inside jit they are then
        # tracers, as fun's own checks expect.
        @jax.jit
        def grad_of(idx, theta, h, args):
            def one(i):
                e = jnp.zeros_like(theta).at[i].set(h[i])
                return (fun(unravel(theta + e), *args) - fun(unravel(theta - e), *args)) / (
                    2 * h[i])
            return jax.lax.map(one, idx, batch_size=chunk)

        grad = grad_of(jnp.arange(theta.size), theta, h, args64)
        return jax.tree.map(lambda x: np.asarray(x, np.float64), unravel(grad))
