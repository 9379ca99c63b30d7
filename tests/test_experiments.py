"""The experiment scripts end to end (tiny settings, into tmp_path), and their data sets."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import jaxbp
from jaxbp import datasets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = os.path.join(ROOT, "experiments")
RESULT_KEYS = {"train_loss", "test_accuracy", "seconds"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"experiment_{name}",
                                                  os.path.join(EXPERIMENTS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train():
    return load_script("train")


@pytest.fixture(scope="module")
def vanishing():
    return load_script("vanishing_gradients")


def assert_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    assert head == PNG_SIGNATURE and os.path.getsize(path) > 5000, path


def assert_clean(out):
    """No staging or probe directories left behind."""
    assert not [n for n in os.listdir(out) if n.startswith(".")], os.listdir(out)


# ------------------------------------------------------------------------- data sets

@pytest.mark.parametrize("name", datasets.NAMES)
def test_datasets_are_fixed_standardized_splits(name):
    d = datasets.load(name)
    again = datasets.load(name)
    np.testing.assert_array_equal(d.X_train, again.X_train)
    n_in = 64 if name == "digits" else 2
    assert d.X_train.shape[1] == d.X_test.shape[1] == n_in
    assert d.X_train.shape[0] == d.y_train.shape[0] and d.X_test.shape[0] == d.y_test.shape[0]
    assert set(np.unique(d.y_train)) == set(range(d.num_classes))
    assert d.num_classes == (10 if name == "digits" else 2)
    np.testing.assert_allclose(d.X_train.mean(axis=0), 0, atol=1e-12)
    std = d.X_train.std(axis=0)
    assert np.all((np.abs(std - 1) < 1e-12) | (std == 0))
    assert not np.allclose(datasets.load(name, seed=1).X_train, d.X_train)


def test_digits_is_scikit_learns_bundled_set_split_80_20():
    d = datasets.digits()
    assert (len(d.y_train), len(d.y_test)) == (1438, 359)


@pytest.mark.parametrize("loss", ["nll", "squared", "binary_nll", "hinge"])
def test_targets_are_valid_for_the_loss_and_predict_inverts_them(loss):
    d = datasets.load("xor")
    Y = datasets.targets(d.y_train, d.num_classes, loss)
    n = datasets.num_outputs(loss, d.num_classes)
    last = {"nll": "softmax", "binary_nll": "sigmoid"}.get(loss, "identity")
    net = jaxbp.Network(sizes=(2, n), activations=(last,), loss=loss)
    params = net.init(jax.random.key(0), dtype=np.float64)
    assert np.isfinite(float(net.batch_loss(params, d.X_train, Y)))  # the net's target checks pass
    # Perfect outputs (the targets themselves) predict the labels back.
    np.testing.assert_array_equal(datasets.predict(Y, loss), d.y_train)


def test_two_output_losses_refuse_ten_classes():
    with pytest.raises(ValueError, match="two classes"):
        datasets.num_outputs("hinge", 10)
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        datasets.load("mnist")


# ------------------------------------------------------------------------- train.py

def test_train_script_runs_from_the_command_line(tmp_path):
    out = tmp_path / "moons"
    proc = subprocess.run(
        [sys.executable, os.path.join(EXPERIMENTS, "train.py"), "--dataset", "moons",
         "--steps", "60", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr
    assert "backend cpu, using 1 of 1 device(s)" in proc.stdout
    assert "max |params_manual − params_autodiff| along the run" in proc.stdout
    assert "it/s" not in proc.stderr  # no progress bar when not a terminal
    results = json.loads((out / "results.json").read_text())
    assert {"dataset", "steps", "devices", "dtype", "manual", "autodiff",
            "max_param_diff"} <= set(results)
    assert (results["dataset"], results["steps"], results["devices"], results["dtype"]) == (
        "moons", 60, 1, "float32")
    for grad in ("manual", "autodiff"):
        assert RESULT_KEYS <= set(results[grad])
        assert results[grad]["test_accuracy"] > 0.75  # two classes: chance is 0.5
    assert 0 < results["max_param_diff"] < 1e-4  # float32 round-off, not a bug-sized gap
    assert_png(out / "loss.png")
    assert_png(out / "boundary.png")
    with open(out / "history.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "manual_loss", "autodiff_loss", "param_diff"] and len(rows) == 61
    params = np.load(out / "params.npz")
    assert params["manual_layer1_W"].shape == (2, 32)
    assert params["autodiff_layer3_W0"].shape == (2,)
    assert_clean(out)


def test_train_defaults_reach_95_percent_on_digits_for_both_grads(train, tmp_path, capsys):
    results = train.main(out=str(tmp_path), quiet=True)
    assert (results["dataset"], results["dtype"]) == ("digits", "float32")
    for grad in ("manual", "autodiff"):
        assert results[grad]["test_accuracy"] >= 0.95, results[grad]
    assert results["max_param_diff"] < 1e-5
    assert "backend cpu" in capsys.readouterr().out
    assert not (tmp_path / "boundary.png").exists()  # 64-D data: no boundary plot
    assert_png(tmp_path / "loss.png")


def test_train_x64_keeps_manual_and_autodiff_within_1e_9(train, tmp_path):
    train.cli(["--x64", "--steps", "40", "--batch-size", "64", "--out", str(tmp_path), "--quiet"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["dtype"] == "float64"
    assert results["max_param_diff"] <= 1e-9
    for grad in ("manual", "autodiff"):
        assert results[grad]["test_accuracy"] > 0.5  # ten classes: chance is 0.1


@pytest.mark.parametrize("model, steps", [("cnn", 6), ("transformer", 3)])
def test_train_nn_models_x64_lockstep(train, tmp_path, monkeypatch, model, steps):
    """--model cnn / transformer: jaxbp.nn models, manual and autodiff within 1e-9 in float64."""
    tasks = sys.modules["_tasks"]  # the transformer's task, made small: compile time, not scale
    monkeypatch.setitem(tasks.SEQUENCES, "length", 8)
    monkeypatch.setitem(tasks.SEQUENCES, "n_train", 64)
    monkeypatch.setitem(tasks.SEQUENCES, "n_test", 16)
    monkeypatch.setitem(tasks.TRANSFORMER, "dim", 16)
    results = train.main(model=model, steps=steps, batch_size=8, x64=True, out=str(tmp_path),
                         quiet=True)
    assert results["model"] == model and results["max_param_diff"] <= 1e-9
    assert results["modules"][-1] == "softmax"
    for grad in ("manual", "autodiff"):
        assert 0.0 <= results[grad]["test_accuracy"] <= 1.0
    if model == "transformer":
        assert results["manual"]["chance_accuracy"] == 1 / 64
    params = np.load(tmp_path / "params.npz")
    assert any(name.startswith("manual_module1") for name in params.files)
    assert_clean(tmp_path)


@pytest.mark.parametrize("argv, flag", [
    (["--model", "mamba"], "--model"), (["--model", "cnn", "--dataset", "xor"], "--dataset"),
    (["--model", "transformer", "--sizes", "1,2"], "--sizes"),
    (["--model", "cnn", "--loss", "squared"], "--loss")], ids=["model", "dataset", "sizes", "loss"])
def test_train_nn_model_bad_flags(train, tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as exc:
        train.cli(argv + ["--steps", "2", "--out", str(tmp_path / "run")])
    assert exc.value.code == 2 and f"argument {flag}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_one_grad_only(train, tmp_path):
    results = train.main(dataset="xor", grad="autodiff", steps=20, out=str(tmp_path), quiet=True)
    assert results["manual"] is None and results["max_param_diff"] is None
    assert RESULT_KEYS <= set(results["autodiff"])
    with open(tmp_path / "history.csv") as f:
        assert next(csv.reader(f)) == ["step", "autodiff_loss"]


@pytest.mark.parametrize("argv, flag, allowed", [
    (["--dataset", "mnist"], "--dataset", "allowed: digits, xor, spirals, moons"),
    (["--optimizer", "adamax2"], "--optimizer", "allowed: adam, adamw, sgd"),
    (["--activations", "relu,swish"], "--activations", "allowed: identity, relu"),
    (["--loss", "cross"], "--loss", "allowed: squared, hinge, binary_nll, nll"),
    (["--loss", "hinge"], "--loss", "allowed here: nll, squared"),
    (["--devices", "999"], "--devices", "allowed: 1.."),
    (["--devices", "two"], "--devices", "expected an int or 'all'"),
    (["--grad", "numeric"], "--grad", "allowed: manual, autodiff, both"),
    (["--sizes", "64,32"], "--sizes", "starting at 64 (inputs) and ending at 10 (outputs)"),
    (["--batch-size", "0"], "--batch-size", "expected 1..1438"),
    (["--lr", "nan"], "--lr", "expected a positive number"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_train_bad_flags_fail_in_one_line_with_exit_2_and_write_nothing(
        train, tmp_path, capsys, argv, flag, allowed):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        train.cli(argv + ["--steps", "2", "--out", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("train.py: error: argument " + flag), err
    assert allowed in err, err
    assert not out.exists() and os.listdir(tmp_path) == []


def test_train_refuses_an_unwritable_out_before_training(train, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(SystemExit) as exc:
            train.cli(["--steps", "2", "--out", str(out)])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "argument --out" in err and "allowed: a writable directory path" in err
        assert "JAX" not in capsys.readouterr().out  # failed before anything ran
    assert sorted(os.listdir(tmp_path)) == ["file"]


# Data parallel over four CPU devices needs XLA_FLAGS before JAX starts: a fresh interpreter.
_FOUR_DEVICES = textwrap.dedent("""
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("train", sys.argv[1])
    train = importlib.util.module_from_spec(spec); spec.loader.exec_module(train)
    base = ["--dataset", "xor", "--steps", "25", "--batch-size", "64", "--x64", "--quiet"]
    train.cli(base + ["--devices", "4", "--out", sys.argv[2] + "/d4"])
    train.cli(base + ["--devices", "1", "--out", sys.argv[2] + "/d1"])
    train.cli(base + ["--devices", "3", "--out", sys.argv[2] + "/d3"])  # 64 % 3: exits 2
