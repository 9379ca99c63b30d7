"""Extreme logits: losses and gradients stay finite and match jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp import rtol_for
from tests._nets import assert_close


def _params_with_logits(net, logits, dtype):
    """A one-layer net whose logits for x = e_1 are exactly `logits`."""
    m, n = net.layer_shapes[0]
    W = jnp.zeros((m, n), dtype).at[0].set(jnp.asarray(logits, dtype))
    return (jaxbp.Dense(W, jnp.zeros((n,), dtype)),)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("loss,activation,logits,y", [
    ("nll", "softmax", [1e4, -1e4, 0.0], [0.0, 1.0, 0.0]),
    ("nll", "softmax", [1e4, -1e4, 0.0], [1.0, 0.0, 0.0]),
    ("binary_nll", "sigmoid", [1e3, -1e3], [0.0, 1.0]),
    ("binary_nll", "sigmoid", [1e3, -1e3], [1.0, 0.0]),
], ids=["nll-wrong", "nll-right", "bnll-wrong", "bnll-right"])
def test_extreme_logits(loss, activation, logits, y, dtype):
    n = len(logits)
    net = jaxbp.Network(sizes=(2, n), activations=(activation,), loss=loss)
    params = _params_with_logits(net, logits, dtype)
    x, y = jnp.array([1.0, 0.0], dtype), jnp.array(y, dtype)
    value = net.loss(params, x, y)
    assert np.isfinite(value)
    z = np.asarray(logits, np.float64)
    expected = {  # closed forms in float64
        "nll": float(np.sum(np.asarray(y) * (np.max(z) - z))),
        "binary_nll": float(np.sum(np.maximum(z, 0) - np.asarray(y) * z)),
    }[loss]
    np.testing.assert_allclose(float(value), expected, rtol=1e-6)
    assert_close(net.backprop(params, x, y), jax.grad(net.loss)(params, x, y), rtol_for(dtype))
    X, Y = jnp.stack([x, x]), jnp.stack([y, y])
    assert_close(net.grad(params, X, Y), jax.grad(net.batch_loss)(params, X, Y), rtol_for(dtype))
