"""The notes' two-neuron network, factor by factor: x → tanh neuron → sigmoid neuron → loss.

    z^1 = W^1 x + W0^1,  a^1 = tanh(z^1),  z^2 = W^2 a^1 + W0^2,  a^2 = sigmoid(z^2)

    ∂L/∂W^2 = (∂L/∂a^2) · (∂a^2/∂z^2 · ∂z^2/∂W^2)
    ∂L/∂W^1 = (∂L/∂a^2) · (∂a^2/∂z^2 · ∂z^2/∂a^1) · (∂a^1/∂z^1 · ∂z^1/∂W^1)

(the notes draw the two neurons without naming their activations; tanh for the
hidden neuron and sigmoid for the output are the usual choice for this example). For one example the script prints every factor
of both chains (``jaxbp.explain``), their product and ``jax.grad``'s gradient
side by side. Then it trains the net with Optax Adam and jaxbp's manual backprop
on a small 1-D task (fit a "teacher" two-neuron net from noisy samples) and
records the loss and each factor's magnitude for that example at every step.

    python experiments/two_neuron.py                     # 300 steps into runs/two_neuron
    python experiments/two_neuron.py --steps 1000 --loss binary_nll --out /tmp/tn

Writes DIR/results.json (factors, products, jax.grad, histories, final params) and
DIR/two_neuron.png (loss and |factor| over training). Runs in float64.
"""

from __future__ import annotations

import argparse
import json
import os

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jaxbp  # noqa: E402
from jaxbp import relative_error, rtol_for  # noqa: E402

# ---------------------------------------------------------------- knobs (= CLI defaults)
OUT = "runs/two_neuron"
STEPS = 300
SEED = 0
LR = 0.05
LOSS = "squared"          # squared | binary_nll
NUM_EXAMPLES = 64
NOISE = 0.03              # std of the noise on squared-loss targets
TEACHER = (2.0, -0.5, 3.0, -1.0)  # W^1, W0^1, W^2, W0^2 of the net that makes the data
ACTIVATIONS = ("tanh", "sigmoid")


def make_net(loss: str) -> jaxbp.Network:
    return jaxbp.Network(sizes=(1, 1, 1), activations=ACTIVATIONS, loss=loss)


def teacher_params():
    W1, b1, W2, b2 = (jnp.asarray(v, jnp.float64) for v in TEACHER)
    return (jaxbp.Dense(W1.reshape(1, 1), b1.reshape(1)),
            jaxbp.Dense(W2.reshape(1, 1), b2.reshape(1)))


def make_data(net, key, n: int):
    """X (n, 1) uniform on [−2, 2]; Y (n, 1) the teacher's output, noisy or sampled."""
    kx, ky = jax.random.split(key)
    X = jax.random.uniform(kx, (n, 1), jnp.float64, -2.0, 2.0)
    p = net.forward(teacher_params(), X)  # (n, 1) in (0, 1)
    if net.loss_name == "binary_nll":
        return X, jax.random.bernoulli(ky, p).astype(jnp.float64)
    return X, p + NOISE * jax.random.normal(ky, p.shape, jnp.float64)


def factor_report(net, params, x, y) -> dict:
    """Each weight's factors, their product and jax.grad's value, as plain floats."""
    grads = jax.grad(net.loss)(params, x, y)
    report = {}
    for l in (1, 2):
        factors = jaxbp.chain(net, params, x, y, layer=l)
        product = jaxbp.contract(factors)  # (1, 1)
        report[f"W{l}"] = {
            "factors": [{"name": f.name, "symbol": f.symbol, "value": float(f.value[0, 0])}
                        for f in factors],
            "product": float(product[0, 0]),
            "plain_product": float(np.prod([float(f.value[0, 0]) for f in factors])),
            "jax_grad": float(grads[l - 1].W[0, 0]),
            "relative_error": relative_error(product, grads[l - 1].W),
        }
    return report


