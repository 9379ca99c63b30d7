"""check_intermediates and intermediates: the backprop-ninja exercise's mistakes, named.

The network, its tapped forward and its hand-written backward are those of
experiments/backprop_ninja.py (loaded from experiments/_makemore.py: one copy of the formulas).
"""

import importlib.util
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxbp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "makemore_for_tests", os.path.join(ROOT, "experiments", "_makemore.py"))
ninja = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ninja)

DTYPES = [pytest.param(jnp.float32, id="f32"), pytest.param(jnp.float64, id="f64")]
CANCELLED = ("b1", "logit_maxes")  # true gradient 0 up to round-off
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # each program runs once or twice
init = jax.jit(ninja.init, static_argnames=("hidden", "embedding", "dtype"))


def _backward(params, X, Y, bug):
    return ninja.backward(jaxbp.intermediates(ninja.forward, (params, X, Y)), X, Y, bug=bug)


backward_jit = jax.jit(_backward, static_argnames="bug", compiler_options=FAST_COMPILE)


def batch(dtype, *, n=32, hidden=64, embedding=10, seed=0):
    params = init(jax.random.key(seed), hidden=hidden, embedding=embedding, dtype=dtype)
    rng = np.random.default_rng(seed)
    X = rng.integers(0, len(ninja.VOCAB), (n, ninja.BLOCK_SIZE), dtype=np.int32)
    Y = rng.integers(0, len(ninja.VOCAB), n, dtype=np.int32)
    return params, X, Y


def manual(args, *, bug=None, jit=True):
    """The script's hand-written gradients: one jitted program, or op by op."""
    if jit:
        return backward_jit(*args, bug)
    return _backward(*args, bug)


def check(args, grads, **kwargs):
    return jaxbp.check_intermediates(ninja.forward, args, grads, **kwargs)


def assert_rows_before_first_bad_ok(report):
    names = [r.name for r in report.rows]
    for r in report.rows[:names.index(report.first_bad)]:
        assert r.ok, r


# ---------------------------------------------------------------- the exercise

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_correct_backward_passes_every_intermediate(dtype, jit):
    args = batch(dtype)
    report = check(args, manual(args, jit=jit))
    assert report.ok, str(report)
    assert report.first_bad is None and report.suspect is None
    assert [r.name for r in report.rows][:3] == ["logprobs", "probs", "counts_sum_inv"]
    assert [r.name for r in report.rows][-3:] == ["embcat", "emb", "C"]
    assert all(r.status == "ok" for r in report.rows)
    loss = float(jax.jit(ninja.loss_fn)(*jax.tree.map(
        lambda x: x.astype(jnp.float64) if x.dtype == dtype else x, args)))
    assert math.isclose(report.loss, loss, rel_tol=1e-12)
    for r in report.rows:  # the round-off budget stays far below a 1e-3 relative error
        if r.name not in CANCELLED:
            assert r.budget < (1e-4 if dtype == jnp.float32 else 1e-9), r


# Each classic mistake: (value the report names, suspect, its consumers, missing / scale).
PLANTED = {
    "missing_1_over_n": ("logprobs", "scale", (), dict(scale=32.0)),
    "counts_overwrite": ("counts", "missing path", ("counts_sum", "probs"),
                         dict(missing=("probs",))),
    "logits_overwrite": ("logits", "missing path", ("logit_maxes", "norm_logits"),
                         dict(missing=("norm_logits",))),
    "tanh_derivative": ("hpreact", "local derivative", ("h",), {}),
    "bngain_shape": ("bngain", "shape", ("hpreact",), {}),
    "bessel_n": ("bndiff2", "scale", ("bnvar",), dict(scale=31 / 32)),
    "bndiff_overwrite": ("bndiff", "missing path", ("bndiff2", "bnraw"),
                         dict(missing=("bnraw",))),
    "embedding_assign": ("C", "local derivative", ("emb",), {}),
}


def test_every_bug_of_the_script_is_tested():
    assert set(PLANTED) == set(ninja.BUGS)
    for bug, (name, suspect, _, _) in PLANTED.items():
        assert ninja.BUGS[bug][1:] == (name, suspect)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bug", list(PLANTED))
