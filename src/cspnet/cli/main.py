"""``cspnet`` entry point: dispatches to one module per subcommand, turns errors into one line.

Two kinds of failure, told apart by their exception type:

* bad input, a missing or unwritable file, a full disk, a missing package: the user's to fix.
  One line ``cspnet CMD: error: ...``, exit status 2. These are the project's own
  :class:`CLIError`, ``ValueError`` (which ``CheckpointError``, ``UnknownModelError`` and every
  checked field raise), ``OSError`` (printed as ``FILE: reason``, without ``[Errno N]``),
  ``ModuleNotFoundError`` and ``MemoryError``.
* anything else (``TypeError``, ``KeyError``, ``IndexError``, a ``RuntimeError`` from torch...) is a
  bug in cspnet, whatever input caused it: one line ``cspnet CMD: internal error ...`` naming the
  exception and asking for a report with the traceback of ``cspnet -v CMD ...``, exit status 1.

``-v`` shows the traceback of either kind.

A subcommand module ``cspnet.cli.<name>`` defines ``add_parser(subparsers)`` which registers its
parser and sets ``func`` (called with the parsed arguments, returning an exit code). Only the module
of the command being run is imported; the others appear in ``cspnet --help`` through their one-line
help in :data:`COMMANDS` (a test checks it matches the modules). Modules import their heavy
dependencies inside ``func``, so ``cspnet --help`` and ``cspnet --version`` never load torch.

Output cut short by the reader (``cspnet models | head -1``) ends quietly with status 141, as a
process killed by SIGPIPE would.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence

# Every subcommand with its one-line help, in the order of ``cspnet --help``.
COMMANDS = {
    "models": "list the registered models with their parameter counts",
    "profile": "parameters, MACs, darknet BFLOPs, CIO and activation memory (per stage)",
    "reproduce": "regenerate docs/reproduction.md: published vs measured costs, CSP ablation, plots",
    "train": "train a model (Lightning: CPU, GPUs, DDP, multi-node)",
    "eval": "evaluate a `cspnet train` checkpoint or an exported file (top-1, top-5, loss, confusion matrix)",
    "predict": "classify images with a `cspnet train` checkpoint or an exported file",
    "demo": "train a CSPDenseNet and its DenseNet twin on the digits, compare them",
    "export": "export a model to ONNX or TorchScript (checked against PyTorch)",
    "benchmark": "inference / training throughput, latency and peak memory",
    "detect": "train, evaluate, predict with and export object detectors",
}
# Commands that only run inference keep freed memory in the process (``benchmark`` decides per row).
INFERENCE_COMMANDS = ("eval", "predict", "export")
SIGPIPE_EXIT = 128 + 13


class CLIError(Exception):
    """An error meant for the user: printed as one line, exit status 2."""


# Exceptions whose message is already a user-facing explanation (bad input, not a bug).
# CheckpointError and UnknownModelError are ValueErrors; OSError covers missing, unwritable and
# full files and folders. Anything else is reported as a bug (BUG_EXIT).
USER_ERRORS: tuple[type[BaseException], ...] = (CLIError, ValueError, OSError, ModuleNotFoundError, MemoryError)
USER_ERROR_EXIT = 2
BUG_EXIT = 1


def user_message(exc: BaseException) -> str:
    """The one line shown for a user error: a system error as ``FILE: reason`` (no ``[Errno N]``).

    >>> user_message(OSError(28, "No space left on device", "out/model.onnx"))
    'out/model.onnx: No space left on device'
    >>> user_message(ValueError("a\\nb"))
    'a | b'
    """
    if isinstance(exc, OSError) and exc.strerror:
        files = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
        message = f"{files}: {exc.strerror}" if files else exc.strerror
    elif isinstance(exc, MemoryError):
        message = f"out of memory{': ' + str(exc) if str(exc) else ''} (a smaller batch or input size needs less)"
    else:
        message = str(exc).strip() or type(exc).__name__
    # One line: a multi-line message (a checkpoint mismatch report) is folded with " | ".
    return " | ".join(line.strip() for line in message.splitlines() if line.strip())


def bug_message(exc: BaseException, command: str = "COMMAND") -> str:
    """The one line shown for an exception that is not a user error: cspnet has a bug.

    >>> bug_message(KeyError("num_classes"), "eval")
    "internal error (a bug in cspnet): KeyError: 'num_classes'; please report it with the traceback that `cspnet -v eval ...` prints"
    """
    text = " ".join(str(exc).split())
    text = text if len(text) <= 200 else text[:197] + "..."
    return (f"internal error (a bug in cspnet): {type(exc).__name__}{': ' + text if text else ''}; "
            f"please report it with the traceback that `cspnet -v {command} ...` prints")  # fmt: skip


def _available(name: str) -> bool:
    return importlib.util.find_spec(f"cspnet.cli.{name}") is not None


def _command_in(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` runs: its first word that is not a top-level option."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The ``cspnet`` parser; ``command`` is the subcommand whose module is imported (``"*"``: all)."""
    from cspnet import __version__

    parser = argparse.ArgumentParser(
        prog="cspnet", description="Cross Stage Partial Networks: models, profiling, training, export."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    parser.add_argument("--version", action="version", version=f"cspnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        if not _available(name):
            continue
        if command in ("*", name):
            importlib.import_module(f"cspnet.cli.{name}").add_parser(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def _quiet_broken_pipe() -> int:
    # The reader has gone: send what is still buffered nowhere, so the exit flush cannot fail again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return SIGPIPE_EXIT


def _command_name(args: argparse.Namespace) -> str:
    """How messages name the command that ran: ``cspnet train``, ``cspnet detect val``."""
    action = getattr(args, "action", None)
    return " ".join(["cspnet", args.command, *([action] if action else [])])


def main(argv: Sequence[str] | None = None) -> int:
    from cspnet.runtime import default_openmp_wait_policy  # stdlib only: torch is not loaded yet

    default_openmp_wait_policy()  # the CLI's documented default; OpenMP reads it when torch loads
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command in INFERENCE_COMMANDS:
        from cspnet.runtime import tune_cpu_allocator

        tune_cpu_allocator()  # faster inference; see cspnet.runtime for why training is left alone
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try: a closed pipe surfaces here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print("cspnet: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        print(f"{_command_name(args)}: error: {user_message(exc)}", file=sys.stderr)
        return USER_ERROR_EXIT
    except Exception as exc:  # not the user's input: a bug, said so, with how to report it
        if args.verbose:
            raise
        print(f"{_command_name(args)}: {bug_message(exc, args.command)}", file=sys.stderr)
        return BUG_EXIT


if __name__ == "__main__":
    # `python -m cspnet.cli.main` (torchrun) runs this file as __main__: call the imported module's
    # main, so that CLIError is the class the commands raise (not a second copy of it).
    from cspnet.cli.main import main as _main

    sys.exit(_main())
