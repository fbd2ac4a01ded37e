"""The ``cellsparse`` command: the command-line front end of the engine (no window, no Qt).

One module per command or tight group of commands, each with its ``register(sub)`` and its
``run`` functions; this module builds the parser and turns the engine's errors into a message
and an exit status, in one place."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from ..core.errors import CellsparseError
from . import batch, count, measure, models, sam, serve, train
from ._common import HelpFormatter

__all__ = ["build_parser", "main"]

DESCRIPTION = (
    "Cell segmentation from a few annotated cells, without a window: SAM prompts, training, "
    "prediction, batches on Dask, measurements, counting and the server for QuPath. "
    "'cellsparse COMMAND -h' lists a command's options."
)

# In the order ``cellsparse -h`` lists them.
COMMANDS = (sam, train, batch, measure, serve, count, models)


def build_parser() -> argparse.ArgumentParser:
    """The ``cellsparse`` argument parser."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="cellsparse", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"cellsparse {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cellsparse``; returns the exit status (2 for a problem the user can fix)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return int(args.func(args))
    except CellsparseError as err:
        print(f"cellsparse: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cellsparse: interrupted", file=sys.stderr)
        return 130
