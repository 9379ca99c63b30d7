"""Every bad input raises a ValueError/TypeError that names the problem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from tests._nets import assert_close


@pytest.fixture
def nll_net():
    net = jaxbp.Network(sizes=(4, 5, 3), activations=("tanh", "softmax"), loss="nll")
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    X = jnp.ones((2, 4))
    Y = jax.nn.one_hot(jnp.array([0, 2]), 3)
    return net, params, X, Y


@pytest.mark.parametrize("kwargs,exc,pattern", [
    (dict(sizes=(4, 3), activations=("swish",), loss="squared"), ValueError,
     r"unknown activation 'swish'; known activations: identity, relu"),
    (dict(sizes=(4, 3), activations=("tanh",), loss="mse"), ValueError,
     r"unknown loss 'mse'; known losses: squared, hinge, binary_nll, nll"),
    (dict(sizes=(4, 5, 3), activations=("tanh",), loss="squared"), ValueError,
     r"activations: expected len\(sizes\) - 1 = 2 names .*got 1"),
    (dict(sizes=(4, 3), activations=("tanh",), loss="nll"), ValueError,
     r"loss 'nll' needs a 'softmax' last activation, got 'tanh'"),
    (dict(sizes=(4, 3), activations=("softmax",), loss="binary_nll"), ValueError,
     r"loss 'binary_nll' needs a 'sigmoid' last activation, got 'softmax'"),
    (dict(sizes=(4, 2), activations=("identity",), loss="hinge"), ValueError,
     r"loss 'hinge' needs exactly one output unit, got sizes\[-1\]=2"),
    (dict(sizes=(4,), activations=(), loss="squared"), ValueError, r"sizes: expected at least two"),
    (dict(sizes=(4, 0), activations=("tanh",), loss="squared"), ValueError, r"positive ints"),
    (dict(sizes=(4, 3), activations="tanh", loss="squared"), TypeError,
     r"activations: expected a sequence of names.*\('tanh',\)"),
], ids=["activation", "loss", "count", "nll", "binary_nll", "hinge", "short", "zero", "string"])
def test_bad_network_definitions(kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        jaxbp.Network(**kwargs)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_shape_and_dtype_errors_also_under_jit(nll_net, jit):
    net, params, X, Y = nll_net
    grad = jax.jit(net.grad) if jit else net.grad
    backprop = jax.jit(net.backprop) if jit else net.backprop
    with pytest.raises(ValueError, match=r"X: expected shape \(B, m\) with m=4, got \(2, 5\)"):
        grad(params, jnp.ones((2, 5)), Y)
    with pytest.raises(ValueError, match=r"x: expected shape \(m,\) with m=4, got \(2, 4\)"):
        backprop(params, X, Y[0])
    with pytest.raises(ValueError, match=r"Y: expected shape \(B, n\) = \(2, 3\).*got \(2, 4\)"):
        grad(params, X, jnp.ones((2, 4)))
    with pytest.raises(TypeError, match=r"X: expected a floating-point array, got dtype int"):
        grad(params, jnp.ones((2, 4), jnp.int32), Y)
    with pytest.raises(ValueError, match=r"X: empty batch \(B=0\)"):
        grad(params, jnp.ones((0, 4)), jnp.ones((0, 3)))


def test_integer_labels_for_nll_get_a_hint(nll_net):
    net, params, X, _ = nll_net
    with pytest.raises(ValueError, match=r"nll takes one-hot targets, e.g. jax.nn.one_hot\(Y, 3\)"):
        net.grad(params, X, jnp.array([0, 2]))


@pytest.mark.parametrize("net_kwargs,Y,pattern", [
    (dict(sizes=(4, 3), activations=("softmax",), loss="nll"), [[0.5, 0.5, 0], [1, 0, 0]],
     r"Y: loss 'nll' needs one-hot targets"),
    (dict(sizes=(4, 1), activations=("sigmoid",), loss="binary_nll"), [[2.0], [0.0]],
     r"Y: loss 'binary_nll' needs targets in \[0, 1\]"),
    (dict(sizes=(4, 1), activations=("tanh",), loss="hinge"), [[0.0], [1.0]],
     r"Y: loss 'hinge' needs targets in \{-1, \+1\}"),
    (dict(sizes=(4, 1), activations=("tanh",), loss="squared"), [[np.nan], [1.0]],
     r"Y: contains NaN or inf"),
], ids=["nll", "binary_nll", "hinge", "nan"])
def test_target_values_checked_eagerly(net_kwargs, Y, pattern):
    net = jaxbp.Network(**net_kwargs)
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    with pytest.raises(ValueError, match=pattern):
        net.grad(params, jnp.ones((2, 4)), jnp.array(Y))


def test_nan_in_inputs(nll_net):
    net, params, X, Y = nll_net
    with pytest.raises(ValueError, match=r"X: contains NaN or inf"):
        net.grad(params, X.at[0, 1].set(jnp.nan), Y)
    with pytest.raises(ValueError, match=r"x: contains NaN or inf"):
        net.loss(params, X[0].at[1].set(jnp.inf), Y[0])


def test_value_checks_are_skipped_while_tracing(nll_net):
    """Under jit the values are unknown: a non-one-hot Y passes the checks (documented)."""
    net, params, X, _ = nll_net
    grads = jax.jit(net.grad)(params, X, jnp.full((2, 3), 0.5))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(grads))


def test_bad_params(nll_net):
    net, params, X, Y = nll_net
    with pytest.raises(ValueError, match=r"params: expected 2 layers for this network, got 1"):
        net.grad(params[:1], X, Y)
    bad = (params[0], jaxbp.Dense(params[1].W.T, params[1].W0))
    with pytest.raises(ValueError, match=r"params layer 2: W has shape \(3, 5\), expected \(5, 3\)"):
        net.grad(bad, X, Y)
    bad = (params[0], jaxbp.Dense(params[1].W, params[1].W0[None]))
    with pytest.raises(ValueError, match=r"params layer 2: W0 has shape \(1, 3\), expected \(3,\)"):
        net.grad(bad, X, Y)
    with pytest.raises(TypeError, match=r"params\[0\] \(layer 1\): expected Dense\(W, W0\)"):
        net.grad((params[0].W, params[1]), X, Y)
    with pytest.raises(TypeError, match=r"params: expected a tuple of 2 Dense"):
        net.grad({"W": 1}, X, Y)
    mixed = (params[0], jax.tree.map(lambda t: t.astype(jnp.float32), params[1]))
    with pytest.raises(TypeError, match=r"params layer 2: W has dtype float32 but earlier"):
        net.grad(mixed, X, Y)


def test_init_dtype_errors(nll_net):
    net = nll_net[0]
    with pytest.raises(TypeError, match=r"dtype: expected a floating dtype .* got int32"):
        net.init(jax.random.key(0), dtype=jnp.int32)


def test_float64_without_x64_is_explained():
    net = jaxbp.Network(sizes=(2, 1), activations=("tanh",), loss="squared")
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(TypeError, match=r"float64 needs 64-bit JAX.*jax_enable_x64"):
            net.init(jax.random.key(0), dtype=jnp.float64)
    finally:
        jax.config.update("jax_enable_x64", True)


def test_data_captured_in_a_jitted_closure(nll_net):
    """Concrete arrays closed over inside jit are checked with numpy, not turned into tracers."""
    net, params, X, Y = nll_net
    value = jax.jit(lambda p: net.loss(p, X[0], Y[0]))(params)
    np.testing.assert_allclose(value, net.loss(params, X[0], Y[0]), rtol=1e-12)
    grads = jax.jit(lambda p: net.grad(p, X, Y))(params)
    assert_close(grads, jax.grad(net.batch_loss)(params, X, Y), 1e-10)
