"""A catalog of classic manual-backprop bugs, each applied to jaxbp's own backprop.

The backprop here is the notes' chain written as five replaceable factors
(``Factors``), built from jaxbp's tables (``ACTIVATIONS``, ``LOSSES``) and
its forward trace, never by editing ``_network.py``:

    top:        ∂L/∂z^L       (loss factor ∂L/∂a^L times f^L', or fused a^L − y)
    activation: ∂L/∂z^ℓ = f^ℓ'(z^ℓ) ⊙ ∂L/∂a^ℓ
    link:       ∂L/∂a^ℓ = W^{ℓ+1} ∂L/∂z^{ℓ+1}
    weight:     ∂L/∂W^ℓ = a^{ℓ−1} (∂L/∂z^ℓ)ᵀ
    bias:       ∂L/∂W0^ℓ = ∂L/∂z^ℓ

A ``Mutant`` alters one factor at one layer ℓ (or, for batch bugs, the
reduction over the batch at layer ℓ) and states what ``jaxbp.verify`` should
answer: the first bad layer and the suspect. ``jaxbp selftest`` runs them all.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxbp.core._network import Dense, Network, _forward_trace


class Factors(NamedTuple):
    """The notes' backprop factors; each is a pure function of one example.

    Attributes:
      top: (net, factors, z^L, a^L, y) -> ∂L/∂z^L, (n^L,).
      activation: (net, l, z^l, a^l, ∂L/∂a^l) -> ∂L/∂z^l, (n^l,).
      link: (net, params, l, ∂L/∂z^{l+1}) -> ∂L/∂a^l, (n^l,), for l < L.
      weight: (net, trace, l, ∂L/∂z^l) -> ∂L/∂W^l, (m^l, n^l).
      bias: (net, trace, l, ∂L/∂z^l, ∂L/∂a^l or None) -> ∂L/∂W0^l, (n^l,).
    """

    top: Callable
    activation: Callable
    link: Callable
    weight: Callable
    bias: Callable


def notes_top(net, factors, z, a, y):
    loss = net._loss
    if loss.dL_dz is not None:  # fused, stable: softmax+nll, sigmoid+binary_nll
        return loss.dL_dz(z, y)
    return factors.activation(net, net.num_layers, z, a, loss.dL_da(a, y))


def notes_activation(net, l, z, a, dL_da):
    return net._acts[l - 1].vjp(z, a, dL_da)


def notes_link(net, params, l, dL_dz_next):
    # W^{l+1} ∂L/∂z^{l+1}, written as a row times W^{l+1}ᵀ so that a batch of rows
    # works too: (..., n^{l+1}) @ (n^{l+1}, n^l) -> (..., n^l)
    return dL_dz_next @ params[l].W.T


def _outer(u, v):
    return u[..., :, None] * v[..., None, :]  # (..., m, 1) * (..., 1, n) -> (..., m, n)


def notes_weight(net, trace, l, dL_dz):
    return _outer(trace.a[l - 1], dL_dz)  # a^{l-1} (∂L/∂z^l)ᵀ: (m, n)


def notes_bias(net, trace, l, dL_dz, dL_da):
    return dL_dz


NOTES = Factors(notes_top, notes_activation, notes_link, notes_weight, notes_bias)


def chain_parts(net: Network, factors: Factors, params, x, y):
    """(trace, (∂L/∂z^1..∂L/∂z^L), grads) for one example, from ``factors``.

    Every factor is written on the last axis, so x (m,) may also be a batch
    (B, m): then each output has a leading batch axis and each row is that
    example's value (the self-test uses this to skip ``vmap``'s overhead).
    """
    L = net.num_layers
    trace = _forward_trace(net, params, x)
    deltas, das = {L: factors.top(net, factors, trace.z[L - 1], trace.a[L], y)}, {L: None}
    for l in range(L - 1, 0, -1):
        das[l] = factors.link(net, params, l, deltas[l + 1])
        deltas[l] = factors.activation(net, l, trace.z[l - 1], trace.a[l], das[l])
    grads = tuple(Dense(factors.weight(net, trace, l, deltas[l]),
                        factors.bias(net, trace, l, deltas[l], das[l]))
                  for l in range(1, L + 1))
    return trace, tuple(deltas[l] for l in range(1, L + 1)), grads


def chain_backprop(net: Network, factors: Factors = NOTES) -> Callable:
    """A backprop ``fn(params, x, y)`` for one example, built from ``factors``."""
    def backprop(params, x, y):
        return chain_parts(net, factors, params, x, y)[2]
    return backprop


def batch_backprop(net: Network, factors: Factors = NOTES, reduce=None) -> Callable:
    """A batched ``fn(params, X, Y)`` -> mean gradient; ``reduce(l, grads, trace, deltas)``
    may replace layer l's reduction (grads, trace, deltas carry a leading batch axis)."""
    def backprop(params, X, Y):
        trace, deltas, grads = chain_parts(net, factors, params, X, Y)
        out = []
        for l, g in enumerate(grads, start=1):
            r = reduce(l, g, trace, deltas) if reduce is not None else None
            out.append(r if r is not None else Dense(jnp.mean(g.W, axis=0),
                                                     jnp.mean(g.W0, axis=0)))
        return tuple(out)
    return backprop


