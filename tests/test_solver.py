"""Unit tests for scheduler.solver: optimal plans checked by hand, linprog agreement, warm re-solves."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.optimize
from numpy.typing import NDArray

from scheduler.lp import CUT, LpModel, build_lp, with_cuts
from scheduler.plan import Plan, PlanStatus
from scheduler.problem import GroupLimit, Problem, ProblemError, Vehicle, slot_boundaries
from scheduler.solver import Solver, solve
from tests.builders import HOUR, SHANGHAI, START, ev, hourly, kw

TOL = 1e-6


def optimal(problem: Problem) -> Plan:
    """The plan for `problem`, asserting it is optimal."""
    plan = solve(problem)
    assert plan.status is PlanStatus.OPTIMAL, plan.message
    assert plan.status.has_schedule
    return plan


# -- optimality on hand-checked cases ------------------------------------------------------------


def test_charges_in_the_cheap_slots_earliest_first() -> None:
    """10 kWh at prices [1, .5, .5, 1] without a demand charge: all in the first cheap slot (at equal
    prices, earlier energy is safer), energy cost 5, and no peak term at all."""
    plan = optimal(hourly([1.0, 0.5, 0.5, 1.0], [ev("a", 10.0)]))
    np.testing.assert_allclose(kw(plan, "a"), [0.0, 10.0, 0.0, 0.0], atol=TOL)
    assert plan.energy_cost == pytest.approx(5.0)
    assert plan.demand_cost == pytest.approx(0.0, abs=TOL)
    assert plan.unmet_kwh["a"] == pytest.approx(0.0, abs=TOL)
    # 5 of energy, plus earliness 1e-5 per kWh and slot index (10 kWh in slot 1), weighed by
    # urgency: 2 less the part of a day until the car leaves (4 h)
    assert plan.objective == pytest.approx(5.0 + 1e-5 * 10.0 * (2 - 4 / 24))


def test_a_demand_charge_spreads_a_new_peak_over_the_cheap_slots() -> None:
    """15 kWh at max 10 kW in two cheap slots with a demand charge: a new peak costs, so 7.5/7.5,
    not 10/5 (earliness never outweighs a price)."""
    plan = optimal(hourly([1.0, 0.5, 0.5, 1.0], [ev("a", 15.0)], demand_charge=0.01))
    np.testing.assert_allclose(kw(plan, "a"), [0.0, 7.5, 7.5, 0.0], atol=TOL)
    assert plan.energy_cost == pytest.approx(7.5)


def test_earlier_energy_preferred_when_the_peak_is_set_elsewhere() -> None:
    """With 20 kW background in a dear slot fixing the site peak, 15 kWh at max 10 kW goes 10 then 5 (earliness)."""
    plan = optimal(hourly([1.0, 0.5, 0.5, 1.0], [ev("a", 15.0)], background=[0.0, 0.0, 0.0, 20.0]))
    np.testing.assert_allclose(kw(plan, "a"), [0.0, 10.0, 5.0, 0.0], atol=TOL)
    # 15 kWh at 0.5 plus the 20 kWh background at 1.0
    assert plan.energy_cost == pytest.approx(27.5)


def test_site_limit_shared_and_the_rest_in_the_next_cheapest_slot() -> None:
    """Limit 100 over 88 kW background leaves 12 kW in the cheapest slot: the two vehicles share it, 8 kWh go to the next cheapest."""
    problem = hourly(
        [1.0, 0.5, 0.8, 1.0],
        [ev("a", 10.0), ev("b", 10.0)],
        background=[0.0, 88.0, 0.0, 0.0],
    )
    plan = optimal(problem)
    a, b = kw(plan, "a"), kw(plan, "b")
    np.testing.assert_allclose(a + b, [0.0, 12.0, 8.0, 0.0], atol=TOL)
    assert a.sum() == pytest.approx(10.0)
    assert b.sum() == pytest.approx(10.0)
    assert np.all(a <= 10.0 + TOL) and np.all(b <= 10.0 + TOL)
    assert np.all(plan.site_kw(problem.background_kw) <= problem.limit_kw + TOL)
    # background 88*0.5, vehicles 12*0.5 + 8*0.8
    assert plan.energy_cost == pytest.approx(44.0 + 6.0 + 6.4)


def test_demand_charge_moves_charging_to_the_dear_slot() -> None:
    """Background [0, 50, 50, 0] over a 40 kW month peak at 35/kW: charging in the cheap slots would raise the peak, so 10 kWh go in dear slot 0."""
    problem = hourly(
        [1.0, 0.5, 0.5, 1.0],
        [ev("a", 10.0)],
        background=[0.0, 50.0, 50.0, 0.0],
        peak_kw=40.0,
        demand_charge=35.0,
    )
    plan = optimal(problem)
    # the background alone raises the peak by 10 kW; earliness picks slot 0 over slot 3
    np.testing.assert_allclose(kw(plan, "a"), [10.0, 0.0, 0.0, 0.0], atol=TOL)
    assert plan.demand_cost == pytest.approx(35.0 * 10.0)
    assert plan.energy_cost == pytest.approx(10.0 + 25.0 + 25.0)


def test_no_demand_charge_below_the_month_peak() -> None:
    """Below a 100 kW month peak no new peak is at stake: all 10 kWh in the first cheap slot (earliest energy first)."""
    problem = hourly(
        [1.0, 0.5, 0.5, 1.0],
        [ev("a", 10.0)],
        background=[0.0, 50.0, 50.0, 0.0],
        peak_kw=100.0,
        demand_charge=35.0,
    )
    plan = optimal(problem)
    np.testing.assert_allclose(kw(plan, "a"), [0.0, 10.0, 0.0, 0.0], atol=TOL)
    assert plan.demand_cost == pytest.approx(0.0, abs=TOL)
    assert plan.energy_cost == pytest.approx(5.0 + 25.0 + 25.0)


def test_unmet_energy_reported_exactly() -> None:
    """30 kWh at max 10 kW in the 2 hours before departure: 10 kW in both slots, 10 kWh unmet."""
    plan = optimal(hourly([1.0, 1.0, 1.0, 1.0], [ev("a", 30.0, hours=2.0)]))
    np.testing.assert_allclose(kw(plan, "a"), [10.0, 10.0, 0.0, 0.0], atol=TOL)
    assert plan.unmet_kwh["a"] == pytest.approx(10.0)
    assert plan.energy_cost == pytest.approx(20.0)


def test_unmet_energy_with_a_mid_slot_departure() -> None:
    """30 kWh at max 10 kW leaving after 1.5 h: 10 kW, then 5 kW averaged over slot 1; 15 kWh unmet."""
    plan = optimal(hourly([1.0, 1.0, 1.0, 1.0], [ev("a", 30.0, hours=1.5)]))
    np.testing.assert_allclose(kw(plan, "a"), [10.0, 5.0, 0.0, 0.0], atol=TOL)
    assert plan.unmet_kwh["a"] == pytest.approx(15.0)


def test_vehicle_arriving_after_the_plan_is_all_unmet() -> None:
    """A vehicle not arriving within the plan gets nothing and all its energy is reported unmet."""
    late = ev("late", 12.0, hours=6.0, arrival=START + 5 * HOUR)
    plan = optimal(hourly([1.0, 1.0, 1.0, 1.0], [late, ev("a", 5.0)]))
    np.testing.assert_allclose(kw(plan, "late"), [0.0, 0.0, 0.0, 0.0], atol=TOL)
    assert plan.unmet_kwh == pytest.approx({"late": 12.0, "a": 0.0}, abs=TOL)


def battery_kwh(
    stored: float, net_kw: NDArray[np.float64], efficiency: float
) -> NDArray[np.float64]:
    """Battery level after each one-hour slot, from net pile power (each slot charges or discharges)."""
    into_battery = np.where(net_kw >= 0, efficiency * net_kw, net_kw / efficiency)
    return stored + np.cumsum(into_battery)


def v2g_car(efficiency: float) -> Vehicle:
    """A V2G car: 50 kWh battery at 50 %, floor 20 %, 20 kW both ways, needing 5 kWh by 4 h."""
    return ev(
        "car",
        5.0,
        max_kw=20.0,
        v2g=True,
        max_discharge_kw=20.0,
        capacity_kwh=50.0,
        soc=0.5,
        min_soc=0.2,
        efficiency=efficiency,
    )


def test_v2g_discharges_in_the_dear_slot_down_to_the_floor() -> None:
    """Dear slot 0 with 30 kW background: the car gives 15 kWh (25 stored, floor 10), then recharges to 30 kWh: [-15, 15, 5, 0]."""
    problem = hourly(
        [1.0, 0.2, 0.2, 0.2], [v2g_car(1.0)], background=[30.0, 0.0, 0.0, 0.0], demand_charge=0.01
    )
    plan = optimal(problem)
    net = kw(plan, "car")
    # recharging 20 kWh: slot 1 up to the 15 kW site peak of slot 0 (a demand charge), the rest in
    # slot 2
    np.testing.assert_allclose(net, [-15.0, 15.0, 5.0, 0.0], atol=TOL)
    levels = battery_kwh(25.0, net, 1.0)
    np.testing.assert_allclose(levels, [10.0, 25.0, 30.0, 30.0], atol=TOL)
    assert np.all(levels >= 10.0 - TOL)
    assert plan.unmet_kwh["car"] == pytest.approx(0.0, abs=TOL)
    assert plan.degradation_cost == pytest.approx(0.05 * 15.0)
    assert plan.energy_cost == pytest.approx(15.0 * 1.0 + 20.0 * 0.2)


def test_v2g_with_losses_respects_the_floor_and_the_target() -> None:
    """At 90 % efficiency the 15 kWh above the floor give 13.5 kWh at the pile; reaching 25 + 0.9*5 kWh takes 19.5/0.9 kWh."""
    problem = hourly(
        [1.0, 0.2, 0.2, 0.2], [v2g_car(0.9)], background=[30.0, 0.0, 0.0, 0.0], demand_charge=0.01
    )
    plan = optimal(problem)
    net = kw(plan, "car")
    recharge = 19.5 / 0.9
    # slot 0 imports 30 - 13.5 = 16.5 kW, which slot 1 may match without raising the site peak
    np.testing.assert_allclose(net, [-13.5, 16.5, recharge - 16.5, 0.0], atol=TOL)
    levels = battery_kwh(25.0, net, 0.9)
    assert levels.min() == pytest.approx(10.0)
    assert levels[-1] == pytest.approx(29.5)
    assert plan.unmet_kwh["car"] == pytest.approx(0.0, abs=TOL)
    assert plan.degradation_cost == pytest.approx(0.05 * 13.5)


def test_v2g_unmet_is_reported_at_the_pile() -> None:
    """A V2G car needing 20 kWh that can take only 5 kWh (1 h at 5 kW, 90 %) reports 15 kWh unmet at the pile."""
    car = ev(
        "car",
        20.0,
        hours=1.0,
        max_kw=5.0,
        v2g=True,
        max_discharge_kw=5.0,
        capacity_kwh=50.0,
        soc=0.5,
        efficiency=0.9,
    )
    plan = optimal(hourly([1.0], [car]))
    np.testing.assert_allclose(kw(plan, "car"), [5.0], atol=TOL)
    assert plan.unmet_kwh["car"] == pytest.approx(15.0)


def test_feeder_group_limit_binds_per_slot() -> None:
    """Piles A and B on a 15 kW feeder share 15 kW in the cheap slot and take the other 5 kWh after; C is not on it."""
    feeder = GroupLimit("feeder", {"P-a": 1.0, "P-b": 1.0}, 15.0)
    problem = hourly(
        [0.5, 1.0],
        [ev("a", 10.0, hours=2.0), ev("b", 10.0, hours=2.0), ev("c", 10.0, hours=2.0)],
        groups=(feeder,),
    )
    plan = optimal(problem)
    on_feeder = kw(plan, "a") + kw(plan, "b")
    np.testing.assert_allclose(on_feeder, [15.0, 5.0], atol=TOL)
    np.testing.assert_allclose(kw(plan, "c"), [10.0, 0.0], atol=TOL)
    assert np.all(on_feeder <= 15.0 + TOL)


def test_phase_limit_counts_a_three_phase_charger_a_third() -> None:
    """On a 32 A x 230 V = 7.36 kW phase, the three-phase car takes its 20 kWh in the cheap slot (6.67 kW of phase); the single-phase car gets the remaining 0.69 kW, then 7.36 kW, then the rest."""
    phase = GroupLimit.phase("L1", 32.0, 230.0, single=["P-single"], three=["P-three"])
    problem = hourly(
        [0.5, 1.0, 1.0, 1.0],
        [ev("single", 10.0, max_kw=7.4), ev("three", 20.0, max_kw=22.0)],
        groups=(phase,),
    )
    plan = optimal(problem)
    single, three = kw(plan, "single"), kw(plan, "three")
    left_in_slot_0 = 7.36 - 20.0 / 3.0
    np.testing.assert_allclose(three, [20.0, 0.0, 0.0, 0.0], atol=TOL)
    np.testing.assert_allclose(
        single, [left_in_slot_0, 7.36, 10.0 - left_in_slot_0 - 7.36, 0.0], atol=TOL
    )
    assert np.all(single + three / 3.0 <= 7.36 + TOL)


def test_ramp_limit_shapes_the_plan() -> None:
    """Ramp 0.1 kW/min (6 kW between hourly midpoints, 3 kW into slot 0), 20 kWh, slot 2 cheap: [2/3, 20/3, 38/3, 0] maximises the cheap slot."""
    problem = hourly([1.0, 1.0, 0.1, 1.0], [ev("a", 20.0, max_kw=50.0)], ramp_kw_per_min=0.1)
    plan = optimal(problem)
    power = kw(plan, "a")
    np.testing.assert_allclose(power, [2 / 3, 20 / 3, 38 / 3, 0.0], atol=TOL)
    assert power[0] <= 3.0 + TOL
    assert np.all(np.diff(power) <= 6.0 + TOL)
    assert plan.energy_cost == pytest.approx(8.6)


def test_ramp_starts_from_the_piles_power_now() -> None:
    """With the piles at 10 kW now, slot 0 may reach 13 kW: 13 kWh in the cheap slot 0 and 7 in slot 1."""
    problem = hourly(
        [0.1, 1.0, 1.0, 1.0], [ev("a", 20.0, max_kw=50.0)], ramp_kw_per_min=0.1, piles_kw_now=10.0
    )
    plan = optimal(problem)
    np.testing.assert_allclose(kw(plan, "a"), [13.0, 7.0, 0.0, 0.0], atol=TOL)


def test_ramp_never_exceeded_with_many_vehicles() -> None:
    """The piles' total rises by no more than the ramp between quarter-hour slot midpoints."""
    boundaries = slot_boundaries(START + 450.0, SHANGHAI, horizon_s=3 * HOUR)
    slots = len(boundaries) - 1
    rng = np.random.default_rng(7)
    vehicles = [ev(f"v{i}", float(rng.uniform(5, 40)), max_kw=50.0) for i in range(6)]
    problem = Problem(
        boundaries=boundaries,
        limit_kw=np.full(slots, 400.0),
        background_kw=np.zeros(slots),
        import_price=rng.uniform(0.2, 1.2, slots),
        export_price=np.zeros(slots),
        vehicles=tuple(vehicles),
        ramp_kw_per_min=2.0,
        piles_kw_now=5.0,
    )
    plan = optimal(problem)
    total = sum(kw(plan, v.id) for v in vehicles)
    mid = (boundaries[:-1] + boundaries[1:]) / 2
    allowed = 2.0 * np.diff(np.concatenate([[boundaries[0]], mid])) / 60.0
    rise = np.diff(np.concatenate([[5.0], total]))
    assert np.all(rise <= allowed + TOL)


