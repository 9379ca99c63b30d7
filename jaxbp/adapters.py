"""Adapters from other people's backprop code to a function ``jaxbp.verify`` takes.

``module_backprop`` wraps course-style module objects (the 6.390 homework's
``Linear``, ``Tanh``, ``ReLU``, ``SoftMax`` and ``NLL``: NumPy inside, column
vectors, state kept on the objects) as ``fn(params, X, Y) -> grads``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["module_backprop"]


def module_backprop(modules: Sequence[Any], loss_module: Any, *,
                    param_names: tuple[str, str] = ("W", "W0"),
                    grad_names: tuple[str, str] = ("dLdW", "dLdW0"), layout: str = "columns",
                    reduction: str = "sum") -> Callable:
    """Module objects with ``forward``/``backward`` methods as a backprop function.

    The modules form the network ``A = modules[-1].forward(... modules[0].forward(X))``
    on column batches (X (m, B)); ``loss_module.forward(A, Y)`` gives the loss and
    ``loss_module.backward()`` its gradient, which ``backward(dLdZ)`` carries back
    through the modules in reverse (each module returns the gradient with respect
    to its input and keeps its parameters' gradients as attributes). Modules that
    have both ``param_names`` are the network's layers, in order.

    The returned ``fn(params, X, Y)`` writes layer ℓ's ``(W, W0)`` from params into
    the ℓ-th such module (as NumPy copies), runs forward and backward on the host,
    and returns ``((dLdW, dLdW0), ...)`` read from ``grad_names``. It is marked with
    ``layout`` and ``reduction`` (the homework's: column vectors, a loss summed over the
    batch) and as taking a whole batch, so ``jaxbp.verify`` needs no extra flags. It is
    marked as host code: ``verify`` calls it on the whole batch, or one example at a
    time, never under ``jax.jit``/``jax.vmap``; if it raises on the shapes it was given,
    the error says which layout jaxbp tried.

    Args:
      modules: the layers and activations, e.g. ``[Linear(2, 3), Tanh(), Linear(3, 2),
        SoftMax()]``; each needs ``forward(A)`` and ``backward(dLdZ)``.
      loss_module: e.g. ``NLL()``, with ``forward(Ypred, Y)`` and ``backward()``.
      param_names: the attribute names of a layer's weights and biases.
      grad_names: the attribute names ``backward`` stores their gradients in.
      layout: "columns" (x (m, B), W0 (n, 1)) or "rows" (x (B, m)): the modules' layout.
      reduction: "sum" or "mean": what the loss module does over the batch.

    Returns:
      ``fn(params, X, Y)``: params a tuple of ``(W (m, n), W0 (n, 1))`` per layer,
      X (m, B), Y (n, B); returns a tuple of ``(dW (m, n), dW0 (n, 1))``.

    Raises:
      TypeError: a module lacks ``forward``/``backward``, or the names are not two strings.
      ValueError: no module has ``param_names``; or (when called) params has a
        different number of layers than the modules.

    Example (the modules of ``tests/_homework.py``)::

        backprop = jaxbp.adapters.module_backprop([Linear(2, 3), Tanh(), Linear(3, 2),
                                                   SoftMax()], NLL())
        jaxbp.verify(net, params, X, Y, backprop=backprop)
    """
    modules = list(modules) if isinstance(modules, (list, tuple)) else modules
    if not isinstance(modules, list) or not modules:
        raise TypeError(f"modules: expected a non-empty list of module objects, got "
                        f"{type(modules).__name__}")
    for i, module in enumerate(modules):
        for method in ("forward", "backward"):
            if not callable(getattr(module, method, None)):
                raise TypeError(f"modules[{i}]: expected an object with forward(A) and "
                                f"backward(dLdZ) methods, {type(module).__name__} has no "
                                f"{method}")
    for method in ("forward", "backward"):
        if not callable(getattr(loss_module, method, None)):
            raise TypeError(f"loss_module: expected an object with forward(Ypred, Y) and "
                            f"backward() methods, {type(loss_module).__name__} has no {method}")
    for name, names in (("param_names", param_names), ("grad_names", grad_names)):
        if not (isinstance(names, (tuple, list)) and len(names) == 2
                and all(isinstance(n, str) for n in names)):
            raise TypeError(f"{name}: expected two attribute names such as ('W', 'W0'), "
                            f"got {names!r}")
    for name, value, allowed in (("layout", layout, ("rows", "columns")),
                                 ("reduction", reduction, ("mean", "sum"))):
        if value not in allowed:
            raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
    layers = [m for m in modules if all(hasattr(m, n) for n in param_names)]
    if not layers:
        raise ValueError(f"modules: none has the parameters {tuple(param_names)}; name them "
                         f"with param_names=")

    def backprop(params, X, Y):
        if len(params) != len(layers):
            raise ValueError(f"params: {len(params)} layers, but the modules have "
                             f"{len(layers)} with parameters {tuple(param_names)}")
        for module, layer in zip(layers, params):
            for name, value in zip(param_names, layer):
                setattr(module, name, np.array(value))  # a writable host copy
        A = np.asarray(X)  # (m, B)
        for module in modules:
            A = module.forward(A)
        loss_module.forward(A, np.asarray(Y))
        dL = loss_module.backward()  # the loss module's gradient, (n^L, B)
        for module in reversed(modules):
            dL = module.backward(dL)
        return tuple(tuple(np.array(getattr(m, g)) for g in grad_names) for m in layers)

    backprop.jaxbp_host = True  # NumPy on the host: jaxbp.verify never traces it
    backprop.jaxbp_layout, backprop.jaxbp_reduction = layout, reduction  # verify's defaults
    backprop.jaxbp_batched = True
    return backprop
