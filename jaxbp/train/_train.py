"""Optax training steps driven by manual backprop or by jax.grad, on one device or many.

One step is the plain Optax update

    loss, g = value_and_grad(params, X, Y)        # g = ∂L/∂params, mean over the batch
    updates, opt_state = optimizer.update(g, opt_state, params)
    params = params + updates

where ``g`` comes from the notes' chain (``Network.value_and_grad``, "manual")
or from ``jax.value_and_grad(net.batch_loss)`` ("autodiff"). Everything else
is identical, so two runs from the same params on the same batches differ only
by the round-off of the two gradient computations.

Data parallelism is ``jax.sharding``'s: a one-axis ``Mesh`` named "batch",
X and Y split along their first axis, params and optimizer state replicated.
``jax.jit`` inserts the cross-device sum of the gradient itself; nothing here
is device- or backend-specific, and the same code runs multi-host after
``jax.distributed.initialize()`` (the mesh then spans every process's devices).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxbp.train._checked_step import CheckedStep
from jaxbp.core._network import Dense, Network
from jaxbp.train._private_step import private_step
from jaxbp.nn._sequential import Sequential

GRADS = ("manual", "autodiff")
BATCH_AXIS = "batch"


def _value_and_grad_fn(net: Network, grad) -> Callable:
    """``(params, X, Y) -> (mean loss, mean grads)`` for ``make_step``: the one dispatch."""
    if isinstance(net, Sequential):  # a jaxbp.nn model
        if callable(grad):
            return lambda params, X, Y: (net.loss(params, X, Y), grad(params, X, Y))
        return net.value_and_grad if grad == "manual" else jax.value_and_grad(net.loss)
    if callable(grad):  # your batched backprop: the loss is a forward pass only
        def value_and_grad(params, X, Y):
            grads = grad(params, X, Y)
            return net.batch_loss(params, X, Y), tuple(Dense(*g) for g in grads)
        return value_and_grad
    if grad == "manual":
        return net.value_and_grad  # the notes' chain, no jax.grad inside
    return jax.value_and_grad(net.batch_loss)


def make_step(net: Network, optimizer: optax.GradientTransformation, *,
              grad: str | Callable = "manual", mesh: Mesh | None = None,
              check_every: int | None = None, private: dict | None = None) -> Callable:
    """A jitted, pure Optax training step using manual backprop or jax.grad.

    ``step(params, opt_state, X, Y) -> (params, opt_state, loss)`` where loss is
    the mean batch loss at the *incoming* params (the one the gradient is taken at).

    With ``private=dict(max_norm=C, noise_multiplier=σ)`` it is a DP-SGD step,
    ``step(params, opt_state, X, Y, key, mask=None)``: the gradient is
    ``net.private_grad`` (each example's gradient clipped to norm ≤ C, summed, plus
    N(0, (σ·C)²) noise on every entry, over the batch size), ``key`` a PRNG key that
    must be fresh every step, and ``mask`` (B,) optional booleans marking the real rows
    of a padded batch (Poisson sampling; add ``batch_size=`` the expected batch size
    q·N to the dict to divide by it instead of B). The loss is then the mean over the
    real rows.

    Args:
      net: the ``Network``, or a ``jaxbp.nn.Sequential`` ("manual": its
        ``value_and_grad``; "autodiff": ``jax.value_and_grad(model.loss)``).
      optimizer: any ``optax.GradientTransformation`` (``optax.adam(1e-3)``, a chain, ...).
      grad: "manual" (``net.value_and_grad``, the notes' chain rule), "autodiff"
        (``jax.value_and_grad(net.batch_loss)``, the ground truth), or your own
        batched backprop ``fn(params, X, Y)`` returning the batch-mean gradient
        (a tuple of ``Dense`` or ``(W, W0)`` pairs, like params; it runs inside
        ``jax.jit``). The loss is then ``net.batch_loss``.
      mesh: optional one-axis mesh from ``batch_mesh``: X (B, m) and Y (B, n^L) are then
        split along B over its devices and params/opt_state replicated (B must be
        divisible by the device count). None: JAX's default placement.
      check_every: None (default): the plain jitted step. N ≥ 1: a ``CheckedStep``
        that also checks ``grad`` on steps 0, N, 2N, ... (counting from 0) against
        ``jax.grad`` on the same batch, and raises ``jaxbp.BackpropError`` naming
        the step, the first bad layer and the suspect when they disagree beyond
        the budget. The steps in between are the plain jitted step. For a
        ``jaxbp.nn.Sequential`` the check names the first bad module: with grad
        "manual" through ``jaxbp.verify(model, ...)`` (its modules' own backward:
        suspect "input" or "param"), with your function by its parameter leaves.
      private: None, or dict(max_norm=C, noise_multiplier=σ[, batch_size=D]): the DP-SGD
        step above (grad "manual" only; no mesh or check_every).

    Returns:
      The jitted step (or a ``CheckedStep`` wrapping it). It does not donate its
      inputs, so params can be reused.

    Example:
      >>> import jax, optax, jaxbp
      >>> net = jaxbp.Network(sizes=(2, 8, 1), activations=("tanh", "identity"), loss="squared")
      >>> params = net.init(jax.random.key(0))
      >>> optimizer = optax.sgd(0.1)
      >>> step = jaxbp.make_step(net, optimizer, grad="manual")
      >>> X, Y = jax.numpy.ones((4, 2)), jax.numpy.zeros((4, 1))
      >>> params, opt_state, loss = step(params, optimizer.init(params), X, Y)
      >>> loss.shape
      ()
    """
    if not isinstance(net, (Network, Sequential)):
        raise TypeError(f"net: expected a jaxbp.Network or jaxbp.nn.Sequential, got "
                        f"{type(net).__name__}")
    if not (callable(getattr(optimizer, "init", None)) and callable(getattr(optimizer, "update", None))):
        raise TypeError(
            f"optimizer: expected an optax.GradientTransformation (with init and update), "
            f"got {type(optimizer).__name__}")
    if not callable(grad) and grad not in GRADS:
        raise ValueError(f"grad: expected one of {', '.join(map(repr, GRADS))}, got {grad!r} "
                         f"(or your batched function fn(params, X, Y) -> mean grads)")
    if check_every is not None and (isinstance(check_every, bool) or not isinstance(
            check_every, int) or check_every < 1):
        raise ValueError(f"check_every: expected None or an int >= 1, got {check_every!r}")
    if private is not None:
        if grad != "manual" or mesh is not None or check_every is not None:
            raise ValueError("private: needs grad='manual' (the one-pass per-example clipping) "
                             "and no mesh or check_every")
        return jax.jit(private_step(net, optimizer, private, isinstance(net, Sequential)))
    value_and_grad = _value_and_grad_fn(net, grad)

    def step(params, opt_state, X, Y):
        loss, grads = value_and_grad(params, X, Y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    if mesh is None:
        jitted = jax.jit(step)
    else:
        _check_mesh(mesh)
        replicated, batch = NamedSharding(mesh, P()), NamedSharding(mesh, P(BATCH_AXIS))
        jitted = jax.jit(step, in_shardings=(replicated, replicated, batch, batch),
                         out_shardings=(replicated, replicated, replicated))
    if check_every is None:
        return jitted
    return CheckedStep(jitted, net, lambda p, X, Y: value_and_grad(p, X, Y)[1], check_every,
                       own_chain=isinstance(net, Sequential) and grad == "manual")


def _check_mesh(mesh: Any) -> None:
    if not isinstance(mesh, Mesh) or tuple(mesh.axis_names) != (BATCH_AXIS,):
        raise TypeError(f"mesh: expected a one-axis jax.sharding.Mesh named {BATCH_AXIS!r} "
                        f"(see jaxbp.batch_mesh), got {mesh!r}")


def batch_mesh(num_devices: int | None = None, *, devices: Sequence | None = None) -> Mesh:
    """A one-axis ``Mesh`` named "batch" over the first ``num_devices`` devices.

    Args:
      num_devices: how many devices; None for all of ``devices``.
      devices: the devices to draw from; default ``jax.devices()`` (every process's
        devices after ``jax.distributed.initialize()``).

    Returns:
      ``Mesh(devices[:num_devices], ("batch",))``.
    """
    devices = list(jax.devices() if devices is None else devices)
    if num_devices is None:
        num_devices = len(devices)
    if isinstance(num_devices, bool) or not isinstance(num_devices, int) \
            or not 1 <= num_devices <= len(devices):
        raise ValueError(f"num_devices: expected an int in 1..{len(devices)} (the devices "
                         f"available), got {num_devices!r}")
    return Mesh(np.array(devices[:num_devices]), (BATCH_AXIS,))


def shard_batch(mesh: Mesh, *arrays) -> tuple[jax.Array, ...]:
    """Global arrays split along their first axis over ``mesh``.

    Each process passes the whole (same) host array; every device receives only
    its slice, so this also works multi-host.

    Args:
      mesh: from ``batch_mesh``.
      *arrays: host arrays of shape (B, ...), B divisible by the mesh's size.

    Returns:
      One ``jax.Array`` per input, sharded ``P("batch")``.
    """
    _check_mesh(mesh)
    size = mesh.devices.size
    sharding = NamedSharding(mesh, P(BATCH_AXIS))
    out = []
    for i, x in enumerate(arrays):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % size:
            raise ValueError(f"arrays[{i}]: expected a leading batch axis divisible by the "
                             f"{size} devices of the mesh, got shape {x.shape}")
        out.append(jax.make_array_from_callback(x.shape, sharding, lambda idx, x=x: x[idx]))
    return tuple(out)


def replicate(mesh: Mesh, tree: Any) -> Any:
    """A pytree with every leaf copied whole to each device of ``mesh`` (multi-host safe)."""
    _check_mesh(mesh)
    sharding = NamedSharding(mesh, P())

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)
