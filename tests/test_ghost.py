"""Ghost-norm per-example gradient norms and clipped gradients vs vmap(jax.grad)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxbp
from jaxbp.check._selftest import random_targets
from jaxbp import relative_error, rtol_for, tree_relative_error

# (id, sizes, activations, loss): every loss, the fused and unfused paths, every activation.
CASES = [
    ("relu-softmax-nll", (5, 7, 6, 4), ("relu", "relu", "softmax"), "nll"),
    ("tanh-sigmoid-bnll", (3, 6, 2), ("tanh", "sigmoid"), "binary_nll"),
    ("gelu-identity-squared", (4, 5, 5, 3), ("gelu", "softplus", "identity"), "squared"),
    ("leaky-tanh-hinge", (6, 4, 1), ("leaky_relu", "tanh"), "hinge"),
    ("one-layer-softmax-squared", (4, 3), ("softmax",), "squared"),
]
IDS = [c[0] for c in CASES]
MODES = ["eager", "jit"]


def make_problem(sizes, activations, loss, *, batch=6, seed=0, dtype=jnp.float64):
    net = jaxbp.Network(sizes=sizes, activations=activations, loss=loss)
    kp, kb, kx, ky = jax.random.split(jax.random.key(seed), 4)
    params = net.init(kp, dtype=dtype)
    bias_keys = jax.random.split(kb, net.num_layers)  # nonzero biases exercise W0's term
    params = tuple(jaxbp.Dense(p.W, 0.3 * jax.random.normal(k, p.W0.shape, dtype))
                   for p, k in zip(params, bias_keys))
    X = jax.random.normal(kx, (batch, sizes[0]), dtype)
    Y = random_targets(net, ky, batch, dtype)
    return net, params, X, Y


@functools.partial(jax.jit, static_argnums=0)  # one compile instead of many eager ops
def reference_grads(net, params, X, Y):
    """Per-example gradients by autodiff: vmap(jax.grad(loss of one example))."""
    return jax.vmap(jax.grad(net.loss), in_axes=(None, 0, 0))(params, X, Y)


def reference_norms(grads, B):
    """(B, L) per-layer norms and (B,) global norms of per-example gradients."""
    per_layer = jnp.stack(
        [jnp.sqrt(jnp.sum(g.W.reshape(B, -1) ** 2, axis=1) + jnp.sum(g.W0 ** 2, axis=1))
         for g in grads], axis=1)
    total = jnp.sqrt(sum(jnp.sum(leaf.reshape(B, -1) ** 2, axis=1)
                         for leaf in jax.tree.leaves(grads)))
    return per_layer, total


def reference_clipped(grads, norms, max_norm):
    """DP-SGD clipping with the documented formula, scale_b = C / max(‖g_b‖, C), then mean."""
    scale = max_norm / jnp.maximum(norms, max_norm)
    return jax.tree.map(
        lambda g: jnp.mean(g * scale.reshape((-1,) + (1,) * (g.ndim - 1)), axis=0), grads)


def jaxbp_all(net, params, X, Y, max_norm):
    """(global norms, per-layer norms, clipped gradient) by jaxbp's public methods."""
    return (net.per_example_grad_norms(params, X, Y),
            net.per_example_grad_norms(params, X, Y, per_layer=True),
            net.clipped_grad(params, X, Y, max_norm))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_vmap_grad(case, mode):
    _, sizes, activations, loss = case
    net, params, X, Y = make_problem(sizes, activations, loss, batch=7)
    grads = reference_grads(net, params, X, Y)
    want_layer, want = reference_norms(grads, X.shape[0])
    assert float(jnp.min(want)) > 0  # a zero reference would make the comparison vacuous
    max_norm = float(jnp.median(want))
    # The median clips some examples and leaves others alone: both branches are tested.
    assert bool(jnp.any(want > max_norm)) and bool(jnp.any(want < max_norm))
    want_clipped = reference_clipped(grads, want, max_norm)

    run = functools.partial(jaxbp_all, net)
    got, got_layer, got_clipped = (jax.jit(run) if mode == "jit" else run)(
        params, X, Y, max_norm)

    assert got.shape == (X.shape[0],) and got.dtype == jnp.float64
    assert got_layer.shape == (X.shape[0], net.num_layers)
    assert relative_error(got, want) <= 1e-10
    assert relative_error(got_layer, want_layer) <= 1e-10
    assert jax.tree.structure(got_clipped) == jax.tree.structure(want_clipped)
    assert tree_relative_error(got_clipped, want_clipped) <= 1e-10
    # Clipping really changed the answer: far from the unclipped mean.
    assert tree_relative_error(net.grad(params, X, Y), want_clipped) > 1e-3


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_norms_match_per_example_grads(case):
    _, sizes, activations, loss = case
    net, params, X, Y = make_problem(sizes, activations, loss, seed=3)
    _, want = reference_norms(net.per_example_grads(params, X, Y), X.shape[0])
    assert relative_error(net.per_example_grad_norms(params, X, Y), want) <= 1e-10


def test_clipped_grad_with_large_max_norm_is_the_mean_gradient():
    net, params, X, Y = make_problem(*CASES[0][1:])
    got = net.clipped_grad(params, X, Y, 1e6)
    assert tree_relative_error(got, net.grad(params, X, Y)) <= 1e-10


