"""The notes' chain of factors for one weight, as numbers.

The notes write the gradient of the weight of layer ℓ as a product of factors,
from the loss backwards (their w^ℓ is jaxbp's W^l):

    ∂L/∂W^l = ∂L/∂a^L · (∂a^L/∂z^L · ∂z^L/∂a^{L−1}) ⋯ (∂a^{l+1}/∂z^{l+1} · ∂z^{l+1}/∂a^l)
              · (∂a^l/∂z^l · ∂z^l/∂W^l)

    loss        ∂L/∂a^L            the loss's derivative        LOSSES[name].dL_da(a^L, y)
    activation  ∂a^k/∂z^k          (f^k)'(z^k)                  ACTIVATIONS[name].df(z^k)
    link        ∂z^k/∂a^{k−1}      W^k                          params[k − 1].W
    weight      ∂z^l/∂W^l          a^{l−1}  (a^0 = x)           the forward pass

That is 2(L − l) + 3 factors. Every value comes from the library's one
derivative table; nothing here restates a derivative. (The link factor of layer
k is W^k: where the notes' 1-D expansion prints w^L in the "layer L − 1" group,
read w^{L−1}.)

Shapes. Every value is a matrix, with vectors as columns as in the notes, and
matrices in the notes' layout (entry (i, j) = ∂(numerator)_j/∂(denominator)_i),
so that ∂L/∂(denominator) = factor @ ∂L/∂(numerator):

    loss        (n^L, 1)
    activation  (n^k, n^k)   diag(f'(z^k)) for an elementwise f; softmax's
                             Jacobian diag(a) − a aᵀ (symmetric, so either layout)
    link        (m^k, n^k)   W^k itself: it maps ∂L/∂z^k (n^k,) to ∂L/∂a^{k−1} (m^k,)
    weight      (m^l, 1)     a^{l−1}; ∂L/∂W^l = a^{l−1} (∂L/∂z^l)ᵀ, an outer product

For a 1-D net (every size 1) every value is (1, 1), so the plain product
``math.prod(f.value for f in factors)`` is ∂L/∂W^l, shape (1, 1), the notes'
product of numbers. ``contract`` multiplies the factors of any net in the order
above.

The bias. ∂z^l/∂W0^l = 1, so ∂L/∂W0^l is the same chain without the weight
factor: ``contract(factors[:-1])`` is ∂L/∂z^l = ∂L/∂W0^l, shape (n^l,). ``chain``
returns the factors of ∂L/∂W^l only; it does not add a factor for the bias.

Fused losses. The notes' loss factor is the unfused ∂L/∂a^L: −y/a for ``nll``
and (a − y)/(a(1 − a)) for ``binary_nll``. ``Network.backprop`` instead uses the
fused, stable ∂L/∂z^L = a^L − y (``LOSSES[name].dL_dz``). The loss factor times
the activation factor equals it (``contract(factors[:2])``); where a^L has
saturated to exactly 0 or 1 the unfused factor is not finite and ``chain``
raises a ValueError instead of returning NaN.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxbp.core import _checks
from jaxbp.core._network import _forward_trace

FACTOR_NAMES = ("loss", "activation", "link", "weight")


class Factor(NamedTuple):
    """One factor of the notes' chain rule.

    Attributes:
      name: "loss" (∂L/∂a^L), "activation" (∂a^k/∂z^k), "link" (∂z^k/∂a^{k−1})
        or "weight" (∂z^l/∂W^l).
      symbol: the factor in the notes' notation, e.g. "∂a^2/∂z^2".
      value: its value, a matrix (see the module docstring for shapes).
    """

    name: str
    symbol: str
    value: jax.Array


def check_layer(net, layer) -> int:
    """Returns layer as an int in 1..L or raises, naming the valid range."""
    L = net.num_layers
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise TypeError(f"layer: expected an int in 1..L = 1..{L}, got {layer!r}")
    if not 1 <= layer <= L:
        raise ValueError(
            f"layer: expected 1..L = 1..{L} for this {L}-layer network "
            f"(layers count from 1), got {layer}"
        )
    return int(layer)


def spec(num_layers: int, layer: int) -> tuple[tuple[str, int], ...]:
    """The chain's (name, k) pairs for ∂L/∂W^layer, from the loss backwards.

    k is the layer the factor belongs to: ("loss", L), then ("activation", k)
    and ("link", k) for k = L … layer + 1, then ("activation", layer) and
    ("weight", layer). 2(L − layer) + 3 pairs.
    """
    L = num_layers
    pairs = [("loss", L)]
    for k in range(L, layer, -1):
        pairs += [("activation", k), ("link", k)]
    pairs += [("activation", layer), ("weight", layer)]
    return tuple(pairs)


def _sup(k) -> str:
    k = str(k)
    return f"^{k}" if len(k) == 1 else f"^{{{k}}}"


def symbol(name: str, k: int) -> str:
    """The factor's symbol in plain text, e.g. symbol("link", 2) == "∂z^2/∂a^1"."""
    if name == "loss":
        return f"∂L/∂a{_sup(k)}"
    if name == "activation":
        return f"∂a{_sup(k)}/∂z{_sup(k)}"
    if name == "link":
        return f"∂z{_sup(k)}/∂a{_sup(k - 1)}"
    if name == "weight":
        return f"∂z{_sup(k)}/∂W{_sup(k)}"
    raise ValueError(f"name: expected one of {FACTOR_NAMES}, got {name!r}")


