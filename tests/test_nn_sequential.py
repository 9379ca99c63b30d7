"""jaxbp.nn.Sequential: the chain of hand-written module backwards against jax.grad of model.loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxbp
from jaxbp import nn

from _nn_check import rel_err

LAST = {"nll": "softmax", "binary_nll": "sigmoid", "squared": "tanh", "hinge": "identity"}


def _targets(loss, shape, seed):
    rng = np.random.default_rng(seed)
    if loss == "nll":
        return jax.nn.one_hot(rng.integers(0, shape[-1], shape[:-1]), shape[-1])
    if loss == "binary_nll":
        return jnp.asarray(rng.integers(0, 2, shape), jnp.float64)
    if loss == "hinge":
        return jnp.asarray(rng.choice([-1.0, 1.0], shape))
    return jnp.asarray(rng.normal(size=shape))


def _assert_grads_match(model, params, X, Y, *, key=None, rtol=1e-10):
    loss, grads = model.value_and_grad(params, X, Y, key=key)
    loss_ref, grads_ref = jax.value_and_grad(model.loss)(params, X, Y, key=key)
    assert abs(float(loss) - float(loss_ref)) <= rtol * max(1.0, abs(float(loss_ref)))
    assert jax.tree.structure(grads) == jax.tree.structure(grads_ref)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_ref))
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        err = float(jnp.max(jnp.abs(got - want))) if want.size else 0.0
        # zero-gradient leaves (a bias before a norm) are held to the model's scale
        assert err <= rtol * max(float(jnp.max(jnp.abs(want))) if want.size else 0.0, scale)


def _vector_model(loss, hidden, act, norm, residual, dropout, n_out):
    mods = [nn.Linear(hidden)]
    if norm:
        mods.append(nn.LayerNorm() if norm == "layer" else nn.BatchNorm())
    mods.append(nn.Activation(act))
    if residual:
        mods.append(nn.Residual(nn.LayerNorm(), nn.Linear(hidden), nn.Activation("tanh")))
    if dropout:
        mods.append(nn.Dropout(0.25))
    mods += [nn.Linear(n_out), nn.Activation(LAST[loss])]
    return nn.Sequential(mods, loss)


@settings(max_examples=4)  # each example compiles two new programs
@given(loss=st.sampled_from(sorted(LAST)), hidden=st.integers(1, 6),
       act=st.sampled_from(sorted(jaxbp.ACTIVATIONS)), norm=st.sampled_from([None, "layer", "batch"]),
       residual=st.booleans(), dropout=st.booleans(), B=st.integers(2, 5), T=st.sampled_from([0, 3]),
       d=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_value_and_grad_matches_jax_grad(loss, hidden, act, norm, residual, dropout, B, T, d, seed):
    n_out = 1 if loss == "hinge" else 3
    model = _vector_model(loss, hidden, act, norm, residual, dropout, n_out)
    in_shape = (T, d) if T else (d,)
    params = model.init(jax.random.key(seed), in_shape, dtype=jnp.float64)
    X = jax.random.normal(jax.random.key(seed + 1), (B,) + in_shape, jnp.float64)
    Y = _targets(loss, (B,) + in_shape[:-1] + (n_out,), seed)
    _assert_grads_match(model, params, X, Y, key=jax.random.key(seed + 2) if dropout else None)


@settings(max_examples=3)  # a transformer compiles slowly: few, varied examples
@given(heads=st.integers(1, 3), dh=st.integers(1, 3), T=st.integers(1, 6), vocab=st.integers(2, 7),
       causal=st.booleans(), seed=st.integers(0, 2**16))
def test_transformer_block_matches_jax_grad(heads, dh, T, vocab, causal, seed):
    d = heads * dh
    model = nn.Sequential([
        nn.Embedding(vocab, d),
        nn.Residual(nn.LayerNorm(), nn.SelfAttention(heads, causal=causal)),
        nn.Residual(nn.LayerNorm(), nn.Linear(2 * d), nn.Activation("gelu"), nn.Linear(d)),
        nn.LayerNorm(), nn.Linear(vocab), nn.Activation("softmax")], "nll")
    params = model.init(jax.random.key(seed), (T,), dtype=jnp.float64)
    ids = jax.random.randint(jax.random.key(seed + 1), (3, T), 0, vocab)
    labels = jax.random.randint(jax.random.key(seed + 2), (3, T), 0, vocab)
    _assert_grads_match(model, params, ids, jax.nn.one_hot(labels, vocab))


def test_jit_with_the_model_static_and_integer_labels():
    model = _vector_model("nll", 5, "relu", "layer", True, False, 3)
    params = model.init(jax.random.key(0), (4,), dtype=jnp.float64)
    X = jax.random.normal(jax.random.key(1), (6, 4), jnp.float64)
    labels = jnp.arange(6) % 3
    f = jax.jit(lambda p, x, y: model.value_and_grad(p, x, y))
    loss, grads = f(params, X, labels)
    loss_ref, grads_ref = jax.value_and_grad(model.loss)(params, X, jax.nn.one_hot(labels, 3))
    assert rel_err(loss, loss_ref) <= 1e-12
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        assert rel_err(g, r) <= 1e-10
    assert hash(model) == hash(_vector_model("nll", 5, "relu", "layer", True, False, 3))


def test_fused_and_unfused_losses_agree():
    # softmax + nll (fused) against the same model with the loss "squared"-free unfused path:
    # the nll value from logits equals −Σ y log softmax(z).
    model = nn.Sequential([nn.Linear(4), nn.Activation("softmax")], "nll")
    assert model.fused
    params = model.init(jax.random.key(0), (3,), dtype=jnp.float64)
    X = jax.random.normal(jax.random.key(1), (5, 3), jnp.float64) * 30  # large logits stay finite
    Y = jax.nn.one_hot(jnp.arange(5) % 4, 4)
    loss, grads = model.value_and_grad(params, X, Y)
    A = model.forward(params, X)
    assert np.isfinite(float(loss))
    assert rel_err(loss, -jnp.mean(jnp.sum(Y * jnp.log(jnp.maximum(A, 1e-300)), -1))) < 1e-8
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("make, match", [
    (lambda: nn.Sequential([nn.Linear(3)], "nll"), "needs the last module to be"),
    (lambda: nn.Sequential([], "squared"), "at least one module"),
    (lambda: nn.Sequential(nn.Linear(3), "squared"), "expected a list"),
    (lambda: nn.Sequential([nn.Linear(3), "tanh"], "squared"), r"modules\[1\]"),
    (lambda: nn.Sequential([nn.Linear(3)], "cross_entropy"), "unknown loss"),
], ids=["nll-needs-softmax", "empty", "not-a-list", "not-a-module", "unknown-loss"])
def test_model_construction_errors(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_width_mismatch_names_the_module_and_both_shapes():
    model = nn.Sequential([nn.Linear(4), nn.Activation("tanh"), nn.Linear(2)], "squared")
    params = model.init(jax.random.key(0), (3,))
    with pytest.raises(ValueError, match=r"module 1 \(Linear\(4\)\).*\(5,\).*\(3, 4\)"):
        model.value_and_grad(params, jnp.ones((2, 5)), jnp.zeros((2, 2)))


def test_other_input_errors():
    model = nn.Sequential([nn.Embedding(5, 4), nn.Linear(5), nn.Activation("softmax")], "nll")
    params = model.init(jax.random.key(0), (3,))
    with pytest.raises(TypeError, match="integer"):
        model.loss(params, jnp.ones((2, 3)), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match="one entry per module"):
        model.loss(params[:2], jnp.ones((2, 3), jnp.int32), jnp.zeros((2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"Y: expected shape \(2, 3, 5\)"):
        model.loss(params, jnp.ones((2, 3), jnp.int32), jnp.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        dense = nn.Sequential([nn.Linear(2)], "squared")
        dense.loss(dense.init(jax.random.key(0), (2,)), jnp.full((1, 2), jnp.nan), jnp.zeros((1, 2)))
    with pytest.raises(ValueError, match="rank"):
        nn.Sequential([nn.SelfAttention(2), nn.Linear(1)], "squared").init(jax.random.key(0), (4,))


def test_user_backward_with_the_wrong_shape_is_named():
    base = nn.Linear(3)
    bad = nn.Module("mine", base.init, base.forward,
                    lambda p, r, dZ: (p, jnp.zeros((dZ.shape[0], 1))))
    model = nn.Sequential([bad, nn.Linear(2)], "squared")
    params = model.init(jax.random.key(0), (4,))
    with pytest.raises(ValueError, match=r"module 1 \(mine\).*dX of shape"):
        model.value_and_grad(params, jnp.ones((2, 4)), jnp.zeros((2, 2)))


@settings(max_examples=3)
@given(channels=st.integers(1, 3), kernel=st.integers(1, 3), stride=st.integers(1, 2),
       padding=st.sampled_from(["SAME", "VALID"]), pool=st.sampled_from(["max", "avg"]),
       seed=st.integers(0, 2**16))
def test_cnn_matches_jax_grad(channels, kernel, stride, padding, pool, seed):
    model = nn.Sequential([
        nn.Conv2D(channels, kernel, stride=stride, padding=padding), nn.Activation("relu"),
        nn.MaxPool2D(2) if pool == "max" else nn.AvgPool2D(2, stride=1), nn.Flatten(),
        nn.Linear(3), nn.Activation("softmax")], "nll")
    params = model.init(jax.random.key(seed), (7, 7, 2), dtype=jnp.float64)
    X = jax.random.normal(jax.random.key(seed + 1), (3, 7, 7, 2), jnp.float64)
    _assert_grads_match(model, params, X, _targets("nll", (3, 3), seed))


def test_ready_models_shapes():
    assert nn.digits_cnn().init(jax.random.key(0), (8, 8, 1))[-2].W.shape == (32 * 16, 10)
    block = nn.transformer_block(11, 8, 2, hidden=16)
    params = block.init(jax.random.key(0), (5,))
    assert params[0].W.shape == (11, 8) and params[2][1].W.shape == (8, 16)
    assert nn.mlp((4, 6, 3)).init(jax.random.key(0), (4,))[0].W.shape == (4, 6)
