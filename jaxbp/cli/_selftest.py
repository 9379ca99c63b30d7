"""`jaxbp selftest`: the verifier on the catalog of classic backprop bugs (see ``_selftest``)."""

from __future__ import annotations

import argparse
import json

from jaxbp.check._selftest import BATCH, format_summary, selftest


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "selftest", help="run the verifier on a catalog of classic backprop bugs",
        description="Applies every mutant of the bug catalog (and four correct backprops) to "
                    "random configurations and reports mutants caught, layers and suspects "
                    "right, and false alarms. Exit 0 when every effective mutant is caught at "
                    "the right layer with no false alarm.")
    p.add_argument("--configs", type=int, default=500, help="random configurations (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=BATCH, help="examples per configuration")
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON to PATH")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.configs < 1:
        raise ValueError(f"--configs: expected a positive number, got {args.configs}")
    if args.batch < 2:
        raise ValueError(f"--batch: expected at least 2 examples, got {args.batch}")

    def progress(i, n):
        if not args.quiet and (i % 10 == 0 or i == n):
            print(f"\r  {i}/{n} configurations", end="", flush=True)

    result = selftest(args.configs, seed=args.seed, batch=args.batch, progress=progress)
    if not args.quiet:
        print()
    print(format_summary(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0 if result["passed"] else 1
