"""nn.RNN, nn.LSTM, nn.GRU: backprop through time against jax.vjp, the per-example hooks against
vmap(jax.grad), the character model's chain against jax.grad, and bad input.

Shapes are drawn with NumPy (jax.random compiles afresh per shape); property tests run under
jax.jit with few examples, since every new shape compiles the scans again.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _nn_check import assert_backward_matches
from jaxbp import nn

RTOL = {jnp.float64: 1e-10, jnp.float32: 1e-4}
MAKERS = {"rnn": nn.RNN, "rnn-relu": lambda H: nn.RNN(H, "relu"), "lstm": nn.LSTM, "gru": nn.GRU}


def _setup(kind, B, T, D, H, dtype, seed=0):
    """A module, params of scale ~1 (non-zero biases, so every factor counts), and X."""
    module = MAKERS[kind](H)
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), (T, D), dtype)[0])
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape) * 0.7, dtype), shapes)
    return module, params, jnp.asarray(rng.normal(size=(B, T, D)), dtype)


def _jitted(module):
    return module._replace(forward=jax.jit(module.forward), backward=jax.jit(module.backward))


# Eagerly for one kind only: each eager case compiles every op and jax.vjp's afresh (seconds).
@pytest.mark.parametrize("kind,jit", [(k, True) for k in sorted(MAKERS)] + [("lstm", False)],
                         ids=[f"{k}-jit" for k in sorted(MAKERS)] + ["lstm-eager"])
def test_backward_matches_vjp(kind, jit):
    module, params, X = _setup(kind, 2, 5, 3, 4, jnp.float64)
    assert_backward_matches(_jitted(module) if jit else module, params, X)


@settings(max_examples=3)
@given(kind=st.sampled_from(sorted(MAKERS)), B=st.integers(1, 3), T=st.integers(1, 6),
       D=st.integers(1, 4), H=st.integers(1, 5), dtype=st.sampled_from([jnp.float64, jnp.float32]),
       seed=st.integers(0, 2**16))
def test_backward_matches_vjp_property(kind, B, T, D, H, dtype, seed):
    module, params, X = _setup(kind, B, T, D, H, dtype, seed)
    assert_backward_matches(_jitted(module), params, X, rtol=RTOL[dtype], seed=seed)


def test_module_fields_and_shapes():
    assert (nn.RNN(3).time_axis, nn.RNN(3).gates) == (1, ())
    assert (nn.LSTM(3).time_axis, nn.LSTM(3).gates) == (1, ("i", "f", "o", "g"))
    assert (nn.GRU(3).time_axis, nn.GRU(3).gates) == (1, ("r", "z", "n"))
    assert nn.LSTM(3) is nn.LSTM(3) and nn.Linear(3).time_axis is None
    params, out_shape = nn.LSTM(3).init(jax.random.key(0), (4, 2), jnp.float64)
    assert out_shape == (4, 3) and params.Wx.shape == (2, 12) and params.Wh.shape == (3, 12)
    np.testing.assert_array_equal(params.b, [0] * 3 + [1] * 3 + [0] * 6)  # forget gate open
    params, _ = nn.GRU(3).init(jax.random.key(0), (4, 2), jnp.float64)
    assert params.b_hn.shape == (3,)


def _char_batch(model, B, T, V, seed, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    params = model.init(jax.random.key(seed), (T,), dtype=dtype)
    params = jax.tree.map(lambda p: p + jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype),
                          params)
    return params, jnp.asarray(rng.integers(0, V, (B, T))), jnp.asarray(rng.integers(0, V, (B, T)))


def _rel(got, want):
    num = max(float(jnp.max(jnp.abs(a - b))) for a, b in
              zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    return num / max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(want))


@functools.partial(jax.jit, static_argnums=0)
def _private_both(model, params, X, Y):
    """(ours: norms, clipped sum; reference: vmap(jax.grad) clipped by hand), one compile."""
    one = lambda p, x, y: model.loss(p, x[None], y[None])  # noqa: E731
    g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, X, Y)
    B = X.shape[0]
    norms = jnp.sqrt(sum(jnp.sum(l.reshape(B, -1) ** 2, axis=1) for l in jax.tree.leaves(g)))
    C = jnp.median(norms)
    scale = C / jnp.maximum(norms, C)
    clipped = jax.tree.map(lambda l: jnp.mean(l * scale.reshape((B,) + (1,) * (l.ndim - 1)), 0), g)
    ours = (model.per_example_grad_norms(params, X, Y), model.clipped_grad(params, X, Y, C))
    return ours, (norms, clipped)


def test_char_model_per_example():
    """The three cells stacked after an Embedding: the private norms and clipped sum against
    vmap(jax.grad) (the chain's batch gradient: test_verify_recurrent). With T = 3 (2T² = 18)
    the rule picks the materialized gradient for RNN(3)'s Wx (4·3) and Wh (3·3) and LSTM(2)'s Wh
    (2·8), the ghost (T, T) Grams for LSTM(2)'s Wx (3·8) and GRU(5)'s Wx (2·15) and Wh (5·15)."""
    model = nn.Sequential([nn.Embedding(7, 4), nn.RNN(3), nn.LSTM(2), nn.GRU(5), nn.Linear(7),
                           nn.Activation("softmax")], "nll")
    params, X, Y = _char_batch(model, 3, 3, 7, seed=1)
    (norms, clipped), (norms_want, clipped_want) = _private_both(model, params, X, Y)
    assert _rel(norms, norms_want) <= 1e-10
    assert _rel(clipped, clipped_want) <= 1e-10


@pytest.mark.parametrize("call, error, match", [
    (lambda: nn.LSTM(0), ValueError, r"LSTM: hidden must be a positive int, got 0"),
    (lambda: nn.GRU(-2), ValueError, r"GRU: hidden must be a positive int"),
    (lambda: nn.RNN(3, "softmax"), ValueError, r"RNN: activation must be elementwise"),
    (lambda: nn.LSTM(3).init(jax.random.key(0), (5,), jnp.float32), ValueError,
     r"LSTM\(3\): expects one example of shape \(T, D\).*got in_shape \(5,\).*nn.Embedding"),
    (lambda: nn.GRU(3).forward(nn.GRU(3).init(jax.random.key(0), (5, 2), jnp.float32)[0],
                               jnp.ones((4, 2)), None), ValueError,
     r"GRU\(3\): expects X of shape \(B, T, 2\).*got \(4, 2\).*\(B, 1, D\)"),
    (lambda: nn.RNN(3).forward(nn.RNN(3).init(jax.random.key(0), (5, 2), jnp.float32)[0],
                               jnp.ones((4, 5), jnp.int32), None), TypeError,
     r"RNN\(3\): expects float inputs of shape \(B, T, 2\), got int32 of shape \(4, 5\).*"
     r"Embedding"),
    (lambda: nn.Sequential([nn.LSTM(3), nn.Linear(2)], "squared").init(jax.random.key(0), (5,)),
     ValueError, r"module 1 \(LSTM\(3\)\).*\(5,\)"),
], ids=["hidden-zero", "hidden-negative", "softmax-rnn", "init-ids", "2d-input", "int-input",
        "sequential-ids"])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()
