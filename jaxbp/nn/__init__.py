"""``jaxbp.nn``: modules with hand-written backward passes, and models built from them.

A module is a NamedTuple of pure functions (``init``, ``forward``, ``backward``);
``Sequential`` chains them with a loss and runs the notes' chain module by module.
"""

from jaxbp.nn._module import Module
from jaxbp.nn._linear import Linear
from jaxbp.nn._activation import Activation
from jaxbp.nn._conv import Conv, Conv2D
from jaxbp.nn._pool import AvgPool2D, MaxPool2D
from jaxbp.nn._reshape import Flatten
from jaxbp.nn._norm import BatchNorm, LayerNorm, Norm, NormResiduals
from jaxbp.nn._embedding import Embedding, EmbeddingTable
from jaxbp.nn._dropout import Dropout
from jaxbp.nn._attention import Attention, SelfAttention
from jaxbp.nn._compose import Residual
from jaxbp.nn._recurrent import GRUParams, RNN, Recurrent
from jaxbp.nn._lstm import LSTM
from jaxbp.nn._gru import GRU
from jaxbp.nn._per_example import PerExample, hook_from_backward
from jaxbp.nn._sequential import Sequential
from jaxbp.nn._models import digits_cnn, mlp, transformer_block

__all__ = [
    "Activation",
    "Attention",
    "AvgPool2D",
    "BatchNorm",
    "Conv",
    "Conv2D",
    "Dropout",
    "Embedding",
    "EmbeddingTable",
    "Flatten",
    "GRU",
    "GRUParams",
    "LSTM",
    "LayerNorm",
    "Linear",
    "MaxPool2D",
    "Module",
    "Norm",
    "NormResiduals",
    "PerExample",
    "RNN",
    "Recurrent",
    "Residual",
    "SelfAttention",
    "Sequential",
    "digits_cnn",
    "hook_from_backward",
    "mlp",
    "transformer_block",
]
