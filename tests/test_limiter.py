"""Unit tests for control.limiter: pile bounds, the budget arithmetic and the ramp limiter."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from control.limiter import PileBounds, budget_kw, limit_setpoints

BIG_BUDGET = 1e9

# --------------------------------------------------------------------------- PileBounds.clamp


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (-5.0, 0.0),
        (0.0, 0.0),
        (10.0, 0.0),
        (19.999, 0.0),
        (20.0, 20.0),
        (100.0, 100.0),
        (480.0, 480.0),
        (600.0, 480.0),
    ],
)
def test_clamp(kw: float, expected: float) -> None:
    """Below min -> 0, within bounds -> unchanged, above max -> max."""
    assert PileBounds(20.0, 480.0).clamp(kw) == expected


def test_clamp_with_zero_max_is_always_zero() -> None:
    """A pile that may take nothing is told 0 whatever is asked."""
    assert PileBounds(20.0, 0.0).clamp(100.0) == 0.0


def test_clamp_with_min_above_max_uses_max_as_floor() -> None:
    """If min exceeds max, max is both floor and ceiling."""
    bounds = PileBounds(50.0, 30.0)
    assert bounds.clamp(40.0) == 30.0
    assert bounds.clamp(30.0) == 30.0
    assert bounds.clamp(25.0) == 0.0


# --------------------------------------------------------------------------- budget_kw


def test_budget_from_measured_grid() -> None:
    """4275 limit - 80 reserve - (3000 grid - 1200 piles) = 2395 kW."""
    budget = budget_kw(
        limit_kw=4275.0,
        reserve_kw=80.0,
        grid_kw=3000.0,
        controlled_kw=1200.0,
        worst_uncontrolled_kw=1940.0,
    )
    assert budget == pytest.approx(2395.0)


def test_budget_subtracts_unreachable_extra() -> None:
    """What unreachable piles may add comes off the budget: 2395 - 200 = 2195 kW."""
    budget = budget_kw(
        limit_kw=4275.0,
        reserve_kw=80.0,
        grid_kw=3000.0,
        controlled_kw=1200.0,
        worst_uncontrolled_kw=1940.0,
        unreachable_extra_kw=200.0,
    )
    assert budget == pytest.approx(2195.0)


def test_budget_with_meter_lost_uses_worst_case() -> None:
    """Without a meter reading the rest of the site is assumed at its worst: 4275-80-1940."""
    budget = budget_kw(
        limit_kw=4275.0,
        reserve_kw=80.0,
        grid_kw=None,
        controlled_kw=1200.0,
        worst_uncontrolled_kw=1940.0,
    )
    assert budget == pytest.approx(2255.0)


def test_budget_with_meter_lost_ignores_controlled_power() -> None:
    """With the meter lost, the piles' own reading does not change the budget."""
    kwargs = dict(limit_kw=1000.0, reserve_kw=50.0, grid_kw=None, worst_uncontrolled_kw=300.0)
    assert budget_kw(controlled_kw=0.0, **kwargs) == budget_kw(controlled_kw=500.0, **kwargs)  # type: ignore[arg-type]
    assert budget_kw(controlled_kw=0.0, **kwargs) == pytest.approx(650.0)  # type: ignore[arg-type]


def test_budget_can_go_negative_when_site_is_over() -> None:
    """If the site's other load already exceeds the limit, the budget is negative."""
    budget = budget_kw(
        limit_kw=1000.0,
        reserve_kw=50.0,
        grid_kw=1200.0,
        controlled_kw=100.0,
        worst_uncontrolled_kw=0.0,
    )
    assert budget == pytest.approx(-150.0)


# --------------------------------------------------------------------------- limit_setpoints


def test_increase_limited_to_max_step() -> None:
    """From 100 towards 300 kW with a 20 kW step the setpoint becomes 120."""
    result = limit_setpoints(
        {"P01": 300.0}, {"P01": 100.0}, {"P01": PileBounds(20.0, 480.0)}, BIG_BUDGET, 20.0
    )
    assert result == {"P01": 120.0}


