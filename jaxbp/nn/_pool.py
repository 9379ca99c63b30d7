"""MaxPool2D and AvgPool2D on NHWC input over VALID windows, backward by hand."""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbp.nn._conv import conv_shapes, pair, show
from jaxbp.nn._module import Module, check_rank, shape_error


def tiles(X: jax.Array, window, out_hw) -> jax.Array:
    """Non-overlapping windows (stride = window): (B, H, W, C) -> (B, oh, ow, C, kh·kw).

    Rows and columns past oh·kh, ow·kw are in no window (VALID) and are dropped.
    """
    (kh, kw), (oh, ow) = window, out_hw
    B, C = X.shape[0], X.shape[3]
    T = X[:, :oh * kh, :ow * kw].reshape(B, oh, kh, ow, kw, C)
    return T.transpose(0, 1, 3, 5, 2, 4).reshape(B, oh, ow, C, kh * kw)  # row-major window


def untiles(dT: jax.Array, window, in_hw) -> jax.Array:
    """The transpose of ``tiles``: (B, oh, ow, C, kh·kw) -> (B, H, W, C), zeros where no window."""
    (kh, kw), (H, W) = window, in_hw
    B, oh, ow, C, _ = dT.shape
    dX = dT.reshape(B, oh, ow, C, kh, kw).transpose(0, 1, 4, 2, 5, 3).reshape(B, oh * kh, ow * kw, C)
    return jnp.pad(dX, ((0, 0), (0, H - oh * kh), (0, W - ow * kw), (0, 0)))


def strided_patches(X: jax.Array, window, stride, out_hw) -> jax.Array:
    """Any windows: (B, H, W, C) -> (B, oh, ow, C, kh·kw), one strided slice per window offset."""
    (kh, kw), (sh, sw), (oh, ow) = window, stride, out_hw
    return jnp.stack([X[:, p:p + (oh - 1) * sh + 1:sh, q:q + (ow - 1) * sw + 1:sw]
                      for p in range(kh) for q in range(kw)], axis=-1)


def unpatch(dP: jax.Array, window, stride, in_hw) -> jax.Array:
    """The transpose of ``strided_patches``: each offset's slice padded back in place, summed.

    Offset (p, q) put X[:, p + i·sh, q + j·sw] at P[:, i, j, :, p·kw + q]; padding that slice
    with p rows below, sh − 1 between (interior) and the rest above puts it back, and
    overlapping windows (stride < window) add their contributions.
    """
    (kh, kw), (sh, sw), (H, W) = window, stride, in_hw
    B, oh, ow, C, _ = dP.shape
    zero = jnp.zeros((), dP.dtype)
    dX = jnp.zeros((B, H, W, C), dP.dtype)
    for p in range(kh):
        for q in range(kw):
            dX = dX + lax.pad(dP[..., p * kw + q], zero, (
                (0, 0, 0),
                (p, H - p - (oh - 1) * sh - 1, sh - 1),
                (q, W - q - (ow - 1) * sw - 1, sw - 1),
                (0, 0, 0)))
    return dX


def _settings(kind: str, window, stride) -> tuple:
    window = pair(kind, "window", window)
    stride = window if stride is None else pair(kind, "stride", stride)
    return window, stride


def _name(kind: str, window, stride) -> str:
    return f"{kind}({show(window)}" + (f", stride={show(stride)})" if stride != window else ")")


class _Layout(NamedTuple):
    """What both pools share: init, the output size check, and the patches and their transpose."""

    init: Callable  # (key, in_shape, dtype) -> ((), (oh, ow, C))
    out_hw: Callable  # X -> (oh, ow), or a ValueError naming the module
    patches: Callable  # X (B, H, W, C) -> (B, oh, ow, C, kh·kw)
    unpatches: Callable  # (dP (B, oh, ow, C, kh·kw), X) -> (B, H, W, C)


def _layout(name: str, window, stride) -> _Layout:
    def out_hw(X):
        if X.ndim != 4:
            raise shape_error(name, "input (B, H, W, C)", "rank 4", tuple(X.shape))
        (oh, _, _), (ow, _, _) = conv_shapes(name, X.shape[1:3], window, stride, "VALID", "window")
        return oh, ow

    def init(key, in_shape, dtype):
        del key, dtype
        H, W, C = check_rank(name, in_shape, 3, "(H, W, C)")
        (oh, _, _), (ow, _, _) = conv_shapes(name, (H, W), window, stride, "VALID", "window")
        return (), (oh, ow, C)

    if window == stride:  # tiles: a reshape, no copies per offset
        return _Layout(init, out_hw, lambda X: tiles(X, window, out_hw(X)),
                       lambda dP, X: untiles(dP, window, X.shape[1:3]))
    return _Layout(init, out_hw, lambda X: strided_patches(X, window, stride, out_hw(X)),
                   lambda dP, X: unpatch(dP, window, stride, X.shape[1:3]))


