"""The DP-SGD training step behind ``make_step(..., private=dict(...))``.

    loss, g = model._private_value_and_grad(params, X, Y, key=..., mask=mask, ...)
    updates, opt_state = optimizer.update(g, opt_state, params)

with g = (Σ_b m_b clip_C(g_b) + N(0, (σ·C)² I)) / D (``Network.private_grad`` or
``jaxbp.nn.Sequential.private_grad``): any Optax optimizer then runs DP-SGD (or DP-Adam...).
The step takes a PRNG ``key`` (fresh each step: the noise must never repeat) and an
optional ``mask`` (B,) marking the real rows of a batch padded to a fixed size, as
Poisson subsampling draws a variable number of examples.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import optax

from jaxbp.core import _ghost

PRIVATE_KEYS = ("max_norm", "noise_multiplier", "batch_size")


def check_private(private: Any) -> dict:
    """The ``private`` settings as a dict with all three keys, or a TypeError/ValueError."""
    if not isinstance(private, dict):
        raise TypeError(f"private: expected a dict such as dict(max_norm=1.0, "
                        f"noise_multiplier=1.1), got {type(private).__name__}")
    unknown = sorted(set(private) - set(PRIVATE_KEYS))
    missing = [k for k in ("max_norm", "noise_multiplier") if k not in private]
    if unknown or missing:
        raise ValueError(f"private: expected keys max_norm, noise_multiplier and optionally "
                         f"batch_size; missing {missing}, unknown {unknown}")
    _ghost.check_max_norm(private["max_norm"], "float32")
    _ghost.check_noise_multiplier(private["noise_multiplier"])
    batch_size = private.get("batch_size")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(
            batch_size, numbers.Real) or not batch_size > 0):
        raise ValueError(f"private: batch_size must be None or a number > 0 (the expected "
                         f"batch size under Poisson sampling), got {batch_size!r}")
    return {"max_norm": private["max_norm"], "noise_multiplier": private["noise_multiplier"],
            "batch_size": batch_size}


def private_step(model, optimizer: optax.GradientTransformation, private: dict,
                 has_dropout_key: bool) -> Callable:
    """``step(params, opt_state, X, Y, key, mask=None) -> (params, opt_state, loss)``, not jitted.

    ``has_dropout_key``: the model takes a Dropout key (``jaxbp.nn.Sequential``); it is
    split off ``key``, independent of the noise.
    """
    settings = check_private(private)

    def step(params, opt_state, X, Y, key, mask=None):
        if has_dropout_key:
            key, dropout_key = jax.random.split(key)
            extra = {"dropout_key": dropout_key}
        else:
            extra = {}
        loss, grads = model._private_value_and_grad(params, X, Y, key=key, mask=mask,
                                                    **settings, **extra)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step
