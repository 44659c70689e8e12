"""Unit tests for scheduler.fallback (least laxity first) and scheduler.allocation's priority_fill and laxity_h."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.allocation import Demand, laxity_h, priority_fill
from scheduler.fallback import fallback_plan
from scheduler.plan import Plan, PlanStatus
from scheduler.problem import GroupLimit, Problem, ProblemError, Vehicle
from tests.builders import HOUR, START, ev, hourly, kw

TOL = 1e-9


def assert_within_limits(problem: Problem, plan: Plan) -> None:
    """Every invariant fallback_plan promises, checked slot by slot."""
    hours = problem.hours
    headroom = np.maximum(problem.limit_kw - problem.background_kw, 0.0)
    total = np.zeros(problem.slots)
    for vehicle in problem.vehicles:
        power = kw(plan, vehicle.id)
        present = problem.presence(vehicle)
        assert power.shape == (problem.slots,)
        assert np.all(power >= 0.0), (vehicle.id, power)
        assert np.all(power[present <= 0] == 0.0), (vehicle.id, power, present)
        assert np.all(power * hours <= vehicle.max_kw * present + 1e-7), (vehicle.id, power)
        delivered = float(power @ hours)
        assert delivered <= vehicle.energy_kwh + 1e-7
        assert plan.unmet_kwh[vehicle.id] >= 0.0
        assert delivered + plan.unmet_kwh[vehicle.id] == pytest.approx(vehicle.energy_kwh, abs=1e-7)
        total += power
    assert np.all(total <= headroom + 1e-7), (total, headroom)
    for group in problem.groups:
        load = sum(
            (
                kw(plan, v.id) * group.members[v.pile]
                for v in problem.vehicles
                if v.pile in group.members
            ),
            np.zeros(problem.slots),
        )
        assert np.all(load <= group.limit_kw + 1e-7), (group.name, load)


# -- hand-made cases -----------------------------------------------------------------------------


def test_least_laxity_first_when_headroom_is_short() -> None:
    """With 10 kW of headroom, b (1 h to spare) is served before a (3 h to spare), then a."""
    problem = hourly(
        [1.0] * 4, [ev("a", 10.0, hours=4.0), ev("b", 10.0, hours=2.0)], limit=30.0, background=20.0
    )
    plan = fallback_plan(problem)
    assert plan.status is PlanStatus.FALLBACK
    assert plan.status.has_schedule
    np.testing.assert_allclose(kw(plan, "b"), [10.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(kw(plan, "a"), [0.0, 10.0, 0.0, 0.0])
    assert plan.unmet_kwh == pytest.approx({"a": 0.0, "b": 0.0})
    assert_within_limits(problem, plan)


def test_unmet_energy_reported_when_headroom_cannot_serve_everyone() -> None:
    """10 kW of headroom: a (no time to spare, 10 kWh by 1 h) first, then b gets 10 of its 15 kWh by 2 h."""
    problem = hourly([1.0] * 2, [ev("a", 10.0, hours=1.0), ev("b", 15.0, hours=2.0)], limit=10.0)
    plan = fallback_plan(problem)
    np.testing.assert_allclose(kw(plan, "a"), [10.0, 0.0])
    np.testing.assert_allclose(kw(plan, "b"), [0.0, 10.0])
    assert plan.unmet_kwh == pytest.approx({"a": 0.0, "b": 5.0})


def test_equal_laxity_is_served_by_id() -> None:
    """Two vehicles with the same laxity: the lower id is served first."""
    problem = hourly([1.0], [ev("z", 10.0, hours=1.0), ev("m", 10.0, hours=1.0)], limit=12.0)
    plan = fallback_plan(problem)
    np.testing.assert_allclose(kw(plan, "m"), [10.0])
    np.testing.assert_allclose(kw(plan, "z"), [2.0])
    assert plan.unmet_kwh == pytest.approx({"m": 0.0, "z": 8.0})


def test_group_limit_caps_its_members() -> None:
    """A 6 kW feeder holds a (least laxity) to 6 kW; b, off the feeder, gets the rest of the 20 kW headroom."""
    feeder = GroupLimit("feeder", {"P-a": 1.0}, 6.0)
    problem = hourly(
        [1.0] * 2,
        [ev("a", 20.0, hours=2.0), ev("b", 30.0, hours=2.0, max_kw=50.0)],
        limit=20.0,
        groups=(feeder,),
    )
    plan = fallback_plan(problem)
    np.testing.assert_allclose(kw(plan, "a"), [6.0, 6.0])
    np.testing.assert_allclose(kw(plan, "b"), [14.0, 14.0])
    assert plan.unmet_kwh == pytest.approx({"a": 8.0, "b": 2.0})
    assert_within_limits(problem, plan)


def test_phase_limit_with_a_three_phase_charger() -> None:
    """On a 7.36 kW phase, a three-phase car counts a third: it may take 22.08 kW, capped at its 22 kW."""
    phase = GroupLimit.phase("L1", 32.0, 230.0, single=["P-one"], three=["P-three"])
    problem = hourly(
        [1.0],
        [ev("three", 30.0, hours=1.0, max_kw=22.0), ev("one", 5.0, hours=4.0, max_kw=7.4)],
        groups=(phase,),
    )
    plan = fallback_plan(problem)
    # three has less laxity (1 - 30/22 < 4 - 5/7.4): 22 kW, leaving 7.36 - 22/3 for one
    np.testing.assert_allclose(kw(plan, "three"), [22.0])
    np.testing.assert_allclose(kw(plan, "one"), [7.36 - 22.0 / 3.0])
    assert_within_limits(problem, plan)


def test_background_above_the_limit_leaves_nothing() -> None:
    """A slot whose background exceeds the limit plans nothing (headroom is clipped at 0)."""
    problem = hourly([1.0] * 2, [ev("a", 15.0, hours=2.0)], limit=50.0, background=[60.0, 45.0])
    plan = fallback_plan(problem)
    np.testing.assert_allclose(kw(plan, "a"), [0.0, 5.0])
    assert plan.unmet_kwh["a"] == pytest.approx(10.0)


def test_partial_presence_averages_power_over_the_slot() -> None:
    """A vehicle leaving at 1.5 h gets 10 kW in slot 0 and 5 kW averaged over slot 1; one arriving at 2.5 h only 5 kW in slot 2."""
    problem = hourly(
        [1.0] * 4, [ev("leaves", 40.0, hours=1.5), ev("arrives", 40.0, arrival=START + 2.5 * HOUR)]
    )
    plan = fallback_plan(problem)
    np.testing.assert_allclose(kw(plan, "leaves"), [10.0, 5.0, 0.0, 0.0])
    np.testing.assert_allclose(kw(plan, "arrives"), [0.0, 0.0, 5.0, 10.0])
    assert plan.unmet_kwh == pytest.approx({"leaves": 25.0, "arrives": 25.0})
    assert_within_limits(problem, plan)


def test_never_discharges_a_v2g_vehicle() -> None:
    """A V2G vehicle in a dear slot is only ever charged, never discharged."""
    car = ev(
        "car", 5.0, v2g=True, max_discharge_kw=20.0, capacity_kwh=60.0, soc=0.9, efficiency=0.9
    )
    problem = hourly([5.0, 0.1, 0.1, 0.1], [car], background=[80.0, 0.0, 0.0, 0.0])
    plan = fallback_plan(problem)
    np.testing.assert_allclose(kw(plan, "car"), [5.0, 0.0, 0.0, 0.0])


def test_stops_when_the_need_is_met() -> None:
    """A vehicle needing 2.5 kWh gets 2.5 kW for one hour and nothing after."""
    plan = fallback_plan(hourly([1.0] * 3, [ev("a", 2.5)]))
    np.testing.assert_allclose(kw(plan, "a"), [2.5, 0.0, 0.0])
    assert plan.unmet_kwh["a"] == pytest.approx(0.0)


def test_energy_cost_and_message() -> None:
    """The fallback's energy cost prices background plus charging; the reason appears in its message."""
    problem = hourly([1.0, 0.5], [ev("a", 10.0, hours=2.0)], background=5.0)
    plan = fallback_plan(problem, reason="time limit")
    assert plan.energy_cost == pytest.approx(15.0 * 1.0 + 5.0 * 0.5)
    assert plan.message == "least laxity first (time limit)"
    assert fallback_plan(problem).message == "least laxity first"
    assert plan.objective is None


