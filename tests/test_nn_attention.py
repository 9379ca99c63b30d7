"""nn.SelfAttention: the hand-written backward against jax.vjp of the forward, the forward against
a head-by-head reference, causality, init and errors.

Case tables run eagerly and under jax.jit; property tests under jax.jit only, since eagerly every
new shape compiles each primitive (and jax.vjp op by op) afresh, several times the cost.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from _nn_check import assert_backward_matches, backward_vs_vjp
from jaxbp import Dense, nn

RTOL = {jnp.float64: 1e-10, jnp.float32: 1e-4}
JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


def _maybe_jit(module, jit):
    """The module itself, or one whose forward and backward are jitted."""
    if not jit:
        return module
    return module._replace(forward=jax.jit(module.forward), backward=jax.jit(module.backward))


def _setup(B, T, heads, head_size, causal, dtype, seed=0):
    module = nn.SelfAttention(heads, causal=causal)
    d = heads * head_size
    # Drawn with numpy, not init (tested below): jax.random compiles afresh for every shape.
    # Non-zero biases, so their gradients and the key bias's shift invariance are exercised.
    rng = np.random.default_rng(seed)
    params = nn.Attention(*(Dense(jnp.asarray(rng.normal(size=(d, d)) / np.sqrt(d), dtype),
                                  jnp.asarray(rng.normal(size=d), dtype)) for _ in range(4)))
    X = jnp.asarray(rng.normal(size=(B, T, d)) * 2, dtype)
    return module, params, X


# Each new shape compiles afresh, so the table is short and the later tests reuse its shapes;
# the property test below covers the space.
CASES = [
    # (B, T, heads, head_size, causal), float64
    pytest.param(2, 5, 1, 4, False, id="one-head"),
    pytest.param(2, 7, 4, 3, True, id="four-heads-causal"),
]


@JIT
@pytest.mark.parametrize("B,T,heads,head_size,causal", CASES)
def test_backward_matches_vjp(B, T, heads, head_size, causal, jit):
    module, params, X = _setup(B, T, heads, head_size, causal, jnp.float64)
    assert_backward_matches(_maybe_jit(module, jit), params, X)


@given(B=st.integers(1, 3), T=st.integers(1, 9), heads=st.integers(1, 4),
       head_size=st.integers(1, 4), causal=st.booleans(),
       dtype=st.sampled_from([jnp.float64, jnp.float32]), seed=st.integers(0, 2**16))
@example(B=1, T=1, heads=2, head_size=2, causal=True, dtype=jnp.float64, seed=0)  # P = 1
def test_backward_matches_vjp_property(B, T, heads, head_size, causal, dtype, seed):
    """Random shapes, masks and dtypes (one position included), under jax.jit."""
    module, params, X = _setup(B, T, heads, head_size, causal, dtype, seed)
    assert_backward_matches(_maybe_jit(module, True), params, X, rtol=RTOL[dtype], seed=seed)


@JIT
@pytest.mark.parametrize("B,T,heads,head_size,causal", CASES)
def test_key_bias_gradient_is_round_off(B, T, heads, head_size, causal, jit):
    """Softmax is shift-invariant per row, so ∂L/∂W0_k is 0 exactly; the backward gives round-off."""
    module, params, X = _setup(B, T, heads, head_size, causal, jnp.float64)
    (dparams, _), (dparams_ref, _) = backward_vs_vjp(_maybe_jit(module, jit), params, X)
    scale = max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(dparams_ref))
    assert float(jnp.max(jnp.abs(dparams.key.W0))) <= 1e-13 * scale
    assert float(jnp.max(jnp.abs(dparams.query.W0))) > 1e-3 * scale  # the others are not 0


def _reference_forward(params, X, heads, causal):
    """The same attention written head by head with jax.nn.softmax (a different code path)."""
    B, T, d = X.shape
    dh = d // heads
    Q, K, V = (X @ p.W + p.W0.reshape(1, 1, d) for p in params[:3])
    outputs = []
    for j in range(heads):
        q, k, v = (A[:, :, j * dh:(j + 1) * dh] for A in (Q, K, V))
        S = q @ k.transpose(0, 2, 1) / np.sqrt(dh)  # (B, T, T)
        if causal:
            S = jnp.where(jnp.tril(jnp.ones((1, T, T), bool)), S, -jnp.inf)
        outputs.append(jax.nn.softmax(S, axis=-1) @ v)
    return jnp.concatenate(outputs, axis=-1) @ params.output.W + params.output.W0.reshape(1, 1, d)


@JIT
@pytest.mark.parametrize("B,T,heads,head_size,causal", CASES)
def test_forward_matches_reference(B, T, heads, head_size, causal, jit):
    module, params, X = _setup(B, T, heads, head_size, causal, jnp.float64)
    Y, residuals = _maybe_jit(module, jit).forward(params, X, None)
    np.testing.assert_allclose(Y, _reference_forward(params, X, heads, causal),
                               rtol=1e-12, atol=1e-12)
    P = residuals.P  # (B, h, T, T): rows of probabilities, no NaN
    assert P.shape == (B, heads, T, T)
    assert bool(jnp.all(jnp.isfinite(P)))
    np.testing.assert_allclose(jnp.sum(P, axis=-1), 1.0, rtol=1e-12)
    if causal:  # exactly 0 above the diagonal
        assert bool(jnp.all(jnp.where(jnp.triu(jnp.ones((1, 1, T, T), bool), 1), P, 0.0) == 0.0))


def _perturbed_outputs(module, params, X):
    """Y for X and for X changed at each position t in turn: (T + 1, B, T, d), one forward call."""
    B, T, d = X.shape
    X = np.asarray(X)
    Xs = np.concatenate([X[None], X[None] + np.eye(T, dtype=X.dtype).reshape(T, 1, T, 1)])
    Y = jax.jit(module.forward)(params, jnp.asarray(Xs.reshape((T + 1) * B, T, d)), None)[0]
    return Y.reshape(T + 1, B, T, d)


@given(T=st.integers(2, 9), dtype=st.sampled_from([jnp.float64, jnp.float32]))
def test_causality(T, dtype):
    """Causal: changing X at position t leaves Y at every position < t unchanged (bit for bit,
    since the masked probabilities are exactly 0) and changes Y at t."""
    module, params, X = _setup(1, T, 2, 2, True, dtype)
    Y = np.asarray(_perturbed_outputs(module, params, X))
    for t in range(T):
        np.testing.assert_array_equal(Y[1 + t, :, :t], Y[0, :, :t])
        assert np.max(np.abs(Y[1 + t, :, t] - Y[0, :, t])) > 1e-3


def test_without_mask_the_future_leaks():
    """The check above can fail: without causal=True, earlier positions see a later change."""
    module, params, X = _setup(1, 5, 2, 2, False, jnp.float64)
    Y = np.asarray(_perturbed_outputs(module, params, X))
    for t in range(1, 5):
        assert np.max(np.abs(Y[1 + t, :, :t] - Y[0, :, :t])) > 1e-4


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_init_shapes_and_scale(dtype):
    module = nn.SelfAttention(4)
    params, out_shape = module.init(jax.random.key(0), (10, 64), dtype)
    assert out_shape == (10, 64)
    assert isinstance(params, nn.Attention)
    for projection in params:
        assert projection.W.shape == (64, 64) and projection.W.dtype == dtype
        assert projection.W0.shape == (64,) and projection.W0.dtype == dtype
        assert not bool(jnp.any(projection.W0))
        assert abs(float(jnp.std(projection.W)) * 8 - 1) < 0.05  # LeCun: std 1/√d
    assert not np.allclose(params.query.W, params.key.W)  # four independent draws


def test_same_settings_same_module():
    assert nn.SelfAttention(2) is nn.SelfAttention(2, causal=False)
    assert nn.SelfAttention(2, causal=True) is not nn.SelfAttention(2)
    assert nn.SelfAttention(2, causal=True).name == "SelfAttention(2, causal=True)"


@pytest.mark.parametrize("num_heads,causal,error,match", [
    pytest.param(0, False, ValueError, "num_heads must be a positive int, got 0", id="zero-heads"),
    pytest.param(2.0, False, ValueError, "num_heads must be a positive int", id="float-heads"),
    pytest.param(True, False, ValueError, "num_heads must be a positive int", id="bool-heads"),
    pytest.param(2, "yes", TypeError, "causal must be a bool", id="causal-not-bool"),
])
def test_constructor_errors(num_heads, causal, error, match):
    with pytest.raises(error, match=match):
        nn.SelfAttention(num_heads, causal=causal)


@pytest.mark.parametrize("in_shape,match", [
    pytest.param((10, 6), r"divisible by num_heads=4, got d=6", id="width-not-divisible"),
    pytest.param((8,), r"\(T, d\) \(rank 2, no batch axis\), got in_shape \(8,\)", id="rank-1"),
    pytest.param((2, 5, 8), r"rank 2.*got in_shape \(2, 5, 8\)", id="rank-3"),
])
def test_init_errors(in_shape, match):
    with pytest.raises(ValueError, match=r"SelfAttention\(4\): .*" + match):
        nn.SelfAttention(4).init(jax.random.key(0), in_shape, jnp.float32)


@JIT
@pytest.mark.parametrize("d,X_shape,match", [
    pytest.param(8, (2, 3, 6), r"input of shape \(2, 3, 6\).*\(8, 8\).*must be 8",
                 id="width-mismatch"),
    pytest.param(8, (3, 8), r"expects X of shape \(B, T, d\), got \(3, 8\)", id="no-batch"),
    pytest.param(8, (2, 2, 3, 8), r"got \(2, 2, 3, 8\)", id="rank-4"),
    pytest.param(6, (2, 3, 6), r"divisible by num_heads=4, got d=6", id="params-width"),
])
def test_forward_errors(d, X_shape, match, jit):
    params = nn.SelfAttention(1).init(jax.random.key(0), (3, d), jnp.float32)[0]
    forward = _maybe_jit(nn.SelfAttention(4), jit).forward
    with pytest.raises(ValueError, match=r"SelfAttention\(4\): .*" + match):
        forward(params, jnp.ones(X_shape, jnp.float32), None)
