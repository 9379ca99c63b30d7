"""experiments/benchmark.py: the table's structure and JSON on tiny shapes; never speed."""

import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "benchmark.py"
TASKS = ["batch_grad", "per_example_grads", "norms", "clipped"]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_prints_the_table_and_writes_json(tmp_path):
    # One subprocess for all checks (a module fixture could run once per xdist worker).
    out = tmp_path / "bench.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--tiny", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    check_json_has_every_case_and_task(result)
    check_rows_are_consistent(result)
    check_printed_table_has_one_line_per_row(proc.stdout, result)


def check_json_has_every_case_and_task(result):
    assert set(result) >= {"machine", "settings", "rows", "peak_rss_gb", "all_targets_met"}
    assert result["settings"]["mode"] == "tiny"
    assert result["machine"]["backend"] == "cpu" and result["machine"]["cores"] >= 1
    got = [(r["case"], r["dtype"], r["task"]) for r in result["rows"]]
    want = [("small", "float32", t) for t in TASKS]
    want += [("large", "float32", t) for t in TASKS[:1] + ["gflops_vs_dot"] + TASKS[1:]]
    want += [(name, "float32", "model_grad") for name in ("cnn", "transformer", "lstm-lm")]  # jaxbp.nn
    want += [(name, "float32", "private_clip") for name in ("mlp", "cnn", "transformer")]
    assert got == want
    assert 0 < result["peak_rss_gb"] < 4


def check_rows_are_consistent(result):
    for row in result["rows"]:
        assert isinstance(row["met"], bool) or (row["met"] is None and row["target"] is None)
        if row["task"] == "gflops_vs_dot":
            assert row["share"] == pytest.approx(row["jaxbp_gflops"] / row["dot_gflops"])
            continue
        assert row["jaxbp_s"] > 0 and row["reference_s"] > 0
        assert row["speedup"] == pytest.approx(row["reference_s"] / row["jaxbp_s"])
        lo, mid, hi = row["paired_speedup_quartiles"]
        assert lo <= mid <= hi
        assert len(row["samples"]["jaxbp"]) == len(row["samples"]["reference"]) == row["repeats"]
        assert row["compile_jaxbp_s"] > 0 and row["compile_reference_s"] > 0
        if row["task"] == "model_grad":  # time ratio and XLA temp memory both count
            assert row["ratio"] == pytest.approx(1 / row["speedup"])
            assert row["met"] == (row["speedup"] >= row["target"] and row["memory_met"])
        elif row["task"] == "private_clip":  # speedup over jax_privacy and clip / non-private
            assert row["speedup_met"] == (row["speedup"] >= row["target"])
            assert row["ratio_met"] == (row["ratio_nonprivate"] <= row["ratio_target"])
            assert row["met"] == (row["speedup_met"] and row["ratio_met"])
        elif row["target"] is not None:
            assert row["met"] == (row["speedup"] >= row["target"])
        assert row["jaxbp_min_s"] <= row["jaxbp_s"] and row["reference_min_s"] <= row["reference_s"]
    pe = [r for r in result["rows"] if r["task"] == "per_example_grads"]
    for row in pe:  # 4 bytes (float32) × B × Σ (m + 1) n
        m_n = list(zip(row["sizes"][:-1], row["sizes"][1:]))
        assert row["output_bytes"] == 4 * row["B"] * sum((m + 1) * n for m, n in m_n)
        assert row["share_of_bound"] == pytest.approx(row["write_s"] / row["jaxbp_s"])


def check_printed_table_has_one_line_per_row(stdout, result):
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["case", "dtype", "B", "task", "jaxbp", "reference", "speedup", "target",
                      "met", "compile s"]
    body = lines[2:]
    bench = load_benchmark()
    extra = sum(1 if r["task"] == "per_example_grads"  # its write bound
                else 1 if r["task"] == "model_grad" and r["temp_bytes_jaxbp"] is not None  # memory
                else len(bench._bench_private.table_lines(r)) if r["task"] == "private_clip"
                else 0 for r in result["rows"])
    assert len(body) == len(result["rows"]) + extra
    assert all(len(line.strip("|").split("|")) == len(header) for line in body)
    assert "peak process memory" in stdout


def test_batch_grad_flops_closed_form():
    bench = load_benchmark()
    # 2B(3Σmn − m¹n¹): forward and weight products on every layer, links from layer 2.
    assert bench.batch_grad_flops((1024, 2048, 2048, 10), 512) == 2 * 512 * (
        3 * (1024 * 2048 + 2048 * 2048 + 2048 * 10) - 1024 * 2048)
    assert bench.batch_grad_flops((3, 2), 5) == 2 * 5 * 2 * 3 * 2


def test_dot_calls_do_the_batch_gradients_flops():
    import jax.numpy as jnp

    bench = load_benchmark()
    sizes, B = (7, 5, 4, 3), 6
    A_prevs = tuple(jnp.ones((B, m)) for m in sizes[:-1])
    deltas = tuple(jnp.ones((B, n)) for n in sizes[1:])
    Ws = tuple(jnp.ones((m, n)) for m, n in zip(sizes[:-1], sizes[1:]))
    calls = bench.dot_calls(A_prevs, deltas, Ws)
    assert len(calls) == 3 * 3 - 1  # no link into the input
    flops = 0
    for fn, (lhs, rhs) in calls.values():
        out = fn(lhs, rhs)
        k = math.isqrt(lhs.size * rhs.size // out.size)  # (p, k) @ (k, q): k² = pk·kq / pq
        flops += 2 * out.size * k
    assert flops == bench.batch_grad_flops(sizes, B)


def test_references_agree_with_jaxbp():
    # The benchmark times equivalent computations: check its references give jaxbp's numbers.
    import jax
    import jax.numpy as jnp

    import jaxbp
    from jaxbp import relative_error, tree_relative_error

    bench = load_benchmark()
    net = jaxbp.Network(sizes=(5, 6, 3), activations=bench.ACTIVATIONS[1:], loss=bench.LOSS)
    params = net.init(jax.random.key(0), dtype=jnp.float64)
    X = jax.random.normal(jax.random.key(1), (4, 5), jnp.float64)
    Y = jax.nn.one_hot(jnp.array([0, 2, 1, 2]), 3, dtype=jnp.float64)
    refs = bench.make_references(net)
    assert tree_relative_error(refs["batch_grad"](params, X, Y),
                               net.value_and_grad(params, X, Y)) < 1e-12
    assert tree_relative_error(refs["per_example_grads"](params, X, Y),
                               net.per_example_grads(params, X, Y)) < 1e-12
    norms = net.per_example_grad_norms(params, X, Y)
    assert relative_error(refs["norms"](params, X, Y), norms) < 1e-12
    C = float(jnp.median(norms))
    assert tree_relative_error(refs["clipped"](params, X, Y, C),
                               net.clipped_grad(params, X, Y, C)) < 1e-12
    # The write bound writes arrays shaped like the per-example gradients.
    trace = net.forward_trace(params, X)
    written = bench.write_per_example_output(trace.a[:-1], net.deltas(params, X, Y))
    assert [w.shape for pair in written for w in pair] == [
        g.shape for layer in net.per_example_grads(params, X, Y) for g in layer]
