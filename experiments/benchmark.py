"""Speed: jaxbp's hand-written backprop against the jax.grad-based equivalent.

For each case (an MLP, a batch size and a dtype) and each task, the jaxbp
function and its jax.grad-based reference are compiled (compile time reported
separately), warmed up, then timed *interleaved* in this one process: each
repeat times both, in alternating order, and the table shows medians and the
speedup t_reference / t_jaxbp (> 1: jaxbp is faster). Every call ends in
``block_until_ready``; the public methods are timed under ``jax.jit``, where
their value checks (NaN scans of X and Y) are skipped.

Tasks:
  * batch gradient: ``net.value_and_grad`` vs ``jax.value_and_grad(net.batch_loss)``,
    and for the large MLP its GFLOP/s next to the same matmuls done by plain
    ``jnp.dot`` calls, one at a time, in the same interleaved loop (share of the
    attainable matmul rate);
  * per-example gradients: ``net.per_example_grads`` vs ``vmap(grad)``, next to
    the memory-bandwidth bound: the time to write the same B·m·n output;
  * per-example gradient norms (ghost norm) vs ``vmap(grad)`` then a norm;
  * clipped mean gradient (DP-SGD, no noise) vs ``vmap(grad)`` then clipping;
  * ``jaxbp.nn`` models (the digits CNN, a transformer block): ``model.value_and_grad``
    vs ``jax.value_and_grad(model.loss)``, with XLA's temporary memory beside
    (``experiments/_bench_models.py``).

The vmap-based references hold B×m×n per-example gradients (12.9 GB at B=512
for the large MLP in float32), so the per-example tasks use the largest
power-of-two batch whose per-example gradients fit in ``PER_EXAMPLE_BYTES``
(full: 3.5 GB, B=128 in float32 and 64 in float64 for the large MLP; quick:
0.85 GB, B=32 and 16, which keeps the process under 4 GB).

Usage:
  python experiments/benchmark.py                # full, float32
  python experiments/benchmark.py --x64 --json runs/benchmark.json   # float32 and float64
  python experiments/benchmark.py --quick        # fewer repeats, large case < 4 GB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # siblings, also when imported
from _timing import MIN_REPEATS, compare  # noqa: E402,I001
import _bench_models  # noqa: E402,I001
import _bench_private  # noqa: E402,I001


class Case(NamedTuple):
    name: str
    sizes: tuple[int, ...]
    batch: int  # batch gradient; the per-example tasks use at most this


ACTIVATIONS = ("relu", "relu", "softmax")  # hidden relu, softmax + nll: an MNIST-style MLP
LOSS = "nll"
CASES = (Case("small", (784, 256, 256, 10), 128), Case("large", (1024, 2048, 2048, 10), 512))
TINY_CASES = (Case("small", (16, 32, 32, 4), 8),  # for the tests: seconds, not speed
              Case("large", (32, 64, 64, 4), 16))
# The per-example tasks use the largest power-of-two batch (≤ the case's) whose B per-example
# gradients fit in this many bytes: the vmap references hold them all, plus about as much
# again in temporaries (large MLP: 25 MB per example in float32, 50 MB in float64).
PER_EXAMPLE_BYTES = {"full": 3.5e9, "quick": 0.85e9, "tiny": 1e5}
REPEATS = {"full": 41, "quick": 7, "tiny": 3}
MIN_SAMPLE_S = {"full": 0.05, "quick": 0.02, "tiny": 0.0}  # calls per sample reach this
MAX_PAIR_S = {"full": 45.0, "quick": 12.0, "tiny": 1.0}  # fewer repeats for slow pairs...
CLIP_QUANTILE = 0.5  # max_norm = this quantile of the per-example norms: half clipped

# Targets on the speedup t_reference / t_jaxbp (the "ratio ≤ 1.0" for the batch
# gradient is speedup ≥ 1.0) and on the share of the jnp.dot rate.
TARGETS = {"batch_grad": 1.0, "per_example_grads": 1.8, "norms": 20.0, "dot_share": 0.90}
# (The issue sets no target for clipping; its row shows the speedup alone.)


# ------------------------------------------------------------------ the references

def make_references(net):
    """jax.grad-based equivalents of the jaxbp functions, for one network."""
    per_example = jax.vmap(jax.grad(net.loss), in_axes=(None, 0, 0))

    def norms(params, X, Y):
        g = per_example(params, X, Y)
        return jnp.sqrt(sum(jnp.sum(leaf.reshape(X.shape[0], -1) ** 2, axis=1)
                            for leaf in jax.tree.leaves(g)))  # (B,)

    def clipped(params, X, Y, max_norm):
        g = per_example(params, X, Y)
        n = jnp.sqrt(sum(jnp.sum(leaf.reshape(X.shape[0], -1) ** 2, axis=1)
                         for leaf in jax.tree.leaves(g)))
        weight = max_norm / jnp.maximum(n, max_norm) / X.shape[0]  # same formula as jaxbp
        return jax.tree.map(lambda leaf: jnp.tensordot(weight, leaf, axes=1), g)

    return {"batch_grad": jax.value_and_grad(net.batch_loss), "per_example_grads": per_example,
            "norms": norms, "clipped": clipped}


def batch_grad_flops(sizes, B) -> int:
    """Matmul FLOPs of one batch gradient: forward, links W^ℓ (ℓ ≥ 2), weight products."""
    mn = [m * n for m, n in zip(sizes[:-1], sizes[1:])]
    return 2 * B * (3 * sum(mn) - mn[0])


def _forward_dot(A_prev, W):
    return jnp.dot(A_prev, W)  # (B, m) @ (m, n)


def _link_dot(d, W):
    return jnp.dot(d, W.T)  # (B, n) @ (n, m)


def _weight_dot(A_prev, d):
    return jnp.dot(A_prev.T, d)  # (m, B) @ (B, n)


def dot_calls(A_prevs, deltas, Ws) -> dict:
    """The batch gradient's matmuls as separate plain jnp.dot calls: {name: (fn, args)}.

    Timed one at a time (no overlap, nothing else fused in), their summed time
    is the attainable matmul time for the batch gradient's FLOPs.
    """
    calls = {}
    for l, (A_prev, d, W) in enumerate(zip(A_prevs, deltas, Ws), start=1):
        calls[f"dot{l}_forward"] = (_forward_dot, (A_prev, W))
        if l > 1:
            calls[f"dot{l}_link"] = (_link_dot, (d, W))
        calls[f"dot{l}_weight"] = (_weight_dot, (A_prev, d))
    return calls


def write_per_example_output(A_prevs, deltas):
    """Writes arrays shaped like per_example_grads' output: the memory-traffic bound."""
    return [(jnp.broadcast_to(d[:, None, :], (d.shape[0], A.shape[1], d.shape[1])), d + 0)
            for A, d in zip(A_prevs, deltas)]


