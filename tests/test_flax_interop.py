"""A Flax NNX model with jaxbp.custom_vjp layers, differentiated with nnx.grad under nnx.jit
and checked with jaxbp.checking(): a correct model gives jax.grad's gradients and a clean log,
a planted bug is named. Skipped where flax is not installed (a test-only dependency)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp

nnx = pytest.importorskip("flax.nnx", reason="flax is not installed (pip install -e '.[test]')")


def dense(W, b, x):
    return x @ W + b[None, :]  # (B, m) @ (m, n) + (1, n) -> (B, n)


def dense_backward(W, b, x, dy):
    """∂/∂W = xᵀ dy, ∂/∂b = Σ_B dy, ∂/∂x = dy Wᵀ."""
    return x.T @ dy, dy.sum(axis=0), dy @ W.T


def swish(x):
    return x * jax.nn.sigmoid(x)


def swish_backward(x, dy):
    s = jax.nn.sigmoid(x)
    return (dy * (s + x * s * (1 - s)),)  # d/dx x σ(x) = σ + x σ (1 − σ)


def swish_backward_buggy(x, dy):
    s = jax.nn.sigmoid(x)
    return (dy * (s + x * s),)  # the (1 − σ) dropped


DENSE = jaxbp.custom_vjp(dense, dense_backward, name="dense")
SWISH = {"right": jaxbp.custom_vjp(swish, swish_backward, name="swish"),
         "buggy": jaxbp.custom_vjp(swish, swish_backward_buggy, name="swish")}


class CustomDense(nnx.Module):
    def __init__(self, m, n, *, rngs):
        self.W = nnx.Param(jax.random.normal(rngs.params(), (m, n), jnp.float32) / m ** 0.5)
        self.b = nnx.Param(jnp.zeros((n,), jnp.float32))

    def __call__(self, x, layer=DENSE):
        return layer(self.W[...], self.b[...], x)


class MLP(nnx.Module):
    def __init__(self, act, *, rngs):
        self.first = nnx.Linear(3, 8, rngs=rngs, param_dtype=jnp.float32)
        self.second = CustomDense(8, 2, rngs=rngs)
        self.act = act

    def __call__(self, x):
        return self.second(self.act(self.first(x)))


def loss(model, X, Y):
    return jnp.mean((model(X) - Y) ** 2)


@nnx.jit
def grad(model, X, Y):
    return nnx.grad(loss)(model, X, Y)


def data():
    kx, ky = jax.random.split(jax.random.key(1))
    return jax.random.normal(kx, (16, 3), jnp.float32), jax.random.normal(ky, (16, 2), jnp.float32)


def plain_loss(params, X, Y):  # the same model written with jax's own derivatives
    h = swish(X @ params["first"]["kernel"] + params["first"]["bias"][None, :])
    return jnp.mean((dense(params["second"]["W"], params["second"]["b"], h) - Y) ** 2)


def test_nnx_model_checked_and_equal_to_jax_grad():
    model, (X, Y) = MLP(SWISH["right"], rngs=nnx.Rngs(0)), data()
    with jaxbp.checking() as log:
        grads = grad(model, X, Y)
    assert log.ok and set(log.records) == {"swish", "dense"}, repr(log)
    params = jax.tree.map(lambda v: v[...], nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    want = jax.grad(plain_loss)(params, X, Y)
    got = nnx.to_pure_dict(grads)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_nnx_planted_bug_is_named():
    model, (X, Y) = MLP(SWISH["buggy"], rngs=nnx.Rngs(0)), data()
    with jaxbp.checking() as log:
        grad(model, X, Y)
    assert not log.ok and log.first_bad == "swish", repr(log)
    assert log.records["dense"].ok
