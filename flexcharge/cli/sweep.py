"""The `sweep` command: a tariff study across stations, in local processes or on Ray."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from base.loading import ConfigError

from .common import (
    EXIT_BAD_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    count,
    directory,
    existing_file,
    host_name,
    positive_int,
    print_error,
    print_problems,
    progress_bars,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `sweep` to the command line."""
    sweep = sub.add_parser(
        "sweep", help="a tariff study: stations x variants x periods x tariffs x policies"
    )
    sweep.add_argument("study", type=existing_file, metavar="STUDY", help="the study file (TOML)")
    sweep.add_argument(
        "--out",
        required=True,
        type=directory,
        help="directory for results.parquet, results.csv, report.html, report.png, runs/",
    )
    sweep.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local worker processes, or Ray (pip install 'flexcharge[ray]')",
    )
    sweep.add_argument(
        "--address",
        type=host_name,
        help="a running Ray cluster, e.g. 10.0.0.5:6379 (default: start Ray here)",
    )
    sweep.add_argument(
        "--workers",
        type=positive_int,
        help="runs at once (default: one per CPU here, or the cluster's CPUs)",
    )
    sweep.add_argument(
        "--resume",
        action="store_true",
        help="go on with an interrupted sweep in --out: runs already done are kept",
    )
    sweep.add_argument(
        "--retries",
        type=count,
        default=2,
        help="attempts after the first for a run that fails (raises, or its worker dies)",
    )
    sweep.add_argument(
        "--days",
        type=positive_int,
        help="only this many days from the study's first day (a quick look)",
    )
    sweep.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace, console: Console) -> int:
    """Run every task of the study not done yet; results, report; exit 1 if any failed."""
    from simulator.study import load_study
    from simulator.sweep import SweepError, make_backend, run_sweep, write_results
    from simulator.sweep_report import loser_lines, summary_table, write_report

    try:
        study = load_study(Path(args.study))
    except ConfigError as err:
        print_problems(err, console)
        return EXIT_BAD_CONFIG
    if args.days is not None:
        study = study.with_days(args.days)
    if args.address and args.backend != "ray":
        print_error(ValueError("--address is for --backend ray"), console)
        return EXIT_BAD_CONFIG
    out = Path(args.out)
    tasks = study.tasks()
    console.print(
        f"{study.name}: {len(study.sites)} station variants x {len(study.periods)} periods x "
        f"{len(study.cases)} tariffs x {len(study.policies)} policies = {len(tasks)} runs, "
        f"step {study.step_s:g} s, re-plan at least every {study.plan_period_s:g} s",
        highlight=False,
        soft_wrap=True,
    )
    try:
        backend = make_backend(args.backend, workers=args.workers, address=args.address)
    except SweepError as exc:
        print_error(exc, console)
        return EXIT_BAD_CONFIG
    try:
        with progress_bars(console) as progress:
            bar = progress.add_task(f"{'runs':<8}", total=len(tasks))

            def advance(done: int, total: int, task_id: str) -> None:
                progress.update(bar, completed=done)

            sweep = run_sweep(
                study,
                out,
                backend,
                resume=args.resume,
                retries=args.retries,
                progress=advance,
            )
    except SweepError as exc:
        print_error(exc, console)
        return EXIT_BAD_CONFIG
    parquet, csv = write_results(sweep.rows, out)
    page = write_report(study, sweep, out)
    console.print(summary_table(study, sweep.rows))
    for line in loser_lines(study, sweep.rows):
        console.print(f"loses most: {line}", highlight=False, markup=False, soft_wrap=True)
    failed = [r for r in sweep.rows if r["status"] != "ok"]
    for row in failed:
        console.print(
            f"failed: {row['station']} {row['variant']} {row['period']} {row['tariff']} "
            f"{row['policy']}: {row['error']} (after {row['attempts']} attempt(s))",
            style="bold red",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    console.print(
        f"{sweep.ran} runs in {sweep.wall_s:.1f} s on {sweep.backend} ({sweep.slots} workers), "
        f"{sweep.resumed} already done, {sweep.retried} attempts retried, {len(failed)} failed; "
        f"results: {parquet}, {csv}; report: {page}",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_FAILURE if failed else EXIT_OK
