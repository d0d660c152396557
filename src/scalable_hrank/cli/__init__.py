"""The ``hrank`` command line: one module per subcommand.

Each subcommand module defines ``add_parser(subparsers) -> argparse.ArgumentParser`` and
``run(args) -> int`` (the exit code). Exit codes mean one thing each (:data:`EXIT_CODES`):

- 0: every result is exact, certified or a converged estimate (or the command succeeded);
- 1: some result is only a bound (budget exhausted, infeasible count, too close to the noise
  floor), or sweep tasks are missing or failed;
- 2: bad arguments, input, files, environment or checkpoint: one line ``hrank: error: ...``
  naming the fix, no traceback (``-v`` shows it);
- 3: pre-empted after saving a checkpoint (rerun the same command to resume);
- 4: an unexpected internal error (a bug: the traceback is printed; please report it).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import re
import sys
import traceback
from collections.abc import Sequence

from scalable_hrank.cli.errors import EXIT_CODES, EXIT_INTERNAL, EXIT_USAGE, user_error_message

__all__ = ["EXIT_CODES", "build_parser", "main"]

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


def _no_abbreviations(parser: argparse.ArgumentParser) -> None:
    """Switch off prefix matching of long options in ``parser`` and all its subparsers.

    With abbreviations on, ``hrank submit rank --out r.json`` would silently mean ``--output``.
    """
    parser.allow_abbrev = False
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers nowhere else
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for child in action.choices.values():
                _no_abbreviations(child)


def _plain(text: str | None) -> str | None:
    """Docstring markup out of ``--help``: ``:func:`x``` -> x, double backquotes dropped."""
    if not text:
        return text
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return text.replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="hrank", allow_abbrev=False,
        description="Numerical rank of neural-network Hessians (H_L, H_O, H_F), matrix-free.",
        epilog="Exit codes: 0 exact/certified/converged, 1 only a bound, 2 bad input, "
               "3 pre-empted (rerun to resume), 4 internal error.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more logging (-v info, -vv debug) and tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS.values():
        try:
            mod = importlib.import_module(f"scalable_hrank.cli.{module}")
        except ModuleNotFoundError as exc:
            if exc.name == f"scalable_hrank.cli.{module}":
                continue
            raise
        p = mod.add_parser(sub)
        p.description = _plain(p.description)
        p.set_defaults(_run=mod.run)
    _no_abbreviations(parser)
    return parser


def _quiet_broken_pipe() -> int:
    """Stdout was closed by the reader (``hrank sweep --list | head``): stop quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hrank`` console script; returns the exit code."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        msg = f"unrecognized arguments: {' '.join(extras)}"
        if args.command == "submit" and getattr(args, "what", None) in ("rank", "command"):
            job = [*extras, *(w for w in getattr(args, "args", []) if w != "--")]
            msg += (f"; the arguments of the job go after `--`: hrank submit {args.what} "
                    f"[sbatch options] -- {' '.join(job)}")
        parser.error(msg)
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code = int(args._run(args))
        sys.stdout.flush()
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("hrank: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure gets a documented exit code
        message = user_error_message(exc)
        if message is None:
            traceback.print_exc()
            print(f"hrank: internal error: {type(exc).__name__}: {exc} (a bug; please report "
                  "it with the traceback above)", file=sys.stderr)
            return EXIT_INTERNAL
        if args.verbose:
            traceback.print_exc()
        print(f"hrank: error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_USAGE
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
