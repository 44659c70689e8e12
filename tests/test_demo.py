"""`flexcharge demo` never misleads: it serves its devices on free ports (two demos and the
real-time pair of the README run side by side), and a demo stopped before the end of its window
says so, and where, in its summary. A server whose port is taken says "already in use"."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from rich.console import Console

from base.clock import VirtualClock
from base.config import Station
from flexcharge.demo import DemoResult, on_free_ports, print_summary
from simulator.hardware import SimulatorError, StationSimulator

from .conftest import start_process

# Two tests hold the reference station's own port 15020, as the README's real-time pair uses it.
pytestmark = pytest.mark.xdist_group("reference-ports")

START = datetime(2026, 12, 1, 16, 0, tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


@contextmanager
def holding(port: int) -> Iterator[socket.socket | None]:
    """A listening socket on 127.0.0.1:`port`, or None if another program holds it already
    (which serves the test as well)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        sock.close()
        yield None
        return
    try:
        yield sock
    finally:
        sock.close()


def test_free_ports_keep_shared_endpoints_shared(reference: Station) -> None:
    """Every endpoint of the station file gets a port of its own that differs from the file's;
    devices behind one endpoint stay behind one."""
    shared = reference.with_endpoints({p.id: 15021 for p in reference.piles[:3]})
    moved = on_free_ports(shared)
    old = {d.id: d.port for d in shared.devices}
    new = {d.id: d.port for d in moved.devices}
    assert not set(new.values()) & set(old.values())
    assert len({new[p.id] for p in reference.piles[:3]}) == 1
    assert len(set(new.values())) == len(set(old.values()))
    assert all(d.host == "127.0.0.1" for d in moved.devices)


@pytest.mark.loopback
def test_two_demos_at_once_while_the_station_files_port_is_held(
    processes: list[subprocess.Popen[str]],
) -> None:
    """With 127.0.0.1:15020 (the reference station's meter, used by the README's real-time
    pair) taken, two demos started together both run to their summary."""
    with holding(15020):
        args = ["demo", "--hours", "0.5", "--speed", "2000", "--duration", "60"]
        demos = [start_process(args, processes) for _ in range(2)]
        for demo in demos:
            out, err = demo.communicate(timeout=180)
            assert demo.returncode == 0, err
            assert "flexcharge demo summary" in out
            assert "Traceback" not in err and "in use" not in err


@pytest.mark.loopback
def test_the_station_files_ports_when_taken_are_said_to_be_in_use(
    processes: list[subprocess.Popen[str]],
) -> None:
    """`--station-ports` serves on the file's ports; one taken is named as in use, exit 1."""
    with holding(15020):
        demo = start_process(["demo", "--station-ports", "--duration", "10"], processes)
        out, err = demo.communicate(timeout=60)
    assert demo.returncode == 1, out + err
    # The demo logs to its console (stdout), under the live view.
    assert "127.0.0.1:15020 is already in use" in out
    assert "Traceback" not in out + err


@pytest.mark.loopback
@pytest.mark.asyncio
async def test_the_simulator_says_a_taken_port_is_in_use(station: Station) -> None:
    """A Modbus endpoint whose port another socket listens on: "host:port is already in use"."""
    port = station.grid_meter.port
    with holding(port) as held:
        assert held is not None
        simulator = StationSimulator(station, VirtualClock(START))
        with pytest.raises(SimulatorError, match=rf"127\.0\.0\.1:{port} is already in use"):
            await simulator.start()
        await simulator.stop()


def _result(**changes: object) -> DemoResult:
    whole = DemoResult(
        station_start=START,
        station_end=START + 15 * 3600,
        window_end=START + 15 * 3600,
        stopped_by="the end of the window",
        speed=960.0,
        wall_s=60.0,
        daemon_peak_kw=3900.0,
        daemon_over_limit_s=0.0,
        daemon_energy_kwh=12000.0,
        true_peak_kw=3902.0,
        true_over_limit_s=0.0,
        true_longest_over_s=0.0,
        true_energy_kwh=12001.0,
        limit_kw=4275.0,
        cycles=6750,
        out_of_bounds=0,
        arrivals=40,
        departures=30,
        curtailments=2,
        energy_by_band={"valley": 8000.0, "peak": 4000.0},
        charging_cost=6000.0,
        currency="CNY",
    )
    return replace(whole, **changes)  # type: ignore[arg-type]


def _summary(result: DemoResult, station: Station) -> str:
    console = Console(record=True, width=300)
    print_summary(result, station, console)
    return console.export_text()


def test_a_whole_demo_summary_reads_as_whole(reference: Station) -> None:
    """A demo that ran its window: no warning."""
    text = _summary(_result(), reference)
    assert "CUT SHORT" not in text
    assert "(15.0 h)" in text


def test_a_demo_cut_short_says_so_and_where(reference: Station) -> None:
    """The 85 s cap reached 6.7 h into the 15 h window on a busy machine: the title and the
    first row say so, how far it got, what stopped it, and what would let it finish."""
    result = _result(
        station_end=START + 6.7 * 3600,
        stopped_by="the --duration cap of 85 s of real time",
        wall_s=85.0,
    )
    text = _summary(result, reference)
    lines = text.splitlines()
    assert "CUT SHORT at 22:42 (6.7 of 15.0 h)" in lines[0]
    assert "stopped by the --duration cap of 85 s of real time at 22:42" in text
    assert "every figure below covers 16:00-22:42 only" in text
    assert "--duration 190" in text  # 85 s x 15 / 6.7
    assert "ran the station at 284x, not the 960x asked" in text


@pytest.mark.loopback
def test_a_demo_stopped_by_its_cap_says_so(processes: list[subprocess.Popen[str]]) -> None:
    """Ten hours at 960x take at least 37.5 s: a 2 s cap stops the demo, and its summary says
    it was cut short."""
    demo = start_process(["demo", "--hours", "10", "--duration", "2"], processes)
    out, err = demo.communicate(timeout=120)
    assert demo.returncode == 0, err
    assert "flexcharge demo summary: CUT SHORT" in out
    assert "stopped by the --duration cap of 2 s of real time" in out