def main(*, out: str = OUT, steps: int = STEPS, seed: int = SEED, lr: float = LR,
         loss: str = LOSS, num_examples: int = NUM_EXAMPLES, progress: bool = True) -> dict:
    """Prints both chains for one example, trains, writes results.json and two_neuron.png.

    Args:
      out: output folder.
      steps: Adam steps (full batch).
      seed: PRNG seed for the data and the initial params.
      lr: Adam's learning rate.
      loss: "squared" or "binary_nll".
      num_examples: training set size.
      progress: show a tqdm progress bar.

    Returns:
      The results dict written to results.json.
    """
    if loss not in ("squared", "binary_nll"):
        raise ValueError(f"loss: expected 'squared' or 'binary_nll' (a sigmoid output), got {loss!r}")
    if steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps}")
    net = make_net(loss)
    kd, kp = jax.random.split(jax.random.key(seed))
    X, Y = make_data(net, kd, num_examples)
    params = net.init(kp, dtype=jnp.float64)
    x0, y0 = X[0], Y[0]  # the example whose factors we follow

    print(f"JAX backend: {jax.default_backend()} ({jax.devices()[0]}), float64")
    print(f"two-neuron net: x → tanh → sigmoid, loss {loss!r}; example x = {float(x0[0]):.6g}, "
          f"y = {float(y0[0]):.6g}\n")
    for l in (2, 1):
        print(jaxbp.explain(net, layer=l, params=params, x=x0, y=y0), end="\n\n")
    start = factor_report(net, params, x0, y0)

    optimizer = optax.adam(lr)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, X, Y):  # data as arguments: closed-over arrays trip value checks
        value, grads = net.value_and_grad(params, X, Y)  # jaxbp's manual backprop
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    @jax.jit
    def follow(params, x0, y0):
        """|factor| of both chains for (x0, y0), the products and jax.grad's."""
        chains = [jaxbp.chain(net, params, x0, y0, layer=l) for l in (1, 2)]
        mags = {f.symbol: jnp.abs(f.value[0, 0]) for c in chains for f in c}
        grads = jax.grad(net.loss)(params, x0, y0)
        products = [jaxbp.contract(c)[0, 0] for c in chains]
        return mags, products, [grads[0].W[0, 0], grads[1].W[0, 0]]

    # One history per distinct factor, in the notes' order (∂L/∂W^1's chain, then a^1).
    order = [(f["name"], f["symbol"]) for l in ("W1", "W2") for f in start[l]["factors"]]
    history = {"loss": [], "factors": {sym: [] for _, sym in dict.fromkeys(order)},
               "names": {sym: name for name, sym in order}, "dL_dW1": [], "dL_dW2": []}
    worst = 0.0
    steps_iter = range(steps)
    if progress:
        from tqdm import tqdm
        steps_iter = tqdm(steps_iter, desc="training", unit="step")
    for _ in steps_iter:
        mags, products, autodiff = follow(params, x0, y0)
        for sym, v in mags.items():
            history["factors"][sym].append(float(v))
        history["dL_dW1"].append(abs(float(products[0])))
        history["dL_dW2"].append(abs(float(products[1])))
        worst = max(worst, *(relative_error(p, g) for p, g in zip(products, autodiff)))
        params, opt_state, value = step(params, opt_state, X, Y)
        history["loss"].append(float(value))
    final_loss = float(net.batch_loss(params, X, Y))
    end = factor_report(net, params, x0, y0)

    results = {
        "config": dict(steps=steps, seed=seed, lr=lr, loss=loss, num_examples=num_examples,
                       activations=list(ACTIVATIONS), teacher=list(TEACHER), optimizer="adam"),
        "backend": jax.default_backend(),
        "example": {"x": float(x0[0]), "y": float(y0[0])},
        "start": start,
        "end": end,
        "initial_loss": history["loss"][0],
        "final_loss": final_loss,
        "max_relative_error_product_vs_jax_grad": worst,
        "tolerance": rtol_for(jnp.float64),
        "final_params": {f"{name}{l}": float(getattr(p, name).ravel()[0])
                         for l, p in enumerate(params, start=1) for name in ("W", "W0")},
        "history": history,
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    plot(history, os.path.join(out, "two_neuron.png"), loss)
    print_summary(results, out)
    return results


def plot(history: dict, path: str, loss: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_f) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax_loss.plot(history["loss"])
    ax_loss.set(yscale="log", xlabel="step", ylabel=f"mean {loss} loss", title="training loss")
    for sym, values in history["factors"].items():
        ax_f.plot(values, label=f"{history['names'][sym]}: {_mathtext(sym)}")
    ax_f.plot(history["dL_dW1"], "k--", label=f"product: {_mathtext('∂L/∂W^1')}")
    ax_f.plot(history["dL_dW2"], "k:", label=f"product: {_mathtext('∂L/∂W^2')}")
    ax_f.set(yscale="log", xlabel="step", ylabel="|value| for the example",
             title="each factor's magnitude")
    ax_f.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mathtext(symbol: str) -> str:
    """"∂z^2/∂a^1" -> "$\\partial z^2/\\partial a^1$" for matplotlib labels."""
    return "$" + symbol.replace("∂", r"\partial ") + "$"


def print_summary(results: dict, out: str) -> None:
    print(f"\n{'factor':<12}{'symbol':<12}{'start':>12}{'end':>12}")
    for l in ("W2", "W1"):
        for a, b in zip(results["start"][l]["factors"], results["end"][l]["factors"]):
            print(f"{a['name']:<12}{a['symbol']:<12}{a['value']:>12.5g}{b['value']:>12.5g}")
        for key in ("product", "jax_grad"):
            s, e = results["start"][l][key], results["end"][l][key]
            print(f"{key + ' ∂L/∂W^' + l[1]:<24}{s:>12.5g}{e:>12.5g}")
        print()
    print(f"loss {results['initial_loss']:.4g} → {results['final_loss']:.4g} in "
          f"{results['config']['steps']} steps; product of factors vs jax.grad over training: "
          f"max relative error {results['max_relative_error_product_vs_jax_grad']:.1e} "
          f"(tolerance {results['tolerance']:.0e})")
    print(f"wrote {os.path.join(out, 'results.json')} and {os.path.join(out, 'two_neuron.png')}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default=OUT, help=f"output folder (default {OUT})")
    p.add_argument("--steps", type=int, default=STEPS, help=f"Adam steps (default {STEPS})")
    p.add_argument("--seed", type=int, default=SEED, help=f"PRNG seed (default {SEED})")
    p.add_argument("--lr", type=float, default=LR, help=f"learning rate (default {LR})")
    p.add_argument("--loss", default=LOSS, choices=("squared", "binary_nll"),
                   help=f"loss on the sigmoid output (default {LOSS})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


if __name__ == "__main__":
    a = parse_args()
    main(out=a.out, steps=a.steps, seed=a.seed, lr=a.lr, loss=a.loss, progress=not a.no_progress)