def test_plan_accessors() -> None:
    """slot_at, power_at, energy_kwh and site_kw read the schedule the solver returned."""
    problem = hourly([1.0, 0.5, 0.5, 1.0], [ev("a", 10.0)], background=3.0, demand_charge=0.01)
    plan = optimal(problem)
    assert plan.start == START and plan.end == START + 4 * HOUR
    assert plan.slot_at(START - 1) is None
    assert plan.slot_at(START + 1.5 * HOUR) == 1
    assert plan.slot_at(START + 4 * HOUR) is None
    assert plan.power_at("a", START + 1.5 * HOUR) == pytest.approx(5.0)
    assert plan.power_at("nobody", START + 1.5 * HOUR) == 0.0
    assert plan.energy_kwh("a", 2) == pytest.approx(5.0)
    np.testing.assert_allclose(plan.site_kw(problem.background_kw), [3.0, 8.0, 8.0, 3.0], atol=TOL)


# -- outcomes are statuses, bad input raises -----------------------------------------------------


def test_infeasible_is_a_status() -> None:
    """Background above the limit makes the LP infeasible: a Plan with that status and no schedule, nothing raised."""
    plan = solve(hourly([1.0, 1.0], [ev("a", 5.0, hours=2.0)], limit=50.0, background=[60.0, 0.0]))
    assert plan.status is PlanStatus.INFEASIBLE
    assert not plan.status.has_schedule
    assert plan.power_kw == {}
    assert plan.objective is None


