"""``Sequential``: modules in a chain with a loss, and the notes' backprop module by module.

The loss is one of ``jaxbp.LOSSES`` on the last axis, averaged over every other
axis (batch, and positions for a sequence model): with N the number of those
entries,

    L = (1/N) Σ_{b,t} loss(a_{b,t}, y_{b,t}),   ∂L/∂a = loss'(a, y) / N.

From there ``value_and_grad`` hands ∂L/∂(output) to each module's backward,
last to first (``jaxbp.nn._compose.backward_chain``). When the last module is
``Activation("softmax")`` with ``nll`` (or ``Activation("sigmoid")`` with
``binary_nll``) the loss is computed from the logits and the chain starts from
the fused, stable ∂L/∂z = (a − y)/N, as ``jaxbp.Network`` does.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.core import _checks
from jaxbp.core._ghost import check_max_norm as _ghost_check_max_norm
from jaxbp.core._losses import get_loss
from jaxbp.nn._activation import Activation
from jaxbp.nn._compose import backward_chain, forward_chain
from jaxbp.nn._module import Module
from jaxbp.nn import _private


# ---------------------------------------------------------------- pure cores
# `model` is static (hashable).

def _run_forward(model: "Sequential", params, X, key):
    """(output, residuals, inputs, logits): logits is z^L when the loss is fused, else None."""
    if model.fused:
        Z, residuals, inputs = forward_chain(model.modules[:-1], params[:-1], X, key)
        A, r_last = model.modules[-1].forward(params[-1], Z, None)
        return A, residuals + (r_last,), inputs + (Z,), Z
    A, residuals, inputs = forward_chain(model.modules, params, X, key)
    return A, residuals, inputs, None


def _loss_terms(model: "Sequential", A, Z, Y) -> jax.Array:
    """The loss of each position, shape (B, ...) (the output without its last axis)."""
    spec = model._loss
    return spec.value_from_z(Z, Y) if Z is not None else spec.value(A, Y)


def _top_delta(model: "Sequential", A, Z, Y) -> jax.Array:
    """∂L/∂(the input of the chain's backward): fused ∂L/∂z^L, or ∂L/∂a^L; over N."""
    spec = model._loss
    N = A.size // A.shape[-1]
    if Z is not None:
        return spec.dL_dz(Z, Y) / N
    return spec.dL_da(A, Y) / N


def _chain(model: "Sequential", params, X, Y, key, trail=None):
    """(mean loss, grads, output, dX): forward, then every module's backward, last first.

    ``trail`` (optional list) gets each module's (dparams, ∂L/∂input), last module first;
    for a fused top that is ((), the fused ∂L/∂z the chain starts from).
    """
    A, residuals, inputs, Z = _run_forward(model, params, X, key)
    loss = jnp.mean(_loss_terms(model, A, Z, Y))
    delta = _top_delta(model, A, Z, Y)
    if model.fused and trail is not None:
        trail.append(((), delta))
    n = len(model.modules) - (1 if model.fused else 0)
    grads, dX = backward_chain(model.modules[:n], params[:n], inputs[:n], residuals[:n], delta,
                               trail=trail)
    if model.fused:
        grads = grads + (jax.tree.map(jnp.zeros_like, params[-1]),)
    return loss, grads, A, dX


def _spec(tree):
    """Shapes and dtypes only (hashable): what the output's shape depends on."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


@functools.lru_cache(maxsize=256)
def _output_spec(model, params_spec, X_spec) -> jax.ShapeDtypeStruct:
    """The output's shape for these input shapes: traced once, not on every call."""
    return jax.eval_shape(lambda p, x: _run_forward(model, p, x, None)[0], params_spec, X_spec)


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grad(model, params, X, Y, key):
    loss, grads, _, _ = _chain(model, params, X, Y, key)
    return loss, grads


@functools.partial(jax.jit, static_argnums=0)
def _loss(model, params, X, Y, key):
    A, _, _, Z = _run_forward(model, params, X, key)
    return jnp.mean(_loss_terms(model, A, Z, Y))


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, X, key):
    return _run_forward(model, params, X, key)[0]


