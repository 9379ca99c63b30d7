"""pytest assertions: a wrong backward pass fails the test with the report as the message.

Each ``assert_*`` runs the matching jaxbp check and returns its report when
every value agrees with the reference within budget; otherwise it raises
``AssertionError`` whose message is the report: the verdict, the first bad
layer (or primal), the suspect factor and the table, the way
``numpy.testing.assert_allclose`` and chex assertions read in a pytest failure.
jaxbp's frames are hidden from pytest's traceback (``__tracebackhide__``).

Import it explicitly in your tests::

    import jaxbp.testing

    def test_my_backprop():
        jaxbp.testing.assert_backprop(net, params, X, Y, backprop=my_backprop)

A backprop that raises or returns the wrong structure or shapes
(``jaxbp.BackpropError``) also fails the assertion, with that message;
mistakes in the call itself (a wrong argument type) raise as usual.

This module sits above ``jaxbp.check`` in the package's layering and calls only its
public functions (the same objects ``jaxbp`` exports).
"""

from __future__ import annotations

from typing import Callable

from jaxbp.check._intermediates import check_intermediates
from jaxbp.check._numpy_layer import check_layer
from jaxbp.check._numpy_loss import check_loss
from jaxbp.check._numpy_modules import check_modules
from jaxbp.check._compare import BackpropError
from jaxbp.check._verify import verify
from jaxbp.check._verify_nn import check_module
from jaxbp.check._vjp import check_vjp

__all__ = ["assert_backprop", "assert_intermediates", "assert_layer", "assert_loss",
           "assert_module", "assert_modules", "assert_vjp"]


def _check(name: str, check: Callable, *args, **kwargs):
    __tracebackhide__ = True
    try:
        report = check(*args, **kwargs)
    except BackpropError as e:
        raise AssertionError(f"{name}: your backward pass failed to run:\n{e}") from e
    if not report.ok:
        raise AssertionError(f"{name}: gradients disagree with the reference\n{report}")
    return report


def assert_backprop(net_or_model, params, X, Y, **verify_kwargs):
    """Asserts that a hand-written backprop agrees with ``jax.grad`` (``jaxbp.verify``).

    Args:
      net_or_model: what ``jaxbp.verify`` takes first: a ``jaxbp.Network``
        (your function in ``backprop=``) or a ``jaxbp.nn.Sequential`` model
        (its modules' backward passes are checked).
      params: its parameters.
      X: inputs, a batch (leading batch axis).
      Y: targets, a batch.
      **verify_kwargs: passed to ``jaxbp.verify`` (``backprop=``,
        ``batched=``, ``rtol=``, ``atol=``, ...).

    Returns:
      The ``jaxbp.Report``, when every leaf is within budget.

    Raises:
      AssertionError: a leaf is wrong (or NaN/inf), or your backprop raised or
        returned the wrong shapes; the message is the report.

    Example:
      >>> import jax, jaxbp, jaxbp.testing
      >>> net = jaxbp.Network(sizes=(3, 4, 2), activations=("tanh", "softmax"), loss="nll")
      >>> params = net.init(jax.random.key(0))
      >>> X = jax.random.normal(jax.random.key(1), (8, 3))
      >>> Y = jax.nn.one_hot(jax.numpy.arange(8) % 2, 2)
      >>> jaxbp.testing.assert_backprop(net, params, X, Y, backprop=net.backprop).ok
      True
    """
    __tracebackhide__ = True
    return _check("assert_backprop", verify, net_or_model, params, X, Y,
                  **verify_kwargs)


def assert_vjp(forward: Callable, backward: Callable, *primals, **kwargs):
    """Asserts that a layer's backward agrees with ``jax.vjp`` (``jaxbp.check_vjp``).

    Args:
      forward: (*primals) -> y.
      backward: (*primals, dy) -> one cotangent per primal.
      *primals: the point to check at.
      **kwargs: passed to ``jaxbp.check_vjp`` (``key=``, ``trials=``,
        ``rtol=``, ``atol=``, ``order=2`` to check the backward's own derivative).

    Returns:
      The ``jaxbp.Report`` (mode "vjp"), when every cotangent is within budget.

    Raises:
      AssertionError: a cotangent is wrong (or NaN/inf), or ``backward`` raised
        or returned the wrong shapes; the message is the report.

    Example:
      >>> import jax.numpy as jnp, jaxbp.testing
      >>> backward = lambda x, dy: dy * (1 - jnp.tanh(x) ** 2)
      >>> jaxbp.testing.assert_vjp(jnp.tanh, backward, jnp.linspace(-1.0, 1.0, 5)).ok
      True
    """
    __tracebackhide__ = True
    return _check("assert_vjp", check_vjp, forward, backward, *primals, **kwargs)


