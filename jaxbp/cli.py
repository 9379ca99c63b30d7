"""The `jaxbp` command line. Each subcommand lives in its own module and adds
itself with ``add_parser(subparsers)``."""

from __future__ import annotations

import argparse
import sys

from jaxbp import _demo, _explain, _selftest, _verify_cli

_SUBCOMMANDS = (_demo, _explain, _verify_cli, _selftest)


def network_from_args(args: argparse.Namespace):
    """The ``Network`` named by a subcommand's --sizes, --activations and --loss flags."""
    from jaxbp._network import Network

    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError:
        raise ValueError(f"--sizes: expected comma-separated ints, got {args.sizes!r}") from None
    return Network(sizes=sizes, activations=tuple(args.activations.split(",")), loss=args.loss)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxbp", description="Hand-written backprop in JAX, checked against jax.grad.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in _SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as e:
        print(f"jaxbp {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
