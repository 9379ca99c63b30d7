"""train.py's run: the two runs stepped side by side, checkpoints, and the output files.

``train(cfg, ...)`` takes the settings ``train.resolve`` checked (``cfg``) and returns each
run's results and the history; ``write_outputs`` writes results.json, history.csv, params.npz
and the plots, each atomically.
"""

from __future__ import annotations

import csv
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxbp

import _checkpoint as checkpoint  # noqa: I001
import _privacy as privacy
import _tasks as tasks
from _common import atomic_write, host


@jax.jit
def _max_abs_diff(tree_a, tree_b):
    return jnp.max(jnp.stack([jnp.max(jnp.abs(a - b))
                              for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b))]))


def _data_order(n: int, seed: int) -> dict:
    """The batch order's state at step 0: the NumPy RNG's state and the epoch's permutation."""
    return dict(rng=np.random.default_rng(seed).bit_generator.state, perm=np.arange(n))


def _batches(order: dict, batch_size: int, start: int, steps: int):
    """(t, index array) of shuffled minibatches, a new permutation each epoch (remainder dropped).

    ``order`` (from ``_data_order`` or a checkpoint) is updated in place at each new epoch, so
    after step t it holds exactly what steps t+1... need.
    """
    rng = np.random.default_rng()
    rng.bit_generator.state = order["rng"]
    n = len(order["perm"])
    per_epoch = n // batch_size
    for t in range(start, steps):
        if t % per_epoch == 0:
            order["perm"] = rng.permutation(n)
            order["rng"] = rng.bit_generator.state
        k = t % per_epoch
        yield t, order["perm"][k * batch_size:(k + 1) * batch_size]


def _progress(cfg: dict, params0, optimizer) -> dict:
    """Everything a run carries from step to step, at step 0; a checkpoint saves all of it.

    ``runs`` (each grad's params and optimizer state), ``history`` (lists of per-step values),
    ``order`` (data order) and ``extra`` (any pytree of arrays) go in the checkpoint's array
    item; ``step`` and ``counters`` (free-form JSON numbers) in its JSON item.
    """
    columns = list(cfg["grads"]) + (["param_diff"] if len(cfg["grads"]) == 2 else [])
    return dict(step=0, runs={g: dict(params=params0, opt_state=optimizer.init(params0))
                              for g in cfg["grads"]},
                history={c: [] for c in columns},
                order=_data_order(len(cfg["data"].y_train), cfg["seed"]),
                extra={}, counters=dict(seconds=dict.fromkeys(cfg["grads"], 0.0),
                                        **(dict(dp_steps=0, dropped=0) if cfg["private"] else {})))


def train(cfg: dict, *, dtype, quiet: bool, start: int | None = None) -> dict:
    """Runs the configured grads side by side; returns the per-run results and the history.

    Args:
      start: a checkpoint step in OUT/checkpoints to go on from (None: step 0).
    """
    data, task = cfg["data"], cfg["task"]
    optimizer = cfg["optax"]  # the optax.GradientTransformation
    mesh = jaxbp.batch_mesh(cfg["devices"])
    X, Y = tasks.input_dtype(data.X_train, dtype), task.targets(data.y_train).astype(dtype)
    progress = _progress(cfg, task.init(jax.random.key(cfg["seed"]), dtype), optimizer)
    save_every = cfg["checkpoint_every"]
    mngr = None
    if save_every or start is not None:
        mngr = checkpoint.manager(os.path.join(cfg["out"], "checkpoints"))
    try:
        if start is not None:
            progress = checkpoint.restore_progress(mngr, start, progress)
        return _loop(cfg, progress, optimizer, mesh, X, Y, mngr if save_every else None,
                     dtype=dtype, quiet=quiet)
    finally:
        if mngr is not None:
            checkpoint.close(mngr)  # pending saves complete before the outputs are written


