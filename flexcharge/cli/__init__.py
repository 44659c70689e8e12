"""The `flexcharge` command: check a config, run (and reload) the daemon, simulate hardware, demo."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from rich.console import Console

from flexcharge import logs

from . import certs, config, demo, dirs, run, simulate, sweep, tariffs
from .common import (
    EXIT_BAD_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    Parser,
    count,
    positive_float,
    print_error,
)

__all__ = ["EXIT_BAD_CONFIG", "EXIT_FAILURE", "EXIT_OK", "build_parser", "main"]

# In the order `flexcharge --help` lists their commands.
COMMANDS = (config, run, simulate, tariffs, sweep, certs, demo)


def installed_version() -> str:
    """flexcharge's version, as installed (its package metadata)."""
    try:
        return version("flexcharge")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = Parser(prog="flexcharge", description=__doc__)
    parser.add_argument("--version", action="version", version=f"flexcharge {installed_version()}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the least severe log messages shown (the demo shows WARNING and above for INFO)",
    )
    parser.add_argument(
        "--log-file",
        metavar="PATH",
        help="also log to this file, rotated by size (a relative PATH is in $LOGS_DIRECTORY "
        "when systemd sets it)",
    )
    parser.add_argument(
        "--log-file-mb",
        type=positive_float,
        default=logs.LOG_FILE_BYTES / 1e6,
        metavar="MB",
        help="rotate the log file at this size (default %(default)g)",
    )
    parser.add_argument(
        "--log-file-keep",
        type=count,
        default=logs.LOG_FILE_KEEP,
        metavar="N",
        help="rotated log files kept (default %(default)d)",
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
    log_file = dirs.log_file(args.log_file) if args.log_file else None
    # The demo's live view shows warnings and worse, unless asked for more.
    level = "WARNING" if args.command == "demo" and args.log_level == "INFO" else args.log_level
    try:
        logs.configure(
            level,
            console if args.command == "demo" else None,
            log_file=log_file,
            log_file_bytes=int(args.log_file_mb * 1e6),
            log_file_keep=args.log_file_keep,
        )
    except OSError as exc:
        print_error(OSError(f"--log-file {log_file}: {exc.strerror or exc}"), console)
        return EXIT_BAD_CONFIG
    try:
        return int(args.func(args, console))
    except KeyboardInterrupt:
        return EXIT_OK
