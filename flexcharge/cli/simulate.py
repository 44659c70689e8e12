"""The commands on the simulated clock: `simulate` and `compare` (policies on one scenario) and
`sessions` (a seeded random sessions CSV); also the scenario loading `tariff compare` shares."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime, time
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from rich.console import Console

from base.config import Station
from base.loading import ConfigError

from .common import (
    EXIT_BAD_CONFIG,
    EXIT_OK,
    FAULTS_HELP,
    STATION_HELP,
    calendar_date,
    count,
    directory,
    load,
    open_telemetry,
    path_text,
    positive_float,
    positive_int,
    print_problems,
    progress_bars,
)

if TYPE_CHECKING:
    from rich.progress import TaskID

    from controller.telemetry.writer import TelemetryWriter
    from simulator.fast import Scenario
    from simulator.whatif import TariffCase

ALL_POLICIES = ("uncontrolled", "equal-share", "edf", "llf", "mpc", "offline-optimal")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `simulate`, `compare` and `sessions` to the command line."""
    simulate = sub.add_parser("simulate", help="run a scenario on the simulated clock (no sockets)")
    _scenario_arguments(simulate, "mpc")
    simulate.add_argument(
        "--telemetry",
        action="store_true",
        help="write the run to the station's [telemetry] database, or (without one) to "
        "OUT/telemetry.sqlite; one policy only",
    )
    simulate.set_defaults(func=cmd_simulate)

    compare = sub.add_parser("compare", help="every policy on one scenario, side by side")
    _scenario_arguments(compare, "all of them")
    compare.set_defaults(func=cmd_compare)

    sessions = sub.add_parser("sessions", help="write a seeded random sessions CSV for a station")
    sessions.add_argument("--station", required=True, type=path_text, help=STATION_HELP)
    sessions.add_argument(
        "--start", required=True, type=calendar_date, help="first local date, e.g. 2026-11-10"
    )
    sessions.add_argument("--days", type=positive_int, default=1, help="how many days")
    sessions.add_argument("--out", required=True, type=path_text, help="the CSV file to write")
    sessions.set_defaults(func=cmd_sessions)


def _scenario_arguments(parser: argparse.ArgumentParser, default_policies: str) -> None:
    parser.add_argument("--station", required=True, type=path_text, help=STATION_HELP)
    parser.add_argument("--tariff", type=path_text, help="a tariff file (default: the station's)")
    parser.add_argument(
        "--sessions", required=True, type=path_text, help="sessions CSV, or ACN-Data JSON"
    )
    add_site_arguments(parser)
    parser.add_argument("--faults", type=path_text, help=FAULTS_HELP)
    parser.add_argument(
        "--policy",
        action="append",
        choices=ALL_POLICIES,
        help=f"repeat for several (default: {default_policies})",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=directory,
        help="directory for metrics.json, timeseries.csv, plot.png",
    )
    parser.add_argument(
        "--step", type=positive_float, default=60.0, help="simulation step, s (default 60)"
    )
    parser.add_argument(
        "--plan-period",
        type=positive_float,
        default=300.0,
        help="re-plan at least this often, s (default 300; the daemon uses 60)",
    )
    add_warmup_argument(parser)


def add_site_arguments(parser: argparse.ArgumentParser) -> None:
    """`--background` and `--limit`: the site's own load and the utility's limit, as CSVs."""
    parser.add_argument(
        "--background",
        type=path_text,
        help="the site's own load, CSV time,kw (default: the station's profile)",
    )
    parser.add_argument(
        "--limit",
        type=path_text,
        help="the utility's limit signal, CSV time,kw (default: the station's fixed limit)",
    )


def add_warmup_argument(parser: argparse.ArgumentParser) -> None:
    """`--warmup-days`: days run before the scenario, unmeasured."""
    parser.add_argument(
        "--warmup-days",
        type=count,
        default=0,
        help="repeat the first day this many times before, unmeasured (default 0)",
    )


def read_scenario(
    args: argparse.Namespace, console: Console, tariffs: Sequence[str]
) -> tuple[Station, Scenario, list[TariffCase]] | None:
    """The station, the scenario and the tariff cases a simulate, compare or tariff compare
    command names (under the first of `tariffs`, or the station's), or None after printing
    every problem of every file."""
    from simulator.whatif import load_scenario

    station = load(Path(args.station), console)
    if station is None:
        return None
    # tariff compare takes no fault script.
    faults = getattr(args, "faults", None)
    try:
        scenario, cases = load_scenario(
            station,
            Path(args.sessions),
            [Path(t) for t in tariffs],
            background=Path(args.background) if args.background else None,
            limit=Path(args.limit) if args.limit else None,
            faults=Path(faults) if faults else None,
            warmup_days=args.warmup_days,
        )
    except ConfigError as err:
        print_problems(err, console)
        return None
    return station, scenario, cases


