"""``jaxbp.nn``: modules with hand-written backward passes, and models built from them.

A module is a NamedTuple of pure functions (``init``, ``forward``, ``backward``);
``Sequential`` chains them with a loss and runs the notes' chain module by module.
"""

from jaxbp.nn._module import Module
from jaxbp.nn._linear import Linear
from jaxbp.nn._activation import Activation
from jaxbp.nn._attention import Attention, SelfAttention

__all__ = [
    "Activation",
    "Attention",
    "Linear",
    "Module",
    "SelfAttention",
]