# ------------------------------------------------------------------ one case

def per_example_batch(net, batch: int, dtype, max_bytes: float) -> int:
    """The largest power of two B ≤ batch with B per-example gradients in max_bytes (≥ 1)."""
    per_example = jnp.dtype(dtype).itemsize * sum((m + 1) * n for m, n in net.layer_shapes)
    B = 1
    while 2 * B <= batch and 2 * B * per_example <= max_bytes:
        B *= 2
    return B


def run_case(case: Case, dtype, *, repeats: int, min_sample_s: float, max_s: float,
             max_bytes: float, seed: int = 0) -> list:
    import jaxbp

    net = jaxbp.Network(sizes=case.sizes, activations=ACTIVATIONS, loss=LOSS)
    refs = make_references(net)
    kp, kx, ky = jax.random.split(jax.random.key(seed), 3)
    params = net.init(kp, dtype=dtype)
    X = jax.random.normal(kx, (case.batch, case.sizes[0]), dtype)
    Y = jax.nn.one_hot(jax.random.randint(ky, (case.batch,), 0, case.sizes[-1]),
                       case.sizes[-1], dtype=dtype)
    Bp = per_example_batch(net, case.batch, dtype, max_bytes)
    Xp, Yp = X[:Bp], Y[:Bp]
    norms = net.per_example_grad_norms(params, Xp, Yp)
    max_norm = jnp.quantile(norms, CLIP_QUANTILE).astype(dtype)
    timing = dict(repeats=repeats, min_sample_s=min_sample_s, max_s=max_s)
    base = {"case": case.name, "sizes": list(case.sizes), "dtype": jnp.dtype(dtype).name}
    rows = []

    def add(task, B, reference, result, **extra):
        rows.append({**base, "task": task, "B": B, "reference": reference, **result, **extra})

    extra = None
    if case.name == "large":  # the same matmuls by plain jnp.dot, interleaved
        trace = net.forward_trace(params, X)
        extra = dot_calls(trace.a[:-1], net.deltas(params, X, Y), tuple(p.W for p in params))
    r = compare(net.value_and_grad, refs["batch_grad"], (params, X, Y), extra=extra, **timing)
    add("batch_grad", case.batch, "jax.value_and_grad", r, target=TARGETS["batch_grad"],
        met=r["speedup"] >= TARGETS["batch_grad"])
    if extra:
        flops = batch_grad_flops(case.sizes, case.batch)
        dot_s = sum(r[f"{name}_s"] for name in extra)
        share = dot_s / r["jaxbp_s"]
        add("gflops_vs_dot", case.batch, "jnp.dot, same matmuls",
            {"jaxbp_gflops": flops / r["jaxbp_s"] / 1e9,
             "reference_gflops": flops / r["reference_s"] / 1e9,
             "dot_gflops": flops / dot_s / 1e9, "dot_s": dot_s, "flops": flops,
             "share": share, "compile_dot_s": sum(r[f"compile_{name}_s"] for name in extra)},
            target=TARGETS["dot_share"], met=share >= TARGETS["dot_share"])

    trace = net.forward_trace(params, Xp)  # the write bound's inputs: any (B, m), (B, n)
    extra = {"write": (write_per_example_output, (trace.a[:-1], net.deltas(params, Xp, Yp)))}
    r = compare(net.per_example_grads, refs["per_example_grads"], (params, Xp, Yp),
                extra=extra, **timing)
    out_bytes = sum(jnp.dtype(dtype).itemsize * Bp * (m + 1) * n
                    for m, n in net.layer_shapes)
    add("per_example_grads", Bp, "vmap(grad)", r, target=TARGETS["per_example_grads"],
        met=r["speedup"] >= TARGETS["per_example_grads"], output_bytes=out_bytes,
        write_gb_per_s=out_bytes / r["write_s"] / 1e9,
        bound_speedup=r["reference_s"] / r["write_s"], share_of_bound=r["write_s"] / r["jaxbp_s"])

    r = compare(net.per_example_grad_norms, refs["norms"], (params, Xp, Yp), **timing)
    add("norms", Bp, "vmap(grad)+norm", r, target=TARGETS["norms"],
        met=r["speedup"] >= TARGETS["norms"])

    r = compare(net.clipped_grad, refs["clipped"], (params, Xp, Yp, max_norm), **timing)
    add("clipped", Bp, "vmap(grad)+clip", r, target=None, met=None)
    return rows


