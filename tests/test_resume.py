"""experiments/train.py checkpoints: a killed run resumes to the same bits; nothing half-written."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import NamedTuple

import jax
import numpy as np
import optax
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "experiments", "train.py")
# The default model and data set, small: 1438 examples / 32 = 44 steps an epoch.
TINY = ["--sizes", "64,16,10", "--batch-size", "32", "--x64", "--quiet"]
TIMINGS = {"seconds", "compile_seconds"}
# The kill-and-resume test, once per model: flags, steps. The mlp's 120 steps cross two epochs
# (the data order's RNG is restored too); a checkpoint every 2 steps keeps each run busy well
# past its first one, and the kill may land in a save, which must leave the earlier ones usable.
KILLED = {"default-mlp": (TINY, 120),
          "cnn": (["--model", "cnn", "--batch-size", "16", "--x64", "--quiet"], 60)}


@pytest.fixture(scope="module")
def train():
    spec = importlib.util.spec_from_file_location("experiment_train_resume", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without_timings(results: dict) -> dict:
    return {k: ({kk: vv for kk, vv in v.items() if kk not in TIMINGS} if isinstance(v, dict) else v)
            for k, v in results.items()}


def assert_same_run(got, want, *, atol=0.0):
    """Same params (to atol), history.csv and results.json figures (bit for bit if atol=0)."""
    p_got, p_want = np.load(got / "params.npz"), np.load(want / "params.npz")
    assert sorted(p_got) == sorted(p_want)
    for key in p_want:
        np.testing.assert_allclose(p_got[key], p_want[key], rtol=0, atol=atol, err_msg=key)
    r_got = json.loads((got / "results.json").read_text())
    r_want = json.loads((want / "results.json").read_text())
    if atol == 0:
        assert (got / "history.csv").read_bytes() == (want / "history.csv").read_bytes()
        assert without_timings(r_got) == without_timings(r_want)
    else:
        h_got, h_want = (np.loadtxt(d / "history.csv", delimiter=",", skiprows=1)
                         for d in (got, want))
        np.testing.assert_allclose(h_got, h_want, rtol=1e-12, atol=atol)
        assert r_got["steps"] == r_want["steps"]


@pytest.mark.parametrize("model", KILLED)
def test_a_killed_run_resumes_to_the_bits_of_an_uninterrupted_one(train, tmp_path, capsys, model):
    flags, n = KILLED[model]
    steps = ["--steps", str(n)]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, TRAIN, *flags, *steps, "--checkpoint-every", "2", "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    deadline = time.monotonic() + 240
    while not train.checkpoint.steps_in(str(out / "checkpoints")):
        assert proc.poll() is None, f"ended before its first checkpoint: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it was killed"
    assert not (out / "results.json").exists()

    train.cli(flags + steps + ["--checkpoint-every", "25", "--resume", "--out", str(out)])
    printed = capsys.readouterr().out
    start = int(printed.split("resuming at step ")[1].split()[0])
    assert 2 <= start < n and start % 2 == 0, printed
    train.cli(flags + steps + ["--out", str(tmp_path / "whole")])
    assert_same_run(out, tmp_path / "whole")
    with open(out / "history.csv") as f:
        assert [int(row.split(",")[0]) for row in list(f)[1:]] == list(range(1, n + 1))
    # The last few complete checkpoints, nothing half-written, no temporary files.
    assert not [n for n in os.listdir(out) if n.startswith(".")], os.listdir(out)
    kept = os.listdir(out / "checkpoints")
    assert 1 <= len(kept) <= train.checkpoint.KEEP and all(n.isdigit() for n in kept), kept
    assert str(n) in kept


# Sharded over four CPU devices needs XLA_FLAGS before JAX starts: a fresh interpreter. The
# whole run checkpoints at steps 6 and 12; two copies without step 12 resume from step 6.
_FOUR_DEVICES = textwrap.dedent("""
    import importlib.util, shutil, sys
    spec = importlib.util.spec_from_file_location("train", sys.argv[1])
    train = importlib.util.module_from_spec(spec); spec.loader.exec_module(train)
    out, base = sys.argv[2], sys.argv[3:] + ["--steps", "12"]
    train.cli(base + ["--devices", "4", "--checkpoint-every", "6", "--out", out + "/whole"])
    for devices in ("4", "1"):
        copy = f"{out}/d{devices}"
        shutil.copytree(out + "/whole/checkpoints", copy + "/checkpoints")
        shutil.rmtree(copy + "/checkpoints/12")
        train.cli(base + ["--devices", devices, "--resume", "--out", copy])