def cmd_simulate(args: argparse.Namespace, console: Console) -> int:
    """Run the station through a scenario on the simulated clock, under one or more policies."""
    return _run_policies(args, console, args.policy or ["mpc"])


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    """Every policy (or those named) on the same scenario, side by side."""
    return _run_policies(args, console, args.policy or list(ALL_POLICIES))


def _run_policies(args: argparse.Namespace, console: Console, policies: Sequence[str]) -> int:
    from simulator.fast import simulate
    from simulator.report import comparison_table, plot_comparison, write_outputs

    loaded = read_scenario(args, console, [args.tariff] if args.tariff else [])
    if loaded is None:
        return EXIT_BAD_CONFIG
    station, scenario, _ = loaded
    zone = ZoneInfo(station.info.timezone)
    out = Path(args.out)
    telemetry = _simulation_telemetry(args, station, policies, console)
    if isinstance(telemetry, int):
        return telemetry
    results = []
    with progress_bars(console) as progress:
        for policy in policies:
            task = progress.add_task(f"{policy:<16}", total=1.0)

            def advance(done: float, task: TaskID = task) -> None:
                progress.update(task, completed=done)

            result = simulate(
                scenario,
                policy,
                step_s=args.step,
                plan_period_s=args.plan_period,
                progress=advance,
                telemetry=telemetry,
            )
            results.append(result)
            target = out if len(policies) == 1 else out / policy
            write_outputs(result, target, zone)
            if not console.is_terminal:
                m = result.metrics
                console.print(
                    f"{policy}: cost {m['cost_yuan']} {station.tariff.currency}, delivered {m['delivered_pct']}%, "
                    f"peak {m['peak_kw']} kW, over limit {m['over_limit_kwh']} kWh ({m['wall_s']} s)",
                    highlight=False,
                    soft_wrap=True,
                )
    if len(results) > 1:
        plot_comparison(results, out / "plot.png", zone)
        (out / "comparison.json").write_text(
            json.dumps([r.metrics for r in results], indent=2) + "\n", encoding="utf-8"
        )
    if telemetry is not None:
        counts = telemetry.close()
        console.print(
            f"telemetry to {telemetry.sink.description}: {counts.summary()}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(comparison_table(results, currency=scenario.tariff.currency))
    where = out / "metrics.json" if len(results) == 1 else out
    console.print(f"written to {where}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _simulation_telemetry(
    args: argparse.Namespace, station: Station, policies: Sequence[str], console: Console
) -> TelemetryWriter | int | None:
    """The started writer `simulate --telemetry` asks for (None without the flag), or an exit
    code after printing why not."""
    if not getattr(args, "telemetry", False):
        return None
    if len(policies) != 1:
        console.print(
            "[bold red]--telemetry: give one --policy (runs would overwrite each other)[/]"
        )
        return EXIT_BAD_CONFIG
    out = Path(args.out)
    telemetry = open_telemetry(
        station.with_telemetry(enabled=True),
        Path(args.station),
        console,
        local_store=out / "telemetry.sqlite",
        buffer_dir=out,
    )
    if isinstance(telemetry, int):
        return telemetry
    assert telemetry is not None  # enabled above
    telemetry.start()
    return telemetry


def cmd_sessions(args: argparse.Namespace, console: Console) -> int:
    """Write a seeded random sessions CSV from the station's [simulator] section."""

    from simulator.fleet import random_days
    from simulator.scenario import write_sessions

    station = load(Path(args.station), console)
    if station is None:
        return EXIT_BAD_CONFIG
    if station.simulator is None:
        console.print(f"[bold red]{station.path}: the station has no [simulator] section[/]")
        return EXIT_BAD_CONFIG
    zone = ZoneInfo(station.info.timezone)
    start = datetime.combine(args.start, time(0, 0), tzinfo=zone).timestamp()
    end = start + args.days * 86400
    visits = [
        v for v in random_days(station.simulator, start, end, zone) if start <= v.arrival < end
    ]
    write_sessions(Path(args.out), visits, zone)
    energy = sum(v.energy_kwh for v in visits)
    console.print(
        f"{len(visits)} sessions, {energy:,.0f} kWh wanted, written to {args.out}", highlight=False
    )
    return EXIT_OK