def test_increase_reaches_target_when_close() -> None:
    """A target within one step is reached exactly, not overshot."""
    result = limit_setpoints(
        {"P01": 110.0}, {"P01": 100.0}, {"P01": PileBounds(20.0, 480.0)}, BIG_BUDGET, 20.0
    )
    assert result == {"P01": 110.0}


def test_target_above_max_is_clamped() -> None:
    """A target above the pile's max ends at max, step by step."""
    result = limit_setpoints(
        {"P01": 900.0}, {"P01": 470.0}, {"P01": PileBounds(20.0, 480.0)}, BIG_BUDGET, 20.0
    )
    assert result == {"P01": 480.0}


def test_decrease_is_smooth_when_budget_allows() -> None:
    """From 200 towards 100 kW with a 20 kW step and room in the budget: 180."""
    result = limit_setpoints(
        {"P01": 100.0}, {"P01": 200.0}, {"P01": PileBounds(20.0, 480.0)}, 1000.0, 20.0
    )
    assert result == {"P01": 180.0}


def test_budget_collapse_cuts_to_budget_at_once() -> None:
    """Two piles at 200 kW with the budget collapsing to 100 kW: the sum is 100 this cycle."""
    bounds = {"A": PileBounds(20.0, 480.0), "B": PileBounds(20.0, 480.0)}
    result = limit_setpoints(
        {"A": 200.0, "B": 200.0}, {"A": 200.0, "B": 200.0}, bounds, 100.0, 20.0
    )
    assert sum(result.values()) <= 100.0 + 1e-9
    assert result == pytest.approx({"A": 50.0, "B": 50.0})


def test_lowered_targets_are_reached_at_once_when_budget_needs_it() -> None:
    """Targets of 50+50 kW under a 100 kW budget are applied at once from 200+200 kW."""
    bounds = {"A": PileBounds(20.0, 480.0), "B": PileBounds(20.0, 480.0)}
    result = limit_setpoints({"A": 50.0, "B": 50.0}, {"A": 200.0, "B": 200.0}, bounds, 100.0, 20.0)
    assert result == pytest.approx({"A": 50.0, "B": 50.0})


def test_partial_cut_in_proportion_to_distance_above_target() -> None:
    """Ramping 200->180 twice is 360 kW; a 300 kW budget cuts each by 30 to 150 kW."""
    bounds = {"A": PileBounds(20.0, 480.0), "B": PileBounds(20.0, 480.0)}
    result = limit_setpoints(
        {"A": 100.0, "B": 100.0}, {"A": 200.0, "B": 200.0}, bounds, 300.0, 20.0
    )
    assert result == pytest.approx({"A": 150.0, "B": 150.0})


def test_cut_falls_on_the_piles_above_their_targets() -> None:
    """Only the pile above its target is cut; the one ramping up keeps its step."""
    bounds = {"down": PileBounds(20.0, 480.0), "up": PileBounds(20.0, 480.0)}
    result = limit_setpoints(
        {"down": 100.0, "up": 150.0}, {"down": 300.0, "up": 100.0}, bounds, 250.0, 20.0
    )
    # ramping gives down 280 + up 120 = 400; 150 kW too much, taken from "down" (180 above target)
    assert result == pytest.approx({"down": 130.0, "up": 120.0})


def test_ramp_up_from_zero_jumps_to_minimum() -> None:
    """A pile with min 50 starting from 0 with a 20 kW step goes straight to 50, not 20."""
    result = limit_setpoints(
        {"P01": 300.0}, {"P01": 0.0}, {"P01": PileBounds(50.0, 480.0)}, BIG_BUDGET, 20.0
    )
    assert result == {"P01": 50.0}


def test_ramp_up_from_zero_with_big_step_moves_one_step() -> None:
    """With a step above the minimum, a pile starting from 0 moves one step."""
    result = limit_setpoints(
        {"P01": 300.0}, {"P01": 0.0}, {"P01": PileBounds(20.0, 480.0)}, BIG_BUDGET, 30.0
    )
    assert result == {"P01": 30.0}


