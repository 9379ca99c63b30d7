"""check_vjp(order=2): your backward's own derivative against jax.vjp of jax.vjp; and
reverse-over-reverse through a jaxbp.custom_vjp layer whose backward is written in JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp


def dense_tanh(W, x):
    return jnp.tanh(x @ W)  # (m,) @ (m, n) -> (n,)


def backward(W, x, dy):
    dz = dy * (1 - jnp.tanh(x @ W) ** 2)  # f'(z) = 1 − tanh²(z)
    return jnp.outer(x, dz), W @ dz


def detached_activation(W, x, dy):  # right values; the derivative of f'(z) is hidden
    dz = dy * (1 - jax.lax.stop_gradient(jnp.tanh(x @ W)) ** 2)
    return jnp.outer(x, dz), W @ dz


def detached_dy(W, x, dy):  # right values; the backward looks constant in dy
    return backward(W, x, jax.lax.stop_gradient(dy))


# (id, backward, first wrong row at order 2 or None)
CASES = [
    ("right", backward, None),
    ("stop-gradient-activation", detached_activation, "primals[0] (order 2)"),
    ("stop-gradient-dy", detached_dy, "dy (order 2)"),
]


def point(dtype):
    kW, kx = jax.random.split(jax.random.key(0))
    return jax.random.normal(kW, (3, 4), dtype) / 2, jax.random.normal(kx, (3,), dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_order2_catches_a_wrong_derivative_of_right_values(case, dtype):
    _, bwd, first_bad = case
    assert jaxbp.check_vjp(dense_tanh, bwd, *point(dtype), trials=2).ok  # values right
    report = jaxbp.check_vjp(dense_tanh, bwd, *point(dtype), trials=2, order=2)
    labels = [r.parameter for r in report.rows]
    assert labels == ["primals[0]", "primals[1]", "primals[0] (order 2)",
                      "primals[1] (order 2)", "dy (order 2)"]
    assert report.rows[2].shape == (3, 4) and report.rows[4].shape == (4,)
    if first_bad is None:
        assert report.ok and all(r.max_rel_error < 1e-5 for r in report.rows), report
        return
    assert (report.ok, report.suspect, report.first_bad) == (False, "second order", first_bad)
    assert all(r.ok for r in report.rows[:2])
    assert report.primal == (0 if first_bad.startswith("primals") else None)
    assert first_bad in str(report) and "stop_gradient" in report.explanation()


def test_order2_needs_a_traceable_backward():
    def host_backward(W, x, dy):  # NumPy inside: right values, not differentiable by JAX
        W, x, dy = np.asarray(W), np.asarray(x), np.asarray(dy)
        dz = dy * (1 - np.tanh(x @ W) ** 2)
        return np.outer(x, dz), W @ dz

    assert jaxbp.check_vjp(dense_tanh, host_backward, *point(jnp.float64)).ok
    with pytest.raises(jaxbp.BackpropError, match="order=2 needs a backward written in JAX"):
        jaxbp.check_vjp(dense_tanh, host_backward, *point(jnp.float64), order=2)
    with pytest.raises(ValueError, match="order: expected 1 or 2, got 3"):
        jaxbp.check_vjp(dense_tanh, backward, *point(jnp.float64), order=3)


def loss(layer):
    return lambda W, x: jnp.sum(layer(W, x) ** 2)


LAYER = jaxbp.custom_vjp(dense_tanh, backward, name="dense_tanh")
DETACHED = jaxbp.custom_vjp(dense_tanh, detached_activation, name="detached")
# reverse-over-reverse: the Hessian of the loss in W, and ∂(∂L/∂W)/∂x
SECOND = jax.jit(jax.jacrev(jax.grad(lambda W, x, f: loss(f)(W, x)), argnums=(0, 1)),
                 static_argnums=2)


def test_reverse_over_reverse_through_custom_vjp():
    W, x = point(jnp.float64)
    want = SECOND(W, x, dense_tanh)
    for got, ref in zip(SECOND(W, x, LAYER), want):
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    # a backward that fails order=2 gives a wrong second derivative: the check matters
    wrong = SECOND(W, x, DETACHED)[0]
    assert np.max(np.abs(wrong - want[0])) > 1e-2
    # forward-over-reverse also differentiates your backward as JAX code
    np.testing.assert_allclose(jax.hessian(loss(LAYER))(W, x), jax.hessian(loss(dense_tanh))(W, x),
                               rtol=1e-12, atol=1e-12)
    # forward mode on the layer itself is refused by JAX (custom_vjp defines no JVP)
    with pytest.raises(TypeError, match="forward-mode autodiff"):
        jax.jvp(loss(LAYER), (W, x), (W, x))
    with jaxbp.checking() as log:  # checked while differentiated twice
        SECOND(W, x, LAYER)
    assert log.ok and log.records["dense_tanh"].calls >= 1, repr(log)
