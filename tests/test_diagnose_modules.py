"""report.diagnosis through check_module on the built-in nn.Conv2D and nn.MaxPool2D: a user
module wrapping each with one planted mistake is named by kind ("flipped", "border" from the
conv's own padding or an explicit pad before a VALID conv, "ties"; "kink" stays ok)."""

import jax
import jax.numpy as jnp
import pytest

import jaxbp
from jaxbp import nn

CONV, VALID, POOL = nn.Conv2D(2, 3), nn.Conv2D(2, 3, padding="VALID"), nn.MaxPool2D(2)
TIED = jnp.array([[1., 1, 0, 2], [0, -1, 2, 2], [3, 0, 1, 1], [-1, 3, 0, 1]])[None, :, :, None]


def flipped(p, r, dY):  # dW flipped along its spatial axes
    dp, dX = CONV.backward(p, r, dY)
    return dp._replace(W=dp.W[::-1, ::-1]), dX


def top_row_lost(p, r, dY):  # dX wrong on the first row, which the padding reaches
    dp, dX = CONV.backward(p, r, dY)
    return dp, dX.at[:, 0].set(0.0)


def padded_forward(p, X, key):  # SAME by hand: an explicit pad, then a VALID conv
    return VALID.forward(p, jnp.pad(X, ((0, 0), (1, 1), (1, 1), (0, 0))), key)


def padded_backward(p, r, dY):  # the padding cropped off, the last row lost
    dp, dXp = VALID.backward(p, r, dY)
    return dp, dXp[:, 1:-1, 1:-1].at[:, -1].set(0.0)


def _windows(X):  # (B, H, W, C) -> (B, H/2, W/2, C, 4), row-major windows
    B, H, W, C = X.shape
    return X.reshape(B, H // 2, 2, W // 2, 2, C).transpose(0, 1, 3, 5, 2, 4).reshape(
        B, H // 2, W // 2, C, 4)


def _unwindows(dT, shape):
    B, H, W, C = shape
    return dT.reshape(B, H // 2, W // 2, C, 2, 2).transpose(0, 1, 4, 2, 5, 3).reshape(shape)


def every_tie(p, r, dY):  # every tied maximum gets the whole gradient: not a subgradient
    X, _ = r
    T = _windows(X)
    return (), _unwindows(jnp.where(T == T.max(-1, keepdims=True), dY[..., None], 0.0), X.shape)


def last_tie(p, r, dY):  # the last maximum instead of the first: a valid subgradient
    X, _ = r
    last = 3 - jnp.argmax(_windows(X)[..., ::-1], axis=-1)
    return (), _unwindows(jnp.where(jnp.arange(4).reshape(1, 1, 1, 1, 4) == last[..., None],
                                    dY[..., None], 0.0),
                          X.shape)


CASES = [  # id, module, X shape or array, kind, where, ok
    ("conv-flipped", CONV._replace(backward=flipped), (1, 5, 5, 2), "flipped", "W", False),
    ("conv-border", CONV._replace(backward=top_row_lost), (1, 5, 5, 2), "border", "input",
     False),
    ("pad-then-valid-border", nn.Module("padded", CONV.init, padded_forward, padded_backward),
     (1, 5, 5, 2), "border", "input", False),
    ("maxpool-every-tie", POOL._replace(backward=every_tie), TIED, "ties", "input", False),
    ("maxpool-last-tie", POOL._replace(backward=last_tie), TIED, "kink", "input", True),
]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_check_module_names_the_kind(case, dtype):
    _, module, X, kind, where, ok = case
    key = jax.random.key(0)
    X = jax.random.normal(key, X, dtype) if isinstance(X, tuple) else X.astype(dtype)
    params, _ = module.init(key, X.shape[1:], dtype)
    report = jaxbp.check_module(module, params, X, trials=2)
    assert report.ok == ok
    assert (report.diagnosis[0].kind, report.diagnosis[0].where) == (kind, where), str(report)
    if kind == "border":
        assert "explicit pad" in report.diagnosis[0].detail or case[0] == "conv-border"


KINKED = jnp.array([[0.0, 1.5, -2.0], [0.7, 0.0, -0.3]])


@pytest.mark.parametrize("t, kind, ok", [(0.5, "kink", True), (1.0, "kink", True),
                                         (2.0, "masked", False), (-1.0, "masked", False)],
                         ids=["half", "one", "two-not-a-subgradient", "minus-one"])
def test_relu_kink_needs_t_in_zero_one(t, kind, ok):
    """At x = 0 yours must be t·upstream with t in [0, 1] to be a kink; else it is wrong."""
    def backward(x, dy):
        return (dy * jnp.where(x > 0, 1.0, jnp.where(x == 0, t, 0.0)),)
    report = jaxbp.check_vjp(jax.nn.relu, backward, KINKED)
    assert (report.ok, report.diagnosis[0].kind) == (ok, kind), str(report)


def test_float32_dropout_is_checked_with_its_own_mask():
    """One key, one mask: float32 and float64 inputs, x64 on or off (the float64 truth of a
    float32 check drops the same entries); a backward that forgets it is "masked"."""
    drop, key = nn.Dropout(0.3), jax.random.key(3)
    X = jnp.ones((16, 8), jnp.float32)
    masks = [drop.forward((), X.astype(dt), key)[1] for dt in (jnp.float32, jnp.float64)]
    with jax.enable_x64(False):
        masks.append(drop.forward((), X, key)[1])
    assert all(bool(jnp.all(m == masks[0])) for m in masks)
    assert jaxbp.check_module(drop, (), X, key=key, trials=1).ok
    forgot = drop._replace(backward=lambda p, keep, dY: ((), dY / 0.7))
    report = jaxbp.check_module(forgot, (), X, key=key, trials=1)
    assert (report.ok, report.diagnosis[0].kind, report.diagnosis[0].where) == (
        False, "masked", "input"), str(report)