def _activation_matrix(act, z: jax.Array) -> jax.Array:
    """∂a/∂z as an (n, n) matrix in the notes' layout, from the activation table."""
    d = act.df(z)
    if act.elementwise:
        return jnp.diag(d)  # (n,) -> (n, n)
    return d.T  # df gives entry (i, j) = ∂a_i/∂z_j; the notes' layout is its transpose


def chain(net, params, x: ArrayLike, y: ArrayLike, *, layer: int) -> list[Factor]:
    """The notes' factors of ∂L/∂W^layer for one example, from the loss backwards.

        ∂L/∂W^l = ∂L/∂a^L · ∂a^L/∂z^L · ∂z^L/∂a^{L−1} ⋯ ∂a^l/∂z^l · ∂z^l/∂W^l

    2(L − l) + 3 factors: the loss factor, an activation and a link factor for
    each layer k = L … l + 1, the activation of layer l and the weight factor.
    Values are matrices (vectors as columns); for a 1-D net they are all (1, 1)
    and their plain product is ∂L/∂W^l. ``contract`` multiplies them for any
    net. The bias needs no factor of its own (∂z^l/∂W0^l = 1):
    ``contract(factors[:-1])`` is ∂L/∂W0^l.

    Args:
      net: a ``Network``.
      params: its parameters, a tuple of ``Dense``.
      x: one input, shape (m^1,) (a scalar is accepted when m^1 = 1).
      y: its target, shape (n^L,) (a scalar is accepted when n^L = 1).
      layer: l in 1..L, the weight W^l whose gradient the chain gives.

    Returns:
      A list of ``Factor(name, symbol, value)``.

    Raises:
      ValueError: layer outside 1..L; x, y or params not of the net's shapes; a
        factor that is not finite (an ``nll``/``binary_nll`` output saturated
        to exactly 0 or 1, where only the fused ∂L/∂z^L = a^L − y is finite).

    Example:
      >>> import math, jax, jaxbp
      >>> net = jaxbp.Network(sizes=(1, 1, 1), activations=("tanh", "sigmoid"), loss="squared")
      >>> params = net.init(jax.random.key(0))
      >>> factors = jaxbp.chain(net, params, x=[0.5], y=[1.0], layer=1)
      >>> [f.symbol for f in factors]
      ['∂L/∂a^2', '∂a^2/∂z^2', '∂z^2/∂a^1', '∂a^1/∂z^1', '∂z^1/∂W^1']
      >>> math.prod(f.value for f in factors).shape   # == jax.grad(net.loss)(...)[0].W
      (1, 1)
    """
    layer = check_layer(net, layer)
    if net.sizes[0] == 1 and _checks.is_concrete(x) and np.ndim(x) == 0:
        x = jnp.reshape(jnp.asarray(x), (1,))
    params, x, y = net._example(params, x, y, batched=False)
    values = _values(net, tuple(params), x, y, layer)
    factors = [Factor(name, symbol(name, k), v)
               for (name, k), v in zip(spec(net.num_layers, layer), values)]
    _check_finite(net, factors)
    return factors


def _values(net, params, x, y, layer: int) -> tuple:
    # Not jitted on purpose: eager ops are compiled once per shape and reused by
    # every net, while a jitted chain compiles once per (net, layer). Wrap a
    # caller in jax.jit for speed; chain traces cleanly.
    trace = _forward_trace(net, params, x)
    acts, loss = net._acts, net._loss
    L = net.num_layers
    values = []
    for name, k in spec(L, layer):
        if name == "loss":
            values.append(loss.dL_da(trace.a[L], y)[:, None])  # (n^L, 1)
        elif name == "activation":
            values.append(_activation_matrix(acts[k - 1], trace.z[k - 1]))  # (n^k, n^k)
        elif name == "link":
            values.append(params[k - 1].W)  # (m^k, n^k)
        else:
            values.append(trace.a[k - 1][:, None])  # (m^l, 1)
    return tuple(values)


def _check_finite(net, factors) -> None:
    bad = [f.symbol for f in factors
           if _checks.is_concrete(f.value) and not bool(jnp.all(jnp.isfinite(f.value)))]
    if not bad:
        return
    hint = ""
    if net._loss.dL_dz is not None:
        hint = (f"; with loss {net.loss_name!r} the unfused factor ∂L/∂a^L overflows when a^L "
                f"saturates to 0 or 1: the fused ∂L/∂z^L = a^L − y (net.deltas) stays finite")
    raise ValueError(f"chain: factor(s) {', '.join(bad)} are not finite (NaN or inf){hint}")