""")


def test_a_four_device_checkpoint_resumes_on_four_and_on_one_device(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4")
    proc = subprocess.run([sys.executable, "-c", _FOUR_DEVICES, TRAIN, str(tmp_path), *TINY],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("resuming at step 6") == 2
    assert "using 1 of 4 device(s)" in proc.stdout
    assert_same_run(tmp_path / "d4", tmp_path / "whole")
    # One device sums the batch in another order than four: equal up to float64 round-off.
    assert_same_run(tmp_path / "d1", tmp_path / "whole", atol=1e-12)


@pytest.fixture(scope="module")
def checkpointed(train, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("checkpointed")
    train.cli(TINY + ["--steps", "4", "--checkpoint-every", "2", "--out", str(out)])
    return out


F32 = [a for a in TINY if a != "--x64"]
REFUSED = {  # argv (the last of a repeated flag wins), the flag blamed, the message's heart
    "lr": (TINY + ["--lr", "0.01"], "--resume", "(lr: checkpoint 0.001, now 0.01)"),
    "seed": (TINY + ["--seed", "1"], "--resume", "(seed: checkpoint 0, now 1)"),
    "sizes": (TINY + ["--sizes", "64,8,10"], "--resume",
              "(sizes: checkpoint 64,16,10, now 64,8,10)"),
    "optimizer": (TINY + ["--optimizer", "sgd"], "--resume",
                  "(optimizer: checkpoint adam, now sgd)"),
    "batch-size": (TINY + ["--batch-size", "16"], "--resume",
                   "(batch_size: checkpoint 32, now 16)"),
    "grad": (TINY + ["--grad", "manual"], "--resume", "(grad: checkpoint both, now manual)"),
    "loss": (TINY + ["--loss", "squared"], "--resume",
             "(activations: checkpoint relu,softmax, now relu,identity; "
             "loss: checkpoint nll, now squared)"),
    "dtype": (F32, "--resume", "(dtype: checkpoint float64, now float32)"),
    "fewer-steps": (TINY + ["--steps", "3"], "--steps",
                    "is at step 4; allowed: 4 or more to resume it, got 3"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_resume_with_other_computation_flags_is_refused_with_exit_2(
        train, checkpointed, capsys, case):
    argv, flag, message = REFUSED[case]
    before = sorted(os.listdir(checkpointed)), sorted(os.listdir(checkpointed / "checkpoints"))
    with pytest.raises(SystemExit) as exc:
        train.cli(["--steps", "4", "--resume", "--out", str(checkpointed)] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"train.py: error: argument {flag}: "), err
    assert message in err, err
    assert (sorted(os.listdir(checkpointed)),
            sorted(os.listdir(checkpointed / "checkpoints"))) == before


@pytest.mark.parametrize("argv, message", [
    (["--resume"], "argument --resume: no checkpoint in "),
    (["--checkpoint-every", "0"], "argument --checkpoint-every: expected an int >= 1"),
], ids=["no-checkpoint", "every-0"])
def test_nothing_to_resume_or_a_bad_interval_exits_2_and_writes_nothing(
        train, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        train.cli(TINY + ["--steps", "2", "--out", str(tmp_path / "run")] + argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert os.listdir(tmp_path) == []


def test_a_fresh_run_will_not_checkpoint_over_another_runs_checkpoints(train, checkpointed, capsys):
    with pytest.raises(SystemExit) as exc:
        train.cli(TINY + ["--steps", "4", "--checkpoint-every", "2", "--out", str(checkpointed)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "already holds checkpoints (latest: step 4); allowed: --resume" in err, err


class Linear(NamedTuple):  # the shape of jaxbp.nn's params: NamedTuples, with () for no params
    W: np.ndarray
    b: np.ndarray


def test_progress_round_trips_any_pytree_exactly(train, tmp_path):
    checkpoint = train.checkpoint
    rng = np.random.default_rng(0)
    params = (Linear(rng.normal(size=(3, 4)), rng.normal(size=(4,)).astype(np.float32)), (),
              Linear(rng.normal(size=(4, 2)), np.zeros(2)))
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-2))
    opt_state = optimizer.init(params)
    _, opt_state = optimizer.update(params, opt_state, params)  # nonzero moments and count
    order = dict(rng=rng.bit_generator.state, perm=rng.permutation(10))
    runs = {"b": dict(params=params, opt_state=opt_state), "a": {"x": params}}
    progress = dict(step=3, runs=runs,
                    history={"z": [1.5, 2.0, np.float32(0.1)], "y": [0.0, 1.0, 2.0]},
                    order=order, extra={"key": np.arange(2, dtype=np.uint32)},
                    counters={"accountant_steps": 3, "seconds": {"b": 0.5}})
    mngr = checkpoint.manager(str(tmp_path / "checkpoints"))
    checkpoint.save_progress(mngr, progress, computation={"lr": 0.1})
    checkpoint.close(mngr)
    fresh = dict(step=0, runs={"b": dict(params=params, opt_state=optimizer.init(params)),
                               "a": {"x": params}},
                 history={"z": [], "y": []}, order=dict(rng=None, perm=np.arange(10)),
                 extra={"key": np.zeros(2, np.uint32)}, counters={})
    mngr = checkpoint.manager(str(tmp_path / "checkpoints"))
    got = checkpoint.restore_progress(mngr, 3, fresh)
    checkpoint.close(mngr)
    assert list(got["runs"]) == ["b", "a"] and list(got["history"]) == ["z", "y"]
    assert jax.tree.structure(got["runs"]) == jax.tree.structure(progress["runs"])
    for part in ("runs", "extra"):
        for g, w in zip(jax.tree.leaves(got[part]), jax.tree.leaves(progress[part])):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(got["order"]["perm"], order["perm"])
    for c, values in progress["history"].items():
        np.testing.assert_array_equal(np.array(got["history"][c]), np.array(values, np.float64))
    assert got["order"]["rng"] == order["rng"] and got["counters"] == progress["counters"]
    assert got["step"] == 3


def test_an_interrupted_atomic_write_leaves_the_old_file_whole(train, tmp_path):
    from _common import atomic_write  # on sys.path once train.py is loaded

    path = tmp_path / "results.json"
    path.write_text('{"old": 1}')

    def half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write('{"new": ')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(str(path), half_then_fail)
    assert path.read_text() == '{"old": 1}' and os.listdir(tmp_path) == ["results.json"]
    atomic_write(str(tmp_path / "params.npz"), lambda tmp: np.savez(tmp, W=np.eye(2)))
    np.testing.assert_array_equal(np.load(tmp_path / "params.npz")["W"], np.eye(2))
    assert sorted(os.listdir(tmp_path)) == ["params.npz", "results.json"]