def assert_module(module, params, X, **kwargs):
    """Asserts that a module's backward agrees with ``jax.vjp`` (``jaxbp.check_module``).

    Args:
      module: a ``jaxbp.nn.Module``.
      params: its params (from ``module.init``).
      X: a batch (leading batch axis).
      **kwargs: passed to ``jaxbp.check_module`` (``key=``, ``trials=``,
        ``rtol=``, ``atol=``).

    Returns:
      The ``jaxbp.Report`` (mode "module"), when ∂L/∂X and every parameter
      gradient are within budget.

    Raises:
      AssertionError: the input or a parameter gradient is wrong (or NaN/inf);
        the message is the report.

    Example:
      >>> import jax, jax.numpy as jnp, jaxbp.testing
      >>> from jaxbp import nn
      >>> layer = nn.Linear(3)
      >>> params, _ = layer.init(jax.random.key(0), (4,), jnp.float32)
      >>> jaxbp.testing.assert_module(layer, params, jnp.ones((2, 4))).ok
      True
    """
    __tracebackhide__ = True
    return _check("assert_module", check_module, module, params, X, **kwargs)


def assert_intermediates(forward: Callable, args, grads, **kwargs):
    """Asserts your gradients of tapped values (``jaxbp.check_intermediates``).

    Args:
      forward: ``forward(*args, tap)`` returning a scalar loss; each checked
        value v is marked with ``v = tap("v", v)``.
      args: a tuple of forward's positional arguments.
      grads: ``{name: your ∂loss/∂value}`` for any subset of the tapped names.
      **kwargs: passed to ``jaxbp.check_intermediates`` (``rtol=``, ``atol=``).

    Returns:
      The ``jaxbp.IntermediatesReport``, when every given gradient has its
      value's shape, is finite and is within budget.

    Raises:
      AssertionError: a given gradient is wrong; the message is the report
        (the first bad value, the suspect, the table).

    Example:
      >>> import jax.numpy as jnp, jaxbp.testing
      >>> def forward(w, x, *, tap):
      ...     h = tap("h", jnp.tanh(w * x))
      ...     return jnp.sum(h ** 2)
      >>> w, x = jnp.ones(3), jnp.arange(3.0)
      >>> dh = 2 * jnp.tanh(w * x)
      >>> jaxbp.testing.assert_intermediates(forward, (w, x), {"h": dh}).ok
      True
    """
    __tracebackhide__ = True
    return _check("assert_intermediates", check_intermediates, forward, args, grads,
                  **kwargs)


def assert_layer(forward: Callable, backward: Callable, *inputs, **kwargs):
    """Asserts a NumPy layer pair with a cache (``jaxbp.check_layer``).

    Args:
      forward: ``forward(*inputs) -> (*outputs, cache)``, plain NumPy.
      backward: ``backward(*douts, cache)`` -> one gradient per checked input.
      *inputs: forward's arguments.
      **kwargs: passed to ``jaxbp.check_layer`` (``wrt=``, ``time_axis=``, ``gates=``, ...).

    Returns:
      The ``jaxbp.Report`` (mode "layer") when every gradient is within budget.

    Raises:
      AssertionError: a gradient is wrong; the message is the report.

    Example:
      >>> import numpy as np, jaxbp.testing
      >>> forward = lambda x: (np.tanh(x), np.tanh(x))
      >>> backward = lambda dout, y: dout * (1 - y ** 2)
      >>> jaxbp.testing.assert_layer(forward, backward, np.linspace(-1, 1, 5)).ok
      True
    """
    __tracebackhide__ = True
    return _check("assert_layer", check_layer, forward, backward, *inputs, **kwargs)


def assert_loss(fn: Callable, params, *args, **kwargs):
    """Asserts "loss and gradients in one function" (``jaxbp.check_loss``).

    Args:
      fn: ``fn(params, *args) -> (loss, grads)``, plain NumPy.
      params: an array, a tuple or a dict of float arrays.
      *args: fn's other arguments.
      **kwargs: passed to ``jaxbp.check_loss``.

    Returns:
      The ``jaxbp.Report`` (mode "loss") when every gradient is within budget.

    Raises:
      AssertionError: a gradient is wrong; the message is the report.

    Example:
      >>> import numpy as np, jaxbp.testing
      >>> fn = lambda w, x: (np.sum((x @ w) ** 2), 2 * x.T @ (x @ w))
      >>> jaxbp.testing.assert_loss(fn, np.ones(3), np.eye(3)).ok
      True
    """
    __tracebackhide__ = True
    return _check("assert_loss", check_loss, fn, params, *args, **kwargs)


def assert_modules(modules, loss_module, X, Y, **kwargs):
    """Asserts module objects' backward passes (``jaxbp.check_modules``).

    Args:
      modules: objects with ``forward(A)`` and ``backward(dA)``, in forward order.
      loss_module: the loss, with ``forward(A, Y)`` and ``backward()``.
      X, Y: inputs and targets, as the modules take them.
      **kwargs: passed to ``jaxbp.check_modules`` (``grads=``, ...).

    Returns:
      The ``jaxbp.Report`` (mode "modules") when every gradient is within budget.

    Raises:
      AssertionError: a gradient is wrong; the message is the report, which names the
        module (1-based) and which of its gradients.

    Example:
      >>> import numpy as np, jaxbp.testing
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
      ...         return np.ones((2, 3))
      >>> X = np.linspace(-1, 1, 6).reshape(2, 3)
      >>> jaxbp.testing.assert_modules([Square()], Total(), X, np.ones((2, 3))).ok
      True
    """
    __tracebackhide__ = True
    return _check("assert_modules", check_modules, modules, loss_module, X, Y, **kwargs)
