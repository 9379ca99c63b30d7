"""The bug catalog: each mutant really changes the gradient, and the verifier
names its layer and factor. A small slice of ``jaxbp selftest``."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxbp
from jaxbp.check._mutants import CORRECT, MUTANTS, PROBES, batch_backprop, chain_backprop
from jaxbp.check._selftest import random_problem
from jaxbp.check._verify import check_against, reference

SUITE = (
    jaxbp.Network(sizes=(4, 4, 4, 4, 3), activations=("tanh", "gelu", "sigmoid", "softmax"),
                  loss="nll"),
    jaxbp.Network(sizes=(3, 4, 4, 2), activations=("leaky_relu", "softmax", "identity"),
                  loss="squared"),
    jaxbp.Network(sizes=(3, 4, 1), activations=("relu", "identity"), loss="hinge"),
)
B = 32


@functools.lru_cache(maxsize=None)
def ref_for(i, dtype_name):
    net = SUITE[i]
    params, X, Y = random_problem(net, 7, B, jnp.dtype(dtype_name))
    return reference(net, params, X, Y)


def test_catalog_has_the_classic_bugs():
    names = [m.name for m in MUTANTS]
    assert len(names) == len(set(names)) >= 15
    assert {m.factor for m in MUTANTS} == {"loss", "activation", "link", "weight", "bias",
                                           "batch"}
    for name in ("activation_derivative_dropped", "link_transposed", "weight_factor_z",
                 "link_off_by_one", "batch_sum_not_mean", "loss_sign_flip",
                 "bias_gradient_dropped", "softmax_derivative_elementwise"):
        assert name in names


@pytest.mark.parametrize("i", range(len(SUITE)))
def test_unmutated_chain_is_jax_grad(i):
    net = SUITE[i]
    params, X, Y = random_problem(net, 3, B, jnp.float64)
    truth = jax.vmap(jax.grad(net.loss), (None, 0, 0))(params, X, Y)
    per_example = jax.vmap(chain_backprop(net), (None, 0, 0))(params, X, Y)
    rows = chain_backprop(net)(params, X, Y)  # the same factors on a whole batch
    mean = (jax.jit(batch_backprop(net)) if i == 0 else batch_backprop(net))(params, X, Y)
    for t, p, r, m in zip(truth, per_example, rows, mean):
        for field in ("W", "W0"):
            want = np.asarray(getattr(t, field))
            np.testing.assert_allclose(getattr(p, field), want, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(getattr(r, field), want, rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(getattr(m, field), want.mean(0), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mutant", MUTANTS + PROBES, ids=lambda m: m.name)
def test_mutant_is_caught_at_its_layer_and_factor(mutant, dtype):
    i = next(i for i, net in enumerate(SUITE) if mutant.layers(net))
    net, ref = SUITE[i], ref_for(i, dtype)
    l = max(mutant.layers(net))
    report = check_against(ref, mutant.build(net, l), batched=mutant.batched,
                           vectorized=not mutant.batched)
    want_layer, want_suspect = mutant.expect(net, l)
    assert max(r.max_rel_error for r in report.rows) > 1e-4  # the bug changes the gradient
    assert not report.ok
    assert (report.first_bad_layer, report.suspect) == (want_layer, want_suspect), str(report)
    assert not report.ambiguous, str(report)


def test_hidden_softmax_derivative_elementwise_is_activation():
    mutant = next(m for m in MUTANTS if m.name == "softmax_derivative_elementwise")
    net = SUITE[1]
    assert mutant.layers(net) == (2,)
    report = check_against(ref_for(1, "float32"), mutant.build(net, 2), vectorized=True)
    assert (report.first_bad_layer, report.suspect, report.ambiguous) == (2, "activation", False)


@pytest.mark.parametrize("name,batched,make", CORRECT, ids=[c[0] for c in CORRECT])
def test_correct_variants_pass(name, batched, make):
    for i in range(len(SUITE)):
        report = check_against(ref_for(i, "float32"), make(SUITE[i]), batched=batched)
        assert report.ok, str(report)