# ----------------------------------------------------------------- catalog

class Mutant(NamedTuple):
    """One classic bug.

    Attributes:
      name: a short id.
      factor: the factor of the notes it breaks ("loss", "activation", "link",
        "weight", "bias", "batch").
      description: the bug, as a person would write it.
      layers: net -> the layers where it applies and changes the gradient.
      build: (net, l) -> the buggy backprop (per example, or batched).
      batched: whether ``build`` returns ``fn(params, X, Y)`` (the batch mean).
      expect: (net, l) -> (first bad layer, suspect) that verify should report.
    """

    name: str
    factor: str
    description: str
    layers: Callable
    build: Callable
    batched: bool
    expect: Callable


# Where each factor takes the layer index l (after net).
_LAYER_ARG = {"activation": 0, "link": 1, "weight": 1, "bias": 1}


def _at(field, l, bug):
    """Factor ``field`` that is ``bug`` at layer l and the notes' factor elsewhere."""
    default = getattr(NOTES, field)

    def factor(net, *args):
        return (bug if args[_LAYER_ARG[field]] == l else default)(net, *args)
    return factor


def _top_mutant(name, description, layers, top):
    return Mutant(name, "loss", description, layers,
                  lambda net, l: chain_backprop(net, NOTES._replace(top=top)), False,
                  lambda net, l: (net.num_layers, "loss"))


def _act_mutant(name, description, ok_act, bug, fused_too=False):
    """bug(net, l, z, a, dL_da) replaces layer l's activation factor. At l = L the
    loss must be unfused, or (``fused_too``) the bug replaces the fused form too."""
    def layers(net):
        L = net.num_layers
        return tuple(l for l in range(1, L + 1) if ok_act(net, l)
                     and (l < L or net._loss.dL_dz is None or fused_too))

    def build(net, l):
        factors = NOTES._replace(activation=_at("activation", l, bug))
        if l == net.num_layers and net._loss.dL_dz is not None:  # unfused: ∂L/∂a^L, then bug
            factors = factors._replace(top=lambda net, f, z, a, y: bug(
                net, net.num_layers, z, a, net._loss.dL_da(a, y)))
        return chain_backprop(net, factors)
    return Mutant(name, "activation", description, layers, build, False,
                  lambda net, l: (l, "loss" if l == net.num_layers else "activation"))


def _factor_mutant(name, factor, description, layers, field, bug, suspect):
    def build(net, l):
        return chain_backprop(net, NOTES._replace(**{field: _at(field, l, bug)}))
    return Mutant(name, factor, description, layers, build, False, lambda net, l: (l, suspect))


def _batch_mutant(name, description, reduce, layers=None):
    def build(net, l):
        return batch_backprop(net, reduce=lambda ll, g, tr, d: reduce(ll, g, tr, d)
                              if ll == l else None)
    return Mutant(name, "batch", description,
                  layers or (lambda net: tuple(range(1, net.num_layers + 1))), build, True,
                  lambda net, l: (l, "batch"))


def _acts(net, l):
    return net._acts[l - 1]


def _width(net, l):
    return net.sizes[l]  # n^l (n^0 = m^1, the input size)


_SMOOTH = ("sigmoid", "tanh", "softplus", "gelu")


def _hidden(net, pred):
    return tuple(l for l in range(1, net.num_layers) if pred(l))


