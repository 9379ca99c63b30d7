"""The module: a NamedTuple of pure functions, each backward beside its forward.

A module maps one stage of a model forward and, by hand, backward:

    init(key, in_shape, dtype)     -> (params, out_shape)
    forward(params, X, key)        -> (Y, residuals)
    backward(params, residuals, dY) -> (dparams, dX)

``in_shape``/``out_shape`` are one example's shape (no batch axis); ``X`` and
``Y`` carry a leading batch axis. ``params`` is any pytree (``()`` when there
are none) and ``dparams`` has its structure. ``residuals`` is whatever the
backward needs from the forward, named after the math (``x_hat``,
``inv_std``, ``probs``). ``backward`` maps ∂L/∂Y to (∂L/∂params, ∂L/∂X)
without ``jax.grad``/``jax.vjp``: it is the module's step of the notes' chain.
``dX`` is None for integer inputs (token ids).

``key`` is a PRNG key or None; only random modules (Dropout) use it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp


class Module(NamedTuple):
    """A model stage: ``init``, ``forward`` and its hand-written ``backward``.

    Attributes:
      name: a short label used in reports and errors, e.g. "Linear(10)".
      init: ``(key, in_shape, dtype) -> (params, out_shape)``; ``in_shape`` is
        one example's shape (a tuple of ints, no batch axis).
      forward: ``(params, X, key) -> (Y, residuals)``; X has a leading batch axis.
      backward: ``(params, residuals, dY) -> (dparams, dX)``, written by hand;
        dparams is shaped like params, dX like X (None for integer X).
      per_example: optional, for private (DP) gradients: ``(params, residuals, dY) ->
        jaxbp.nn.PerExample(dX, sq_norms, weighted_sum)``, the private form of backward,
        where row b of dY is the cotangent of example b's own loss: dX as backward's,
        sq_norms (B,) = ‖∂ℓ_b/∂params‖², and weighted_sum(c) = Σ_b c_b ∂ℓ_b/∂params
        (shaped like params). ``jaxbp.nn.hook_from_backward(backward, sq_norms)`` builds
        one. None: the module contributes 0 if it has no parameters, else the private
        methods refuse it (see ``jaxbp.nn._per_example``).
      time_axis: optional, the axis of X (and of Y) that is time, for sequence modules
        whose backward carries a gradient back through a state (1 for the recurrent
        modules: X (B, T, D)). The verifier then reports which time step of ∂L/∂X is
        wrong. None (the default): the module is not read as a sequence (convolutions,
        pools, Linear on (B, T, ·) act on each position alone).
      gates: optional, the names of k equal-width blocks side by side along the last
        axis of the parameter leaves whose last axis is k·H (LSTM ("i", "f", "o", "g"):
        Wx (D, 4H), Wh (H, 4H), b (4H,)). The verifier then names the gates whose
        blocks are wrong. () (the default): no gates; leaves of another width are
        compared whole.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxbp import nn
      >>> square = nn.Module(
      ...     "square",
      ...     init=lambda key, in_shape, dtype: ((), in_shape),
      ...     forward=lambda params, X, key: (X * X, X),
      ...     backward=lambda params, X, dY: ((), 2 * X * dY))
      >>> square.forward((), jnp.ones((2, 3)), None)[0].shape
      (2, 3)
    """

    name: str
    init: Callable[..., Any]
    forward: Callable[..., Any]
    backward: Callable[..., Any]
    per_example: Optional[Callable[..., Any]] = None
    time_axis: Optional[int] = None
    gates: tuple = ()

    def __repr__(self) -> str:
        return self.name


def shape_error(module: str, what: str, expected: Any, got: Any) -> ValueError:
    """A ValueError naming the module, what was checked, and both shapes."""
    return ValueError(f"{module}: {what}: expected {expected}, got {got}")


def check_rank(module: str, in_shape: tuple, rank: int, layout: str) -> tuple:
    """in_shape as a tuple of ints of the given rank (one example), or a ValueError."""
    in_shape = tuple(int(s) for s in in_shape)
    if len(in_shape) != rank:
        raise ValueError(f"{module}: expects one example of shape {layout} "
                         f"(rank {rank}, no batch axis), got in_shape {in_shape}")
    return in_shape


def check_last_axis(module: str, X: jax.Array, n: int, param: str) -> None:
    """Raises when X's last axis does not match the size n the params were made for."""
    if X.ndim < 2 or X.shape[-1] != n:
        raise ValueError(f"{module}: input of shape {tuple(X.shape)} (batch first) does not fit "
                         f"{param}: its last axis must be {n}")


def bias(W0: jax.Array, ndim: int) -> jax.Array:
    """W0 (n,) reshaped to broadcast against an array of rank ndim, explicitly.

    (jax_numpy_rank_promotion="raise" holds; a bias of the wrong rank is the classic bug.)
    """
    return W0.reshape((1,) * (ndim - 1) + W0.shape)


def sum_but_last(x: jax.Array) -> jax.Array:
    """Sums every axis but the last: a bias's gradient from (B, ..., n) to (n,)."""
    return jnp.sum(x, axis=tuple(range(x.ndim - 1)))