# ------------------------------------------------------------------ report

COLUMNS = ("case", "dtype", "B", "task", "jaxbp", "reference", "speedup", "target", "met",
           "compile s")
TASK_LABELS = {"batch_grad": "batch grad", "gflops_vs_dot": "GFLOP/s vs jnp.dot",
               "per_example_grads": "per-example grads", "write_bound": "  write bound",
               "norms": "per-example norms", "clipped": "clipped grad",
               "model_grad": "nn model grad", "memory": "  XLA temp memory",
               "private_clip": "clipped vs jax_privacy"}


def table_lines(rows: list) -> list[str]:
    """The printed table: one line per row; times in ms, speedup = t_reference / t_jaxbp."""
    lines = []
    for row in rows:
        task = TASK_LABELS[row["task"]]
        met = {True: "yes", False: "NO", None: ""}[row["met"]]
        if row["task"] == "gflops_vs_dot":
            cells = (f"{row['jaxbp_gflops']:.1f} GF/s", f"{row['dot_gflops']:.1f} GF/s",
                     f"{100 * row['share']:.1f}%", f">={100 * row['target']:.0f}%", met,
                     f"{row['compile_dot_s']:.2f}")
        else:
            lo, _, hi = row["paired_speedup_quartiles"]
            cells = (f"{1e3 * row['jaxbp_s']:.3f} ms", f"{1e3 * row['reference_s']:.3f} ms",
                     f"{row['speedup']:.2f}x [{lo:.2f}-{hi:.2f}]",
                     "-" if row["target"] is None else f">={row['target']:.1f}x",
                     met, f"{row['compile_jaxbp_s']:.2f} / {row['compile_reference_s']:.2f}")
        lines.append((row["case"], row["dtype"], str(row["B"]), task, *cells))
        if row["task"] == "model_grad" and row["temp_bytes_jaxbp"] is not None:
            lines.append(("", "", "", TASK_LABELS["memory"],
                          f"{row['temp_bytes_jaxbp'] / 1e6:.2f} MB",
                          f"{row['temp_bytes_reference'] / 1e6:.2f} MB",
                          f"{row['temp_bytes_jaxbp'] / max(row['temp_bytes_reference'], 1):.2f}x",
                          "<=1.00x", {True: "yes", False: "NO"}[row["memory_met"]], ""))
        if row["task"] == "private_clip":
            lines += _bench_private.table_lines(row)
        if row["task"] == "per_example_grads":
            lines.append(("", "", "", TASK_LABELS["write_bound"],
                          f"{1e3 * row['write_s']:.3f} ms",
                          f"{row['write_gb_per_s']:.1f} GB/s",
                          f"{row['bound_speedup']:.2f}x",
                          f"{100 * row['share_of_bound']:.0f}% of bound", "", ""))
    widths = [max(len(c), *(len(line[i]) for line in lines)) for i, c in enumerate(COLUMNS)]

    def fmt(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return [fmt(COLUMNS), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *(fmt(line) for line in lines)]


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "backend": jax.default_backend(), "device": str(jax.devices()[0]),
            "device_kind": jax.devices()[0].device_kind}