def test_malformed_problem_raises() -> None:
    """fallback_plan checks its problem first: bad input raises ProblemError."""
    with pytest.raises(ProblemError, match="vehicle a"):
        fallback_plan(hourly([1.0] * 2, [ev("a", 10.0, max_kw=0.0)]))


def test_groups_with_the_same_name_are_rejected_or_both_respected() -> None:
    """Two groups sharing a name (e.g. 'phase L1' of two switchboards) are either refused by check() or both kept by the fallback."""
    groups = (
        GroupLimit("phase L1", {"P-a": 1.0}, 5.0),
        GroupLimit("phase L1", {"P-b": 1.0}, 50.0),
    )
    problem = hourly([1.0], [ev("a", 20.0, hours=1.0, max_kw=20.0)], groups=groups)
    try:
        problem.check()
    except ProblemError:
        return
    assert_within_limits(problem, fallback_plan(problem))


# -- a property over random problems -------------------------------------------------------------


@st.composite
def problems(draw: st.DrawFn) -> Problem:
    """Random small problems: uneven slots, arrivals, mid-slot departures, V2G cars, groups."""
    slots = draw(st.integers(1, 6))
    widths = draw(st.lists(st.floats(60.0, 3600.0), min_size=slots, max_size=slots))
    boundaries = START + np.concatenate([[0.0], np.cumsum(widths)])
    end = float(boundaries[-1])
    floats = st.floats(-20.0, 150.0)
    limit = np.array(draw(st.lists(st.floats(0.0, 120.0), min_size=slots, max_size=slots)))
    background = np.array(draw(st.lists(floats, min_size=slots, max_size=slots)))
    piles = [f"P{i}" for i in range(4)]
    vehicles = []
    for i in range(draw(st.integers(0, 6))):
        departure = START + draw(st.floats(0.05, 1.3)) * (end - START)
        arrival = None
        if draw(st.booleans()):
            arrival = START + draw(st.floats(-0.5, 0.95)) * (departure - START)
        v2g = draw(st.booleans())
        vehicles.append(
            Vehicle(
                id=f"v{i}",
                pile=draw(st.sampled_from(piles)),
                energy_kwh=draw(st.floats(0.0, 80.0)),
                departure=departure,
                max_kw=draw(st.floats(0.5, 60.0)),
                v2g=v2g,
                max_discharge_kw=10.0 if v2g else 0.0,
                capacity_kwh=60.0 if v2g else None,
                soc=0.5 if v2g else None,
                arrival=arrival,
            )
        )
    groups = []
    for g in range(draw(st.integers(0, 3))):
        members = draw(
            st.dictionaries(
                st.sampled_from(piles), st.sampled_from([1.0, 1.0 / 3.0, 0.5]), min_size=1
            )
        )
        groups.append(GroupLimit(f"group {g}", members, draw(st.floats(0.0, 60.0))))
    return Problem(
        boundaries=boundaries,
        limit_kw=limit,
        background_kw=background,
        import_price=np.ones(slots),
        export_price=np.zeros(slots),
        vehicles=tuple(vehicles),
        groups=tuple(groups),
    )


