"""One set of books: after a pile's counters reset (the hardware simulator restarted mid-session),
the API, the ledger (and the state file), telemetry and the log give each session the same
energy.

Two trucks charge on the reference station's P01 and P02 under the daemon, with its state file,
its telemetry (the local store) and its HTTP API, over Modbus on loopback, on a virtual clock.
Ten minutes in, the simulator stops and starts again: the piles come back with both their
counters at zero, the same trucks plugged in under the same pile session ids. The truck on P02
leaves a few minutes later; the one on P01 is still charging at the end.
"""

from __future__ import annotations

import itertools
import logging
import re
import sqlite3
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from base.config import Station
from base.stationsettings import ApiSettings
from controller.api import ApiServer
from controller.store import StateStore
from controller.telemetry.local import query_local
from controller.telemetry.writer import writer_for
from simulator.fleet import Visit
from simulator.hardware import StationSimulator
from tests.conftest import StartStation, free_ports, local_time

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]

RESTART_S = 600.0
BACK_S = 630.0
P02_LEAVES_S = 800.0
END_S = 960.0


def _trucks(start: float) -> list[Visit]:
    return [
        Visit("truck-1", start + 10, start + 6 * 3600, 400.0, 300.0, 600.0, 0.2, "P01"),
        Visit("truck-2", start + 10, start + P02_LEAVES_S, 400.0, 300.0, 600.0, 0.2, "P02"),
    ]


async def test_a_counter_reset_leaves_one_set_of_books(
    station: Station,
    running_station: StartStation,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="control")
    caplog.set_level(logging.INFO, logger="controller")
    station = replace(station, piles=station.piles[:2]).with_control(period_s=2.0)
    start = local_time(station, "2026-11-25T10:00")
    visits = _trucks(start)
    telemetry_path = tmp_path / "telemetry.sqlite"
    writer = writer_for(station, directory=tmp_path, local_store=telemetry_path)
    assert writer is not None
    with StateStore(tmp_path / "state.sqlite", station.name) as store:
        site = await running_station(
            station, visits, start=start, policy="equal-share", store=store, telemetry=writer
        )
        daemon, clock = site.daemon, site.clock
        api = ApiServer(daemon, ApiSettings(host="127.0.0.1", port=free_ports(1)[0]))
        daemon.services.append(api)
        again: StationSimulator | None = None
        try:
            with clock.participant():
                await clock.sleep_until(start + RESTART_S)
                before = {p: s.delivered_kwh for p, s in daemon.control.sessions.items()}
                await site.simulator.stop()
                await clock.sleep_until(start + BACK_S)
                again = StationSimulator(station, clock, visits=visits)
                await again.start()
                # Between two ticks: no cycle is under way while the API is asked and the
                # ledger read (station time stands still meanwhile), and the API's process
                # serves the daemon's state as it is now.
                await clock.sleep_until(start + END_S + 1.0)
                await api.synced()
                async with httpx.AsyncClient(base_url=api.url, timeout=10) as client:
                    response = await client.get("/api/sessions")
                assert response.status_code == 200, response.text
                in_api = {s["pile"]: s["delivered_kwh"] for s in response.json()}
                assert daemon.saver is not None
                in_ledger = {
                    s.pile: s.account.energy_kwh
                    for s in daemon.saver.ledger.records()
                    if s.account is not None and s.ended_at is None
                }
                last_cycle = daemon.last_cycle
                assert last_cycle is not None
                await site.stop_daemon()
        finally:
            await site.stop_daemon()
            if again is not None:
                await again.stop()

    # The restart happened mid-session: both trucks had energy, and the piles' counters reset.
    assert before["P01"] > 20 and before["P02"] > 20
    reset = {
        pile: float(kwh)
        for pile, kwh in re.findall(
            r"pile (P0\d): lifetime import counter went back .* keeps its ([\d.]+) kWh", caplog.text
        )
    }
    assert set(reset) == {"P01", "P02"}, caplog.text
    for pile, kept in reset.items():
        assert kept == pytest.approx(before[pile], abs=0.05), "the log says what it had"

    told = _session_kwh(telemetry_path, "P01")
    # P01, still charging: the API, the ledger and telemetry say the same energy, which is what
    # the log said it kept plus what its counter has counted since.
    assert in_api["P01"] == pytest.approx(in_ledger["P01"], abs=1e-9)
    assert told[last_cycle.time] == pytest.approx(in_api["P01"], abs=1e-9)
    assert in_api["P01"] > reset["P01"] + 5, "it counted on after the reset"
    after_reset = [kwh for t, kwh in sorted(told.items()) if t >= start + BACK_S]
    assert after_reset[0] == pytest.approx(reset["P01"], abs=0.05), "telemetry kept it too"
    assert all(b >= a for a, b in itertools.pairwise(after_reset))
    # Stopped, the state file and telemetry's last point keep the session's last energy.
    rows = _rows(tmp_path / "state.sqlite")
    final = daemon.control.sessions["P01"].delivered_kwh
    assert rows["P01"]["ended_at"] is None
    assert rows["P01"]["energy_kwh"] == pytest.approx(final, abs=1e-9)
    assert told[max(told)] == pytest.approx(final, abs=1e-9)

    # P02 left after the reset: the log, telemetry's event and the state file's closed row say
    # the same energy, more than it had before the reset; the API no longer lists it.
    assert "P02" not in in_api and "P02" not in in_ledger
    left = [e.text for e in daemon.events if e.text.startswith("P02: vehicle left after")]
    assert len(left) == 1, [e.text for e in daemon.events]
    events = query_local(telemetry_path, "event")
    assert [e.field("text") for e in events if e.field("text") in left] == left
    logged = float(left[0].split("after ")[1].split(" of")[0])
    assert rows["P02"]["ended_at"] is not None
    assert round(rows["P02"]["energy_kwh"]) == logged > reset["P02"]


def _rows(path: Path) -> dict[str, sqlite3.Row]:
    """The state file's session rows, by pile (one session per pile here)."""
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return {r["pile"]: r for r in db.execute("SELECT * FROM sessions").fetchall()}
    finally:
        db.close()


def _session_kwh(path: Path, pile: str) -> dict[float, float]:
    """Telemetry's session energy of `pile`, by cycle time."""
    points = query_local(path, "pile", tags={"pile": pile})
    return {
        p.time: float(p.field("session_kwh")) for p in points if p.field("session_kwh") is not None
    }  # type: ignore[arg-type]
