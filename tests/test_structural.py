"""Structural checks of a backward (ignores upstream, not reentrant, mutates input) in
check_vjp and check_module: each planted mistake is the first finding, at the right row,
in float32 and float64; a correct backward has no findings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxbp
from jaxbp import nn


def dense_tanh(p, x):
    return jnp.tanh(x @ p["W"])  # (m,) @ (m, n) -> (n,)


def dense_tanh_backward(p, x, dy):
    dz = dy * (1 - jnp.tanh(x @ p["W"]) ** 2)
    return {"W": jnp.outer(x, dz)}, p["W"] @ dz


def drops_dy():
    def backward(p, x, dy):  # the local derivative summed over outputs: dy never used
        return dense_tanh_backward(p, x, jnp.ones_like(dy))
    return backward


def adds_offset():
    def backward(p, x, dy):  # a term without dy: 0.1 added to every weight gradient
        dp, dx = dense_tanh_backward(p, x, dy)
        return {"W": dp["W"] + 0.1}, dx
    return backward


def accumulates():
    total = {}

    def backward(p, x, dy):  # self.dW += ... across calls: hidden state
        dp, dx = dense_tanh_backward(p, x, dy)
        total["W"] = total.get("W", 0) + dp["W"]
        return {"W": total["W"]}, dx
    return backward


def writes_primal():
    def backward(p, x, dy):  # caches its result in the caller's params dict
        dp, dx = dense_tanh_backward(p, x, dy)
        p["W"] = p["W"] - 0.0 * dp["W"] + 1.0
        return dp, dx
    return backward


# (id, backward factory, trials, kind, where, values right)
CASES = [
    ("drops-dy", drops_dy, 3, "ignores upstream", "primals[0]['W']", False),
    ("offset", adds_offset, 3, "ignores upstream", "primals[0]['W']", False),
    ("accumulator", accumulates, 3, "not reentrant", "primals[0]['W']", False),
    ("accumulator-one-trial", accumulates, 1, "not reentrant", "primals[0]['W']", True),
    ("writes-primal", writes_primal, 3, "mutates input", "primals[0]['W']", False),
]


def point(dtype):
    kW, kx = jax.random.split(jax.random.key(1))
    return ({"W": jax.random.normal(kW, (3, 4), dtype) / 2},
            jax.random.normal(kx, (3,), dtype))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_check_vjp_names_the_structural_mistake(case, dtype):
    _, factory, trials, kind, where, values_right = case
    report = jaxbp.check_vjp(dense_tanh, factory(), *point(dtype), trials=trials)
    assert not report.ok
    assert report.diagnosis and report.diagnosis[0][:2] == (kind, where), report
    assert all(r.ok for r in report.rows) == values_right, report
    if values_right:  # ok is False for the structure alone
        assert (report.suspect, report.first_bad, report.primal) == ("structure", where, 0)
        assert kind in str(report) and "misbehaves" in report.explanation()
    assert report.to_dict()["diagnosis"][0]["kind"] == kind


def test_ignores_upstream_says_how_it_scales():
    report = jaxbp.check_vjp(dense_tanh, drops_dy(), *point(jnp.float64))
    assert report.diagnosis[0].value == pytest.approx(1.0)
    assert "ignores the upstream gradient" in report.diagnosis[0].detail
    report = jaxbp.check_vjp(dense_tanh, adds_offset(), *point(jnp.float64))
    assert 1.0 < report.diagnosis[0].value < 2.0


def test_a_container_change_is_a_mutation():
    def backward(p, x, dy):
        p.pop("b")  # changes the structure the caller passed
        dp, dx = dense_tanh_backward(p, x, dy)
        return {**dp, "b": dy}, dx

    p, x = point(jnp.float64)
    report = jaxbp.check_vjp(lambda p, x: dense_tanh(p, x) + p["b"], backward,
                             {**p, "b": jnp.zeros(4)}, x, trials=1)
    assert report.diagnosis[0][:2] == ("mutates input", "primals[0]")
    assert (report.ok, report.suspect) == (False, "structure")


def host_linear():
    """A module with dict residuals: its backward can overwrite them (as NumPy code does)."""
    def forward(params, X, key):
        return X @ params["W"], {"x": X}  # (B, m) @ (m, n) -> (B, n)

    def backward(params, res, dY):
        return {"W": res["x"].T @ dY}, dY @ params["W"].T

    return nn.Module("HostLinear", lambda key, s, dtype: (None, None), forward, backward)


def scrubs_cache(module):
    def backward(params, res, dY):
        out = module.backward(params, res, dY)
        res["x"] = jnp.zeros_like(res["x"])  # "free" the cache for the caller
        return out
    return module._replace(backward=backward)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_check_module_structural(dtype):
    module = host_linear()
    params = {"W": jax.random.normal(jax.random.key(2), (4, 3), dtype)}
    X = jax.random.normal(jax.random.key(3), (2, 4), dtype)
    report = jaxbp.check_module(module, params, X)
    assert report.ok and report.diagnosis == (), report
    report = jaxbp.check_module(scrubs_cache(module), params, X, trials=1)
    assert report.diagnosis[0][:2] == ("mutates input", "residuals['x']"), report
    assert (report.ok, report.suspect, report.first_bad) == (False, "structure", "residuals['x']")
    calls = []

    def counted(params, res, dY):  # right once, then doubled: state across calls
        calls.append(1)
        dp, dX = module.backward(params, res, dY)
        return dp, dX * len(calls)

    report = jaxbp.check_module(module._replace(backward=counted), params, X, trials=1)
    assert report.diagnosis[0][:2] == ("not reentrant", "input"), report
    assert not report.ok


@settings(max_examples=4)
@given(m=st.integers(1, 4), n=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_no_findings_on_a_correct_backward(m, n, seed):
    kW, kx = jax.random.split(jax.random.key(seed))
    for dtype in (np.float32, np.float64):
        p = {"W": jax.random.normal(kW, (m, n), dtype)}
        x = jax.random.normal(kx, (m,), dtype)
        report = jaxbp.check_vjp(dense_tanh, dense_tanh_backward, p, x, trials=2)
        assert report.ok and report.diagnosis == (), report


# NumPy layers (CS231n's convention: forward -> (out, cache), backward(dout, cache))


def relu_forward(x):
    return np.maximum(0, x), x


def relu_backward(dout, cache):
    return dout * (cache > 0)


def relu_backward_in_place(dout, cache):
    dx = dout  # not a copy: the next line writes into the caller's dout
    dx[cache <= 0] = 0
    return dx


def relu_backward_no_dout(dout, cache):
    return (cache > 0).astype(cache.dtype)


def affine_forward(x, w):
    return x @ w, (x, w)  # (N, D) @ (D, M) -> (N, M)


def affine_backward_accumulating():
    grads = {}

    def backward(dout, cache):  # grads["w"] += ...: the optimizer's buffer, never zeroed
        x, w = cache
        grads["w"] = grads.get("w", 0) + x.T @ dout
        return dout @ w.T, grads["w"]
    return backward


NUMPY_CASES = [  # (id, forward, backward factory, kind, where, values right)
    ("relu-in-place", relu_forward, lambda: relu_backward_in_place, "mutates input", "dout", True),
    ("relu-no-dout", relu_forward, lambda: relu_backward_no_dout, "ignores upstream", "x", False),
    ("affine-accumulating", affine_forward, affine_backward_accumulating, "not reentrant", "w",
     True),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", NUMPY_CASES, ids=[c[0] for c in NUMPY_CASES])
def test_check_layer_structural(case, dtype):
    _, forward, factory, kind, where, values_right = case
    rng = np.random.default_rng(0)
    inputs = (rng.normal(size=(3, 4)).astype(dtype),) + (
        (rng.normal(size=(4, 2)).astype(dtype),) if forward is affine_forward else ())
    report = jaxbp.check_layer(forward, factory(), *inputs, trials=1)
    assert not report.ok and report.diagnosis[0][:2] == (kind, where), report
    assert all(r.ok for r in report.rows) == values_right, report
    if values_right:
        assert (report.suspect, report.first_bad) == ("structure", where)
    assert jaxbp.check_layer(relu_forward, relu_backward, inputs[0]).diagnosis == ()