MUTANTS: tuple = (
    # ---- loss: the top of the chain
    _top_mutant("loss_sign_flip", "∂L/∂z^L with the wrong sign (y − a instead of a − y)",
                lambda net: (net.num_layers,),
                lambda net, f, z, a, y: -notes_top(net, f, z, a, y)),
    _top_mutant("squared_missing_2", "squared loss derivative a − y instead of 2(a − y)",
                lambda net: (net.num_layers,) if net.loss_name == "squared" else (),
                lambda net, f, z, a, y: f.activation(net, net.num_layers, z, a, a - y)),
    _top_mutant("fused_logits_for_probabilities",
                "softmax+nll / sigmoid+binary_nll as z^L − y instead of a^L − y",
                lambda net: (net.num_layers,) if net._loss.dL_dz is not None else (),
                lambda net, f, z, a, y: z - y),
    _top_mutant("output_activation_factor_dropped",
                "∂L/∂z^L = ∂L/∂a^L: the last activation's factor f^L'(z^L) forgotten",
                lambda net: (net.num_layers,) if net.activations[-1] != "identity" else (),
                lambda net, f, z, a, y: net._loss.dL_da(a, y)),
    _top_mutant("hinge_margin_ignored", "hinge derivative −y everywhere, margin ignored",
                lambda net: (net.num_layers,) if net.loss_name == "hinge"
                and net.activations[-1] == "identity" else (),
                lambda net, f, z, a, y: f.activation(net, net.num_layers, z, a, -y)),
    # ---- activation: f'(z^l)
    _act_mutant("activation_derivative_dropped", "f'(z) left out: ∂L/∂z = ∂L/∂a",
                lambda net, l: net.activations[l - 1] != "identity",
                lambda net, l, z, a, g: g),
    _act_mutant("activation_value_for_derivative", "f(z) used where f'(z) belongs",
                lambda net, l: _acts(net, l).elementwise,
                lambda net, l, z, a, g: g * _acts(net, l).f(z)),
    _act_mutant("activation_derivative_at_a", "f'(a) instead of f'(z)",
                lambda net, l: net.activations[l - 1] in _SMOOTH,
                lambda net, l, z, a, g: g * _acts(net, l).df(a)),
    _act_mutant("derivative_formula_on_z", "tanh' as 1 − z², sigmoid' as z(1 − z): a formula "
                "meant for a applied to z",
                lambda net, l: net.activations[l - 1] in ("tanh", "sigmoid"),
                lambda net, l, z, a, g: g * (1 - z * z if net.activations[l - 1] == "tanh"
                                             else z * (1 - z))),
    _act_mutant("softmax_derivative_elementwise",
                "softmax derivative as elementwise a(1 − a) instead of the Jacobian",
                lambda net, l: net.activations[l - 1] == "softmax" and _width(net, l) > 1,
                lambda net, l, z, a, g: g * a * (1 - a), fused_too=True),
    _act_mutant("activation_derivative_wrong_layer", "layer ℓ+1's derivative used at layer ℓ",
                lambda net, l: l < net.num_layers and _acts(net, l).elementwise
                and _acts(net, l + 1).elementwise
                and net.activations[l - 1] != net.activations[l],
                lambda net, l, z, a, g: g * _acts(net, l + 1).df(z)),
    # ---- link: W^{l+1}
    _factor_mutant("link_transposed", "link",
                   "∂L/∂a^ℓ = W^{ℓ+1}ᵀ ∂L/∂z^{ℓ+1}: W transposed the wrong way",
                   lambda net: _hidden(net, lambda l: _width(net, l) == _width(net, l + 1) > 1),
                   "link", lambda net, params, l, d: d @ params[l].W, "link"),
    _factor_mutant("link_dropped", "link", "∂L/∂a^ℓ = ∂L/∂z^{ℓ+1}: W^{ℓ+1} left out",
                   lambda net: _hidden(net, lambda l: _width(net, l) == _width(net, l + 1)),
                   "link", lambda net, params, l, d: d, "link"),
    _factor_mutant("link_off_by_one", "link", "W^ℓ used in place of W^{ℓ+1} (off by one layer)",
                   lambda net: _hidden(net, lambda l: _width(net, l - 1) == _width(net, l)
                                       == _width(net, l + 1)),
                   "link", lambda net, params, l, d: d @ params[l - 1].W.T, "link"),
    # ---- weight: a^{l-1}
    _factor_mutant("weight_factor_z", "weight", "∂L/∂W^ℓ = z^{ℓ−1} δᵀ: z used instead of a",
                   lambda net: tuple(l for l in range(2, net.num_layers + 1)
                                     if net.activations[l - 2] != "identity"),
                   "weight",
                   lambda net, trace, l, d: _outer(trace.z[l - 2], d), "weight"),
    _factor_mutant("weight_factor_off_by_one", "weight", "∂L/∂W^ℓ = a^ℓ δᵀ instead of a^{ℓ−1}",
                   lambda net: tuple(l for l in range(1, net.num_layers + 1)
                                     if _width(net, l - 1) == _width(net, l)),
                   "weight",
                   lambda net, trace, l, d: _outer(trace.a[l], d), "weight"),
    _factor_mutant("weight_outer_transposed", "weight", "∂L/∂W^ℓ = δ a^{ℓ−1}ᵀ (transposed)",
                   lambda net: tuple(l for l in range(1, net.num_layers + 1)
                                     if _width(net, l - 1) == _width(net, l) > 1),
                   "weight",
                   lambda net, trace, l, d: _outer(d, trace.a[l - 1]), "weight"),
    _factor_mutant("weight_sign_flip", "weight", "∂L/∂W^ℓ with the wrong sign",
                   lambda net: tuple(range(1, net.num_layers + 1)), "weight",
                   lambda net, trace, l, d: -_outer(trace.a[l - 1], d), "weight"),
    # ---- bias: ∂L/∂W0 = ∂L/∂z
    _factor_mutant("bias_gradient_dropped", "bias", "∂L/∂W0^ℓ left at zero",
                   lambda net: tuple(range(1, net.num_layers + 1)), "bias",
                   lambda net, trace, l, d, g: jnp.zeros_like(d), "bias"),
    _factor_mutant("bias_gradient_before_activation", "bias",
                   "∂L/∂W0^ℓ = ∂L/∂a^ℓ (before the activation factor)",
                   lambda net: _hidden(net, lambda l: net.activations[l - 1] != "identity"),
                   "bias", lambda net, trace, l, d, g: g, "bias"),
    # ---- batch: the reduction over examples (batched=True)
    _batch_mutant("batch_sum_not_mean", "layer ℓ summed over the batch (1/B missing)",
                  lambda l, g, tr, d: Dense(jnp.sum(g.W, axis=0), jnp.sum(g.W0, axis=0))),
    _batch_mutant("batch_bias_summed", "W^ℓ averaged but W0^ℓ summed",
                  lambda l, g, tr, d: Dense(jnp.mean(g.W, axis=0), jnp.sum(g.W0, axis=0))),
    _batch_mutant("batch_mean_twice", "layer ℓ divided by B twice",
                  lambda l, g, tr, d: Dense(jnp.mean(g.W, axis=0) / g.W.shape[0],
                                            jnp.mean(g.W0, axis=0) / g.W0.shape[0])),
    _batch_mutant("batch_last_example_only",
                  "layer ℓ keeps the last example's gradient (overwritten, not accumulated)",
                  lambda l, g, tr, d: Dense(g.W[-1], g.W0[-1])),
    _batch_mutant("batch_weight_from_means", "∂L/∂W^ℓ = mean(a^{ℓ−1}) mean(δ^ℓ)ᵀ, "
                  "the product of batch means instead of the mean of products",
                  lambda l, g, tr, d: Dense(jnp.outer(jnp.mean(tr.a[l - 1], axis=0),
                                                      jnp.mean(d[l - 1], axis=0)),
                                            jnp.mean(g.W0, axis=0))),
)