def _kind(f: Factor, i: int, column: bool) -> tuple[str, tuple[int, int]]:
    """How a value becomes a matrix ("matrix", "column" or "diag") and that matrix's shape."""
    shape = tuple(np.shape(f.value))
    if len(shape) == 1 and column:
        return "column", (shape[0], 1)
    if len(shape) == 1 and f.name == "activation":
        return "diag", (shape[0], shape[0])  # the diagonal of an elementwise activation
    if len(shape) != 2:
        raise ValueError(
            f"factors[{i}] ({f.symbol}): expected a matrix (or vector), got shape {shape}")
    return "matrix", shape


@functools.partial(jax.jit, static_argnums=(0, 1))
def _multiply(kinds: tuple, weight_last: bool, values: tuple) -> jax.Array:
    # One compiled function per chain layout: cheaper than dispatching each matmul.
    mats = [v[:, None] if kind == "column" else jnp.diag(v) if kind == "diag" else v
            for kind, v in zip(kinds, values)]
    g = mats[0]  # ∂L/∂a^L, (n^L, 1)
    for F in mats[1:len(mats) - weight_last]:
        g = F @ g  # (p, q) @ (q, 1) -> (p, 1)
    if weight_last:
        return mats[-1] @ g.T  # a^{l-1} (∂L/∂z^l)ᵀ: (m, 1) @ (1, n) -> (m, n)
    return g[:, 0]


def contract(factors: Sequence[Factor]) -> jax.Array:
    """Multiplies the notes' factors with the right shapes: the gradient they give.

    Starting from g = ∂L/∂a^L (n^L, 1), each activation or link factor F maps
    the gradient with respect to its numerator to the one with respect to its
    denominator, g ← F @ g:

        ∂L/∂z^k = ∂a^k/∂z^k @ ∂L/∂a^k        (n^k, n^k) @ (n^k, 1)
        ∂L/∂a^{k−1} = W^k @ ∂L/∂z^k           (m^k, n^k) @ (n^k, 1) -> (m^k, 1)

    and the weight factor makes the outer product ∂L/∂W^l = a^{l−1} (∂L/∂z^l)ᵀ.

    Args:
      factors: a chain from ``chain`` (or a prefix of one). Vector values are
        accepted too: as columns, or as the diagonal of an activation factor.

    Returns:
      ∂L/∂W^l, shape (m^l, n^l), when the chain ends with its weight factor;
      otherwise the gradient with respect to the last factor's denominator as a
      vector, e.g. ``contract(factors[:-1])`` = ∂L/∂z^l = ∂L/∂W0^l, shape (n^l,).

    Raises:
      ValueError: an empty chain, a chain that does not start with the loss
        factor, a weight factor before the end, or shapes that do not chain.

    Example:
      >>> import jax, jaxbp
      >>> net = jaxbp.Network(sizes=(3, 4, 2), activations=("tanh", "softmax"), loss="nll")
      >>> params = net.init(jax.random.key(0))
      >>> factors = jaxbp.chain(net, params, x=[1.0, 0.0, -1.0], y=[0.0, 1.0], layer=1)
      >>> jaxbp.contract(factors).shape       # == jax.grad(net.loss)(...)[0].W.shape
      (3, 4)
    """
    factors = list(factors)
    if not factors:
        raise ValueError("factors: expected a chain starting with the loss factor, got []")
    for i, f in enumerate(factors):
        if not isinstance(f, Factor):
            raise TypeError(f"factors[{i}]: expected a Factor, got {type(f).__name__}")
        if f.name not in FACTOR_NAMES:
            raise ValueError(f"factors[{i}]: name expected one of {FACTOR_NAMES}, got {f.name!r}")
    if factors[0].name != "loss":
        raise ValueError(
            f"factors[0]: expected the loss factor ∂L/∂a^L first, got {factors[0].name!r} "
            f"({factors[0].symbol})")
    kind, (rows, cols) = _kind(factors[0], 0, column=True)
    if cols != 1:
        raise ValueError(f"factors[0] ({factors[0].symbol}): expected a column (n, 1), "
                         f"got {tuple(np.shape(factors[0].value))}")
    kinds = [kind]
    weight_last = False
    for i, f in enumerate(factors[1:], start=1):
        if f.name == "loss":
            raise ValueError(f"factors[{i}]: the loss factor can only come first")
        if f.name == "weight":
            if i != len(factors) - 1:
                raise ValueError(
                    f"factors[{i}] ({f.symbol}): the weight factor must be the last, "
                    f"but {len(factors) - 1 - i} factor(s) follow it")
            kind, shape = _kind(f, i, column=True)
            if shape[1] != 1:
                raise ValueError(
                    f"factors[{i}] ({f.symbol}): expected a column a^(l-1) of shape (m, 1), "
                    f"got {shape}")
            kinds.append(kind)
            weight_last = True
            break
        kind, shape = _kind(f, i, column=False)
        if shape[1] != rows:
            raise ValueError(
                f"factors[{i}] ({f.symbol}): shape {shape} does not chain onto the gradient "
                f"so far, shape {(rows, 1)}; expected (·, {rows})")
        kinds.append(kind)
        rows = shape[0]
    return _multiply(tuple(kinds), weight_last, tuple(jnp.asarray(f.value) for f in factors))
