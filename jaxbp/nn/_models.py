"""Ready-made models: the benchmark's and the training script's, built from the modules."""

from __future__ import annotations

from typing import Sequence

from jaxbp.nn._activation import Activation
from jaxbp.nn._attention import SelfAttention
from jaxbp.nn._compose import Residual
from jaxbp.nn._conv import Conv2D
from jaxbp.nn._embedding import Embedding
from jaxbp.nn._linear import Linear
from jaxbp.nn._norm import LayerNorm
from jaxbp.nn._pool import MaxPool2D
from jaxbp.nn._reshape import Flatten
from jaxbp.nn._sequential import Sequential


def mlp(sizes: Sequence[int], *, activation: str = "relu") -> Sequential:
    """The notes' dense net as modules: Linear(n^ℓ) and ``activation`` per hidden layer,
    then Linear(n^L) and softmax with nll. ``sizes[0]`` (the input width) is taken
    from ``init``'s in_shape, so only ``sizes[1:]`` shape the model.

    Example:
      >>> from jaxbp import nn
      >>> nn.mlp((784, 256, 256, 10))
      Sequential([Linear(256), relu, Linear(256), relu, Linear(10), softmax], loss='nll')
    """
    if len(sizes) < 2:
        raise ValueError(f"sizes: expected (inputs, ..., outputs), got {tuple(sizes)}")
    modules = []
    for n in sizes[1:-1]:
        modules += [Linear(n), Activation(activation)]
    return Sequential(modules + [Linear(sizes[-1]), Activation("softmax")], "nll")


def digits_cnn(num_classes: int = 10) -> Sequential:
    """A small CNN for 8×8×1 digit images (B, 8, 8, 1), softmax + nll:

    Conv2D(16, 3) relu MaxPool2D(2) Conv2D(32, 3) relu Flatten Linear(num_classes) softmax.
    """
    return Sequential([Conv2D(16, 3), Activation("relu"), MaxPool2D(2), Conv2D(32, 3),
                       Activation("relu"), Flatten(), Linear(num_classes),
                       Activation("softmax")], "nll")


def transformer_block(vocab_size: int = 64, dim: int = 128, num_heads: int = 4, *,
                      hidden: int | None = None, causal: bool = True) -> Sequential:
    """One pre-norm transformer block over token ids (B, T), predicting a token per position:

    Embedding, Residual(LayerNorm, SelfAttention), Residual(LayerNorm, Linear(hidden),
    gelu, Linear(dim)), LayerNorm, Linear(vocab_size), softmax, nll. ``hidden``
    defaults to 4·dim. (No position embedding: with ``causal`` attention, position
    is still visible through the mask.)
    """
    hidden = 4 * dim if hidden is None else hidden
    return Sequential([
        Embedding(vocab_size, dim),
        Residual(LayerNorm(), SelfAttention(num_heads, causal=causal)),
        Residual(LayerNorm(), Linear(hidden), Activation("gelu"), Linear(dim)),
        LayerNorm(), Linear(vocab_size), Activation("softmax")], "nll")
