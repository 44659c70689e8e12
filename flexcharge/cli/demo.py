"""`flexcharge demo`: a simulated station and the daemon over real Modbus on loopback, faster
than real time (the engine is `flexcharge.demo`)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from rich.console import Console

from base.config import REFERENCE_STATION, Station
from base.listening import cannot_listen
from base.loading import ConfigError

from .common import (
    EXIT_BAD_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    api_settings,
    load,
    log,
    parse_api,
    path_text,
    positive_float,
    print_problems,
    time_of_day,
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `demo` to the command line."""
    demo = sub.add_parser("demo", help="simulated station + daemon, faster than real time")
    demo.add_argument(
        "--station",
        type=path_text,
        default=str(REFERENCE_STATION),
        help="the station file (TOML; default: the reference station)",
    )
    demo.add_argument(
        "--speed",
        type=positive_float,
        default=960.0,
        help="station seconds per real second, at most",
    )
    demo.add_argument(
        "--duration",
        type=positive_float,
        default=85.0,
        help="real seconds, at most (a demo stopped by it says so in its summary)",
    )
    demo.add_argument(
        "--api", type=parse_api, metavar="HOST:PORT", help="serve the API and live page there"
    )
    demo.add_argument(
        "--hours", type=positive_float, default=15.0, help="station hours to simulate"
    )
    demo.add_argument(
        "--start",
        type=time_of_day,
        default="16:00",
        metavar="HH:MM",
        help="local station time to start at",
    )
    demo.add_argument(
        "--period",
        type=positive_float,
        default=8.0,
        help="control period in station seconds (a 1 s loop at 480x would need a Modbus "
        "round every 2 ms of real time)",
    )
    demo.add_argument(
        "--station-ports",
        action="store_true",
        help="serve the devices on the ports the station file names, instead of free ports the "
        "OS picks (with which demos and the real-time pair run side by side)",
    )
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """Simulated station + daemon over real Modbus on loopback, faster than real time."""
    from flexcharge.demo import demo_start, on_free_ports, print_summary, run_demo
    from simulator.hardware import SimulatorError
    from simulator.serial_pair import SerialPairError, serial_pairs

    station = load(Path(args.station), console)
    if station is None:
        return EXIT_BAD_CONFIG
    station = station.with_control(period_s=args.period)
    if not args.station_ports:
        station = on_free_ports(station)
    start = demo_start(station, args.start)
    console.print(
        f"[bold]flexcharge demo[/]: {station.name}, {len(station.piles)} piles, limit {station.limit_kw:,.0f} kW; "
        f"{args.hours:g} h of station time from {args.start:%H:%M} at up to {args.speed:g}x real time "
        f"(at most {args.duration:g} s), control period {station.control.period_s:g} s of station time, "
        f"over {_protocols(station)} on loopback ({_ports(station)})",
        highlight=False,
        soft_wrap=True,
    )
    try:
        # Serial devices: the simulator and the daemon at the two ends of a pseudo-terminal pair.
        with serial_pairs(station) as (simulated, controlled):
            result = asyncio.run(
                run_demo(
                    controlled,
                    start=start,
                    hours=args.hours,
                    speed=args.speed,
                    duration_s=args.duration,
                    console=console,
                    api=api_settings(args, station) if args.api else None,
                    simulator_station=simulated,
                )
            )
    except SerialPairError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except ConfigError as err:  # certificates or a password an encrypted link needs
        print_problems(err, console)
        return EXIT_BAD_CONFIG
    except SimulatorError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except OSError as exc:  # the API's address (the simulator reports its own)
        host, port = args.api
        log.error("%s", cannot_listen(host, port, exc, "the API"))
        return EXIT_FAILURE
    print_summary(result, station, console)
    return EXIT_OK


def _protocols(station: Station) -> str:
    names = {
        "modbus-tcp": "Modbus TCP",
        "modbus-tls": "Modbus/TLS",
        "modbus-rtu": "Modbus RTU",
        "modbus-rtu-over-tcp": "Modbus RTU over TCP",
        "opcua": "OPC-UA",
    }
    used = dict.fromkeys(names.get(d.protocol, d.protocol) for d in station.devices)
    return " and ".join(used)


def _ports(station: Station) -> str:
    ports = sorted({d.port for d in station.devices if not d.serial})
    lines = sorted({d.address for d in station.devices if d.serial})
    where = [f"port {ports[0]}" if len(ports) == 1 else f"ports {', '.join(map(str, ports))}"]
    where = where if ports else []
    where += [f"serial line {line}" for line in lines]
    return ", ".join(where)
