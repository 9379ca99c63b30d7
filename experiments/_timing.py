"""Timing for the benchmarks: compile apart, then time two (or more) functions interleaved."""

from __future__ import annotations

import math
import statistics
import time
from typing import Callable

import jax

MIN_REPEATS = 5  # fewer repeats for slow pairs, but never fewer than this (or the mode's repeats)
WARMUP_CALLS = 2
SETTLE_S = 0.2  # pause after a sample (at most its per-call time): see time_interleaved


def compile_timed(fn: Callable, *args):
    """jit(fn) lowered and compiled for these arguments; (executable, seconds)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t0


def temp_size(compiled) -> int | None:
    """XLA's temporary buffer size of a compiled executable (None where not reported)."""
    try:
        return int(compiled.memory_analysis().temp_size_in_bytes)
    except (AttributeError, TypeError, NotImplementedError):
        return None


def time_interleaved(calls: dict, *, repeats: int, min_sample_s: float,
                     max_s: float = math.inf) -> dict:
    """Median seconds per call of each compiled fn, timed in alternating order.

    Each sample runs a fn `number` times (enough to last ``min_sample_s``) and
    blocks on every result, which is dropped at once so that at most one large
    output is alive. Slow fns get fewer repeats (about ``max_s`` in all, at
    least ``min(MIN_REPEATS, repeats)``). After each sample the loop pauses for
    up to ``SETTLE_S``: freeing a large output (GBs from the vmap references)
    finishes in the background and otherwise slows the next fn's sample ~4×.

    Args:
      calls: {name: (compiled fn, args)}.

    Returns:
      {name: {"median_s", "samples_s", "number"}}.
    """
    number, total = {}, 0.0
    for name, (fn, args) in calls.items():
        for _ in range(WARMUP_CALLS):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            single = time.perf_counter() - t0
        number[name] = max(1, math.ceil(min_sample_s / max(single, 1e-9)))
        total += number[name] * single
    repeats = max(min(MIN_REPEATS, repeats), int(min(repeats, max_s / max(total, 1e-9))))
    samples = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            (fn, args), n = calls[name], number[name]
            t0 = time.perf_counter()
            for _ in range(n):
                jax.block_until_ready(fn(*args))
            samples[name].append((time.perf_counter() - t0) / n)
            time.sleep(min(SETTLE_S, samples[name][-1]))
    return {name: {"median_s": statistics.median(s), "samples_s": s, "number": number[name]}
            for name, s in samples.items()}


def compare(jaxbp_fn, reference_fn, args, *, extra=None, repeats, min_sample_s, max_s) -> dict:
    """Compile both, time them interleaved; the speedup t_reference / t_jaxbp.

    Args:
      extra: {name: (fn, args)} timed in the same interleaved loop (bounds);
        their medians come back as ``{name}_s``, compile times as
        ``compile_{name}_s`` and XLA's temporary memory as ``temp_bytes_{name}``.
    """
    fns = {"jaxbp": (jaxbp_fn, args), "reference": (reference_fn, args), **(extra or {})}
    calls, compile_s, temp_bytes = {}, {}, {}
    for name, (fn, fn_args) in fns.items():
        compiled, compile_s[name] = compile_timed(fn, *fn_args)
        calls[name] = (compiled, fn_args)
        temp_bytes[name] = temp_size(compiled)
    t = time_interleaved(calls, repeats=repeats, min_sample_s=min_sample_s, max_s=max_s)
    paired = sorted(r / m for m, r in zip(t["jaxbp"]["samples_s"], t["reference"]["samples_s"]))
    q = statistics.quantiles(paired, n=4) if len(paired) > 1 else paired * 3
    return {
        **{f"{name}_s": t[name]["median_s"] for name in fns},
        "jaxbp_min_s": min(t["jaxbp"]["samples_s"]),
        "reference_min_s": min(t["reference"]["samples_s"]),
        "speedup": t["reference"]["median_s"] / t["jaxbp"]["median_s"],
        "paired_speedup_quartiles": [q[0], q[1], q[2]],
        **{f"compile_{name}_s": c for name, c in compile_s.items()},
        **{f"temp_bytes_{name}": b for name, b in temp_bytes.items()},
        "repeats": len(paired), "samples": {k: v["samples_s"] for k, v in t.items()},
    }
