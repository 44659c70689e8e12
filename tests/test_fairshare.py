"""Unit tests for scheduler.allocation.fair_share: water-filling with floors, caps and priority admission."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.allocation import Demand, fair_share


def test_equal_split_when_nobody_is_capped() -> None:
    """300 kW among three vehicles that each take 480 kW is 100 kW each."""
    demands = [Demand(f"P0{i}", 20.0, 480.0) for i in range(1, 4)]
    shares = fair_share(300.0, demands)
    assert shares == pytest.approx({"P01": 100.0, "P02": 100.0, "P03": 100.0})


def test_capped_vehicle_leaves_its_share_to_the_others() -> None:
    """A vehicle capped at 50 kW of a 300 kW budget leaves 125 kW each to the other two."""
    demands = [
        Demand("P01", 20.0, 50.0),
        Demand("P02", 20.0, 480.0),
        Demand("P03", 20.0, 480.0),
    ]
    shares = fair_share(300.0, demands)
    assert shares == pytest.approx({"P01": 50.0, "P02": 125.0, "P03": 125.0})
    assert sum(shares.values()) == pytest.approx(300.0)


def test_two_caps_cascade() -> None:
    """Caps at 30 and 60 kW of 400 kW leave 155 kW each for the other two."""
    demands = [
        Demand("A", 0.0, 30.0),
        Demand("B", 0.0, 60.0),
        Demand("C", 0.0, 500.0),
        Demand("D", 0.0, 500.0),
    ]
    shares = fair_share(400.0, demands)
    assert shares == pytest.approx({"A": 30.0, "B": 60.0, "C": 155.0, "D": 155.0})


def test_minimum_is_respected() -> None:
    """With 100 kW for three vehicles of min 40, each share is 0 or >= 40, never in between."""
    demands = [Demand(f"P{i}", 40.0, 200.0, priority=i) for i in range(3)]
    shares = fair_share(100.0, demands)
    assert all(s == 0.0 or s >= 40.0 for s in shares.values())
    # two are admitted (80 kW of floors) and share the 100 kW; the lowest priority is paused
    assert shares == pytest.approx({"P0": 50.0, "P1": 50.0, "P2": 0.0})


def test_floor_raises_a_share_above_the_water_level() -> None:
    """A vehicle whose minimum is above the equal level keeps its minimum; the rest share less."""
    demands = [Demand("big", 80.0, 300.0), Demand("a", 0.0, 300.0), Demand("b", 0.0, 300.0)]
    shares = fair_share(150.0, demands)
    assert shares == pytest.approx({"big": 80.0, "a": 35.0, "b": 35.0})


def test_budget_below_minimums_admits_by_priority() -> None:
    """With 100 kW and three vehicles of min 60, only the lowest priority value charges."""
    demands = [
        Demand("late", 60.0, 300.0, priority=300.0),
        Demand("early", 60.0, 300.0, priority=100.0),
        Demand("middle", 60.0, 300.0, priority=200.0),
    ]
    shares = fair_share(100.0, demands)
    assert shares == pytest.approx({"early": 100.0, "middle": 0.0, "late": 0.0})


def test_budget_covers_two_minimums_admits_first_two() -> None:
    """With 130 kW and min 60 each, the two earliest get 65 kW and the last is paused."""
    demands = [
        Demand("c", 60.0, 300.0, priority=3.0),
        Demand("a", 60.0, 300.0, priority=1.0),
        Demand("b", 60.0, 300.0, priority=2.0),
    ]
    shares = fair_share(130.0, demands)
    assert shares == pytest.approx({"a": 65.0, "b": 65.0, "c": 0.0})


def test_equal_priority_is_broken_by_pile_id() -> None:
    """Equal priorities are admitted in pile-id order, so the outcome is deterministic."""
    demands = [Demand("P02", 60.0, 300.0), Demand("P01", 60.0, 300.0)]
    assert fair_share(70.0, demands) == pytest.approx({"P01": 70.0, "P02": 0.0})


@pytest.mark.parametrize("budget", [0.0, -10.0, -1e9])
def test_zero_or_negative_budget_gives_all_zero(budget: float) -> None:
    """Without a positive budget everyone is at 0."""
    demands = [Demand("P01", 0.0, 100.0), Demand("P02", 20.0, 100.0)]
    assert fair_share(budget, demands) == {"P01": 0.0, "P02": 0.0}


def test_everyone_gets_max_when_budget_covers_it() -> None:
    """A budget above the sum of maxima gives each vehicle its maximum."""
    demands = [Demand("A", 20.0, 100.0), Demand("B", 20.0, 250.0), Demand("C", 20.0, 30.0)]
    assert fair_share(1000.0, demands) == {"A": 100.0, "B": 250.0, "C": 30.0}


def test_vehicle_with_zero_max_gets_zero_and_costs_nothing() -> None:
    """A vehicle that takes nothing is listed with 0 and does not reduce the others."""
    demands = [Demand("full", 20.0, 0.0), Demand("A", 20.0, 300.0), Demand("B", 20.0, 300.0)]
    assert fair_share(200.0, demands) == pytest.approx({"full": 0.0, "A": 100.0, "B": 100.0})


def test_max_below_min_charges_at_max() -> None:
    """A vehicle that cannot take the pile's minimum still charges at what it takes."""
    demands = [Demand("weak", 50.0, 10.0), Demand("A", 20.0, 300.0)]
    shares = fair_share(100.0, demands)
    assert shares == pytest.approx({"weak": 10.0, "A": 90.0})


