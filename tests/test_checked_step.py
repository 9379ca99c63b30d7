"""make_step with your own batched grad and check_every: a bug that appears only in a
state reached later is caught on the next checked step, named by step, layer and
suspect; a correct grad trains exactly like the manual step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxbp
from tests._nets import assert_close, make_problem

NET = jaxbp.Network(sizes=(3, 8, 3), activations=("tanh", "softmax"), loss="nll")
B = 32


def batched_grad(params, X, Y, *, saturate=None):
    """The notes' chain on a row batch, mean over the batch. ``saturate``: the bug of
    taking tanh' as 0 where |z| > saturate (true tanh'(2) = 0.07, not 0)."""
    (W1, b1), (W2, b2) = params
    z1 = X @ W1 + b1.reshape(1, -1)  # (B, m) @ (m, n) -> (B, n)
    a1 = jnp.tanh(z1)
    z2 = a1 @ W2 + b2.reshape(1, -1)
    dz2 = (jax.nn.softmax(z2, axis=1) - Y) / X.shape[0]  # the mean's 1/B, once
    fprime = 1 - a1 ** 2
    if saturate is not None:
        fprime = jnp.where(jnp.abs(z1) > saturate, 0.0, fprime)
    dz1 = (dz2 @ W2.T) * fprime
    return ((X.T @ dz1, dz1.sum(0)), (a1.T @ dz2, dz2.sum(0)))  # plain pairs are fine


def buggy_grad(params, X, Y):
    return batched_grad(params, X, Y, saturate=2.0)


def batches(scales, seed=0):
    _, X, Y = make_problem(NET, seed, B, jnp.float32)
    return [(X * s, Y) for s in scales]


def test_buggy_grad_is_caught_on_the_next_checked_step():
    params, _, _ = make_problem(NET, 0, B, jnp.float32)
    optimizer = optax.sgd(0.05)
    step = jaxbp.make_step(NET, optimizer, grad=buggy_grad, check_every=2)
    opt_state = optimizer.init(params)
    # small inputs: |z| < 2 and the bug is silent; from step 3 the inputs are large
    data = batches([0.1, 0.1, 0.1, 10.0, 10.0])
    for X, Y in data[:4]:  # steps 0 and 2 are checked and pass; step 3 is not checked
        params, opt_state, _ = step(params, opt_state, X, Y)
    assert step.count == 4
    with pytest.raises(jaxbp.BackpropError) as info:
        step(params, opt_state, *data[4])
    message = str(info.value)
    assert message.startswith("step 4: your gradient disagrees with jax.grad")
    assert "first bad layer 1" in message and "suspect 'activation'" in message
    report = info.value.report
    assert (report.first_bad_layer, report.suspect) == (1, "activation")
    # the disagreement is real: the buggy gradient against jax.grad on that batch
    truth = jax.grad(NET.batch_loss)(params, *data[4])
    assert np.max(np.abs(np.asarray(buggy_grad(params, *data[4])[0][0]) - truth[0].W)) > 1e-3
    assert step.count == 4  # the failing step was not taken


def test_correct_grad_trains_like_the_manual_step():
    params0, _, _ = make_problem(NET, 1, B, jnp.float64)
    optimizer = optax.adam(1e-2)
    checked = jaxbp.make_step(NET, optimizer, grad=batched_grad, check_every=3)
    manual = jaxbp.make_step(NET, optimizer, grad="manual")
    state = {"checked": (params0, optimizer.init(params0)),
             "manual": (params0, optimizer.init(params0))}
    data = batches([1.0, 3.0, 0.5, 10.0, 1.0, 2.0, 1.0], seed=1)
    losses = {"checked": [], "manual": []}
    for X, Y in data:
        for name, step in (("checked", checked), ("manual", manual)):
            params, opt_state, loss = step(*state[name], X.astype(jnp.float64),
                                           Y.astype(jnp.float64))
            state[name] = (params, opt_state)
            losses[name].append(float(loss))
    assert checked.count == len(data)
    assert_close(state["checked"][0], state["manual"][0], 1e-10)
    np.testing.assert_allclose(losses["checked"], losses["manual"], rtol=1e-12)


def test_checked_step_lowers_ahead_of_time_like_the_plain_step():
    params, X, Y = make_problem(NET, 2, B, jnp.float32)
    optimizer = optax.sgd(0.1)
    opt_state = optimizer.init(params)
    checked = jaxbp.make_step(NET, optimizer, check_every=5)
    compiled = checked.lower(params, opt_state, X, Y).compile()
    want = jaxbp.make_step(NET, optimizer)(params, opt_state, X, Y)
    got_checked, got_compiled = checked(params, opt_state, X, Y), compiled(params, opt_state, X, Y)
    for got in (got_checked, got_compiled):
        assert_close(got[0], want[0], 1e-6)


@pytest.mark.parametrize("check_every", [0, -1, 1.5, True, "2"])
def test_check_every_must_be_a_positive_int(check_every):
    with pytest.raises(ValueError, match="check_every: expected None or an int >= 1"):
        jaxbp.make_step(NET, optax.sgd(0.1), check_every=check_every)


def _model_with(tanh_backward):
    from jaxbp import nn

    base = nn.Activation("tanh")
    mine = nn.Module("my_tanh", base.init, base.forward, tanh_backward)
    return nn.Sequential([nn.Linear(6), mine, nn.Linear(3), nn.Activation("softmax")], "nll")


def _right_tanh(params, residuals, dA):
    return (), dA * (1 - residuals[1] ** 2)


def _wrong_tanh(params, residuals, dA):
    return (), dA * (1 - residuals[0] ** 2)  # bug: 1 − z² instead of 1 − a²


@pytest.mark.parametrize("tanh_backward, bad", [(_right_tanh, False), (_wrong_tanh, True)],
                         ids=["right", "wrong"])
def test_check_every_on_a_model_names_the_module(tanh_backward, bad):
    """A jaxbp.nn model's own chain, checked every 2 steps: a wrong module is named."""
    model = _model_with(tanh_backward)
    params = model.init(jax.random.key(0), (4,))
    optimizer = optax.sgd(0.1)
    step = jaxbp.make_step(model, optimizer, check_every=2)
    X = jax.random.normal(jax.random.key(1), (16, 4))
    Y = jax.nn.one_hot(jnp.arange(16) % 3, 3)
    state = (params, optimizer.init(params))
    if not bad:
        for _ in range(3):
            state = step(*state, X, Y)[:2]
        assert step.count == 3
        return
    with pytest.raises(jaxbp.BackpropError, match=r"step 0: .*first bad module 2 \(my_tanh\), "
                                                  r"suspect 'input'"):
        step(*state, X, Y)


def test_check_every_on_a_model_with_your_grad_function():
    model = _model_with(_right_tanh)
    params = model.init(jax.random.key(0), (4,))

    def my_grad(params, X, Y):  # the model's own gradient, the last Linear's W doubled
        grads = model.grad(params, X, Y)
        return grads[:2] + (grads[2]._replace(W=2 * grads[2].W),) + grads[3:]

    optimizer = optax.sgd(0.1)
    step = jaxbp.make_step(model, optimizer, grad=my_grad, check_every=1)
    X = jax.random.normal(jax.random.key(1), (16, 4))
    Y = jax.nn.one_hot(jnp.arange(16) % 3, 3)
    with pytest.raises(jaxbp.BackpropError, match=r"first bad module 3 \(Linear\(3\)\), "
                                                  r"suspect 'param'"):
        step(params, optimizer.init(params), X, Y)
