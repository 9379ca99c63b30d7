"""jaxbp: hand-written backprop in JAX, checked against jax.grad."""

from jaxbp._activations import ACTIVATIONS, Activation, get_activation
from jaxbp._chain import Factor, chain, contract
from jaxbp._explain import explain
from jaxbp._losses import LOSSES, Loss, get_loss
from jaxbp._network import Dense, Network, Trace
from jaxbp._train import batch_mesh, make_step, replicate, shard_batch
from jaxbp import datasets

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "Dense",
    "Factor",
    "LOSSES",
    "Loss",
    "Network",
    "Trace",
    "batch_mesh",
    "chain",
    "contract",
    "datasets",
    "explain",
    "get_activation",
    "get_loss",
    "make_step",
    "replicate",
    "shard_batch",
]