@settings(max_examples=200, deadline=None)
@given(problems())
def test_fallback_never_breaks_a_limit(problem: Problem) -> None:
    """For any problem: no slot above limit - background, no group above its limit, no discharge, nothing outside presence or above max_kw, and delivered + unmet = need."""
    plan = fallback_plan(problem)
    assert plan.status is PlanStatus.FALLBACK
    assert_within_limits(problem, plan)


# -- priority_fill and laxity_h ------------------------------------------------------------------


def test_priority_fill_serves_in_priority_order() -> None:
    """10 kW for two vehicles of 6 kW: priority 0 gets 6, priority 1 the remaining 4."""
    shares = priority_fill(
        10.0, [Demand("A", 0.0, 6.0, priority=1), Demand("B", 0.0, 6.0, priority=0)]
    )
    assert shares == pytest.approx({"A": 4.0, "B": 6.0})


def test_priority_fill_breaks_ties_by_pile() -> None:
    """Equal priorities are served in pile-id order."""
    shares = priority_fill(7.0, [Demand("P2", 0.0, 5.0), Demand("P1", 0.0, 5.0)])
    assert shares == pytest.approx({"P1": 5.0, "P2": 2.0})


def test_priority_fill_pauses_a_vehicle_whose_minimum_does_not_fit() -> None:
    """After 8 of 10 kW, Y (min 4) is paused at 0 and Z (min 0) gets the last 2 kW."""
    shares = priority_fill(
        10.0,
        [
            Demand("X", 0.0, 8.0, priority=0),
            Demand("Y", 4.0, 6.0, priority=1),
            Demand("Z", 0.0, 5.0, priority=2),
        ],
    )
    assert shares == pytest.approx({"X": 8.0, "Y": 0.0, "Z": 2.0})


