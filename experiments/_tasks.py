"""What train.py trains, per ``--model``: the model, its data, and how to score it.

* ``mlp`` (default): the notes' ``jaxbp.Network`` on any data set of ``jaxbp.datasets``.
* ``cnn``: ``jaxbp.nn.digits_cnn()`` on the digits as 8×8×1 images.
* ``transformer``: ``jaxbp.nn.transformer_block(64, 128, 4)`` on a sequence task made here
  (no download): each sequence counts modulo the vocabulary with its own step,
  x_{t+1} = (x_t + s) mod V with s drawn from {1, 2, 3}; the target at each position is
  the next token. Chance level is 1/V; the step is visible only through the earlier
  tokens, so beyond the first positions attention has to find it.
* ``rnn``, ``lstm``, ``gru``: a character-level language model on first names
  (``experiments/_chars.py``), beside a bigram baseline counted on the same split.

A ``Task`` gives train.py one interface over a ``Network`` and a ``jaxbp.nn.Sequential``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from jaxbp import datasets, nn

MODELS = ("mlp", "cnn", "transformer", "rnn", "lstm", "gru")
SEQUENCES = dict(vocab=64, length=64, steps=(1, 2, 3), n_train=2048, n_test=512)
TRANSFORMER = dict(dim=128, heads=4)


class Task(NamedTuple):
    """One model on one data set.

    Attributes:
      model: a ``jaxbp.Network`` (mlp) or a ``jaxbp.nn.Sequential``.
      data: a ``jaxbp.datasets.Dataset``-like split (X may be images or token ids, labels
        may be per position).
      init: (key, dtype) -> params.
      targets: labels -> the loss's targets (NumPy).
      batch_loss: (params, X, Y) -> mean loss (jit-able).
      forward: (params, X) -> outputs (probabilities on the last axis).
      description: the model in words, for titles and results.json.
      extras: optional, (params) -> a dict of model-specific results (the char models'
        bigram baseline and sampled names); None: none.
    """

    model: object
    data: object
    init: Callable
    targets: Callable
    batch_loss: Callable
    forward: Callable
    description: str
    extras: Optional[Callable] = None


def sequences(*, vocab: int, length: int, steps: tuple, n_train: int, n_test: int,
              seed: int = 0) -> datasets.Dataset:
    """Counting sequences: X (N, T) token ids, y (N, T) the next token of each position."""
    rng = np.random.default_rng(seed)

    def sample(n):
        start = rng.integers(0, vocab, size=(n, 1))
        step = rng.choice(np.asarray(steps), size=(n, 1))
        tokens = (start + step * np.arange(length + 1)) % vocab  # (n, T + 1)
        return tokens[:, :-1].astype(np.int32), tokens[:, 1:].astype(np.int32)

    X_train, y_train = sample(n_train)
    X_test, y_test = sample(n_test)
    return datasets.Dataset("sequences", X_train, y_train, X_test, y_test, vocab)


def _one_hot(num_classes):
    return lambda labels: np.eye(num_classes)[np.asarray(labels)]


def mlp_task(data, net: jaxbp.Network) -> Task:
    return Task(net, data, lambda key, dtype: net.init(key, dtype=dtype),
                lambda labels: datasets.targets(labels, data.num_classes, net.loss_name),
                net.batch_loss, net.forward,
                f"{'-'.join(map(str, net.sizes))} {','.join(net.activations)} {net.loss_name}")


def _nn_task(data, model: nn.Sequential, in_shape, description) -> Task:
    return Task(model, data, lambda key, dtype: model.init(key, in_shape, dtype=dtype),
                _one_hot(data.num_classes), model.loss, model.forward, description)


def cnn_task() -> Task:
    digits = datasets.load("digits")
    images = digits._replace(X_train=digits.X_train.reshape(-1, 8, 8, 1),
                             X_test=digits.X_test.reshape(-1, 8, 8, 1))
    return _nn_task(images, nn.digits_cnn(digits.num_classes), (8, 8, 1),
                    "cnn: Conv2D(16,3) relu MaxPool2D(2) Conv2D(32,3) relu Flatten Linear(10) "
                    "softmax nll")


def transformer_task() -> Task:
    data = sequences(**SEQUENCES)
    model = nn.transformer_block(SEQUENCES["vocab"], TRANSFORMER["dim"], TRANSFORMER["heads"])
    return _nn_task(data, model, (SEQUENCES["length"],),
                    f"transformer block: vocab {SEQUENCES['vocab']}, d {TRANSFORMER['dim']}, "
                    f"{TRANSFORMER['heads']} heads, causal, T {SEQUENCES['length']}")


def nn_task(model: str) -> Task:
    """The task of one of the jaxbp.nn models (every name of MODELS but "mlp")."""
    if model == "cnn":
        return cnn_task()
    if model == "transformer":
        return transformer_task()
    return char_task(model)


def char_task(cell: str) -> Task:
    """A character model (``_chars.model``) on names; extras: bigram baseline, 10 samples."""
    import _chars as chars

    data, train_ids, source, n_names = chars.char_data(**chars.CHARS)
    model = chars.model(cell, **chars.CHARS)
    print(f"corpus: {n_names} first names from the {source}")
    baseline = chars.bigram_nll(train_ids, data.X_test, data.y_test)

    def extras(params):
        return dict(bigram_test_loss=baseline, corpus=source, corpus_names=n_names,
                    samples=chars.sample(model, params, length=chars.CHARS["length"]))

    task = _nn_task(data, model, (chars.CHARS["length"],),
                    f"char model: Embedding({len(chars.ALPHABET)}, {chars.CHARS['embedding']}) "
                    f"{model.modules[1].name} Linear softmax nll, T {chars.CHARS['length']}")
    return task._replace(extras=extras)


def evaluate(task: Task, params, dtype) -> dict:
    """Full-set losses and accuracies (per token for sequences, with the chance level)."""
    data, out = task.data, {}
    loss = jax.jit(task.batch_loss)
    for split, X, labels in (("train", data.X_train, data.y_train),
                             ("test", data.X_test, data.y_test)):
        X = X if np.issubdtype(X.dtype, np.integer) else X.astype(dtype)
        Y = task.targets(labels).astype(dtype)
        out[f"{split}_loss"] = float(loss(params, X, Y))
        outputs = np.asarray(task.forward(params, X))
        if isinstance(task.model, jaxbp.Network):
            predicted = datasets.predict(outputs, task.model.loss_name)
        else:
            predicted = outputs.argmax(axis=-1)
        out[f"{split}_accuracy"] = float(np.mean(predicted == labels))
    if data.name == "sequences":
        out["chance_accuracy"] = 1.0 / data.num_classes
    return out


def param_arrays(task: Task, params) -> dict:
    """Named arrays for params.npz: layer{l}_W/W0 for the mlp, module{i}<path> for nn models."""
    if isinstance(task.model, jaxbp.Network):
        return {f"layer{l}_{name}": getattr(layer, name)
                for l, layer in enumerate(params, start=1) for name in ("W", "W0")}
    arrays = {}
    for i, p in enumerate(params, start=1):
        for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0]:
            key = jax.tree_util.keystr(path).replace("[", "_").replace("]", "").replace(".", "_")
            arrays[f"module{i}{key}"] = np.asarray(leaf)
    return arrays


def input_dtype(X, dtype):
    """Floats are cast to the run's dtype; token ids stay integers."""
    return X if jnp.issubdtype(X.dtype, jnp.integer) else X.astype(dtype)
