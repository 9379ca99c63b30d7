"""More course-style NumPy idioms for the bridge: ``np.add.at`` and slice ``+=`` in a
forward, a view that writes through, a two-output LSTM step (gates i, f, o, g), and a
forward that converts entries to Python floats (which jax cannot trace)."""

import math

import numpy as np


def scatter_sum_forward(x, idx, K):
    """Rows of x (N, D) summed into K buckets: out[k] = Σ_{n: idx[n] = k} x[n]."""
    out = np.zeros((K, x.shape[1]))
    np.add.at(out, idx, x)
    return out, idx


def scatter_sum_backward(dout, idx):
    return dout[idx]


def window_sum_forward(x):
    """out[i] = x[i] + x[i + 1] by slice ``+=`` and a view of the first row."""
    N = x.shape[0]
    out = np.zeros((N + 1, x.shape[1]))
    for i in range(N):
        out[i:i + 2] += x[i]
    first = out[0]  # a view: writing it writes out
    first *= 2.0
    return out, N


def window_sum_backward(dout, N):
    d = dout.copy()
    d[0] *= 2.0
    return d[:N] + d[1:N + 1]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm_step_forward(x, prev_h, prev_c, Wx, Wh, b):
    """x (N, D), prev_h, prev_c (N, H), Wx (D, 4H), Wh (H, 4H), b (4H,); gates i, f, o, g."""
    H = prev_h.shape[1]
    a = x @ Wx + prev_h @ Wh + b
    i, f, o = sigmoid(a[:, :H]), sigmoid(a[:, H:2 * H]), sigmoid(a[:, 2 * H:3 * H])
    g = np.tanh(a[:, 3 * H:])
    next_c = f * prev_c + i * g
    next_h = o * np.tanh(next_c)
    return next_h, next_c, (x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c)


def lstm_step_backward(dnext_h, dnext_c, cache, slip_forget=False):
    x, prev_h, prev_c, Wx, Wh, i, f, o, g, next_c = cache
    tc = np.tanh(next_c)
    dc = dnext_c + dnext_h * o * (1 - tc ** 2)
    di, df, do, dg = dc * g, dc * prev_c, dnext_h * tc, dc * i
    if slip_forget:
        df = dc * prev_h  # the forget gate's input mixed up with the hidden state
    da = np.hstack([di * i * (1 - i), df * f * (1 - f), do * o * (1 - o), dg * (1 - g ** 2)])
    return da @ Wx.T, da @ Wh.T, dc * f, x.T @ da, prev_h.T @ da, da.sum(axis=0)


def exp_loop_forward(x):
    """exp of each entry through Python's math (a float per entry)."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = math.exp(x[i, j])
    return out, out


def exp_loop_backward(dout, out):
    return dout * out
