"""Train one net with manual backprop and with jax.grad side by side, with Optax, on any device.

Both runs start from the same params and see the same batches; the only difference is who
computes ∂L/∂params: jaxbp's chain rule ("manual") or ``jax.value_and_grad`` ("autodiff").
The largest parameter difference between them along the whole run is recorded.

    python experiments/train.py                          # digits, 64-64-10, Adam, both grads
    python experiments/train.py --dataset spirals        # 2-D: also draws the decision boundary
    python experiments/train.py --x64                    # float64: max_param_diff ~ 1e-15
    XLA_FLAGS=--xla_force_host_platform_device_count=4 python experiments/train.py --devices 4
    python experiments/train.py --checkpoint-every 100   # killed? add --resume to go on
    python experiments/train.py --model cnn              # jaxbp.nn: a CNN on 8×8×1 digits
    python experiments/train.py --model transformer      # a causal transformer block on sequences
    python experiments/train.py --model lstm             # char-level names model (also rnn, gru)
    python experiments/train.py --private --noise-multiplier 1.1   # DP-SGD; ε at δ reported

Writes DIR/results.json, DIR/loss.png, DIR/boundary.png (2-D data), DIR/history.csv (loss per
step and the manual-autodiff gap) and DIR/params.npz (final params of each run), each atomically
(a temporary file, then renamed). With --checkpoint-every N, DIR/checkpoints/<step>/ (Orbax)
holds all a run needs to go on; --resume continues from the latest, to the same bits.
Multi-host: start the same command on every host with --distributed (jax.distributed.initialize()).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import numpy as np
import optax

import jaxbp
from jaxbp import datasets

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # siblings, also when imported
import _checkpoint as checkpoint  # noqa: E402
import _privacy as privacy  # noqa: E402
import _tasks as tasks  # noqa: E402
from _runner import print_summary, train, write_outputs  # noqa: E402
from _common import FlagError, Parser, allowed, backend_line, check_writable  # noqa: E402,I001

# ---------------------------------------------------------------- knobs (= CLI defaults)
MODEL = "mlp"           # mlp (jaxbp.Network) | cnn | transformer | rnn | lstm | gru (jaxbp.nn)
DATASET = "digits"      # mlp's default; cnn trains on digits, transformer on its sequences
LOSS = "nll"
OPTIMIZER = "adam"
BATCH_SIZE = 128
SEED = 0
GRAD = "both"           # manual | autodiff | both
DEVICES = 1             # an int, or "all"
# Per data set: hidden sizes, hidden activation, steps, learning rate.
PRESETS = {
    "digits": dict(hidden=(64,), activation="relu", steps=1000, lr=1e-3),
    "xor": dict(hidden=(16,), activation="tanh", steps=1000, lr=1e-2),
    "spirals": dict(hidden=(64, 64), activation="tanh", steps=2000, lr=1e-2),
    "moons": dict(hidden=(32, 32), activation="tanh", steps=1000, lr=1e-2),
}
# Per jaxbp.nn model: steps, learning rate, batch size (their data sets are fixed).
MODEL_PRESETS = {
    "cnn": dict(dataset="digits", steps=1500, lr=3e-3, batch_size=128),
    "transformer": dict(dataset="sequences", steps=300, lr=3e-3, batch_size=16),
    **{cell: dict(dataset="names", steps=500, lr=3e-3, batch_size=32)  # ~5k names: more overfits
       for cell in ("rnn", "lstm", "gru")},
}
OUTPUT_ACTIVATION = {"nll": "softmax", "binary_nll": "sigmoid", "squared": "identity",
                     "hinge": "identity"}
OPTIMIZERS = {
    "adam": optax.adam, "adamw": optax.adamw, "sgd": optax.sgd,
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "nesterov": lambda lr: optax.sgd(lr, momentum=0.9, nesterov=True),
    "rmsprop": optax.rmsprop, "adagrad": optax.adagrad, "nadam": optax.nadam,
    "lamb": optax.lamb, "lion": optax.lion,
}


def resolve(*, dataset, sizes, activations, loss, optimizer, lr, steps, batch_size, seed, grad,
            devices, out, dtype=np.float32, checkpoint_every=None, model=MODEL,
            private=None) -> dict:
    """Checks every setting before anything runs; fills the per-dataset defaults.

    ``cfg["computation"]`` collects every setting that changes the numbers a run computes
    (not ``steps``, ``devices``, ``out``): a checkpoint records it and a resume must match it.
    A new flag of that kind joins this one dict.

    Raises:
      FlagError: naming the flag and the allowed values.
    """
    if model not in tasks.MODELS:
        raise FlagError("--model", f"unknown model {model!r}; {allowed(tasks.MODELS)}")
    if model != "mlp":
        return _resolve_nn(model, dataset=dataset, sizes=sizes, activations=activations,
                           loss=loss, optimizer=optimizer, lr=lr, steps=steps,
                           batch_size=batch_size, seed=seed, grad=grad, devices=devices,
                           out=out, dtype=dtype, checkpoint_every=checkpoint_every,
                           private=private)
    dataset = DATASET if dataset is None else dataset
    batch_size = BATCH_SIZE if batch_size is None else batch_size
    if dataset not in datasets.NAMES:
        raise FlagError("--dataset", f"unknown data set {dataset!r}; {allowed(datasets.NAMES)}")
    if loss not in jaxbp.LOSSES:
        raise FlagError("--loss", f"unknown loss {loss!r}; {allowed(jaxbp.LOSSES)}")
    if optimizer not in OPTIMIZERS:
        raise FlagError("--optimizer", f"unknown optimizer {optimizer!r}; {allowed(OPTIMIZERS)}")
    if grad not in ("manual", "autodiff", "both"):
        raise FlagError("--grad", f"got {grad!r}; allowed: manual, autodiff, both")
    preset = PRESETS[dataset]
    try:
        data = datasets.load(dataset)
    except ImportError as e:
        raise FlagError("--dataset", f"{dataset}: {e}") from None
    try:
        n_out = datasets.num_outputs(loss, data.num_classes)
    except ValueError as e:
        raise FlagError("--loss", f"{e}; allowed here: nll, squared") from None
    n_in = data.X_train.shape[1]
    if sizes is None:
        sizes = (n_in, *preset["hidden"], n_out)
    elif isinstance(sizes, str):
        try:
            sizes = tuple(int(s) for s in sizes.split(","))
        except ValueError:
            raise FlagError("--sizes", f"expected comma-separated ints like {n_in},64,{n_out}, "
                                       f"got {sizes!r}") from None
    sizes = tuple(sizes)
    if len(sizes) < 2 or sizes[0] != n_in or sizes[-1] != n_out or min(sizes) < 1:
        raise FlagError("--sizes", f"{dataset} with loss {loss} needs positive sizes starting at "
                                   f"{n_in} (inputs) and ending at {n_out} (outputs), got "
                                   f"{','.join(map(str, sizes))}")
    if activations is None:
        activations = (preset["activation"],) * (len(sizes) - 2) + (OUTPUT_ACTIVATION[loss],)
    elif isinstance(activations, str):
        activations = tuple(activations.split(","))
    for name in activations:
        if name not in jaxbp.ACTIVATIONS:
            raise FlagError("--activations", f"unknown activation {name!r}; "
                                             f"{allowed(jaxbp.ACTIVATIONS)}")
    try:
        net = jaxbp.Network(sizes=sizes, activations=activations, loss=loss)
    except (ValueError, TypeError) as e:
        raise FlagError("--activations", f"{e} (--sizes {','.join(map(str, sizes))}, "
                                         f"--loss {loss})") from None
    computation = dict(model="mlp", dataset=dataset, sizes=list(net.sizes),
                       activations=list(net.activations), loss=loss)
    return _settings(tasks.mlp_task(data, net), preset, computation, optimizer=optimizer, lr=lr,
                     steps=steps, batch_size=batch_size, seed=seed, grad=grad, devices=devices,
                     out=out, dtype=dtype, checkpoint_every=checkpoint_every, private=private)


def _resolve_nn(model, *, dataset, sizes, activations, loss, optimizer, lr, steps, batch_size,
                seed, grad, devices, out, dtype, checkpoint_every, private) -> dict:
    """``resolve`` for the jaxbp.nn models: fixed data set, architecture and loss."""
    preset = MODEL_PRESETS[model]
    if dataset not in (None, preset["dataset"]):
        raise FlagError("--dataset", f"--model {model} trains on {preset['dataset']} only, got "
                                     f"{dataset!r}")
    for flag, value in (("--sizes", sizes), ("--activations", activations)):
        if value is not None:
            raise FlagError(flag, f"not for --model {model}, whose architecture is fixed "
                                  f"(see experiments/_tasks.py)")
    if loss != "nll":
        raise FlagError("--loss", f"--model {model} is trained with nll only, got {loss!r}")
    task = tasks.nn_task(model)
    batch_size = preset["batch_size"] if batch_size is None else batch_size
    computation = dict(model=model, dataset=preset["dataset"], loss=loss)
    return _settings(task, preset, computation, optimizer=optimizer, lr=lr, steps=steps,
                     batch_size=batch_size, seed=seed, grad=grad, devices=devices, out=out,
                     dtype=dtype, checkpoint_every=checkpoint_every, private=private)


def _settings(task, preset, computation, *, optimizer, lr, steps, batch_size, seed, grad,
              devices, out, dtype, checkpoint_every, private=None) -> dict:
    """The checks every model shares; the cfg dict (see ``resolve``)."""
    data = task.data
    lr = preset["lr"] if lr is None else lr
    steps = preset["steps"] if steps is None else steps
    if not (isinstance(lr, (int, float)) and np.isfinite(lr) and lr > 0):
        raise FlagError("--lr", f"expected a positive number, got {lr!r}")
    if not (isinstance(steps, int) and steps >= 1):
        raise FlagError("--steps", f"expected an int >= 1, got {steps!r}")
    available = jax.device_count()
    if devices == "all":
        devices = available
    if not (isinstance(devices, int) and 1 <= devices <= available):
        raise FlagError("--devices", f"{devices!r} requested; allowed: 1..{available} or all "
                                     f"({available} {jax.default_backend()} device(s) here; on "
                                     f"CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
                                     f"makes N)")
    n_train = data.X_train.shape[0]
    if not (isinstance(batch_size, int) and 1 <= batch_size <= n_train):
        raise FlagError("--batch-size", f"expected 1..{n_train} (the training set's size), "
                                        f"got {batch_size!r}")
    if batch_size % devices:
        raise FlagError("--batch-size", f"{batch_size} is not divisible by --devices {devices}; "
                                        f"allowed: multiples of {devices}")
    if checkpoint_every is not None and not (isinstance(checkpoint_every, int)
                                             and checkpoint_every >= 1):
        raise FlagError("--checkpoint-every", f"expected an int >= 1 (steps between "
                                              f"checkpoints), got {checkpoint_every!r}")
    if private is not None:  # DP-SGD: Poisson batches of mean batch_size, the manual pass
        private = privacy.check(**private, n_train=n_train)
        if grad == "autodiff" or devices != 1:
            raise FlagError("--private", f"runs with --grad manual on one device, got --grad "
                                         f"{grad} --devices {devices}")
        grad = "manual"
        computation = dict(computation, private=dict(private, sampling=privacy.SAMPLING))
    name = computation["model"] if computation["model"] != "mlp" else data.name
    out = os.path.join("runs", name) if out is None else str(out)
    check_writable(out)
    computation = dict(computation, optimizer=optimizer, lr=float(lr), batch_size=batch_size,
                       seed=seed, grad=grad, dtype=np.dtype(dtype).name)
    return dict(data=data, net=task.model, task=task, optimizer=optimizer,
                optax=OPTIMIZERS[optimizer](float(lr)), lr=float(lr),
                steps=steps, batch_size=batch_size, seed=seed, devices=devices, out=out,
                grads=("manual", "autodiff") if grad == "both" else (grad,),
                checkpoint_every=checkpoint_every, computation=computation, private=private)


def main(*, model: str = MODEL, dataset: str | None = None, sizes=None, activations=None,
         loss: str = LOSS, optimizer: str = OPTIMIZER, lr: float | None = None,
         steps: int | None = None, batch_size: int | None = None, seed: int = SEED,
         grad: str = GRAD, x64: bool = False, devices=DEVICES, out: str | None = None,
         quiet: bool = False, checkpoint_every: int | None = None, resume: bool = False,
         private: bool = False, max_norm: float = 1.0, noise_multiplier: float = 1.1,
         delta: float = privacy.DELTA) -> dict:
    """Trains, prints a summary, writes the outputs; returns the results dict (as results.json).

    Args:
      model: "mlp" (``jaxbp.Network``, the default), "cnn", "transformer", "rnn", "lstm" or
        "gru" (``jaxbp.nn`` models with fixed data: see ``experiments/_tasks.py``).
      dataset: one of ``jaxbp.datasets.NAMES`` for the mlp (None: digits).
      sizes: full layer sizes "64,64,10" or a tuple; None: the dataset's preset.
      activations: one name per layer; None: the preset's hidden activation, then the loss's.
      loss: a ``jaxbp.LOSSES`` name (binary_nll/hinge only on two-class data).
      optimizer: a name in ``OPTIMIZERS``; lr its learning rate (None: the preset).
      steps: optimizer steps (None: the preset); batch_size: examples per step (None: 128,
        16 for the transformer).
      seed: init and batch order (the data and its split are fixed).
      grad: "manual", "autodiff" or "both" (same init, same batches).
      x64: float64 instead of float32.
      devices: how many devices to split each batch over, or "all".
      out: output directory (None: runs/<dataset>, or runs/cnn, runs/transformer).
      quiet: no progress bar.
      checkpoint_every: save a checkpoint in OUT/checkpoints every this many steps (and at
        the last); None: none.
      resume: go on from the latest checkpoint in OUT/checkpoints (same computation flags;
        ``steps`` may be larger, ``devices`` may differ).
      private: DP-SGD (``jaxbp.make_step(..., private=...)``, manual grad, one device):
        each step's batch is Poisson-sampled with rate q = batch_size / N (padded and
        masked), each example's gradient clipped to ``max_norm``, Gaussian noise of
        standard deviation ``noise_multiplier`` · max_norm added to the sum; ε at
        ``delta`` (dp-accounting's RDP accountant) goes into the summary as ``epsilon``.
    """
    if x64:
        jax.config.update("jax_enable_x64", True)
    dtype = np.float64 if x64 else np.float32
    cfg = resolve(dataset=dataset, sizes=sizes, activations=activations, loss=loss,
                  optimizer=optimizer, lr=lr, steps=steps, batch_size=batch_size, seed=seed,
                  grad=grad, devices=devices, out=out, dtype=dtype,
                  checkpoint_every=checkpoint_every, model=model,
                  private=dict(max_norm=max_norm, noise_multiplier=noise_multiplier,
                               delta=delta) if private else None)
    start = checkpoint.start_step(os.path.join(cfg["out"], "checkpoints"),
                                  computation=cfg["computation"], steps=cfg["steps"],
                                  resume=resume, checkpoint_every=checkpoint_every)
    data, net = cfg["data"], cfg["net"]
    title = (f"{data.name} {cfg['task'].description}, {cfg['optimizer']} lr={cfg['lr']:g}, "
             f"B={cfg['batch_size']}")
    lead = jax.process_index() == 0
    if lead:
        print(backend_line(cfg["devices"], dtype))
        print(f"{title}: {cfg['steps']} steps, {len(data.y_train)} train / {len(data.y_test)} test")
        if start is not None:
            print(f"resuming at step {start} from "
                  f"{os.path.join(cfg['out'], 'checkpoints', str(start))}")
    run = train(cfg, dtype=dtype, quiet=quiet, start=start)
    summary = dict(model=model, dataset=data.name, steps=cfg["steps"], devices=cfg["devices"],
                   dtype=np.dtype(dtype).name, backend=jax.default_backend(),
                   processes=jax.process_count(), batch_size=cfg["batch_size"], seed=seed)
    if model == "mlp":
        summary.update(sizes=list(net.sizes), activations=list(net.activations))
    else:
        summary.update(modules=[m.name for m in net.modules])
    summary.update(loss=net.loss_name, optimizer=cfg["optimizer"], lr=cfg["lr"],
                   jax_version=jax.__version__, title=title)
    for g in ("manual", "autodiff"):
        r = run["results"].get(g)
        summary[g] = None if r is None else {k: v for k, v in r.items() if k != "params"}
    summary["max_param_diff"] = run["max_param_diff"]
    if cfg["task"].extras is not None:  # the char models: bigram baseline, sampled names
        summary.update(cfg["task"].extras(run["results"][cfg["grads"][0]]["params"]))
    if cfg["private"]:
        q = cfg["batch_size"] / len(data.y_train)
        dp_steps = run["counters"]["dp_steps"]
        summary["epsilon"] = privacy.epsilon(noise_multiplier=cfg["private"]["noise_multiplier"],
                                             q=q, steps=dp_steps, delta=cfg["private"]["delta"])
        summary["private"] = dict(cfg["private"], sampling=privacy.SAMPLING, sampling_rate=q,
                                  expected_batch_size=cfg["batch_size"],
                                  padded_batch_size=run["capacity"], dp_steps=dp_steps,
                                  dropped_examples=run["counters"]["dropped"],
                                  accountant="dp_accounting RDP")
    if lead:
        print_summary(summary)
        names = write_outputs(cfg, run, summary, cfg["out"])
        print(f"wrote {os.path.join(cfg['out'], '')}{{{', '.join(names)}}}")
    return summary


def build_parser() -> argparse.ArgumentParser:
    presets = "; ".join(f"{name}: hidden {','.join(map(str, p['hidden']))} {p['activation']}, "
                        f"{p['steps']} steps, lr {p['lr']:g}" for name, p in PRESETS.items())
    p = Parser(prog="train.py", description=__doc__.split("\n\n")[0],
               epilog=f"Per-dataset defaults: {presets}.")
    p.add_argument("--model", default=MODEL,
                   help=f"{allowed(tasks.MODELS)} (default {MODEL}); the others are jaxbp.nn "
                        f"models with their own data (cnn: digits as 8x8x1 images; transformer: "
                        f"counting sequences; rnn, lstm, gru: characters of first names)")
    p.add_argument("--dataset", default=None,
                   help=f"for the mlp: {allowed(datasets.NAMES)} (default {DATASET})")
    p.add_argument("--sizes", default=None,
                   help="comma-separated layer sizes, inputs first, e.g. 64,128,10")
    p.add_argument("--activations", default=None,
                   help=f"one per layer, comma-separated; {allowed(jaxbp.ACTIVATIONS)}")
    p.add_argument("--loss", default=LOSS, help=f"{allowed(jaxbp.LOSSES)} (default {LOSS})")
    p.add_argument("--optimizer", default=OPTIMIZER,
                   help=f"{allowed(OPTIMIZERS)} (default {OPTIMIZER})")
    p.add_argument("--lr", type=float, default=None, help="learning rate")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"(default {BATCH_SIZE}; transformer "
                        f"{MODEL_PRESETS['transformer']['batch_size']})")
    p.add_argument("--seed", type=int, default=SEED, help=f"init and batch order (default {SEED})")
    p.add_argument("--grad", default=GRAD, help=f"manual, autodiff or both (default {GRAD})")
    p.add_argument("--x64", action="store_true", help="float64 instead of float32")
    p.add_argument("--devices", default=str(DEVICES),
                   help=f"devices to split each batch over (data parallel): an int or all "
                        f"(default {DEVICES})")
    p.add_argument("--out", default=None, help="output directory (default runs/<dataset>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="save a checkpoint (Orbax) in OUT/checkpoints every N steps and at the "
                        "last; the last few are kept")
    p.add_argument("--resume", action="store_true",
                   help="go on from the latest checkpoint in OUT/checkpoints; the flags that "
                        "change the computation must match, --steps may grow")
    p.add_argument("--private", action="store_true",
                   help="DP-SGD: Poisson-sampled batches (mean --batch-size), per-example "
                        "clipping and Gaussian noise; reports epsilon (needs jaxbp[privacy])")
    p.add_argument("--max-norm", type=float, default=1.0, metavar="C",
                   help="with --private: per-example clipping norm (default 1.0)")
    p.add_argument("--noise-multiplier", type=float, default=1.1, metavar="SIGMA",
                   help="with --private: noise std / max norm (default 1.1)")
    p.add_argument("--delta", type=float, default=privacy.DELTA,
                   help=f"with --private: the delta of (epsilon, delta) (default {privacy.DELTA:g})")
    p.add_argument("--distributed", action="store_true",
                   help="multi-host: call jax.distributed.initialize() first (auto-detects "
                        "SLURM, Open MPI, Cloud TPU; or pass the three flags below)")
    p.add_argument("--coordinator", default=None, help="with --distributed: host:port of process 0")
    p.add_argument("--num-processes", type=int, default=None, help="with --distributed")
    p.add_argument("--process-id", type=int, default=None, help="with --distributed")
    return p


def cli(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.distributed:
        jax.distributed.initialize(coordinator_address=args.coordinator,
                                   num_processes=args.num_processes, process_id=args.process_id)
    devices = args.devices
    if devices != "all":
        try:
            devices = int(devices)
        except ValueError:
            parser.error(f"argument --devices: expected an int or 'all', got {devices!r}")
    try:
        main(model=args.model, dataset=args.dataset, sizes=args.sizes, activations=args.activations,
             loss=args.loss, optimizer=args.optimizer, lr=args.lr, steps=args.steps,
             batch_size=args.batch_size, seed=args.seed, grad=args.grad, x64=args.x64,
             devices=devices, out=args.out, quiet=args.quiet,
             checkpoint_every=args.checkpoint_every, resume=args.resume,
             private=args.private, max_norm=args.max_norm,
             noise_multiplier=args.noise_multiplier, delta=args.delta)
    except FlagError as e:
        parser.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