def test_no_simultaneous_import_and_export_when_export_pays_more() -> None:
    """Export at 0.3515 over a 0.3162 valley: no paper trade; 10 kWh in the first valley slot, cost exactly the net import."""
    problem = hourly(
        [0.3162, 0.3162, 0.6210, 0.6210],
        [ev("a", 10.0)],
        background=10.0,
        export=0.3515,
        peak_kw=100.0,
        demand_charge=35.0,
    )
    plan = optimal(problem)
    # net import 20, 10, 10, 10 kWh, nothing exported
    assert plan.energy_cost == pytest.approx(0.3162 * 30.0 + 0.6210 * 20.0)
    np.testing.assert_allclose(kw(plan, "a"), [10.0, 0.0, 0.0, 0.0], atol=TOL)


def big_problem(vehicles: int) -> Problem:
    """A day of quarter hours with `vehicles` vehicles on their own piles."""
    boundaries = slot_boundaries(START + 300.0, SHANGHAI)
    slots = len(boundaries) - 1
    rng = np.random.default_rng(1)
    fleet = [
        ev(
            f"v{i}",
            float(rng.uniform(10, 200)),
            hours=float(rng.uniform(2, 24)),
            max_kw=float(rng.choice([7.0, 22.0, 60.0, 120.0])),
        )
        for i in range(vehicles)
    ]
    return Problem(
        boundaries=boundaries,
        limit_kw=np.full(slots, 1500.0),
        background_kw=rng.uniform(50, 400, slots),
        import_price=rng.uniform(0.3, 1.2, slots),
        export_price=np.full(slots, 0.1),
        vehicles=tuple(fleet),
        peak_kw=800.0,
        demand_charge=30.0,
        groups=(GroupLimit("feeder", {f"P-v{i}": 1.0 for i in range(0, vehicles, 3)}, 600.0),),
        ramp_kw_per_min=20.0,
    )