def test_priority_fill_minimum_above_maximum_counts_as_maximum() -> None:
    """A vehicle with min 8 but max 5 takes 5 kW of a 5 kW budget."""
    assert priority_fill(5.0, [Demand("A", 8.0, 5.0)]) == pytest.approx({"A": 5.0})


def test_priority_fill_without_budget_or_demand() -> None:
    """A non-positive budget gives everyone 0; a vehicle taking 0 kW is skipped and keeps 0."""
    demands = [Demand("A", 0.0, 5.0), Demand("B", 0.0, 0.0, priority=-1)]
    assert priority_fill(-3.0, demands) == {"A": 0.0, "B": 0.0}
    assert priority_fill(0.0, demands) == {"A": 0.0, "B": 0.0}
    assert priority_fill(4.0, demands) == pytest.approx({"A": 4.0, "B": 0.0})
    assert priority_fill(4.0, []) == {}


def test_demand_with_negative_bounds_raises() -> None:
    """A Demand with a negative minimum or maximum is bad input."""
    with pytest.raises(ValueError, match="P1"):
        Demand("P1", -1.0, 5.0)
    with pytest.raises(ValueError, match="P1"):
        Demand("P1", 0.0, -5.0)


@settings(max_examples=200, deadline=None)
@given(
    st.floats(-10.0, 300.0),
    st.lists(st.tuples(st.floats(0.0, 50.0), st.floats(0.0, 100.0), st.integers(0, 3)), max_size=8),
)
def test_priority_fill_never_exceeds_the_budget(
    budget: float, raw: list[tuple[float, float, int]]
) -> None:
    """Shares never sum above the budget and each is 0 or between its floor and its maximum."""
    demands = [Demand(f"P{i}", lo, hi, priority=p) for i, (lo, hi, p) in enumerate(raw)]
    shares = priority_fill(budget, demands)
    assert sum(shares.values()) <= max(budget, 0.0) + 1e-9
    for demand in demands:
        share = shares[demand.pile_id]
        assert share == 0.0 or min(demand.min_kw, demand.max_kw) - 1e-9 <= share <= demand.max_kw


@pytest.mark.parametrize(
    ("now", "departure", "energy", "max_kw", "expected"),
    [
        (0.0, 7200.0, 10.0, 10.0, 1.0),  # 2 h left, 1 h of charging
        (0.0, 3600.0, 20.0, 10.0, -1.0),  # 1 h left, 2 h needed: late by an hour
        (1000.0, 1000.0 + 5400.0, 0.0, 7.0, 1.5),  # nothing needed: all the time is spare
        (3600.0, 3600.0 + 1800.0, 11.0, 22.0, 0.0),  # exactly enough time
    ],
)
def test_laxity_h(
    now: float, departure: float, energy: float, max_kw: float, expected: float
) -> None:
    """laxity_h is hours left before departure minus hours at full power, checked by hand."""
    assert laxity_h(now, departure, energy, max_kw) == pytest.approx(expected)


def test_laxity_of_a_vehicle_that_cannot_charge_is_hugely_negative() -> None:
    """With max_kw 0 any need makes laxity enormous and negative (it sorts first), no division by zero."""
    assert laxity_h(0.0, 3600.0, 1.0, 0.0) < -1e8
    assert laxity_h(0.0, 3600.0, 0.0, 0.0) == pytest.approx(1.0)
