"""Course layouts: your backprop may use column vectors and a summed loss.

jaxbp's own layout is rows; the 6.390 homework's is columns. The parameters
are the same matrices, only vectors turn:

    ============  =========================  =============================
                  layout="rows" (jaxbp)       layout="columns" (6.390)
    ============  =========================  =============================
    x, a batch    x (m,), X (B, m)            x (m, 1), X (m, B)
    y, a batch    y (n,), Y (B, n)            y (n, 1), Y (n, B)
    W, W0         W (m, n), W0 (n,)           W (m, n), W0 (n, 1)
    z             z = x @ W + W0              z = Wᵀ x + W0 (n, 1) / (n, B)
    returns       per layer (dW, dW0)         per layer (dW (m, n), dW0 (n, 1))
    ============  =========================  =============================

``reduction`` says what a *batched* function returns: "mean" is
∂(1/B Σ_b L_b)/∂θ (jaxbp's convention), "sum" is ∂(Σ_b L_b)/∂θ = B × the mean
(the homework's NLL sums over the batch). For one example they coincide.

``adapt`` wraps your function so that it takes and returns jaxbp's layout;
``verify`` then localizes errors (layer, factor) exactly as for row code.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from jaxbp.check._compare import BackpropError
from jaxbp.core._network import Dense

LAYOUTS = ("rows", "columns")
REDUCTIONS = ("mean", "sum")


def check_layout(layout, reduction) -> tuple[str, str]:
    """Validates ``layout`` and ``reduction``; a ValueError names the bad one."""
    for name, value, allowed in (("layout", layout, LAYOUTS),
                                 ("reduction", reduction, REDUCTIONS)):
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"{name}: expected one of {', '.join(map(repr, allowed))}, "
                             f"got {value!r}")
    return layout, reduction


@dataclasses.dataclass(frozen=True)
class Adapted:
    """Your ``fn`` seen in jaxbp's layout (rows, batch mean).

    Frozen and hashable (by ``fn``'s identity and the settings), so a compiled
    ``jax.jit`` of it is reused when ``verify`` is called again with the same
    function. Works on NumPy and JAX arrays alike (reshape, transpose, divide).

    Attributes:
      fn: your ``fn(params, x, y)`` (or ``fn(params, X, Y)`` when batched).
      layout: "rows" or "columns".
      reduction: "mean" or "sum".
      batched: whether fn takes a batch.
    """

    fn: Callable
    layout: str
    reduction: str
    batched: bool

    @property
    def jaxbp_host(self) -> bool:
        return bool(getattr(self.fn, "jaxbp_host", False))

    def __call__(self, params, x, y):
        count = x.shape[0] if self.batched else 1  # B
        if self.layout == "columns":
            params = tuple(Dense(p.W, p.W0.reshape(-1, 1)) for p in params)  # W0 (n,) -> (n, 1)
            if self.batched:
                x, y = x.T, y.T  # (B, m) -> (m, B), (B, n) -> (n, B)
            else:
                x, y = x.reshape(-1, 1), y.reshape(-1, 1)  # (m,) -> (m, 1)
        out = self.fn(params, x, y)
        if self.layout == "rows" and not (self.batched and self.reduction == "sum"):
            return out
        if not isinstance(out, (tuple, list)) or len(out) != len(params):
            return out  # verify reports the wrong structure
        grads = []
        for l, (item, p) in enumerate(zip(out, params), start=1):
            pair = _pair(item)
            if pair is None:
                return out
            dW, dW0 = pair
            if self.layout == "columns":
                dW0 = _column_bias(dW0, p.W0.shape[0], l)  # (n, 1) -> (n,)
            if self.batched and self.reduction == "sum":
                dW, dW0 = dW / count, dW0 / count  # Σ_b -> mean_b
            grads.append(Dense(dW, dW0))
        return tuple(grads)


def _pair(item):
    if hasattr(item, "W") and hasattr(item, "W0"):
        return item.W, item.W0
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return tuple(item)
    return None


def _column_bias(dW0, n: int, l: int):
    shape = tuple(getattr(dW0, "shape", ()))
    if shape != (n, 1):
        raise BackpropError(
            f"backprop: layer {l} W0 has shape {shape}; expected ({n}, 1) with "
            f"layout='columns' (a column bias like the params' W0, n^{l} = {n})")
    return dW0.reshape(n)


def adapt(fn: Callable, *, layout: str, reduction: str, batched: bool) -> Callable:
    """``fn`` as jaxbp's rows / batch-mean form (``fn`` itself when already so)."""
    layout, reduction = check_layout(layout, reduction)
    if layout == "rows" and (reduction == "mean" or not batched):
        return fn
    return Adapted(fn, layout, reduction, bool(batched))