def test_planted_mistake_is_named(bug, dtype):
    name, suspect, consumers, extra = PLANTED[bug]
    args = batch(dtype)
    report = check(args, manual(args, bug=bug, jit=False))  # eager: no compile per bug
    assert not report.ok
    assert (report.first_bad, report.suspect) == (name, suspect), str(report)
    assert report.consumers == consumers
    assert_rows_before_first_bad_ok(report)
    assert report.missing == extra.get("missing", ())
    if "scale" in extra:
        assert report.scale == pytest.approx(extra["scale"], rel=1e-5)
    else:
        assert report.scale is None
    row = report.row(name)
    assert row.status == ("shape" if suspect == "shape" else "wrong") and not row.ok
    text = str(report)
    assert f"WRONG — d{name}, suspect: {suspect}" in text
    data = json.loads(report.to_json())
    assert data["first_bad"] == name and data["suspect"] == suspect
    assert data["explanation"] == report.explanation()


def test_shape_64_for_1_64_is_a_failure_even_with_right_values():
    args = batch(jnp.float64)
    grads = manual(args)
    grads["bnbias"] = grads["bnbias"][0]  # (64,): the right numbers, broadcastable
    report = check(args, grads)
    row = report.row("bnbias")
    assert (report.first_bad, report.suspect, row.status) == ("bnbias", "shape", "shape")
    assert row.given_shape == (64,) and row.shape == (1, 64)
    assert row.max_abs_error < 1e-12  # measured after broadcasting
    grads = manual(args)
    grads["W2"] = grads["W2"].T  # not broadcastable
    row = check(args, grads).row("W2")
    assert row.status == "shape" and row.max_abs_error == math.inf


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_is_nonfinite_at_its_index(dtype):
    args = batch(dtype)
    grads = manual(args)
    grads["h"] = grads["h"].at[3, 5].set(jnp.nan)
    report = check(args, grads)
    assert (report.first_bad, report.suspect) == ("h", "nonfinite")
    row = report.row("h")
    assert row.status == "nonfinite" and row.worst_index == (3, 5)
    assert row.max_abs_error == math.inf
    assert json.loads(report.to_json())["rows"][report.rows.index(row)]["max_abs_error"] == "inf"


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_zero_accepted_where_the_gradient_cancels(dtype):
    args = batch(dtype)
    grads = manual(args)
    truth = check(args, {}).rows  # all "not given"
    assert all(r.status == "not given" and r.ok for r in truth)
    for name in CANCELLED:
        grads[name] = jnp.zeros_like(grads[name])
    report = check(args, grads)
    assert report.ok, str(report)
    # The true gradient is round-off: far below the gradient flowing into it.
    for name in CANCELLED:
        assert report.row(name).scale < 1e-6 * report.row("hprebn" if name == "b1"
                                                         else "norm_logits").scale


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_1e3_relative_error_is_caught_in_every_value(dtype):
    args = batch(dtype)
    grads = manual(args)
    names = [n for n in grads if n not in CANCELLED]
    for name in names:
        wrong = dict(grads, **{name: grads[name] * (1 + 1e-3)})
        report = check(args, wrong)
        assert (report.first_bad, report.suspect) == (name, "scale"), name
        assert report.scale == pytest.approx(1 + 1e-3, rel=1e-5)


def test_explicit_tolerances_replace_the_budget():
    args = batch(jnp.float32)
    grads = manual(args)
    grads["h"] = grads["h"] * (1 + 1e-3)
    assert not check(args, grads).ok
    assert check(args, grads, rtol=2e-3, atol=1e-6).ok
    report = check(args, grads, rtol=0.0, atol=0.0)  # float32 round-off alone fails
    assert not report.ok and report.row("h").budget_abs == 0.0


def test_missing_consumer_gradient_is_noted():
    args = batch(jnp.float64)
    grads = manual(args, bug="tanh_derivative")
    del grads["h"]
    report = check(args, grads)
    assert report.first_bad == "hpreact" and report.row("h").status == "not given"
    assert any("h (computed from hpreact) were not given" in note for note in report.notes)


