"""`jaxbp demo`: build a net, run manual backprop, compare with jax.grad."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="manual backprop vs jax.grad on a random net",
        description="Builds a small net, runs jaxbp's manual backprop on random data and prints "
                    "its agreement with jax.grad per layer.")
    p.add_argument("--sizes", default="4,16,16,3", help="comma-separated layer sizes")
    p.add_argument("--activations", default="tanh,relu,softmax", help="one name per layer")
    p.add_argument("--loss", default="nll")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--x64", action="store_true", help="run in float64")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp

    if args.x64:
        jax.config.update("jax_enable_x64", True)
    from jaxbp.core._tolerances import relative_error, rtol_for
    from jaxbp.cli._args import network_from_args
    from jaxbp.check._selftest import random_targets

    net = network_from_args(args)
    dtype = jnp.float64 if args.x64 else jnp.float32
    kp, kx, ky = jax.random.split(jax.random.key(args.seed), 3)
    params = net.init(kp, dtype=dtype)
    X = jax.random.normal(kx, (args.batch, net.sizes[0]), dtype)
    Y = random_targets(net, ky, args.batch, dtype)

    manual = jax.jit(net.grad)(params, X, Y)
    auto = jax.grad(net.batch_loss)(params, X, Y)
    tol = rtol_for(dtype)
    print(f"{net}\nbackend={jax.default_backend()} dtype={jnp.dtype(dtype).name} B={args.batch}")
    print(f"{'layer':>5} {'param':>5} {'shape':>10} {'rel. error vs jax.grad':>24}")
    worst = 0.0
    for l, (g, r) in enumerate(zip(manual, auto), start=1):
        for name in ("W", "W0"):
            err = relative_error(getattr(g, name), getattr(r, name))
            worst = max(worst, err)
            print(f"{l:>5} {name:>5} {str(getattr(g, name).shape):>10} {err:>24.3e}")
    ok = worst <= tol
    print(f"{'AGREE' if ok else 'DISAGREE'}: worst {worst:.3e} (tolerance {tol:.0e})")
    return 0 if ok else 1
