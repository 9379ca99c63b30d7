"""verify(model) names the wrong module and what kind of wrong; check_module checks one module."""

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

import jaxbp
from jaxbp import nn


def _tanh_with(backward):
    base = nn.Activation("tanh")
    return nn.Module("my_tanh", base.init, base.forward, backward)


def _tanh_wrong_derivative(params, residuals, dA):
    Z, A = residuals
    return (), dA * (1 - Z ** 2)  # bug: tanh' is 1 − a², not 1 − z²


def _linear_scaled_W(factor):
    base = nn.Linear(6)

    def backward(params, residuals, dZ):
        dp, dX = base.backward(params, residuals, dZ)
        return jaxbp.Dense(dp.W * factor, dp.W0), dX

    return nn.Module("my_linear", base.init, base.forward, backward)


def _linear_nan():
    base = nn.Linear(6)

    def backward(params, residuals, dZ):
        dp, dX = base.backward(params, residuals, dZ)
        return dp, dX.at[0, 0].set(jnp.nan)

    return nn.Module("my_linear", base.init, base.forward, backward)


def _model(middle, loss="nll"):
    return nn.Sequential([nn.Linear(6), nn.Activation("relu"), middle, nn.Linear(3),
                          nn.Activation("softmax" if loss == "nll" else "identity")], loss)


def _data(B=16, d=5, seed=0):
    X = jax.random.normal(jax.random.key(seed), (B, d))
    return X, jnp.arange(B) % 3


CASES = [  # (id, middle module, dtype, first bad module, suspect)
    ("tanh-derivative-f64", _tanh_with(_tanh_wrong_derivative), jnp.float64, 3, "input"),
    ("tanh-derivative-f32", _tanh_with(_tanh_wrong_derivative), jnp.float32, 3, "input"),
    ("weight-3e-4-f32", _linear_scaled_W(1 + 3e-4), jnp.float32, 3, "param"),
    ("weight-1e-6-f64", _linear_scaled_W(1 + 1e-6), jnp.float64, 3, "param"),
    ("nan-input-grad", _linear_nan(), jnp.float64, 3, "nonfinite"),
]


@pytest.mark.parametrize("middle, dtype, index, suspect", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_planted_bug_is_named_by_index_and_suspect(middle, dtype, index, suspect):
    model = _model(middle)
    params = model.init(jax.random.key(0), (5,), dtype=dtype)
    X, Y = _data()
    report = jaxbp.verify(model, params, X, Y)
    assert not report.ok
    assert (report.first_bad_layer, report.module, report.suspect) == \
        (index, middle.name, suspect)
    assert f"module {index} ({middle.name})" in str(report)
    # every module above it was right
    assert all(r.ok for r in report.rows if r.layer > index)


@settings(max_examples=3)  # each example compiles the reference, round-off and chain
@given(seed=st.integers(0, 2**16), B=st.integers(2, 12), dtype=st.sampled_from(["f32", "f64"]),
       norm=st.sampled_from(["layer", "batch"]))
def test_correct_models_pass(seed, B, dtype, norm):
    dtype = jnp.float32 if dtype == "f32" else jnp.float64
    model = nn.Sequential([
        nn.Linear(6), nn.BatchNorm() if norm == "batch" else nn.LayerNorm(), nn.Activation("gelu"),
        nn.Residual(nn.LayerNorm(), nn.Linear(6), nn.Activation("tanh")), nn.Dropout(0.2),
        nn.Linear(3), nn.Activation("softmax")], "nll")
    params = model.init(jax.random.key(seed), (5,), dtype=dtype)
    X, Y = _data(B, seed=seed + 1)
    report = jaxbp.verify(model, params, X, Y, key=jax.random.key(seed + 2))
    assert report.ok, str(report)
    # the bias before BatchNorm has a true gradient of exactly 0 and still passes
    if norm == "batch":
        assert report.rows[-1].parameter == "W0"


def test_transformer_block_passes_in_float32():
    model = nn.Sequential([
        nn.Embedding(11, 8), nn.Residual(nn.LayerNorm(), nn.SelfAttention(2, causal=True)),
        nn.Residual(nn.LayerNorm(), nn.Linear(16), nn.Activation("gelu"), nn.Linear(8)),
        nn.LayerNorm(), nn.Linear(11), nn.Activation("softmax")], "nll")
    params = model.init(jax.random.key(0), (7,))
    ids = jax.random.randint(jax.random.key(1), (4, 7), 0, 11)
    report = jaxbp.verify(model, params, ids, jnp.roll(ids, -1, axis=1))
    assert report.ok, str(report)
    assert not any(r.parameter == "input" and r.layer == 1 for r in report.rows)  # token ids


def test_report_json_and_rows():
    model = _model(_tanh_with(_tanh_wrong_derivative))
    params = model.init(jax.random.key(0), (5,), dtype=jnp.float64)
    report = jaxbp.verify(model, params, *_data())
    d = report.to_dict()
    assert d["module"] == "my_tanh" and d["suspect"] == "input" and d["mode"] == "model"
    assert [r.layer for r in report.rows] == sorted((r.layer for r in report.rows), reverse=True)


def test_verify_model_rejects_dense_only_options():
    model = _model(nn.Activation("tanh"))
    params = model.init(jax.random.key(0), (5,))
    with pytest.raises(TypeError, match="not for a jaxbp.nn model"):
        jaxbp.verify(model, params, *_data(), batched=True)


MODULES = [
    ("linear", nn.Linear(4), (3,), jnp.float64),
    ("layernorm", nn.LayerNorm(), (5,), jnp.float32),
    ("attention", nn.SelfAttention(2), (4, 6), jnp.float64),
    ("embedding", nn.Embedding(7, 3), (5,), jnp.float64),
]


@pytest.mark.parametrize("module, in_shape, dtype", [m[1:] for m in MODULES],
                         ids=[m[0] for m in MODULES])
def test_check_module_on_built_ins(module, in_shape, dtype):
    params, _ = module.init(jax.random.key(0), in_shape, dtype)
    if module.name.startswith("Embedding"):
        X = jax.random.randint(jax.random.key(1), (3,) + in_shape, 0, 7)
    else:
        X = jax.random.normal(jax.random.key(1), (3,) + in_shape, dtype)
    report = jaxbp.check_module(module, params, X)
    assert report.ok, str(report)


@pytest.mark.parametrize("module, suspect", [
    (_tanh_with(_tanh_wrong_derivative), "input"), (_linear_scaled_W(1.01), "param")],
    ids=["input", "param"])
def test_check_module_names_the_wrong_part(module, suspect):
    params, _ = module.init(jax.random.key(0), (6,), jnp.float64)
    report = jaxbp.check_module(module, params, jax.random.normal(jax.random.key(1), (4, 6)))
    assert not report.ok and report.suspect == suspect and report.module == module.name


def test_a_wrong_module_inside_a_residual_is_named_in_the_notes():
    bad = _tanh_with(_tanh_wrong_derivative)
    model = nn.Sequential([nn.Linear(6), nn.Residual(nn.LayerNorm(), nn.Linear(6), bad),
                           nn.Linear(3), nn.Activation("softmax")], "nll")
    params = model.init(jax.random.key(0), (5,), dtype=jnp.float64)
    report = jaxbp.verify(model, params, *_data())
    assert (report.first_bad_layer, report.suspect) == (2, "input")
    assert report.module.startswith("Residual(")
    assert any("inner module 3 (my_tanh)" in note and "'input'" in note for note in report.notes)
