"""`flexcharge demo`: a simulated station and the daemon over real Modbus on loopback, faster
than real time (the engine is `flexcharge.demo`)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rich.console import Console

from base.config import REFERENCE_STATION

from .common import EXIT_BAD_CONFIG, EXIT_FAILURE, EXIT_OK, api_settings, load, log, parse_api


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `demo` to the command line."""
    demo = sub.add_parser("demo", help="simulated station + daemon, faster than real time")
    demo.add_argument("--station", default=str(REFERENCE_STATION))
    demo.add_argument(
        "--speed", type=float, default=960.0, help="station seconds per real second, at most"
    )
    demo.add_argument("--duration", type=float, default=85.0, help="real seconds, at most")
    demo.add_argument(
        "--api", type=parse_api, metavar="HOST:PORT", help="serve the API and live page there"
    )
    demo.add_argument("--hours", type=float, default=15.0, help="station hours to simulate")
    demo.add_argument("--start", default="16:00", help="local station time to start at (HH:MM)")
    demo.add_argument(
        "--period",
        type=float,
        default=8.0,
        help="control period in station seconds (a 1 s loop at 480x would need a Modbus "
        "round every 2 ms of real time)",
    )
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """Simulated station + daemon over real Modbus on loopback, faster than real time."""
    from flexcharge.demo import demo_start, print_summary, run_demo
    from simulator.hardware import SimulatorError

    station = load(Path(args.station), console)
    if station is None:
        return EXIT_BAD_CONFIG
    if args.period is not None:
        station = station.with_control(period_s=args.period)
    start = demo_start(station, args.start)
    console.print(
        f"[bold]flexcharge demo[/]: {station.name}, {len(station.piles)} piles, limit {station.limit_kw:,.0f} kW; "
        f"{args.hours:g} h of station time from {args.start} at up to {args.speed:g}x real time "
        f"(at most {args.duration:g} s), control period {station.control.period_s:g} s of station time, "
        "over Modbus TCP on loopback",
        highlight=False,
        soft_wrap=True,
    )
    try:
        result = asyncio.run(
            run_demo(
                station,
                start=start,
                hours=args.hours,
                speed=args.speed,
                duration_s=args.duration,
                console=console,
                api=api_settings(args, station) if args.api else None,
            )
        )
    except SimulatorError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except OSError as exc:  # the API's address (the simulator reports its own)
        log.error("cannot serve the API: %s", exc)
        return EXIT_FAILURE
    print_summary(result, station, console)
    return EXIT_OK