def test_time_limit_is_a_status() -> None:
    """A 1 ns time limit on 200 vehicles comes back as TIME_LIMIT (or OPTIMAL if presolve finished), never raised."""
    plan = Solver(time_limit_s=1e-9).solve(big_problem(200))
    assert plan.status in (PlanStatus.TIME_LIMIT, PlanStatus.OPTIMAL), plan.message
    if plan.status is PlanStatus.TIME_LIMIT:
        assert not plan.status.has_schedule
        assert plan.power_kw == {}


def test_solver_recovers_after_a_time_limit() -> None:
    """After a solve stopped by its time limit, the same Solver re-solves without a limit to the cold optimum."""
    problem = big_problem(60)
    solver = Solver()
    stopped = solver.solve(problem, time_limit_s=1e-9)
    assert stopped.status in (PlanStatus.TIME_LIMIT, PlanStatus.OPTIMAL)
    plan = solver.solve(problem)
    assert plan.status is PlanStatus.OPTIMAL
    assert plan.objective == pytest.approx(optimal(problem).objective, rel=1e-6)


def test_malformed_problem_raises() -> None:
    """solve() and Solver.solve() check the problem first and raise ProblemError for bad input."""
    bad = hourly([1.0, float("nan")], [ev("a", -1.0, hours=2.0)])
    with pytest.raises(ProblemError) as caught:
        solve(bad)
    assert len(caught.value.problems) == 2
    with pytest.raises(ProblemError):
        Solver().solve(bad)


