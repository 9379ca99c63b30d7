"""experiments/two_neuron.py: the factors against a closed form, training, outputs."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "two_neuron.py"


@pytest.fixture(scope="module")
def two_neuron():
    spec = importlib.util.spec_from_file_location("two_neuron", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_main_factors_match_closed_form_and_training_lowers_the_loss(two_neuron, tmp_path, capsys):
    results = two_neuron.main(out=str(tmp_path), steps=40, seed=1, progress=False)
    out = capsys.readouterr().out
    assert "JAX backend: cpu" in out
    assert "∂L/∂W^1 = (∂L/∂a^2) · (∂a^2/∂z^2 · ∂z^2/∂a^1) · (∂a^1/∂z^1 · ∂z^1/∂W^1)" in out

    # The notes' two-neuron chain by hand, from the initial params the script drew.
    import jax
    import jax.numpy as jnp
    net = two_neuron.make_net("squared")
    kd, kp = jax.random.split(jax.random.key(1))
    X, Y = two_neuron.make_data(net, kd, two_neuron.NUM_EXAMPLES)
    p = net.init(kp, dtype=jnp.float64)
    (W1, b1), (W2, b2) = [(float(q.W[0, 0]), float(q.W0[0])) for q in p]
    x, y = float(X[0, 0]), float(Y[0, 0])
    assert results["example"] == {"x": x, "y": y}
    a1 = np.tanh(W1 * x + b1)
    a2 = 1 / (1 + np.exp(-(W2 * a1 + b2)))
    by_hand = {"W1": [2 * (a2 - y), a2 * (1 - a2), W2, 1 - a1**2, x],
               "W2": [2 * (a2 - y), a2 * (1 - a2), a1]}
    symbols = {"W1": ["∂L/∂a^2", "∂a^2/∂z^2", "∂z^2/∂a^1", "∂a^1/∂z^1", "∂z^1/∂W^1"],
               "W2": ["∂L/∂a^2", "∂a^2/∂z^2", "∂z^2/∂W^2"]}
    for w in ("W1", "W2"):
        r = results["start"][w]
        assert [f["symbol"] for f in r["factors"]] == symbols[w]
        np.testing.assert_allclose([f["value"] for f in r["factors"]], by_hand[w], rtol=1e-12)
        want = np.prod(by_hand[w])
        for key in ("product", "plain_product", "jax_grad"):
            assert r[key] == pytest.approx(want, rel=1e-10), key
        assert r["relative_error"] <= 1e-10
        assert f"{r['product']:.6g}" in out  # printed beside jax.grad's

    assert results["max_relative_error_product_vs_jax_grad"] <= 1e-10
    assert len(results["history"]["loss"]) == 40
    assert set(results["history"]["factors"]) == set(symbols["W1"] + symbols["W2"])
    assert all(len(v) == 40 for v in results["history"]["factors"].values())
    assert results["final_loss"] < 0.5 * results["initial_loss"]

    assert json.loads((tmp_path / "results.json").read_text())["final_loss"] == \
        results["final_loss"]
    assert (tmp_path / "two_neuron.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_rejects_a_loss_without_a_sigmoid_output(two_neuron, tmp_path):
    with pytest.raises(ValueError, match="loss: expected 'squared' or 'binary_nll'.*'nll'"):
        two_neuron.main(out=str(tmp_path), steps=2, loss="nll", progress=False)


def test_script_help_and_a_tiny_run(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    help_text = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                               text=True, check=True, env=env).stdout
    for flag in ("--out", "--steps", "--seed", "--loss"):
        assert flag in help_text
    run = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--steps", "5",
                          "--loss", "binary_nll", "--no-progress"],
                         capture_output=True, text=True, check=True, env=env)
    assert "JAX backend:" in run.stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["config"]["loss"] == "binary_nll" and len(results["history"]["loss"]) == 5
    assert results["max_relative_error_product_vs_jax_grad"] <= 1e-10
    assert (tmp_path / "two_neuron.png").stat().st_size > 0
