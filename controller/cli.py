"""The `flexcharge` command: check a config, run the daemon, simulate hardware, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler

from controller.config import (
    REFERENCE_STATION,
    ConfigError,
    Station,
    load_register_map,
    load_station,
    load_tariff,
)

log = logging.getLogger("flexcharge")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_CONFIG = 2


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


def _print_problems(err: ConfigError, console: Console) -> None:
    console.print(f"[bold red]{len(err.problems)} problem(s):[/]")
    for problem in err.problems:
        console.print(f"  - {problem}", highlight=False, markup=False, soft_wrap=True)


def _load(path: Path, console: Console) -> Station | None:
    try:
        return load_station(path)
    except ConfigError as err:
        _print_problems(err, console)
        return None


def cmd_check_config(args: argparse.Namespace, console: Console) -> int:
    """Check a station (with its tariff and maps), a tariff, or a device map file."""
    path = Path(args.path)
    try:
        with path.open("rb") as handle:
            keys = set(tomllib.load(handle))
    except (OSError, tomllib.TOMLDecodeError):
        keys = set()  # load_station reports the reason with the file named
    try:
        if "registers" in keys:
            regmap = load_register_map(path)
            console.print(
                f"valid device map: {regmap.title} ({regmap.kind}), {len(regmap.registers)} registers"
            )
        elif "bands" in keys:
            tariff = load_tariff(path)
            bands = ", ".join(f"{band} {price:.4f}" for band, price in tariff.band_prices.items())
            console.print(
                f"valid tariff: {tariff.name}: {bands} {tariff.currency}/kWh, {len(tariff.seasons)} season(s)"
            )
        else:
            station = load_station(path)
            console.print(
                f"valid station: {station.name}: limit {station.limit_kw:,.0f} kW "
                f"({station.transformer.rating_kva:g} kVA x {station.transformer.power_factor:g} x "
                f"{station.transformer.margin:g}), {len(station.piles)} piles "
                f"({sum(p.max_kw for p in station.piles):,.0f} kW), meter {station.grid_meter.id} "
                f"({station.grid_meter.device}), tariff {station.tariff.name}",
                highlight=False,
                soft_wrap=True,
            )
    except ConfigError as err:
        _print_problems(err, console)
        return EXIT_BAD_CONFIG
    return EXIT_OK


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    """Run the daemon against the station's real devices, in real time."""
    from controller.clock import WallClock
    from controller.daemon import Daemon

    station = _load(Path(args.station), console)
    if station is None:
        return EXIT_BAD_CONFIG

    async def main() -> None:
        daemon = Daemon.over_modbus(station, WallClock())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, daemon.request_stop)
        status_every = args.status_every

        def status(cycle: object) -> None:
            from controller.daemon import Cycle

            assert isinstance(cycle, Cycle)
            if cycle.time - getattr(status, "last", -1e18) >= status_every:
                status.last = cycle.time  # type: ignore[attr-defined]
                snap = cycle.snapshot
                grid = "n/a" if snap.grid_kw is None else f"{snap.grid_kw:.0f}"
                log.info(
                    "site %s / %.0f kW, piles %.0f kW, band %s",
                    grid,
                    snap.limit_kw,
                    snap.piles_kw,
                    snap.band,
                )

        daemon.observers.append(status)
        await daemon.run()

    asyncio.run(main())
    return EXIT_OK


def cmd_sim_hardware(args: argparse.Namespace, console: Console) -> int:
    """Serve the station's devices over Modbus TCP on loopback, in real time, until stopped."""
    from controller.clock import WallClock
    from simulator.hardware import SimulatorError, StationSimulator

    station = _load(Path(args.station), console)
    if station is None:
        return EXIT_BAD_CONFIG

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        simulator = StationSimulator(station, WallClock())
        try:
            await simulator.start()
        except SimulatorError as exc:
            log.error("%s", exc)
            return EXIT_FAILURE
        log.info(
            "serving %s; stop with Ctrl-C",
            ", ".join(f"{d.id}@{d.host}:{d.port}" for d in station.devices),
        )
        try:
            await stop.wait()
        finally:
            await simulator.stop()
        log.info("simulator stopped")
        return EXIT_OK

    return asyncio.run(main())


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """Simulated station + daemon over real Modbus on loopback, faster than real time."""
    from controller.demo import demo_start, print_summary, run_demo
    from simulator.hardware import SimulatorError

    station = _load(Path(args.station), console)
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
            )
        )
    except SimulatorError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    print_summary(result, station, console)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="flexcharge", description=__doc__)
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-config", help="validate a station, tariff or device map file")
    check.add_argument("path")
    check.set_defaults(func=cmd_check_config)

    run = sub.add_parser("run", help="run the daemon (real time)")
    run.add_argument("--station", required=True)
    run.add_argument("--status-every", type=float, default=60.0, help="log a status line every N s")
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser(
        "sim-hardware", help="serve a station's simulated devices over Modbus (real time)"
    )
    sim.add_argument("--station", required=True)
    sim.set_defaults(func=cmd_sim_hardware)

    demo = sub.add_parser("demo", help="simulated station + daemon, faster than real time")
    demo.add_argument("--station", default=str(REFERENCE_STATION))
    demo.add_argument(
        "--speed", type=float, default=480.0, help="station seconds per real second, at most"
    )
    demo.add_argument("--duration", type=float, default=85.0, help="real seconds, at most")
    demo.add_argument("--hours", type=float, default=8.0, help="station hours to simulate")
    demo.add_argument("--start", default="16:00", help="local station time to start at (HH:MM)")
    demo.add_argument(
        "--period",
        type=float,
        default=4.0,
        help="control period in station seconds (a 1 s loop at 480x would need a Modbus "
        "round every 2 ms of real time)",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flexcharge` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console()
    if args.command == "demo":
        _setup_logging("WARNING" if args.log_level == "INFO" else args.log_level, console)
    else:
        _setup_logging(args.log_level)
    try:
        return int(args.func(args, console))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