def peak_rss_gb() -> float:
    """This process's peak resident memory so far (Linux reports kB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1e9 if sys.platform == "darwin" else 1e6)


def main(*, quick: bool = False, x64: bool = False, json_out: str | None = None,
         tiny: bool = False, seed: int = 0) -> dict:
    """Runs every case and task, prints the table, optionally writes JSON.

    Args:
      quick: fewer repeats and a smaller per-example batch for the large MLP
        (keeps the process under 4 GB).
      x64: also run float64 (turns on jax_enable_x64); float32 always runs.
      json_out: path of a JSON file for the rows, the machine and the settings.
      tiny: tiny shapes and 3 repeats, for the tests: checks structure, not speed.
      seed: PRNG seed of parameters and data.

    Returns:
      {"machine", "settings", "rows", "peak_rss_gb", "all_targets_met"}.
    """
    if x64:
        jax.config.update("jax_enable_x64", True)
    mode = "tiny" if tiny else "quick" if quick else "full"
    cases = TINY_CASES if tiny else CASES
    dtypes = (jnp.float32, jnp.float64) if x64 else (jnp.float32,)
    info = machine()
    print(f"jaxbp benchmark ({mode}): {info['cpu']}, {info['cores']} cores, "
          f"jax {info['jax']} on {info['device']}", flush=True)
    rows = []
    for case in cases:
        for dtype in dtypes:
            t0 = time.perf_counter()
            rows += run_case(case, dtype, repeats=REPEATS[mode], min_sample_s=MIN_SAMPLE_S[mode],
                             max_s=MAX_PAIR_S[mode], max_bytes=PER_EXAMPLE_BYTES[mode],
                             seed=seed)
            print(f"  {case.name} {jnp.dtype(dtype).name}: {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    suites = (("nn models", _bench_models.run_models,  # the digits CNN, a transformer block
               _bench_models.TINY_CASES if tiny else _bench_models.CASES),
              ("private", _bench_private.run_private,  # private gradients of those and an MLP
               _bench_private.TINY_CASES if tiny else _bench_private.CASES))
    for label, run, model_cases in suites:
        for dtype in dtypes:
            t0 = time.perf_counter()
            rows += run(model_cases, dtype, repeats=REPEATS[mode], min_sample_s=MIN_SAMPLE_S[mode],
                        max_s=MAX_PAIR_S[mode], seed=seed)
            print(f"  {label} {jnp.dtype(dtype).name}: {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
    result = {
        "machine": info,
        "settings": {"mode": mode, "repeats": REPEATS[mode], "min_repeats": MIN_REPEATS,
                     "max_pair_s": MAX_PAIR_S[mode], "min_sample_s": MIN_SAMPLE_S[mode],
                     "per_example_bytes": PER_EXAMPLE_BYTES[mode],
                     "activations": list(ACTIVATIONS), "loss": LOSS, "seed": seed,
                     "clip_quantile": CLIP_QUANTILE, "targets": TARGETS},
        "rows": rows,
        "peak_rss_gb": peak_rss_gb(),
        "all_targets_met": all(row["met"] is not False for row in rows),
    }
    print("\n".join(table_lines(rows)))
    print("speedup = t_reference / t_jaxbp, median of interleaved repeats [paired quartiles]; "
          "compile s = jaxbp / reference.")
    print("write bound: time to write the per-example output alone (B·m·n); its speedup "
          "column bounds per-example grads' speedup; share = t_write / t_jaxbp.")
    if tiny:
        print("tiny shapes (for the tests): these timings say nothing about speed.")
    missed = [f"{r['case']} {r['dtype']} {r['task']}" for r in rows if r["met"] is False]
    print(f"peak process memory {result['peak_rss_gb']:.2f} GB; "
          + ("all targets met" if not missed else "targets missed: " + ", ".join(missed)))
    if json_out:
        os.makedirs(os.path.dirname(os.path.abspath(json_out)), exist_ok=True)
        with open(json_out, "w") as f:
            json.dump(result, f, indent=1)
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="fewer repeats; the large case stays under 4 GB")
    p.add_argument("--x64", action="store_true", help="also run float64 (float32 always runs)")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the results as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests only
    return p.parse_args(argv)


if __name__ == "__main__":
    main(**vars(parse_args()))
