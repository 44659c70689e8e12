"""The true offline bound: the best any controller could do, knowing the whole scenario in advance.

One LP over the whole scenario, at the simulation step's resolution (each step cut where the
tariff changes band and at quarter hours, like the simulation's books), with perfect knowledge of
every arrival, departure and energy, of the site's own load as it will be, and of the utility's
limit. It keeps what binds every controller: the site limit (without the controller's reserve,
which only a controller that cannot see the future needs), group and phase limits, the vehicles'
and piles' power limits, the batteries' taper (with the BMS's trickle floor laid along it, so the
rows stay an upper bound), V2G battery floors and the site's ramp limit (widened by the piles'
response time, by which a step's average can trail its setpoints). It relaxes what an LP cannot
hold: a pile's minimum power (0, or at least the minimum) becomes anything from 0.

It is solved lexicographically, as operators rank outcomes: as much energy as the limits allow,
then the lowest cost (`scheduler.solver.solve_bound`). The figures are the plan's own, billed on
the same books as every simulated policy, not a simulation of following it: no controller that
respects the limits can deliver more energy, or the same energy for less.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from control.decider import group_limits
from scheduler.plan import Plan
from scheduler.problem import Problem, Vehicle, Weights, month_starts
from scheduler.solver import solve_bound
from simulator.books import Books, Integral, Piece
from simulator.charging import TRICKLE
from simulator.fleet import Visit, assign_piles
from simulator.plant import Background

if TYPE_CHECKING:  # the scenario type lives with the simulation, which runs the bound
    from simulator.fast import Scenario


class BoundError(RuntimeError):
    """The bound's LP could not be solved (the message says how HiGHS ended)."""


def step_times(start: float, end: float, step_s: float) -> NDArray[np.float64]:
    """The ends of a simulation's steps from `start` until `end` is reached."""
    steps = math.ceil((end - start) / step_s)
    return start + step_s * np.arange(1, steps + 1, dtype=float)


def bound_problem(
    scenario: Scenario, served: Sequence[Visit], boundaries: NDArray[np.float64], step_s: float
) -> Problem:
    """The whole scenario as one problem over `boundaries` (see the module)."""
    station = scenario.station
    settings = station.simulator
    if settings is None:
        raise ValueError(f"{station.path}: the station has no [simulator] section")
    zone = ZoneInfo(station.info.timezone)
    starts, ends = boundaries[:-1], boundaries[1:]
    hours = np.diff(boundaries) / 3600.0
    times = step_times(scenario.start, scenario.end, step_s)
    step_of = np.searchsorted(times, ends - 1e-6, side="left")
    if scenario.background is not None:
        integral = Integral(scenario.background)
        background = (
            np.array([integral.between(lo, hi) for lo, hi in zip(starts, ends, strict=True)])
            / hours
        )
    else:
        # The plant's own load is seeded: replay it step by step as the plant will draw it.
        site = Background(station.background, zone, settings.seed)
        per_step = np.array([site.step(float(t), step_s) for t in times])
        background = per_step[step_of]
    if scenario.limit is not None:
        # Each step answers to the limit in force at its start, as the plant books it.
        limit = np.array([scenario.limit.at(float(t) - step_s) for t in times])[step_of]
    else:
        limit = np.full(len(starts), station.limit_kw)
    tariff = scenario.tariff
    vehicles = []
    for visit in served:
        assert visit.pile is not None
        pile = station.pile(visit.pile)
        capacity, soc, target = visit.battery
        v2g = visit.v2g and pile.bidirectional
        vehicles.append(
            Vehicle(
                id=visit.vehicle_id,
                pile=visit.pile,
                energy_kwh=min(visit.energy_kwh, max(0.0, (target - soc) * capacity)),
                departure=visit.departure,
                max_kw=min(visit.max_kw, pile.max_kw),
                v2g=v2g,
                max_discharge_kw=pile.max_discharge_kw if v2g else 0.0,
                capacity_kwh=capacity,
                soc=soc,
                arrival=visit.arrival,
                taper_soc=settings.taper_soc,
                accepts_kw=visit.max_kw,
            )
        )
    ramp = station.scheduler.ramp_kw_per_min
    if ramp is not None:
        # The controller lets the piles' total rise by `ramp` a minute, with half a minute saved
        # up; a step's average may trail its setpoints by the piles' delay and ramp time.
        slowest = max((p.max_kw for p in station.piles), default=0.0) / settings.pile_ramp_kw_per_s
        ramp *= (max(step_s, 30.0) + settings.pile_delay_s + slowest) / step_s
    return Problem(
        boundaries=boundaries,
        limit_kw=limit,
        background_kw=background,
        import_price=np.array([tariff.price_at(float(t)) for t in starts]),
        export_price=np.full(len(starts), tariff.export_price),
        vehicles=tuple(vehicles),
        # The books bill a month's demand charge in proportion to the part of it simulated.
        demand_charge=tariff.demand_charge_per_kw_month * _month_share(boundaries, zone),
        groups=group_limits(station),
        ramp_kw_per_min=ramp,
        weights=Weights(
            unmet_per_kwh=station.scheduler.unmet_penalty_per_kwh,
            degradation_per_kwh=station.scheduler.degradation_per_kwh,
            earliness_per_kwh_slot=0.0,
            flatness_per_kw=0.0,
        ),
        new_months=month_starts(scenario.start, float(boundaries[-1]), zone),
        demand_window_s=900.0,
        taper_floor=TRICKLE,
    )


