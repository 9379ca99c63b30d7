"""LayerNorm, BatchNorm, Embedding, Dropout: backward against jax.vjp, closed forms, errors."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jaxbp import nn
from jaxbp import rtol_for
from tests._nn_check import assert_backward_matches, rel_err

JIT = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


@functools.lru_cache(maxsize=None)
def _jitted(module):
    return nn.Module(module.name, module.init, jax.jit(module.forward), jax.jit(module.backward))


def _maybe_jit(module, jit):
    """The module with forward and backward jitted (the same functions, traced)."""
    return _jitted(module) if jit else module


def _norm_problem(shape, dtype, seed):
    """Random γ, β (not the init's 1, 0, so both enter the check) and an offset, scaled X."""
    k = jax.random.split(jax.random.key(seed), 3)
    d = shape[-1]
    params = nn.Norm(1 + 0.5 * jax.random.normal(k[0], (d,), dtype),
                     jax.random.normal(k[1], (d,), dtype))
    X = 2.0 + 3.0 * jax.random.normal(k[2], shape, dtype)
    return params, X


DTYPES = st.sampled_from([jnp.float64, jnp.float32])
EPS = st.sampled_from([1e-5, 0.5])
# Shapes come from short lists so that compiled code is reused across examples (the machine
# is small); N, the count of normalised entries per group, is never 2: see test_norm_two_entries.
LAYER_SHAPES = st.sampled_from([(3, 5), (2, 3, 4)])
BATCH_SHAPES = st.sampled_from([(6, 3), (2, 2, 3, 3)])
# eager or jit is drawn per example (not a parametrize that doubles every compile)
JITS = st.booleans()


# ----------------------------------------------------------------- norms vs jax.vjp
@given(shape=LAYER_SHAPES, eps=EPS, dtype=DTYPES, seed=st.integers(0, 2**16), jit=JITS)
def test_layer_norm_backward_matches_vjp(shape, eps, dtype, seed, jit):
    module = nn.LayerNorm(eps)
    params, X = _norm_problem(shape, dtype, seed)
    assert_backward_matches(_maybe_jit(module, jit), params, X, rtol=rtol_for(dtype), seed=seed)


@given(shape=BATCH_SHAPES, eps=EPS, dtype=DTYPES, seed=st.integers(0, 2**16), jit=JITS)
def test_batch_norm_backward_matches_vjp(shape, eps, dtype, seed, jit):
    module = nn.BatchNorm(eps)
    params, X = _norm_problem(shape, dtype, seed)
    assert_backward_matches(_maybe_jit(module, jit), params, X, rtol=rtol_for(dtype), seed=seed)


@JIT
@pytest.mark.parametrize("module,shape,axis", [(nn.LayerNorm(), (3, 2), 1),
                                               (nn.BatchNorm(), (2, 3), 0)],
                         ids=["layer-d2", "batch-B2"])
def test_norm_two_entries(module, shape, axis, jit):
    """N = 2 is ill-conditioned: x̂ = ±c with c² = 1 − εs², and with g = ∂L/∂y ⊙ γ the
    backward's terms cancel to ∂L/∂x = s (1 − c²)(g − mean g) = ε s³ (g − mean g), ~εs² times
    the terms s·g. Backward, jax.vjp and that closed form agree to round-off of s·|g|."""
    eps = 1e-5
    module = _maybe_jit(module, jit)
    params, X = _norm_problem(shape, jnp.float64, 0)
    Y, res = module.forward(params, X, None)
    dY = jax.random.normal(jax.random.key(1), Y.shape, Y.dtype)
    _, dX = module.backward(params, res, dY)
    _, vjp = jax.vjp(lambda x: module.forward(params, x, None)[0], X)
    (dX_ref,) = vjp(dY)
    g = dY * params.gamma[None, :]
    term_scale = float(jnp.max(res.inv_std * jnp.abs(g)))
    assert float(jnp.max(jnp.abs(dX - dX_ref))) <= 1e-13 * term_scale
    closed = eps * res.inv_std ** 3 * (g - jnp.mean(g, axis=axis, keepdims=True))
    assert float(jnp.max(jnp.abs(dX - closed))) <= 1e-13 * term_scale
    assert float(jnp.max(jnp.abs(dX))) <= 1e-3 * term_scale  # the cancellation is real


@JIT
@pytest.mark.parametrize("module,shape,axes", [
    (nn.LayerNorm(), (3, 5), (1,)),
    (nn.LayerNorm(), (2, 3, 4), (2,)),
    (nn.BatchNorm(), (6, 3), (0,)),
    (nn.BatchNorm(), (1, 3, 4), (0, 1)),
    (nn.BatchNorm(), (2, 2, 3, 3), (0, 1, 2)),
], ids=["layer-BD", "layer-BTD", "batch-BD", "batch-BTD", "batch-NHWC"])
def test_norm_input_gradient_moments(module, shape, axes, jit):
    """Closed forms over each group of N normalised entries, with g = ∂L/∂y ⊙ γ:
    Σ ∂L/∂x = 0 (a shift of x changes nothing) and Σ ∂L/∂x ⊙ x̂ = ε s³ Σ g ⊙ x̂
    (a scaling of x changes y only through ε)."""
    eps = 1e-5
    module = _maybe_jit(module, jit)
    params, X = _norm_problem(shape, jnp.float64, 0)
    Y, res = module.forward(params, X, None)
    dY = jax.random.normal(jax.random.key(1), Y.shape, Y.dtype)
    _, dX = module.backward(params, res, dY)
    scale = float(jnp.max(jnp.abs(dX)))
    assert scale > 0.1
    N = math.prod(shape[a] for a in axes)
    assert float(jnp.max(jnp.abs(jnp.sum(dX, axis=axes)))) <= 1e-13 * N * scale
    g = dY * params.gamma.reshape((1,) * (len(shape) - 1) + (-1,))
    want = eps * res.inv_std ** 3 * jnp.sum(g * res.x_hat, axis=axes, keepdims=True)
    got = jnp.sum(dX * res.x_hat, axis=axes, keepdims=True)
    assert float(jnp.max(jnp.abs(got - want))) <= 1e-13 * N * scale
    # and the forward normalises: mean 0, variance 1 − ε/(σ² + ε) over the same axes
    x_hat = res.x_hat
    assert float(jnp.max(jnp.abs(jnp.mean(x_hat, axis=axes)))) <= 1e-13
    np.testing.assert_allclose(jnp.mean(x_hat ** 2, axis=axes, keepdims=True),
                               1 - eps * res.inv_std ** 2, rtol=1e-12)


@JIT
def test_bias_before_batch_norm_gets_zero_gradient(jit):
    """Linear → BatchNorm: the chain's ∂L/∂W0 is 0 (to round-off of ∂L/∂W), as jax.grad says."""
    lin, bn = nn.Linear(3), nn.BatchNorm()  # (6, 4) -> (6, 3): shapes shared with the cases above
    k = jax.random.split(jax.random.key(3), 3)
    p_lin, _ = lin.init(k[0], (4,), jnp.float64)
    p_lin = p_lin._replace(W0=jax.random.normal(k[1], (3,), jnp.float64))
    p_bn, _ = bn.init(k[2], (3,), jnp.float64)
    X = jax.random.normal(jax.random.key(4), (6, 4), jnp.float64)
    target = jax.random.normal(jax.random.key(5), (6, 3), jnp.float64)

    def manual(p_lin, p_bn):
        Z, r_lin = lin.forward(p_lin, X, None)
        Y, r_bn = bn.forward(p_bn, Z, None)
        _, dZ = bn.backward(p_bn, r_bn, Y - target)  # L = ½ Σ (Y − target)²
        return lin.backward(p_lin, r_lin, dZ)[0]

    def loss(p_lin):
        return 0.5 * jnp.sum((bn.forward(p_bn, lin.forward(p_lin, X, None)[0], None)[0]
                              - target) ** 2)

    grads = (jax.jit(manual) if jit else manual)(p_lin, p_bn)
    want = jax.grad(loss)(p_lin)
    scale = float(jnp.max(jnp.abs(want.W)))
    assert scale > 0.1
    assert rel_err(grads.W, want.W) <= 1e-10
    assert float(jnp.max(jnp.abs(grads.W0))) <= 1e-12 * scale
    assert float(jnp.max(jnp.abs(want.W0))) <= 1e-12 * scale


# ----------------------------------------------------------------- embedding
@given(ids_shape=st.sampled_from([(6,), (2, 5)]), n_ids=st.sampled_from([1, 3, 6]),
       dtype=DTYPES, seed=st.integers(0, 2**16), jit=JITS)
def test_embedding_backward_matches_vjp(ids_shape, n_ids, dtype, seed, jit):
    """Ids from [0, n_ids) over 6 or 10 positions of a vocabulary of 6: ids usually repeat
    (n_ids = 1: all equal) and rows past n_ids get no gradient."""
    module = nn.Embedding(6, 3)
    params, _ = module.init(jax.random.key(seed), ids_shape[1:], dtype)
    ids = jax.random.randint(jax.random.key(seed + 1), ids_shape, 0, n_ids)
    assert_backward_matches(_maybe_jit(module, jit), params, ids, rtol=rtol_for(dtype), seed=seed)


@JIT
def test_embedding_gradient_is_the_counted_scatter_add(jit):
    """∂L/∂W[v] = Σ of ∂L/∂Y over the positions holding v; with ∂L/∂Y = 1 that is count(v)."""
    vocab, dim = 6, 3
    module = _maybe_jit(nn.Embedding(vocab, dim), jit)
    params, _ = module.init(jax.random.key(0), (5,), jnp.float64)
    ids = jnp.array([[0, 2, 2, 5, 2], [5, 0, 2, 1, 1]])  # 3 unused
    Y, res = module.forward(params, ids, None)
    np.testing.assert_array_equal(Y, np.asarray(params.W)[np.asarray(ids)])

    dparams, dX = module.backward(params, res, jnp.ones_like(Y))
    assert dX is None
    counts = np.bincount(np.asarray(ids).ravel(), minlength=vocab)
    np.testing.assert_array_equal(dparams.W, np.repeat(counts[:, None], dim, axis=1))

    dY = np.asarray(jax.random.normal(jax.random.key(1), Y.shape, Y.dtype))
    want = np.zeros((vocab, dim))
    for (b, t), v in np.ndenumerate(np.asarray(ids)):
        want[v] += dY[b, t]
    np.testing.assert_allclose(module.backward(params, res, jnp.asarray(dY))[0].W, want,
                               rtol=1e-14, atol=1e-15)


def test_embedding_id_check_is_skipped_under_jit():
    """Eagerly an out-of-range id raises; traced, its value is unknown (JAX's clamping applies)."""
    module = nn.Embedding(4, 2)
    params, _ = module.init(jax.random.key(0), (2,), jnp.float64)
    with pytest.raises(ValueError, match="token id 4"):
        module.forward(params, jnp.array([[1, 4]]), None)
    Y, _ = jax.jit(module.forward)(params, jnp.array([[1, 4]]), None)
    assert Y.shape == (1, 2, 2)


# ----------------------------------------------------------------- dropout
@given(shape=st.sampled_from([(5, 4), (2, 3, 4)]), rate=st.sampled_from([0.0, 0.5]),
       dtype=DTYPES, seed=st.integers(0, 2**16), jit=JITS)
def test_dropout_backward_matches_vjp(shape, rate, dtype, seed, jit):
    module = nn.Dropout(rate)
    X = jax.random.normal(jax.random.key(seed), shape, dtype)
    key = jax.random.key(seed + 1)
    assert_backward_matches(_maybe_jit(module, jit), (), X, key=key, rtol=rtol_for(dtype),
                            seed=seed)


@JIT
@pytest.mark.parametrize("rate", [0.1, 0.8])
def test_dropout_keep_rate_and_mean(rate, jit):
    """Kept fraction ≈ 1 − rate and mean(Y) ≈ mean(X) = 1, within 5 binomial standard errors."""
    module = _maybe_jit(nn.Dropout(rate), jit)
    X = jnp.ones((200, 100), jnp.float64)
    n = X.size
    Y, keep = module.forward((), X, jax.random.key(7))
    p = 1 - rate
    kept = float(jnp.mean(keep))
    assert abs(kept - p) <= 5 * math.sqrt(p * (1 - p) / n)
    assert abs(float(jnp.mean(Y)) - 1.0) <= 5 * math.sqrt(rate / (p * n))
    np.testing.assert_allclose(Y, np.where(keep, 1 / p, 0.0), rtol=1e-15)  # kept entries scaled
    # the backward drops the same entries and scales by the same 1/(1 − rate)
    _, dX = module.backward((), keep, 2 * X)
    np.testing.assert_allclose(dX, 2 * Y, rtol=1e-15)


@JIT
@pytest.mark.parametrize("rate,key", [(0.5, None), (0.0, jax.random.key(0))],
                         ids=["key-None", "rate-0"])
def test_dropout_identity(rate, key, jit):
    module = _maybe_jit(nn.Dropout(rate), jit)
    X = jax.random.normal(jax.random.key(1), (3, 4), jnp.float32)
    Y, res = module.forward((), X, key)
    np.testing.assert_array_equal(Y, X)
    dY = jax.random.normal(jax.random.key(2), (3, 4), jnp.float32)
    dparams, dX = module.backward((), res, dY)
    assert dparams == ()
    np.testing.assert_array_equal(dX, dY)


# ----------------------------------------------------------------- init, identity of configs
@JIT
@pytest.mark.parametrize("module,in_shape,X", [
    (nn.LayerNorm(), (6,), jnp.ones((2, 6))),
    (nn.LayerNorm(1e-3), (3, 6), jnp.ones((2, 3, 6))),
    (nn.BatchNorm(), (5,), jnp.ones((4, 5))),
    (nn.BatchNorm(), (3, 3, 2), jnp.ones((2, 3, 3, 2))),
    (nn.Embedding(6, 3), (), jnp.array([1, 2, 5, 0, 0, 4])),
    (nn.Embedding(6, 3), (5,), jnp.zeros((2, 5), jnp.int64)),
    (nn.Dropout(0.3), (3, 5), jnp.ones((2, 3, 5))),
], ids=["layer-BD", "layer-BTD", "batch-BD", "batch-NHWC", "embed-B", "embed-BT", "dropout"])
def test_init_out_shape_is_the_forward_per_example_shape(module, in_shape, X, jit):
    params, out_shape = module.init(jax.random.key(0), in_shape, jnp.float64)
    Y, _ = _maybe_jit(module, jit).forward(params, X, jax.random.key(1))
    assert Y.shape == (X.shape[0],) + out_shape
    assert Y.dtype == jnp.float64


def test_norm_and_embedding_init_values():
    p, _ = nn.LayerNorm().init(jax.random.key(0), (4,), jnp.float32)
    np.testing.assert_array_equal(p.gamma, np.ones(4))
    np.testing.assert_array_equal(p.beta, np.zeros(4))
    p, _ = nn.Embedding(2000, 8).init(jax.random.key(0), (3,), jnp.float64)
    assert abs(float(jnp.mean(p.W))) < 0.03 and abs(float(jnp.std(p.W)) - 1) < 0.03  # N(0, 1)


def test_same_config_same_module():
    assert nn.LayerNorm() is nn.LayerNorm(eps=1e-5) is nn.LayerNorm(1e-5)
    assert nn.BatchNorm(eps=1e-3) is nn.BatchNorm(0.001)
    assert nn.Embedding(5, 2) is nn.Embedding(vocab_size=5, dim=2)
    assert nn.Dropout(0.5) is nn.Dropout(rate=0.5)
    assert nn.LayerNorm() is not nn.BatchNorm()
    assert len({nn.LayerNorm(), nn.LayerNorm(1e-3), nn.Dropout(0.1), nn.Embedding(5, 2)}) == 4


# ----------------------------------------------------------------- errors
_P4 = nn.Norm(jnp.ones(4), jnp.zeros(4))
_W = nn.EmbeddingTable(jnp.zeros((5, 2)))


@pytest.mark.parametrize("make,exc,match", [
    (lambda: nn.LayerNorm(0.0), ValueError,
     r"LayerNorm: eps must be a positive finite number, got 0\.0"),
    (lambda: nn.LayerNorm(-1e-5), ValueError, "LayerNorm: eps .* got -1e-05"),
    (lambda: nn.BatchNorm(float("nan")), ValueError, "BatchNorm: eps .* got nan"),
    (lambda: nn.BatchNorm("1e-5"), ValueError, "BatchNorm: eps .* got '1e-5'"),
    (lambda: nn.LayerNorm(True), ValueError, "LayerNorm: eps .* got True"),
    (lambda: nn.Embedding(0, 4), ValueError, "Embedding: vocab_size must be a positive int, got 0"),
    (lambda: nn.Embedding(4.0, 4), ValueError, r"Embedding: vocab_size .* got 4\.0"),
    (lambda: nn.Embedding(4, -2), ValueError, "Embedding: dim must be a positive int, got -2"),
    (lambda: nn.Dropout(1.0), ValueError, r"Dropout: rate must be a number in \[0, 1\), got 1\.0"),
    (lambda: nn.Dropout(-0.1), ValueError, r"Dropout: rate .* got -0\.1"),
    (lambda: nn.Dropout(float("inf")), ValueError, "Dropout: rate .* got inf"),
    (lambda: nn.Dropout("0.5"), ValueError, "Dropout: rate .* got '0.5'"),
    (lambda: nn.LayerNorm().init(None, (), jnp.float32), ValueError,
     r"LayerNorm\(\): expects at least a feature axis, got in_shape \(\)"),
    (lambda: nn.BatchNorm().init(None, (), jnp.float32), ValueError,
     r"BatchNorm\(\): expects at least a feature axis"),
    (lambda: nn.Embedding(5, 2).init(jax.random.key(0), (3,), jnp.int32), TypeError,
     r"Embedding\(5, 2\): dtype: expected a floating dtype .* got int32"),
], ids=["layer-eps-0", "layer-eps-neg", "batch-eps-nan", "batch-eps-str", "layer-eps-bool",
        "embed-vocab-0", "embed-vocab-float", "embed-dim-neg", "dropout-1", "dropout-neg",
        "dropout-inf", "dropout-str", "layer-init-scalar", "batch-init-scalar", "embed-init-int"])
def test_construction_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@JIT
@pytest.mark.parametrize("module,params,X,exc,match", [
    (nn.LayerNorm(), _P4, jnp.ones((2, 3)), ValueError,
     r"LayerNorm\(\): input of shape \(2, 3\) .* gamma of shape \(4,\): its last axis must be 4"),
    (nn.BatchNorm(), _P4, jnp.ones((2, 2, 5)), ValueError,
     r"BatchNorm\(\): input of shape \(2, 2, 5\) .* last axis must be 4"),
    (nn.LayerNorm(), _P4, jnp.ones((4,)), ValueError, r"input of shape \(4,\) \(batch first\)"),
    (nn.LayerNorm(), _P4, jnp.ones((2, 4), jnp.int32), TypeError,
     r"LayerNorm\(\): expects a floating-point input, got dtype int32"),
    (nn.BatchNorm(), _P4, jnp.ones((0, 4)), ValueError, r"BatchNorm\(\): empty batch \(B=0\)"),
    (nn.Embedding(5, 2), _W, jnp.ones((2, 3), jnp.float32), TypeError,
     r"Embedding\(5, 2\): Embedding takes integer token ids, got dtype float32"),
    (nn.Embedding(5, 2), _W, jnp.ones((2, 3), jnp.bool_), TypeError,
     "Embedding takes integer token ids, got dtype bool"),
    (nn.Embedding(5, 2), _W, jnp.array(3), ValueError,
     r"Embedding\(5, 2\): ids need a leading batch axis, got shape \(\)"),
    (nn.Embedding(5, 3), _W, jnp.ones((2,), jnp.int32), ValueError,
     r"Embedding\(5, 3\): W must have shape \(5, 3\), got \(5, 2\)"),
    (nn.Dropout(0.5), (), jnp.ones((2, 3), jnp.int32), TypeError,
     r"Dropout\(0.5\): expects a floating-point input, got dtype int32"),
], ids=["layer-width", "batch-width", "layer-no-batch", "layer-int", "batch-empty", "embed-float",
        "embed-bool", "embed-scalar", "embed-W", "dropout-int"])
def test_forward_errors(module, params, X, exc, match, jit):
    """Shape and dtype checks are static: they fire under jax.jit too."""
    with pytest.raises(exc, match=match):
        _maybe_jit(module, jit).forward(params, X, jax.random.key(0))


@pytest.mark.parametrize("ids,bad", [([[0, 5, 1]], 5), ([[2, -1]], -1), ([7, 9], 7)])
def test_embedding_out_of_range_ids(ids, bad):
    with pytest.raises(ValueError, match=rf"Embedding\(5, 2\): token id {bad} is out of range "
                                         rf"for vocab_size=5 \(ids must lie in \[0, 5\)\)"):
        nn.Embedding(5, 2).forward(_W, jnp.array(ids), None)
