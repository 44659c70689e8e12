"""Faults over real Modbus: the hardware simulator injects them behind its servers, and the daemon
(its real drivers, feeds and fail-safe handling) must notice, stay safe and recover.

Eight trucks charge hard at 10:00 on the reference station. During the run the grid meter goes
silent, then freezes, a pile drops its connection and another reboots (it comes back at its own
safe value with a factory communication timeout, so the daemon must arm it again). A pile fault
is told as the same records by the daemon and by fast simulation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from base.clock import VirtualClock
from base.config import Station
from base.events import DeviceRef, Event, Kind, Source
from controller.daemon import Daemon
from simulator.fast import Scenario, simulate
from simulator.faults import Fault, FaultKind, FaultScript
from simulator.fleet import Visit
from simulator.hardware import StationSimulator
from simulator.plant import FACTORY_TIMEOUT_S
from tests.conftest import local_time

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]

PERIOD_S = 2.0


def _trucks(start: float) -> list[Visit]:
    return [
        Visit(
            vehicle_id=f"truck-{n}",
            arrival=start,
            departure=start + 3 * 3600,
            energy_kwh=500.0,
            max_kw=450.0,
            capacity_kwh=600.0,
            soc_arrival=0.1,
            pile=f"P{n:02d}",
        )
        for n in range(1, 9)
    ]


async def test_daemon_rides_out_faults_over_modbus(station: Station) -> None:
    """Meter silent and frozen, a pile dropped, a pile rebooted: logged, safe, recovered."""
    station = station.with_control(period_s=PERIOD_S)
    start = local_time(station, "2026-11-25T10:00")
    faults = FaultScript(
        [
            Fault(FaultKind.SILENT, "grid", start + 120, start + 140),
            Fault(FaultKind.FROZEN, "grid", start + 200, start + 250),
            Fault(FaultKind.DROPPED, "P02", start + 300, start + 320),
            Fault(FaultKind.REBOOT, "P03", start + 360, start + 380),
        ]
    )
    clock = VirtualClock(start)
    async with StationSimulator(station, clock, visits=_trucks(start), faults=faults) as sim:
        daemon = Daemon.for_station(station, clock, policy="equal-share")
        running = asyncio.create_task(daemon.run())
        await clock.sleep_until(start + 480)
        daemon.request_stop()
        await running

        plant = sim.plant
        # The site never went over its limit (a reaction time is allowed, none was needed).
        assert plant.truth.longest_over_s <= PERIOD_S + 2.0
        assert plant.truth.peak_kw > 0.8 * station.limit_kw, "the trucks used the headroom"

        texts = [e.text for e in daemon.events]

        def logged(part: str) -> int:
            return sum(part in text for text in texts)

        assert logged("meter grid: ") >= 2 and logged("meter grid: back to normal") == 2
        assert logged("meter grid: frozen") == 1
        assert logged("pile P02: back to normal") == 1
        assert logged("pile P03: back to normal") == 1
        # The rebooted pile forgot the controller's fail-safe: the daemon armed it again.
        p03 = plant.piles["P03"]
        assert p03.comm_timeout_s == station.pile("P03").comm_timeout_s != FACTORY_TIMEOUT_S
        # Every truck charged again after the faults, and the daemon's count matches the plant.
        last = daemon.last_cycle
        assert last is not None
        charging = {v.id for v in last.snapshot.piles if v.reading and v.reading.power_kw > 10}
        assert charging == {f"P{n:02d}" for n in range(1, 9)}
        # Energy drawn while a pile could not be read is counted once it can be read again:
        # each pile's last counter reading is what the plant had then (a cycle before it
        # stopped, and to the map's 0.1 kWh).
        for view in last.snapshot.piles:
            assert view.reading is not None
            truth = plant.piles[view.id].energy_import_kwh
            assert view.reading.energy_import_kwh == pytest.approx(truth, abs=1.0), view.id


async def test_a_pile_fault_is_told_alike_by_the_daemon_and_by_simulate(station: Station) -> None:
    """A pile that reports a fault, then stops answering: the daemon over Modbus and `simulate`
    tell the same records of it (the fault from the control step, the silence from the pile)."""
    station = station.with_control(period_s=PERIOD_S)
    start = local_time(station, "2026-11-25T10:00")
    faults = (
        Fault(FaultKind.FAULT_STATE, "P03", start + 60, start + 120, 7.0),
        Fault(FaultKind.SILENT, "P03", start + 180, start + 186),
    )
    visits = _trucks(start)[:3]
    clock = VirtualClock(start)
    async with StationSimulator(station, clock, visits=visits, faults=FaultScript(faults)):
        daemon = Daemon.for_station(station, clock, policy="equal-share")
        running = asyncio.create_task(daemon.run())
        await clock.sleep_until(start + 210)
        daemon.request_stop()
        await running
    scenario = Scenario(
        station, station.tariff, tuple(visits), start, start + 210, "pile fault", faults=faults
    )
    simulated = simulate(scenario, "equal-share", step_s=PERIOD_S)

    p03 = DeviceRef.pile("P03")

    def told(events: Iterable[Event]) -> list[tuple[Source, Kind, DeviceRef | None, str]]:
        return [
            (e.source, e.kind, e.device, e.text)
            for e in events
            if e.source is not Source.SIMULATOR
            and (e.device == p03 or e.text.startswith("pile P03: fault"))
        ]

    in_daemon, in_simulate = told(daemon.events), told(simulated.events)
    expected = [
        (Source.CONTROL, Kind.FAULT, p03),
        (Source.CONTROL, Kind.FAULT_CLEARED, p03),
        (Source.DEVICE, Kind.FAILED, p03),
        (Source.DEVICE, Kind.RECOVERED, p03),
    ]
    assert [e[:3] for e in in_daemon] == [e[:3] for e in in_simulate] == expected
    fault_texts = ["pile P03: fault: reports fault code 7", "pile P03: fault cleared"]
    assert [e[3] for e in in_daemon[:2]] == [e[3] for e in in_simulate[:2]] == fault_texts
