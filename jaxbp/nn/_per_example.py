"""Per-example gradient norms and clipped sums, module by module, from one backward pass.

A module's optional ``per_example`` hook is the private form of its backward:

    per_example(params, residuals, dY) -> PerExample(dX, sq_norms, weighted_sum)

where ``dY`` (B, ...) holds, in row b, ∂ℓ_b/∂Y_b for example b's own loss ℓ_b,
``dX`` is what ``backward`` returns as ∂L/∂X (the chain goes on with it),
``sq_norms`` (B,) is ‖∂ℓ_b/∂params‖² for each b, and ``weighted_sum(c)`` maps
weights c (B,) to Σ_b c_b ∂ℓ_b/∂params (shaped like params). A model's private
pass runs every hook once, last module first, then, once the clipping factors
c_b are known from the summed norms, calls each ``weighted_sum`` (book-keeping,
Bu et al. 2023): no per-example gradient of the whole model and no second
backward pass.

Why ``weighted_sum`` is cheap. A parameter gradient is linear in dY and, when
examples do not mix, a sum over examples: Σ_b c_b g_b is the parameter part of
``backward(params, residuals, c ⊙ dY)`` (for Linear (c ⊙ G)ᵀ A). ``hook_from_backward``
builds a hook that way; under ``jax.jit`` the unused half of each of its two
``backward`` calls (dparams of the first, dX of the second) is dead code and removed.

The squared norms. A weight used at T positions (a sequence, or a convolution's
T = oh·ow windows) has per-example gradient g_b = A_bᵀ G_b, A_b (T, p) its inputs
(or patches) and G_b (T, d) the cotangents, so two forms exist (``outer_sq_norms``):

    ghost:        ‖A_bᵀ G_b‖² = ⟨A_b A_bᵀ, G_b G_bᵀ⟩     two (T, T) Grams, ~T²(p + d) work
    materialized: ‖A_bᵀ G_b‖² = Σ (A_bᵀ G_b)²            one (p, d) gradient, ~T·p·d work

and the rule (mixed ghost clipping, Bu et al. 2022) is: ghost when 2T² < p·d, that
is when the two Grams are smaller than the gradient; T = 1 is ‖a_b‖²‖g_b‖² either way.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp


class PerExample(NamedTuple):
    """What a module's ``per_example`` hook returns.

    Attributes:
      dX: ∂L/∂X for the chain, as ``backward`` returns it (None for integer inputs).
      sq_norms: (B,), ‖∂ℓ_b/∂params‖² for each example b.
      weighted_sum: ``c (B,) -> Σ_b c_b ∂ℓ_b/∂params``, a pytree shaped like params.
    """

    dX: Optional[jax.Array]
    sq_norms: jax.Array
    weighted_sum: Callable[[jax.Array], Any]


def scale_rows(c: jax.Array, G: jax.Array) -> jax.Array:
    """c_b · G[b] for G of shape (B, ...): c reshaped to broadcast explicitly."""
    return G * c.reshape(c.shape + (1,) * (G.ndim - 1)).astype(G.dtype)


def row_sq_norms(G: jax.Array) -> jax.Array:
    """Σ of squares over every axis but the first: (B, ...) -> (B,)."""
    return jnp.sum(G * G, axis=tuple(range(1, G.ndim)))


def use_ghost(T: int, p: int, d: int) -> bool:
    """The rule: the ghost (Gram) form when its two (T, T) Grams are smaller than a (p, d) gradient."""
    return 2 * T * T < p * d


def outer_sq_norms(A: jax.Array, G: jax.Array) -> jax.Array:
    """‖A_bᵀ G_b‖²_F per example for A (B, T, p), G (B, T, d): ghost or materialized by ``use_ghost``.

    Returns:
      (B,).
    """
    _, T, p = A.shape
    d = G.shape[-1]
    if T == 1:  # an outer product: ‖a ⊗ g‖² = ‖a‖² ‖g‖²
        return row_sq_norms(A) * row_sq_norms(G)
    if use_ghost(T, p, d):
        AA = jnp.einsum("btp,bsp->bts", A, A)  # (B, T, T)
        GG = jnp.einsum("btd,bsd->bts", G, G)  # (B, T, T)
        return jnp.einsum("bts,bts->b", AA, GG)
    g = jnp.einsum("btp,btd->bpd", A, G)  # per-example gradients (B, p, d)
    return row_sq_norms(g)


def hook_from_backward(backward: Callable, sq_norms: Callable) -> Callable:
    """A ``per_example`` hook from a module's backward and a per-example squared-norm function.

    ``weighted_sum(c)`` is the parameter part of ``backward(params, residuals, c ⊙ dY)``:
    right for any module whose examples do not mix (its VJP is linear in dY and a sum
    over examples).

    Args:
      backward: the module's ``(params, residuals, dY) -> (dparams, dX)``.
      sq_norms: ``(params, residuals, dY) -> (B,)``, ‖∂ℓ_b/∂params‖².

    Returns:
      ``(params, residuals, dY) -> PerExample``.
    """
    def per_example(params, residuals, dY):
        dX = backward(params, residuals, dY)[1]
        return PerExample(dX, sq_norms(params, residuals, dY),
                          lambda c: backward(params, residuals, scale_rows(c, dY))[0])

    return per_example


def refuse(reason: str) -> Callable:
    """A ``per_example`` hook that raises ValueError(reason): for modules that mix examples."""
    def per_example(params, residuals, dY):
        raise ValueError(reason)

    return per_example


def _no_params_sum(params):
    return lambda c: params  # an empty pytree: (), or a tuple of ()s


def per_example_chain(modules: Sequence, params, residuals, dY, *, prefix: str = "module "):
    """Every module's hook, last first: the private form of ``backward_chain``.

    Modules without parameters (no leaves in their params) use their ``backward``
    and contribute 0; a module with parameters needs a ``per_example`` hook.

    Args:
      modules, params, residuals: as for ``backward_chain``.
      dY: (B, ...), row b the cotangent of example b's own loss.

    Returns:
      (dX, sq (B, n) with column i module i's squared norms, weighted sums: a tuple of
      n functions c -> Σ_b c_b ∂ℓ_b/∂params_i).
    """
    B = dY.shape[0]
    cols, sums = [None] * len(modules), [None] * len(modules)
    for i in range(len(modules) - 1, -1, -1):
        module, p = modules[i], params[i]
        where = f"{prefix}{i + 1} ({module.name})"
        if module.per_example is None:
            if jax.tree.leaves(p):
                raise ValueError(
                    f"{where} has parameters but no per_example hook, so its per-example "
                    f"gradients are unknown; give its Module a per_example field (see "
                    f"jaxbp.nn.PerExample and jaxbp.nn.hook_from_backward)")
            cols[i], sums[i] = jnp.zeros((B,), dY.dtype), _no_params_sum(p)
            dY = module.backward(p, residuals[i], dY)[1]
            continue
        try:
            out = module.per_example(p, residuals[i], dY)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        dY, cols[i], sums[i] = out.dX, out.sq_norms, out.weighted_sum
    dtype = jnp.result_type(*cols)
    return dY, jnp.stack([c.astype(dtype) for c in cols], axis=-1), tuple(sums)
