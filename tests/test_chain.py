"""jaxbp.chain / contract: the notes' factors, checked against jax.grad."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxbp
from jaxbp.check._selftest import make_network
from jaxbp import relative_error, rtol_for

TOL = rtol_for(jnp.float64)  # 1e-10
NAMES = tuple(jaxbp.ACTIVATIONS)


def last_ok(loss):
    return {"binary_nll": ("sigmoid",), "nll": ("softmax",)}.get(loss, NAMES)


def problem(net, seed):
    """float64 params with nonzero biases, one input and a valid target.

    NumPy's generator, not jax.random: eager jax.random compiles for every new
    shape, and the property tests draw many shapes.
    """
    rng = np.random.default_rng(seed)
    params = tuple(
        jaxbp.Dense(jnp.asarray(rng.normal(size=(m, n)) / np.sqrt(m)),
                    jnp.asarray(0.3 * rng.normal(size=n)))
        for m, n in net.layer_shapes)
    x = jnp.asarray(rng.normal(size=net.sizes[0]))
    n = net.sizes[-1]
    y = {"nll": lambda: np.eye(n)[rng.integers(n)],
         "binary_nll": lambda: rng.integers(0, 2, size=n).astype(float),
         "hinge": lambda: rng.choice([-1.0, 1.0], size=n),
         }.get(net.loss_name, lambda: rng.normal(size=n))()
    return params, x, jnp.asarray(y)


def ref_grads(net, params, x, y):
    return jax.grad(net.loss)(params, x, y)


# ------------------------------------------------------------ names, symbols, count

EXPECTED = {  # (L, l): the notes' chain, from the loss backwards
    (1, 1): ["∂L/∂a^1", "∂a^1/∂z^1", "∂z^1/∂W^1"],
    (2, 2): ["∂L/∂a^2", "∂a^2/∂z^2", "∂z^2/∂W^2"],
    (2, 1): ["∂L/∂a^2", "∂a^2/∂z^2", "∂z^2/∂a^1", "∂a^1/∂z^1", "∂z^1/∂W^1"],
    (3, 3): ["∂L/∂a^3", "∂a^3/∂z^3", "∂z^3/∂W^3"],
    (3, 2): ["∂L/∂a^3", "∂a^3/∂z^3", "∂z^3/∂a^2", "∂a^2/∂z^2", "∂z^2/∂W^2"],
    (3, 1): ["∂L/∂a^3", "∂a^3/∂z^3", "∂z^3/∂a^2", "∂a^2/∂z^2", "∂z^2/∂a^1", "∂a^1/∂z^1",
             "∂z^1/∂W^1"],
}


@pytest.mark.parametrize("L,l", list(EXPECTED), ids=[f"L{L}-l{l}" for L, l in EXPECTED])
def test_names_symbols_count_and_shapes_match_the_notes(L, l):
    sizes = (3, 4, 5, 2)[: L + 1]
    net = jaxbp.Network(sizes=sizes, activations=("tanh",) * L, loss="squared")
    params, x, y = problem(net, 0)
    factors = jaxbp.chain(net, params, x, y, layer=l)
    assert len(factors) == 2 * (L - l) + 3
    assert [f.symbol for f in factors] == EXPECTED[L, l]
    names = ["loss"] + ["activation", "link"] * (L - l) + ["activation", "weight"]
    assert [f.name for f in factors] == names
    shapes = [(sizes[L], 1)]
    for k in range(L, l, -1):
        shapes += [(sizes[k], sizes[k]), (sizes[k - 1], sizes[k])]
    shapes += [(sizes[l], sizes[l]), (sizes[l - 1], 1)]
    assert [f.value.shape for f in factors] == shapes


def test_values_come_from_the_tables():
    net = jaxbp.Network(sizes=(3, 4, 2), activations=("gelu", "softmax"), loss="nll")
    params, x, y = problem(net, 1)
    trace = net.forward_trace(params, x)
    f = jaxbp.chain(net, params, x, y, layer=1)
    close = dict(rtol=1e-14, atol=0)
    np.testing.assert_allclose(f[0].value[:, 0], jaxbp.LOSSES["nll"].dL_da(trace.a[2], y), **close)
    np.testing.assert_allclose(f[1].value, jaxbp.ACTIVATIONS["softmax"].df(trace.z[1]).T, **close)
    np.testing.assert_array_equal(f[2].value, params[1].W)
    np.testing.assert_allclose(f[3].value, jnp.diag(jaxbp.ACTIVATIONS["gelu"].df(trace.z[0])),
                               **close)
    np.testing.assert_array_equal(f[4].value[:, 0], x)


# ------------------------------------------------------------ 1-D: the plain product

@pytest.mark.parametrize("activation", NAMES)
@settings(max_examples=4)
@given(data=st.data())
def test_1d_product_of_values_is_jax_grad(activation, data):
    depth = data.draw(st.integers(1, 6), label="depth")
    acts = data.draw(st.lists(st.sampled_from(NAMES), min_size=depth, max_size=depth))
    acts[data.draw(st.integers(0, depth - 1), label="position")] = activation
    loss = data.draw(st.sampled_from(
        [n for n in jaxbp.LOSSES if acts[-1] in last_ok(n)]), label="loss")
    net = jaxbp.Network(sizes=(1,) * (depth + 1), activations=tuple(acts), loss=loss)
    params, x, y = problem(net, data.draw(st.integers(0, 2**16), label="seed"))
    grads = ref_grads(net, params, x, y)
    for l in range(1, depth + 1):
        factors = jaxbp.chain(net, params, x, y, layer=l)
        assert len(factors) == 2 * (depth - l) + 3
        product = math.prod(f.value for f in factors)  # every value is (1, 1)
        assert product.shape == (1, 1)
        err = relative_error(product, grads[l - 1].W)
        assert err <= TOL, (l, err, float(product[0, 0]), float(grads[l - 1].W[0, 0]))


def test_1d_scalars_accepted_and_the_notes_example_by_hand():
    """x → tanh → sigmoid, squared loss: the five numbers against the closed form."""
    net = jaxbp.Network(sizes=(1, 1, 1), activations=("tanh", "sigmoid"), loss="squared")
    W1, b1, W2, b2, x, y = 0.7, -0.2, -1.3, 0.4, 0.9, 0.25
    params = (jaxbp.Dense(jnp.array([[W1]]), jnp.array([b1])),
              jaxbp.Dense(jnp.array([[W2]]), jnp.array([b2])))
    a1 = np.tanh(W1 * x + b1)
    a2 = 1 / (1 + np.exp(-(W2 * a1 + b2)))
    want = [2 * (a2 - y), a2 * (1 - a2), W2, 1 - a1**2, x]
    got = [float(f.value[0, 0]) for f in jaxbp.chain(net, params, x, y, layer=1)]
    np.testing.assert_allclose(got, want, rtol=1e-14)
    np.testing.assert_allclose(
        float(jaxbp.contract(jaxbp.chain(net, params, x, y, layer=2))[0, 0]),
        2 * (a2 - y) * a2 * (1 - a2) * a1, rtol=1e-14)


# ------------------------------------------------------------ wide nets: contract

@st.composite
def wide_networks(draw):
    depth = draw(st.integers(1, 4))
    loss = draw(st.sampled_from(tuple(jaxbp.LOSSES)))
    hidden = draw(st.lists(st.sampled_from(NAMES), min_size=depth - 1, max_size=depth - 1))
    last = draw(st.sampled_from(last_ok(loss)))
    sizes = draw(st.lists(st.integers(1, 4), min_size=depth + 1, max_size=depth + 1))
    return make_network(sizes, hidden, last, loss)


@settings(max_examples=8)
@given(net=wide_networks(), seed=st.integers(0, 2**16))
def test_contract_is_jax_grad_for_wide_nets_weight_and_bias(net, seed):
    params, x, y = problem(net, seed)

    @jax.jit  # one compile per net; eager dispatch of every op costs more here
    def contracted(params, x, y):
        chains = [jaxbp.chain(net, params, x, y, layer=l) for l in range(1, net.num_layers + 1)]
        # ∂z^l/∂W0^l = 1: the chain without its weight factor is the bias gradient.
        return [(jaxbp.contract(c), jaxbp.contract(c[:-1])) for c in chains]

    grads = ref_grads(net, params, x, y)
    for l, (dW, dW0) in enumerate(contracted(params, x, y), start=1):
        assert dW.shape == net.layer_shapes[l - 1]
        assert relative_error(dW, grads[l - 1].W) <= TOL
        assert relative_error(dW0, grads[l - 1].W0) <= TOL


@pytest.mark.parametrize("sizes,acts,loss", [
    ((3, 4, 2), ("tanh", "softmax"), "nll"),
    ((2, 3, 3, 1), ("relu", "leaky_relu", "sigmoid"), "binary_nll"),
    ((4, 2, 3), ("softplus", "identity"), "squared"),
], ids=["softmax-nll", "sigmoid-bnll", "squared"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_contract_eager_and_jit(sizes, acts, loss, jit):
    net = jaxbp.Network(sizes=sizes, activations=acts, loss=loss)
    params, x, y = problem(net, 3)
    grads = ref_grads(net, params, x, y)

    def all_grads(params, x, y):
        return [jaxbp.contract(jaxbp.chain(net, params, x, y, layer=l))
                for l in range(1, net.num_layers + 1)]

    got = (jax.jit(all_grads) if jit else all_grads)(params, x, y)
    for l, g in enumerate(got, start=1):
        assert relative_error(g, grads[l - 1].W) <= TOL


@pytest.mark.parametrize("sizes,acts,loss", [
    ((3, 4, 3), ("tanh", "softmax"), "nll"),
    ((2, 3, 2), ("gelu", "sigmoid"), "binary_nll"),
], ids=["nll", "binary_nll"])
def test_loss_times_activation_is_the_fused_dL_dz(sizes, acts, loss):
    net = jaxbp.Network(sizes=sizes, activations=acts, loss=loss)
    params, x, y = problem(net, 4)
    factors = jaxbp.chain(net, params, x, y, layer=2)
    zL = net.forward_trace(params, x).z[-1]
    fused = jaxbp.LOSSES[loss].dL_dz(zL, y)  # a^L − y
    assert relative_error(jaxbp.contract(factors[:2]), fused) <= TOL
    assert relative_error(jaxbp.contract(factors[:2]), net.deltas(params, x, y)[-1]) <= TOL


def test_contract_accepts_vector_values():
    net = jaxbp.Network(sizes=(2, 3, 2), activations=("tanh", "identity"), loss="squared")
    params, x, y = problem(net, 5)
    factors = jaxbp.chain(net, params, x, y, layer=1)
    as_vectors = [f._replace(value=jnp.diag(f.value)) if f.name == "activation"
                  else f._replace(value=f.value[:, 0]) if f.value.shape[1] == 1 else f
                  for f in factors]
    np.testing.assert_allclose(jaxbp.contract(as_vectors), jaxbp.contract(factors), rtol=1e-15)


# ------------------------------------------------------------ bad input

NET = jaxbp.Network(sizes=(3, 4, 2), activations=("tanh", "sigmoid"), loss="squared")


@pytest.mark.parametrize("layer", [0, 3, -1])
def test_layer_out_of_range_names_the_range(layer):
    params, x, y = problem(NET, 0)
    with pytest.raises(ValueError, match=r"1\.\.L = 1\.\.2") as e:
        jaxbp.chain(NET, params, x, y, layer=layer)
    assert str(layer) in str(e.value)


@pytest.mark.parametrize("layer", ["1", 1.0, True])
def test_layer_of_wrong_type(layer):
    params, x, y = problem(NET, 0)
    with pytest.raises(TypeError, match="layer"):
        jaxbp.chain(NET, params, x, y, layer=layer)


def test_x_and_y_shapes_that_do_not_fit():
    params, x, y = problem(NET, 0)
    with pytest.raises(ValueError, match=r"x: expected shape \(m,\) with m=3, got \(2,\)"):
        jaxbp.chain(NET, params, x[:2], y, layer=1)
    with pytest.raises(ValueError, match=r"x: .*got \(1, 3\)"):
        jaxbp.chain(NET, params, x[None, :], y, layer=1)
    with pytest.raises(ValueError, match=r"y: expected shape \(n,\) = \(2,\).*got \(3,\)"):
        jaxbp.chain(NET, params, x, jnp.ones(3), layer=1)


def test_saturated_unfused_loss_factor_raises_and_points_to_the_fused_form():
    net = jaxbp.Network(sizes=(1, 2), activations=("softmax",), loss="nll")
    params = (jaxbp.Dense(jnp.array([[1e4, -1e4]]), jnp.zeros(2)),)
    with pytest.raises(ValueError, match="not finite.*fused"):
        jaxbp.chain(net, params, jnp.array([1.0]), jnp.array([0.0, 1.0]), layer=1)


def test_contract_rejects_malformed_chains():
    params, x, y = problem(NET, 0)
    f = jaxbp.chain(NET, params, x, y, layer=1)
    with pytest.raises(ValueError, match="got \\[\\]"):
        jaxbp.contract([])
    with pytest.raises(ValueError, match="loss factor"):
        jaxbp.contract(f[1:])
    with pytest.raises(ValueError, match="weight factor must be the last"):
        jaxbp.contract([f[0], f[1], f[4], f[2]])
    with pytest.raises(ValueError, match=r"shape \(4, 4\) does not chain.*\(2, 1\)"):
        jaxbp.contract([f[0], f[3]])
    with pytest.raises(TypeError, match="Factor"):
        jaxbp.contract([f[0], "W^2"])
