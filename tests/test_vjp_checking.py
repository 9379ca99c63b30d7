"""``with jaxbp.checking() as log``: custom_vjp layers inside a real Equinox model,
differentiated under eqx.filter_grad and eqx.filter_jit, are compared with jax.vjp;
a planted bug is named, a correct model is ok, and outside the block nothing is added."""

from typing import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp


def swish(x):
    return x * jax.nn.sigmoid(x)


def swish_backward(x, dy):
    """d/dx x σ(x) = σ + x σ (1 − σ)."""
    s = jax.nn.sigmoid(x)
    return (dy * (s + x * s * (1 - s)),)


def swish_backward_buggy(x, dy):
    s = jax.nn.sigmoid(x)
    return (dy * (s + x * s),)  # the (1 − σ) dropped


def dense(W, b, x):
    return W @ x + b  # (n, m) @ (m,) -> (n,)


def dense_backward(W, b, x, dy):
    """y = W x + b: ∂/∂W = dy xᵀ, ∂/∂b = dy, ∂/∂x = Wᵀ dy."""
    return jnp.outer(dy, x), dy, W.T @ dy


DENSE = jaxbp.custom_vjp(dense, dense_backward, name="dense")
SWISH = {"right": jaxbp.custom_vjp(swish, swish_backward),
         "buggy": jaxbp.custom_vjp(swish, swish_backward_buggy)}


class CustomDense(eqx.Module):
    W: jax.Array
    b: jax.Array

    def __call__(self, x):
        return DENSE(self.W, self.b, x)


class MLP(eqx.Module):
    first: eqx.nn.Linear
    second: CustomDense
    act: Callable = eqx.field(static=True)

    def __call__(self, x):
        return self.second(self.act(self.first(x)))


def problem(act, seed=0):
    k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
    first = eqx.nn.Linear(3, 8, key=k1, dtype=jnp.float32)
    second = CustomDense(jax.random.normal(k2, (2, 8), jnp.float32) / 3,
                         jnp.full((2,), 0.1, jnp.float32))
    X = jax.random.normal(k3, (16, 3), jnp.float32) * 2
    Y = jax.random.normal(k4, (16, 2), jnp.float32)
    return MLP(first, second, act), X, Y


def loss(model, X, Y):
    return jnp.mean((jax.vmap(model)(X) - Y) ** 2)


grad = eqx.filter_jit(eqx.filter_grad(loss))


def test_correct_layers_are_ok_and_give_jax_grad():
    model, X, Y = problem(SWISH["right"])
    grad(model, X, Y)  # compiled outside the block first: the block must retrace
    with jaxbp.checking() as log:
        grads = grad(model, X, Y)
    assert log.ok and log.first_bad is None, repr(log)
    assert set(log.records) == {"swish", "dense"}
    assert all(r.calls >= 1 and r.max_error < 1e-5 for r in log.records.values()), repr(log)
    plain, _, _ = problem(swish)  # the same model with jax's own derivatives
    plain = eqx.tree_at(lambda m: m.second, plain,
                        replace_fn=lambda _: CustomDense(model.second.W, model.second.b))
    want = eqx.filter_grad(lambda m, X, Y: jnp.mean(
        (jax.vmap(lambda x: m.second.W @ m.act(m.first(x)) + m.second.b)(X) - Y) ** 2))(
        plain, X, Y)
    for g, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_planted_bug_is_named():
    model, X, Y = problem(SWISH["buggy"])
    with jaxbp.checking() as log:
        grad(model, X, Y)
    assert not log.ok and log.first_bad == "swish", repr(log)
    assert log.records["dense"].ok
    failure = log.records["swish"].first_failure
    assert failure.primal == "primals[0]" and failure.error > 1e-2 > failure.budget
    # the disagreement is real: the buggy backward against jax.vjp at the layer's input
    x = jnp.linspace(-3, 3, 7)
    _, pullback = jax.vjp(swish, x)
    assert np.max(np.abs(swish_backward_buggy(x, jnp.ones(7))[0] - pullback(jnp.ones(7))[0])) \
        > 0.1


def test_outside_the_block_the_layer_adds_nothing():
    model, X, Y = problem(SWISH["buggy"])
    params, static = eqx.partition(model, eqx.is_array)

    def jaxpr():
        return str(jax.make_jaxpr(jax.grad(
            lambda p: loss(eqx.combine(p, static), X, Y)))(params))

    assert "callback" not in jaxpr()
    with jaxbp.checking():
        assert "callback" in jaxpr()
    assert "callback" not in jaxpr()
    with jaxbp.checking() as log:
        pass
    grad(model, X, Y)  # after the block: no log collects, nothing fails
    assert log.ok and log.records == {}


def test_name_must_be_a_string():
    with pytest.raises(TypeError, match="name: expected a string or None, got int"):
        jaxbp.custom_vjp(swish, swish_backward, name=3)
