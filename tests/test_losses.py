"""Each loss's hand-written ∂L/∂a (and fused ∂L/∂z) against jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp


def _pair(name, n=4, dtype=jnp.float64):
    k1, k2 = jax.random.split(jax.random.key(0))
    z = jax.random.normal(k1, (n,), dtype)
    if name == "nll":
        return jax.nn.softmax(z), jax.nn.one_hot(2, n, dtype=dtype), z
    if name == "binary_nll":
        return jax.nn.sigmoid(z), jnp.array([1, 0, 1, 0][:n], dtype), z
    if name == "hinge":
        return z[:1] * 0.4, jnp.array([-1.0], dtype), z[:1]
    return z, jax.random.normal(k2, (n,), dtype), z


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(jaxbp.LOSSES))
def test_dL_da_matches_jax_grad(name, jit):
    loss = jaxbp.LOSSES[name]
    a, y, _ = _pair(name)
    dL_da = jax.jit(loss.dL_da) if jit else loss.dL_da
    np.testing.assert_allclose(dL_da(a, y), jax.grad(loss.value)(a, y), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["nll", "binary_nll"])
def test_fused_form_matches_unfused_and_jax_grad(name):
    loss = jaxbp.LOSSES[name]
    act = jaxbp.ACTIVATIONS[loss.requires_activation]
    a, y, z = _pair(name)
    np.testing.assert_allclose(loss.value_from_z(z, y), loss.value(act.f(z), y), rtol=1e-12)
    np.testing.assert_allclose(loss.dL_dz(z, y), jax.grad(loss.value_from_z)(z, y),
                               rtol=1e-12, atol=1e-15)
    # The notes' two factors multiplied: ∂L/∂a · ∂a/∂z = a − y.
    np.testing.assert_allclose(act.vjp(z, a, loss.dL_da(a, y)), a - y, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(loss.dL_dz(z, y), a - y, rtol=1e-12, atol=1e-15)


def test_squared_and_hinge_closed_forms():
    sq = jaxbp.LOSSES["squared"]
    assert float(sq.value(jnp.array([1.0, 3.0]), jnp.array([0.0, 1.0]))) == 5.0
    h = jaxbp.LOSSES["hinge"]
    assert float(h.value(jnp.array([0.25]), jnp.array([1.0]))) == 0.75
    assert float(h.value(jnp.array([2.0]), jnp.array([1.0]))) == 0.0
    # At the margin (y·a = 1) the subgradient is 0, as jax.grad of the value gives.
    a, y = jnp.array([1.0]), jnp.array([1.0])
    assert float(h.dL_da(a, y)[0]) == float(jax.grad(h.value)(a, y)[0]) == 0.0


def test_unknown_loss_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown loss 'mse'.*squared.*hinge.*binary_nll.*nll"):
        jaxbp.get_loss("mse")