# ---------------------------------------------------------------- the model

@dataclasses.dataclass(frozen=True, init=False)
class Sequential:
    """Modules in sequence with a loss on the last axis: a hashable, static model.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import nn
      >>> model = nn.Sequential([nn.Linear(8), nn.Activation("tanh"), nn.Linear(3),
      ...                        nn.Activation("softmax")], loss="nll")
      >>> params = model.init(jax.random.key(0), (4,))
      >>> X, Y = jnp.ones((5, 4)), jax.nn.one_hot(jnp.arange(5) % 3, 3)
      >>> loss, grads = model.value_and_grad(params, X, Y)   # no jax.grad inside
      >>> grads[0].W.shape
      (4, 8)

    Attributes:
      modules: the modules, first to last.
      loss_name: a key of ``jaxbp.LOSSES``.
    """

    modules: tuple
    loss_name: str

    def __init__(self, modules: Sequence[Module], loss: str):
        if isinstance(modules, Module) or not isinstance(modules, (list, tuple)):
            raise TypeError(f"modules: expected a list of jaxbp.nn.Module, got "
                            f"{type(modules).__name__}")
        modules = tuple(modules)
        if not modules:
            raise ValueError("modules: expected at least one module, got none")
        for i, m in enumerate(modules, 1):
            if not isinstance(m, Module):
                raise TypeError(f"modules[{i - 1}]: expected a jaxbp.nn.Module (e.g. "
                                f"nn.Linear(10)), got {type(m).__name__}")
        spec = get_loss(loss)
        if spec.requires_activation and modules[-1] is not Activation(spec.requires_activation):
            raise ValueError(f"loss {loss!r} needs the last module to be "
                             f"nn.Activation({spec.requires_activation!r}), got "
                             f"{modules[-1].name}")
        object.__setattr__(self, "modules", modules)
        object.__setattr__(self, "loss_name", loss)

    def __repr__(self) -> str:
        return f"Sequential([{', '.join(m.name for m in self.modules)}], loss={self.loss_name!r})"

    @property
    def _loss(self):
        return get_loss(self.loss_name)

    @property
    def fused(self) -> bool:
        """Whether the last module and the loss are fused (softmax+nll, sigmoid+binary_nll)."""
        spec = self._loss
        return spec.dL_dz is not None and self.modules[-1] is Activation(spec.requires_activation)

    # -- parameters
    def init(self, key: jax.Array, in_shape: Sequence[int], *, dtype: Any = jnp.float32) -> tuple:
        """Each module's params in turn, one example's shape flowing through.

        Args:
          key: a PRNG key.
          in_shape: one example's shape, no batch axis: (d,), (T,) for token ids,
            (H, W, C) for images.
          dtype: float32 (default) or float64 (needs ``jax_enable_x64``).

        Returns:
          A tuple with one params entry per module (``()`` for modules without any).
        """
        dtype = _checks.check_float_dtype("dtype", dtype)
        if isinstance(in_shape, int):
            in_shape = (in_shape,)
        try:
            shape = tuple(int(s) for s in in_shape)
        except (TypeError, ValueError):
            raise TypeError(f"in_shape: expected a tuple of ints (one example's shape), got "
                            f"{in_shape!r}") from None
        params = []
        for i, (m, k) in enumerate(zip(self.modules, jax.random.split(key, len(self.modules))), 1):
            try:
                p, shape = m.init(k, shape, dtype)
            except (ValueError, TypeError) as e:
                raise type(e)(f"module {i} ({m.name}): {e}") from None
            params.append(p)
        if self._loss.single_output and shape[-1:] != (1,):
            raise ValueError(f"loss {self.loss_name!r} needs one output unit, the model "
                             f"outputs shape {shape}")
        return tuple(params)

    # -- validation
    def _inputs(self, params, X, Y=None):
        if not isinstance(params, tuple) or len(params) != len(self.modules):
            got = len(params) if isinstance(params, (tuple, list)) else type(params).__name__
            raise ValueError(f"params: expected a tuple with one entry per module "
                             f"({len(self.modules)}, from model.init), got {got}")
        leaves = [x for x in jax.tree.leaves(params) if hasattr(x, "dtype")]
        floats = {jnp.dtype(x.dtype) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)}
        if len(floats) > 1:
            raise TypeError(f"params: mixed dtypes {sorted(map(str, floats))}; use one")
        dtype = floats.pop() if floats else jnp.dtype(jnp.float32)
        X = jnp.asarray(X) if _checks.is_concrete(X) else X
        if X.ndim < 1 or X.shape[0] == 0:
            raise ValueError(f"X: expected a batch with a leading batch axis, got shape "
                             f"{tuple(X.shape)}")
        if jnp.issubdtype(X.dtype, jnp.floating):
            if _checks.is_concrete(X) and not np.all(np.isfinite(np.asarray(X))):
                raise ValueError("X: contains NaN or inf")
            X = X.astype(dtype)
        elif not jnp.issubdtype(X.dtype, jnp.integer):
            raise TypeError(f"X: expected floats (or integer token ids), got dtype {X.dtype}")
        if Y is None:
            return params, X, None
        out = _output_spec(self, _spec(params), _spec(X))
        Y = jnp.asarray(Y) if _checks.is_concrete(Y) else Y
        if (self.loss_name == "nll" and jnp.issubdtype(Y.dtype, jnp.integer)
                and Y.shape == out.shape[:-1]):
            if _checks.is_concrete(Y) and not np.all((np.asarray(Y) >= 0)
                                                      & (np.asarray(Y) < out.shape[-1])):
                raise ValueError(f"Y: class labels must lie in 0..{out.shape[-1] - 1}")
            Y = jax.nn.one_hot(Y, out.shape[-1], dtype=dtype)  # integer labels, as a convenience
        if self._loss.single_output and Y.shape == out.shape[:-1]:
            Y = Y[..., None]
        if Y.shape != out.shape:
            raise ValueError(f"Y: expected shape {tuple(out.shape)} like the model's output "
                             f"for loss {self.loss_name!r}, got {tuple(Y.shape)}")
        Y = Y.astype(dtype)
        if _checks.is_concrete(Y):
            _checks.check_target_values("Y", Y, self._loss)
        return params, X, Y

    # -- forward
    def forward(self, params, X, *, key: Optional[jax.Array] = None) -> jax.Array:
        """The last module's output for a batch X (leading batch axis)."""
        params, X, _ = self._inputs(params, X)
        return _forward(self, params, X, key)

    def loss(self, params, X, Y, *, key: Optional[jax.Array] = None) -> jax.Array:
        """Mean loss over every axis but the last (batch and positions).

        Y is shaped like the output ((B, n), (B, T, n)); for ``nll`` integer class
        labels of the output's shape without its last axis are accepted too.
        """
        params, X, Y = self._inputs(params, X, Y)
        return _loss(self, params, X, Y, key)

    # -- manual backprop
    def value_and_grad(self, params, X, Y, *, key: Optional[jax.Array] = None):
        """(mean loss, ∂L/∂params) by the modules' hand-written backward passes, jitted.

        No ``jax.grad``/``jax.vjp`` is used: ∂L/∂(output) from the loss (fused where
        it applies) goes through each module's ``backward``, last to first. The fused
        last activation gets a zero gradient entry (it has no parameters).
        """
        params, X, Y = self._inputs(params, X, Y)
        return _value_and_grad(self, params, X, Y, key)

    def grad(self, params, X, Y, *, key: Optional[jax.Array] = None) -> tuple:
        """∂L/∂params (a tuple like params), as ``value_and_grad(...)[1]``."""
        return self.value_and_grad(params, X, Y, key=key)[1]

    # -- private gradients (jaxbp.nn._private): one forward, one backward with per-example hooks
    def _per_example_start(self, params, X, Y, key):
        """(losses (B,), residuals, dY, n): the forward, each example's own loss ℓ_b (the mean
        over its positions) and ∂ℓ_b/∂(the chain's output) in row b, n modules in the chain."""
        A, residuals, _, Z = _run_forward(self, params, X, key)
        B = X.shape[0]
        losses = jnp.mean(_loss_terms(self, A, Z, Y).reshape(B, -1), axis=1)
        dY = _top_delta(self, A, Z, Y) * B  # ∂L/∂· over N = B·T positions, times B: over T
        return losses, residuals, dY, len(self.modules) - (1 if self.fused else 0)

    def per_example_grad_norms(self, params, X, Y, *, per_layer: bool = False,
                               key: Optional[jax.Array] = None) -> jax.Array:
        """‖∂ℓ_b/∂params‖ for each example b (ℓ_b: ``loss`` on example b alone), no vmap.

        Args:
          params, X, Y: as for ``value_and_grad``.
          per_layer: if True, one norm per module, shape (B, len(modules)) (0 for modules
            without parameters); rows have the total norms as their L2 norms.
          key: Dropout's key, as for ``value_and_grad``.

        Returns:
          (B,), or (B, len(modules)) with ``per_layer``. Raises ValueError for a module with
          parameters but no ``per_example`` hook, and for BatchNorm (it mixes examples).
        """
        params, X, Y = self._inputs(params, X, Y)
        return _private.per_example_grad_norms(self, params, X, Y, key, per_layer=bool(per_layer))

    def clipped_grad(self, params, X, Y, max_norm, *, key: Optional[jax.Array] = None) -> tuple:
        """(1/B) Σ_b scale_b ∂ℓ_b/∂params, scale_b = max_norm / max(‖∂ℓ_b/∂params‖, max_norm).

        The mean of per-example gradients each clipped to norm ≤ max_norm (DP-SGD without
        noise), from one forward and one backward pass (see ``jaxbp.nn._private``).

        Args:
          params, X, Y: as for ``value_and_grad``.
          max_norm: the clipping norm C, a finite number > 0.
          key: Dropout's key, as for ``value_and_grad``.

        Returns:
          A tuple like params.
        """
        params, X, Y = self._inputs(params, X, Y)
        max_norm = _ghost_check_max_norm(max_norm, _private.grad_dtype(params, X))
        return _private.clipped_grad(self, params, X, Y, max_norm, key)

    def private_grad(self, params, X, Y, *, max_norm, noise_multiplier, key: jax.Array,
                     dropout_key: Optional[jax.Array] = None, mask=None, batch_size=None) -> tuple:
        """The DP-SGD gradient (Σ_b m_b scale_b ∂ℓ_b/∂params + N(0, (σ·C)² I)) / D.

        Without mask and batch_size: ``clipped_grad`` plus Gaussian noise of standard
        deviation noise_multiplier · max_norm / B on every entry.

        Args:
          params, X, Y: as for ``value_and_grad``.
          max_norm: the clipping norm C > 0.
          noise_multiplier: σ ≥ 0.
          key: PRNG key for the noise.
          dropout_key: Dropout's key (``key`` of ``value_and_grad``); None: no dropout.
          mask: optional (B,) booleans, false for the padding rows of a batch padded to a
            fixed size (Poisson sampling); those rows contribute nothing.
          batch_size: D, the divisor; default B (under Poisson sampling: q·N, the expected size).

        Returns:
          A tuple like params.
        """
        return self._private_value_and_grad(params, X, Y, max_norm=max_norm,
                                            noise_multiplier=noise_multiplier, key=key,
                                            dropout_key=dropout_key, mask=mask,
                                            batch_size=batch_size)[1]

    def _private_value_and_grad(self, params, X, Y, *, max_norm, noise_multiplier, key,
                                dropout_key=None, mask=None, batch_size=None):
        """(mean loss over the real examples, ``private_grad``): for ``jaxbp.make_step``."""
        params, X, Y = self._inputs(params, X, Y)
        max_norm, weight, denominator = _private.check_private(
            _private.grad_dtype(params, X), X, max_norm, noise_multiplier, key, mask, batch_size)
        return _private.private_value_and_grad(self, params, X, Y, max_norm, noise_multiplier,
                                               key, dropout_key, weight, denominator)
