"""The `flexcharge` command as an operator runs it: real processes, real signals, real time.

`sim-hardware` and `run` are started as separate processes on free loopback ports; the daemon is
stopped with SIGTERM or SIGINT and must exit 0 leaving every pile at its fallback power. The demo
runs briefly and must print its summary.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from base.config import CONFIG_ROOT, load_station
from drivers.modbus import ModbusDevice, ModbusLink
from tests.conftest import FLEXCHARGE, start_process, station_files_on_free_ports, wait_for_line


def test_check_config_exit_codes(tmp_path: Path) -> None:
    """0 and a one-line description for the reference station; 2 and every problem for a broken copy."""
    ok = subprocess.run(
        [FLEXCHARGE, "check-config", str(CONFIG_ROOT / "stations" / "bozhou-depot.toml")],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "valid station: Bozhou logistics depot" in ok.stdout
    assert "limit 4,275 kW" in ok.stdout

    path = station_files_on_free_ports(tmp_path)
    text = path.read_text().replace("reserve_kw = 80.0", "reserve_kw = -80.0")
    text = re.sub(r'(id = "P04"\nport = \d+\n)max_kw = 480.0', r"\1max_kw = 6000.0", text)
    path.write_text(text)
    tariff = path.parent.parent / "tariffs" / "guizhou-tou.toml"
    tariff.write_text(
        tariff.read_text().replace(
            '{ start = "12:00", end = "16:00"', '{ start = "11:00", end = "16:00"', 1
        )
    )
    bad = subprocess.run(
        [FLEXCHARGE, "check-config", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert bad.returncode == 2
    assert (
        "control.reserve_kw: Input should be greater than or equal to 0 (got -80.0)" in bad.stdout
    )
    assert "pile P04: max_kw" in bad.stdout
    assert "guizhou-tou.toml: season standard, day type every day" in bad.stdout
    assert "overlaps" in bad.stdout


@pytest.mark.loopback
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_daemon_process_stops_on_signal_leaving_fallbacks(
    tmp_path: Path, processes: list[subprocess.Popen[str]], stop_signal: signal.Signals
) -> None:
    """`run` against `sim-hardware`: controls, then on a signal exits 0 with piles at fallback."""
    path = station_files_on_free_ports(tmp_path)
    station = load_station(path)
    simulator = start_process(["sim-hardware", "--station", str(path)], processes)
    wait_for_line(simulator, r"serving ")
    state = str(tmp_path / "state.sqlite")
    pidfile = str(tmp_path / "flexcharge.pid")
    daemon = start_process(
        [
            "run",
            "--station",
            str(path),
            "--state",
            state,
            "--pidfile",
            pidfile,
            "--status-every",
            "1",
        ],
        processes,
    )
    wait_for_line(daemon, r"controlling Bozhou")
    wait_for_line(daemon, r"site \d+ / 4275 kW")
    wait_for_line(daemon, r"site \d+ / 4275 kW")  # at least two cycles a second apart

    async def setpoints() -> dict[str, float]:
        found = {}
        for config in station.piles:
            link = ModbusLink(config.host, config.port, timeout_s=2.0)
            device = ModbusDevice(config.id, link, station.map_for(config.device), config.unit)
            try:
                values = await device.read(["setpoint"])
            finally:
                link.close()
            found[config.id] = float(values["setpoint"] or 0.0)
        return found

    daemon.send_signal(stop_signal)
    assert daemon.wait(timeout=30) == 0
    assert daemon.stderr is not None
    log = daemon.stderr.read()
    assert "left at its fallback power" in log
    assert "Traceback" not in log
    found = asyncio.run(setpoints())
    assert found == {p.id: pytest.approx(p.fallback_kw) for p in station.piles}

    simulator.send_signal(signal.SIGTERM)
    assert simulator.wait(timeout=30) == 0


@pytest.mark.loopback
def test_demo_runs_and_summarises(processes: list[subprocess.Popen[str]]) -> None:
    """A short demo exits 0 and prints its summary with the measured peak against the limit."""
    demo = start_process(
        ["demo", "--hours", "1.5", "--speed", "2000", "--duration", "60"], processes
    )
    out, err = demo.communicate(timeout=120)
    assert demo.returncode == 0, err
    assert "flexcharge demo summary" in out
    assert re.search(r"peak site load\s*│\s*[\d,]+ kW measured by the daemon", out), out
    assert "time over the limit" in out and "energy delivered" in out
    assert "vehicle connected" in out, "events are shown"
    assert "Traceback" not in err
