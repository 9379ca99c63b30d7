"""Benchmark rows for private gradients of ``jaxbp.nn`` models (issue 13).

For each model, three jitted functions timed interleaved in one loop, with XLA's
temporary memory of each compiled program beside:

  * jaxbp: ``model.clipped_grad`` (one forward, one backward with per-example hooks);
  * reference: ``jax_privacy.clipping.clipped_grad`` of ``model.loss`` on one example
    (``vmap`` of ``jax.grad``, clip, sum, divided by B): the same numbers;
  * nonprivate: the manual, non-private ``model.value_and_grad``;
  * vmap: ``vmap(jax.grad)`` + clip + mean written out (``vmap_clipped_grad``), the
    computation jax_privacy wraps (its own checks and casts cost it more).

Two ratios per model: t_clipped / t_nonprivate (the price of privacy) and the
speedup t_jax_privacy / t_clipped. Where ``jax_privacy`` cannot be imported the
reference is the computation it runs, ``vmap(jax.grad)`` + clip + mean, and the
row's ``reference`` says so.

Models (issue 13): the MLP 784-256-256-10 (B = 128), the digits CNN (B = 128,
8×8×1) and the causal transformer block (B = 16, T = 64, vocab 64, d = 128, 4 heads).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp import nn
from _timing import compare  # noqa: I001
from _bench_models import _cnn, _tiny_transformer, _transformer  # noqa: I001

CLIP_QUANTILE = 0.5  # max_norm = the median per-example norm: half the examples clipped


class PrivateCase(NamedTuple):
    name: str
    batch: int
    make: Callable  # (batch, dtype, key) -> (model, params, X, Y)
    ratio_target: float  # t_clipped / t_nonprivate ≤ this
    speedup_target: float  # t_jax_privacy / t_clipped ≥ this


def _mlp(batch, dtype, key, sizes=(784, 256, 256, 10)):
    model = nn.mlp(sizes)
    kp, kx, ky = jax.random.split(key, 3)
    X = jax.random.normal(kx, (batch, sizes[0]), dtype)
    Y = jax.nn.one_hot(jax.random.randint(ky, (batch,), 0, sizes[-1]), sizes[-1], dtype=dtype)
    return model, model.init(kp, (sizes[0],), dtype=dtype), X, Y


def _tiny_mlp(batch, dtype, key):
    return _mlp(batch, dtype, key, sizes=(12, 8, 8, 3))


CASES = (PrivateCase("mlp", 128, _mlp, 1.1, 100.0),
         PrivateCase("cnn", 128, _cnn, 1.5, 3.0),
         PrivateCase("transformer", 16, _transformer, 1.25, 2.0))
TINY_CASES = (PrivateCase("mlp", 4, _tiny_mlp, 1.1, 100.0),
              PrivateCase("cnn", 4, _cnn, 1.5, 3.0),
              PrivateCase("transformer", 2, _tiny_transformer, 1.25, 2.0))


def vmap_clipped_grad(model, max_norm: float, batch: int):
    """vmap(jax.grad) of one example's ``model.loss``, then clip and mean: what jax_privacy does."""
    def one(params, x, y):
        return model.loss(params, x[None], y[None])

    def fn(params, X, Y):
        g = jax.vmap(jax.grad(one), in_axes=(None, 0, 0))(params, X, Y)  # (B, ...) per leaf
        sq = sum(jnp.sum(leaf.reshape(batch, -1) ** 2, axis=1) for leaf in jax.tree.leaves(g))
        scale = max_norm / jnp.maximum(jnp.sqrt(sq), max_norm)
        return jax.tree.map(lambda leaf: jnp.tensordot(scale, leaf, axes=1) / batch, g)
    return fn


def peer_clipped_grad(model, max_norm: float, batch: int):
    """(fn(params, X, Y) -> clipped mean, its name): jax_privacy's, or ``vmap_clipped_grad``."""
    try:
        from jax_privacy.clipping import clipped_grad
    except ImportError:
        return (vmap_clipped_grad(model, max_norm, batch),
                "vmap(grad)+clip (jax_privacy not importable)")
    # fun(params, X, Y) gets each example with a batch axis of 1: model.loss as it is.
    fn = clipped_grad(model.loss, l2_clip_norm=max_norm, batch_argnums=(1, 2),
                      normalize_by=batch)
    return fn, "jax_privacy.clipping.clipped_grad"


def run_private(cases, dtype, *, repeats, min_sample_s, max_s, seed=0) -> list:
    """One "private_clip" row per case: both ratios, XLA temporary memory beside."""
    rows = []
    for case in cases:
        model, params, X, Y = case.make(case.batch, dtype, jax.random.key(seed))
        max_norm = float(jnp.quantile(model.per_example_grad_norms(params, X, Y), CLIP_QUANTILE))
        peer, peer_name = peer_clipped_grad(model, max_norm, case.batch)

        def clipped(p, x, y, model=model, max_norm=max_norm):
            return model.clipped_grad(p, x, y, max_norm)

        def nonprivate(p, x, y, model=model):
            return model.value_and_grad(p, x, y)

        extra = {"nonprivate": (nonprivate, (params, X, Y))}
        if peer_name.startswith("jax_privacy"):  # also the bare computation it wraps
            extra["vmap"] = (vmap_clipped_grad(model, max_norm, case.batch), (params, X, Y))
        r = compare(clipped, peer, (params, X, Y), extra=extra, repeats=repeats,
                    min_sample_s=min_sample_s, max_s=max_s)
        ratio = r["jaxbp_s"] / r["nonprivate_s"]
        rows.append({"case": case.name, "model": repr(model), "dtype": jnp.dtype(dtype).name,
                     "task": "private_clip", "B": case.batch, "reference": peer_name,
                     "max_norm": max_norm, **r,
                     "target": case.speedup_target, "ratio_nonprivate": ratio,
                     "ratio_target": case.ratio_target,
                     "speedup_met": bool(r["speedup"] >= case.speedup_target),
                     "ratio_met": bool(ratio <= case.ratio_target),
                     "met": bool(r["speedup"] >= case.speedup_target
                                 and ratio <= case.ratio_target)})
    return rows


def table_lines(row) -> list[tuple]:
    """The row's lines for benchmark.table_lines (case .. compile s): speedup, ratio, memory."""
    yes = {True: "yes", False: "NO"}
    mb = {k: (row[f"temp_bytes_{k}"] or 0) / 1e6 for k in ("jaxbp", "reference", "nonprivate")}
    vmap = [("", "", "", "  clipped vs vmap(grad)", f"{1e3 * row['jaxbp_s']:.3f} ms",
             f"{1e3 * row['vmap_s']:.3f} ms", f"{row['vmap_s'] / row['jaxbp_s']:.2f}x", "", "",
             f"{row['compile_vmap_s']:.2f}")] if "vmap_s" in row else []
    return vmap + [
        ("", "", "", "  clip / non-private", f"{1e3 * row['jaxbp_s']:.3f} ms",
         f"{1e3 * row['nonprivate_s']:.3f} ms", f"{row['ratio_nonprivate']:.2f}x",
         f"<={row['ratio_target']:.2f}x", yes[row["ratio_met"]],
         f"{row['compile_nonprivate_s']:.2f}"),
        ("", "", "", "  XLA temp memory", f"{mb['jaxbp']:.2f} MB", f"{mb['reference']:.2f} MB",
         f"non-private {mb['nonprivate']:.2f} MB", "", "", ""),
    ]
