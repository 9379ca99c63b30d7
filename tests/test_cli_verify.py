"""`jaxbp verify MODULE:FUNCTION` and `jaxbp selftest` from the command line."""

import json
import os
import subprocess
import sys

import pytest

from jaxbp.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NET = ["--sizes", "3,4,3", "--activations", "tanh,softmax", "--loss", "nll"]
ANY = ["--sizes", "3,4,4,2", "--activations", "relu,tanh,identity", "--loss", "squared"]


@pytest.fixture(autouse=True)
def in_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_correct_function_exits_0(capsys):
    assert main(["verify", "tests._user_backprops:tanh_softmax_nll", *NET]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "layer" in out


def test_net_first_parameter_and_float64(capsys):
    assert main(["verify", "tests._user_backprops:backprop", *ANY, "--dtype", "float64"]) == 0
    assert "dtype=float64" in capsys.readouterr().out


def test_wrong_function_exits_1_with_layer_and_suspect(capsys):
    code = main(["verify", "tests._user_backprops:tanh_softmax_nll_wrong_derivative", *NET,
                 "--json"])
    assert code == 1
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["first_bad_layer"], report["suspect"]) == (False, 1,
                                                                           "activation")


def test_file_path_and_batched(capsys):
    path = os.path.join("tests", "_user_backprops.py")
    assert main(["verify", f"{path}:batched_mean", *ANY, "--batched"]) == 0
    assert main(["verify", f"{path}:batched_sum", *ANY, "--batched"]) == 1
    assert "suspect: batch" in capsys.readouterr().out


def test_broken_functions_exit_1(capsys):
    assert main(["verify", "tests._user_backprops:raises", *NET]) == 1
    assert "RuntimeError" in capsys.readouterr().out
    assert main(["verify", "tests._user_backprops:transposed_weight", *ANY, "--json"]) == 1
    assert "looks transposed" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize("target,message", [
    ("tests._user_backprops", "MODULE:FUNCTION"),
    ("no_such_module_xyz:f", "cannot import"),
    ("tests._user_backprops:missing", "has no 'missing'"),
    ("tests._user_backprops:NOT_A_FUNCTION", "not a function"),
    ("nowhere/x.py:f", "no such file"),
])
def test_usage_errors_exit_2(target, message, capsys):
    assert main(["verify", target, *NET]) == 2
    assert message in capsys.readouterr().err


def test_bad_network_exits_2(capsys):
    assert main(["verify", "tests._user_backprops:backprop", "--sizes", "3,x",
                 "--activations", "tanh", "--loss", "nll"]) == 2
    assert "--sizes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["verify", "tests._user_backprops:backprop"])  # argparse: required flags
    assert e.value.code == 2


def test_console_script_help_and_exit_code():
    script = os.path.join(os.path.dirname(sys.executable), "jaxbp")
    out = subprocess.run([script, "verify", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "MODULE:FUNCTION" in out.stdout
    out = subprocess.run([script, "selftest", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--configs" in out.stdout
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    target = "tests._user_backprops:tanh_softmax_nll_wrong_derivative"
    out = subprocess.run([script, "verify", target, *NET], capture_output=True, text=True,
                         cwd=ROOT, env=env)
    assert out.returncode == 1 and "layer 1, suspect: activation" in out.stdout


def test_selftest_command(tmp_path, capsys):
    path = tmp_path / "st.json"
    assert main(["selftest", "--configs", "2", "--seed", "4", "--quiet",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "PASSED" in out and "loss_sign_flip" in out and "false alarms" in out
    result = json.loads(path.read_text())
    assert result["configs"] == 2 and result["passed"]
    assert result["totals"]["effective"] >= 10
    assert all(v.get("false_alarms", 0) == 0 for v in result["correct"].values())
    assert main(["selftest", "--configs", "0"]) == 2
