"""Each activation's hand-written derivative against jax.grad of its forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp

ELEMENTWISE = [n for n, a in jaxbp.ACTIVATIONS.items() if a.elementwise]


def _z(dtype, n=64):
    z = jax.random.normal(jax.random.key(0), (n,), dtype) * 3
    return jnp.where(jnp.abs(z) < 1e-3, 0.5, z)  # away from the kinks


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_derivative_matches_jax_grad(name, jit):
    act = jaxbp.ACTIVATIONS[name]
    z = _z(jnp.float64)
    df = jax.jit(act.df) if jit else act.df
    want = jax.vmap(jax.grad(act.f))(z)
    np.testing.assert_allclose(df(z), want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_elementwise_vjp_is_product_with_derivative(name):
    act = jaxbp.ACTIVATIONS[name]
    z = _z(jnp.float64)
    g = jax.random.normal(jax.random.key(1), z.shape, jnp.float64)
    _, vjp = jax.vjp(act.f, z)
    np.testing.assert_allclose(act.vjp(z, act.f(z), g), vjp(g)[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,z0,expected", [
    ("relu", 0.0, 0.0), ("leaky_relu", 0.0, 1.0)])
def test_kink_subgradient_choice(name, z0, expected):
    """relu'(0) = 0 and leaky_relu'(0) = 1, the same as jax.grad of the forward."""
    act = jaxbp.ACTIVATIONS[name]
    z = jnp.array([z0])
    assert float(act.df(z)[0]) == expected
    assert float(jax.grad(lambda t: act.f(t)[0])(z)[0]) == expected


def test_gelu_is_the_tanh_approximation():
    z = _z(jnp.float64)
    np.testing.assert_allclose(jaxbp.ACTIVATIONS["gelu"].f(z), jax.nn.gelu(z, approximate=True),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_softmax_jacobian_and_vjp(jit):
    act = jaxbp.ACTIVATIONS["softmax"]
    z = jax.random.normal(jax.random.key(2), (5,), jnp.float64)
    df = jax.jit(act.df) if jit else act.df
    np.testing.assert_allclose(df(z), jax.jacobian(act.f)(z), rtol=1e-12, atol=1e-15)
    # The vjp on a batch never builds (B, n, n) and matches jax.vjp row by row.
    Z = jax.random.normal(jax.random.key(3), (7, 5), jnp.float64)
    G = jax.random.normal(jax.random.key(4), (7, 5), jnp.float64)
    _, vjp = jax.vjp(act.f, Z)
    vjp_fn = jax.jit(act.vjp) if jit else act.vjp
    np.testing.assert_allclose(vjp_fn(Z, act.f(Z), G), vjp(G)[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", ["sigmoid", "softplus", "tanh", "softmax", "gelu"])
def test_large_inputs_stay_finite(name):
    act = jaxbp.ACTIVATIONS[name]
    for dtype in (jnp.float32, jnp.float64):
        z = jnp.array([-1e4, -1e3, 0.0, 1e3, 1e4], dtype)
        assert np.all(np.isfinite(act.f(z)))
        g = jnp.ones_like(z)
        assert np.all(np.isfinite(act.vjp(z, act.f(z), g)))


def test_unknown_activation_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown activation 'swish'.*relu"):
        jaxbp.get_activation("swish")
