"""Manual backprop against jax.grad of net.loss (the ground truth).

Tolerances (relative to each leaf's largest entry, see jaxbp/_tolerances.py):
float64 1e-10; float32 1e-4 — both sides carry float32 round-off (eps 1.2e-7)
accumulated over at most five layers and short reductions, measured below 1e-5.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jaxbp
from jaxbp import rtol_for
from tests._nets import LAST_ACTIVATIONS, assert_close, make_problem, networks

DTYPES = st.sampled_from([jnp.float32, jnp.float64])


def _mean(tree):
    return jax.tree.map(lambda t: jnp.mean(t, axis=0), tree)


@given(net=networks(), seed=st.integers(0, 2**16), dtype=DTYPES, batch=st.integers(1, 6))
def test_manual_gradients_match_jax_grad(net, seed, dtype, batch):
    """Per example, batch mean and per-example grads vs jax.grad, for random
    architectures (depth 1-5, widths 1-6, every activation and loss), dtypes and seeds.

    Everything is computed in one jitted function so that each drawn architecture
    compiles once."""
    params, X, Y = make_problem(net, seed, batch=batch, dtype=dtype)
    tol = rtol_for(dtype)

    @jax.jit
    def everything(params, X, Y):
        return dict(
            backprop=net.backprop(params, X[0], Y[0]),
            grad_loss=jax.grad(net.loss)(params, X[0], Y[0]),
            value_and_grad=net.value_and_grad(params, X, Y),
            grad_batch_loss=jax.grad(net.batch_loss)(params, X, Y),
            vmap_backprop=_mean(jax.vmap(net.backprop, (None, 0, 0))(params, X, Y)),
            per_example=net.per_example_grads(params, X, Y),
            vmap_grad=jax.vmap(jax.grad(net.loss), (None, 0, 0))(params, X, Y),
            losses=jax.vmap(net.loss, (None, 0, 0))(params, X, Y),
        )

    r = everything(params, X, Y)
    assert_close(r["backprop"], r["grad_loss"], tol)
    value, grads = r["value_and_grad"]
    assert_close(grads, r["grad_batch_loss"], tol)
    assert_close(grads, r["vmap_backprop"], tol)
    assert_close(r["per_example"], r["vmap_grad"], tol)
    assert r["per_example"][0].W.shape == (batch, *net.layer_shapes[0])
    np.testing.assert_allclose(value, jnp.mean(r["losses"]), rtol=tol)
    assert value.dtype == dtype
    # The eager path (with its value checks) gives the same numbers.
    assert_close(net.backprop(params, X[0], Y[0]), r["backprop"], tol)


COMBINATIONS = [(loss, last) for loss, lasts in LAST_ACTIVATIONS.items() for last in lasts]


@pytest.mark.parametrize("loss,last", COMBINATIONS, ids=[f"{l}-{a}" for l, a in COMBINATIONS])
def test_every_activation_and_loss(loss, last):
    """Every (loss, last activation) pair; depths 1-5 and every hidden activation
    are cycled through across the cases; float64, rel <= 1e-10."""
    i = COMBINATIONS.index((loss, last))
    depth = 1 + i % 5
    names = list(jaxbp.ACTIVATIONS)
    hidden = tuple(names[(i + k) % len(names)] for k in range(depth - 1))
    sizes = (3,) + (4,) * (depth - 1) + ((1,) if loss == "hinge" else (3,))
    net = jaxbp.Network(sizes=sizes, activations=(*hidden, last), loss=loss)
    params, X, Y = make_problem(net, seed=i, batch=4, dtype=jnp.float64)
    assert_close(net.grad(params, X, Y), jax.grad(net.batch_loss)(params, X, Y), 1e-10)
    assert_close(net.backprop(params, X[0], Y[0]), jax.grad(net.loss)(params, X[0], Y[0]), 1e-10)


def test_combinations_cover_every_activation_and_depth():
    hidden_seen, depths = set(), set()
    names = list(jaxbp.ACTIVATIONS)
    for i, _ in enumerate(COMBINATIONS):
        depth = 1 + i % 5
        depths.add(depth)
        hidden_seen.update(names[(i + k) % len(names)] for k in range(depth - 1))
    assert depths == {1, 2, 3, 4, 5} and hidden_seen == set(names)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_jit_and_vmap_agree(dtype):
    net = jaxbp.Network(sizes=(5, 7, 6, 3), activations=("gelu", "tanh", "softmax"), loss="nll")
    params, X, Y = make_problem(net, seed=1, batch=8, dtype=dtype)
    tol = rtol_for(dtype)
    jitted = jax.jit(net.grad)(params, X, Y)
    vmapped = _mean(jax.vmap(net.backprop, (None, 0, 0))(params, X, Y))
    jit_vmapped = _mean(jax.jit(jax.vmap(net.backprop, (None, 0, 0)))(params, X, Y))
    assert_close(jitted, net.grad(params, X, Y), tol)
    assert_close(jitted, vmapped, tol)
    assert_close(jitted, jit_vmapped, tol)
    assert_close(jitted, jax.grad(net.batch_loss)(params, X, Y), tol)
    # The network is hashable, so it can be a static argument too.
    static = jax.jit(jaxbp.Network.grad, static_argnums=0)(net, params, X, Y)
    assert_close(static, jitted, tol)


def test_network_is_frozen_and_hashable():
    a = jaxbp.Network(sizes=[2, 3], activations=["sigmoid"], loss="binary_nll")
    b = jaxbp.Network(sizes=(2, 3), activations=("sigmoid",), loss="binary_nll")
    assert a == b and hash(a) == hash(b) and a.loss_name == "binary_nll"
    assert callable(a.loss)
    with pytest.raises(Exception):
        a.sizes = (1, 2)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_init_shapes_dtype_and_scale(dtype):
    net = jaxbp.Network(sizes=(300, 200, 10), activations=("relu", "softmax"), loss="nll")
    params = net.init(jax.random.key(0), dtype=dtype)
    assert [(p.W.shape, p.W0.shape) for p in params] == [((300, 200), (200,)), ((200, 10), (10,))]
    assert all(leaf.dtype == dtype for leaf in jax.tree.leaves(params))
    # He for relu (variance 2/m), LeCun for the softmax layer (variance 1/m).
    np.testing.assert_allclose(float(jnp.var(params[0].W)), 2 / 300, rtol=0.05)
    np.testing.assert_allclose(float(jnp.var(params[1].W)), 1 / 200, rtol=0.15)
    assert float(jnp.max(jnp.abs(params[0].W0))) == 0.0


def test_forward_matches_notes_formula():
    net = jaxbp.Network(sizes=(3, 2), activations=("tanh",), loss="squared")
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    x = jnp.array([0.5, -1.0, 2.0])
    W, W0 = params[0]
    np.testing.assert_allclose(net.forward(params, x), jnp.tanh(W.T @ x + W0), rtol=1e-14)
    X = jnp.stack([x, 2 * x])
    np.testing.assert_allclose(net.forward(params, X)[1], jnp.tanh(W.T @ (2 * x) + W0),
                               rtol=1e-14)


def test_scalar_targets_accepted_for_one_output():
    net = jaxbp.Network(sizes=(3, 1), activations=("identity",), loss="hinge")
    params, X, Y = make_problem(net, seed=0, batch=4, dtype=jnp.float64)
    assert_close(net.grad(params, X, Y[:, 0]), net.grad(params, X, Y), 0.0)
    assert_close(net.backprop(params, X[0], Y[0, 0]), net.backprop(params, X[0], Y[0]), 0.0)
