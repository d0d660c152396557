"""The ``hrank`` command line: one module per subcommand.

Each subcommand module defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int`` (the exit code). Exit codes: 0 success, 1 a run that failed or could not
certify what was asked (see each command), 2 bad arguments or input.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

#: Subcommand name -> module under scalable_hrank.cli.
SUBCOMMANDS: dict[str, str] = {
    "demo": "demo",
    "rank": "rank",
    "predict": "predict",
    "sweep": "sweep",
    "submit": "submit",
    "collect": "collect",
    "plot": "plot",
}


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="hrank",
        description="Numerical rank of neural-network Hessians (H_L, H_O, H_F), matrix-free.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        try:
            mod = importlib.import_module(f"scalable_hrank.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"scalable_hrank.cli.{module}":
                continue
            raise
        p = mod.add_parser(sub)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hrank`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"hrank {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
