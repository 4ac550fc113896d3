"""Command-line interface: ``visionkit <command>`` (also ``python -m visionkit <command>``).

Each command lives in its own module, which exposes ``register(subparsers)``; that function adds a sub-parser
and sets its ``run`` default to a callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
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


def build_parser() -> argparse.ArgumentParser:
    """Build the ``visionkit`` argument parser with every command registered."""
    parser = argparse.ArgumentParser(prog="visionkit", description="visionkit command-line tools")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)
