"""The mixed OCPP/RTU depot (configs/stations/ocpp-depot.toml): twelve DC piles as OCPP charge
points (1.6J and 2.0.1) and the grid meter on Modbus RTU over a socat pseudo-terminal pair.

`flexcharge demo` runs it to its summary; over loopback on one virtual clock the daemon keeps the
site under its limit while P03 ignores every profile (budgeted as load it takes on its own, said
once) and P08 applies each profile 20 s late (its latency learned); and when the daemon stops or
a charge point's link drops, every charge point is back at its safe power (fallback_kw) within
the station's profile validity.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import pytest

from base.config import CONFIG_ROOT, Station, load_station
from drivers.ocpp.pile import OcppPile
from flexcharge.demo import on_free_ports
from simulator.faults import Fault, FaultKind, FaultScript
from simulator.fleet import Visit
from simulator.serial_pair import serial_pairs
from tests.conftest import (
    StartStation,
    local_time,
    need_system_program,
    start_process,
    truck_visit,
)

DEPOT = CONFIG_ROOT / "stations" / "ocpp-depot.toml"
IGNORES, LATE = "P03", "P08"


@pytest.fixture
def depot() -> Iterator[tuple[Station, Station]]:
    """(the simulator's, the daemon's) ocpp-depot on free ports, the grid meter's serial line on
    the two ends of a pseudo-terminal pair."""
    need_system_program("socat", "the pseudo-terminal pair of the grid meter's serial line")
    station = on_free_ports(load_station(DEPOT))
    with serial_pairs(station) as pair:
        yield pair


def test_the_demo_runs_the_ocpp_depot_to_its_summary(
    processes: list[subprocess.Popen[str]],
) -> None:
    """Half an hour of the depot under the demo: OCPP and Modbus RTU named, nothing over the
    limit, measured or true, and no charge point reported lost at the start."""
    need_system_program("socat", "the pseudo-terminal pair of the grid meter's serial line")
    demo = start_process(
        ["demo", "--station", str(DEPOT), "--hours", "0.5", "--start", "18:00"], processes
    )
    out, err = demo.communicate(timeout=240)
    assert demo.returncode == 0, out + err
    assert "flexcharge demo: Bozhou depot on OCPP, 12 piles" in out
    assert "over Modbus RTU and OCPP on loopback" in out
    assert "flexcharge demo summary" in out and "CUT SHORT" not in out, out
    over = re.search(r"time over the limit\s*│\s*(\d+) s measured; true (\d+) s", out)
    assert over is not None, out
    assert over.groups() == ("0", "0"), out
    plugged = re.search(r"(\d+) plugged in", out)
    assert plugged is not None and int(plugged.group(1)) > 0, out
    # The charge points still connecting when the daemon starts are waited for, not reported
    # as lost devices by its first cycles.
    assert "is not connected" not in out + err, out + err


def _trucks(station: Station, start: float) -> list[Visit]:
    """P03 first, the other eleven a minute apart after it: together they want more than the
    transformer leaves the piles."""
    order = [IGNORES] + [p.id for p in station.piles if p.id != IGNORES]
    return [truck_visit(start + 60 + 60 * n, pile) for n, pile in enumerate(order)]


@pytest.mark.asyncio
@pytest.mark.loopback
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_the_depot_stays_under_its_limit_with_a_deaf_and_a_late_charge_point(
    depot: tuple[Station, Station], running_station: StartStation
) -> None:
    """With every pile busy, the site stays under its limit (the plant's truth) while P03 draws
    what it likes (flagged once, budgeted as uncontrolled load) and P08 follows 20 s late."""
    served, controlled = depot
    start = local_time(served, "2026-11-25T18:00")
    visits = _trucks(served, start)
    site = await running_station(
        served, visits, start=start, controlled=controlled, policy="equal-share"
    )
    await site.until(25 * 60)
    await site.stop()

    plant = site.simulator.plant
    truth = plant.truth
    assert truth.peak_kw <= served.limit_kw, f"true peak {truth.peak_kw:.0f} kW"
    busy = [c for c in site.cycles if c.time > start + 14 * 60]
    assert busy and max(c.snapshot.grid_kw or 0.0 for c in busy) > served.limit_kw - 400, (
        "the limit really bit"
    )
    deaf = [e.text for e in site.daemon.events if IGNORES in e.text and "not following" in e.text]
    assert len(deaf) == 1, deaf
    assert "counted as load it takes on its own" in deaf[0]
    assert plant.piles[IGNORES].session_energy_kwh > 50.0, "P03 charged as it liked"
    late = site.daemon.piles[LATE]
    assert isinstance(late, OcppPile) and late.latency_s is not None, "P08's latency timed"
    assert plant.piles[LATE].session_energy_kwh > 10.0, "P08 charged"
    assert site.simulator.charge_points[LATE].quirks.apply_delay_s == 20.0


@pytest.mark.asyncio
@pytest.mark.loopback
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_every_charge_point_falls_back_within_the_validity(
    depot: tuple[Station, Station], running_station: StartStation
) -> None:
    """P05's websocket drops for two minutes while the daemon runs, then the daemon stops: each
    charge point that applies profiles is at its fallback_kw no later than profile_validity_s
    after its link was lost (station time on the virtual clock)."""
    served, controlled = depot
    assert served.ocpp is not None
    validity = served.ocpp.profile_validity_s
    start = local_time(served, "2026-11-25T18:00")
    dropped = "P05"
    drop_at, stop_at = start + 3 * 60, start + 6 * 60
    faults = FaultScript([Fault(FaultKind.WS_DROP, dropped, drop_at, drop_at + 120)])
    visits = [truck_visit(start + 30, p.id) for p in served.piles]
    site = await running_station(
        served, visits, start=start, controlled=controlled, policy="equal-share", faults=faults
    )
    points = site.simulator.charge_points
    fallback = {p.id: p.fallback_kw for p in served.piles}
    back_at: dict[str, float] = {}

    def watch_drop(*_: object) -> None:
        now = site.clock.now()
        at_fallback = abs(points[dropped].limit_kw - fallback[dropped]) < 1e-6
        if drop_at <= now and dropped not in back_at and at_fallback:
            back_at[dropped] = now

    site.daemon.watch(watch_drop)
    await site.until(drop_at - start - 10)
    before = points[dropped].limit_kw
    assert before != pytest.approx(fallback[dropped]), "told other than its fallback"
    await site.until(stop_at - start)
    assert dropped in back_at and back_at[dropped] - drop_at <= validity
    told = {pid: cp.limit_kw for pid, cp in points.items()}
    await site.stop_daemon()
    stopped = site.clock.now()
    deadline = stopped + validity
    while site.clock.now() < deadline:
        await site.clock.sleep(1.0)
        for pid, cp in points.items():
            if pid != IGNORES and pid not in back_at and cp.limit_kw == fallback[pid]:
                back_at[pid] = site.clock.now()
    assert set(back_at) == {p.id for p in served.piles} - {IGNORES}, told
    assert all(back_at[pid] - stopped <= validity for pid in back_at if pid != dropped)
