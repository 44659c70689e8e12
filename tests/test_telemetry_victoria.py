"""Telemetry against a real time-series server: the daemon, controlling the simulated reference
station over Modbus on a virtual clock, writes through `influxdb-client` to VictoriaMetrics'
InfluxDB v2 write API; the server is stopped mid-run (points wait on disk) and started again
(they are replayed), and every point must be there exactly once, in the order it was made.

VictoriaMetrics comes from Debian's `victoria-metrics` package, which `make system-deps` installs
(without it the tests are skipped, saying so).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from base.clock import VirtualClock
from base.config import Station
from control.step import Cycle
from controller.daemon import Daemon
from controller.telemetry.buffer import DiskBuffer
from controller.telemetry.points import Point
from controller.telemetry.sinks import InfluxSink
from controller.telemetry.writer import TelemetryWriter
from simulator.hardware import StationSimulator
from tests.conftest import free_ports, need_system_program, truck_visit
from tests.victoria import BINARY, VictoriaMetrics, poll_until

pytestmark = [pytest.mark.loopback]


@pytest.fixture(scope="session")
def victoria_binary() -> str:
    """The VictoriaMetrics binary (Debian's, from `make system-deps`), or the tests are skipped."""
    return need_system_program(BINARY, "the telemetry tests' time-series server")


@pytest.fixture
def victoria(victoria_binary: str, tmp_path: Path) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics server on a free port with its own storage; stopped at the end."""
    server = VictoriaMetrics(
        victoria_binary, tmp_path / "vm-data", free_ports(1)[0], tmp_path / "vm.log"
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Tap:
    """A sink in front of the real one that remembers each batch the server accepted."""

    def __init__(self, sink: InfluxSink) -> None:
        self.sink = sink
        self.description = sink.description
        self.accepted: list[Point] = []

    def write(self, points: Sequence[Point]) -> None:
        self.sink.write(points)
        self.accepted.extend(points)

    def close(self) -> None:
        self.sink.close()


class HandedWriter(TelemetryWriter):
    """The daemon's writer, remembering every point the daemon handed it, in order."""

    handed: list[Point]

    def put(self, points: object, *, block: bool = False) -> None:  # type: ignore[override]
        points = list(points)  # type: ignore[call-overload]
        self.handed.extend(points)
        super().put(points, block=block)


Key = tuple[str, frozenset[tuple[str, str]]]


def samples(points: Sequence[Point]) -> dict[Key, list[tuple[int, float]]]:
    """The samples VictoriaMetrics makes of points: one series per measurement_field and tags,
    booleans as 0/1, strings as 0, times in milliseconds."""
    out: dict[Key, list[tuple[int, float]]] = {}
    for point in points:
        for name, value in point.fields:
            number = 0.0 if isinstance(value, str) else float(value)
            key = (f"{point.measurement}_{name}", frozenset(point.tags))
            out.setdefault(key, []).append((point.time_ns // 1_000_000, number))
    return out


def stored(server: VictoriaMetrics) -> dict[Key, list[tuple[int, float]]]:
    """What the server holds, in the same form."""
    out: dict[Key, list[tuple[int, float]]] = {}
    for series in server.export('{__name__=~"(site|pile|plan|planning|event)_.+"}'):
        labels = frozenset((k, v) for k, v in series.labels.items() if k != "__name__")
        out.setdefault((series.name, labels), []).extend(
            zip(series.timestamps, (float(v) for v in series.values), strict=True)
        )
    return out


async def until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `condition` while the event loop (and the daemon) runs on."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_every_point_arrives_once_in_order_across_a_server_restart(
    station: Station, victoria: VictoriaMetrics, tmp_path: Path
) -> None:
    station = station.with_control(period_s=2.0)
    # VictoriaMetrics refuses samples far from its own clock: station time starts now.
    start = float(int(time.time()))
    clock = VirtualClock(start)
    piles = [p.id for p in station.piles[:6]]
    simulator = StationSimulator(
        station,
        clock,
        visits=[truck_visit(start + 20 + 30 * k, pid) for k, pid in enumerate(piles)],
    )
    tap = Tap(
        InfluxSink(victoria.url, org="depot", bucket="flexcharge", token="unused", timeout_s=5)
    )
    writer = HandedWriter(
        tap,
        DiskBuffer(tmp_path / "buffer" / "telemetry.sqlite", 50_000_000),
        station=station.name,
        batch_size=200,
        flush_interval_s=0.1,
        retry_min_s=0.1,
        retry_max_s=0.5,
    )
    writer.handed = []
    daemon = Daemon.for_station(station, clock, policy="mpc", telemetry=writer)
    cycles: list[Cycle] = []
    daemon.observers.append(cycles.append)
    await simulator.start()
    try:
        running = asyncio.create_task(daemon.run())
        await clock.sleep_until(start + 900)
        await until(lambda: writer.counts.written > 2000, 30, "points written while up")
        before_outage = writer.counts

        # The server stops and starts in a thread of the test's, so that the daemon runs on.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vm-control") as pool:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(pool, victoria.stop)
            await until(lambda: writer.down, 30, "the writer to notice the server is down")
            await until(lambda: writer.counts.buffered >= 3000, 60, "points buffered on disk")
            down_at = clock.now()
            await loop.run_in_executor(pool, victoria.start)
        await until(
            lambda: not writer.down and writer.counts.held == 0, 60, "the buffer to be replayed"
        )
        await clock.sleep_until(clock.now() + 300)
        daemon.request_stop()
        await running
    finally:
        await simulator.stop()

    counts = writer.counts
    print(
        f"\ntelemetry restart test: {counts.handed} points made, {counts.written} written "
        f"({before_outage.written} before the server stopped), {counts.buffered} buffered on "
        f"disk while it was down ({counts.down_s:.2f} s real, through station time "
        f"{down_at - start:.0f} s), {counts.replayed} replayed, {counts.dropped} dropped, "
        f"{counts.outages} outage(s)"
    )
    assert counts.dropped == 0 and counts.held == 0 and counts.pending == 0
    assert counts.outages == 1 and counts.buffered >= 3000
    assert counts.replayed == counts.buffered
    assert counts.written == counts.handed == len(writer.handed)
    # The server accepted every point once, in the order the daemon made them.
    assert tap.accepted == writer.handed

    # The daemon's own cycles are in what was written, value for value.
    site = [p for p in writer.handed if p.measurement == "site"]
    assert [p.time for p in site] == pytest.approx([c.time for c in cycles], abs=1e-6)
    assert [p.field("grid_kw") for p in site] == [c.snapshot.grid_kw for c in cycles]
    assert sum(p.measurement == "planning" for p in writer.handed) == daemon.tally.plans >= 2
    assert sum(p.measurement == "event" for p in writer.handed) == daemon.event_count

    # And the server holds exactly those samples: none missing, none twice.
    expected = samples(writer.handed)
    total = sum(len(v) for v in expected.values())
    held: dict[Key, list[tuple[int, float]]] = {}

    def all_there() -> bool:
        nonlocal held
        held = stored(victoria)
        return sum(len(v) for v in held.values()) >= total

    try:
        poll_until(all_there, 30, f"{total} samples to be searchable")
    except TimeoutError:
        short = {
            key[0]: len(want) - len(held.get(key, []))
            for key, want in expected.items()
            if len(want) != len(held.get(key, []))
        }
        raise AssertionError(f"series short of samples: {short}") from None
    assert held.keys() == expected.keys()
    for key, want in expected.items():
        got = sorted(held[key])
        want = sorted(want)
        assert [t for t, _ in got] == [t for t, _ in want], key
        assert all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
            for (_, a), (_, b) in zip(got, want, strict=True)
        ), key
    grid = sorted(
        (t, v) for (name, _), series in held.items() if name == "site_grid_kw" for t, v in series
    )
    assert [v for _, v in grid] == pytest.approx(
        [c.snapshot.grid_kw for c in cycles if c.snapshot.grid_kw is not None]
    )