# Not a classic bug: a 3e-4 relative error in one layer's ∂L/∂W, the precision
# the float32 budget promises to catch.
PROBES: tuple = (
    _factor_mutant("probe_3e-4", "weight", "∂L/∂W^ℓ scaled by 1 + 3e-4",
                   lambda net: tuple(range(1, net.num_layers + 1)), "weight",
                   lambda net, trace, l, d: _outer(trace.a[l - 1], d) * (1 + 3e-4),
                   "weight"),
)

def _matrix_form(l, grads, trace, deltas):
    """The batch mean as one product, A^{l-1}ᵀ δ^l / B: other round-off than a mean."""
    A, d = trace.a[l - 1], deltas[l - 1]  # (B, m), (B, n)
    return Dense(A.T @ d / d.shape[0], jnp.sum(d, axis=0) / d.shape[0])  # (m, B) @ (B, n)


# Correct backprops written differently from jaxbp's: the self-test's false-alarm check.
CORRECT: tuple = (
    ("chain", False, lambda net: chain_backprop(net)),
    ("jax_grad_in_dtype", False, lambda net: jax.grad(net.loss)),
    ("chain_batch_mean", True, lambda net: batch_backprop(net)),
    ("matrix_form_mean", True, lambda net: batch_backprop(net, reduce=_matrix_form)),
)
