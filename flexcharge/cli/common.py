"""What several `flexcharge` commands share: exit codes, reporting problems, loading a station,
the `--api` option, progress bars and opening the telemetry writer."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from base.config import ApiSettings, Station, load_station
from base.loading import ConfigError

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
