"""``jaxbp.cli``: the ``jaxbp`` command and its subcommands, the top layer.

One module per subcommand (``demo``, ``explain``, ``verify``, ``selftest``), each
adding itself with ``add_parser(subparsers)``; ``_args`` holds the flags they
share. ``python -m jaxbp`` and the ``jaxbp`` console script both call ``main``.

May import every other jaxbp layer; nothing in jaxbp imports it.
"""

from jaxbp.cli._main import build_parser, main

__all__ = ["build_parser", "main"]
