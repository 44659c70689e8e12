"""The `tariff` commands: `tariff show` (a tariff's bands drawn and checked for gaps) and
`tariff compare` (one scenario under several tariffs, as a report for utility engineers)."""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from rich.console import Console

from base.loading import ConfigError
from base.tarifffile import load_tariff

from .common import (
    EXIT_BAD_CONFIG,
    EXIT_OK,
    STATION_HELP,
    directory,
    path_text,
    positive_float,
    positive_int,
    print_problems,
    progress_bars,
    year,
)
from .simulate import ALL_POLICIES, add_site_arguments, add_warmup_argument, read_scenario


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `tariff` (and its `compare` and `show`) to the command line."""
    tariff = sub.add_parser("tariff", help="what a tariff does: draw it, or compare tariffs")
    tariff_sub = tariff.add_subparsers(
        dest="tariff_command", required=True, metavar="COMMAND", help="one of:"
    )
    tcompare = tariff_sub.add_parser(
        "compare", help="one scenario under several tariffs (and policies), as a report"
    )
    tcompare.add_argument("--station", required=True, type=path_text, help=STATION_HELP)
    tcompare.add_argument(
        "--sessions", required=True, type=path_text, help="sessions CSV, or ACN-Data JSON"
    )
    tcompare.add_argument(
        "tariffs", nargs="+", type=path_text, metavar="TARIFF", help="tariff files to compare"
    )
    tcompare.add_argument(
        "--policy",
        action="append",
        choices=ALL_POLICIES,
        help="repeat for several (default mpc; uncontrolled always runs, as the baseline)",
    )
    add_site_arguments(tcompare)
    tcompare.add_argument(
        "--out",
        required=True,
        type=directory,
        help="directory for report.html, report.png, whatif.json, runs/",
    )
    tcompare.add_argument(
        "--step",
        type=positive_float,
        help="simulation step, s (default 300; see README, Tariff what-if)",
    )
    tcompare.add_argument(
        "--plan-period",
        type=positive_float,
        help="MPC re-plans at least this often, s (default 3600; see README, Tariff what-if)",
    )
    tcompare.add_argument(
        "--workers",
        type=positive_int,
        help="simulations at once, in processes (default: one per CPU)",
    )
    add_warmup_argument(tcompare)
    tcompare.set_defaults(func=cmd_tariff_compare)
    tshow = tariff_sub.add_parser(
        "show", help="a tariff's bands over a day and a year, as PNGs and a table"
    )
    tshow.add_argument("path", type=path_text, help="the tariff file (TOML)")
    tshow.add_argument(
        "--out", type=directory, help="directory for the PNGs (default: the working directory)"
    )
    tshow.add_argument("--year", type=year, help="the year to draw (default: this year)")
    tshow.set_defaults(func=cmd_tariff_show)


def cmd_tariff_compare(args: argparse.Namespace, console: Console) -> int:
    """The same scenario under several tariffs (and policies): a report for utility engineers."""
    from simulator.whatif import (
        WHATIF_PLAN_PERIOD_S,
        WHATIF_STEP_S,
        compare_tariffs,
        plan_jobs,
    )
    from simulator.whatif_report import comparison_table, peak_notes, write_report

    # Every input is checked before anything runs, and every problem is reported at once.
    loaded = read_scenario(args, console, args.tariffs)
    if loaded is None:
        return EXIT_BAD_CONFIG
    _, scenario, cases = loaded
    step = WHATIF_STEP_S if args.step is None else args.step
    plan_period = WHATIF_PLAN_PERIOD_S if args.plan_period is None else args.plan_period
    policies = args.policy or ["mpc"]
    jobs = plan_jobs(cases, policies)
    console.print(
        f"{len(cases)} tariffs x {len(dict.fromkeys([*policies, 'uncontrolled']))} policies: "
        f"{len(jobs)} simulations of {scenario.name} ({(scenario.end - scenario.measured_start) / 86400:g} days), "
        f"step {step:g} s, re-plan at least every {plan_period:g} s",
        highlight=False,
        soft_wrap=True,
    )
    with progress_bars(console) as progress:
        tasks = {job.title: progress.add_task(f"{job.title:<32}", total=1.0) for job in jobs}

        def advance(title: str, done: float) -> None:
            progress.update(tasks[title], completed=done)

        whatif = compare_tariffs(
            scenario,
            cases,
            policies,
            step_s=step,
            plan_period_s=plan_period,
            workers=args.workers,
            progress=advance,
        )
    page = write_report(whatif, Path(args.out))
    console.print(comparison_table(whatif))
    for note in peak_notes(whatif):
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    console.print(
        f"{whatif.simulations} simulations in {whatif.wall_s:.1f} s ({whatif.workers} processes); "
        f"report: {page} and {Path(args.out) / 'report.png'}",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_OK


def cmd_tariff_show(args: argparse.Namespace, console: Console) -> int:
    """Draw a tariff's bands over a day and a year, tabulate them, and check for gaps/overlaps."""
    from rich.table import Table

    from base.tariff import coverage_problems
    from simulator.tariff_view import band_rows, day_figure, year_figure

    path = Path(args.path)
    try:
        tariff = load_tariff(path)
    except ConfigError as err:
        print_problems(err, console)
        return EXIT_BAD_CONFIG
    year = args.year or datetime.now().year
    table = Table(title=f"{tariff.name} ({path})", title_justify="left")
    for column in (
        "band",
        f"price ({tariff.currency}/kWh)",
        f"hours in {year}",
        "share of the year",
        "when",
    ):
        table.add_column(column, justify="left" if column in ("band", "when") else "right")
    for row in band_rows(tariff, year):
        table.add_row(
            row["band"],
            f"{row['price']:.4f}",
            f"{row['hours_per_year']:,.0f}",
            f"{row['share_pct']:.1f}%",
            row["when"],
        )
    console.print(table)
    console.print(
        f"demand charge {tariff.demand_charge_per_kw_month:g} {tariff.currency}/kW per month on "
        f"the highest 15-minute average import; export {tariff.export_price:g} "
        f"{tariff.currency}/kWh; highest - lowest band {tariff.spread:.4f} {tariff.currency}/kWh; "
        f"time zone {tariff.timezone}",
        highlight=False,
        soft_wrap=True,
    )
    problems = [f"{gap.where(tariff)}: {gap.message}" for gap in coverage_problems(tariff)]
    checked = (
        "every month in one season, every weekday in one day type of its season, every minute "
        "of 00:00-24:00 in one period"
    )
    if problems:
        console.print(f"[bold red]{len(problems)} gap(s) or overlap(s):[/]")
        for problem in problems:
            console.print(f"  - {problem}", highlight=False, markup=False)
    else:
        console.print(f"no gaps or overlaps: {checked}", highlight=False, soft_wrap=True)
    out = Path(args.out) if args.out else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    day_png, year_png = out / f"{path.stem}-day.png", out / f"{path.stem}-year.png"
    day_figure(tariff, day_png)
    year_figure(tariff, year, year_png)
    console.print(f"drawn: {day_png}, {year_png}", highlight=False, soft_wrap=True)
    return EXIT_BAD_CONFIG if problems else EXIT_OK
