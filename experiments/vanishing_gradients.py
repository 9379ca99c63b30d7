"""Vanishing gradients, with numbers: ‖∂L/∂W^ℓ‖ per layer for sigmoid, tanh and relu nets of depth 2–10.

The notes' chain for layer ℓ of an L-layer net is

    ∂L/∂W^ℓ = a^{ℓ−1} · (∂L/∂z^L · W^L f^{L−1}'(z^{L−1}) · ... · W^{ℓ+1} f^ℓ'(z^ℓ))ᵀ,

one factor f'(z) per layer between ℓ and the loss. sigmoid' ≤ 1/4, so with LeCun-scaled W each
layer shrinks the gradient several-fold and the first layers of a deep sigmoid net barely learn;
tanh' ≤ 1 shrinks it slowly; relu' is 0 or 1 and He-scaled W keep it about level.
Every gradient here comes from jaxbp's manual chain (``Network.grad``) and is checked against
``jax.grad``.

    python experiments/vanishing_gradients.py                    # writes runs/vanishing_gradients/
    python experiments/vanishing_gradients.py --depths 2,4,8 --width 64
"""

from __future__ import annotations

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxbp
from jaxbp import rtol_for, tree_relative_error

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # siblings, also when imported
from _common import FlagError, Parser, allowed, backend_line, check_writable, publish  # noqa: E402,I001

# ---------------------------------------------------------------- knobs (= CLI defaults)
ACTIVATIONS = ("sigmoid", "tanh", "relu")
DEPTHS = tuple(range(2, 11))  # L, the number of layers (L − 1 hidden layers)
WIDTH = 32                    # hidden units per layer
INPUTS = 16
CLASSES = 10                  # softmax + nll output layer
BATCH_SIZE = 256
SEEDS = 5                     # norms are averaged over this many random nets
SEED = 0


@functools.partial(jax.jit, static_argnums=0)
def measure(net: jaxbp.Network, params, X, Y):
    """norms (L,) = ‖∂L/∂W^ℓ‖_F from the manual chain, mean_df = mean f'(z^ℓ) over the hidden
    layers, and the manual and the jax.grad gradients (for the agreement check)."""
    grads = net.grad(params, X, Y)  # the notes' chain
    reference = jax.grad(net.batch_loss)(params, X, Y)
    df = jaxbp.ACTIVATIONS[net.activations[0]].df
    z = net.forward_trace(params, X).z
    norms = jnp.stack([jnp.linalg.norm(g.W) for g in grads])
    mean_df = jnp.mean(jnp.stack([jnp.mean(df(z_l)) for z_l in z[:-1]]))
    return norms, mean_df, grads, reference


def main(*, activations=ACTIVATIONS, depths=DEPTHS, width: int = WIDTH, batch_size: int = BATCH_SIZE,
         seeds: int = SEEDS, seed: int = SEED, x64: bool = False, out: str | None = None,
         quiet: bool = False) -> dict:
    """Measures, prints, plots; returns the results dict (as DIR/results.json).

    Args:
      activations: hidden activations to compare (the output layer is softmax + nll).
      depths: numbers of layers L ≥ 2.
      width: hidden units; batch_size: random examples per gradient.
      seeds: random nets (and batches) averaged per (activation, depth); seed: the first one.
      x64: float64 instead of float32.
      out: output directory (None: runs/vanishing_gradients); quiet: no progress bar.
    """
    from tqdm import tqdm

    if x64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if x64 else jnp.float32
    activations, depths = tuple(activations), tuple(depths)
    for name in activations:
        if name not in jaxbp.ACTIVATIONS or not jaxbp.ACTIVATIONS[name].elementwise:
            names = (n for n, a in jaxbp.ACTIVATIONS.items() if a.elementwise)
            raise FlagError("--activations", f"{name!r} is not a known elementwise activation; "
                                             f"{allowed(names)}")
    if not depths or min(depths) < 2:
        raise FlagError("--depths", f"expected numbers of layers >= 2, got {list(depths)}")
    for flag, value in (("--width", width), ("--batch-size", batch_size), ("--seeds", seeds)):
        if value < 1:
            raise FlagError(flag, f"expected an int >= 1, got {value}")
    out = os.path.join("runs", "vanishing_gradients") if out is None else str(out)
    check_writable(out)
    lead = jax.process_index() == 0
    if lead:
        print(backend_line(1, dtype))
    norms, mean_df, worst = {}, {}, 0.0
    jobs = [(a, L) for a in activations for L in depths]
    for act, L in tqdm(jobs, disable=quiet or not sys.stderr.isatty() or not lead):
        net = jaxbp.Network(sizes=(INPUTS,) + (width,) * (L - 1) + (CLASSES,),
                            activations=(act,) * (L - 1) + ("softmax",), loss="nll")
        runs = []
        for s in range(seed, seed + seeds):
            # Random draws stay outside jit: threefry for many layers is slow to compile.
            kp, kx, ky = jax.random.split(jax.random.key(s), 3)
            X = jax.random.normal(kx, (batch_size, INPUTS), dtype)
            Y = jax.nn.one_hot(jax.random.randint(ky, (batch_size,), 0, CLASSES), CLASSES, dtype=dtype)
            runs.append(jax.tree.map(np.asarray, measure(net, net.init(kp, dtype=dtype), X, Y)))
        norms.setdefault(act, {})[L] = np.mean([r[0] for r in runs], axis=0).tolist()
        mean_df.setdefault(act, {})[L] = float(np.mean([r[1] for r in runs]))
        worst = max([worst] + [tree_relative_error(r[2], r[3]) for r in runs])
    results = dict(activations=list(activations), depths=list(depths), width=width,
                   batch_size=batch_size, seeds=seeds, dtype=jnp.dtype(dtype).name,
                   backend=jax.default_backend(), devices=1,
                   norms={a: {str(L): v for L, v in d.items()} for a, d in norms.items()},
                   mean_activation_derivative={a: {str(L): v for L, v in d.items()}
                                               for a, d in mean_df.items()},
                   max_relative_error_vs_jax_grad=worst, tolerance=rtol_for(dtype))
    if lead:
        _print_table(norms, mean_df, worst, rtol_for(dtype))
        names = publish(out, lambda staging: _write(results, norms, staging))
        print(f"wrote {os.path.join(out, '')}{{{', '.join(names)}}}")
    return results


