"""The backprop-ninja network (Karpathy's makemore part 4) with its hand-written backward.

``forward`` taps all 26 values of the exercise; ``backward`` derives ∂loss/∂(each) by hand, one
chain-rule step per line, no autodiff; ``BUGS`` lists the classic mistakes it can plant. Used by
experiments/backprop_ninja.py (and its tests).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxbp

BLOCK_SIZE = 3          # characters of context
EMBEDDING = 10          # n_embd
HIDDEN = 64             # n_hidden
VOCAB = "." + "abcdefghijklmnopqrstuvwxyz"  # "." starts and ends every word
BN_EPS = 1e-5

# Each classic mistake: (what it does, the value the report must name, the suspect).
BUGS = {
    "missing_1_over_n": ("dlogprobs = −1 instead of −1/n at the targets", "logprobs", "scale"),
    "counts_overwrite": ("dcounts = dcounts_sum: = instead of += (the probs path is lost)",
                         "counts", "missing path"),
    "logits_overwrite": ("dlogits = one_hot · dlogit_maxes: = instead of += (the norm_logits "
                         "path is lost)", "logits", "missing path"),
    "tanh_derivative": ("dhpreact = (1 − hpreact²) dh instead of (1 − h²) dh", "hpreact",
                        "local derivative"),
    "bngain_shape": ("dbngain summed without keepdims: (64,) for a (1, 64) value", "bngain",
                     "shape"),
    "bessel_n": ("dbndiff2 = dbnvar / n instead of / (n − 1) (Bessel's correction)", "bndiff2",
                 "scale"),
    "bndiff_overwrite": ("dbndiff = 2 bndiff dbndiff2: = instead of += (the bnraw path is lost)",
                         "bndiff", "missing path"),
    "embedding_assign": ("dC[ix] = demb (assignment) instead of dC[ix] += demb (scatter-add)",
                         "C", "local derivative"),
}



# ------------------------------------------------------------------------ the model

def init(key, *, hidden: int = HIDDEN, embedding: int = EMBEDDING, dtype=jnp.float32) -> dict:
    """The exercise's parameters, with its deliberately non-standard scales (so that an
    all-zero bias cannot hide a wrong gradient)."""
    k = jax.random.split(key, 7)
    vocab, fan_in = len(VOCAB), embedding * BLOCK_SIZE
    normal = lambda i, shape: jax.random.normal(k[i], shape, dtype)  # noqa: E731
    return {"C": normal(0, (vocab, embedding)),
            "W1": normal(1, (fan_in, hidden)) * (5 / 3) / fan_in ** 0.5,
            "b1": normal(2, (hidden,)) * 0.1,     # useless before batchnorm: its gradient is ~0
            "W2": normal(3, (hidden, vocab)) * 0.1,
            "b2": normal(4, (vocab,)) * 0.1,
            "bngain": normal(5, (1, hidden)) * 0.1 + 1.0,
            "bnbias": normal(6, (1, hidden)) * 0.1}


def forward(params: dict, X, Y, *, tap):
    """The loss, one small step at a time, every value tapped.

    Args:
      params: as ``init`` returns.
      X: (n, 3) int indices of the previous characters; Y: (n,) the next one.
      tap: ``tap(name, value) -> value`` (identity for plain use).

    Returns:
      The mean cross-entropy, a scalar.
    """
    n = X.shape[0]
    C = tap("C", params["C"])
    emb = tap("emb", C[X])                                          # (n, 3, 10)
    embcat = tap("embcat", emb.reshape(n, -1))                      # (n, 30)
    W1, b1 = tap("W1", params["W1"]), tap("b1", params["b1"])
    hprebn = tap("hprebn", embcat @ W1 + b1[None, :])               # (n, 30) @ (30, 64)
    bnmeani = tap("bnmeani", hprebn.sum(0, keepdims=True) / n)      # (1, 64)
    bndiff = tap("bndiff", hprebn - bnmeani)
    bndiff2 = tap("bndiff2", bndiff ** 2)
    bnvar = tap("bnvar", bndiff2.sum(0, keepdims=True) / (n - 1))   # Bessel: n − 1
    bnvar_inv = tap("bnvar_inv", (bnvar + BN_EPS) ** -0.5)
    bnraw = tap("bnraw", bndiff * bnvar_inv)
    bngain, bnbias = tap("bngain", params["bngain"]), tap("bnbias", params["bnbias"])
    hpreact = tap("hpreact", bngain * bnraw + bnbias)
    h = tap("h", jnp.tanh(hpreact))
    W2, b2 = tap("W2", params["W2"]), tap("b2", params["b2"])
    logits = tap("logits", h @ W2 + b2[None, :])                    # (n, 64) @ (64, 27)
    logit_maxes = tap("logit_maxes", logits.max(1, keepdims=True))
    norm_logits = tap("norm_logits", logits - logit_maxes)
    counts = tap("counts", jnp.exp(norm_logits))
    counts_sum = tap("counts_sum", counts.sum(1, keepdims=True))
    counts_sum_inv = tap("counts_sum_inv", counts_sum ** -1)
    probs = tap("probs", counts * counts_sum_inv)
    logprobs = tap("logprobs", jnp.log(probs))
    return -jnp.mean(logprobs[jnp.arange(n), Y])


def backward(v: dict, X, Y, *, bug: str | None = None) -> dict:
    """∂loss/∂(every tapped value) by hand: the chain rule one step at a time, no autodiff.

    Each line is the local derivative of one forward line times the incoming gradient; a
    value used twice (counts, logits, bndiff, hprebn) sums the gradients of its uses.

    Args:
      v: the forward's intermediates (``jaxbp.intermediates(forward, (params, X, Y))``).
      X, Y: the batch.
      bug: None, or a key of ``BUGS`` to plant that mistake.

    Returns:
      ``{name: ∂loss/∂name}``, each shaped like ``v[name]``.
    """
    n = X.shape[0]
    # loss = −(1/n) Σ_b logprobs[b, Y_b]
    dlogprobs = jnp.zeros_like(v["logprobs"]).at[jnp.arange(n), Y].set(
        -1.0 if bug == "missing_1_over_n" else -1.0 / n)
    dprobs = dlogprobs / v["probs"]                                 # log' = 1/x
    # probs = counts · counts_sum_inv (broadcast over the row: sum it back)
    dcounts_sum_inv = (v["counts"] * dprobs).sum(1, keepdims=True)
    dcounts = v["counts_sum_inv"] * dprobs
    dcounts_sum = -v["counts_sum"] ** -2 * dcounts_sum_inv          # (x⁻¹)' = −x⁻²
    ones = jnp.ones_like(v["counts"])
    if bug == "counts_overwrite":
        dcounts = ones * dcounts_sum
    else:
        dcounts = dcounts + ones * dcounts_sum                      # counts_sum = Σ_j counts
    dnorm_logits = v["counts"] * dcounts                            # exp' = exp
    dlogit_maxes = -dnorm_logits.sum(1, keepdims=True)              # ≈ 0: probs ignore shifts
    picked = jax.nn.one_hot(jnp.argmax(v["logits"], 1), len(VOCAB), dtype=dnorm_logits.dtype)
    if bug == "logits_overwrite":
        dlogits = picked * dlogit_maxes
    else:
        dlogits = dnorm_logits + picked * dlogit_maxes              # max picks one entry
    dh = dlogits @ v["W2"].T                                        # (n, 27) @ (27, 64)
    dW2 = v["h"].T @ dlogits                                        # (64, n) @ (n, 27)
    db2 = dlogits.sum(0)
    if bug == "tanh_derivative":
        dhpreact = (1.0 - v["hpreact"] ** 2) * dh
    else:
        dhpreact = (1.0 - v["h"] ** 2) * dh                         # tanh' = 1 − tanh²
    dbngain = (v["bnraw"] * dhpreact).sum(0, keepdims=bug != "bngain_shape")
    dbnraw = v["bngain"] * dhpreact
    dbnbias = dhpreact.sum(0, keepdims=True)
    dbndiff = v["bnvar_inv"] * dbnraw
    dbnvar_inv = (v["bndiff"] * dbnraw).sum(0, keepdims=True)
    dbnvar = -0.5 * (v["bnvar"] + BN_EPS) ** -1.5 * dbnvar_inv
    divisor = n if bug == "bessel_n" else n - 1
    dbndiff2 = jnp.ones_like(v["bndiff2"]) * dbnvar / divisor       # bnvar = Σ_b bndiff2 / (n−1)
    if bug == "bndiff_overwrite":
        dbndiff = 2 * v["bndiff"] * dbndiff2
    else:
        dbndiff = dbndiff + 2 * v["bndiff"] * dbndiff2              # bndiff feeds bnraw and bndiff2
    dbnmeani = -dbndiff.sum(0, keepdims=True)
    dhprebn = dbndiff + jnp.ones_like(v["hprebn"]) * dbnmeani / n   # bnmeani = Σ_b hprebn / n
    dembcat = dhprebn @ v["W1"].T                                   # (n, 64) @ (64, 30)
    dW1 = v["embcat"].T @ dhprebn
    db1 = dhprebn.sum(0)                                            # ≈ 0: batchnorm removes it
    demb = dembcat.reshape(v["emb"].shape)
    if bug == "embedding_assign":
        dC = jnp.zeros_like(v["C"]).at[X].set(demb)
    else:
        dC = jnp.zeros_like(v["C"]).at[X].add(demb)                 # a character used k times
    return {"logprobs": dlogprobs, "probs": dprobs, "counts_sum_inv": dcounts_sum_inv,
            "counts_sum": dcounts_sum, "counts": dcounts, "norm_logits": dnorm_logits,
            "logit_maxes": dlogit_maxes, "logits": dlogits, "h": dh, "W2": dW2, "b2": db2,
            "hpreact": dhpreact, "bngain": dbngain, "bnbias": dbnbias, "bnraw": dbnraw,
            "bnvar_inv": dbnvar_inv, "bnvar": dbnvar, "bndiff2": dbndiff2, "bndiff": dbndiff,
            "bnmeani": dbnmeani, "hprebn": dhprebn, "embcat": dembcat, "W1": dW1, "b1": db1,
            "emb": demb, "C": dC}


def loss_fn(params, X, Y):
    """The same loss without taps (for jax.grad and evaluation)."""
    return forward(params, X, Y, tap=lambda name, value: value)


def manual_value_and_grad(params, X, Y):
    """(loss, ∂loss/∂params) from the hand-written backward (what training uses)."""
    v = jaxbp.intermediates(forward, (params, X, Y))
    d = backward(v, X, Y)
    n = X.shape[0]
    loss = -jnp.mean(v["logprobs"][jnp.arange(n), Y])
    return loss, {name: d[name] for name in params}


def dataset(words, *, block_size: int = BLOCK_SIZE):
    """(X, Y): every (3 previous characters, next character) pair of every word."""
    index = {ch: i for i, ch in enumerate(VOCAB)}
    X, Y = [], []
    for w in words:
        context = [0] * block_size
        for ch in w + ".":
            X.append(context)
            Y.append(index[ch])
            context = context[1:] + [index[ch]]
    return np.array(X, np.int32), np.array(Y, np.int32)