# -- agreement with scipy's linprog --------------------------------------------------------------


def linprog_objective(model: LpModel) -> scipy.optimize.OptimizeResult:
    """Solve the model's arrays with scipy.optimize.linprog(method="highs")."""
    matrix = model.matrix.tocsr()
    lower, upper = model.row_lower, model.row_upper
    equal = np.isfinite(lower) & np.isfinite(upper) & (lower == upper)
    below = np.isfinite(upper) & ~equal
    above = np.isfinite(lower) & ~equal
    a_ub = scipy.sparse.vstack([matrix[below], -matrix[above]]).tocsr()
    b_ub = np.concatenate([upper[below], -lower[above]])
    bounds = [
        (lo if np.isfinite(lo) else None, hi if np.isfinite(hi) else None)
        for lo, hi in zip(model.col_lower, model.col_upper, strict=True)
    ]
    return scipy.optimize.linprog(
        model.cost,
        A_ub=a_ub if a_ub.shape[0] else None,
        b_ub=b_ub if a_ub.shape[0] else None,
        A_eq=matrix[equal] if equal.any() else None,
        b_eq=lower[equal] if equal.any() else None,
        bounds=bounds,
        method="highs",
    )


def random_problem(rng: np.random.Generator) -> Problem:
    """A small random problem: partial slot 0, PV, V2G, arrivals, groups, ramp, demand charge."""
    slots = int(rng.integers(2, 7))
    first = float(rng.integers(60, 901))
    boundaries = START + np.concatenate([[0.0], first + 900.0 * np.arange(slots)])
    end = float(boundaries[-1])
    imports = rng.uniform(0.2, 1.5, slots)
    vehicles: list[Vehicle] = []
    for i in range(int(rng.integers(1, 5))):
        departure = START + float(rng.uniform(0.3, 1.3)) * (end - START)
        arrival = None
        if rng.random() < 0.3:
            arrival = START + float(rng.uniform(0.0, 0.9)) * (departure - START)
        v2g = bool(rng.random() < 0.35)
        vehicles.append(
            Vehicle(
                id=f"v{i}",
                pile=f"P{i}",
                energy_kwh=float(rng.uniform(0.0, 40.0)),
                departure=departure,
                max_kw=float(rng.uniform(3.0, 60.0)),
                efficiency=float(rng.uniform(0.85, 1.0)),
                v2g=v2g,
                max_discharge_kw=float(rng.uniform(3.0, 30.0)) if v2g else 0.0,
                capacity_kwh=float(rng.uniform(30.0, 100.0)) if v2g else None,
                soc=float(rng.uniform(0.05, 0.95)) if v2g else None,
                min_soc=float(rng.uniform(0.0, 0.4)),
                arrival=arrival,
            )
        )
    groups: list[GroupLimit] = []
    if rng.random() < 0.5:
        members = {f"P{i}": 1.0 for i in range(len(vehicles)) if rng.random() < 0.6}
        groups.append(GroupLimit("feeder", members, float(rng.uniform(5.0, 60.0))))
    if rng.random() < 0.5:
        three = [f"P{i}" for i in range(len(vehicles)) if rng.random() < 0.5]
        groups.append(GroupLimit.phase("L1", float(rng.uniform(16.0, 100.0)), 230.0, [], three))
    return Problem(
        boundaries=boundaries,
        limit_kw=rng.uniform(40.0, 120.0, slots),
        background_kw=rng.uniform(-10.0, 35.0, slots),
        import_price=imports,
        export_price=imports * rng.uniform(0.0, 0.8, slots),
        vehicles=tuple(vehicles),
        peak_kw=float(rng.uniform(0.0, 60.0)),
        demand_charge=float(rng.uniform(0.0, 40.0)),
        groups=tuple(groups),
        ramp_kw_per_min=float(rng.uniform(0.5, 5.0)) if rng.random() < 0.5 else None,
        piles_kw_now=float(rng.uniform(0.0, 30.0)),
    ).check()


