"""check_layer, check_loss, check_modules on the project's own course-style NumPy code
(tests/_numpy_course): every idiom passes with the jax truth, planted mistakes are named by
input, module and time step, and untraceable forwards fall back to central differences."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
import jaxbp.testing
from tests._numpy_course import char_rnn, homework as hw, idioms as I, layers as L, scratch as sc

R = np.random.default_rng(0)


def normal(*shape):
    return R.standard_normal(shape)


def wrong(backward, k, scale=1.5):
    """backward with its k-th gradient scaled: a planted mistake."""
    def bad(*args):
        out = list(backward(*args))
        out[k] = out[k] * scale
        return tuple(out)
    return bad


LAYERS = {  # id: (forward, backward, inputs, kwargs)
    "affine": (L.affine_forward, L.affine_backward, (normal(3, 2, 2), normal(4, 5), normal(5)), {}),
    "relu-mask": (L.relu_forward, L.relu_backward, (normal(4, 5),), {}),
    "dropout-seeded": (L.dropout_forward, L.dropout_backward,
                       (normal(4, 5), {"p": 0.6, "seed": 3}), {}),
    "batchnorm-dict": (L.batchnorm_forward, L.batchnorm_backward,
                       (normal(6, 3), normal(3), normal(3), {"momentum": 0.9}), {}),
    "conv-loops": (L.conv_forward_naive, L.conv_backward_naive,
                   (normal(1, 2, 4, 4), normal(2, 2, 3, 3), normal(2), {"stride": 1, "pad": 1}), {}),
    "maxpool-loops": (L.max_pool_forward_naive, L.max_pool_backward_naive,
                      (normal(1, 2, 4, 4), {"pool_height": 2, "pool_width": 2, "stride": 2}), {}),
    "rnn-bptt": (L.rnn_forward, L.rnn_backward,
                 (normal(2, 3, 4), normal(2, 3), normal(4, 3), normal(3, 3), normal(3)),
                 {"time_axis": 1}),
    "embedding-int": (L.embedding_forward, L.embedding_backward,
                      (np.array([[0, 2], [2, 1]]), normal(4, 3)), {}),
    "add-at": (I.scatter_sum_forward, I.scatter_sum_backward,
               (normal(4, 3), np.array([0, 2, 0, 1]), 3), {}),
    "slice-iadd-view": (I.window_sum_forward, I.window_sum_backward, (normal(3, 2),), {}),
    "lstm-two-outputs": (I.lstm_step_forward, I.lstm_step_backward,
                         (normal(2, 3), normal(2, 2), normal(2, 2), normal(3, 8), normal(2, 8),
                          normal(8)), {"gates": ("i", "f", "o", "g")}),
}


@pytest.mark.parametrize("case", list(LAYERS), ids=list(LAYERS))
def test_course_layers_pass_with_the_jax_truth(case):
    forward, backward, inputs, kwargs = LAYERS[case]
    report = jaxbp.testing.assert_layer(forward, backward, *inputs, trials=2, **kwargs)
    assert report.truth == "jax" and report.mode == "layer", str(report)


@pytest.mark.parametrize("case, k, name", [
    ("conv-loops", 1, "w"), ("batchnorm-dict", 0, "x"), ("affine", 2, "b"),
], ids=["conv-w", "batchnorm-x", "affine-b"])
def test_planted_mistake_is_named_by_input(case, k, name):
    forward, backward, inputs, kwargs = LAYERS[case]
    report = jaxbp.check_layer(forward, wrong(backward, k), *inputs, trials=2, **kwargs)
    assert (report.ok, report.first_bad, report.truth) == (False, name, "jax"), str(report)
    assert f"jaxbp.check_layer: WRONG — {name}" in str(report)


def test_dropped_carry_is_named_at_its_time_step():
    forward, _, inputs, _ = LAYERS["rnn-bptt"]

    def no_carry(dh, caches):  # the gradient carried from t to t − 1 forgotten
        N, T, H = dh.shape
        dx, grads = np.zeros((N, T, caches[0][0].shape[1])), None
        for t in reversed(range(T)):
            step = L.rnn_step_backward(dh[:, t, :], caches[t])
            dx[:, t, :] = step[0]
            grads = step[1:] if grads is None else tuple(
                a + b if i else b for i, (a, b) in enumerate(zip(grads, step[1:])))
        return (dx,) + grads

    report = jaxbp.check_layer(forward, no_carry, *inputs, trials=2, time_axis=1)
    assert (report.ok, report.first_bad, report.time_step) == (False, "x", 1), str(report)


def test_wrong_gate_is_named():
    forward, backward, inputs, _ = LAYERS["lstm-two-outputs"]
    report = jaxbp.check_layer(forward, lambda dh, dc, c: backward(dh, dc, c, slip_forget=True),
                               *inputs, trials=2, gates=("i", "f", "o", "g"))
    assert not report.ok and report.gate == ("f",), str(report)


def test_untraceable_forward_falls_back_to_finite_differences():
    x = normal(2, 3)
    report = jaxbp.check_layer(I.exp_loop_forward, I.exp_loop_backward, x, trials=2)
    assert report.ok and report.truth == "finite differences", str(report)
    assert "float() could not be traced" in report.notes[0]
    assert "idioms.py" in report.notes[0] and "math.exp(x[i, j])" in report.notes[0]
    one = np.ones((2, 3))
    one[1, 2] = 1.5  # one entry's derivative wrong
    bad = jaxbp.check_layer(I.exp_loop_forward, lambda d, out: d * out * one, x, trials=2)
    assert (bad.ok, bad.first_bad, bad.truth) == (False, "x", "finite differences"), str(bad)
    assert bad.rows[0].worst_entry == (1, 2)


def test_loss_and_grads_in_one_function():
    x, y = normal(5, 4), np.array([0, 3, 1, 1, 2])
    assert jaxbp.testing.assert_loss(L.softmax_loss, x, y).truth == "jax"
    half = lambda x, y: (L.softmax_loss(x, y)[0], L.softmax_loss(x, y)[1] / 2)
    report = jaxbp.check_loss(half, x, y)
    assert (report.ok, report.first_bad) == (False, "params"), str(report)


def test_dict_params_match_d_keys_and_ignore_extras():
    def two_layer(params, X, Y):
        h = np.maximum(0, X @ params["W1"])
        r = h @ params["W2"] - Y
        dh = (r @ params["W2"].T) * (h > 0)
        return 0.5 * np.sum(r ** 2), {"dW1": X.T @ dh, "dW2": h.T @ r, "dA1": dh}
    params = {"W1": normal(3, 4), "W2": normal(4, 2)}
    report = jaxbp.check_loss(two_layer, params, normal(5, 3), normal(5, 2))
    assert report.ok and [r.parameter for r in report.rows] == ["W1", "W2"], str(report)


def _char_rnn_loss(carry=1.0):
    def loss_and_grads(params, inputs, targets, hprev):
        for name, value in params.items():
            setattr(char_rnn, name, value)
        loss, dWxh, dWhh, dWhy, dbh, dby, _ = char_rnn.lossFun(inputs, targets, hprev, carry)
        return loss, {"Wxh": dWxh, "Whh": dWhh, "Why": dWhy, "bh": dbh, "by": dby}
    return loss_and_grads


def test_module_globals_recipe_and_nothing_traced_left_behind():
    params = {k: getattr(char_rnn, k).copy() for k in ("Wxh", "Whh", "Why", "bh", "by")}
    args = ([0, 1, 2, 3], [1, 2, 3, 0], np.zeros((5, 1)))
    assert jaxbp.check_loss(_char_rnn_loss(), params, *args).truth == "jax"
    for k in params:
        assert type(getattr(char_rnn, k)) is np.ndarray, k
    assert char_rnn.np is np
    report = jaxbp.check_loss(_char_rnn_loss(carry=0.0), params, *args)
    assert not report.ok and report.first_bad in ("Wxh", "Whh"), str(report)


def _homework(activation=hw.Tanh, loss=hw.NLL):
    rng = np.random.default_rng(1)
    return [hw.Linear(3, 4, rng), activation(), hw.Linear(4, 2, rng), hw.SoftMax()], loss()


X_COLUMNS, Y_COLUMNS = normal(3, 5), np.eye(2)[:, [0, 1, 1, 0, 1]]
X_ROWS, Y_ROWS = normal(6, 3), np.array([0, 2, 1, 1, 0, 2])


def _scratch(relu=sc.ReLU):
    rng = np.random.default_rng(2)
    return [sc.Dense(3, 4, rng), relu(), sc.Dense(4, 3, rng)], sc.SoftmaxCrossEntropy()


@pytest.mark.parametrize("build, X, Y, first_bad", [
    (lambda: _homework(), X_COLUMNS, Y_COLUMNS, None),
    (lambda: _homework(hw.SlipTanh), X_COLUMNS, Y_COLUMNS, "module 2 (SlipTanh) input"),
    (lambda: _homework(loss=hw.SignSlipNLL), X_COLUMNS, Y_COLUMNS,
     "module 5 (SignSlipNLL) input"),
    (lambda: _scratch(), X_ROWS, Y_ROWS, None),
    (lambda: _scratch(sc.ForgetfulReLU), X_ROWS, Y_ROWS, "module 2 (ForgetfulReLU) input"),
], ids=["homework-columns-fused", "homework-slip-tanh", "homework-nll-inside-fused-pair",
        "scratch-rows", "scratch-forgotten-mask"])
def test_module_objects(build, X, Y, first_bad):
    modules, loss = build()
    report = jaxbp.check_modules(modules, loss, X, Y)
    assert report.truth == "jax" and report.first_bad == first_bad, str(report)
    assert all(type(v) is not jaxbp.bridge.BArray for m in modules for v in vars(m).values())
    if first_bad is None and isinstance(loss, hw.NLL):
        assert any("fused" in n for n in report.notes)
        assert [r.parameter for r in report.rows if r.layer == 1] == ["input", "dLdW", "dLdW0"]


@pytest.mark.parametrize("activation, first_bad", [
    (hw.EntryTanh, None), (hw.EntrySlipTanh, "module 2 (EntrySlipTanh) input"),
], ids=["float-per-entry", "float-per-entry-slip"])
def test_untraceable_module_falls_back_to_finite_differences(activation, first_bad):
    modules, loss = _homework(activation)
    report = jaxbp.check_modules(modules, loss, X_COLUMNS, Y_COLUMNS)
    assert (report.truth, report.first_bad) == ("finite differences", first_bad), str(report)
    why = next(n for n in report.notes if "could not be traced" in n)
    assert "float()" in why and "homework.py" in why and "float(Z[index])" in why, why
    assert any("fused" in n for n in report.notes)
    assert all(type(v) is not jaxbp.bridge.BArray for m in modules for v in vars(m).values())


@pytest.mark.parametrize("assertion, check, args, first_line", [
    ("assert_layer", "check_layer", lambda: (L.affine_forward, wrong(L.affine_backward, 2),
                                             *LAYERS["affine"][2]),
     "jaxbp.check_layer: WRONG — b"),
    ("assert_loss", "check_loss", lambda: (
        lambda x, y: (L.softmax_loss(x, y)[0], 2 * L.softmax_loss(x, y)[1]), normal(3, 4),
        np.array([0, 3, 1])), "jaxbp.check_loss: WRONG — params"),
    ("assert_modules", "check_modules", lambda: (*_homework(hw.SlipTanh), X_COLUMNS,
                                                 Y_COLUMNS),
     "jaxbp.check_modules: WRONG — module 2 (SlipTanh)"),
], ids=["layer", "loss", "modules"])
def test_pytest_assertions_fail_with_the_report(assertion, check, args, first_line):
    args = args()
    with pytest.raises(AssertionError) as failed:
        getattr(jaxbp.testing, assertion)(*args)
    message = str(failed.value)
    assert message.startswith(f"{assertion}: gradients disagree with the reference\n"
                              f"{first_line}"), message
    assert message.endswith(str(getattr(jaxbp, check)(*args)))


def test_module_backprop_needs_no_flags_and_names_a_layout_mismatch():
    import jax
    from jaxbp.check._selftest import random_problem
    from tests import _homework as old
    net = jaxbp.Network(sizes=(3, 4, 2), activations=("tanh", "softmax"), loss="nll")
    params, X, Y = random_problem(net, 0, 8, jnp.float32)
    bp = jaxbp.adapters.module_backprop([old.Linear(3, 4), old.Tanh(), old.Linear(4, 2),
                                         old.SoftMax()], old.NLL())
    assert jaxbp.verify(net, params, X, Y, backprop=bp).ok
    with pytest.raises(jaxbp.BackpropError, match="layout mismatch: jaxbp called your NumPy "
                                                  "code with layout='rows'"):
        jaxbp.verify(net, params, X, Y, backprop=bp, layout="rows")
    del jax


def test_jax_checks_name_numpy_code():
    with pytest.raises(jaxbp.BackpropError, match="looks like NumPy code.*check_layer"):
        jaxbp.check_vjp(lambda x: np.tanh(x), lambda x, dy: dy, jnp.ones(3))
    with pytest.raises(jaxbp.BackpropError, match="looks like NumPy code.*check_loss"):
        jaxbp.finite_difference_grad(lambda w: np.sum(np.tanh(w)), jnp.ones(3))


def _every_table_primitive(x, w):
    """pad, dot, slices, updates, reductions, select, argmax, concat, elementwise, casts."""
    import jax
    p = jnp.pad(x, ((1, 1), (0, 2)))  # (5, 6)
    y = jnp.tanh(p[:, :4] @ w) + jnp.exp(-x.sum()) * jax.nn.sigmoid(p[1:4, 2:5]).mean()
    box = jax.lax.dynamic_slice(y, np.array([1, 0], np.uint32), (2, 3))
    y = jax.lax.dynamic_update_slice(y, box * 2.0, np.array([3, 0], np.uint32))
    z = jnp.where(y > 0, y, 0.1 * y) / jnp.sqrt(1.0 + y ** 2) + jnp.log1p(y ** 2)
    top = z[jnp.argmax(z[:, 0]), :]
    return jnp.concatenate([z.max(axis=0), top, jnp.abs(z).min(axis=1), z.T.reshape(-1)])


def test_numpy_primitives_match_xla_to_roundoff():
    import jax
    from jaxbp.check._numpy_eval import numpy_primitives
    x, w = normal(3, 4), normal(4, 3)
    dy = normal(*jax.eval_shape(_every_table_primitive, x, w).shape)

    def truth():
        y, pullback = jax.vjp(_every_table_primitive, jnp.asarray(x), jnp.asarray(w))
        return [np.asarray(v) for v in (y, *pullback(jnp.asarray(dy)))]
    with numpy_primitives():
        fast = truth()
        assert all(type(v) is np.ndarray for v in fast)
    for a, b in zip(fast, truth()):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
