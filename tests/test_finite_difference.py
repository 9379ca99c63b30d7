"""Central differences in float64: the third opinion beside jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp.check._selftest import random_problem


def test_closed_form():
    w = jnp.array([1.0, -2.0, 0.5])
    g = jaxbp.finite_difference_grad(lambda w, c: c * jnp.sum(w ** 3), w, 2.0)
    np.testing.assert_allclose(g, 6 * np.asarray(w) ** 2, rtol=1e-9)
    assert g.dtype == np.float64


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_matches_jax_grad_of_the_batch_loss(dtype):
    net = jaxbp.Network(sizes=(3, 4, 2), activations=("tanh", "softmax"), loss="nll")
    params, X, Y = random_problem(net, 0, 8, dtype)
    fd = jaxbp.finite_difference_grad(net.batch_loss, params, X, Y)
    p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
    want = jax.grad(net.batch_loss)(p64, X.astype(jnp.float64), Y.astype(jnp.float64))
    for got, w in zip(jax.tree.leaves(fd), jax.tree.leaves(want)):
        assert got.dtype == np.float64  # float64 even for float32 params
        np.testing.assert_allclose(got, w, rtol=1e-7, atol=1e-9)
    assert isinstance(fd[0], jaxbp.Dense)


def test_kink_gives_the_mean_slope_where_jax_grad_picks_one():
    f = lambda w: jnp.sum(jax.nn.relu(w))
    w = jnp.array([0.0, 1.0, -1.0])
    np.testing.assert_allclose(jaxbp.finite_difference_grad(f, w), [0.5, 1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(jax.grad(f)(w), [0.0, 1.0, 0.0])


def test_bad_input():
    with pytest.raises(ValueError, match="scalar"):
        jaxbp.finite_difference_grad(lambda w: w, jnp.ones(2))
    with pytest.raises(ValueError, match="step"):
        jaxbp.finite_difference_grad(lambda w: jnp.sum(w), jnp.ones(2), step=2.0)
    with pytest.raises(TypeError, match="params"):
        jaxbp.finite_difference_grad(lambda w: jnp.sum(w), jnp.arange(2))
    with pytest.raises(TypeError, match="fun"):
        jaxbp.finite_difference_grad("f", jnp.ones(2))
