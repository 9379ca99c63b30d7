"""train.py --model rnn|lstm|gru: a character-level language model on first names.

The corpus: the first names the ``names`` package ships (US census lists, in the
``[experiments]`` extra), lower-cased, letters a–z only, de-duplicated; without the package,
the 513 names bundled in ``_names.py``, and the script says so. The names are shuffled with a
fixed seed and split 90/10 by name; each split is joined with "\\n" (which also ends and
starts names, min-char-rnn's scheme: no padding, a name's first letter is predicted from the
previous name's "\\n").

Training examples are windows of T + 1 characters at random start positions of the training
text (a fixed pool drawn once, from which train.py draws its batches): ids x = w[:T], targets
y = w[1:]. Test windows tile the test text (each test character a target once). The model:

    Embedding(27, 32) -> RNN/LSTM/GRU(128) -> Linear(27) -> softmax, nll

and its loss is the per-character NLL in nats. The baseline: a bigram model counted on the
same training text (add-one smoothing), scored on the same test targets.

With --private the privacy unit is one training window, and a name lies in several
windows: the ε reported is per window, not per name.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp import datasets, nn

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
ALPHABET = "\n" + "abcdefghijklmnopqrstuvwxyz"  # id 0 ends (and starts) a name
CHARS = dict(length=24, embedding=32, hidden=128, train_windows=8192, test_fraction=0.1, seed=0)


def corpus() -> tuple[list, str]:
    """(names, source): the ``names`` package's first names, else the bundled 513."""
    try:
        import names as names_package
    except ImportError:
        from _names import NAMES
        return sorted(set(NAMES)), "bundled list (513 names; pip install names for ~5k)"
    folder = os.path.dirname(names_package.__file__)
    found = set()
    for file in ("dist.male.first", "dist.female.first"):
        with open(os.path.join(folder, file)) as f:
            found.update(line.split()[0].lower() for line in f if line.strip())
    return sorted(n for n in found if n.isalpha() and n.isascii()), \
        f"names {getattr(names_package, '__version__', '')} package (US census first names)"


def encode(text: str) -> np.ndarray:
    return np.asarray([ALPHABET.index(c) for c in text], np.int32)


def char_data(*, length: int, train_windows: int, test_fraction: float, seed: int, **_):
    """(Dataset of windows (N, T) -> next characters (N, T), train ids, test ids, source)."""
    words, source = corpus()
    order = np.random.default_rng(seed).permutation(len(words))
    n_test = max(1, int(len(words) * test_fraction))
    test = encode("\n" + "\n".join(words[i] for i in order[:n_test]) + "\n")
    train = encode("\n" + "\n".join(words[i] for i in order[n_test:]) + "\n")
    starts = np.random.default_rng(seed + 1).integers(0, len(train) - length, train_windows)
    windows = train[starts[:, None] + np.arange(length + 1)]  # (N, T + 1)
    tiles = (len(test) - 1) // length
    test_w = test[np.arange(tiles)[:, None] * length + np.arange(length + 1)]  # (M, T + 1)
    data = datasets.Dataset("names", windows[:, :-1], windows[:, 1:], test_w[:, :-1],
                            test_w[:, 1:], len(ALPHABET))
    return data, train, source, len(words)


def bigram_nll(train: np.ndarray, X: np.ndarray, y: np.ndarray) -> float:
    """Per-character test NLL (nats) of the add-one bigram counted on the training ids."""
    V = len(ALPHABET)
    counts = np.ones((V, V))
    np.add.at(counts, (train[:-1], train[1:]), 1)
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    return float(-np.mean(logp[X, y]))


def model(cell: str, *, embedding: int, hidden: int, **_) -> nn.Sequential:
    V = len(ALPHABET)
    return nn.Sequential([nn.Embedding(V, embedding), CELLS[cell](hidden), nn.Linear(V),
                          nn.Activation("softmax")], "nll")


def sample(net: nn.Sequential, params, *, count: int = 10, length: int, seed: int = 0) -> list:
    """``count`` names drawn letter by letter from "\\n" until the next "\\n" (at most T − 1).

    The forward is causal, so position t's distribution ignores the later (still 0) ids: one
    compiled forward on (count, T) serves every step.
    """
    forward = jax.jit(lambda p, ids: net.forward(p, ids))
    ids = np.zeros((count, length), np.int32)
    rng = np.random.default_rng(seed)
    done = np.zeros(count, bool)
    for t in range(length - 1):
        probs = np.array(forward(params, jnp.asarray(ids)), np.float64)[:, t]
        probs /= probs.sum(axis=1, keepdims=True)
        nxt = np.asarray([rng.choice(len(ALPHABET), p=p) for p in probs])
        ids[:, t + 1] = np.where(done, 0, nxt)
        done |= nxt == 0
        if done.all():
            break
    return ["".join(ALPHABET[i] for i in row[1:]).split("\n")[0] for row in ids]
