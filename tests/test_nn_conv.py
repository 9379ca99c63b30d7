"""Conv2D, MaxPool2D, AvgPool2D, Flatten: hand-written backward vs jax.vjp of the forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from jaxbp import nn
from _nn_check import assert_backward_matches

RTOL = {jnp.float32: 1e-4, jnp.float64: 1e-10}
MODES = pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])


def key(seed):
    """A PRNG key whose sampler compiles fast (threefry's compile dominates these small tests)."""
    return jax.random.key(seed, impl="rbg")


def maybe_jit(module, jit):
    """The module with its forward and backward jitted (a small wrapper), or as it is."""
    if not jit:
        return module
    return module._replace(forward=jax.jit(module.forward), backward=jax.jit(module.backward))


def check(module, in_shape, *, batch=2, dtype=jnp.float64, jit=False, integers=False, seed=0):
    """init's out_shape equals the forward's; backward matches jax.vjp; dtypes are kept."""
    params, out_shape = module.init(key(seed), in_shape, dtype)
    X = jnp.asarray(np.random.default_rng(seed).standard_normal((batch,) + tuple(in_shape)), dtype)
    if integers:  # many ties in every window
        X = jnp.round(2 * X)
    module = maybe_jit(module, jit)
    Y, residuals = module.forward(params, X, None)
    assert Y.shape == (batch,) + tuple(out_shape) and Y.dtype == dtype
    dparams, dX = module.backward(params, residuals, jnp.ones_like(Y))
    assert dX.shape == X.shape and dX.dtype == dtype
    assert jax.tree.structure(dparams) == jax.tree.structure(params)
    assert_backward_matches(module, params, X, rtol=RTOL[dtype], seed=seed + 1)
    return params, X, Y


# Hypothesis runs each example under jax.jit (one compile per shape, where eager compiles every
# op); the case tables below run both eagerly and jitted.
sizes = st.integers(1, 3)
pairs = st.one_of(sizes, st.tuples(sizes, sizes))
dtypes = st.sampled_from([jnp.float64, jnp.float32])


@given(hw=st.tuples(st.integers(1, 7), st.integers(1, 7)), C=sizes, O=sizes, kernel=pairs,
       stride=pairs, padding=st.sampled_from(["SAME", "VALID"]), dtype=dtypes)
def test_conv_backward_matches_vjp(hw, C, O, kernel, stride, padding, dtype):
    k = (kernel, kernel) if isinstance(kernel, int) else kernel
    assume(padding == "SAME" or (k[0] <= hw[0] and k[1] <= hw[1]))
    check(nn.Conv2D(O, kernel, stride=stride, padding=padding), hw + (C,), dtype=dtype, jit=True)


CONV_CASES = {  # (module, in_shape, stride, padding)
    "3x3-stride2-same-odd": (nn.Conv2D(2, 3, stride=2), (7, 5, 3), (2, 2), "SAME"),
    "3x3-stride3-valid-leftover": (nn.Conv2D(2, 3, stride=3, padding="VALID"), (8, 7, 1), (3, 3), "VALID"),
    "1x1-stride3-same-gaps": (nn.Conv2D(3, 1, stride=3), (5, 5, 2), (3, 3), "SAME"),
    "2x4-stride(2,1)-same-uneven": (nn.Conv2D(2, (2, 4), stride=(2, 1)), (6, 5, 2), (2, 1), "SAME"),
    "kernel-equals-input-valid": (nn.Conv2D(3, (4, 3), padding="VALID"), (4, 3, 2), (1, 1), "VALID"),
}


@MODES
@pytest.mark.parametrize("case", CONV_CASES.values(), ids=CONV_CASES.keys())
def test_conv_cases(case, jit):
    conv, in_shape, stride, padding = case
    params, X, Y = check(conv, in_shape, batch=3, jit=jit)
    # the pad amounts are XLA's own SAME/VALID rule (uneven padding, H not divisible by the stride)
    want = jax.lax.conv_general_dilated(X, params.W, stride, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(Y, want + params.W0.reshape(1, 1, 1, -1), rtol=1e-12)


def test_conv_init():
    """He init: W ~ N(0, 2/fan_in), W0 = 0; the same settings give the same module."""
    params, out_shape = nn.Conv2D(64, 3).init(jax.random.key(0), (5, 5, 16), jnp.float32)
    assert params.W.shape == (3, 3, 16, 64) and params.W.dtype == jnp.float32
    assert out_shape == (5, 5, 64)
    assert abs(float(jnp.std(params.W)) / (2 / (9 * 16)) ** 0.5 - 1) < 0.05
    assert not jnp.any(params.W0)
    assert nn.Conv2D(64, (3, 3), stride=(1, 1)) is nn.Conv2D(64, 3)
    assert hash(nn.MaxPool2D(2, 2)) == hash(nn.MaxPool2D((2, 2)))


@given(hw=st.tuples(st.integers(1, 7), st.integers(1, 7)), C=sizes, window=pairs,
       stride=st.one_of(st.none(), pairs), kind=st.sampled_from(["max", "avg"]),
       integers=st.booleans(), dtype=dtypes)
def test_pool_backward_matches_vjp(hw, C, window, stride, kind, integers, dtype):
    k = (window, window) if isinstance(window, int) else window
    assume(k[0] <= hw[0] and k[1] <= hw[1])
    pool = (nn.MaxPool2D if kind == "max" else nn.AvgPool2D)(window, stride)
    _, X, Y = check(pool, hw + (C,), dtype=dtype, jit=True, integers=integers)
    s = k if stride is None else (stride, stride) if isinstance(stride, int) else stride
    reduce = (jax.lax.max, -jnp.inf) if kind == "max" else (jax.lax.add, 0.0)
    want = jax.lax.reduce_window(X, jnp.asarray(reduce[1], dtype), reduce[0], (1,) + k + (1,),
                                 (1,) + s + (1,), "VALID")
    np.testing.assert_allclose(Y, want if kind == "max" else want / (k[0] * k[1]),
                               rtol=RTOL[dtype])


def first_max_backward(X, dY, window, stride):
    """A loop reference: each window's dY goes to its first maximum (row-major), summed."""
    X, dY = np.asarray(X), np.asarray(dY)
    dX = np.zeros_like(X)
    (kh, kw), (sh, sw) = window, stride
    for b, i, j, c in np.ndindex(dY.shape):
        patch = X[b, i * sh:i * sh + kh, j * sw:j * sw + kw, c]
        p, q = np.unravel_index(np.argmax(patch), patch.shape)
        dX[b, i * sh + p, j * sw + q, c] += dY[b, i, j, c]
    return dX


TIES = {  # (X (1, H, W, 1) as rows, window, stride)
    "all-equal-2x2": (np.ones((4, 4)), 2, None),
    "all-equal-overlapping": (np.ones((4, 5)), 2, 1),
    "all-equal-3x3-stride2-leftover": (np.zeros((6, 6)), 3, 2),
    "tie-after-first": ([[0, 2, 2], [2, 1, 2], [2, 2, 2]], 3, None),
    "integers-overlapping": ([[1, 3, 3, 0], [3, 1, 3, 3], [0, 3, 2, 3]], (2, 3), 1),
}


@MODES
@pytest.mark.parametrize("case", TIES.values(), ids=TIES.keys())
def test_max_pool_ties_go_to_first_maximum(case, jit):
    rows, window, stride = case
    X = jnp.asarray(rows, jnp.float64)[None, :, :, None]
    pool = maybe_jit(nn.MaxPool2D(window, stride), jit)
    Y, residuals = pool.forward((), X, None)
    dY = jnp.asarray(np.random.default_rng(0).standard_normal(Y.shape))
    _, dX = pool.backward((), residuals, dY)
    window = (window, window) if isinstance(window, int) else window
    stride = window if stride is None else (stride, stride) if isinstance(stride, int) else stride
    np.testing.assert_allclose(dX, first_max_backward(X, dY, window, stride), rtol=1e-12)
    _, vjp = jax.vjp(lambda x: pool.forward((), x, None)[0], X)
    np.testing.assert_allclose(vjp(dY)[0], dX, rtol=1e-12)


@MODES
@pytest.mark.parametrize("in_shape", [(3,), (4, 5), (3, 2, 4)], ids=["1d", "2d", "3d"])
def test_flatten(in_shape, jit):
    _, X, Y = check(nn.Flatten(), in_shape, batch=3, jit=jit)
    np.testing.assert_array_equal(Y, X.reshape(3, -1))


ERRORS = {  # (make the module, call it, message pattern)
    "conv-rank": (lambda: nn.Conv2D(2, 3), ("init", (5, 5)), r"expects one example of shape \(H, W, C\)"),
    "conv-padding": (lambda: nn.Conv2D(2, 3, padding="same"), None, r"padding must be one of \('SAME', 'VALID'\), got 'same'"),
    "conv-channels": (lambda: nn.Conv2D(2, 3), ("forward", (4, 4, 3), (2, 4, 4, 2)), r"Conv2D\(2, 3\).*\(B, H, W, 3\), got \(2, 4, 4, 2\)"),
    "conv-rank-X": (lambda: nn.Conv2D(2, 3), ("forward", (4, 4, 3), (2, 4, 3)), r"Conv2D\(2, 3\).*got \(2, 4, 3\)"),
    "conv-valid-too-small": (lambda: nn.Conv2D(2, 3, padding="VALID"), ("init", (2, 5, 1)), r"3×3 kernel with no padding \('VALID'\) needs an input of at least that size, got \(H, W\) = \(2, 5\)"),
    "conv-valid-too-small-X": (lambda: nn.Conv2D(2, 3, padding="VALID"), ("forward", (5, 5, 1), (1, 2, 2, 1)), r"3×3 kernel.*\(2, 2\)"),
    "conv-out-channels": (lambda: nn.Conv2D(0, 3), None, r"out_channels must be a positive int, got 0"),
    "conv-out-channels-bool": (lambda: nn.Conv2D(True, 3), None, r"out_channels must be a positive int, got True"),
    "conv-kernel-zero": (lambda: nn.Conv2D(2, 0), None, r"kernel_size must be a positive int or a pair.*got 0"),
    "conv-kernel-triple": (lambda: nn.Conv2D(2, (3, 3, 3)), None, r"kernel_size.*got \(3, 3, 3\)"),
    "conv-stride-negative": (lambda: nn.Conv2D(2, 3, stride=(1, -1)), None, r"stride.*got \(1, -1\)"),
    "max-window-zero": (lambda: nn.MaxPool2D(0), None, r"MaxPool2D: window must be a positive int.*got 0"),
    "avg-stride-float": (lambda: nn.AvgPool2D(2, 1.5), None, r"AvgPool2D: stride.*got 1.5"),
    "max-rank": (lambda: nn.MaxPool2D(2), ("init", (4, 4)), r"MaxPool2D\(2\): expects one example of shape \(H, W, C\)"),
    "avg-rank-X": (lambda: nn.AvgPool2D(2), ("forward", (4, 4, 1), (4, 4, 1)), r"AvgPool2D\(2\).*rank 4, got \(4, 4, 1\)"),
    "max-window-too-big": (lambda: nn.MaxPool2D((2, 5)), ("init", (4, 4, 1)), r"MaxPool2D\(\(2, 5\)\): a 2×5 window with no padding.*\(4, 4\)"),
}


@MODES
@pytest.mark.parametrize("case", ERRORS.values(), ids=ERRORS.keys())
def test_errors(case, jit):
    make, call, pattern = case
    with pytest.raises(ValueError, match=pattern):
        module = maybe_jit(make(), jit)
        if call[0] == "init":
            module.init(key(0), call[1], jnp.float32)
        else:
            params, _ = module.init(key(0), call[1], jnp.float32)
            module.forward(params, jnp.ones(call[2], jnp.float32), None)