# Each new shape compiles the check's programs afresh (~4 s of CPU): a quarter of the
# profile's examples here (HYPOTHESIS_PROFILE=thorough: 125).
@settings(max_examples=max(1, settings().max_examples // 4))
@given(n=st.integers(3, 12), embedding=st.integers(1, 5), hidden=st.integers(2, 12),
       seed=st.integers(0, 2 ** 16), x64=st.booleans())
def test_correct_backward_has_no_false_alarms(n, embedding, hidden, seed, x64):
    args = batch(jnp.float64 if x64 else jnp.float32, n=n, hidden=hidden, embedding=embedding,
                 seed=seed)
    report = check(args, manual(args))
    assert report.ok, str(report)


# ---------------------------------------------------- a value with a direct path

def two_uses(w, x, *, tap):
    w = tap("w", w)
    a = tap("a", jnp.tanh(x * w))
    b = tap("b", jnp.sin(a))
    return jnp.sum(b * a)  # a reaches the loss through b and directly


def two_uses_backward(w, x):
    a = jnp.tanh(x * w)
    b = jnp.sin(a)
    db = a
    da_direct = b
    da = da_direct + db * jnp.cos(a)
    dw = da * (1 - a ** 2) * x
    return {"w": dw, "a": da, "b": db}


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_direct_path_to_the_loss_counts_as_a_path(jit):
    w, x = jnp.linspace(-1.0, 1.5, 5), jnp.linspace(0.5, 2.0, 5)
    bwd = jax.jit(two_uses_backward) if jit else two_uses_backward
    grads = bwd(w, x)
    assert jaxbp.check_intermediates(two_uses, (w, x), grads).ok
    a = jnp.tanh(x * w)
    forgot = dict(grads, a=a * jnp.cos(a))  # only the path through b
    report = jaxbp.check_intermediates(two_uses, (w, x), forgot)
    assert (report.first_bad, report.suspect) == ("a", "missing path")
    assert report.consumers == ("b",) and report.missing == ("(loss)",)
    assert "(loss)" in report.explanation()


# ------------------------------------------------------------- intermediates()

def test_intermediates_returns_every_tapped_value_in_tap_order():
    args = batch(jnp.float32)
    v = jaxbp.intermediates(ninja.forward, args)
    assert list(v)[:4] == ["C", "emb", "embcat", "W1"] and list(v)[-1] == "logprobs"
    params, X, Y = args
    np.testing.assert_array_equal(v["emb"], params["C"][X])
    assert v["h"].dtype == jnp.float32 and v["h"].shape == (32, 64)
    jitted = jax.jit(lambda p, X, Y: jaxbp.intermediates(ninja.forward, (p, X, Y)))(*args)
    np.testing.assert_allclose(jitted["probs"], v["probs"], rtol=1e-6)

    def with_loss(x, *, tap):
        return tap("loss", jnp.sum(tap("x", x) ** 2))
    out = jaxbp.intermediates(with_loss, (jnp.arange(3.0),))
    assert list(out) == ["x", "loss"] and float(out["loss"]) == 5.0


# ------------------------------------------------------------------- bad input

def fwd_ok(x, *, tap):
    return jnp.sum(tap("x", x) ** 2)


def fwd_twice(x, *, tap):
    y = tap("x", x)
    return jnp.sum(tap("x", y * 2))


def fwd_vector(x, *, tap):
    return tap("x", x) ** 2


def fwd_unused(x, *, tap):
    tap("h", jnp.tanh(x))
    return jnp.sum(jnp.tanh(tap("x", x)))


def fwd_no_taps(x, *, tap):
    return jnp.sum(x)


def fwd_without_tap(x):
    return jnp.sum(x)


X3 = jnp.arange(3.0)


@pytest.mark.parametrize("forward,args,grads,kwargs,exc,pattern", [
    (fwd_ok, (X3,), {"y": X3}, {}, ValueError, r"grads: 'y' never tapped; the forward tapped: x"),
    (fwd_twice, (X3,), {}, {}, ValueError, r"'x' was tapped twice"),
    (fwd_vector, (X3,), {}, {}, ValueError,
     r"expected a scalar loss \(shape \(\)\), got shape \(3,\)"),
    (fwd_unused, (X3,), {}, {}, ValueError, r"tap\('h', \.\.\.\): the loss does not depend on"),
    (fwd_no_taps, (X3,), {}, {}, ValueError, r"forward never called tap"),
    (fwd_without_tap, (X3,), {}, {}, TypeError, r"has no parameter named tap"),
    (fwd_ok, X3, {}, {}, TypeError, r"args: expected a tuple"),
    (fwd_ok, (X3,), [X3], {}, TypeError, r"grads: expected a dict"),
    (fwd_ok, (X3,), {"x": jnp.arange(3)}, {}, TypeError, r"grads\['x'\]: expected a float array"),
    (fwd_ok, (X3,), {"x": X3}, dict(rtol=-1.0), ValueError, r"rtol: expected a finite number"),
], ids=["never-tapped", "tapped-twice", "not-scalar", "unused", "no-taps", "no-tap-param",
        "args-not-tuple", "grads-not-dict", "int-grads", "negative-rtol"])
def test_bad_input_raises_a_clear_error(forward, args, grads, kwargs, exc, pattern):
    with pytest.raises(exc, match=pattern):
        jaxbp.check_intermediates(forward, args, grads, **kwargs)


def test_intermediates_bad_input():
    with pytest.raises(ValueError, match="tapped twice"):
        jaxbp.intermediates(fwd_twice, (X3,))
    with pytest.raises(ValueError, match="scalar loss"):
        jaxbp.intermediates(fwd_vector, (X3,))
    with pytest.raises(TypeError, match="str name"):
        jaxbp.intermediates(lambda x, *, tap: jnp.sum(tap(0, x)), (X3,))


def test_numpy_grads_and_python_number_args():
    def scaled(x, c, *, tap):
        return c * jnp.sum(tap("x", x) ** 2)
    x = np.arange(3.0)
    assert jaxbp.check_intermediates(scaled, (x, 0.5), {"x": np.asarray(x)}).ok
    report = jaxbp.check_intermediates(scaled, (x, 0.5), {"x": 2 * x})
    assert report.suspect == "scale" and report.scale == pytest.approx(2.0)


def test_python_int_args_stay_static():
    def reshaped(x, k, *, tap):
        y = tap("y", tap("x", x).reshape(k, -1))
        return jnp.sum(jnp.tanh(y) ** 2)
    x = np.linspace(-1.0, 1.0, 6)
    y = np.tanh(x.reshape(2, 3))
    dy = 2 * y * (1 - y ** 2)
    assert jaxbp.check_intermediates(reshaped, (x, 2), {"y": dy, "x": dy.reshape(-1)}).ok


def fan_out(x, *, tap):
    x = tap("x", x)
    return sum(jnp.sum(jnp.sin(tap(f"y{i}", x * (i + 1)))) for i in range(12))


@pytest.mark.parametrize("forgotten", [(3,), (0, 11), (0, 1, 2, 4, 5, 6, 7, 8, 9, 10)],
                         ids=["one", "two", "all-but-two"])
def test_missing_path_among_many_consumers(forgotten):
    x = jnp.linspace(-1.0, 1.0, 4)
    dy = {f"y{i}": jnp.cos(x * (i + 1)) for i in range(12)}
    dx = sum((i + 1) * dy[f"y{i}"] for i in range(12) if i not in forgotten)
    report = jaxbp.check_intermediates(fan_out, (x,), dict(dy, x=dx))
    assert (report.first_bad, report.suspect) == ("x", "missing path")
    assert len(report.consumers) == 12  # beyond 10 paths: subsets of 1 or 2, or complements
    assert report.missing == tuple(f"y{i}" for i in forgotten)


def test_scalar_values_and_a_tapped_loss():
    def scalar(x, *, tap):
        s = tap("s", jnp.sum(tap("x", x) ** 2))
        return tap("loss", 3.0 * s)
    x = jnp.arange(3.0)
    right = {"loss": jnp.ones(()), "s": 3.0 * jnp.ones(()), "x": 6 * x}
    assert jaxbp.check_intermediates(scalar, (x,), right).ok
    report = jaxbp.check_intermediates(scalar, (x,), {"s": jnp.ones(())})
    assert (report.first_bad, report.suspect) == ("s", "scale")
    assert report.scale == pytest.approx(1 / 3) and report.row("s").worst_index == ()
    assert "cannot be told from 'local derivative'" in report.notes[0]
