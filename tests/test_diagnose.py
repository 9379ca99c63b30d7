"""report.diagnosis: each kind of mistake planted in a small JAX layer is named, at the right row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jaxbp
from jaxbp.check._diagnose import KINDS, merge

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def _vjp(f, *args):
    return jax.vjp(f, *args)[1]


def _border(x, w):
    """The input positions a SAME 3×3 window shares with the padding: the outer ring."""
    m = np.zeros(x.shape, bool)
    m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1] = True, True, True, True
    return m


IDS = np.array([1, 3, 1, 0, 3])  # rows 1 and 3 are gathered twice


def _max_rows(x):
    return jnp.max(x, axis=1)


def _ties_bwd(x, dy):  # every tied maximum gets the whole gradient (not a subgradient)
    return (jnp.where(x == x.max(axis=1, keepdims=True), dy[:, None], 0.0),)


def _points(dtype):
    k = jax.random.split(jax.random.key(0), 4)
    W = jax.random.normal(k[0], (3, 4), dtype)
    Wsq = jax.random.normal(k[0], (3, 3), dtype)
    x = jax.random.normal(k[1], (5, 3), dtype)
    b = jax.random.normal(k[2], (4,), dtype)
    img = jax.random.normal(k[3], (1, 5, 5, 2), dtype)
    ker = jax.random.normal(k[2], (3, 3, 2, 2), dtype)
    table = jax.random.normal(k[1], (6, 2), dtype)
    tied = jnp.array([[1, 3, 3, 0], [2, 0, 1, -1], [5, 5, 5, 1]], dtype)
    kinked = x.at[0, 0].set(0).at[2, 1].set(0)
    return dict(W=W, Wsq=Wsq, x=x, b=b, img=img, ker=ker, table=table, tied=tied,
                kinked=kinked, h0=jnp.zeros(3, dtype), xs=x[:4], Wh=Wsq / 2)


def _rnn(h0, xs, Wh):  # h_t = tanh(Wh h_{t−1} + x_t), every h_t out
    def step(h, x):
        h = jnp.tanh(Wh @ h + x)
        return h, h
    return jax.lax.scan(step, h0, xs)[1]


def _rnn_no_carry(h0, xs, Wh, dys):  # BPTT that forgets the gradient carried back in h
    hs = _rnn(h0, xs, Wh)
    dz = dys * (1 - hs ** 2)
    return (Wh.T @ dz[0], dz, dz.T @ jnp.concatenate([h0[None], hs[:-1]]))


# (id, forward, backward, primals, kind, where)
CASES = [
    ("scale", lambda W, x: x @ W, lambda W, x, dy: (x.T @ dy / 5, dy @ W.T), ("W", "x"),
     "scale", "primals[0]"),
    ("sign", lambda W, x: x @ W, lambda W, x, dy: (x.T @ dy, -(dy @ W.T)), ("W", "x"),
     "sign", "primals[1]"),
    ("transpose", lambda W, x: x @ W, lambda W, x, dy: ((x.T @ dy).T, dy @ W.T), ("Wsq", "x"),
     "transpose", "primals[0]"),
    ("flipped", conv, lambda x, w, dy: (_vjp(conv, x, w)(dy)[0],
                                        _vjp(conv, x, w)(dy)[1][::-1, ::-1]), ("img", "ker"),
     "flipped", "primals[1]"),
    ("masked", jax.nn.relu, lambda x, dy: (dy,), ("x",), "masked", "primals[0]"),
    ("repeated ids", lambda T: T[IDS], lambda T, dy: (jnp.zeros_like(T).at[IDS].set(dy),),
     ("table",), "repeated ids", "primals[0]"),
    ("ties", _max_rows, _ties_bwd, ("tied",), "ties", "primals[0]"),
    ("border", conv, lambda x, w, dy: (_vjp(conv, x, w)(dy)[0] * (1 + _border(x, w)),
                                       _vjp(conv, x, w)(dy)[1]), ("img", "ker"),
     "border", "primals[0]"),
    ("time steps", _rnn, _rnn_no_carry, ("h0", "xs", "Wh"), "time steps", "primals[1]"),
    ("missing term", lambda x: x * jnp.sin(x), lambda x, dy: (dy * jnp.sin(x),), ("x",),
     "missing term", "primals[0]"),
    ("reduction", lambda W, b, x: x @ W + b[None],
     lambda W, b, x, dy: (x.T @ dy, dy.mean(axis=0), dy @ W.T), ("W", "b", "x"),
     "reduction", "primals[1]"),
    ("clipped", lambda W, x: x @ W, lambda W, x, dy: (jnp.clip(x.T @ dy, -1, 1), dy @ W.T),
     ("W", "x"), "clipped", "primals[0]"),
    ("other", lambda W, x: x @ W, lambda W, x, dy: (x.T @ dy + 0.3 * (x.T ** 2) @ dy,
                                                    dy @ W.T), ("W", "x"), "other",
     "primals[0]"),
]


@pytest.fixture(scope="module", params=[jnp.float32, jnp.float64], ids=["f32", "f64"])
def points(request):
    return _points(request.param)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_planted_kind_is_named_first(case, points):
    _, forward, backward, names, kind, where = case
    report = jaxbp.check_vjp(forward, backward, *[points[n] for n in names])
    assert not report.ok
    first = report.diagnosis[0]
    assert (first.kind, first.where) == (kind, where), str(report)
    assert first.kind in KINDS
    assert f"diagnosis: {kind} at {where}" in str(report)
    assert report.to_dict()["diagnosis"][0]["kind"] == kind


def test_scale_says_what_it_matches(points):
    report = jaxbp.check_vjp(CASES[0][1], CASES[0][2], points["W"], points["x"])
    assert report.diagnosis[0].value == pytest.approx(0.2, rel=1e-5)
    assert "1/B (B = 5)" in report.diagnosis[0].detail


def test_kink_is_a_valid_subgradient_and_ok(points):
    """ReLU'(0) = 1 where jax.nn.relu takes 0: a finding of kind "kink", and ok."""
    report = jaxbp.check_vjp(jax.nn.relu, lambda x, dy: (dy * (x >= 0),), points["kinked"])
    assert report.ok and [f.kind for f in report.diagnosis] == ["kink"]


