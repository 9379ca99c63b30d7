"""jaxbp: hand-written backprop in JAX, checked against jax.grad."""

from jaxbp.core._activations import ACTIVATIONS, Activation, get_activation
from jaxbp.core._chain import Factor, chain, contract
from jaxbp.core._explain import explain
from jaxbp.core._losses import LOSSES, Loss, get_loss
from jaxbp.core._network import Dense, Network, Trace
from jaxbp.core._tolerances import relative_error, rtol_for, tree_relative_error
from jaxbp.bridge import as_jax
from jaxbp.check._finite_difference import finite_difference_grad
from jaxbp.check._intermediates import check_intermediates, intermediates
from jaxbp.check._intermediates_report import IntermediateRow, IntermediatesReport
from jaxbp.check._mutants import MUTANTS, Mutant
from jaxbp.check._numpy_layer import check_layer
from jaxbp.check._numpy_loss import check_loss
from jaxbp.check._numpy_modules import check_modules
from jaxbp.check._report import Finding, Report, Row
from jaxbp.check._verify import BackpropError, verify
from jaxbp.check._verify_nn import check_module
from jaxbp.check._vjp import check_vjp, custom_vjp
from jaxbp.check._vjp_checking import CheckLog, checking
from jaxbp.train._train import batch_mesh, make_step, replicate, shard_batch
from jaxbp import adapters, datasets, nn, testing  # testing: pytest assertions, public API only

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "BackpropError",
    "CheckLog",
    "Dense",
    "Factor",
    "Finding",
    "IntermediateRow",
    "IntermediatesReport",
    "LOSSES",
    "Loss",
    "MUTANTS",
    "Mutant",
    "Network",
    "Report",
    "Row",
    "Trace",
    "adapters",
    "as_jax",
    "batch_mesh",
    "chain",
    "check_module",
    "check_modules",
    "check_intermediates",
    "check_layer",
    "check_loss",
    "check_vjp",
    "checking",
    "contract",
    "custom_vjp",
    "datasets",
    "explain",
    "finite_difference_grad",
    "get_activation",
    "get_loss",
    "intermediates",
    "make_step",
    "nn",
    "relative_error",
    "replicate",
    "rtol_for",
    "shard_batch",
    "tree_relative_error",
    "testing",
    "verify",
]
