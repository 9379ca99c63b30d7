"""One helper for the module tests: a module's hand-written backward against jax.vjp of its forward."""

import jax
import jax.numpy as jnp
import numpy as np


def rel_err(got, want) -> float:
    """max|got − want| / max|want| (0 when both are all zero); inf on NaN/inf."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(want))):
        return float("inf")
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    diff = float(np.max(np.abs(got - want))) if want.size else 0.0
    return diff / scale if scale > 0 else diff


def backward_vs_vjp(module, params, X, *, key=None, seed=0):
    """(hand-written (dparams, dX), jax.vjp's (dparams, dX)) for one random cotangent dY."""
    Y, residuals = module.forward(params, X, key)
    # NumPy, not jax.random: a new shape would compile a new sampler (about 1 s each).
    dY = jnp.asarray(np.random.default_rng(seed).standard_normal(Y.shape), Y.dtype)
    manual = module.backward(params, residuals, dY)
    if jnp.issubdtype(jnp.asarray(X).dtype, jnp.integer):
        _, vjp = jax.vjp(lambda p: module.forward(p, X, key)[0], params)
        return manual, (vjp(dY)[0], None)
    _, vjp = jax.vjp(lambda p, x: module.forward(p, x, key)[0], params, X)
    return manual, vjp(dY)


def assert_backward_matches(module, params, X, *, key=None, rtol=1e-10, seed=0):
    """Every leaf of dparams and dX within rtol (relative to the leaf's largest entry)."""
    (dp, dX), (dp_ref, dX_ref) = backward_vs_vjp(module, params, X, key=key, seed=seed)
    assert jax.tree.structure(dp) == jax.tree.structure(dp_ref), (dp, dp_ref)
    # Leaves whose true gradient is 0 (a bias before a norm) are held to the largest scale.
    scale = max([float(np.max(np.abs(np.asarray(l)))) for l in jax.tree.leaves(dp_ref)
                 if np.size(l)] + [1e-300])
    for path, got, want in zip(jax.tree_util.tree_flatten_with_path(dp_ref)[0],
                               jax.tree.leaves(dp), jax.tree.leaves(dp_ref)):
        err = rel_err(got, want)
        if err > rtol:
            abs_err = float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
            assert abs_err <= rtol * scale, (module.name, jax.tree_util.keystr(path[0]), err)
    if dX_ref is None:
        assert dX is None, f"{module.name}: dX must be None for integer inputs"
    else:
        assert rel_err(dX, dX_ref) <= rtol, (module.name, "dX", rel_err(dX, dX_ref))