""")


def test_train_on_four_devices_matches_one_device(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES,
                           os.path.join(EXPERIMENTS, "train.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "train.py: error: argument --batch-size: 64 is not divisible by --devices 3; "
        "allowed: multiples of 3 (see --help)")
    assert not (tmp_path / "d3").exists()
    assert "using 4 of 4 device(s)" in proc.stdout and "using 1 of 4 device(s)" in proc.stdout
    r4 = json.loads((tmp_path / "d4" / "results.json").read_text())
    r1 = json.loads((tmp_path / "d1" / "results.json").read_text())
    assert (r4["devices"], r1["devices"]) == (4, 1)
    p4, p1 = np.load(tmp_path / "d4" / "params.npz"), np.load(tmp_path / "d1" / "params.npz")
    assert set(p4) == set(p1) and len(p4) == 8  # 2 runs × 2 layers × (W, W0)
    for key in p4:
        np.testing.assert_allclose(p4[key], p1[key], rtol=0, atol=1e-12, err_msg=key)
    assert r4["max_param_diff"] <= 1e-9


# ------------------------------------------------------------------------- vanishing gradients

def test_vanishing_gradients_script(vanishing, tmp_path, capsys):
    vanishing.cli(["--activations", "sigmoid,relu", "--depths", "2,5", "--width", "8",
                   "--seeds", "2", "--batch-size", "32", "--out", str(tmp_path), "--quiet"])
    stdout = capsys.readouterr().out
    assert "backend cpu" in stdout and "AGREE" in stdout
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["depths"] == [2, 5] and results["activations"] == ["sigmoid", "relu"]
    assert results["max_relative_error_vs_jax_grad"] <= results["tolerance"]
    sigmoid, relu = results["norms"]["sigmoid"]["5"], results["norms"]["relu"]["5"]
    assert len(sigmoid) == len(relu) == 5
    # Four sigmoid' ≤ 1/4 factors between layer 1 and the loss: the first layer's gradient is
    # orders of magnitude below the last's; relu's (He init) stays within a factor of ~10.
    assert sigmoid[0] / sigmoid[-1] < 1e-2
    assert relu[0] / relu[-1] > 1e-1
    assert results["mean_activation_derivative"]["sigmoid"]["5"] <= 0.25
    assert_png(tmp_path / "vanishing_gradients.png")
    assert_clean(tmp_path)


def test_vanishing_gradients_bad_flag(vanishing, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        vanishing.cli(["--activations", "softmax", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --activations" in err and "allowed: identity" in err
    assert not (tmp_path / "x").exists()
