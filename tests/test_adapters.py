"""Course layouts (``verify(layout=, reduction=)``) and ``jaxbp.adapters.module_backprop``:
a homework-style NumPy network passes when right and is named at the right layer
and factor when its tanh backward is wrong."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp.check._selftest import random_problem
from tests import _homework as hw

B = 32
NET = jaxbp.Network(sizes=(3, 4, 4, 3), activations=("tanh", "tanh", "softmax"), loss="nll")


def problem(dtype=jnp.float32, seed=0):
    return random_problem(NET, seed, B, dtype)


def homework_modules(second=hw.Tanh):
    return [hw.Linear(3, 4), hw.Tanh(), hw.Linear(4, 4), second(), hw.Linear(4, 3),
            hw.SoftMax()]


# --------------------------------------------------------- the homework network

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("batched", [True, False], ids=["batch-sum", "per-example"])
def test_homework_network_passes(batched, dtype):
    params, X, Y = problem(dtype)
    backprop = jaxbp.adapters.module_backprop(homework_modules(), hw.NLL())
    report = jaxbp.verify(NET, params, X, Y, backprop=backprop, layout="columns",
                          batched=batched, reduction="sum")
    assert report.ok, str(report)
    assert not any("vmap" in note for note in report.notes)  # host code is never traced


@pytest.mark.parametrize("batched", [True, False], ids=["batch-sum", "per-example"])
def test_homework_wrong_tanh_backward_is_named(batched):
    params, X, Y = problem()
    backprop = jaxbp.adapters.module_backprop(homework_modules(hw.WrongTanh), hw.NLL())
    report = jaxbp.verify(NET, params, X, Y, backprop=backprop, layout="columns",
                          batched=batched, reduction="sum")
    assert not report.ok
    assert (report.first_bad_layer, report.suspect) == (2, "activation"), str(report)
    # the error is real: layer 2's bias gradient (∂L/∂z²) against jax.grad
    truth = jax.vmap(jax.grad(NET.loss), (None, 0, 0))(params, X, Y)
    row = next(r for r in report.rows if (r.layer, r.parameter) == (2, "W0"))
    assert row.max_rel_error > 1e-2 and np.max(np.abs(truth[1].W0)) > 0


def test_homework_relu_network_passes():
    net = jaxbp.Network(sizes=(3, 4, 4, 3), activations=("relu", "tanh", "softmax"), loss="nll")
    params, X, Y = random_problem(net, 3, B, jnp.float32)
    modules = [hw.Linear(3, 4), hw.ReLU(), hw.Linear(4, 4), hw.Tanh(), hw.Linear(4, 3),
               hw.SoftMax()]
    backprop = jaxbp.adapters.module_backprop(modules, hw.NLL())
    report = jaxbp.verify(net, params, X, Y, backprop=backprop, layout="columns", batched=True,
                          reduction="sum")
    assert report.ok, str(report)
    # and relu's derivative taken as 1 everywhere (the mask forgotten) is named
    modules[1].backward = lambda dLdA: dLdA
    report = jaxbp.verify(net, params, X, Y, backprop=backprop, layout="columns", batched=True,
                          reduction="sum")
    assert (report.ok, report.first_bad_layer, report.suspect) == (False, 1, "activation"), \
        str(report)


def test_module_backprop_reads_the_homework_gradients():
    params, X, Y = problem(jnp.float64)
    backprop = jaxbp.adapters.module_backprop(homework_modules(), hw.NLL())
    columns = tuple((np.asarray(p.W), np.asarray(p.W0).reshape(-1, 1)) for p in params)
    grads = backprop(columns, np.asarray(X).T, np.asarray(Y).T)  # summed over the batch
    truth = jax.grad(lambda p: B * NET.batch_loss(p, X, Y))(params)
    for (dW, dW0), t in zip(grads, truth):
        assert dW0.shape == (t.W0.shape[0], 1)
        np.testing.assert_allclose(dW, t.W, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dW0[:, 0], t.W0, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("modules, loss, kwargs, error, match", [
    ([], hw.NLL(), {}, TypeError, "modules"),
    ([hw.Linear(3, 4), object()], hw.NLL(), {}, TypeError, r"modules\[1\]"),
    ([hw.Linear(3, 4)], object(), {}, TypeError, "loss_module"),
    ([hw.Tanh()], hw.NLL(), {}, ValueError, "none has the parameters"),
    ([hw.Linear(3, 4)], hw.NLL(), {"param_names": "W"}, TypeError, "param_names"),
], ids=["empty", "not-a-module", "bad-loss", "no-params", "names-not-pair"])
def test_module_backprop_rejects_bad_modules(modules, loss, kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxbp.adapters.module_backprop(modules, loss, **kwargs)


def test_module_backprop_with_too_few_layers_is_a_backprop_error():
    params, X, Y = problem()
    backprop = jaxbp.adapters.module_backprop([hw.Linear(3, 3), hw.SoftMax()], hw.NLL())
    with pytest.raises(jaxbp.BackpropError, match="3 layers, but the modules have 1"):
        jaxbp.verify(NET, params, X, Y, backprop=backprop, layout="columns", batched=True,
                     reduction="sum")


# ------------------------------------------------------- layouts for JAX code

def column_backprop(params, x, y, *, bias_scale=(1.0, 1.0, 1.0), flat_bias=False):
    """NET's backprop in the homework's layout, for x (m, 1) or a batch (m, B), summed."""
    (W1, b1), (W2, b2), (W3, b3) = params  # W (m, n), W0 (n, 1)
    a1 = jnp.tanh(W1.T @ x + b1)  # (n, m) @ (m, B) -> (n, B)
    a2 = jnp.tanh(W2.T @ a1 + b2)
    z3 = W3.T @ a2 + b3
    dz3 = jax.nn.softmax(z3, axis=0) - y
    dz2 = (W3 @ dz3) * (1 - a2 ** 2)
    dz1 = (W2 @ dz2) * (1 - a1 ** 2)
    out = []
    for a_prev, dz, s in zip((x, a1, a2), (dz1, dz2, dz3), bias_scale):
        dW0 = s * jnp.sum(dz, axis=1, keepdims=True)  # (n, 1)
        out.append((a_prev @ dz.T, dW0[:, 0] if flat_bias else dW0))
    return tuple(out)


@pytest.mark.parametrize("batched", [True, False], ids=["batch-sum", "per-example"])
def test_column_layout_passes_and_matches_rows(batched):
    params, X, Y = problem()
    report = jaxbp.verify(NET, params, X, Y, backprop=column_backprop, layout="columns",
                          batched=batched, reduction="sum")
    assert report.ok, str(report)
    rows = jaxbp.verify(NET, params, X, Y, backprop=NET.grad if batched else NET.backprop,
                        batched=batched)
    # the same table: the columns function is, after the boundary, jaxbp's own numbers
    assert [(r.layer, r.parameter, r.shape) for r in report.rows] == \
        [(r.layer, r.parameter, r.shape) for r in rows.rows]
    for r, s in zip(report.rows, rows.rows):
        assert r.max_abs_error <= 10 * max(s.max_abs_error, 1e-7 * r.scale)


@pytest.mark.parametrize("batched", [True, False], ids=["batch-sum", "per-example"])
def test_column_layout_localizes_a_wrong_bias(batched):
    params, X, Y = problem()

    def wrong(p, x, y):
        return column_backprop(p, x, y, bias_scale=(1.0, 0.5, 1.0))

    report = jaxbp.verify(NET, params, X, Y, backprop=wrong, layout="columns",
                          batched=batched, reduction="sum")
    assert (report.ok, report.first_bad_layer, report.suspect) == (False, 2, "bias"), \
        str(report)


def test_sum_declared_as_mean_is_the_batch_reduction():
    params, X, Y = problem()
    report = jaxbp.verify(NET, params, X, Y, backprop=column_backprop, layout="columns",
                          batched=True)  # reduction="mean", but the function sums
    assert (report.ok, report.suspect) == (False, "batch"), str(report)


def test_rows_sum_reduction():
    params, X, Y = problem()

    def summed(p, X_, Y_):
        return jax.tree.map(lambda g: g * X_.shape[0], NET.grad(p, X_, Y_))

    assert jaxbp.verify(NET, params, X, Y, backprop=summed, batched=True, reduction="sum").ok


def test_flat_bias_in_column_layout_is_a_clear_error():
    params, X, Y = problem()
    with pytest.raises(jaxbp.BackpropError, match=r"layer 1 W0 has shape \(4,\); expected "
                                                  r"\(4, 1\) with layout='columns'"):
        jaxbp.verify(NET, params, X, Y, layout="columns",
                     backprop=lambda p, x, y: column_backprop(p, x, y, flat_bias=True))


@pytest.mark.parametrize("kwargs, match", [
    ({"layout": "cols"}, "layout: expected one of 'rows', 'columns', got 'cols'"),
    ({"reduction": "total"}, "reduction: expected one of 'mean', 'sum', got 'total'"),
    ({"layout": "columns", "backprop": None}, "pass it as backprop="),
], ids=["layout", "reduction", "no-backprop"])
def test_unknown_layout_or_reduction(kwargs, match):
    params, X, Y = problem()
    with pytest.raises(ValueError, match=match):
        jaxbp.verify(NET, params, X, Y, **kwargs)


def test_layouts_are_not_for_nn_models():
    model = jaxbp.nn.Sequential([jaxbp.nn.Linear(3)], "squared")
    params, X, Y = problem()
    with pytest.raises(TypeError, match="layout, reduction"):
        jaxbp.verify(model, params, X, Y, layout="columns")
