"""The whole path, end to end: the simulated reference station served over Modbus TCP on loopback
and the daemon controlling it through those connections, on one virtual clock.

The scenario is a busy morning: the depot draws about 1.8 MW and nine trucks arrive within twenty
minutes, together wanting far more than the headroom, so the limiter has to curtail. Every truck
must still get its energy and leave, the site must stay under its limit, and on shutdown every
pile must be left at its fallback power.
"""

from __future__ import annotations

import pytest

from base.config import Station
from drivers.modbus import ModbusDevice, ModbusLink
from simulator.fleet import Visit
from tests.conftest import StartStation, local_time

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]

PERIOD_S = 2.0


def _morning(start: float) -> list[Visit]:
    return [
        Visit(
            vehicle_id=f"truck-{n}",
            arrival=start + 60 + 150 * n,
            departure=start + 60 + 150 * n + 75 * 60,
            energy_kwh=180.0,
            max_kw=450.0,
            capacity_kwh=300.0,
            soc_arrival=0.30,
            pile=f"P{n + 1:02d}",
        )
        for n in range(9)
    ]


async def test_daemon_keeps_the_site_under_its_limit_and_delivers(
    station: Station, running_station: StartStation
) -> None:
    """Curtails under the limit, stays within pile bounds, delivers, leaves fallbacks behind."""
    station = station.with_control(period_s=PERIOD_S)
    start = local_time(station, "2026-11-25T10:00")
    visits = _morning(start)
    site = await running_station(station, visits, start=start, policy="equal-share")
    simulator, daemon, clock, cycles = site.simulator, site.daemon, site.clock, site.cycles
    await site.until(1.75 * 3600)
    await site.stop_daemon()
    shut_at = clock.now()
    await clock.sleep_until(shut_at + 30)  # the plant runs on without a controller

    plant = simulator.plant
    limit = station.limit_kw
    pile_delay = simulator.settings.pile_delay_s

    # The site load, as the plant really drew it every second, stayed under the limit
    # (allowing at most one reaction time: a cycle, the pile's delay and a second of ramp).
    reaction_s = PERIOD_S + pile_delay + 1.0
    assert plant.truth.longest_over_s <= reaction_s
    assert plant.truth.peak_kw <= limit + 1e-6, f"true peak {plant.truth.peak_kw:.0f} kW"
    assert daemon.tally.over_limit_s == 0.0
    assert daemon.tally.peak_grid_kw > limit - station.control.reserve_kw - 250, (
        "the headroom was used"
    )

    # The limiter really had to curtail: the trucks wanted more than the headroom.
    assert any(c.wanted_kw > c.budget_kw + 100 for c in cycles)
    assert any("curtailing" in e.text for e in daemon.events)

    # Every setpoint written stayed within its pile's bounds and ramped up smoothly.
    ramp_step = station.control.ramp_kw_per_s * PERIOD_S
    previous: dict[str, float] = {}
    for cycle in cycles:
        for view in cycle.snapshot.piles:
            kw = cycle.setpoints[view.id]
            assert kw == 0.0 or view.config.min_kw - 1e-6 <= kw <= view.config.max_kw + 1e-6, (
                view.id,
                kw,
            )
            if view.id not in previous and view.reading is not None:
                # The daemon starts each pile from the setpoint it applies (its fallback).
                previous[view.id] = view.reading.applied_setpoint_kw
            before = previous.get(view.id, 0.0)
            if kw > before:
                assert kw - before <= max(ramp_step, view.config.min_kw) + 1e-6, (
                    view.id,
                    before,
                    kw,
                )
            previous[view.id] = kw
        assert sum(cycle.setpoints.values()) <= max(cycle.budget_kw, 0.0) + 1e-6

    # Every truck arrived, got its energy and left; the daemon's count agrees with the plant.
    for visit in visits:
        record = plant.sessions[visit.vehicle_id]
        assert record.plugged_at is not None and record.left_at is not None, visit.vehicle_id
        assert record.delivered_kwh >= 0.99 * visit.energy_kwh, (
            visit.vehicle_id,
            record.delivered_kwh,
        )
    requested = sum(v.energy_kwh for v in visits)
    assert daemon.tally.energy_kwh == pytest.approx(plant.delivered_kwh(), abs=2.0)
    assert daemon.tally.energy_kwh >= 0.99 * requested
    assert daemon.tally.out_of_bounds == 0

    # After shutdown every pile reads its fallback setpoint, and applies it.
    for config in station.piles:
        link = ModbusLink(config.host, config.port, timeout_s=1.0)
        device = ModbusDevice(
            f"pile {config.id}", link, station.map_for(config.device), config.unit
        )
        try:
            values = await device.read(["setpoint", "applied_setpoint", "fallback_power"])
        finally:
            link.close()
        assert values["setpoint"] == pytest.approx(config.fallback_kw), config.id
        assert values["applied_setpoint"] == pytest.approx(config.fallback_kw), config.id
        assert values["fallback_power"] == pytest.approx(config.fallback_kw), config.id


async def test_a_lowered_limit_is_written_at_once_not_at_the_next_tick(
    station: Station, running_station: StartStation
) -> None:
    """An operator's override runs a cycle at once: the piles are written down to it at the time
    it was set, not up to a period later; the next tick keeps to the grid."""
    station = station.with_control(period_s=PERIOD_S)
    start = local_time(station, "2026-11-25T10:00")
    site = await running_station(station, _morning(start)[:4], start=start, policy="equal-share")
    daemon, clock = site.daemon, site.clock
    await site.until(15 * 60)
    last = site.cycles[-1].time
    await clock.sleep_until(last + PERIOD_S / 2)
    at = clock.now()
    drawn = site.cycles[-1].snapshot.piles_kw
    assert drawn > 500, "the trucks are charging"
    daemon.override_limit(site.cycles[-1].snapshot.grid_kw - drawn / 2, at + 600, "test")
    await clock.sleep_until(last + 2 * PERIOD_S + PERIOD_S / 2)
    first, second = site.cycles_after(last)[:2]
    assert first.time == at, "a cycle ran when the limit was lowered"
    assert sum(first.setpoints.values()) <= first.budget_kw + 1e-6
    assert first.budget_kw < drawn / 2 + station.control.reserve_kw + 1.0
    assert second.time == last + PERIOD_S, "the next tick kept to its grid"