def _month_share(boundaries: NDArray[np.float64], zone: ZoneInfo) -> float:
    """The part of a month the slots cover (of the first month they touch)."""
    first = datetime.fromtimestamp(float(boundaries[0]), zone)
    days = calendar.monthrange(first.year, first.month)[1]
    return min(1.0, float(boundaries[-1] - boundaries[0]) / (days * 86400))


def bound_books(problem: Problem, plan: Plan, step_of: NDArray[np.int64]) -> Books:
    """The plan's slots as the pieces of a simulation's books."""
    hours = problem.hours
    piles = np.zeros(problem.slots)
    for series in plan.power_kw.values():
        piles += series
    net = (problem.background_kw + piles) * hours
    pieces = [
        (
            int(step_of[t]),
            Piece(
                float(problem.boundaries[t]),
                float(problem.boundaries[t + 1]),
                float(piles[t] * hours[t]),
                float(problem.background_kw[t] * hours[t]),
                float(max(net[t], 0.0)),
                float(max(-net[t], 0.0)),
                float(problem.background_kw[t] + piles[t]),
                0.0,
                0.0,
            ),
        )
        for t in range(problem.slots)
    ]
    return Books.of(pieces)


def whole_problem(scenario: Scenario, *, step_s: float, cuts: Sequence[float]) -> Problem:
    """The bound's problem for a scenario simulated at `step_s`, its slots also cut at `cuts`
    (band changes, quarter hours, as the simulation's books are)."""
    times = step_times(scenario.start, scenario.end, step_s)
    boundaries = np.unique(np.concatenate([[scenario.start], times, np.asarray(cuts, float)]))
    boundaries = boundaries[(boundaries >= scenario.start) & (boundaries <= times[-1])]
    ratings = {p.id: p.max_kw for p in scenario.station.piles}
    served, _ = assign_piles(scenario.visits, ratings)
    served = [v for v in served if v.arrival < times[-1]]
    return bound_problem(scenario, served, boundaries, step_s)


def offline_bound(
    scenario: Scenario,
    *,
    step_s: float,
    cuts: Sequence[float],
    at_least_kwh: float | None = None,
    time_limit_s: float | None = None,
) -> tuple[Problem, Plan, Books, dict[str, float], NDArray[np.float64]]:
    """Solve the bound: (problem, plan, books, energy per vehicle, step ends).

    `cuts` are the times inside steps where the books must be cut (band changes, quarter
    hours). With `at_least_kwh`, the plan is the cheapest that delivers that much instead of
    the most energy. Raises `BoundError` if HiGHS does not find the optimum.
    """
    times = step_times(scenario.start, scenario.end, step_s)
    problem = whole_problem(scenario, step_s=step_s, cuts=cuts)
    boundaries = problem.boundaries
    started = time.perf_counter()
    plan = solve_bound(problem, at_least_kwh=at_least_kwh, time_limit_s=time_limit_s)
    if not plan.status.has_schedule:
        raise BoundError(
            f"{scenario.name}: the offline bound's LP ended {plan.status.value} ({plan.message}) "
            f"after {time.perf_counter() - started:.1f} s"
        )
    step_of = np.searchsorted(times, boundaries[1:] - 1e-6, side="left").astype(np.int64)
    books = bound_books(problem, plan, step_of)
    hours = problem.hours
    delivered = {vid: float(series @ hours) for vid, series in plan.power_kw.items()}
    return problem, plan, books, delivered, times
