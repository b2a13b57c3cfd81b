"""``cspnet`` entry point: dispatches to one module per subcommand, turns errors into one line.

A subcommand module ``cspnet.cli.<name>`` defines ``add_parser(subparsers)`` which registers its
parser and sets ``func`` (called with the parsed arguments, returning an exit code). Modules import
their heavy dependencies inside ``func`` so that ``cspnet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence

# The order in which subcommands appear in ``cspnet --help``.
COMMANDS = ("models", "profile", "reproduce", "train", "eval", "predict", "demo", "export", "benchmark", "detect")
# Commands that only run inference keep freed memory in the process (``benchmark`` decides per row).
INFERENCE_COMMANDS = ("eval", "predict", "export")


class CLIError(Exception):
    """An error meant for the user: printed as one line, exit status 2."""


# Exceptions whose message is already a user-facing explanation (bad input, not a bug).
def _user_errors() -> tuple[type[BaseException], ...]:
    from cspnet.convert import CheckpointError

    return (CLIError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError, CheckpointError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cspnet", description="Cross Stage Partial Networks: models, profiling, training, export."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        if importlib.util.find_spec(f"cspnet.cli.{name}") is not None:
            importlib.import_module(f"cspnet.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command in INFERENCE_COMMANDS:
        from cspnet.runtime import tune_cpu_allocator

        tune_cpu_allocator()  # faster inference; see cspnet.runtime for why training is left alone
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("cspnet: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if args.verbose:
            raise
        message = str(exc).strip() or type(exc).__name__
        # One line: a multi-line message (a checkpoint mismatch report) is folded with " | ".
        print(f"cspnet {args.command}: error: {' | '.join(line.strip() for line in message.splitlines())}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