def _loop(cfg, progress, optimizer, mesh, X, Y, mngr, *, dtype, quiet):
    """Steps from ``progress["step"]`` to ``cfg["steps"]``, saving to ``mngr`` (if any)."""
    from tqdm import tqdm

    data, net, grads = cfg["data"], cfg["net"], cfg["grads"]
    # Replicated onto this run's mesh, whatever the device count of the run that saved it.
    state = {g: jaxbp.replicate(mesh, (r["params"], r["opt_state"]))
             for g, r in progress["runs"].items()}
    steps, compile_seconds = {}, {}
    private, n = cfg["private"], len(data.y_train)
    if private:  # padded Poisson batches, a fresh noise key each step
        q = cfg["batch_size"] / n
        cap = privacy.capacity(n, q)
        noise_key = jax.random.fold_in(jax.random.key(cfg["seed"]), 0x5EED)
        extra_args = lambda t, mask: (jax.random.fold_in(noise_key, t), jnp.asarray(mask))  # noqa: E731
        settings = dict(max_norm=private["max_norm"], batch_size=cfg["batch_size"],
                        noise_multiplier=private["noise_multiplier"])
        make = lambda g: jaxbp.make_step(net, optimizer, private=settings)  # noqa: E731
    else:
        cap, extra_args = cfg["batch_size"], lambda t, mask: ()  # noqa: E731
        make = lambda g: jaxbp.make_step(net, optimizer, grad=g, mesh=mesh)  # noqa: E731
    Xb, Yb = jaxbp.shard_batch(mesh, X[:cap], Y[:cap])
    for g in grads:  # compile ahead so that "seconds" measures training only
        t0 = time.perf_counter()
        steps[g] = make(g).lower(*state[g], Xb, Yb, *extra_args(0, np.ones(cap, bool))).compile()
        compile_seconds[g] = time.perf_counter() - t0
    seconds = progress["counters"]["seconds"]
    history = progress["history"]
    losses, diffs = [history[g] for g in grads], history.get("param_diff")
    show = not quiet and sys.stderr.isatty() and jax.process_index() == 0
    bar = tqdm(total=cfg["steps"], initial=progress["step"], disable=not show, desc=data.name)
    every = max(1, cfg["steps"] // 50)
    save_every = cfg["checkpoint_every"] if mngr is not None else 0
    if private:
        batches = privacy.poisson_batches(progress["order"], n, q, cap, progress["step"],
                                          cfg["steps"])
    else:
        batches = ((t, idx, None, 0) for t, idx in _batches(
            progress["order"], cfg["batch_size"], progress["step"], cfg["steps"]))
    for t, idx, mask, dropped in batches:
        Xb, Yb = jax.block_until_ready(jaxbp.shard_batch(mesh, X[idx], Y[idx]))  # not timed
        if private:  # the accountant's step count goes into the checkpoint with the rest
            progress["counters"]["dp_steps"] = t + 1
            progress["counters"]["dropped"] += dropped
        for g, g_losses in zip(grads, losses):
            t0 = time.perf_counter()
            params, opt_state, loss = steps[g](*state[g], Xb, Yb, *extra_args(t, mask))
            jax.block_until_ready(params)
            seconds[g] += time.perf_counter() - t0
            state[g] = (params, opt_state)
            g_losses.append(loss)
        if diffs is not None:
            # Blocking keeps this work out of the next step's timing.
            diff = jax.block_until_ready(_max_abs_diff(state["manual"][0], state["autodiff"][0]))
            diffs.append(diff)
        if save_every and ((t + 1) % save_every == 0 or t + 1 == cfg["steps"]):
            progress["step"] = t + 1
            progress["runs"] = {g: dict(params=p, opt_state=o) for g, (p, o) in state.items()}
            checkpoint.save_progress(mngr, progress, computation=cfg["computation"])
        if (t + 1) % every == 0 or t + 1 == cfg["steps"]:
            post = {g: f"{float(host(history[g][-1])):.4f}" for g in grads}
            if diffs:
                post["gap"] = f"{float(host(diffs[-1])):.1e}"
            bar.set_postfix(post, refresh=False)
        bar.update(1)
    bar.close()
    results = {}
    for g in grads:
        params = jax.tree.map(host, state[g][0])
        results[g] = dict(**tasks.evaluate(cfg["task"], params, dtype), seconds=round(seconds[g], 4),
                          compile_seconds=round(compile_seconds[g], 4))
        results[g]["params"] = params
    history = {c: np.array([host(v) for v in values], dtype=np.float64)
               for c, values in history.items()}
    return dict(results=results, history=history, counters=progress["counters"],
                capacity=cap, max_param_diff=float(history["param_diff"].max()) if diffs is not None else None)


def write_outputs(cfg: dict, run: dict, summary: dict, out: str) -> list[str]:
    """Writes every output file into ``out``, each atomically; returns their names."""
    import json

    os.makedirs(out, exist_ok=True)
    names = ["results.json", "history.csv", "params.npz", "loss.png"]

    def results_json(path):
        with open(path, "w") as f:
            json.dump(summary, f, indent=2)

    hist = run["history"]
    columns = list(hist)

    def history_csv(path):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step"] + [c if c == "param_diff" else f"{c}_loss" for c in columns])
            for t, row in enumerate(zip(*(hist[c] for c in columns)), start=1):
                writer.writerow([t] + [repr(float(v)) for v in row])

    def params_npz(path):
        np.savez(path, **{f"{g}_{name}": array for g, r in run["results"].items()
                          for name, array in tasks.param_arrays(cfg["task"], r["params"]).items()})

    import _plots as plots  # matplotlib only when writing

    writers = {"results.json": results_json, "history.csv": history_csv,
               "params.npz": params_npz,
               "loss.png": lambda path: plots.loss_curves(hist, path, title=summary["title"])}
    if cfg["data"].X_train.ndim == 2 and cfg["data"].X_train.shape[1] == 2:
        names.append("boundary.png")
        writers["boundary.png"] = lambda path: plots.boundaries(
            cfg["net"], {g: r["params"] for g, r in run["results"].items()}, cfg["data"], path)
    for name in names:
        atomic_write(os.path.join(out, name), writers[name])
    return names


def print_summary(s: dict) -> None:
    """The results table a person reads at a glance (losses, accuracies, seconds, gap, ε)."""
    print(f"{'grad':<9} {'train loss':>11} {'test loss':>10} {'train acc':>10} {'test acc':>9} "
          f"{'seconds':>8}")
    for g in ("manual", "autodiff"):
        r = s[g]
        if r is not None:
            print(f"{g:<9} {r['train_loss']:>11.5f} {r['test_loss']:>10.5f} "
                  f"{r['train_accuracy']:>10.4f} {r['test_accuracy']:>9.4f} {r['seconds']:>8.2f}")
    chance = next((r["chance_accuracy"] for r in (s["manual"], s["autodiff"])
                   if r and "chance_accuracy" in r), None)
    if chance is not None:
        print(f"accuracy is per token; chance level {chance:.4f}")
    if "bigram_test_loss" in s:  # the char models (experiments/_chars.py)
        nll = "  ".join(f"{g} {s[g]['test_loss']:.4f}" for g in ("manual", "autodiff") if s[g])
        print(f"test NLL per character (nats): {nll}; bigram baseline "
              f"{s['bigram_test_loss']:.4f} (same split)")
        print(f"sampled names: {', '.join(s['samples'])}")
    if "epsilon" in s:
        p = s["private"]
        print(f"DP-SGD: epsilon = {s['epsilon']:.3f} at delta = {p['delta']:g} after "
              f"{p['dp_steps']} steps (Poisson sampling q = {p['sampling_rate']:.4g}, "
              f"noise multiplier {p['noise_multiplier']:g}, max norm {p['max_norm']:g}; "
              f"{p['accountant']})")
    if s["max_param_diff"] is not None:
        print(f"max |params_manual − params_autodiff| along the run: {s['max_param_diff']:.3e} "
              f"({s['dtype']})")
