"""The daemon planning over real Modbus: the MPC's plans, solved in the worker thread, drive the
simulated piles on loopback.

Four trucks plug in at 22:30, in the flat band, and tell the station (as a fleet system would)
that they leave at 04:00 needing 250 kWh each. The plan must hold them until the valley opens at
midnight and then charge them, within the limit; every truck must be full by its departure.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest

from base.config import Station
from control.decider import Policy
from control.sessions import Wish
from scheduler.plan import Plan, PlanStatus
from scheduler.problem import Problem
from simulator.fleet import Visit
from simulator.plant import PileModel, VehicleModel
from tests.conftest import StartStation, local_time

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]


def _trucks(start: float, piles: list[str]) -> list[Visit]:
    return [
        Visit(
            vehicle_id=f"night-{pile}",
            arrival=start + 60 * (k + 1),
            departure=start + 5.5 * 3600,
            energy_kwh=250.0,
            max_kw=450.0,
            capacity_kwh=600.0,
            soc_arrival=0.3,
            pile=pile,
        )
        for k, pile in enumerate(piles)
    ]


async def test_daemon_follows_its_plans_into_the_valley(
    station: Station, running_station: StartStation
) -> None:
    """Charging waits for the valley, every truck is done by 04:00, the limit holds."""
    station = replace(station, piles=station.piles[:4]).with_control(period_s=5.0)
    start = local_time(station, "2026-11-25T22:30")
    midnight = local_time(station, "2026-11-26T00:00")
    visits = _trucks(start, [p.id for p in station.piles])
    site = await running_station(station, visits, start=start, policy=Policy.MPC)
    daemon, cycles = site.daemon, site.cycles
    by_id = {v.vehicle_id: v for v in visits}

    def fleet_system(pile: PileModel, vehicle: VehicleModel) -> None:
        visit = by_id[vehicle.visit.vehicle_id]
        daemon.control.wish(
            pile.id, pile.session_id, Wish(visit.vehicle_id, visit.energy_kwh, visit.departure)
        )

    site.simulator.plant.on_plug = fleet_system
    await site.until(5.75 * 3600)
    await site.stop()

    plant = site.simulator.plant
    assert daemon.tally.plans >= 5, "the plan loop re-planned on arrivals and every minute"
    assert daemon.tally.fallbacks == 0
    assert (
        daemon.tally.solve_ms
        and max(daemon.tally.solve_ms) < station.scheduler.solve_deadline_s * 1000
    )
    before = sum(c.snapshot.piles_kw for c in cycles if c.time < midnight) * 5.0 / 3600
    total = sum(c.snapshot.piles_kw for c in cycles) * 5.0 / 3600
    assert total > 900, "the trucks were charged"
    assert before < 0.05 * total, f"{before:.0f} of {total:.0f} kWh before the valley"
    for visit in visits:
        record = plant.sessions[visit.vehicle_id]
        assert record.delivered_kwh >= 0.98 * visit.energy_kwh, (
            visit.vehicle_id,
            record.delivered_kwh,
        )
    assert plant.truth.over_s == 0.0
    assert daemon.tally.out_of_bounds == 0


async def test_a_failing_optimiser_gives_way_to_the_fallback_logged_once(
    station: Station, running_station: StartStation, caplog: pytest.LogCaptureFixture
) -> None:
    """Solver failures and missed deadlines: the fallback plans, the failure is logged once when
    it starts (an error) and once when the optimiser plans again (information), and the limit
    holds throughout."""
    caplog.set_level(logging.INFO, logger="control.planner")
    station = replace(station, piles=station.piles[:4]).with_control(period_s=5.0)
    start = local_time(station, "2026-11-25T22:30")
    visits = _trucks(start, [p.id for p in station.piles])
    site = await running_station(station, visits, start=start, policy=Policy.MPC)
    daemon, simulator = site.daemon, site.simulator
    solve = daemon.plan_loop.solver.solve
    failures = {"left": 6}

    def failing(problem: Problem, *, time_limit_s: float | None = None) -> Plan:
        if failures["left"] > 0:
            failures["left"] -= 1
            status = PlanStatus.FAILED if failures["left"] % 2 else PlanStatus.TIME_LIMIT
            return Plan(status, problem.boundaries, message="injected")
        return solve(problem, time_limit_s=time_limit_s)

    daemon.plan_loop.solver.solve = failing  # type: ignore[method-assign]
    await site.until(1.5 * 3600)
    await site.stop()

    assert daemon.tally.fallbacks == 6
    assert daemon.tally.plans > 6, "the optimiser planned again once it could"
    messages = [r.getMessage() for r in caplog.records]
    assert sum("the optimiser gave no plan" in m for m in messages) == 1
    assert sum("the optimiser is planning again" in m for m in messages) == 1
    assert simulator.plant.truth.longest_over_s == 0.0
    # The fallback charges at once (least laxity first), where the optimiser's plans wait for
    # the valley: the trucks got energy in the flat band.
    assert daemon.tally.energy_kwh > 20
