"""jaxbp.testing: assertions that pass with the report or fail with it as the message."""

import jax
import jax.numpy as jnp
import pytest

import jaxbp
import jaxbp.testing
from jaxbp import nn
from tests import _user_backprops as user

pytest_plugins = ["pytester"]

NET = jaxbp.Network(sizes=(3, 4, 3), activations=("tanh", "softmax"), loss="nll")


@pytest.fixture(scope="module")
def problem():
    params = NET.init(jax.random.key(0), dtype=jnp.float64)
    X = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    Y = jax.nn.one_hot(jnp.arange(8) % 3, 3, dtype=jnp.float64)
    return params, X, Y


def test_assert_backprop_returns_the_report_when_right(problem):
    params, X, Y = problem
    report = jaxbp.testing.assert_backprop(NET, params, X, Y, backprop=user.tanh_softmax_nll)
    assert isinstance(report, jaxbp.Report) and report.ok
    # The report's rows are real comparisons with jax.grad: every leaf within 1e-10.
    truth = jax.vmap(jax.grad(NET.loss), (None, 0, 0))(params, X, Y)
    mine = jax.vmap(user.tanh_softmax_nll, (None, 0, 0))(params, X, Y)
    worst = max(float(jnp.max(jnp.abs(a - b)))
                for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(truth)))
    assert worst < 1e-10
    assert max(r.max_abs_error for r in report.rows) == pytest.approx(worst, abs=1e-12)


def test_assert_backprop_fails_with_the_report(problem):
    params, X, Y = problem
    with pytest.raises(AssertionError, match=r"WRONG — layer 1, suspect: activation") as info:
        jaxbp.testing.assert_backprop(NET, params, X, Y,
                                      backprop=user.tanh_softmax_nll_wrong_derivative)
    message = str(info.value)
    assert message.startswith("assert_backprop: gradients disagree with the reference")
    assert "f^1'(z^1)" in message  # the explanation names the factor
    assert message.count("WRONG") == 3  # the verdict and the two rows of layer 1
    assert "max rel err" in message  # the table


def test_assert_backprop_batched_sum_is_a_batch_bug(problem):
    params, X, Y = problem
    def batch_sum(params, X, Y):  # the batch sum where the mean is due
        return jax.tree.map(lambda g: X.shape[0] * g, NET.grad(params, X, Y))

    with pytest.raises(AssertionError, match=r"suspect: batch"):
        jaxbp.testing.assert_backprop(NET, params, X, Y, backprop=batch_sum, batched=True)


def test_a_backprop_that_raises_fails_the_assertion(problem):
    params, X, Y = problem
    with pytest.raises(AssertionError, match=r"failed to run:\n.*RuntimeError"):
        jaxbp.testing.assert_backprop(NET, params, X, Y, backprop=user.raises)


def test_usage_errors_still_raise_as_usual(problem):
    params, X, Y = problem
    with pytest.raises(TypeError, match="net: expected a jaxbp.Network"):
        jaxbp.testing.assert_backprop("not a net", params, X, Y)


def _forward(W, x):
    return jnp.tanh(x @ W)


def _backward(W, x, dy):
    dz = dy * (1 - jnp.tanh(x @ W) ** 2)
    return jnp.outer(x, dz), W @ dz


def _backward_wrong_input(W, x, dy):
    dz = dy * (1 - jnp.tanh(x @ W) ** 2)
    return jnp.outer(x, dz), 2 * (W @ dz)  # the input cotangent doubled


@pytest.fixture(scope="module")
def primals():
    return (jax.random.normal(jax.random.key(2), (3, 2), jnp.float64),
            jax.random.normal(jax.random.key(3), (3,), jnp.float64))


def test_assert_vjp_returns_the_report_when_right(primals):
    report = jaxbp.testing.assert_vjp(_forward, _backward, *primals)
    assert report.ok and report.mode == "vjp"
    dy = jnp.ones(2)
    _, vjp = jax.vjp(_forward, *primals)
    for mine, truth in zip(_backward(*primals, dy), vjp(dy)):
        assert float(jnp.max(jnp.abs(mine - truth))) < 1e-12


def test_assert_vjp_fails_naming_the_primal(primals):
    with pytest.raises(AssertionError, match=r"WRONG — primal 1, suspect: backward"):
        jaxbp.testing.assert_vjp(_forward, _backward_wrong_input, *primals)


