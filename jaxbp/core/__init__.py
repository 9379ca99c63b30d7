"""``jaxbp.core``: the notes' dense net and its chain rule, the bottom layer.

What lives here: the activation and loss tables (each forward beside its
derivative), ``Network`` with its manual backprop and private (ghost-norm)
gradients, the chain of factors and its explanation, the shared input checks
(``_checks``) and the one per-dtype tolerance table (``_tolerances``).

May import: JAX, NumPy and the standard library only, never another jaxbp
layer. Public names are re-exported from ``jaxbp``.
"""