def test_ramp_down_never_stops_between_zero_and_min() -> None:
    """From 30 kW towards 0 with min 20 and step 20 the pile goes to 0, not 10."""
    result = limit_setpoints(
        {"P01": 0.0}, {"P01": 30.0}, {"P01": PileBounds(20.0, 480.0)}, BIG_BUDGET, 20.0
    )
    assert result == {"P01": 0.0}


def test_target_below_min_means_paused() -> None:
    """A target under the pile's minimum is treated as 0."""
    result = limit_setpoints(
        {"P01": 10.0}, {"P01": 0.0}, {"P01": PileBounds(20.0, 480.0)}, BIG_BUDGET, 20.0
    )
    assert result == {"P01": 0.0}


def test_missing_target_means_zero_and_extra_targets_ignored() -> None:
    """Piles without a target ramp towards 0; targets for unknown piles are ignored."""
    bounds = {"A": PileBounds(20.0, 480.0)}
    result = limit_setpoints({"ghost": 100.0}, {"A": 100.0}, bounds, BIG_BUDGET, 20.0)
    assert result == {"A": 80.0}


@pytest.mark.parametrize("budget", [0.0, -50.0])
def test_no_budget_stops_everyone(budget: float) -> None:
    """A zero or negative budget sets every pile to 0 at once."""
    bounds = {"A": PileBounds(20.0, 480.0), "B": PileBounds(20.0, 480.0)}
    result = limit_setpoints({"A": 200.0, "B": 0.0}, {"A": 200.0, "B": 100.0}, bounds, budget, 20.0)
    assert result == {"A": 0.0, "B": 0.0}


def test_setpoint_above_a_reduced_max_is_brought_within_bounds() -> None:
    """A pile whose max dropped from 480 to 100 kW is never told more than 100 kW."""
    result = limit_setpoints(
        {"P01": 480.0}, {"P01": 200.0}, {"P01": PileBounds(20.0, 100.0)}, BIG_BUDGET, 20.0
    )
    assert result["P01"] <= 100.0


# --------------------------------------------------------------------------- property


@st.composite
def scenario(
    draw: st.DrawFn,
) -> tuple[dict[str, float], dict[str, float], dict[str, PileBounds], float]:
    """Random piles: bounds, a previous setpoint that is 0 or within bounds, and a target."""
    n = draw(st.integers(1, 8))
    targets: dict[str, float] = {}
    previous: dict[str, float] = {}
    bounds: dict[str, PileBounds] = {}
    for i in range(n):
        pid = f"P{i:02d}"
        lo = draw(st.floats(0.0, 100.0, allow_nan=False))
        hi = draw(st.floats(0.0, 600.0, allow_nan=False))
        bounds[pid] = PileBounds(lo, hi)
        floor = min(lo, hi)
        if hi > 0 and draw(st.booleans()):
            previous[pid] = draw(st.floats(floor, hi, allow_nan=False))
        else:
            previous[pid] = 0.0
        targets[pid] = draw(st.floats(-10.0, 700.0, allow_nan=False))
    step = draw(st.floats(0.5, 100.0, allow_nan=False))
    return targets, previous, bounds, step


def _check_bounds_and_ramp(
    result: dict[str, float],
    previous: dict[str, float],
    bounds: dict[str, PileBounds],
    step: float,
) -> None:
    assert set(result) == set(bounds)
    for pid, kw in result.items():
        b = bounds[pid]
        floor = min(b.min_kw, b.max_kw)
        assert kw == 0.0 or floor - 1e-9 <= kw <= b.max_kw + 1e-9, (pid, kw, b)
        rise = kw - previous[pid]
        if rise > step + 1e-9:
            # the only allowed larger jump: from 0 straight to the pile's minimum
            assert previous[pid] == 0.0 and kw == pytest.approx(floor), (pid, previous[pid], kw)