def _square(backward_factor):
    """y = x², a module whose backward is backward_factor · x · dy (right for 2)."""
    return nn.Module(f"square{backward_factor}", init=lambda key, shape, dtype: ((), shape),
                     forward=lambda params, X, key: (X * X, X),
                     backward=lambda params, X, dY: ((), backward_factor * X * dY))


@pytest.fixture(scope="module")
def batch():
    return jax.random.normal(jax.random.key(4), (4, 3), jnp.float64)


def test_assert_module_returns_the_report_when_right(batch):
    layer = nn.Linear(2)
    params, _ = layer.init(jax.random.key(5), (3,), jnp.float64)
    report = jaxbp.testing.assert_module(layer, params, batch)
    assert report.ok and report.mode == "module"
    dY = jnp.ones((4, 2))
    Y, residuals = layer.forward(params, batch, None)
    _, vjp = jax.vjp(lambda p, x: layer.forward(p, x, None)[0], params, batch)
    for mine, truth in zip(jax.tree.leaves(layer.backward(params, residuals, dY)),
                           jax.tree.leaves(vjp(dY))):
        assert float(jnp.max(jnp.abs(mine - truth))) < 1e-12


def test_assert_module_fails_naming_the_input_gradient(batch):
    assert jaxbp.testing.assert_module(_square(2.0), (), batch).ok
    with pytest.raises(AssertionError, match=r"check_module: WRONG .* suspect: input"):
        jaxbp.testing.assert_module(_square(1.0), (), batch)


def test_assert_backprop_on_a_model_names_the_module(batch):
    def model(square):
        return nn.Sequential([nn.Linear(3), square, nn.Linear(2)], loss="squared")

    Y = jax.random.normal(jax.random.key(6), (4, 2), jnp.float64)
    right = model(_square(2.0))
    params = right.init(jax.random.key(7), (3,), dtype=jnp.float64)
    assert jaxbp.testing.assert_backprop(right, params, batch, Y).ok
    with pytest.raises(AssertionError, match=r"WRONG — module 2 \(square1.0\)"):
        jaxbp.testing.assert_backprop(model(_square(1.0)), params, batch, Y)


def _mlp_loss(W1, W2, x, *, tap):
    z = tap("z", x @ W1)
    a = tap("a", jnp.tanh(z))
    out = tap("out", a @ W2)
    return jnp.sum(out ** 2)


@pytest.fixture(scope="module")
def mlp():
    keys = jax.random.split(jax.random.key(8), 3)
    args = (jax.random.normal(keys[0], (3, 4), jnp.float64),
            jax.random.normal(keys[1], (4, 2), jnp.float64),
            jax.random.normal(keys[2], (3,), jnp.float64))
    W1, W2, x = args
    z = x @ W1
    dout = 2 * (jnp.tanh(z) @ W2)
    da = W2 @ dout
    return args, {"out": dout, "a": da, "z": da * (1 - jnp.tanh(z) ** 2)}


def test_assert_intermediates_returns_the_report_when_right(mlp):
    args, grads = mlp
    report = jaxbp.testing.assert_intermediates(_mlp_loss, args, grads)
    assert report.ok and [r.name for r in report.rows] == ["out", "a", "z"]
    # the hand-written dz is jax.grad's, to round-off
    W1, W2, x = args
    truth = jax.grad(lambda z: jnp.sum((jnp.tanh(z) @ W2) ** 2))(x @ W1)
    assert float(jnp.max(jnp.abs(grads["z"] - truth))) < 1e-12


def test_assert_intermediates_fails_naming_the_value(mlp):
    args, grads = mlp
    z = args[2] @ args[0]
    wrong = {**grads, "z": grads["a"] * (1 - z ** 2)}  # tanh' written as 1 − z²
    with pytest.raises(AssertionError, match=r"check_intermediates: WRONG — dz, suspect: local "
                                             r"derivative"):
        jaxbp.testing.assert_intermediates(_mlp_loss, args, wrong)


_FAILING_TEST = '''
import jax, jax.numpy as jnp
import jaxbp.testing

def test_tanh_backward():
    backward = lambda x, dy: dy * (1 - x ** 2)   # bug: tanh' is 1 - tanh(x)**2
    jaxbp.testing.assert_vjp(jnp.tanh, backward, jnp.linspace(-1.0, 1.0, 5))
'''


def test_a_pytest_run_fails_with_the_report_in_the_message(pytester):
    pytester.makepyfile(test_user=_FAILING_TEST)
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: assert_vjp: gradients disagree*",
                                 "*WRONG — primal 0, suspect: backward*"])
    # jaxbp's own frames are hidden: the traceback stops at the user's line.
    assert "def _check" not in result.stdout.str()
