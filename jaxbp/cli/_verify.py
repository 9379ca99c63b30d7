"""`jaxbp verify MODULE:FUNCTION`: check your own backprop from the command line.

FUNCTION is ``backprop(params, x, y)`` for one example (or, with
``--batched``, ``backprop(params, X, Y)`` returning the batch mean), returning
a tuple of ``jaxbp.Dense`` shaped like params. If its first parameter is named
``net`` it is called as ``backprop(net, params, x, y)``, so one function can
serve every architecture. MODULE is a dotted module name importable from the
current directory, or a path to a ``.py`` file.

Exit status: 0 when the gradients agree, 1 when they are wrong (or your
function raises or returns the wrong shapes), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import inspect
import json
import os
import sys


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify", help="check your hand-written backprop against jax.grad",
        description="Imports FUNCTION from MODULE, runs it on a random network, parameters and "
                    "batch, and compares it with float64 jax.grad: which layer is wrong and "
                    "which factor of the chain rule (loss, activation, link, weight, bias, "
                    "batch). Exit 0 when right, 1 when wrong, 2 on usage errors.",
        epilog="example: jaxbp verify mybackprop:backprop --sizes 5,6,3 "
               "--activations tanh,softmax --loss nll")
    p.add_argument("target", metavar="MODULE:FUNCTION",
                   help="your backprop: a module importable from the current directory (or a "
                        ".py path) and a function in it")
    p.add_argument("--sizes", required=True, help="comma-separated layer sizes, e.g. 5,6,3")
    p.add_argument("--activations", required=True, help="one activation per layer, e.g. "
                                                         "tanh,softmax")
    p.add_argument("--loss", required=True, help="squared, hinge, binary_nll or nll")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--batch", type=int, default=32, help="examples (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batched", action="store_true",
                   help="FUNCTION takes (params, X, Y) and returns the batch-mean gradient")
    p.add_argument("--rtol", type=float, help="explicit relative budget")
    p.add_argument("--atol", type=float, help="explicit absolute budget")
    p.add_argument("--finite-differences", action="store_true",
                   help="also compare with central differences (a third opinion)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--html", metavar="FILE",
                   help="also write the report as a standalone HTML page (table and plot, "
                        "the plot embedded; opens with no network access)")
    p.set_defaults(func=run)


def load_function(target: str):
    """MODULE:FUNCTION -> the function; ValueError with the reason otherwise."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"MODULE:FUNCTION: expected e.g. mymodule:backprop, got {target!r}")
    if module_name.endswith(".py") or os.sep in module_name:
        path = os.path.abspath(module_name)
        if not os.path.isfile(path):
            raise ValueError(f"MODULE:FUNCTION: no such file {module_name!r}")
        name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, os.path.dirname(path))
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            raise ValueError(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ValueError(f"cannot import module {module_name!r} from {os.getcwd()}: {e}") \
                from e
        except Exception as e:
            raise ValueError(f"importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"module {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{target!r} is not a function but a {type(obj).__name__}")
    return obj


def _bind_net(fn, net):
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return fn
    return functools.partial(fn, net) if params and params[0] == "net" else fn


def run(args: argparse.Namespace) -> int:
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    import jaxbp
    from jaxbp.check._selftest import random_problem
    from jaxbp.check._verify import BackpropError
    from jaxbp.cli._args import network_from_args

    if args.batch < 1:
        raise ValueError(f"--batch: expected a positive number, got {args.batch}")
    net = network_from_args(args)
    fn = _bind_net(load_function(args.target), net)
    params, X, Y = random_problem(net, args.seed, args.batch, jnp.dtype(args.dtype))
    try:
        report = jaxbp.verify(net, params, X, Y, backprop=fn, batched=args.batched,
                              rtol=args.rtol, atol=args.atol,
                              finite_differences=args.finite_differences)
    except BackpropError as e:
        if args.html:
            _write_html(args.html, _error_page(str(e), args.target))
        if args.json:
            print(json.dumps({"ok": False, "error": str(e)}))
        else:
            print(f"jaxbp verify: WRONG — {e}")
        return 1
    if args.html:
        from jaxbp.check import _report_view

        _write_html(args.html, _report_view.page(report._view(),
                                                 title=f"jaxbp verify {args.target}"))
    print(report.to_json(indent=2) if args.json else str(report))
    return 0 if report.ok else 1


def _error_page(message: str, target: str) -> str:
    """A standalone page for a backprop that could not be compared (it raised)."""
    from jaxbp.check import _report_view

    view = _report_view.View(False, f"jaxbp verify: WRONG — {message}", (), ())
    return _report_view.page(view, title=f"jaxbp verify {target}")


def _write_html(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise ValueError(f"--html: cannot write {path!r}: {e}") from e
