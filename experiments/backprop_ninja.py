"""Becoming a backprop ninja in JAX: check a hand-written backward pass, every intermediate.

The network and its intermediates are those of Karpathy's exercise (nn-zero-to-hero, makemore
part 4): a character-level model that reads 3 previous characters, embeds each in 10 dimensions
(C), concatenates them, then Linear 30→64 (W1, b1), batchnorm with Bessel-corrected variance
(bngain, bnbias), tanh, Linear 64→27 (W2, b2) and cross-entropy spelled out as logit_maxes,
norm_logits, counts, counts_sum, counts_sum_inv, probs, logprobs. ``backward`` (in
experiments/_makemore.py) derives ∂loss/∂(each of the 26 tapped values) by hand, without
autodiff; ``jaxbp.check_intermediates`` checks every one against float64 ``jax.grad`` and prints
a table. Then both the manual gradients
and ``jax.grad`` train the net with Optax (SGD) in lockstep on the same batches.

Corpus: 513 common English given names written out for jaxbp (experiments/_names.py), so nothing
is downloaded; ``--corpus FILE`` reads one word per line instead (letters a–z). 90% of the names
train, 10% are held out.

    python experiments/backprop_ninja.py                      # check (table), then train
    python experiments/backprop_ninja.py --bug bessel_n       # plant a classic mistake
    python experiments/backprop_ninja.py --x64                # float64 throughout

Exit code: 0 when every intermediate is right (the net is then trained); 1 when the check finds a
wrong one (always with ``--bug``): the report names it and nothing is trained, since wrong
gradients would only train a wrong model; 2 on a bad flag. Writes DIR/results.json (the report,
the settings and, after training, the losses) and DIR/check.png (``report.plot()``: each
intermediate's relative error against its budget), plus DIR/loss.png after training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxbp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # siblings, also when imported
from _common import (FlagError, Parser, allowed, backend_line, check_writable,  # noqa: E402,I001
                     publish)
from _makemore import (BUGS, EMBEDDING, HIDDEN, VOCAB, backward,  # noqa: E402
                       dataset, forward, init, loss_fn, manual_value_and_grad)
from _names import NAMES  # noqa: E402

# ---------------------------------------------------------------- knobs (= CLI defaults)
BATCH_SIZE = 32
STEPS = 3000
LR = 0.1                # plain SGD, as in the exercise
SEED = 0
OUT = os.path.join("runs", "backprop_ninja")


# ---------------------------------------------------------------------------- data

def load_words(corpus: str | None) -> list:
    """The built-in names, or one word per line of ``corpus``; letters a–z only."""
    if corpus is None:
        return list(NAMES)
    try:
        with open(corpus) as f:
            words = [line.strip().lower() for line in f if line.strip()]
    except OSError as e:
        raise FlagError("--corpus", f"cannot read {corpus!r} ({e.strerror}); allowed: a text "
                                    "file with one word per line") from None
    bad = [w for w in words if not (w.isascii() and w.isalpha())]
    if bad:
        raise FlagError("--corpus", f"{corpus!r}: {bad[0]!r} is not a word of letters a–z; "
                                    "allowed: one word per line, letters a–z")
    if len(words) < 10:
        raise FlagError("--corpus", f"{corpus!r} has {len(words)} words; need at least 10")
    return words


def split(words, seed: int):
    """90% / 10% of the words (shuffled with ``seed``) as train / held-out (X, Y)."""
    order = np.random.default_rng(seed).permutation(len(words))
    cut = int(0.9 * len(words))
    return (dataset([words[i] for i in order[:cut]]),
            dataset([words[i] for i in order[cut:]]))


# ------------------------------------------------------------------------ the check

def check(params, X, Y, *, bug=None) -> jaxbp.IntermediatesReport:
    """The hand-written gradients of every intermediate on one batch, checked."""
    v = jaxbp.intermediates(forward, (params, X, Y))
    grads = backward(v, X, Y, bug=bug)
    return jaxbp.check_intermediates(forward, (params, X, Y), grads)


# ---------------------------------------------------------------------------- train

GRADS = {"manual": manual_value_and_grad, "autodiff": jax.value_and_grad(loss_fn)}


def make_step(value_and_grad, optimizer):
    """``step(params, opt_state, X, Y) -> (params, opt_state, loss)`` with these gradients."""
    def step(params, opt_state, X, Y):
        loss, grads = value_and_grad(params, X, Y)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


def make_lockstep(optimizer):
    """One jitted call runs K steps of both runs on the same K batches (a ``lax.scan``):
    ``(state, Xs (K, B, 3), Ys (K, B)) -> (state, losses {grad: (K,)}, gaps (K,))``."""
    steps = {g: make_step(vg, optimizer) for g, vg in GRADS.items()}

    def body(state, batch):
        state = {g: step(state[g][0], state[g][1], *batch) for g, step in steps.items()}
        gap = jnp.max(jnp.stack([jnp.max(jnp.abs(state["manual"][0][k] - state["autodiff"][0][k]))
                                 for k in state["manual"][0]]))
        return state, ({g: state[g][2] for g in steps}, gap)

    @jax.jit
    def lockstep(state, Xs, Ys):
        return jax.lax.scan(body, state, (Xs, Ys))

    return lockstep


def train(params, data, *, steps, batch_size, lr, seed, quiet) -> dict:
    """Manual gradients and jax.grad from the same init on the same batches (lockstep)."""
    from tqdm import tqdm

    (Xtr, Ytr), _ = data
    optimizer = optax.sgd(lr)
    lockstep = make_lockstep(optimizer)
    no_loss = jnp.zeros((), params["C"].dtype)  # (params, opt_state, last loss) per run
    state = {g: (params, optimizer.init(params), no_loss) for g in GRADS}
    idx = np.random.default_rng(seed + 1).integers(0, len(Xtr), (steps, batch_size))
    chunk = max(1, steps // 50)
    losses, gaps = {g: [] for g in GRADS}, []
    show = not quiet and sys.stderr.isatty()
    bar = tqdm(total=steps, disable=not show, desc="train")
    t0 = time.perf_counter()
    for start in range(0, steps, chunk):
        batch = idx[start:start + chunk]
        state, (loss, gap) = lockstep(state, jnp.asarray(Xtr[batch]), jnp.asarray(Ytr[batch]))
        for g in GRADS:
            losses[g].append(np.asarray(loss[g], np.float64))
        gaps.append(np.asarray(gap, np.float64))
        bar.set_postfix(manual=f"{losses['manual'][-1][-1]:.4f}", gap=f"{gaps[-1][-1]:.1e}",
                        refresh=False)
        bar.update(len(batch))
    bar.close()
    seconds = time.perf_counter() - t0
    history = {g: np.concatenate(losses[g]) for g in GRADS}
    history["param_diff"] = np.concatenate(gaps)
    return dict(params={g: state[g][0] for g in GRADS}, history=history, seconds=seconds)


def evaluate(params, data) -> dict:
    """Train and held-out loss, each split as one batch (batchnorm uses that split's stats)."""
    (Xtr, Ytr), (Xte, Yte) = data
    f = jax.jit(loss_fn)
    return {"train_loss": float(f(params, Xtr, Ytr)), "heldout_loss": float(f(params, Xte, Yte))}


# ---------------------------------------------------------------------------- outputs

def write_outputs(report, run, summary, staging: str) -> list[str]:
    names = ["results.json", "check.png"]
    with open(os.path.join(staging, "results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    report.plot(title=summary["title"]).savefig(os.path.join(staging, "check.png"), dpi=110)
    if run is not None:
        import _plots as plots

        plots.loss_curves(run["history"], os.path.join(staging, "loss.png"),
                          title=summary["title"])
        names.append("loss.png")
    return names


# ------------------------------------------------------------------------------ main

def main(*, bug: str | None = None, steps: int = STEPS, batch_size: int = BATCH_SIZE,
         lr: float = LR, hidden: int = HIDDEN, seed: int = SEED, x64: bool = False,
         corpus: str | None = None, out: str = OUT, quiet: bool = False) -> dict:
    """Checks the hand-written backward on one batch, prints the table; trains if it is right.

    Args:
      bug: None, or a key of ``BUGS``: plant that mistake (then nothing is trained).
      steps: SGD steps of each run; batch_size: examples per step (and in the check).
      lr: the SGD learning rate.
      hidden: n_hidden, the width of the batchnorm/tanh layer.
      seed: init, split and batch order.
      x64: float64 instead of float32.
      corpus: a text file, one word per line; None: the built-in names.
      out: output directory.
      quiet: no progress bar.

    Returns:
      The results dict (as results.json); ``summary["ok"]`` is the check's verdict.
    """
    if bug is not None and bug not in BUGS:
        raise FlagError("--bug", f"unknown bug {bug!r}; {allowed(BUGS)}")
    for flag, value, low in (("--steps", steps, 1), ("--batch-size", batch_size, 2),
                             ("--hidden", hidden, 1)):
        if not (isinstance(value, int) and value >= low):
            raise FlagError(flag, f"expected an int >= {low}, got {value!r}")
    if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
        raise FlagError("--lr", f"expected a positive number, got {lr!r}")
    check_writable(out)
    words = load_words(corpus)
    if x64:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float64 if x64 else jnp.float32
    data = split(words, seed)
    (Xtr, Ytr), _ = data
    if batch_size > len(Xtr):
        raise FlagError("--batch-size", f"expected 2..{len(Xtr)} (the training examples), got "
                                        f"{batch_size}")
    params = init(jax.random.key(seed), hidden=hidden, dtype=dtype)
    idx = np.random.default_rng(seed).integers(0, len(Xtr), batch_size)
    Xb, Yb = jnp.asarray(Xtr[idx]), jnp.asarray(Ytr[idx])
    title = (f"backprop ninja: 3×{EMBEDDING} → {hidden} (batchnorm, tanh) → {len(VOCAB)}, "
             f"B={batch_size}, {np.dtype(dtype).name}" + (f", bug {bug}" if bug else ""))
    print(backend_line(1, dtype))
    print(f"{title}: {len(words)} words, {len(Xtr)} training examples")
    if bug:
        print(f"planted bug {bug!r}: {BUGS[bug][0]}")
    report = check(params, Xb, Yb, bug=bug)
    print(report)
    summary = dict(title=title, bug=bug, dtype=np.dtype(dtype).name, batch_size=batch_size,
                   hidden=hidden, seed=seed, words=len(words), ok=report.ok,
                   report=report.to_dict(), trained=False, jax_version=jax.__version__)
    run = None
    if report.ok:
        run = train(params, data, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                    quiet=quiet)
        summary.update(trained=True, steps=steps, lr=lr, seconds=round(run["seconds"], 3),
                       max_param_diff=float(run["history"]["param_diff"].max()))
        for g, p in run["params"].items():
            summary[g] = dict(evaluate(p, data), final_batch_loss=float(run["history"][g][-1]))
        _print_summary(summary)
    elif bug:
        expect = BUGS[bug]
        found = (report.first_bad, report.suspect) == expect[1:]
        print(f"the report {'names' if found else 'does NOT name'} the planted bug: "
              f"d{expect[1]}, {expect[2]}")
    names = publish(out, lambda staging: write_outputs(report, run, summary, staging))
    print(f"wrote {os.path.join(out, '')}{{{', '.join(names)}}}")
    return summary


def _print_summary(s: dict) -> None:
    print(f"trained {s['steps']} SGD steps (lr {s['lr']:g}) in {s['seconds']:.1f} s")
    print(f"{'grad':<9} {'train loss':>11} {'held-out loss':>14}")
    for g in ("manual", "autodiff"):
        print(f"{g:<9} {s[g]['train_loss']:>11.4f} {s[g]['heldout_loss']:>14.4f}")
    print(f"max |params_manual − params_autodiff| along the run: {s['max_param_diff']:.3e} "
          f"({s['dtype']})")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="backprop_ninja.py", description=__doc__.split("\n\n")[0],
               epilog="Bugs: " + "; ".join(f"{k}: {v[0]}" for k, v in BUGS.items()) + ".")
    p.add_argument("--bug", default=None, help=f"plant a classic mistake; {allowed(BUGS)}")
    p.add_argument("--steps", type=int, default=STEPS, help=f"SGD steps (default {STEPS})")
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                   help=f"(default {BATCH_SIZE})")
    p.add_argument("--lr", type=float, default=LR, help=f"SGD learning rate (default {LR:g})")
    p.add_argument("--hidden", type=int, default=HIDDEN, help=f"n_hidden (default {HIDDEN})")
    p.add_argument("--seed", type=int, default=SEED, help=f"(default {SEED})")
    p.add_argument("--x64", action="store_true", help="float64 instead of float32")
    p.add_argument("--corpus", default=None,
                   help="text file, one word per line (default: the built-in names)")
    p.add_argument("--out", default=OUT, help=f"output directory (default {OUT})")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def cli(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        summary = main(bug=args.bug, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                       hidden=args.hidden, seed=args.seed, x64=args.x64, corpus=args.corpus,
                       out=args.out, quiet=args.quiet)
    except FlagError as e:
        parser.error(str(e))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(cli())
