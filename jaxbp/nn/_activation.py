"""Activation(name): one row of jaxbp's activation table as a module (softmax on the last axis)."""

from __future__ import annotations

import functools

from jaxbp.core._activations import get_activation
from jaxbp.nn._module import Module


@functools.lru_cache(maxsize=None)
def Activation(name: str) -> Module:
    """a = f(z) elementwise (softmax: on the last axis), no parameters.

    Backward (the notes' activation factor ∂a/∂z = f'(z)):

        ∂L/∂z = ∂L/∂a ⊙ f'(z)                   elementwise f
        ∂L/∂z = a ⊙ (∂L/∂a − ⟨a, ∂L/∂a⟩)         softmax (no (n, n) Jacobian)

    The same table as ``jaxbp.Network`` (``jaxbp.ACTIVATIONS``). The same name
    gives the same module object, so ``Sequential`` recognises a final
    ``Activation("softmax")`` and fuses it with ``nll``.

    Args:
      name: a key of ``jaxbp.ACTIVATIONS``.
    """
    act = get_activation(name)

    def init(key, in_shape, dtype):
        del key, dtype
        return (), tuple(int(s) for s in in_shape)

    def forward(params, Z, key):
        del params, key
        A = act.f(Z)
        return A, (Z, A)

    def backward(params, residuals, dA):
        del params
        Z, A = residuals
        return (), act.vjp(Z, A, dA)

    return Module(name, init, forward, backward)
