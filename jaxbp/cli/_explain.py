"""`jaxbp explain`: the notes' chain of factors for one weight (see ``_explain``)."""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from jaxbp.core import _chain
from jaxbp.cli._args import network_from_args
from jaxbp.core._explain import explain
from jaxbp.check._selftest import random_targets


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "explain", help="the notes' chain of factors for one weight, with values",
        description="Prints the notes' chain rule for ∂L/∂W^l of a net, factor by factor. "
                    "With --seed (or --x/--y) it draws random parameters (and x, y) and shows "
                    "each factor's value, their product and jax.grad's gradient.")
    p.add_argument("--sizes", default="1,1,1", help="comma-separated layer sizes (default 1,1,1)")
    p.add_argument("--activations", default="tanh,sigmoid", help="one name per layer")
    p.add_argument("--loss", default="squared")
    p.add_argument("--layer", type=int, default=1, help="l in 1..L: explain ∂L/∂W^l (default 1)")
    p.add_argument("--latex", action="store_true", help="LaTeX (matplotlib mathtext) output")
    p.add_argument("--seed", type=int, default=None,
                   help="show values: random params (and x, y unless given) from this seed")
    p.add_argument("--x", default=None, help="comma-separated input x (implies values)")
    p.add_argument("--y", default=None, help="comma-separated target y (implies values)")
    p.add_argument("--x64", action="store_true", help="compute the values in float64")
    p.set_defaults(func=run)


def _floats(name: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--{name}: expected comma-separated numbers, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    if args.x64:
        jax.config.update("jax_enable_x64", True)
    net = network_from_args(args)
    _chain.check_layer(net, args.layer)
    params = x = y = None
    if args.seed is not None or args.x is not None or args.y is not None:
        dtype = jnp.float64 if args.x64 else jnp.float32
        kp, kx, ky = jax.random.split(jax.random.key(args.seed or 0), 3)
        params = net.init(kp, dtype=dtype)
        x = (jnp.asarray(_floats("x", args.x), dtype) if args.x is not None
             else jax.random.normal(kx, (net.sizes[0],), dtype))
        y = (jnp.asarray(_floats("y", args.y), dtype) if args.y is not None
             else random_targets(net, ky, 1, dtype)[0])
    print(explain(net, layer=args.layer, params=params, x=x, y=y,
                  format="latex" if args.latex else "text"))
    return 0