def _print_table(norms, mean_df, worst, tol) -> None:
    L_max = max(max(d) for d in norms.values())
    print("‖∂L/∂W^ℓ‖_F per layer ℓ (mean over seeds); ratio = ‖∂L/∂W^1‖ / ‖∂L/∂W^L‖; "
          "f' = mean f'(z) over hidden units")
    header = f"{'activation':<10} {'L':>2} {'ratio':>8} {'f_':>5} " + " ".join(
        f"{'ℓ=' + str(l):>7}" for l in range(1, L_max + 1))
    print(header.replace("f_", "f'"))
    for act, by_depth in norms.items():
        for L, v in by_depth.items():
            print(f"{act:<10} {L:>2} {v[0] / v[-1]:>8.1e} {mean_df[act][L]:>5.2f} "
                  + " ".join(f"{x:>7.1e}" for x in v))
    print(f"manual chain vs jax.grad: max relative error {worst:.1e} (tolerance {tol:.0e}): "
          f"{'AGREE' if worst <= tol else 'DISAGREE'}")


def _write(results: dict, norms: dict, staging: str) -> list[str]:
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(staging, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    fig, axes = plt.subplots(1, len(norms), figsize=(4.5 * len(norms), 4), sharey=True,
                             squeeze=False)
    depths = results["depths"]
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(depths)))
    for ax, (act, by_depth) in zip(axes[0], norms.items()):
        for color, L in zip(colors, depths):
            ax.plot(range(1, L + 1), by_depth[L], "o-", color=color, ms=3, label=f"L={L}")
        ax.set(yscale="log", xlabel="layer ℓ", title=act)
    axes[0, 0].set_ylabel("‖∂L/∂W^ℓ‖ (manual chain)")
    axes[0, -1].legend(fontsize=7, ncol=2)
    fig.suptitle(f"Gradient norm per layer, width {results['width']}, "
                 f"{results['dtype']}, mean of {results['seeds']} nets", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(staging, "vanishing_gradients.png"), dpi=110)
    plt.close(fig)
    return ["results.json", "vanishing_gradients.png"]


def _ints(flag: str, text: str) -> tuple[int, ...]:
    """'2,4,8' or a range '2-10'."""
    try:
        if "-" in text:
            lo, hi = (int(t) for t in text.split("-"))
            return tuple(range(lo, hi + 1))
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise FlagError(flag, f"expected ints like 2,4,8 or a range like 2-10, got {text!r}") from None


def cli(argv=None) -> int:
    p = Parser(prog="vanishing_gradients.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--activations", default=",".join(ACTIVATIONS), help="comma-separated")
    p.add_argument("--depths", default=f"{DEPTHS[0]}-{DEPTHS[-1]}",
                   help="numbers of layers L: a range 2-10 or a list 2,4,8")
    p.add_argument("--width", type=int, default=WIDTH)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--seeds", type=int, default=SEEDS, help="random nets averaged per point")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--x64", action="store_true", help="float64 instead of float32")
    p.add_argument("--out", default=None, help="output directory (default: runs/vanishing_gradients)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        main(activations=args.activations.split(","), depths=_ints("--depths", args.depths),
             width=args.width, batch_size=args.batch_size, seeds=args.seeds, seed=args.seed,
             x64=args.x64, out=args.out, quiet=args.quiet)
    except FlagError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
