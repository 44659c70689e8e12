"""`flexcharge demo`: the simulated station and the daemon together, faster than real time.

The hardware simulator serves the station's meter and piles on loopback (Modbus TCP or TLS,
Modbus RTU on a pseudo-terminal pair, OPC-UA; its simulated OCPP charge points connect to the
daemon's OCPP server) and the daemon controls them through those real connections. Both run on one paced virtual clock: station
time moves at up to `speed` times real time, in lockstep, so every control cycle sees the plant as
it is at that instant however long the Modbus round trips take.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from datetime import time as time_of_day
from zoneinfo import ZoneInfo

from rich.console import Console

from base.clock import VirtualClock
from base.config import Station
from base.events import Kind
from base.stationsettings import ApiSettings
from control.sessions import Wish
from controller.daemon import Daemon
from flexcharge.view import LiveView, summary_table
from simulator.hardware import StationSimulator
from simulator.plant import PileModel, VehicleModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    """What a demo run measured."""

    station_start: float
    station_end: float
    window_end: float
    stopped_by: str
    speed: float
    wall_s: float
    daemon_peak_kw: float
    daemon_over_limit_s: float
    daemon_energy_kwh: float
    true_peak_kw: float
    true_over_limit_s: float
    true_longest_over_s: float
    true_energy_kwh: float
    limit_kw: float
    cycles: int
    out_of_bounds: int
    arrivals: int
    departures: int
    curtailments: int
    energy_by_band: dict[str, float]
    charging_cost: float
    currency: str

    @property
    def complete(self) -> bool:
        """True if the demo ran its whole window of station time."""
        return self.station_end >= self.window_end - 1.0


def demo_start(station: Station, start: time_of_day, day: datetime | None = None) -> float:
    """Epoch seconds of local time `start` today at the station (or on `day`)."""
    zone = ZoneInfo(station.info.timezone)
    base = (day or datetime.now(zone)).astimezone(zone)
    return base.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0).timestamp()


def on_free_ports(station: Station, host: str = "127.0.0.1") -> Station:
    """A copy of `station` whose devices listen on ports of `host` the OS says are free now.

    Devices that share an endpoint in the station file (piles behind one gateway, objects of one
    OPC-UA server) share one port here too; the [ocpp] server, which OCPP piles connect to, gets
    one of its own.
    """
    network = [d for d in station.devices if not d.serial and d.protocol != "ocpp"]
    endpoints = list(dict.fromkeys((d.host, d.port) for d in network))
    if station.ocpp is not None:
        endpoints.append(("[ocpp]", station.ocpp.port))
    sockets = []
    try:
        for _ in endpoints:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        port_of = {e: s.getsockname()[1] for e, s in zip(endpoints, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()
    moved = station.with_endpoints({d.id: port_of[(d.host, d.port)] for d in network}, host)
    if station.ocpp is not None:
        moved = moved.with_ocpp(host=host, port=port_of[("[ocpp]", station.ocpp.port)])
    return moved


async def run_demo(
    station: Station,
    *,
    start: float,
    hours: float,
    speed: float,
    duration_s: float,
    console: Console,
    api: ApiSettings | None = None,
    simulator_station: Station | None = None,
) -> DemoResult:
    """Run simulator and daemon for `hours` of station time or `duration_s` of real time.

    With `api`, the daemon also serves its API and live page there (`OSError` if it cannot).
    `simulator_station` is the station as the simulator serves it, where that differs from the
    daemon's (the other end of a serial line's pseudo-terminal pair: `serial_pairs`).
    """
    clock = VirtualClock(start, pace=speed)
    end = start + hours * 3600
    simulator = StationSimulator(simulator_station or station, clock)
    daemon = Daemon.for_station(station, clock)
    if api is not None:
        from controller.api import ApiServer

        server = ApiServer(daemon, api)
        server.bind()
        daemon.services.append(server)
        console.print(f"live page: {server.url}/", highlight=False)

    def fleet_system(pile: PileModel, vehicle: VehicleModel) -> None:
        # The depot's fleet system tells the station what each truck needs and when it leaves
        # (in the demo, straight from the simulated fleet; at a station, through the API).
        visit = vehicle.visit
        daemon.wish(
            pile.id, pile.session_id, Wish(visit.vehicle_id, visit.energy_kwh, visit.departure)
        )

    simulator.plant.on_plug = fleet_system
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, interrupted.set)
    wall_start = time.monotonic()
    await simulator.start()
    try:
        with LiveView(
            daemon, console, title=f"flexcharge demo: {station.name} at up to {speed:g}x"
        ):
            daemon_task = asyncio.create_task(daemon.run(), name="daemon")
            until_end = asyncio.create_task(clock.sleep_until(end), name="demo end")
            until_signal = asyncio.create_task(interrupted.wait(), name="demo interrupt")
            done, _ = await asyncio.wait(
                {daemon_task, until_end, until_signal},
                timeout=duration_s,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if until_end in done:
                stopped_by = "the end of the window"
            elif until_signal in done:
                stopped_by = "an interrupt (Ctrl-C or SIGTERM)"
            elif daemon_task in done:
                stopped_by = "the daemon stopping"
            else:
                stopped_by = f"the --duration cap of {duration_s:g} s of real time"
            for task in (until_end, until_signal):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            daemon.request_stop()
            await daemon_task
    finally:
        await simulator.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    plant = simulator.plant
    status = daemon.status()
    tally = status.tally
    return DemoResult(
        station_start=start,
        station_end=clock.now(),
        window_end=end,
        stopped_by=stopped_by,
        speed=speed,
        wall_s=time.monotonic() - wall_start,
        daemon_peak_kw=tally.peak_grid_kw,
        daemon_over_limit_s=tally.over_limit_s,
        daemon_energy_kwh=tally.energy_kwh,
        true_peak_kw=plant.truth.peak_kw,
        true_over_limit_s=plant.truth.over_s,
        true_longest_over_s=plant.truth.longest_over_s,
        true_energy_kwh=plant.delivered_kwh(),
        limit_kw=station.limit_kw,
        cycles=tally.cycles,
        out_of_bounds=tally.out_of_bounds,
        arrivals=sum(1 for e in plant.events if e.kind == "arrival"),
        departures=sum(1 for e in plant.events if e.kind == "departure"),
        curtailments=sum(1 for e in status.events if e.kind is Kind.CURTAILING),
        energy_by_band=dict(tally.energy_by_band),
        charging_cost=tally.charging_cost,
        currency=station.tariff.currency,
    )


def print_summary(result: DemoResult, station: Station, console: Console) -> None:
    """The end-of-demo figures: measured by the daemon, and the plant's ground truth.

    A demo stopped before the end of its window says so first, with how far it got: every
    figure then covers only that part of the window.
    """
    zone = ZoneInfo(station.info.timezone)
    span_h = (result.station_end - result.station_start) / 3600
    first = datetime.fromtimestamp(result.station_start, zone)
    last = datetime.fromtimestamp(result.station_end, zone)
    title = "flexcharge demo summary"
    rows = []
    if not result.complete:
        window_h = (result.window_end - result.station_start) / 3600
        end = datetime.fromtimestamp(result.window_end, zone)
        title = (
            f"flexcharge demo summary: CUT SHORT at {last:%H:%M} ({span_h:.1f} of {window_h:.1f} h)"
        )
        rate = span_h * 3600 / max(result.wall_s, 1e-9)
        needed = result.wall_s * window_h / max(span_h, 1e-9)
        slow = ""
        if rate < 0.9 * result.speed:
            slow = (
                f" This machine ran the station at {rate:.0f}x, not the {result.speed:g}x asked:"
                " fewer control cycles (a longer --period) would go faster."
            )
        rows.append(
            (
                "CUT SHORT",
                f"stopped by {result.stopped_by} at {last:%H:%M}, {span_h:.1f} h into the "
                f"{window_h:.1f} h window {first:%H:%M}-{end:%H:%M}: every figure below covers "
                f"{first:%H:%M}-{last:%H:%M} only. The whole window needs about "
                f"--duration {needed:.0f}.{slow}",
            )
        )
    rows += [
        (
            "station time",
            f"{first:%Y-%m-%d %H:%M} to {last:%H:%M} {last:%Z} ({span_h:.1f} h) "
            f"in {result.wall_s:.0f} s ({span_h * 3600 / max(result.wall_s, 1e-9):.0f}x)",
        ),
        ("site limit", f"{result.limit_kw:,.0f} kW"),
        (
            "peak site load",
            f"{result.daemon_peak_kw:,.0f} kW measured by the daemon "
            f"({result.daemon_peak_kw / result.limit_kw:.1%} of the limit); "
            f"true peak {result.true_peak_kw:,.0f} kW",
        ),
        (
            "time over the limit",
            f"{result.daemon_over_limit_s:.0f} s measured; true {result.true_over_limit_s:.0f} s "
            f"(longest stretch {result.true_longest_over_s:.0f} s)",
        ),
        (
            "energy delivered",
            f"{result.daemon_energy_kwh:,.0f} kWh (pile counters read by the daemon); "
            f"true {result.true_energy_kwh:,.0f} kWh",
        ),
        ("by tariff band", _bands(result)),
        ("vehicles", f"{result.arrivals} plugged in, {result.departures} left"),
        (
            "curtailment",
            f"{result.curtailments} period(s) with vehicles held below what they would take",
        ),
        (
            "control cycles",
            f"{result.cycles}; setpoints outside a pile's bounds: {result.out_of_bounds}",
        ),
    ]
    console.print(summary_table(title, rows))


def _bands(result: DemoResult) -> str:
    total = sum(result.energy_by_band.values())
    if total <= 0:
        return "nothing charged"
    shares = ", ".join(
        f"{band} {100 * kwh / total:.0f}%"
        for band, kwh in sorted(result.energy_by_band.items(), key=lambda item: -item[1])
    )
    return (
        f"{shares}; charging cost {result.charging_cost:,.0f} {result.currency} "
        f"({result.charging_cost / total:.3f} {result.currency}/kWh)"
    )
