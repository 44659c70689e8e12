"""A restart as an operator would suffer one: the daemon is SIGKILLed mid-session and started again.

`sim-hardware` replays a truck that plugs into P01 now; `run` controls it over real Modbus on
loopback, in real time, with a state file. Once the file shows the truck's session with some
energy and a month peak, the daemon is killed (no shutdown, no final save) and started again on
the same file. The session must continue in the same row, its energy must carry on and agree with
what the pile itself counts, and the month's peak must be kept. Nothing sleeps for a fixed time:
every wait polls for its condition, with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar
from zoneinfo import ZoneInfo

import pytest

from base.config import load_station
from drivers.modbus import ModbusDevice, ModbusLink
from tests.conftest import FLEXCHARGE, station_files_on_free_ports

T = TypeVar("T")

pytestmark = pytest.mark.loopback


class Process:
    """A `flexcharge` process whose log goes to a file (a pipe nobody reads could fill up)."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._file: IO[str] = log.open("w")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            [FLEXCHARGE, *args],
            stdout=self._file,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=log.parent,
        )

    def text(self) -> str:
        """What the process has logged so far."""
        return self.log.read_text()

    def stop(self, sig: signal.Signals) -> int:
        """Send `sig` and wait for the exit status."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=30)

    def close(self) -> None:
        """Kill the process if it still runs."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._file.close()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Started processes, killed at the end if a test left them running."""
    started: list[Process] = []
    yield started
    for process in started:
        process.close()


