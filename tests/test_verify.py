"""jaxbp.verify: right answers on correct backprops, the right layer and factor on
wrong ones, budgets that match the precision, and clear errors on bad input."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp.check._selftest import random_problem
from tests import _user_backprops as user

# Widths from {1, 2, 3, 4} and B = 32 as in the other verifier tests: JAX compiles each
# eager operation once per shape, so shared shapes keep these tests fast.
NETS = {
    "tanh-softmax-nll": jaxbp.Network(sizes=(3, 4, 3), activations=("tanh", "softmax"),
                                      loss="nll"),
    "relu-relu-squared": jaxbp.Network(sizes=(4, 4, 4, 2),
                                       activations=("relu", "relu", "identity"), loss="squared"),
    "sigmoid-binary": jaxbp.Network(sizes=(3, 4, 4, 1), activations=("gelu", "tanh", "sigmoid"),
                                    loss="binary_nll"),
    "hinge": jaxbp.Network(sizes=(3, 4, 1), activations=("softplus", "identity"), loss="hinge"),
}
B = 32


def problem(name, dtype=jnp.float32, seed=0):
    net = NETS[name]
    return (net,) + random_problem(net, seed, B, dtype)


def scaled(net, l, field, factor):
    """A backprop whose layer-l leaf ``field`` is multiplied by ``factor``."""
    def fn(params, x, y):
        g = list(user.backprop(net, params, x, y))
        g[l - 1] = g[l - 1]._replace(**{field: getattr(g[l - 1], field) * factor})
        return tuple(g)
    return fn


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(NETS))
def test_correct_backprops_pass(name, dtype):
    net, params, X, Y = problem(name, dtype)
    fns = [lambda p, x, y: user.backprop(net, p, x, y)]
    if dtype == jnp.float32:  # jaxbp's own (jitted per network) and jax.grad in float32
        fns += [None, jax.grad(net.loss)]
    for fn in fns:
        report = jaxbp.verify(net, params, X, Y, backprop=fn)
        assert report.ok, str(report)
        assert report.first_bad_layer is None and report.suspect is None
        assert [(r.layer, r.parameter) for r in report.rows] == [
            (l, p) for l in range(net.num_layers, 0, -1) for p in ("W", "W0")]


def test_rows_hold_the_real_errors_against_jax_grad():
    net, params, X, Y = problem("tanh-softmax-nll")
    fn = scaled(net, 1, "W0", 1.01)
    report = jaxbp.verify(net, params, X, Y, backprop=fn)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: a.astype(jnp.float64), params)
        truth = jax.vmap(jax.grad(net.loss), (None, 0, 0))(p64, X.astype(jnp.float64),
                                                          Y.astype(jnp.float64))
    got = jax.vmap(fn, (None, 0, 0))(params, X, Y)
    diff = np.abs(np.asarray(got[0].W0, np.float64) - np.asarray(truth[0].W0))
    row = next(r for r in report.rows if (r.layer, r.parameter) == (1, "W0"))
    np.testing.assert_allclose(row.max_abs_error, diff.max(), rtol=1e-12)
    np.testing.assert_allclose(row.max_rel_error, diff.max() / np.abs(truth[0].W0).max(),
                               rtol=1e-12)
    b, j = np.unravel_index(np.argmax(diff), diff.shape)
    assert (row.worst_example, row.worst_entry) == (b, (j,))
    assert not row.ok and row.max_rel_error == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize("name", list(NETS))
def test_float32_budget_catches_3e_4_in_any_layer(name):
    net, params, X, Y = problem(name, jnp.float32, seed=1)
    for l in range(1, net.num_layers + 1):
        for field, suspect in (("W", "weight"), ("W0", "bias")):
            report = jaxbp.verify(net, params, X, Y, backprop=scaled(net, l, field, 1 + 3e-4))
            assert not report.ok, f"layer {l} {field}\n{report}"
            assert (report.first_bad_layer, report.suspect) == (l, suspect)
            bad = report.bad_rows
            assert [(r.layer, r.parameter) for r in bad] == [(l, field)]
            assert all(r.budget < 1e-4 for r in report.rows)


def test_float64_budget_fails_1e_6_and_passes_round_off():
    net, params, X, Y = problem("relu-relu-squared", jnp.float64)
    report = jaxbp.verify(net, params, X, Y, backprop=scaled(net, 2, "W", 1 + 1e-6))
    assert (report.ok, report.first_bad_layer, report.suspect) == (False, 2, "weight")
    assert max(r.budget for r in report.rows) <= 1e-9
    report = jaxbp.verify(net, params, X, Y, backprop=scaled(net, 2, "W", 1 + 1e-14))
    assert report.ok


def test_explicit_tolerances_replace_the_budget():
    net, params, X, Y = problem("tanh-softmax-nll")
    fn = scaled(net, 2, "W", 1 + 3e-4)
    assert not jaxbp.verify(net, params, X, Y, backprop=fn).ok
    report = jaxbp.verify(net, params, X, Y, backprop=fn, rtol=1e-3)
    assert report.ok and all(r.budget == pytest.approx(1e-3) for r in report.rows)
    report = jaxbp.verify(net, params, X, Y, backprop=fn, atol=1.0)
    assert report.ok and all(r.budget_abs == 1.0 for r in report.rows)
    assert not jaxbp.verify(net, params, X, Y, backprop=fn, rtol=1e-5, atol=0.0).ok


def test_user_dtype_rule_and_x64_restored():
    net, params, X, Y = problem("tanh-softmax-nll")
    with jax.enable_x64(False):
        report = jaxbp.verify(net, params, X, Y, backprop=user.tanh_softmax_nll)
        assert report.ok and report.dtype == "float32"
        assert not jax.config.jax_enable_x64
    assert jax.config.jax_enable_x64  # conftest's global setting is untouched


# ----------------------------------------------------------------- localization

def test_wrong_tanh_derivative_is_layer_1_activation():
    net, params, X, Y = problem("tanh-softmax-nll")
    report = jaxbp.verify(net, params, X, Y, backprop=user.tanh_softmax_nll_wrong_derivative)
    assert (report.ok, report.first_bad_layer, report.suspect, report.ambiguous) == (
        False, 1, "activation", False)
    assert report.evidence["activation_misfit"] < 0.25 < report.evidence["link_misfit"]
    assert "f^1'(z^1)" in str(report) and "tanh" in str(report)


def test_transposed_link_is_link():
    net, params, X, Y = problem("relu-relu-squared")

    def fn(params, x, y):
        g = list(user.backprop(net, params, x, y))
        trace = net.forward_trace(params, x)
        d2 = g[1].W0
        d1 = (params[1].W.T @ d2) * (trace.z[0] > 0)  # W^2ᵀ where W^2 belongs
        g[0] = jaxbp.Dense(jnp.outer(x, d1), d1)
        return tuple(g)

    report = jaxbp.verify(net, params, X, Y, backprop=fn)
    assert (report.first_bad_layer, report.suspect, report.ambiguous) == (1, "link", False)
    assert report.evidence["link_misfit"] < 1e-5


def test_sign_flip_at_the_top_is_loss():
    net, params, X, Y = problem("sigmoid-binary")
    report = jaxbp.verify(net, params, X, Y, backprop=lambda p, x, y: jax.tree.map(
        jnp.negative, user.backprop(net, p, x, y)))
    assert (report.first_bad_layer, report.suspect) == (3, "loss")
    assert all(not r.ok for r in report.rows)


def test_scaled_delta_is_reported_ambiguous():
    net, params, X, Y = problem("relu-relu-squared")

    def fn(params, x, y):  # ∂L/∂z^2 doubled: a scaled f' and a scaled W^3 look the same
        trace = net.forward_trace(params, x)
        g = list(user.backprop(net, params, x, y))
        d2 = 2 * g[1].W0
        d1 = (params[1].W @ d2) * (trace.z[0] > 0)
        return (jaxbp.Dense(jnp.outer(x, d1), d1), jaxbp.Dense(jnp.outer(trace.a[1], d2), d2),
                g[2])

    report = jaxbp.verify(net, params, X, Y, backprop=fn)
    assert report.first_bad_layer == 2 and report.ambiguous
    assert set(report.candidates) == {"activation", "link"}
    assert any("2 × the true one" in n for n in report.notes)


def test_nan_is_nonfinite_with_layer_and_index():
    net, params, X, Y = problem("relu-relu-squared")
    report = jaxbp.verify(net, params, X, Y,
                          backprop=lambda p, x, y: user.nan_in_layer_2(net, p, x, y))
    assert (report.ok, report.first_bad_layer, report.suspect) == (False, 2, "nonfinite")
    row = next(r for r in report.rows if r.nonfinite)
    assert (row.layer, row.parameter, row.worst_example, row.worst_entry) == (2, "W", 0, (0, 0))
    assert math.isinf(row.max_abs_error)
    data = json.loads(report.to_json())
    assert data["suspect"] == "nonfinite" and "inf" in json.dumps(data["rows"])


def test_batched_sum_is_batch_and_mean_is_ok():
    net, params, X, Y = problem("hinge")
    ok = jaxbp.verify(net, params, X, Y, batched=True,
                      backprop=lambda p, X, Y: user.batched_mean(net, p, X, Y))
    assert ok.ok and ok.mode == "batch"
    bad = jaxbp.verify(net, params, X, Y, batched=True,
                       backprop=lambda p, X, Y: user.batched_sum(net, p, X, Y))
    assert (bad.ok, bad.first_bad_layer, bad.suspect, bad.mode) == (False, 2, "batch", "batch")
    row = bad.rows[0]
    assert row.max_rel_error == pytest.approx(B - 1, rel=1e-3)  # sum = B × mean
    assert jaxbp.verify(net, params, X, Y, batched=True).ok  # jaxbp's own net.grad


def test_batched_with_a_per_example_bug_localizes_per_example():
    net, params, X, Y = problem("tanh-softmax-nll")

    def fn(params, X, Y):
        per = [user.tanh_softmax_nll_wrong_derivative(params, x, y) for x, y in zip(X, Y)]
        return jax.tree.map(lambda *g: sum(g) / len(g), *per)

    report = jaxbp.verify(net, params, X, Y, backprop=fn, batched=True)
    assert (report.first_bad_layer, report.suspect, report.mode) == (1, "activation",
                                                                     "per-example")


def test_not_vmappable_backprop_is_called_per_example():
    net, params, X, Y = problem("tanh-softmax-nll")

    def fn(params, x, y):
        if float(jnp.sum(x)) > 1e9:  # a Python branch on values: fails under vmap
            raise AssertionError
        return user.tanh_softmax_nll(params, x, y)

    report = jaxbp.verify(net, params, X, Y, backprop=fn)
    assert report.ok
    assert any("one example at a time" in n for n in report.notes)


def test_finite_difference_third_opinion():
    net, params, X, Y = problem("sigmoid-binary", jnp.float64)
    report = jaxbp.verify(net, params, X, Y, finite_differences=True)
    assert report.ok
    assert report.finite_difference["jax_grad_vs_fd"] < 1e-7
    assert report.finite_difference["yours_vs_fd"] < 1e-7


def test_str_and_json():
    net, params, X, Y = problem("tanh-softmax-nll")
    report = jaxbp.verify(net, params, X, Y, backprop=scaled(net, 2, "W", 1.5))
    text = str(report)
    assert "WRONG — layer 2, suspect: weight" in text and text.count("\n") >= 6
    data = json.loads(report.to_json())
    assert (data["ok"], data["first_bad_layer"], data["suspect"]) == (False, 2, "weight")
    assert len(data["rows"]) == 4 and data["rows"][0]["layer"] == 2
    assert "weight factor" in data["explanation"]


# -------------------------------------------------------------------- bad input

def test_bad_params_name_the_layer():
    net, params, X, Y = problem("tanh-softmax-nll")
    with pytest.raises(ValueError, match="layer 2: W has shape"):
        jaxbp.verify(net, (params[0], jaxbp.Dense(params[1].W.T, params[1].W0)), X, Y)
    with pytest.raises(ValueError, match="expected 2 layers"):
        jaxbp.verify(net, params[:1], X, Y)
    with pytest.raises(TypeError, match="net"):
        jaxbp.verify("net", params, X, Y)
    with pytest.raises(ValueError, match="X: expected shape"):
        jaxbp.verify(net, params, X[0], Y)
    with pytest.raises(ValueError, match="rtol"):
        jaxbp.verify(net, params, X, Y, rtol=-1.0)
    with pytest.raises(TypeError, match="backprop"):
        jaxbp.verify(net, params, X, Y, backprop="net.backprop")


def test_bad_backprop_outputs_are_errors_naming_the_layer():
    net, params, X, Y = problem("relu-relu-squared")
    bad = jaxbp.Network(sizes=(3, 4, 4, 2), activations=("relu", "relu", "identity"),
                        loss="squared")
    p3, X3, Y3 = random_problem(bad, 0, B, jnp.float32)
    with pytest.raises(jaxbp.BackpropError,
                       match=r"layer 1 W has shape \(4, 3\); expected \(3, 4\).*transposed"):
        jaxbp.verify(bad, p3, X3, Y3,
                     backprop=lambda p, x, y: user.transposed_weight(bad, p, x, y))
    with pytest.raises(jaxbp.BackpropError, match="returned 2 layers; expected 3"):
        jaxbp.verify(net, params, X, Y, backprop=lambda p, x, y: user.backprop(net, p, x, y)[:2])
    with pytest.raises(jaxbp.BackpropError, match="layer 3 W0 has shape.*wrong rank"):
        jaxbp.verify(net, params, X, Y, backprop=lambda p, x, y: user.backprop(net, p, x, y)[:2]
                     + (jaxbp.Dense(user.backprop(net, p, x, y)[2].W,
                                    user.backprop(net, p, x, y)[2].W0[None, :]),))
    with pytest.raises(jaxbp.BackpropError, match="RuntimeError on example 0.*not implemented"):
        jaxbp.verify(net, params, X, Y, backprop=user.raises)
    with pytest.raises(jaxbp.BackpropError, match="expected a tuple of 3 Dense"):
        jaxbp.verify(net, params, X, Y, backprop=lambda p, x, y: x)
