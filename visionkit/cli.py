"""Command-line interface: ``visionkit <command>`` (also ``python -m visionkit <command>``).

Each command lives in its own module, which exposes ``register(subparsers)``; that function adds a sub-parser
and sets its ``run`` default to a callable taking the parsed namespace and returning an exit code.

A command that refuses its input (a misspelt variant, a checkpoint that does not fit, a file that cannot be read or
written) raises ``ValueError``, ``TypeError`` or ``OSError``; :func:`main` prints the message after
``visionkit COMMAND: error:``, as argparse does for its own errors, and returns 2. A missing optional package
(``ImportError``) gets the same treatment, naming the extra that installs it. ``--traceback`` lets the exception
through instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Optional

__all__ = ["main"]

#: Modules that provide a command, in the order ``--help`` lists them.
COMMAND_MODULES = (
    "visionkit.contrib.summary",
    "visionkit.contrib.checkpoint_cli",
    "visionkit.contrib.export",
    "visionkit.contrib.benchmark",
    "visionkit.demo",
)


#: The setup.cfg extra that installs what a command needs beyond the core packages.
_EXTRAS = {"benchmark": "bench", "export": "export", "demo": "demo"}
#: pip names of modules whose import name differs
_PIP_NAMES = {"sklearn": "scikit-learn"}


def _version() -> str:
    import torch

    from . import __version__

    return f"visionkit {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    """Build the ``visionkit`` argument parser with every command registered."""
    parser = argparse.ArgumentParser(prog="visionkit", description="visionkit command-line tools")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument(
        "--traceback", action="store_true", help="on an error, show the Python traceback instead of just the message"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the process exit code (2 for input the command refused)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except ImportError as error:  # an optional package of an extra (benchmark: transformers, export: onnxscript)
        if args.traceback:
            raise
        extra = _EXTRAS.get(args.command)
        hint = f"pip install -e '.[{extra}]'" if extra else "see README.rst"
        package = _PIP_NAMES.get(error.name or "", error.name) or error
        print(f"{parser.prog} {args.command}: error: this command needs {package}, which is not "
              f"installed ({hint})", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, as other command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that flushing at exit does not fail again
        return 1
    except (ValueError, TypeError, OSError) as error:
        if args.traceback:
            raise
        message = str(error) or type(error).__name__
        print(f"{parser.prog} {args.command}: error: {message}", file=sys.stderr)
        return 2
