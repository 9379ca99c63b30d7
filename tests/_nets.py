"""Shared strategies and helpers for the core tests."""

import jax
import numpy as np
from hypothesis import strategies as st

import jaxbp
# Last activations that make sense for each loss, and the net and data generators,
# are the selftest's.
from jaxbp.check._selftest import LAST_ACTIVATIONS, make_network, random_problem
from jaxbp import tree_relative_error

ACTIVATION_NAMES = tuple(jaxbp.ACTIVATIONS)


@st.composite
def networks(draw, max_depth=5, max_width=6):
    loss = draw(st.sampled_from(tuple(LAST_ACTIVATIONS)))
    depth = draw(st.integers(1, max_depth))
    hidden = draw(st.lists(st.sampled_from(ACTIVATION_NAMES), min_size=depth - 1,
                           max_size=depth - 1))
    last = draw(st.sampled_from(LAST_ACTIVATIONS[loss]))
    sizes = draw(st.lists(st.integers(1, max_width), min_size=depth + 1, max_size=depth + 1))
    return make_network(sizes, hidden, last, loss)


# Params with random (nonzero) biases, inputs and valid targets: the selftest's generator.
make_problem = random_problem


def assert_close(got, want, rtol):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        assert np.all(np.isfinite(np.asarray(g)))
    err = tree_relative_error(got, want)
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.0e}"
    return err
