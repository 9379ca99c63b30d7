"""verify(model) and check_module on a user-written LSTM with the classic BPTT mistakes planted:
the report names the module, the time step and the gate.

The LSTM is written as a course would (CS231n's lstm_step_forward/backward, a Python loop over
t, gates i, f, o, g side by side); each mistake is one switch in its backward.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp import nn

B, T, D, H = 2, 5, 3, 4
GATES = ("i", "f", "o", "g")


def _sigmoid(a):
    return 1 / (1 + jnp.exp(-a))


def my_lstm(bug=None) -> nn.Module:
    """A hand-written LSTM module with one planted mistake (bug=None: correct)."""

    def init(key, in_shape, dtype):
        kx, kh, kb = jax.random.split(key, 3)
        params = nn.Recurrent(jax.random.normal(kx, (D, 4 * H), dtype) * 0.6,
                              jax.random.normal(kh, (H, 4 * H), dtype) * 0.6,
                              jax.random.normal(kb, (4 * H,), dtype) * 0.5)
        return params, (in_shape[0], H)

    def forward(p, X, key):
        h = c = jnp.zeros((X.shape[0], H), X.dtype)
        hs, cache = [], []
        for t in range(X.shape[1]):
            a = X[:, t] @ p.Wx + h @ p.Wh + p.b.reshape(1, -1)
            i, f, o = (_sigmoid(a[:, k * H:(k + 1) * H]) for k in range(3))
            g = jnp.tanh(a[:, 3 * H:])
            c_prev, c = c, f * c + i * g
            h_prev, h = h, o * jnp.tanh(c)
            hs.append(h)
            cache.append((X[:, t], h_prev, c_prev, i, f, o, g, c))
        return jnp.stack(hs, axis=1), cache

    def backward(p, cache, dY):
        dWx, dWh, db = jnp.zeros_like(p.Wx), jnp.zeros_like(p.Wh), jnp.zeros_like(p.b)
        dX = [None] * len(cache)
        dh_next = dc_next = jnp.zeros((dY.shape[0], H), dY.dtype)
        for t in reversed(range(len(cache))):
            x, h_prev, c_prev, i, f, o, g, c = cache[t]
            dh = dY[:, t] if bug == "dh dropped" else dY[:, t] + dh_next
            tc = jnp.tanh(c)
            dc = dc_next + dh * o * (1 - tc ** 2)
            di, df, do, dg = dc * g, dc * c_prev, dh * tc, dc * i
            df_da = df if bug == "forget derivative" else df * f * (1 - f)
            blocks = [di * i * (1 - i), df_da, do * o * (1 - o), dg * (1 - g ** 2)]
            if bug == "blocks swapped":  # backward assumes the order i, f, g, o
                blocks = [blocks[0], blocks[1], blocks[3], blocks[2]]
            da = jnp.concatenate(blocks, axis=1)
            dX[t] = da @ p.Wx.T
            dWx, dWh = dWx + x.T @ da, dWh + h_prev.T @ da
            db = db + jnp.sum(da, axis=0)
            dh_next, dc_next = da @ p.Wh.T, dc * f
        if bug == "bias gate zero":
            db = db.at[2 * H:3 * H].set(0.0)
        return nn.Recurrent(dWx, dWh, db), jnp.stack(dX, axis=1)

    return nn.Module(f"my_lstm[{bug}]", init, forward, backward, time_axis=1, gates=GATES)


def _problem(bug, dtype=jnp.float64):
    model = nn.Sequential([my_lstm(bug), nn.Linear(2)], "squared")
    params = model.init(jax.random.key(0), (T, D), dtype=dtype)
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.normal(size=(B, T, D)), dtype)
    return model, params, X, jnp.asarray(rng.normal(size=(B, T, 2)), dtype)


# (bug, suspect, time_step, words in the time note, the gates first in report.gate)
CASES = [
    pytest.param("dh dropped", "input", T - 2, f"right at t = {T - 1}, wrong at t = {T - 2} and "
                 "before: the gradient carried back through the state is lost", None,
                 id="dh-dropped"),
    pytest.param("forget derivative", "input", T - 1, "wrong at every step", {"f"},
                 id="forget-derivative-left-out"),
    pytest.param("blocks swapped", "input", T - 1, "wrong at every step", {"o", "g"},
                 id="two-gate-blocks-swapped"),
    pytest.param("bias gate zero", "param", None, None, {"o"}, id="one-gate-bias-zero"),
]


@pytest.mark.parametrize("bug,suspect,time_step,words,gates", CASES)
def test_verify_model_names_module_time_step_and_gate(bug, suspect, time_step, words, gates):
    model, params, X, Y = _problem(bug)
    report = jaxbp.verify(model, params, X, Y)
    assert not report.ok
    assert (report.first_bad_layer, report.module, report.suspect) == (1, f"my_lstm[{bug}]",
                                                                        suspect)
    assert report.time_step == time_step
    if words is not None:
        assert any(words in note for note in report.notes), report.notes
        steps = [r for r in report.rows if r.parameter.startswith("input t=")]
        assert [r.parameter for r in steps] == [f"input t={t}" for t in range(T)]
        assert [r.ok for r in steps] == [t > time_step for t in range(T)]
        assert f"t = {time_step} is the latest wrong step" in str(report)
    else:
        assert not any(r.parameter.startswith("input t=") for r in report.rows)
    if gates is None:
        assert set(report.gate) == set(GATES)  # a lost carry spreads into every block
    else:
        assert set(report.gate[:len(gates)]) == gates, report.gate
        assert "gate: " + ", ".join(report.gate) in str(report)
    if bug == "bias gate zero":
        assert report.gate == ("o",)
    if bug == "forget derivative":
        assert any("enters in gate f" in note for note in report.notes), report.notes


def test_correct_lstm_passes_both_ways():
    model, params, X, Y = _problem(None)
    report = jaxbp.verify(model, params, X, Y)
    assert report.ok and report.time_step is None and report.gate == ()
    assert jaxbp.check_module(my_lstm(None), params[0], X).ok


@pytest.mark.parametrize("bug,time_step,gate", [
    ("dh dropped", T - 2, None), ("bias gate zero", None, ("o",)),
    ("forget derivative", T - 1, "f"),
], ids=["dh-dropped", "one-gate-bias-zero", "forget-derivative-left-out"])
def test_check_module_names_time_step_and_gate(bug, time_step, gate):
    module = my_lstm(bug)
    params, _ = module.init(jax.random.key(0), (T, D), jnp.float64)
    X = jnp.asarray(np.random.default_rng(1).normal(size=(B, T, D)))
    report = jaxbp.check_module(module, params, X, trials=2)
    assert not report.ok and report.module == f"my_lstm[{bug}]"
    assert report.time_step == time_step
    if gate is None:
        assert set(report.gate) == set(GATES)
    elif isinstance(gate, tuple):
        assert report.gate == gate
    else:
        assert report.gate[0] == gate
    found = report.diagnosis[0]  # the same reading of time and gates, as a finding
    if bug == "dh dropped":
        assert (found.kind, found.where, found.value) == ("time steps", "input", T - 2)
    if bug == "bias gate zero":
        assert found.where == "b" and "(in gate block o)" in found.detail


def test_built_in_lstm_model_passes_in_float32():
    """The chain Embedding -> LSTM -> Linear -> softmax (fused nll) within float32's budget."""
    model = nn.Sequential([nn.Embedding(6, 3), nn.LSTM(4), nn.Linear(6),
                           nn.Activation("softmax")], "nll")
    params = model.init(jax.random.key(1), (T,))
    ids = jnp.asarray(np.random.default_rng(2).integers(0, 6, (B, T)))
    assert jaxbp.verify(model, params, ids, ids).ok


def test_check_module_names_a_gru_gate():
    """The built-in GRU with its z block's bias gradient zeroed: gate z alone (b_hn, (H,) with
    H = k = 3, is not split into blocks)."""
    gru = nn.GRU(3)

    def backward(p, residuals, dY):
        dp, dX = gru.backward(p, residuals, dY)
        return dp._replace(b=dp.b.at[3:6].set(0.0)), dX

    mine = gru._replace(name="my_gru", backward=backward)
    params, _ = gru.init(jax.random.key(0), (4, 2), jnp.float64)
    report = jaxbp.check_module(mine, params, jnp.asarray(np.random.default_rng(0).normal(
        size=(2, 4, 2))), trials=2)
    assert (report.ok, report.suspect, report.time_step, report.gate) == (False, "param", None,
                                                                         ("z",))
