"""jaxbp.as_jax: NumPy's in-place idioms traced, outputs reproduced, names restored, no leaks."""

import jax
import numpy
import numpy as np
import pytest

import jaxbp
from jaxbp.bridge import UntraceableError


def views_and_writes(x):
    out = np.zeros((3, 4))
    out[0] = x[0]                     # item write
    out[1:, :2] += x[1:, :2] * 2      # slice +=
    row = out[2]
    row[3] = np.sum(x)                # a view writing through
    out.T[1, 1] = x[1, 1] ** 2        # a transposed view
    out[out < -0.5] = 0.0             # boolean mask
    np.add.at(out, ([0, 0], [1, 1]), x[2, :2])  # repeated indices accumulate
    np.multiply(out, 1.5, out=out)    # out=
    return out


def test_in_place_idioms_reproduce_numpy_and_differentiate():
    x = np.random.default_rng(0).standard_normal((3, 4))
    want = views_and_writes(x.copy())
    with jax.enable_x64(True):
        got, pullback = jax.vjp(jaxbp.as_jax(views_and_writes), x)
        dout = np.random.default_rng(1).standard_normal((3, 4))
        g = np.asarray(pullback(dout)[0])
        fd = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            e = np.zeros_like(x)
            e[i] = 1e-6
            fd[i] = np.sum(dout * (views_and_writes(x + e) - views_and_writes(x - e))) / 2e-6
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-15)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)


class Holder:
    def forward(self, x):
        self.A = x * 2        # stored on the object while traced
        STORE["last"] = self.A  # and in a module-level dict
        return np.tanh(self.A).sum()


STORE = {}


def test_nothing_traced_leaks_and_names_come_back():
    h = Holder()
    g = jax.grad(jaxbp.as_jax(h.forward))(np.ones(3))
    np.testing.assert_allclose(g, 2 * (1 - np.tanh(2.0) ** 2) * np.ones(3), rtol=1e-6)
    assert type(h.A) is np.ndarray and type(STORE["last"]) is np.ndarray
    assert globals()["np"] is numpy  # the swapped name is back

    def boom(x):
        np.exp(x)
        raise KeyError("inside")

    with pytest.raises(KeyError):
        jax.grad(jaxbp.as_jax(boom))(np.ones(2))
    assert globals()["np"] is numpy


def test_concrete_calls_stay_numpy_and_untraceable_calls_say_so():
    seen = {}

    def f(x):
        seen["n"] = np.prod(x.shape)  # concrete: a NumPy integer, not a tracer
        return float(x[0])

    with pytest.raises(UntraceableError, match=r"float\(\)"):
        jax.grad(jaxbp.as_jax(f))(np.ones(3))
    assert seen["n"] == 3 and isinstance(seen["n"], np.integer)
    assert isinstance(jaxbp.as_jax(lambda x: np.zeros(2))(1.0), np.ndarray)
    with pytest.raises(TypeError, match="scope"):
        jaxbp.as_jax(f, scope="everything")
