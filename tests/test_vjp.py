"""check_vjp against jax.vjp, and custom_vjp training with a checked backward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp


def dense_tanh(W, x):
    return jnp.tanh(x @ W)


def dense_tanh_backward(W, x, dy):
    dz = dy * (1 - jnp.tanh(x @ W) ** 2)  # f'(z) = 1 − tanh²(z)
    return jnp.outer(x, dz), W @ dz  # weight factor x, link W


def softmax_backward(z, dy):
    a = jax.nn.softmax(z)
    return (a * (dy - jnp.dot(a, dy)),)


def softmax_elementwise_backward(z, dy):  # the classic bug
    a = jax.nn.softmax(z)
    return (a * (1 - a) * dy,)


def pytree_forward(p, x):
    return jnp.tanh(x @ p["W"] + p["b"])


def pytree_backward(p, x, dy):
    dz = dy * (1 - pytree_forward(p, x) ** 2)
    return {"W": jnp.outer(x, dz), "b": dz}, p["W"] @ dz


def primals(dtype):
    kW, kx = jax.random.split(jax.random.key(0))
    return (jax.random.normal(kW, (3, 4), dtype) / 2, jax.random.normal(kx, (3,), dtype))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_correct_backward_passes(dtype):
    report = jaxbp.check_vjp(dense_tanh, dense_tanh_backward, *primals(dtype), trials=4)
    assert report.ok and report.mode == "vjp" and report.batch_size == 4
    assert [r.parameter for r in report.rows] == ["primals[0]", "primals[1]"]
    assert all(r.max_rel_error < 1e-5 for r in report.rows)
    z = jnp.linspace(-1, 2, 5, dtype=dtype)
    assert jaxbp.check_vjp(jax.nn.softmax, softmax_backward, z).ok
    p = {"W": primals(dtype)[0], "b": jnp.ones(4, dtype)}
    report = jaxbp.check_vjp(pytree_forward, pytree_backward, p, primals(dtype)[1])
    assert report.ok
    assert [r.parameter for r in report.rows] == ["primals[0]['W']", "primals[0]['b']",
                                                  "primals[1]"]


def test_wrong_backward_names_primal_and_entry():
    W, x = primals(jnp.float32)

    def backward(W, x, dy):
        dW, dx = dense_tanh_backward(W, x, dy)
        return dW, dx.at[2].multiply(1 + 1e-3)

    report = jaxbp.check_vjp(dense_tanh, backward, W, x)
    assert (report.ok, report.primal, report.suspect) == (False, 1, "backward")
    bad = report.bad_rows
    assert len(bad) == 1 and bad[0].worst_entry == (2,)
    assert bad[0].budget < bad[0].max_rel_error <= 1e-3 * (1 + 1e-4)
    z = jnp.linspace(-1, 2, 5)
    report = jaxbp.check_vjp(jax.nn.softmax, softmax_elementwise_backward, z)
    assert (report.ok, report.primal) == (False, 0)


def test_exact_error_numbers():
    W, x = primals(jnp.float64)
    dy_key = jax.random.key(5)

    def backward(W, x, dy):
        dW, dx = dense_tanh_backward(W, x, dy)
        return 2 * dW, dx

    report = jaxbp.check_vjp(dense_tanh, backward, W, x, key=dy_key, trials=2)
    dys = [jax.random.normal(jax.random.split(k, 1)[0], (4,)) for k in jax.random.split(dy_key, 2)]
    want = max(float(jnp.max(jnp.abs(jax.vjp(dense_tanh, W, x)[1](dy)[0]))) for dy in dys)
    row = report.rows[0]
    assert row.max_abs_error == pytest.approx(want, rel=1e-12)  # 2·dW − dW = dW
    assert row.max_rel_error == pytest.approx(1.0, rel=1e-12)


def test_nonfinite_and_bad_outputs():
    W, x = primals(jnp.float32)
    report = jaxbp.check_vjp(dense_tanh, lambda W, x, dy: (W * jnp.nan, W @ dy), W, x)
    assert (report.suspect, report.primal) == ("nonfinite", 0)
    with pytest.raises(jaxbp.BackpropError, match="expected a tuple of 2 cotangents"):
        jaxbp.check_vjp(dense_tanh, lambda W, x, dy: (W,), W, x)
    with pytest.raises(jaxbp.BackpropError, match=r"cotangent 0 has shape \(4, 3\)"):
        jaxbp.check_vjp(dense_tanh, lambda W, x, dy: (W.T, x), W, x)
    with pytest.raises(jaxbp.BackpropError, match="ZeroDivisionError on trial 0"):
        jaxbp.check_vjp(dense_tanh, lambda W, x, dy: 1 / 0, W, x)
    with pytest.raises(TypeError, match="primals\\[1\\]"):
        jaxbp.check_vjp(dense_tanh, dense_tanh_backward, W, jnp.arange(3))
    with pytest.raises(ValueError, match="trials"):
        jaxbp.check_vjp(dense_tanh, dense_tanh_backward, W, x, trials=0)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_custom_vjp_uses_your_backward(jit):
    W, x = primals(jnp.float32)
    layer = jaxbp.custom_vjp(dense_tanh, dense_tanh_backward)
    grad = jax.grad(lambda W, x: jnp.sum(layer(W, x) ** 2), argnums=(0, 1))
    grad = jax.jit(grad) if jit else grad
    want = jax.grad(lambda W, x: jnp.sum(dense_tanh(W, x) ** 2), argnums=(0, 1))(W, x)
    for g, w in zip(grad(W, x), want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    # with a wrong backward the gradient is the wrong one: yours really is used
    wrong = jaxbp.custom_vjp(dense_tanh, lambda W, x, dy: (2 * dense_tanh_backward(W, x, dy)[0],
                                                           dense_tanh_backward(W, x, dy)[1]))
    gW = jax.grad(lambda W: jnp.sum(wrong(W, x) ** 2))(W)
    np.testing.assert_allclose(gW, 2 * want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer(W, x), dense_tanh(W, x))


def test_custom_vjp_trains():
    W, x = primals(jnp.float32)
    target = jnp.array([0.5, -0.5, 0.25, 0.0])
    layer = jaxbp.custom_vjp(dense_tanh, dense_tanh_backward)

    def loss(W):
        return jnp.sum((layer(W, x) - target) ** 2)

    step = jax.jit(lambda W: W - 0.1 * jax.grad(loss)(W))
    start = float(loss(W))
    for _ in range(50):
        W = step(W)
    assert float(loss(W)) < 0.1 * start
