"""The `flexcharge` command: check a config, run (and reload) the daemon, simulate hardware, demo."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import Console

from flexcharge import logs

from . import certs, config, demo, run, simulate, tariffs
from .common import EXIT_BAD_CONFIG, EXIT_FAILURE, EXIT_OK, Parser

__all__ = ["EXIT_BAD_CONFIG", "EXIT_FAILURE", "EXIT_OK", "build_parser", "main"]

# In the order `flexcharge --help` lists their commands.
COMMANDS = (config, run, simulate, tariffs, certs, demo)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = Parser(prog="flexcharge", description=__doc__)
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the least severe log messages shown (the demo shows WARNING and above for INFO)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="one of:")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flexcharge` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        # Logs and pipes are read later, in wider windows than the 80 columns rich assumes.
        console = Console(width=160)
    if args.command == "demo":
        logs.configure("WARNING" if args.log_level == "INFO" else args.log_level, console)
    else:
        logs.configure(args.log_level)
    try:
        return int(args.func(args, console))
    except KeyboardInterrupt:
        return EXIT_OK
