"""experiments/train.py --distributed: two processes on localhost (2 CPU devices each,
jax.distributed over a free port) train exactly as one process with 4 devices."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

TRAIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                     "train.py")
FLAGS = ["--dataset", "xor", "--steps", "6", "--batch-size", "32", "--x64", "--quiet",
         "--devices", "all"]
TIMEOUT = 300  # seconds per process; normally ~10 s


def free_port() -> int:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    except OSError as e:  # a sandbox without local sockets
        pytest.skip(f"local sockets are forbidden here ({e}); jax.distributed needs one")


def start(out, devices, extra=()):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}")
    return subprocess.Popen([sys.executable, TRAIN, *FLAGS, "--out", str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs):
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:  # a process whose peer died would wait for it forever
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out
    return outputs


def test_two_processes_match_one_process_with_as_many_devices(tmp_path):
    port = free_port()
    single = start(tmp_path / "single", 4)
    multi = [start(tmp_path / "multi", 2, ["--distributed", "--coordinator", f"127.0.0.1:{port}",
                                           "--num-processes", "2", "--process-id", str(i)])
             for i in range(2)]
    outputs = finish([single, *multi])
    assert "using 4 of 4 device(s) (cpu), 2 process(es), float64" in outputs[1], outputs[1]
    results = {name: json.loads((tmp_path / name / "results.json").read_text())
               for name in ("single", "multi")}
    assert (results["single"]["processes"], results["multi"]["processes"]) == (1, 2)
    assert results["single"]["devices"] == results["multi"]["devices"] == 4
    a, b = (np.load(tmp_path / name / "params.npz") for name in ("single", "multi"))
    assert sorted(a.files) == sorted(b.files) and len(a.files) == 8  # 2 grads × 2 layers × W, W0
    for key in a.files:  # the same sums over the same 4 shards: equal to round-off
        np.testing.assert_allclose(b[key], a[key], rtol=1e-13, atol=1e-15, err_msg=key)
        assert np.max(np.abs(a[key])) > 0
    for grad in ("manual", "autodiff"):
        for key in ("train_loss", "test_loss"):
            assert abs(results["multi"][grad][key] - results["single"][grad][key]) <= 1e-13
