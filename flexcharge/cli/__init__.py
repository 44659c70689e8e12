"""The `flexcharge` command: check a config, run (and reload) the daemon, simulate hardware, demo."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from rich.console import Console
from rich.logging import RichHandler

from . import certs, config, demo, run, simulate, tariffs
from .common import EXIT_BAD_CONFIG, EXIT_FAILURE, EXIT_OK

__all__ = ["EXIT_BAD_CONFIG", "EXIT_FAILURE", "EXIT_OK", "build_parser", "main"]

# In the order `flexcharge --help` lists their commands.
COMMANDS = (config, run, simulate, tariffs, certs, demo)


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="flexcharge", description=__doc__)
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)
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
        _setup_logging("WARNING" if args.log_level == "INFO" else args.log_level, console)
    else:
        _setup_logging(args.log_level)
    try:
        return int(args.func(args, console))
    except KeyboardInterrupt:
        return EXIT_OK


def _setup_logging(level: str, console: Console | None = None) -> None:
    handler: logging.Handler
    if console is not None:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Our drivers report every device failure once, with the device named; pymodbus's own
    # messages about the same failures would only repeat them, every cycle.
    logging.getLogger("pymodbus").setLevel(
        logging.DEBUG if level.upper() == "DEBUG" else logging.CRITICAL
    )