@pytest.mark.parametrize("seed", range(20))
def test_same_objective_as_linprog(seed: int) -> None:
    """solve() reaches the objective scipy's linprog finds on the same LpModel arrays (1e-6 relative)."""
    problem = random_problem(np.random.default_rng(seed))
    plan = optimal(problem)
    reference = linprog_objective(build_lp(problem))
    assert reference.status == 0, reference.message
    assert plan.objective == pytest.approx(reference.fun, rel=1e-6, abs=1e-9)


# -- warm re-solves ------------------------------------------------------------------------------


def a_minute_later(problem: Problem, plan: Plan) -> Problem:
    """The problem a minute on: slot 0 60 s shorter, each vehicle's need lowered by what it got."""
    delivered_h = 60.0 / HOUR
    vehicles = []
    for vehicle in problem.vehicles:
        energy = float(plan.power_kw[vehicle.id][0]) * delivered_h
        soc = vehicle.soc
        if vehicle.v2g:
            assert vehicle.capacity_kwh is not None and soc is not None
            into_battery = (
                energy * vehicle.efficiency if energy > 0 else energy / vehicle.efficiency
            )
            soc = min(1.0, max(0.0, soc + into_battery / vehicle.capacity_kwh))
        vehicles.append(
            dataclasses.replace(vehicle, energy_kwh=max(0.0, vehicle.energy_kwh - energy), soc=soc)
        )
    boundaries = problem.boundaries.copy()
    boundaries[0] += 60.0
    piles_now = sum(float(series[0]) for series in plan.power_kw.values())
    return dataclasses.replace(
        problem, boundaries=boundaries, vehicles=tuple(vehicles), piles_kw_now=piles_now
    )


def receding_problem(rng: np.random.Generator) -> Problem:
    """Quarter-hour slots for 3 h with vehicles staying past slot 0, a ramp, a feeder and a V2G car."""
    boundaries = START + np.concatenate([[0.0], 900.0 * np.arange(1, 13)])
    slots = len(boundaries) - 1
    vehicles = [
        ev(
            f"v{i}",
            float(rng.uniform(5.0, 40.0)),
            hours=float(rng.uniform(0.6, 3.5)),
            max_kw=float(rng.uniform(7.0, 60.0)),
        )
        for i in range(4)
    ]
    vehicles.append(
        ev(
            "car",
            10.0,
            hours=2.9,
            max_kw=20.0,
            v2g=True,
            max_discharge_kw=20.0,
            capacity_kwh=60.0,
            soc=0.6,
            efficiency=0.92,
        )
    )
    return Problem(
        boundaries=boundaries,
        limit_kw=np.full(slots, 90.0),
        background_kw=rng.uniform(10.0, 50.0, slots),
        import_price=rng.uniform(0.3, 1.2, slots),
        export_price=np.full(slots, 0.25),
        vehicles=tuple(vehicles),
        peak_kw=60.0,
        demand_charge=20.0,
        groups=(GroupLimit("feeder", {"P-v0": 1.0, "P-v1": 1.0}, 25.0),),
        ramp_kw_per_min=1.5,
        piles_kw_now=12.0,
    )


