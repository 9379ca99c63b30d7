"""jaxbp.check._sequence: reading a wrong gradient along time and across gate blocks."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxbp.check._sequence import TimeLocation, gate_errors, locate_gates, locate_time, time_errors

T = 6


def _planted(steps, value=0.1):
    truth = np.linspace(-1.0, 1.0, 2 * T * 3).reshape(2, T, 3)
    yours = truth.copy()
    for t in steps:
        yours[1, t, 2] += value
    return yours, truth


@pytest.mark.parametrize("steps, time_step, pattern, words", [
    ((0, 1, 2, 3), 3, "carried", "right from t = 5 down to t = 4, wrong at t = 3 and before"),
    ((0, 1, 2, 3, 4), 4, "carried", "right at t = 5, wrong at t = 4 and before"),
    ((2, 3, 4), 4, "carried", "wrong from t = 4 down to t = 2"),
    ((3,), 3, "local", "wrong only at t = 3"),
    ((0,), 0, "local", "wrong only at t = 0"),
    ((5,), 5, "local", "wrong only at t = 5"),
    ((1, 3), 3, "spread", "wrong at t = 3, 1"),
    (tuple(range(T)), 5, "spread", "wrong at every step"),
], ids=["carried", "carried-last", "carried-decayed", "local", "local-first", "local-last",
        "gaps", "everywhere"])
def test_locate_time(steps, time_step, pattern, words):
    yours, truth = _planted(steps)
    loc = locate_time(yours, truth, axis=1, budget_abs=1e-9)
    assert isinstance(loc, TimeLocation)
    assert (loc.time_step, loc.pattern) == (time_step, pattern)
    assert words in loc.message
    assert len(loc.per_step) == T and all(isinstance(e, float) for e in loc.per_step)
    assert [e > 1e-9 for e in loc.per_step] == [t in steps for t in range(T)]


def test_time_errors_axis_jax_and_nonfinite():
    yours, truth = _planted((2,), value=0.25)
    np.testing.assert_allclose(time_errors(jnp.asarray(yours), truth, axis=1),
                               [0, 0, 0.25, 0, 0, 0], atol=1e-12)
    moved = np.moveaxis(yours, 1, -1), np.moveaxis(truth, 1, -1)
    assert time_errors(*moved, axis=-1).argmax() == 2
    yours[0, 4, 0] = np.nan
    assert time_errors(yours, truth, axis=1)[4] == np.inf
    assert locate_time(truth, truth, axis=1, budget_abs=0.0) is None
    with pytest.raises(ValueError, match="shape"):
        time_errors(yours[:, :3], truth, axis=1)
    with pytest.raises(ValueError, match="axis"):
        time_errors(yours, truth, axis=3)


@pytest.mark.parametrize("edit, expected", [
    (lambda w: w.__setitem__((slice(None), slice(2, 4)), 0.0), ("f",)),
    (lambda w: w.__setitem__(slice(None), w[:, [0, 1, 4, 5, 2, 3, 6, 7]]), ("f", "o")),
    (lambda w: None, ()),
], ids=["zeroed-block", "swapped", "right"])
def test_locate_gates(edit, expected):
    truth = np.arange(1.0, 25.0).reshape(3, 8)
    yours = truth.copy()
    edit(yours)
    got = locate_gates(yours, truth, gates=("i", "f", "o", "g"), budget_abs=1e-9)
    assert got == expected
    errors = gate_errors(yours, truth, gates=("i", "f", "o", "g"))
    assert list(errors) == ["i", "f", "o", "g"]
    assert {g for g, e in errors.items() if e > 1e-9} == set(expected)


def test_gates_not_gated_and_bad_input():
    assert locate_gates(np.ones((3, 7)), np.zeros((3, 7)), gates=("r", "z", "n"),
                        budget_abs=0.0) == ()
    assert locate_gates(np.float64(1.0), np.float64(0.0), gates=("r",), budget_abs=0.0) == ()
    with pytest.raises(ValueError, match="3·H"):
        gate_errors(np.ones(7), np.zeros(7), gates=("r", "z", "n"))
    with pytest.raises(ValueError, match="gates"):
        gate_errors(np.ones(6), np.zeros(6), gates=())
    bias = np.zeros(6)
    bias[4] = np.inf
    assert gate_errors(bias, np.zeros(6), gates=("r", "z", "n"))["n"] == np.inf
