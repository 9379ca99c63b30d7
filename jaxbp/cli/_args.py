"""What the command line's subcommands share: the net named by --sizes, --activations, --loss."""

from __future__ import annotations

import argparse

from jaxbp.core._network import Network


def network_from_args(args: argparse.Namespace):
    """The ``Network`` named by a subcommand's --sizes, --activations and --loss flags."""
    try:
        sizes = tuple(int(s) for s in args.sizes.split(","))
    except ValueError:
        raise ValueError(f"--sizes: expected comma-separated ints, got {args.sizes!r}") from None
    return Network(sizes=sizes, activations=tuple(args.activations.split(",")), loss=args.loss)