def MaxPool2D(window, stride=None) -> Module:
    """Y = the maximum of each window, per channel: (B, H, W, C) -> (B, oh, ow, C).

    Windows are VALID (no padding): oh = ⌊(H − kh)/sh⌋ + 1, and rows or columns past the
    last window are in none (their gradient is 0).

        Y[b, i, j, c] = X[b, i·sh + p*, j·sw + q*, c],  (p*, q*) = argmax_{p, q} X[b, i·sh + p, j·sw + q, c]

    Ties go to the FIRST maximum in the window in row-major order: the forward picks
    it by ``argmax`` over the flattened window and gathers it, so autodiff of the forward
    routes there too. Backward:

        ∂L/∂X[b, i·sh + p*, j·sw + q*, c] += ∂L/∂Y[b, i, j, c]       0 elsewhere

    summed over every window an entry is the maximum of (stride < window overlaps).

    Args:
      window: (kh, kw), or one int for both.
      stride: (sh, sw), or one int for both; None: the window (non-overlapping).

    Returns:
      A ``Module`` with no params.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxbp import nn
      >>> pool = nn.MaxPool2D(2)
      >>> Y, residuals = pool.forward((), jnp.ones((1, 2, 2, 1)), None)  # a four-way tie
      >>> pool.backward((), residuals, jnp.ones_like(Y))[1][0, :, :, 0].tolist()
      [[1.0, 0.0], [0.0, 0.0]]
    """
    window, stride = _settings("MaxPool2D", window, stride)
    return _max_pool(window, stride)


@functools.lru_cache(maxsize=None)
def _max_pool(window, stride) -> Module:
    name = _name("MaxPool2D", window, stride)
    layout = _layout(name, window, stride)

    def forward(params, X, key):
        del params, key
        P = layout.patches(X)  # (B, oh, ow, C, kh·kw)
        first_max = jnp.argmax(P, axis=-1)[..., None]  # the first maximum (B, oh, ow, C, 1)
        return jnp.take_along_axis(P, first_max, axis=-1)[..., 0], (X, first_max)

    def backward(params, residuals, dY):
        del params
        X, first_max = residuals
        offsets = jnp.arange(window[0] * window[1]).reshape(1, 1, 1, 1, -1)
        one_hot = first_max == offsets  # (B, oh, ow, C, kh·kw)
        dP = jnp.where(one_hot, dY[..., None], jnp.zeros((), dY.dtype))
        return (), layout.unpatches(dP, X)

    return Module(name, layout.init, forward, backward)


def AvgPool2D(window, stride=None) -> Module:
    """Y = the mean of each window, per channel: (B, H, W, C) -> (B, oh, ow, C).

    Windows are VALID (no padding): oh = ⌊(H − kh)/sh⌋ + 1, and rows or columns past the
    last window are in none (their gradient is 0).

        Y[b, i, j, c] = 1/(kh·kw) Σ_{p<kh, q<kw} X[b, i·sh + p, j·sw + q, c]

    Backward: every entry of a window gets an equal share,

        ∂L/∂X[b, i·sh + p, j·sw + q, c] += ∂L/∂Y[b, i, j, c] / (kh·kw)

    summed over every window that covers it (stride < window overlaps).

    Args:
      window: (kh, kw), or one int for both.
      stride: (sh, sw), or one int for both; None: the window (non-overlapping).

    Returns:
      A ``Module`` with no params.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxbp import nn
      >>> nn.AvgPool2D(3, stride=2).init(None, (7, 6, 4), jnp.float32)
      ((), (3, 2, 4))
    """
    window, stride = _settings("AvgPool2D", window, stride)
    return _avg_pool(window, stride)


@functools.lru_cache(maxsize=None)
def _avg_pool(window, stride) -> Module:
    name = _name("AvgPool2D", window, stride)
    layout = _layout(name, window, stride)
    size = window[0] * window[1]

    def forward(params, X, key):
        del params, key
        layout.out_hw(X)  # shape checks
        # a NumPy 0 (concrete under jit) makes this XLA's windowed sum, which autodiff knows
        total = lax.reduce_window(X, np.zeros((), X.dtype), lax.add, (1,) + window + (1,),
                                  (1,) + stride + (1,), "VALID")
        return total * jnp.asarray(1.0 / size, X.dtype), X

    def backward(params, X, dY):
        del params
        share = dY * jnp.asarray(1.0 / size, dY.dtype)  # (B, oh, ow, C)
        dP = jnp.broadcast_to(share[..., None], share.shape + (size,))
        return (), layout.unpatches(dP, X)

    return Module(name, layout.init, forward, backward)
