"""`kaito-tune`: one command line for validating, rendering and moving artifacts.

Each command group lives beside the code it drives and exposes ``register(subparsers)``; this module
only assembles them, so the CLI never grows a second copy of any logic.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that add subcommands; each defines register(subparsers) and sets `func` on its parsers.
COMMAND_MODULES: tuple[str, ...] = (
    "tuning_controller.cli_workspace",
    "tuning_controller.cli_status",
    "artifacts.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kaito-tune",
        description="Validate, render and run KAITO tuning Workspaces; push and pull adapter artifacts.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
