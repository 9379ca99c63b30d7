"""Hand-written backprops as a user would write them, right and wrong, for the
verifier's CLI and API tests. Each takes one example (x, y) unless it says
batched; a first parameter named ``net`` gets the network from ``jaxbp verify``.
"""

import jax.numpy as jnp

import jaxbp
from jaxbp import ACTIVATIONS, LOSSES


def backprop(net, params, x, y):
    """The notes' chain, written from scratch for any network: correct."""
    acts = [ACTIVATIONS[name] for name in net.activations]
    loss = LOSSES[net.loss_name]
    zs, as_ = [], [x]
    for layer, act in zip(params, acts):
        zs.append(as_[-1] @ layer.W + layer.W0)
        as_.append(act.f(zs[-1]))
    if loss.dL_dz is not None:
        dL_dz = loss.dL_dz(zs[-1], y)
    else:
        dL_dz = acts[-1].vjp(zs[-1], as_[-1], loss.dL_da(as_[-1], y))
    grads = []
    for l in range(len(params), 0, -1):
        grads.append(jaxbp.Dense(jnp.outer(as_[l - 1], dL_dz), dL_dz))
        if l > 1:
            dL_da = params[l - 1].W @ dL_dz
            dL_dz = acts[l - 2].vjp(zs[l - 2], as_[l - 1], dL_da)
    return tuple(reversed(grads))


def tanh_softmax_nll(params, x, y):
    """A two-layer tanh -> softmax net with nll, hard-coded: correct."""
    (W1, b1), (W2, b2) = params
    z1 = x @ W1 + b1
    a1 = jnp.tanh(z1)
    z2 = a1 @ W2 + b2
    dz2 = jnp.exp(z2 - jnp.max(z2)) / jnp.sum(jnp.exp(z2 - jnp.max(z2))) - y
    dz1 = (W2 @ dz2) * (1 - a1 ** 2)
    return (jaxbp.Dense(jnp.outer(x, dz1), dz1), jaxbp.Dense(jnp.outer(a1, dz2), dz2))


def tanh_softmax_nll_wrong_derivative(params, x, y):
    """The same, with tanh' written as 1 − z² (the formula for a applied to z)."""
    (W1, b1), (W2, b2) = params
    z1 = x @ W1 + b1
    a1 = jnp.tanh(z1)
    z2 = a1 @ W2 + b2
    dz2 = jnp.exp(z2 - jnp.max(z2)) / jnp.sum(jnp.exp(z2 - jnp.max(z2))) - y
    dz1 = (W2 @ dz2) * (1 - z1 ** 2)
    return (jaxbp.Dense(jnp.outer(x, dz1), dz1), jaxbp.Dense(jnp.outer(a1, dz2), dz2))


def raises(params, x, y):
    raise RuntimeError("not implemented yet")


def transposed_weight(net, params, x, y):
    """Returns ∂L/∂W^1 transposed: a shape error, not a silent pass."""
    grads = backprop(net, params, x, y)
    return (jaxbp.Dense(grads[0].W.T, grads[0].W0),) + grads[1:]


def nan_in_layer_2(net, params, x, y):
    grads = backprop(net, params, x, y)
    W = grads[1].W.at[0, 0].set(jnp.nan)
    return grads[:1] + (jaxbp.Dense(W, grads[1].W0),) + grads[2:]


def batched_mean(net, params, X, Y):
    """Batched: the mean over the batch, correct."""
    per = [backprop(net, params, x, y) for x, y in zip(X, Y)]
    return tuple(jaxbp.Dense(sum(g[l].W for g in per) / len(per),
                             sum(g[l].W0 for g in per) / len(per))
                 for l in range(len(params)))


def batched_sum(net, params, X, Y):
    """Batched: summed over the batch, 1/B forgotten."""
    per = [backprop(net, params, x, y) for x, y in zip(X, Y)]
    return tuple(jaxbp.Dense(sum(g[l].W for g in per), sum(g[l].W0 for g in per))
                 for l in range(len(params)))


NOT_A_FUNCTION = 3