def test_tie_split_evenly_is_a_kink_not_ties(points):
    def first_max(x, dy):  # all of each row's gradient to its first maximum: a subgradient
        onehot = jax.nn.one_hot(jnp.argmax(x, axis=1), x.shape[1], dtype=x.dtype)
        return (onehot * dy[:, None],)
    report = jaxbp.check_vjp(_max_rows, first_max, points["tied"])
    assert report.ok and report.diagnosis[0].kind == "kink"


def test_masked_in_a_network_and_scale_in_a_model():
    net = jaxbp.Network(sizes=(3, 4, 2), activations=("relu", "softmax"), loss="nll")
    params = net.init(jax.random.key(0))
    X = jax.random.normal(jax.random.key(1), (8, 3))
    Y = jax.nn.one_hot(jnp.arange(8) % 2, 2)

    def no_relu_mask(params, x, y):
        a1 = jax.nn.relu(x @ params[0].W + params[0].W0)
        d2 = jax.nn.softmax(a1 @ params[1].W + params[1].W0) - y
        d1 = params[1].W @ d2  # relu'(z1) forgotten
        return (type(params[0])(jnp.outer(x, d1), d1), type(params[1])(jnp.outer(a1, d2), d2))

    report = jaxbp.verify(net, params, X, Y, backprop=no_relu_mask)
    assert {(f.kind, f.where) for f in report.diagnosis} >= {("masked", "layer 1 W0")}

    from jaxbp import nn
    lin = nn.Linear(2)
    half = lin._replace(backward=lambda p, r, dY: jax.tree.map(lambda g: g / 2,
                                                                lin.backward(p, r, dY)))
    model = nn.Sequential((nn.Linear(4), nn.Activation("tanh"), half), loss="squared")
    params = model.init(jax.random.key(0), (3,), dtype=jnp.float64)
    report = jaxbp.verify(model, params, X.astype(jnp.float64), Y.astype(jnp.float64))
    assert report.diagnosis[0].kind == "scale" and report.diagnosis[0].where.startswith(
        "module 3")


def test_shape_mismatch_names_the_kind(points):
    with pytest.raises(jaxbp.BackpropError, match="reduction"):
        jaxbp.check_vjp(lambda b, x: x @ points["W"] + b[None], lambda b, x, dy: (dy, dy @ points["W"].T),
                        points["b"], points["x"])


def test_merge_orders_and_deduplicates():
    a = jaxbp.Finding("scale", "w", "s", 2.0)
    b = jaxbp.Finding("mutates input", "w", "m")
    assert merge((a,), (b, a)) == (b, a)
    with pytest.raises(ValueError, match="kind"):
        merge((jaxbp.Finding("typo", "w", "x"),))


_shapes = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4))


@settings(max_examples=3, deadline=None)
@given(shape=_shapes, seed=st.integers(0, 99))
def test_correct_gradients_have_no_findings(shape, seed):
    B, m, n = shape
    k = jax.random.split(jax.random.key(seed), 3)
    W, b = jax.random.normal(k[0], (m, n)), jax.random.normal(k[1], (n,))
    x = jax.random.normal(k[2], (B, m))

    def forward(W, b, x):
        return jnp.max(jax.nn.relu(x @ W + b[None]), axis=-1)

    def backward(W, b, x, dy):
        return jax.vjp(forward, W, b, x)[1](dy)

    report = jaxbp.check_vjp(forward, backward, W, b, x)
    assert report.ok and report.diagnosis == (), str(report)


def test_experiment_names_every_planted_kind(tmp_path):
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).parent.parent / "experiments" / "diagnose.py"
    spec = importlib.util.spec_from_file_location("diagnose_experiment", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    results = script.main(out=str(tmp_path), dtype="float64")
    assert all(r["found"] == r["planted"] for r in results)
    assert (tmp_path / "table.md").read_text().count("\n") == len(results) + 2