def _until(what: str, check: Callable[[], T | None], timeout_s: float, *logs: Process) -> T:
    """Poll `check` until it returns something; fail naming `what` (and showing the logs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found is not None:
            return found
        for process in logs:
            assert process.proc.poll() is None, f"{process.log.name} exited:\n{process.text()}"
        time.sleep(0.1)
    shown = "\n".join(f"--- {p.log.name}\n{p.text()}" for p in logs)
    raise AssertionError(f"no {what} within {timeout_s:g} s\n{shown}")


def _logged(process: Process, pattern: str) -> Callable[[], bool | None]:
    return lambda: True if re.search(pattern, process.text()) else None


State = tuple[list[dict[str, Any]], dict[str, Any] | None]


def _state(db: Path) -> State | None:
    """The sessions and this month's peak row in the state file (None before it has them)."""
    if not db.exists():
        return None
    conn = sqlite3.connect(db, timeout=5.0)
    conn.row_factory = sqlite3.Row
    try:
        sessions = [dict(r) for r in conn.execute("SELECT * FROM sessions ORDER BY plugged_at")]
        month = conn.execute("SELECT * FROM month_peak ORDER BY month DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # the daemon is still creating the file
        return None
    finally:
        conn.close()
    return sessions, (None if month is None else dict(month))


def _pile_counters(station_path: Path) -> dict[str, float]:
    """P01's own session id, session energy and lifetime counter, read over Modbus."""
    station = load_station(station_path)
    config = station.pile("P01")

    async def read() -> dict[str, float]:
        link = ModbusLink(config.host, config.port, timeout_s=2.0)
        device = ModbusDevice("pile P01", link, station.map_for(config.device), config.unit)
        try:
            values = await device.read(["session_id", "session_energy", "energy_import"])
        finally:
            link.close()
        return {name: float(value or 0.0) for name, value in values.items()}

    return asyncio.run(read())


def _truck_now(path: Path, zone: ZoneInfo) -> Path:
    now = datetime.now(zone).replace(microsecond=0)
    leaves = datetime.fromtimestamp(now.timestamp() + 3600, zone)
    path.write_text(
        "id,arrival,departure,energy_kwh,max_kw,pile,capacity_kwh,soc_arrival,v2g\n"
        f"restart-truck,{now.isoformat()},{leaves.isoformat()},400,450,P01,600,0.2,false\n"
    )
    return path


def test_killed_daemon_resumes_the_session_and_the_month_peak(
    tmp_path: Path, processes: list[Process]
) -> None:
    began = time.monotonic()
    station_path = station_files_on_free_ports(tmp_path)
    text = station_path.read_text()
    # Equal shares charge the truck at once (a plan might wait for the valley), and steeper
    # ramps give it energy within seconds.
    for old, new in (
        ('policy = "mpc"', 'policy = "equal-share"'),
        ("ramp_kw_per_s = 20.0", "ramp_kw_per_s = 200.0"),
        ("ramp_kw_per_min = 400", "ramp_kw_per_min = 20000"),
    ):
        assert old in text, old
        text = text.replace(old, new)
    station_path.write_text(text)
    station = load_station(station_path)
    sessions = _truck_now(tmp_path / "truck.csv", ZoneInfo(station.info.timezone))
    db = tmp_path / "state" / "depot.sqlite"
    run = ["run", "--station", str(station_path), "--state", str(db), "--status-every", "1"]
    run += ["--pidfile", str(tmp_path / "flexcharge.pid")]

    simulator = Process(
        ["sim-hardware", "--station", str(station_path), "--sessions", str(sessions)],
        tmp_path / "sim-hardware.log",
    )
    processes.append(simulator)
    _until("simulator serving", _logged(simulator, r"serving "), 20, simulator)
    first = Process(run, tmp_path / "run-1.log")
    processes.append(first)

    def charged() -> State | None:
        state = _state(db)
        if state is None or not state[0] or state[1] is None or state[1]["peak_kw"] <= 0:
            return None
        return state if state[0][0]["energy_kwh"] >= 0.5 else None

    _until("session with energy and a month peak", charged, 25, simulator, first)
    first.proc.send_signal(signal.SIGKILL)
    assert first.proc.wait(timeout=10) == -signal.SIGKILL
    killed_state = _state(db)
    assert killed_state is not None
    (before,), month_before = killed_state
    assert month_before is not None
    peak_before = month_before["peak_kw"]
    assert before["pile"] == "P01" and before["ended_at"] is None
    assert "left at its fallback power" not in first.text(), "killed, not shut down"

    second = Process(run, tmp_path / "run-2.log")
    processes.append(second)
    _until("resumed", _logged(second, r"resuming from .*1 session\(s\) in progress"), 20, second)
    assert f"month peak {peak_before:.0f} kW" in second.text()

    def counted_on() -> State | None:
        state = _state(db)
        if state is None or not state[0]:
            return None
        return state if state[0][-1]["energy_kwh"] >= before["energy_kwh"] + 0.5 else None

    _until("energy counted after the restart", counted_on, 20, simulator, second)
    after_state = _state(db)
    pile = _pile_counters(station_path)
    assert after_state is not None
    rows, month_after = after_state
    assert month_after is not None
    peak_after = month_after["peak_kw"]

    # The same row carries on: no second session, same pile session, same plug-in time.
    assert len(rows) == 1, rows
    (after,) = rows
    assert after["ended_at"] is None
    for key in ("pile", "pile_session_id", "plugged_at", "start_counter_kwh", "vehicle_id"):
        assert after[key] == before[key], key
    assert pile["session_id"] == before["pile_session_id"]
    energy_before, energy_after = before["energy_kwh"], after["energy_kwh"]
    assert energy_after >= energy_before
    # The account agrees with the pile's own session counter: brought forward to the counter
    # reading taken with it, up to the registers' resolution; as saved, within what the truck
    # draws between a save and the read.
    brought_forward = energy_after + pile["energy_import"] - after["last_counter_kwh"]
    assert brought_forward == pytest.approx(pile["session_energy"], abs=0.15)
    assert energy_after == pytest.approx(pile["session_energy"], abs=0.6)
    assert peak_after >= peak_before > 0
    if month_after["window_start"] == month_before["window_start"]:
        # The billing window's energy carried on from where it was (not from zero), and the
        # month's peak counts it (an earlier window may still hold the peak: the test can start
        # just before a quarter hour).
        assert month_after["window_kwh"] > month_before["window_kwh"]
        assert peak_after >= month_after["window_kwh"] / 0.25 - 1e-6

    assert second.stop(signal.SIGTERM) == 0
    assert "left at its fallback power" in second.text()
    assert "Traceback" not in second.text() + first.text()
    assert simulator.stop(signal.SIGTERM) == 0
    wall_s = time.monotonic() - began
    print(
        f"energy before kill {energy_before:.2f} kWh, after restart {energy_after:.2f} kWh, "
        f"pile session counter {pile['session_energy']:.2f} kWh (lifetime {pile['energy_import']:.1f}); "
        f"month peak {peak_before:.1f} -> {peak_after:.1f} kW; wall {wall_s:.1f} s"
    )


def test_an_unusable_state_file_stops_the_daemon_before_it_starts(tmp_path: Path) -> None:
    """Exit 2 and the file named; the file is left as it was."""
    station_path = station_files_on_free_ports(tmp_path)
    db = tmp_path / "state.sqlite"
    db.write_bytes(b"not a database at all" * 100)
    result = subprocess.run(
        [
            FLEXCHARGE,
            "run",
            "--station",
            str(station_path),
            "--state",
            str(db),
            "--pidfile",
            str(tmp_path / "other.pid"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(db) in result.stdout and "not a usable state file" in result.stdout
    assert "controlling" not in result.stderr
    assert db.read_bytes() == b"not a database at all" * 100
