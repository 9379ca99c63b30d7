"""Conv2D: a 2-D convolution on NHWC input with an HWIO kernel and a bias, backward by hand."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxbp.nn._module import Module, bias, check_rank, shape_error
from jaxbp.nn._per_example import hook_from_backward, outer_sq_norms, row_sq_norms

PADDINGS = ("SAME", "VALID")


class Conv(NamedTuple):
    """A convolution's parameters.

    Attributes:
      W: the kernel, shape (kh, kw, C, O) (HWIO: window rows, window columns, in, out channels).
      W0: the biases, shape (O,).
    """

    W: jax.Array
    W0: jax.Array


def pair(module: str, arg: str, value) -> tuple[int, int]:
    """An int or a pair of ints as a pair of positive ints (rows, columns), or a ValueError."""
    values = (value, value) if isinstance(value, int) else value
    try:
        values = tuple(values)
    except TypeError:
        values = None
    if (values is None or len(values) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)):
        raise ValueError(f"{module}: {arg} must be a positive int or a pair of positive ints, "
                         f"got {value!r}")
    return values


def show(pair_: tuple[int, int]):
    """A pair as the user would write it: 3 for (3, 3)."""
    return pair_[0] if pair_[0] == pair_[1] else pair_


def same_or_valid(module: str, padding) -> str:
    """The padding name, "SAME" or "VALID", or a ValueError listing both."""
    if padding not in PADDINGS:
        raise ValueError(f"{module}: padding must be one of {PADDINGS}, got {padding!r}")
    return padding


def out_size_and_pads(n: int, k: int, s: int, padding: str) -> tuple[int, int, int]:
    """(out, pad_lo, pad_hi) along one spatial axis of length n, window k, stride s.

    SAME: out = ⌈n/s⌉ and the window overhangs by (out−1)s + k − n in all, the odd row
    at the high end (XLA's and TensorFlow's rule). VALID: out = ⌊(n−k)/s⌋ + 1, no pads;
    the last n − ((out−1)s + k) rows, if any, are in no window.
    """
    if padding == "SAME":
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        return out, total // 2, total - total // 2
    return (n - k) // s + 1, 0, 0


def conv_shapes(name: str, hw: tuple[int, int], kernel: tuple[int, int],
                stride: tuple[int, int], padding: str,
                what: str = "kernel") -> tuple[tuple[int, int, int], ...]:
    """Per spatial axis (out, pad_lo, pad_hi); a ValueError when a VALID kernel overhangs."""
    if padding == "VALID" and (hw[0] < kernel[0] or hw[1] < kernel[1]):
        raise ValueError(f"{name}: a {kernel[0]}×{kernel[1]} {what} with no padding ('VALID') "
                         f"needs an input of at least that size, got (H, W) = {tuple(hw)}")
    return tuple(out_size_and_pads(n, k, s, padding) for n, k, s in zip(hw, kernel, stride))


_NHWC = ("NHWC", "HWIO", "NHWC")
# dX: the kernel read as HWOI swaps its in and out channels without a transpose.
_DX = ("NHWC", "HWOI", "NHWC")
# dW: X read with C as the batch axis and B as the feature axis, dY as a (oh, ow) kernel
# from B to O: the output's batch axis is C and its feature axis O, laid out HWIO.
_DW = ("CHWN", "IHWO", "HWNC")


def conv_forward(X: jax.Array, W: jax.Array, stride, pads) -> jax.Array:
    """Z[b, i, j, o] = Σ_{p, q, c} X_pad[b, i·sh + p, j·sw + q, c] W[p, q, c, o]."""
    return lax.conv_general_dilated(X, W, stride, pads, dimension_numbers=_NHWC)


def conv_backward_input(dZ: jax.Array, W: jax.Array, in_hw, stride, pads) -> jax.Array:
    """∂L/∂X: dZ dilated by the stride, padded, correlated with W flipped and in/out swapped.

    Along one axis (length n, window k, stride s, pads (lo, hi), out rows):
    X_pad[i] feeds Z[o] through W[i − o·s]. Dilating dZ by s (s − 1 zeros between rows),
    dZ_s[o·s] = dZ[o], gives ∂L/∂X_pad[i] = Σ_p dZ_s[i − p] W[p] = Σ_p' dZ_s[i − (k−1) + p'] W[k−1−p'],
    a stride-1 correlation with the flipped kernel over dZ_s padded by k − 1 below. Dropping
    X_pad's lo pad rows moves that to k − 1 − lo below; n output rows need
    n + lo − (out − 1)s − 1 above (≥ 0, and it covers rows in no window, whose gradient is 0).
    """
    padding = [(k - 1 - lo, n + lo - (out - 1) * s - 1)
               for n, k, s, (out, lo, _) in zip(in_hw, W.shape[:2], stride, pads)]
    return lax.conv_general_dilated(dZ, W[::-1, ::-1], (1, 1), padding, lhs_dilation=stride,
                                    dimension_numbers=_DX)  # (B, H, W, C)


def conv_backward_kernel(X: jax.Array, dZ: jax.Array, kernel, stride, pads) -> jax.Array:
    """∂L/∂W[p, q, c, o] = Σ_{b, i, j} X_pad[b, i·sh + p, j·sw + q, c] dZ[b, i, j, o].

    A convolution of X (batch axis C, feature axis B) with dZ as the kernel (B → O) dilated
    by the stride, stride 1: along one axis it slides the dilated dZ, (out − 1)s + 1 rows,
    over X_pad and keeps k positions, so X is padded lo below and k + (out − 1)s − n − lo
    above (negative when rows lie in no window: XLA crops them).
    """
    padding = [(lo, k + (out - 1) * s - n - lo)
               for n, k, s, (out, lo, _) in zip(X.shape[1:3], kernel, stride, pads)]
    return lax.conv_general_dilated(X, dZ, (1, 1), padding, rhs_dilation=stride,
                                    dimension_numbers=_DW)  # (kh, kw, C, O)


def Conv2D(out_channels: int, kernel_size, *, stride=1, padding: str = "SAME") -> Module:
    """Z = X ⋆ W + W0: a 2-D convolution (cross-correlation, as in every DL library).

    Shapes: X (B, H, W, C) (NHWC), W (kh, kw, C, O) (HWIO), W0 (O,), Z (B, oh, ow, O):

        Z[b, i, j, o] = Σ_{p<kh, q<kw, c} X_pad[b, i·sh + p, j·sw + q, c] W[p, q, c, o] + W0[o]

    with X_pad zero-padded: "SAME" gives oh = ⌈H/sh⌉ (the extra pad row, if odd, at the
    bottom/right), "VALID" gives oh = ⌊(H − kh)/sh⌋ + 1 and no padding.

    Backward: each X_pad entry meets W[p, q] in every output whose window covers it, so

        ∂L/∂X  = dilate_s(∂L/∂Z) ⋆ flip(W)ᵀ       (B, oh, ow, O) -> (B, H, W, C): correlation of
                                                 ∂L/∂Z with s − 1 zeros between rows, padded,
                                                 with W flipped in (kh, kw), in/out swapped
        ∂L/∂W  = X_pad ⋆ dilate_s(∂L/∂Z)          (B, H, W, C), (B, oh, ow, O) -> (kh, kw, C, O):
                                                 Σ over b, i, j, the notes' a ⊗ ∂L/∂z per window
        ∂L/∂W0 = Σ_{b, i, j} ∂L/∂Z               (O,)

    Per example (private gradients): W_b = P_bᵀ ∂L/∂Z_b over the unfolded patches P_b
    (T = oh·ow rows), its squared norm ghost or materialized by ``outer_sq_norms``.

    Both are ``lax.conv_general_dilated`` calls (the pad amounts are derived in
    ``conv_backward_input`` and ``conv_backward_kernel``), as XLA's own transposes are.

    Args:
      out_channels: O.
      kernel_size: (kh, kw), or one int for both.
      stride: (sh, sw), or one int for both.
      padding: "SAME" or "VALID".

    Returns:
      A ``Module`` whose params are ``Conv(W (kh, kw, C, O), W0 (O,))``;
      W ~ N(0, 2/(kh·kw·C)) (He: a relu usually follows), W0 = 0.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxbp import nn
      >>> conv = nn.Conv2D(4, 3, stride=2)
      >>> params, out_shape = conv.init(jax.random.key(0), (7, 7, 2), jnp.float32)
      >>> out_shape
      (4, 4, 4)
    """
    if isinstance(out_channels, bool) or not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"Conv2D: out_channels must be a positive int, got {out_channels!r}")
    kernel = pair("Conv2D", "kernel_size", kernel_size)
    strides = pair("Conv2D", "stride", stride)
    return _conv2d(out_channels, kernel, strides, same_or_valid("Conv2D", padding))


@functools.lru_cache(maxsize=None)
def _conv2d(out_channels: int, kernel: tuple[int, int], stride: tuple[int, int],
            padding: str) -> Module:
    """Conv2D for normalized settings: one module object per configuration."""
    name = (f"Conv2D({out_channels}, {show(kernel)}"
            + (f", stride={show(stride)}" if stride != (1, 1) else "")
            + (f", padding={padding!r})" if padding != "SAME" else ")"))

    def init(key, in_shape, dtype):
        H, W_in, C = check_rank(name, in_shape, 3, "(H, W, C)")
        (oh, _, _), (ow, _, _) = conv_shapes(name, (H, W_in), kernel, stride, padding)
        fan_in = kernel[0] * kernel[1] * C
        W = jax.random.normal(key, kernel + (C, out_channels), dtype)
        W = W * jnp.asarray(2.0 / fan_in, dtype) ** 0.5
        return Conv(W, jnp.zeros((out_channels,), dtype)), (oh, ow, out_channels)

    def pads_of(X, W):
        if X.ndim != 4 or X.shape[-1] != W.shape[2]:
            raise shape_error(name, f"input (B, H, W, C) for W of shape {tuple(W.shape)}",
                              f"(B, H, W, {W.shape[2]})", tuple(X.shape))
        return conv_shapes(name, X.shape[1:3], kernel, stride, padding)

    def forward(params, X, key):
        del key
        pads = pads_of(X, params.W)
        Z = conv_forward(X, params.W, stride, [(lo, hi) for _, lo, hi in pads])
        return Z + bias(params.W0, Z.ndim), X

    def backward(params, X, dZ):
        pads = pads_of(X, params.W)
        dX = conv_backward_input(dZ, params.W, X.shape[1:3], stride, pads)
        dW = conv_backward_kernel(X, dZ, kernel, stride, pads)
        return Conv(dW, jnp.sum(dZ, axis=(0, 1, 2))), dX

    def sq_norms(params, X, dZ):
        # Example b's kernel gradient is P_bᵀ G_b over its T = oh·ow windows, P_b (T, kh·kw·C)
        # the unfolded patches (their order inside a row does not change any norm). Strided
        # slices of X_pad, one per kernel offset, only move data (lax's patches op is an
        # identity-kernel convolution: kh·kw·C times the multiplies).
        (oh, lo_h, hi_h), (ow, lo_w, hi_w) = pads_of(X, params.W)
        X_pad = jnp.pad(X, ((0, 0), (lo_h, hi_h), (lo_w, hi_w), (0, 0)))
        (sh, sw), B = stride, X.shape[0]
        P = jnp.concatenate([X_pad[:, p:p + (oh - 1) * sh + 1:sh, q:q + (ow - 1) * sw + 1:sw]
                             for p in range(kernel[0]) for q in range(kernel[1])],
                            axis=-1)  # (B, oh, ow, kh·kw·C)
        G = dZ.reshape(B, -1, dZ.shape[-1])  # (B, T, O)
        return outer_sq_norms(P.reshape(B, G.shape[1], -1), G) + row_sq_norms(jnp.sum(G, axis=1))

    return Module(name, init, forward, backward, hook_from_backward(backward, sq_norms))
