"""What several `flexcharge` commands share: exit codes, reporting problems, loading a station,
the `--api` option, progress bars and opening the telemetry writer."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, time
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from rich.console import Console

from base.config import Station, load_station
from base.loading import ConfigError
from base.stationsettings import ApiSettings

if TYPE_CHECKING:
    from rich.progress import Progress

    from controller.telemetry.writer import TelemetryWriter

log = logging.getLogger("flexcharge")

# Each command imports what only it needs (the simulator, matplotlib, the daemon) inside its
# function, so that `check-config` on an operator's box starts fast and needs none of them.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_CONFIG = 2

FAULTS_HELP = "faults to inject, CSV start,end,kind,target,value (see README)"
STATION_HELP = "the station file (TOML)"


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless it has none or its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default is None
            or action.default is False
            or action.default == []
            or action.default == argparse.SUPPRESS
            or (not action.option_strings and action.nargs is None)
        ):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit 2 (no usage block)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        """Print `message` on one line with where to find help, and exit 2."""
        message = message.removeprefix("argument ")
        self.exit(EXIT_BAD_CONFIG, f"{self.prog}: {message} (see {self.prog} --help)\n")


def positive_float(text: str) -> float:
    """An argument that must be a number above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number above 0")
    return value


def positive_int(text: str) -> int:
    """An argument that must be a whole number above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def count(text: str) -> int:
    """An argument that must be a whole number, 0 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def year(text: str) -> int:
    """A calendar year, 1900-2200."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a year") from None
    if not 1900 <= value <= 2200:
        raise argparse.ArgumentTypeError(f"{text!r} is not a year between 1900 and 2200")
    return value


def time_of_day(text: str) -> time:
    """A local time of day written HH:MM."""
    hours, sep, minutes = text.partition(":")
    if sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2:
        with contextlib.suppress(ValueError):
            return time(int(hours), int(minutes))
    raise argparse.ArgumentTypeError(f"{text!r} is not a time of day (HH:MM)")


def calendar_date(text: str) -> date:
    """A date written YYYY-MM-DD."""
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (write e.g. 2026-11-10)") from None


def path_text(text: str) -> str:
    """A file or directory name: not empty."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path names no file")
    return text


def existing_file(text: str) -> str:
    """A file that must exist already."""
    path_text(text)
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text!r}: no such file")
    return text


def directory(text: str) -> str:
    """A directory to write into: not empty, and not the name of an existing file."""
    path_text(text)
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a directory")
    return text


def host_name(text: str) -> str:
    """A host name or address: not empty, no spaces."""
    if not text or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address")
    return text


def print_problems(err: ConfigError, console: Console) -> None:
    """Every problem of a configuration error, one a line, under their count."""
    console.print(f"[bold red]{len(err.problems)} problem(s):[/]")
    for problem in err.problems:
        console.print(f"  - {problem}", highlight=False, markup=False, soft_wrap=True)


def print_error(exc: Exception, console: Console) -> None:
    """An error's message in bold red, as it is (no markup read into it)."""
    console.print(str(exc), style="bold red", highlight=False, markup=False, soft_wrap=True)


def load(path: Path, console: Console) -> Station | None:
    """The station file at `path`, or None after printing its problems."""
    try:
        return load_station(path)
    except ConfigError as err:
        print_problems(err, console)
        return None


def parse_api(text: str) -> tuple[str, int]:
    """`--api HOST:PORT` as a host (without IPv6 brackets) and a port."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def api_settings(args: argparse.Namespace, station: Station) -> ApiSettings | None:
    """The station's [api] settings, with `--api HOST:PORT` (which also enables it) applied."""
    settings = station.api
    if args.api is None:
        return settings
    host, port = args.api
    return (settings or ApiSettings()).model_copy(update={"host": host, "port": port})


@contextmanager
def progress_bars(console: Console) -> Iterator[Progress]:
    """Progress bars with the time left, on a terminal only, cleared when done."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
    )
    with Progress(
        *columns, console=console, disable=not console.is_terminal, transient=True
    ) as progress:
        yield progress


def open_telemetry(
    station: Station,
    station_file: Path,
    console: Console,
    *,
    directory: Path | None = None,
    local_store: Path | None = None,
    buffer_dir: Path | None = None,
) -> TelemetryWriter | int | None:
    """The writer [telemetry] asks for (None if disabled), its files in `directory` (by default
    the state directory's telemetry/) unless given, or EXIT_BAD_CONFIG after printing why (a
    token variable unset, a store or buffer file that is not one)."""
    from controller.telemetry.files import TelemetryError
    from controller.telemetry.writer import writer_for

    from .dirs import DirsError, resolve

    try:
        if directory is None:
            directory = resolve().telemetry
        return writer_for(
            station,
            station_file,
            directory=directory,
            local_store=local_store,
            buffer_dir=buffer_dir,
        )
    except ConfigError as err:
        print_problems(err, console)
    except (TelemetryError, DirsError) as exc:
        print_error(exc, console)
    return EXIT_BAD_CONFIG
