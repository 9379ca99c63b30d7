"""One mistake of each kind, planted in small layers: does ``report.diagnosis`` name it?

Each case is a small layer written in JAX (dense, conv, pooling, embedding, dropout, batch
norm, a recurrent step) with a hand-written backward that carries one classic mistake.
``jaxbp.check_vjp`` compares it with ``jax.vjp``; the script prints the first finding
and writes the table "kind planted → kind found".

    python experiments/diagnose.py                      # float64, into runs/diagnose
    python experiments/diagnose.py --dtype float32 --out /tmp/diag

Writes DIR/results.json (every case: planted, found, where, detail) and DIR/table.md
(the table in the README).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxbp  # noqa: E402

# ---------------------------------------------------------------- knobs (= CLI defaults)
OUT = "runs/diagnose"
DTYPE = "float64"
SEED = 0

DN = ("NHWC", "HWIO", "NHWC")
IDS = np.array([1, 3, 1, 0, 3])  # rows 1 and 3 are looked up twice


def conv(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def conv_grads(x, w, dy):
    return jax.vjp(conv, x, w)[1](dy)


def ring(shape):
    m = np.zeros(shape, bool)
    m[:, 0], m[:, -1], m[:, :, 0], m[:, :, -1] = True, True, True, True
    return m


def pool(x):  # 2×2 max pooling of (H, W) by reshape and max
    H, W = x.shape
    return x.reshape(H // 2, 2, W // 2, 2).max(axis=(1, 3))


def pool_every_tie(x, dy):  # the whole window gradient to every tied maximum
    H, W = x.shape
    up = jnp.repeat(jnp.repeat(pool(x), 2, 0), 2, 1)
    return (jnp.where(x == up, jnp.repeat(jnp.repeat(dy, 2, 0), 2, 1), 0.0),)


def dropout(x):
    keep = jax.random.bernoulli(jax.random.key(7), 0.5, x.shape)
    return jnp.where(keep, 2 * x, 0.0)


def batch_norm(x):
    mu = x.mean(axis=0, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=0, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-5)


def batch_norm_no_mean_term(x, dy):  # the path through μ dropped
    mu = x.mean(axis=0, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=0, keepdims=True)
    inv = 1 / jnp.sqrt(var + 1e-5)
    x_hat = (x - mu) * inv
    return (inv * (dy - x_hat * (dy * x_hat).mean(axis=0, keepdims=True)),)


def rnn(h0, xs, Wh):  # h_t = tanh(Wh h_{t−1} + x_t), outputs every h_t
    def step(h, x):
        h = jnp.tanh(Wh @ h + x)
        return h, h
    return jax.lax.scan(step, h0, xs)[1]


def rnn_no_carry(h0, xs, Wh, dys):  # BPTT that forgets the gradient carried back in h
    hs = rnn(h0, xs, Wh)
    dz = dys * (1 - hs ** 2)
    prev = jnp.concatenate([h0[None], hs[:-1]])
    return (Wh.T @ dz[0], dz, dz.T @ prev)


def cases(dt):
    k = jax.random.split(jax.random.key(SEED), 6)
    W = jax.random.normal(k[0], (3, 4), dt)
    Wsq = jax.random.normal(k[0], (3, 3), dt)
    x = jax.random.normal(k[1], (5, 3), dt)
    b = jax.random.normal(k[2], (4,), dt)
    img = jax.random.normal(k[3], (1, 5, 5, 2), dt)
    ker = jax.random.normal(k[4], (3, 3, 2, 2), dt)
    table = jax.random.normal(k[5], (6, 2), dt)
    grid = jnp.round(jax.random.normal(k[3], (4, 4), dt))  # integers: ties in some windows
    kinked = x.at[0, 0].set(0).at[2, 1].set(0)
    dense = lambda W, x: x @ W  # noqa: E731
    # (layer, planted kind, forward, backward, primals)
    return [
        ("dense", "scale", dense, lambda W, x, dy: (x.T @ dy / 5, dy @ W.T), (W, x)),
        ("dense", "sign", dense, lambda W, x, dy: (x.T @ dy, -(dy @ W.T)), (W, x)),
        ("dense", "transpose", dense, lambda W, x, dy: ((x.T @ dy).T, dy @ W.T), (Wsq, x)),
        ("conv", "flipped", conv, lambda x, w, dy: (conv_grads(x, w, dy)[0],
                                                    conv_grads(x, w, dy)[1][::-1, ::-1]),
         (img, ker)),
        ("dropout", "masked", dropout, lambda x, dy: (2 * dy,), (x,)),
        ("embedding", "repeated ids", lambda T: T[IDS],
         lambda T, dy: (jnp.zeros_like(T).at[IDS].set(dy),), (table,)),
        ("max pool", "ties", pool, pool_every_tie, (grid,)),
        ("conv", "border", conv, lambda x, w, dy: (conv_grads(x, w, dy)[0] * (1 + ring(x.shape)),
                                                   conv_grads(x, w, dy)[1]), (img, ker)),
        ("recurrent step", "time steps", rnn, rnn_no_carry,
         (jnp.zeros(3, dt), jax.random.normal(k[1], (4, 3), dt), Wsq / 2)),
        ("batch norm", "missing term", batch_norm, batch_norm_no_mean_term, (x,)),
        ("dense + bias", "reduction", lambda W, b, x: x @ W + b[None],
         lambda W, b, x, dy: (x.T @ dy, dy.mean(axis=0), dy @ W.T), (W, b, x)),
        ("dense", "clipped", dense, lambda W, x, dy: (jnp.clip(x.T @ dy, -1, 1), dy @ W.T),
         (W, x)),
        ("relu", "kink", jax.nn.relu, lambda x, dy: (dy * (x >= 0),), (kinked,)),
        ("dense", "other", dense, lambda W, x, dy: (x.T @ dy + 0.3 * (x.T ** 2) @ dy,
                                                    dy @ W.T), (W, x)),
    ]


def main(out: str = OUT, dtype: str = DTYPE) -> list:
    """Runs every case; returns and writes the results (see the module docstring)."""
    dt = {"float32": jnp.float32, "float64": jnp.float64}[dtype]
    results = []
    for layer, planted, forward, backward, primals in cases(dt):
        start = time.perf_counter()
        report = jaxbp.check_vjp(forward, backward, *primals)
        first = report.diagnosis[0] if report.diagnosis else None
        results.append(dict(layer=layer, planted=planted, found=first.kind if first else None,
                            where=first.where if first else None,
                            detail=first.detail if first else "", ok=report.ok,
                            seconds=round(time.perf_counter() - start, 3)))
        mark = "✓" if results[-1]["found"] == planted else "✗"
        print(f"{mark} {layer:<15} {planted:<13} → {results[-1]['found']!s:<13} "
              f"{results[-1]['where'] or ''}: {results[-1]['detail'][:90]}")
    lines = ["| layer | kind planted | kind found | where |", "|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['planted']} | {r['found']} | {r['where']} |" for r in results]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(dict(dtype=dtype, results=results), f, indent=1)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    hits = sum(r["found"] == r["planted"] for r in results)
    print(f"{hits}/{len(results)} kinds named ({dtype}); table in {out}/table.md")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--dtype", default=DTYPE, choices=("float32", "float64"))
    args = parser.parse_args()
    main(out=args.out, dtype=args.dtype)
