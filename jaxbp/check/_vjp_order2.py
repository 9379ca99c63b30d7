"""``check_vjp(..., order=2)``: the derivative of your backward, gradgradcheck's question.

Your backward is a function g(primals, dy) = dyᵀ J(primals). Its own VJP, for a
cotangent v shaped like its output (like the primals), is

    (∂⟨v, g⟩/∂primals, ∂⟨v, g⟩/∂dy) = (dyᵀ (∂J/∂primals) v,  J v),

which is what reverse-over-reverse (``jax.grad(jax.grad(...))``, ``jax.hessian``
built from ``jax.jacrev``) takes through a ``jaxbp.custom_vjp`` layer. The truth is
``jax.vjp`` of ``jax.vjp(forward)`` in float64; yours is ``jax.vjp`` of your
backward, so it must be JAX-traceable. A backward can be right in value and
wrong here: a term behind ``jax.lax.stop_gradient``, a factor computed on the
host, a value recomputed from a detached copy.

Rows are labelled "<primal leaf> (order 2)" and "dy (order 2)"; budgets follow
``check_vjp``'s rule (10 × the round-off of the same computation in your dtype,
or the floor).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxbp.check._compare import BackpropError, budget, max_abs, row

SUFFIX = " (order 2)"


def _leaves64(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _cast(tree, dtype):
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def order2_rows(forward, backward, primals, dys, key, dtype, as_cotangents, primal_names,
                rtol=None, atol=None) -> tuple:
    """The second-order rows: one per primal leaf, then one per leaf of dy.

    Args:
      forward, backward: as for ``check_vjp``.
      primals: the point (already float arrays).
      dys: the first-order trials' cotangents; one v per trial is drawn from ``key``.
      key: PRNG key for the v's.
      dtype: your dtype (budgets are set for it).
      as_cotangents: ``check_vjp``'s shape check of a backward's output.
      primal_names: the first-order row labels of the primal leaves.
      rtol, atol: explicit budget, or None for the round-off one.

    Returns:
      A tuple of ``Row`` (``layer`` None, ``worst_example`` the trial).
    """
    n = len(primals)

    def yours_g(*args):
        return as_cotangents(backward(*args[:n], args[n]), args[:n])

    def true_g(*args):
        return jax.vjp(forward, *args[:n])[1](args[n])

    def pull(g, ps, dy, v):
        return _leaves64(jax.vjp(g, *ps, dy)[1](v))

    yours, own, truth = [], [], []
    for t, (k, dy) in enumerate(zip(jax.random.split(key, len(dys)), dys)):
        leaves, tree = jax.tree.flatten(primals)
        v = jax.tree.unflatten(tree, [jax.random.normal(kk, jnp.shape(x), jnp.result_type(x))
                                      for kk, x in zip(jax.random.split(k, len(leaves)), leaves)])
        try:
            yours.append(pull(yours_g, primals, dy, v))
        except BackpropError:
            raise
        except Exception as e:
            raise BackpropError(
                f"order=2: differentiating your backward with jax.vjp raised "
                f"{type(e).__name__} on trial {t}; order=2 needs a backward written in JAX "
                f"(traceable, no NumPy or host calls): {e}") from e
        own.append(pull(true_g, primals, dy, v))
        with jax.enable_x64(True):
            truth.append(pull(true_g, _cast(primals, jnp.float64), _cast(dy, jnp.float64),
                              _cast(v, jnp.float64)))
    dy_names = [f"dy{jax.tree_util.keystr(path)}"
                for path, _ in jax.tree_util.tree_flatten_with_path(dys[0])[0]]
    rows = []
    for j, name in enumerate(list(primal_names) + dy_names):
        want = np.stack([tr[j] for tr in truth])
        got = np.stack([yo[j] for yo in yours])
        observed = max(max_abs(o[j] - tr[j]) for o, tr in zip(own, truth))
        scale = max_abs(want)
        rows.append(row(None, name + SUFFIX, got, want,
                        budget(observed, scale, dtype, 1, rtol, atol), per_example=True))
    return tuple(rows)
