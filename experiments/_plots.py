"""Plots for experiments/train.py (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxbp import datasets  # noqa: E402

STYLE = {"manual": dict(color="C0", lw=2.0, label="manual backprop"),
         "autodiff": dict(color="C1", lw=1.0, ls="--", label="jax.grad")}


def loss_curves(history: dict, path: str, *, title: str) -> None:
    """Minibatch loss per step of each run (one axes) and, with both runs, their parameter gap."""
    both = "param_diff" in history
    fig, axes = plt.subplots(1, 2 if both else 1, figsize=(11 if both else 6, 4), squeeze=False)
    ax = axes[0, 0]
    for g in ("manual", "autodiff"):
        if g in history:
            steps = np.arange(1, len(history[g]) + 1)
            ax.plot(steps, history[g], **STYLE[g])
    ax.set(xlabel="step", ylabel="minibatch loss", title="training loss")
    if np.all(np.concatenate([history[g] for g in ("manual", "autodiff") if g in history]) > 0):
        ax.set_yscale("log")
    ax.legend()
    if both:
        ax = axes[0, 1]
        diff = history["param_diff"]
        ax.plot(np.arange(1, len(diff) + 1), np.maximum(diff, np.finfo(np.float64).tiny), color="C2")
        ax.set(xlabel="step", ylabel="max |params_manual − params_autodiff|",
               title="gap between the two runs", yscale="log")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def boundaries(net, params_by_grad: dict, data, path: str, *, grid: int = 200) -> None:
    """Each run's predicted class over the plane, with the train (dots) and test (crosses) points."""
    X = np.concatenate([data.X_train, data.X_test])
    lo, hi = X.min(axis=0) - 0.5, X.max(axis=0) + 0.5
    u, v = np.meshgrid(np.linspace(lo[0], hi[0], grid), np.linspace(lo[1], hi[1], grid))
    points = np.stack([u.ravel(), v.ravel()], axis=1)
    fig, axes = plt.subplots(1, len(params_by_grad), figsize=(5 * len(params_by_grad), 4.6),
                             squeeze=False)
    for ax, (g, params) in zip(axes[0], params_by_grad.items()):
        dtype = params[0].W.dtype
        labels = datasets.predict(np.asarray(net.forward(params, points.astype(dtype))),
                                  net.loss_name)
        ax.contourf(u, v, np.asarray(labels).reshape(u.shape), levels=np.arange(-0.5, 2),
                    cmap="coolwarm", alpha=0.3)
        ax.scatter(*data.X_train.T, c=data.y_train, cmap="coolwarm", s=8, edgecolors="none")
        ax.scatter(*data.X_test.T, c=data.y_test, cmap="coolwarm", s=14, marker="x")
        ax.set(title=f"{data.name}: {STYLE[g]['label']}", xlabel="x₁", ylabel="x₂")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