@pytest.mark.parametrize("seed", range(5))
def test_warm_resolve_matches_a_cold_solve(seed: int) -> None:
    """Minute after minute, a warm Solver reaches the cold solve's objective (1e-6 relative) and says it was warm."""
    solver = Solver()
    problem = receding_problem(np.random.default_rng(seed))
    plan = solver.solve(problem)
    assert plan.status is PlanStatus.OPTIMAL
    assert plan.warm is False
    assert solver.last_model is not None
    first_keys = list(solver.last_model.col_keys)
    for _ in range(5):
        problem = a_minute_later(problem, plan)
        plan = solver.solve(problem)
        cold = optimal(problem)
        assert plan.status is PlanStatus.OPTIMAL, plan.message
        assert plan.warm is True
        assert solver.last_model is not None
        assert list(solver.last_model.col_keys) == first_keys
        assert plan.objective == pytest.approx(cold.objective, rel=1e-6)


def test_warm_solver_after_an_arrival_matches_a_cold_solve() -> None:
    """When a vehicle arrives (structure changed) the warm Solver still reaches the cold objective."""
    solver = Solver()
    problem = receding_problem(np.random.default_rng(11))
    assert solver.solve(problem).status is PlanStatus.OPTIMAL
    arrived = dataclasses.replace(problem, vehicles=(*problem.vehicles, ev("new", 30.0, hours=2.0)))
    plan = solver.solve(arrived)
    assert plan.status is PlanStatus.OPTIMAL
    assert plan.objective == pytest.approx(optimal(arrived).objective, rel=1e-6)


def test_cold_solver_is_never_warm() -> None:
    """A Solver(warm=False) re-solving the same problem reports warm False and the same objective."""
    solver = Solver(warm=False)
    problem = receding_problem(np.random.default_rng(3))
    first = solver.solve(problem)
    second = solver.solve(problem)
    assert first.warm is False and second.warm is False
    assert second.objective == pytest.approx(first.objective, rel=1e-9)


def test_time_limit_applies_to_each_solve_not_to_the_solvers_lifetime() -> None:
    """HiGHS sums run time over solves; a Solver must give every solve its own deadline, so it
    keeps planning after its solves together have taken longer than one deadline."""
    limit_s = 0.5  # one solve here takes about 10 ms: far below it even on a loaded machine
    solver = Solver(time_limit_s=limit_s)
    problem = big_problem(40)
    statuses, spent_ms = [], 0.0
    while spent_ms < 2_000 * limit_s and len(statuses) < 2_000:
        plan = solver.solve(problem)
        statuses.append(plan.status)
        spent_ms += plan.solve_ms
        solver._highs.clearSolver()  # no warm start: every solve does real work
    assert spent_ms >= 2_000 * limit_s, "the solves together never outlasted the deadline"
    assert statuses.count(PlanStatus.OPTIMAL) == len(statuses), statuses


# -- tapering batteries: rows added where a plan breaks them ----------------------------------------


def tapering_problem(rng: np.random.Generator) -> Problem:
    """Quarter hours over 4 h; vehicles that fill up past their taper, cheap slots first or last."""
    slots = 16
    boundaries = START + np.concatenate([[0.0], 900.0 * np.arange(1, slots + 1)])
    vehicles = []
    for i in range(int(rng.integers(2, 6))):
        capacity = float(rng.uniform(40.0, 120.0))
        soc = float(rng.uniform(0.3, 0.75))
        vehicles.append(
            ev(
                f"v{i}",
                float((rng.uniform(0.9, 1.0) - soc) * capacity),
                hours=float(rng.uniform(1.5, 4.0)),
                max_kw=float(rng.uniform(20.0, 80.0)),
                capacity_kwh=capacity,
                soc=soc,
                taper_soc=float(rng.uniform(0.6, 0.85)),
                efficiency=float(rng.uniform(0.9, 1.0)),
            )
        )
    return Problem(
        boundaries=boundaries,
        limit_kw=np.full(slots, float(rng.uniform(60.0, 200.0))),
        background_kw=np.zeros(slots),
        import_price=rng.choice([0.3, 0.6, 1.0], slots),
        export_price=np.zeros(slots),
        vehicles=tuple(vehicles),
    ).check()


