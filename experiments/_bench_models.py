"""Benchmark rows for ``jaxbp.nn`` models: manual ``model.value_and_grad`` against
``jax.value_and_grad(model.loss)``, both jitted, timed interleaved, with XLA's
temporary memory of each compiled program beside.

Models (as issue 10 sets them):
  * cnn: the digits CNN on (B = 128, 8, 8, 1) images (``jaxbp.nn.digits_cnn``);
  * transformer: one causal block on token ids (B = 16, T = 64), vocab 64, d = 128,
    4 heads (``jaxbp.nn.transformer_block``);
  * lstm-lm: a character LSTM language model on token ids (B = 32, T = 32), vocabulary 30,
    Embedding(30, 64) -> LSTM(128) -> Linear(30) -> softmax, nll.

Target: t_manual / t_autodiff ≤ 0.9 (the table's speedup ≥ 1/0.9), and temporary
memory not above autodiff's.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxbp import nn
from _timing import compare  # noqa: I001

RATIO_TARGET = 0.9  # t_manual / t_autodiff


class ModelCase(NamedTuple):
    name: str
    batch: int
    make: object  # () -> (model, params, X, Y) for a dtype and key


def _cnn(batch, dtype, key):
    model = nn.digits_cnn()
    kp, kx, ky = jax.random.split(key, 3)
    X = jax.random.normal(kx, (batch, 8, 8, 1), dtype)
    Y = jax.nn.one_hot(jax.random.randint(ky, (batch,), 0, 10), 10, dtype=dtype)
    return model, model.init(kp, (8, 8, 1), dtype=dtype), X, Y


def _transformer(batch, dtype, key, *, T=64, vocab=64, dim=128, heads=4):
    model = nn.transformer_block(vocab, dim, heads)
    kp, kx = jax.random.split(key)
    ids = jax.random.randint(kx, (batch, T), 0, vocab)
    Y = jax.nn.one_hot(jnp.roll(ids, -1, axis=1), vocab, dtype=dtype)
    return model, model.init(kp, (T,), dtype=dtype), ids, Y


def _tiny_transformer(batch, dtype, key):
    return _transformer(batch, dtype, key, T=8, vocab=11, dim=8, heads=2)


def _lstm_lm(batch, dtype, key, *, T=32, vocab=30, dim=64, hidden=128):
    model = nn.Sequential([nn.Embedding(vocab, dim), nn.LSTM(hidden), nn.Linear(vocab),
                           nn.Activation("softmax")], "nll")
    kp, kx = jax.random.split(key)
    ids = jax.random.randint(kx, (batch, T + 1), 0, vocab)
    Y = jax.nn.one_hot(ids[:, 1:], vocab, dtype=dtype)
    return model, model.init(kp, (T,), dtype=dtype), ids[:, :-1], Y


def _tiny_lstm_lm(batch, dtype, key):
    return _lstm_lm(batch, dtype, key, T=4, vocab=7, dim=3, hidden=4)


CASES = (ModelCase("cnn", 128, _cnn), ModelCase("transformer", 16, _transformer),
         ModelCase("lstm-lm", 32, _lstm_lm))
TINY_CASES = (ModelCase("cnn", 8, _cnn), ModelCase("transformer", 2, _tiny_transformer),
              ModelCase("lstm-lm", 2, _tiny_lstm_lm))


def run_models(cases, dtype, *, repeats, min_sample_s, max_s, seed=0) -> list:
    """One "model_grad" row per case: speedup = t_autodiff / t_manual, memory beside."""
    rows = []
    for case in cases:
        model, params, X, Y = case.make(case.batch, dtype, jax.random.key(seed))

        def manual(p, x, y, model=model):
            return model.value_and_grad(p, x, y)

        r = compare(manual, jax.value_and_grad(model.loss), (params, X, Y),
                    repeats=repeats, min_sample_s=min_sample_s, max_s=max_s)
        mem_ok = (r["temp_bytes_jaxbp"] is None or r["temp_bytes_reference"] is None
                  or r["temp_bytes_jaxbp"] <= r["temp_bytes_reference"])
        rows.append({"case": case.name, "model": repr(model), "dtype": jnp.dtype(dtype).name,
                     "task": "model_grad", "B": case.batch,
                     "reference": "jax.value_and_grad(model.loss)", **r,
                     "ratio": 1.0 / r["speedup"], "target": 1.0 / RATIO_TARGET,
                     "memory_met": mem_ok,
                     "met": bool(r["speedup"] >= 1.0 / RATIO_TARGET and mem_ok)})
    return rows