@settings(max_examples=500)
@given(data=scenario(), budget=st.floats(-100.0, 5000.0, allow_nan=False))
def test_limit_setpoints_property_when_targets_fit(
    data: tuple[dict[str, float], dict[str, float], dict[str, PileBounds], float], budget: float
) -> None:
    """When the clamped targets fit the budget: sum <= budget, bounds kept, rises <= one step."""
    targets, previous, bounds, step = data
    clamped_total = sum(bounds[pid].clamp(targets[pid]) for pid in bounds)
    assume(clamped_total <= budget)
    result = limit_setpoints(targets, previous, bounds, budget, step)
    assert sum(result.values()) <= budget + 1e-6
    _check_bounds_and_ramp(result, previous, bounds, step)


@settings(max_examples=500)
@given(data=scenario(), budget=st.floats(-100.0, 5000.0, allow_nan=False))
def test_limit_setpoints_never_exceeds_budget(
    data: tuple[dict[str, float], dict[str, float], dict[str, PileBounds], float], budget: float
) -> None:
    """Even when the targets do not fit, the sum is at most max(budget, 0), within bounds."""
    targets, previous, bounds, step = data
    result = limit_setpoints(targets, previous, bounds, budget, step)
    assert sum(result.values()) <= max(budget, 0.0) + 1e-6
    _check_bounds_and_ramp(result, previous, bounds, step)


# --------------------------------------------------------------------------- break before make


def test_rises_wait_until_the_pile_coming_down_has_come_down() -> None:
    """Power handed from A (told 120 -> 60, still drawing 120) to B waits for A to get there."""
    bounds = {"A": PileBounds(15.0, 180.0), "B": PileBounds(4.0, 60.0)}
    previous = {"A": 120.0, "B": 0.0}
    targets = {"A": 60.0, "B": 60.0}
    args = (targets, previous, bounds, 130.0, 1000.0)
    first = limit_setpoints(*args, drawing={"A": 120.0, "B": 0.0})
    assert first == {"A": 60.0, "B": 10.0}, "only what is free beside A's present draw"
    later = limit_setpoints(*args, drawing={"A": 61.0, "B": 0.0})
    assert later["B"] == pytest.approx(60.0)
    assert limit_setpoints(*args, drawing={"A": 120.0, "B": 0.0}, hold_rises=False)["B"] == 60.0


def test_a_rise_that_cannot_reach_its_minimum_waits_at_zero() -> None:
    """Room for less than a pile's minimum leaves it paused, never between 0 and the minimum."""
    bounds = {"A": PileBounds(15.0, 180.0), "B": PileBounds(20.0, 60.0)}
    result = limit_setpoints(
        {"A": 60.0, "B": 60.0},
        {"A": 120.0, "B": 0.0},
        bounds,
        130.0,
        1000.0,
        drawing={"A": 120.0, "B": 0.0},
    )
    assert result == {"A": 60.0, "B": 0.0}


def test_the_rise_bucket_saves_up_half_a_minute_and_spends_what_the_total_rose() -> None:
    from control.limiter import RiseBucket

    bucket = RiseBucket()
    assert bucket.allowance(None, 1.0) is None, "no ramp limit: no allowance"
    assert bucket.allowance(60.0, 1.0) == pytest.approx(1.0)  # 60 kW/min is 1 kW a second
    for _ in range(100):
        bucket.allowance(60.0, 1.0)
    assert bucket.tokens == pytest.approx(30.0), "at most half a minute's worth saved up"
    bucket.spend(60.0, 25.0)
    assert bucket.tokens == pytest.approx(5.0)
    bucket.spend(60.0, -40.0)  # a fall gives nothing back
    assert bucket.tokens == pytest.approx(5.0)
    # A cycle longer than half a minute may save up one cycle's worth.
    fresh = RiseBucket()
    assert fresh.allowance(60.0, 60.0) == pytest.approx(60.0)