def test_clipped_grad_with_tiny_max_norm_averages_unit_directions():
    # Every example clipped: (1/B) Σ_b C g_b / ‖g_b‖.
    net, params, X, Y = make_problem(*CASES[0][1:])
    C = 1e-3
    grads = reference_grads(net, params, X, Y)
    _, norms = reference_norms(grads, X.shape[0])
    want = jax.tree.map(
        lambda g: jnp.mean(C * g / norms.reshape((-1,) + (1,) * (g.ndim - 1)), axis=0), grads)
    assert tree_relative_error(net.clipped_grad(params, X, Y, C), want) <= 1e-10


def test_zero_gradients_give_zero_norms_and_no_nan():
    # Squared loss at its minimum: Y = forward(X), so every δ is exactly 0. Integer-valued params
    # and inputs through relu make every program compute Y exactly (no round-off differences
    # between the forward here and the one inside the norms).
    net, params, X, _ = make_problem((3, 4, 2), ("relu", "identity"), "squared")
    params = jax.tree.map(lambda p: jnp.round(4 * p), params)
    X = jnp.round(4 * X)
    Y = net.forward(params, X)
    norms = net.per_example_grad_norms(params, X, Y)
    np.testing.assert_array_equal(np.asarray(norms), 0.0)
    for leaf in jax.tree.leaves(net.clipped_grad(params, X, Y, 1.0)):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_float32_matches_within_its_tolerance():
    net, params, X, Y = make_problem(*CASES[0][1:], dtype=jnp.float32)
    grads = reference_grads(net, params, X, Y)
    _, norms = reference_norms(grads, X.shape[0])
    got = net.per_example_grad_norms(params, X, Y)
    assert got.dtype == jnp.float32
    assert relative_error(got, norms) <= rtol_for(jnp.float32)
    C = float(jnp.median(norms))
    clipped = net.clipped_grad(params, X, Y, C)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(clipped))
    assert tree_relative_error(clipped, reference_clipped(grads, norms, C)) <= rtol_for(
        jnp.float32)


def test_max_norm_may_be_traced():
    net, params, X, Y = make_problem(*CASES[0][1:])
    f = jax.jit(net.clipped_grad)
    want = net.clipped_grad(params, X, Y, 0.05)
    assert tree_relative_error(f(params, X, Y, 0.05), want) <= 1e-12
    assert tree_relative_error(f(params, X, Y, 1e6), net.grad(params, X, Y)) <= 1e-10


@pytest.mark.parametrize("bad, error", [
    (0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    (jnp.array([1.0, 2.0]), ValueError), ("1.0", TypeError), (True, TypeError),
    (None, TypeError), (jnp.array(1 + 2j), TypeError),
], ids=["zero", "negative", "nan", "inf", "vector", "string", "bool", "none", "complex"])
def test_clipped_grad_rejects_bad_max_norm(bad, error):
    net, params, X, Y = make_problem(*CASES[0][1:])
    with pytest.raises(error, match="max_norm"):
        net.clipped_grad(params, X, Y, bad)


def test_inputs_are_validated_like_the_other_methods():
    net, params, X, Y = make_problem(*CASES[0][1:])
    with pytest.raises(ValueError, match="X"):
        net.per_example_grad_norms(params, X[0], Y)
    with pytest.raises(ValueError, match="Y"):
        net.clipped_grad(params, X, Y[:-1], 1.0)
    with pytest.raises(ValueError, match="NaN"):
        net.per_example_grad_norms(params, X.at[0, 0].set(jnp.nan), Y)
    with pytest.raises(ValueError, match="params"):
        net.per_example_grad_norms(params[:-1], X, Y)


@st.composite
def problems(draw):
    loss = draw(st.sampled_from(["nll", "squared", "binary_nll"]))
    depth = draw(st.integers(1, 3))
    hidden = draw(st.lists(st.sampled_from(["relu", "tanh", "sigmoid", "gelu", "leaky_relu"]),
                           min_size=depth - 1, max_size=depth - 1))
    last = {"nll": "softmax", "binary_nll": "sigmoid"}.get(
        loss, draw(st.sampled_from(["identity", "tanh"])))
    sizes = draw(st.lists(st.integers(1, 6), min_size=depth + 1, max_size=depth + 1))
    if loss == "nll":
        sizes[-1] = max(sizes[-1], 2)
    batch = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    return make_problem(tuple(sizes), (*hidden, last), loss, batch=batch, seed=seed)


@settings(max_examples=5)
@given(problems(), st.floats(0.05, 5.0))
def test_random_architectures_match_vmap_grad(problem, max_norm):
    net, params, X, Y = problem

    @jax.jit  # one compile per drawn architecture
    def both(params, X, Y):
        grads = reference_grads(net, params, X, Y)
        return jaxbp_all(net, params, X, Y, max_norm), grads

    (got, got_layer, got_clipped), grads = both(params, X, Y)
    want_layer, want = reference_norms(grads, X.shape[0])
    assert relative_error(got, want) <= 1e-10
    assert relative_error(got_layer, want_layer) <= 1e-10
    assert tree_relative_error(got_clipped, reference_clipped(grads, want, max_norm)) <= 1e-10
