"""The `jaxbp` command line. Each subcommand lives in its own module and adds
itself with ``add_parser(subparsers)``."""

from __future__ import annotations

import argparse
import sys

from jaxbp.cli import _demo, _explain as _explain_cli, _selftest as _selftest_cli, _verify as _verify_cli

_SUBCOMMANDS = (_demo, _explain_cli, _verify_cli, _selftest_cli)


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