@pytest.mark.parametrize("seed", range(10))
def test_taper_rows_added_lazily_reach_the_whole_taper(seed: int) -> None:
    """A plan whose taper rows were added only for the vehicles a plan broke them for has the
    objective of the LP with every taper row written out, and keeps every one of them."""
    problem = tapering_problem(np.random.default_rng(seed))
    solver = Solver()
    plan = solver.solve(problem)
    assert plan.status is PlanStatus.OPTIMAL
    whole = linprog_objective(build_lp(problem, chain_taper=True))
    assert whole.status == 0, whole.message
    assert plan.objective == pytest.approx(whole.fun, rel=1e-7, abs=1e-9)
    for vehicle in problem.vehicles:
        assert vehicle.capacity_kwh is not None and vehicle.soc is not None
        assert vehicle.taper_soc is not None
        energy = kw(plan, vehicle.id) * problem.hours
        level = vehicle.soc * vehicle.capacity_kwh + vehicle.efficiency * (
            np.cumsum(energy) - energy
        )
        rate = (
            vehicle.efficiency * vehicle.max_kw / (vehicle.capacity_kwh * (1 - vehicle.taper_soc))
        )
        present = problem.presence(vehicle)
        allowed = (
            (1 - np.exp(-rate * present)) / vehicle.efficiency * (vehicle.capacity_kwh - level)
        )
        assert np.all(energy <= allowed + 1e-6)


def test_taper_rows_stay_for_the_next_plan() -> None:
    """Taper rows a vehicle got for one plan are in the next one's LP from the start (the
    structure holds, and the re-solve is warm)."""
    problem = tapering_problem(np.random.default_rng(4))
    solver = Solver()
    plan = solver.solve(problem)
    assert solver.last_model is not None
    added = int(np.count_nonzero((solver.last_model.row_keys >> np.int64(59)) == CUT))
    assert added > 0
    again = solver.solve(a_minute_later(problem, plan))
    assert again.status is PlanStatus.OPTIMAL
    assert again.warm is True
    assert solver.last_model is not None
    assert int(np.count_nonzero((solver.last_model.row_keys >> np.int64(59)) == CUT)) >= added


@pytest.mark.parametrize("seed", range(10))
def test_cut_rows_added_to_a_model_are_those_build_lp_writes(seed: int) -> None:
    """Taper rows added to a model (`with_cuts`, as the solver adds what a plan broke) make,
    to the bit, the LP `build_lp` writes with all its cuts: pairs of vehicles or slots the LP
    does not have are left out alike, and the matrix keeps its column order."""
    problem = tapering_problem(np.random.default_rng(seed))
    model = build_lp(problem)
    t = model.tapers
    pairs = [
        (t.vehicles[int(o)], int(model.slot_names[k]))
        for o, k in zip(t.owner, t.slots, strict=True)
    ] + [("nobody", int(model.slot_names[0])), (t.vehicles[0], -1)]
    picked = [pairs[int(i)] for i in np.random.default_rng(seed).integers(0, len(pairs), 8)]
    first, then = picked[:4], picked[4:]
    whole = build_lp(problem, cuts=first + then)
    added = with_cuts(build_lp(problem, cuts=first), then)
    for name in ("row_lower", "row_upper", "row_keys", "cost", "col_lower", "col_upper"):
        assert getattr(added, name).tobytes() == getattr(whole, name).tobytes(), name
    for name in ("data", "indices", "indptr"):
        got, want = getattr(added.matrix, name), getattr(whole.matrix, name)
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), name
    assert with_cuts(whole, []) is whole


def test_tie_breaks_never_outweigh_a_price() -> None:
    """Prices a thousandth apart over 96 slots: the earliness tie-break still leaves the energy in
    the cheapest slot, however late it is."""
    prices = [0.301] * 95 + [0.300]
    boundaries = START + 900.0 * np.arange(97)
    problem = Problem(
        boundaries=boundaries,
        limit_kw=np.full(96, 100.0),
        background_kw=np.zeros(96),
        import_price=np.asarray(prices),
        export_price=np.zeros(96),
        vehicles=(ev("a", 2.5, hours=24.0, max_kw=10.0),),
    )
    plan = optimal(problem)
    assert kw(plan, "a")[-1] == pytest.approx(10.0)
    assert plan.energy_cost == pytest.approx(2.5 * 0.300)