def test_no_demands() -> None:
    """No demands, no shares."""
    assert fair_share(100.0, []) == {}


def test_negative_bounds_rejected() -> None:
    """A demand with a negative bound is a ValueError."""
    with pytest.raises(ValueError):
        Demand("x", -1.0, 10.0)
    with pytest.raises(ValueError):
        Demand("x", 0.0, -10.0)


demand_strategy = st.lists(
    st.tuples(
        st.floats(0.0, 200.0, allow_nan=False),  # min
        st.floats(0.0, 600.0, allow_nan=False),  # max
        st.integers(0, 5),  # priority
    ),
    min_size=0,
    max_size=12,
)


@settings(max_examples=500)
@given(raw=demand_strategy, budget=st.floats(-100.0, 6000.0, allow_nan=False))
def test_fair_share_properties(raw: list[tuple[float, float, int]], budget: float) -> None:
    """Shares fit the budget, each is 0 or in [min(min,max), max], all get max if affordable."""
    demands = [Demand(f"P{i:02d}", lo, hi, priority=prio) for i, (lo, hi, prio) in enumerate(raw)]
    shares = fair_share(budget, demands)
    assert set(shares) == {d.pile_id for d in demands}
    assert sum(shares.values()) <= max(budget, 0.0) + 1e-6
    for demand in demands:
        share = shares[demand.pile_id]
        assert share == 0.0 or (
            min(demand.min_kw, demand.max_kw) - 1e-9 <= share <= demand.max_kw + 1e-9
        ), (demand, share)
    if budget >= sum(d.max_kw for d in demands):
        for demand in demands:
            assert shares[demand.pile_id] == pytest.approx(demand.max_kw)


@settings(max_examples=300)
@given(
    maxima=st.lists(st.floats(1.0, 600.0, allow_nan=False), min_size=1, max_size=12),
    budget=st.floats(0.0, 6000.0, allow_nan=False),
)
def test_without_minimums_the_budget_is_used_fully(maxima: list[float], budget: float) -> None:
    """Without minimums the shares sum to min(budget, sum of maxima), equal unless capped."""
    demands = [Demand(f"P{i:02d}", 0.0, hi) for i, hi in enumerate(maxima)]
    shares = fair_share(budget, demands)
    assert sum(shares.values()) == pytest.approx(min(budget, sum(maxima)), abs=1e-6)
    uncapped = [shares[d.pile_id] for d in demands if shares[d.pile_id] < d.max_kw - 1e-6]
    if uncapped:
        assert max(uncapped) - min(uncapped) <= 1e-6
        # nobody capped below the common level gets more than it
        level = max(uncapped)
        assert all(shares[d.pile_id] <= level + 1e-6 for d in demands)
