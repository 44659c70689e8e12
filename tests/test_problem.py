"""Unit tests for scheduler.problem: validation of a Problem, slot boundaries and presence."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from scheduler.problem import GroupLimit, Problem, ProblemError, Vehicle, Weights, slot_boundaries
from tests.builders import HOUR, SHANGHAI, START

SLOTS = 4


def vehicle(vid: str = "ev1", **changes: object) -> Vehicle:
    """A sound vehicle on its own pile, needing 10 kWh within the 4-hour plan."""
    base = Vehicle(
        id=vid, pile=f"P-{vid}", energy_kwh=10.0, departure=START + 4 * HOUR, max_kw=10.0
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def v2g_vehicle(vid: str = "ev1", **changes: object) -> Vehicle:
    """A sound V2G vehicle: 60 kWh battery at half charge."""
    fields: dict[str, object] = {
        "v2g": True,
        "max_discharge_kw": 10.0,
        "capacity_kwh": 60.0,
        "soc": 0.5,
    }
    return vehicle(vid, **(fields | changes))


def problem(**changes: object) -> Problem:
    """A sound 4-slot hourly problem with one vehicle and one feeder group."""
    base = Problem(
        boundaries=START + HOUR * np.arange(SLOTS + 1, dtype=float),
        limit_kw=np.full(SLOTS, 100.0),
        background_kw=np.full(SLOTS, 20.0),
        import_price=np.array([1.0, 0.5, 0.5, 1.0]),
        export_price=np.full(SLOTS, 0.1),
        vehicles=(vehicle(),),
        groups=(GroupLimit("feeder", {"P-ev1": 1.0}, 50.0),),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def problems_of(bad: Problem) -> list[str]:
    """The reasons `bad.check()` gives (failing the test if it does not raise)."""
    with pytest.raises(ProblemError) as caught:
        bad.check()
    return caught.value.problems


def with_value(name: str, slot: int, value: float) -> np.ndarray:
    """The sound problem's array `name` with one slot changed."""
    array = np.asarray(getattr(problem(), name), dtype=float).copy()
    array[slot] = value
    return array


def test_sound_problem_checks_and_returns_itself() -> None:
    """A well-formed problem passes check() and check() returns the same object."""
    sound = problem(vehicles=(vehicle("a"), v2g_vehicle("b")))
    assert sound.check() is sound


def test_problem_error_is_a_value_error_listing_every_reason() -> None:
    """ProblemError is a ValueError whose message carries each listed reason on its own line."""
    error = ProblemError(["limit_kw: bad", "vehicle x: worse"])
    assert isinstance(error, ValueError)
    assert error.problems == ["limit_kw: bad", "vehicle x: worse"]
    assert "  - limit_kw: bad\n" in str(error)
    assert str(error).endswith("  - vehicle x: worse")


BAD_PROBLEMS: list[tuple[str, Callable[[], Problem], list[str]]] = [
    (
        "limit too short",
        lambda: problem(limit_kw=np.full(3, 100.0)),
        ["limit_kw", "3 values for 4 slots"],
    ),
    (
        "background too long",
        lambda: problem(background_kw=np.zeros(5)),
        ["background_kw", "5 values for 4 slots"],
    ),
    (
        "import price scalar",
        lambda: problem(import_price=np.float64(1.0)),
        ["import_price", "0 values"],
    ),
    (
        "export price too short",
        lambda: problem(export_price=np.zeros(2)),
        ["export_price", "2 values"],
    ),
    (
        "export limit too short",
        lambda: problem(export_limit_kw=np.zeros(3)),
        ["export_limit_kw", "3 values"],
    ),
    (
        "NaN import price",
        lambda: problem(import_price=with_value("import_price", 2, float("nan"))),
        ["import_price", "NaN", "slot 2"],
    ),
    (
        "infinite export price",
        lambda: problem(export_price=with_value("export_price", 1, float("inf"))),
        ["export_price", "slot 1"],
    ),
    (
        "NaN background",
        lambda: problem(background_kw=with_value("background_kw", 3, float("nan"))),
        ["background_kw", "slot 3"],
    ),
    (
        "negative limit",
        lambda: problem(limit_kw=with_value("limit_kw", 1, -5.0)),
        ["limit_kw", "negative", "slot 1"],
    ),
    (
        "negative export limit",
        lambda: problem(export_limit_kw=np.array([10.0, 10.0, -1.0, 10.0])),
        ["export_limit_kw", "negative", "slot 2"],
    ),
    (
        "repeated boundary",
        lambda: problem(boundaries=START + HOUR * np.array([0.0, 1.0, 1.0, 2.0, 3.0])),
        ["boundaries", "increase"],
    ),
    (
        "decreasing boundaries",
        lambda: problem(boundaries=START + HOUR * np.array([0.0, 2.0, 1.0, 3.0, 4.0])),
        ["boundaries", "increase"],
    ),
    (
        "NaN boundary",
        lambda: problem(boundaries=START + HOUR * np.array([0.0, 1.0, np.nan, 3.0, 4.0])),
        ["boundaries", "finite"],
    ),
    ("one boundary", lambda: problem(boundaries=np.array([START])), ["boundaries"]),
    ("negative peak", lambda: problem(peak_kw=-1.0), ["peak_kw"]),
    ("NaN demand charge", lambda: problem(demand_charge=float("nan")), ["demand_charge"]),
    ("infinite piles now", lambda: problem(piles_kw_now=float("inf")), ["piles_kw_now"]),
    ("zero ramp", lambda: problem(ramp_kw_per_min=0.0), ["ramp_kw_per_min"]),
    ("zero unmet penalty", lambda: problem(weights=Weights(unmet_per_kwh=0.0)), ["weights"]),
    (
        "negative flatness weight",
        lambda: problem(weights=Weights(flatness_per_kw=-1e-3)),
        ["weights"],
    ),
    (
        "negative energy",
        lambda: problem(vehicles=(vehicle(energy_kwh=-1.0),)),
        ["vehicle ev1", "energy_kwh"],
    ),
    (
        "NaN energy",
        lambda: problem(vehicles=(vehicle(energy_kwh=float("nan")),)),
        ["vehicle ev1", "energy_kwh"],
    ),
    ("zero max_kw", lambda: problem(vehicles=(vehicle(max_kw=0.0),)), ["vehicle ev1", "max_kw"]),
    (
        "negative max_kw",
        lambda: problem(vehicles=(vehicle(max_kw=-3.0),)),
        ["vehicle ev1", "max_kw"],
    ),
    (
        "min_kw above max_kw",
        lambda: problem(vehicles=(vehicle(min_kw=11.0),)),
        ["vehicle ev1", "min_kw"],
    ),
    (
        "negative min_kw",
        lambda: problem(vehicles=(vehicle(min_kw=-1.0),)),
        ["vehicle ev1", "min_kw"],
    ),
    (
        "zero efficiency",
        lambda: problem(vehicles=(vehicle(efficiency=0.0),)),
        ["vehicle ev1", "efficiency"],
    ),
    (
        "efficiency above 1",
        lambda: problem(vehicles=(vehicle(efficiency=1.05),)),
        ["vehicle ev1", "efficiency"],
    ),
    (
        "departure before start",
        lambda: problem(vehicles=(vehicle(departure=START - 60.0),)),
        ["vehicle ev1", "departs before the plan starts"],
    ),
    (
        "departure at start",
        lambda: problem(vehicles=(vehicle(departure=START),)),
        ["vehicle ev1", "departs before the plan starts"],
    ),
    (
        "NaN departure",
        lambda: problem(vehicles=(vehicle(departure=float("nan")),)),
        ["vehicle ev1", "departure"],
    ),
    (
        "arrival after departure",
        lambda: problem(vehicles=(vehicle(arrival=START + 5 * HOUR),)),
        ["vehicle ev1", "arrives after it departs"],
    ),
    ("no pile", lambda: problem(vehicles=(vehicle(pile=""),)), ["vehicle ev1", "no pile"]),
    (
        "V2G without capacity",
        lambda: problem(vehicles=(v2g_vehicle(capacity_kwh=None),)),
        ["vehicle ev1", "capacity_kwh and soc"],
    ),
    (
        "V2G without soc",
        lambda: problem(vehicles=(v2g_vehicle(soc=None),)),
        ["vehicle ev1", "capacity_kwh and soc"],
    ),
    (
        "V2G without discharge power",
        lambda: problem(vehicles=(v2g_vehicle(max_discharge_kw=0.0),)),
        ["vehicle ev1", "max_discharge_kw"],
    ),
    (
        "V2G min_soc of 1",
        lambda: problem(vehicles=(v2g_vehicle(min_soc=1.0),)),
        ["vehicle ev1", "min_soc"],
    ),
    (
        "discharge power without V2G",
        lambda: problem(vehicles=(vehicle(max_discharge_kw=7.0),)),
        ["vehicle ev1", "max_discharge_kw", "v2g"],
    ),
    ("soc above 1", lambda: problem(vehicles=(v2g_vehicle(soc=1.2),)), ["vehicle ev1", "soc"]),
    (
        "negative capacity",
        lambda: problem(vehicles=(vehicle(capacity_kwh=-60.0),)),
        ["vehicle ev1", "capacity_kwh"],
    ),
    (
        "duplicate vehicle id",
        lambda: problem(vehicles=(vehicle("ev1"), vehicle("ev1", pile="P-other"))),
        ["vehicle ev1", "listed twice"],
    ),
    (
        "zero member share",
        lambda: problem(groups=(GroupLimit("feeder", {"P-ev1": 1.0, "P2": 0.0}, 50.0),)),
        ["group feeder", "member P2"],
    ),
    (
        "negative member share",
        lambda: problem(groups=(GroupLimit("feeder", {"P2": -1.0}, 50.0),)),
        ["group feeder", "member P2"],
    ),
    (
        "negative group limit",
        lambda: problem(groups=(GroupLimit("feeder", {"P-ev1": 1.0}, -1.0),)),
        ["group feeder", "limit"],
    ),
    (
        "NaN group limit",
        lambda: problem(groups=(GroupLimit("feeder", {"P-ev1": 1.0}, float("nan")),)),
        ["group feeder", "limit"],
    ),
]


@pytest.mark.parametrize(
    ("make", "expected"),
    [(make, expected) for _, make, expected in BAD_PROBLEMS],
    ids=[name for name, _, _ in BAD_PROBLEMS],
)
def test_bad_input_raises_naming_the_field(
    make: Callable[[], Problem], expected: list[str]
) -> None:
    """Each kind of malformed input raises ProblemError whose single reason names the field or vehicle."""
    reasons = problems_of(make())
    assert len(reasons) == 1, reasons
    for fragment in expected:
        assert fragment in reasons[0], (fragment, reasons)


def test_every_error_is_listed_at_once() -> None:
    """Several independent errors are all reported, in one ProblemError, each naming its source."""
    bad = problem(
        limit_kw=np.full(3, 100.0),
        import_price=with_value("import_price", 0, float("nan")),
        demand_charge=-1.0,
        vehicles=(
            vehicle("ev1", energy_kwh=-1.0, efficiency=2.0),
            vehicle("ev2", max_kw=0.0),
            vehicle("ev2", departure=START - 1.0),
        ),
        groups=(GroupLimit("feeder", {"P-ev1": 0.0}, -3.0),),
    )
    reasons = problems_of(bad)
    expected = [
        ("limit_kw", "3 values"),
        ("import_price", "slot 0"),
        ("demand_charge", ""),
        ("vehicle ev1", "energy_kwh"),
        ("vehicle ev1", "efficiency"),
        ("vehicle ev2", "max_kw"),
        ("vehicle ev2", "departs before"),
        ("vehicle ev2", "listed twice"),
        ("group feeder", "limit"),
        ("group feeder", "member P-ev1"),
    ]
    assert len(reasons) == len(expected), reasons
    for source, what in expected:
        assert any(r.startswith(source) and what in r for r in reasons), (source, what, reasons)
    message = str(ProblemError(reasons))
    assert all(r in message for r in reasons)


def test_nan_arrival_raises() -> None:
    """A vehicle whose arrival is NaN is bad input and raises ProblemError naming the vehicle."""
    reasons = problems_of(problem(vehicles=(vehicle(arrival=float("nan")),)))
    assert any(r.startswith("vehicle ev1") and "arriv" in r for r in reasons)


def test_properties_of_the_slot_grid() -> None:
    """start, end, slots and hours describe the boundaries."""
    grid = problem(boundaries=START + np.array([0.0, 450.0, 1350.0, 2250.0, 3600.0]))
    assert grid.start == START
    assert grid.end == START + 3600.0
    assert grid.slots == 4
    np.testing.assert_allclose(grid.hours, [0.125, 0.25, 0.25, 0.375])


# -- slot_boundaries -----------------------------------------------------------------------------


def shanghai(hour: int, minute: int, second: int = 0) -> float:
    """Epoch seconds of a local time in Asia/Shanghai on 2026-11-25."""
    return datetime(2026, 11, 25, hour, minute, second, tzinfo=SHANGHAI).timestamp()


def test_slot_zero_runs_to_the_next_local_quarter_hour() -> None:
    """From 10:07:30 local, slot 0 ends at 10:15, then 900 s slots, the last ending at start + horizon."""
    start = shanghai(10, 7, 30)
    boundaries = slot_boundaries(start, SHANGHAI, horizon_s=3600.0)
    expected = [
        shanghai(10, 7, 30),
        shanghai(10, 15),
        shanghai(10, 30),
        shanghai(10, 45),
        shanghai(11, 0),
        shanghai(11, 7, 30),
    ]
    np.testing.assert_array_equal(boundaries, expected)
    np.testing.assert_array_equal(np.diff(boundaries), [450.0, 900.0, 900.0, 900.0, 450.0])


def test_a_day_of_quarter_hours() -> None:
    """The default 24 h horizon from 10:07:30 has 97 slots: 450 s, 95 full ones, 450 s."""
    start = shanghai(10, 7, 30)
    boundaries = slot_boundaries(start, SHANGHAI)
    assert len(boundaries) == 98
    assert boundaries[0] == start
    assert boundaries[-1] == start + 86400.0
    widths = np.diff(boundaries)
    assert widths[0] == 450.0
    assert widths[-1] == 450.0
    assert np.all(widths[1:-1] == 900.0)
    # every inner boundary is a local quarter hour (Shanghai is UTC+8 all year)
    assert np.all((boundaries[1:-1] + 8 * 3600) % 900 == 0)


def test_start_on_a_boundary_gives_a_full_first_slot() -> None:
    """A start exactly on 10:00 local gives a full first slot and no empty slot at the end."""
    start = shanghai(10, 0)
    boundaries = slot_boundaries(start, SHANGHAI, horizon_s=3600.0)
    np.testing.assert_array_equal(boundaries - start, [0.0, 900.0, 1800.0, 2700.0, 3600.0])


def test_other_slot_length() -> None:
    """Half-hour slots from 10:07:30 align to 10:30 and 11:00 local."""
    start = shanghai(10, 7, 30)
    boundaries = slot_boundaries(start, SHANGHAI, horizon_s=5400.0, slot_s=1800.0)
    np.testing.assert_array_equal(
        boundaries,
        [start, shanghai(10, 30), shanghai(11, 0), shanghai(11, 30), shanghai(11, 37, 30)],
    )


def test_horizon_shorter_than_slot_zero() -> None:
    """A horizon that ends before the next quarter hour gives one slot from start to the end."""
    start = shanghai(10, 7, 30)
    np.testing.assert_array_equal(
        slot_boundaries(start, SHANGHAI, horizon_s=300.0), [start, start + 300.0]
    )


@pytest.mark.parametrize(("horizon_s", "slot_s"), [(0.0, 900.0), (3600.0, 0.0), (-1.0, 900.0)])
def test_bad_slot_or_horizon_raises(horizon_s: float, slot_s: float) -> None:
    """A non-positive slot length or horizon raises ProblemError naming both."""
    with pytest.raises(ProblemError, match="slot and horizon"):
        slot_boundaries(shanghai(10, 0), SHANGHAI, horizon_s=horizon_s, slot_s=slot_s)


def test_later_slots_coarsen_the_far_part_of_the_plan() -> None:
    """Five-minute slots for the first hour, quarter hours until three hours, then hours: each
    stage aligned to its own multiple after local midnight."""
    start = shanghai(10, 2)
    points = slot_boundaries(
        start,
        SHANGHAI,
        horizon_s=6 * 3600.0,
        slot_s=300.0,
        later=[(3600.0, 900.0), (10800.0, 3600.0)],
    )
    minutes = np.round((points - shanghai(10, 0)) / 60).astype(int).tolist()
    assert minutes[:3] == [2, 5, 10]
    assert 60 in minutes and 65 not in minutes and 75 in minutes
    assert minutes[minutes.index(180) - 1] == 165
    assert minutes[-3:] == [300, 360, 362]
    assert np.all(np.diff(points) > 0)


def test_slot_zero_at_dst_fall_back_ends_at_the_next_quarter_hour() -> None:
    """In the repeated hour of a DST fall-back, slot 0 still ends at the next local quarter hour."""
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(2026, 10, 25, 2, 50, tzinfo=berlin, fold=0).timestamp()
    boundaries = slot_boundaries(start, berlin, horizon_s=7200.0)
    np.testing.assert_array_equal(np.diff(boundaries), [600.0, *[900.0] * 7, 300.0])


# -- presence ------------------------------------------------------------------------------------


def test_presence_whole_plan() -> None:
    """A vehicle there from the start until after the end is present for every whole slot."""
    grid = problem()
    np.testing.assert_allclose(
        grid.presence(vehicle(departure=START + 10 * HOUR)), [1.0, 1.0, 1.0, 1.0]
    )


def test_presence_partial_first_and_last_slot() -> None:
    """On quarter-hour slots from 10:07:30, a vehicle leaving at 10:40 has 0.125, 0.25 and 10/60 h."""
    start = shanghai(10, 7, 30)
    boundaries = slot_boundaries(start, SHANGHAI, horizon_s=3600.0)
    grid = problem(
        boundaries=boundaries,
        limit_kw=np.full(5, 100.0),
        background_kw=np.zeros(5),
        import_price=np.ones(5),
        export_price=np.zeros(5),
        vehicles=(),
    )
    leaving = vehicle(departure=shanghai(10, 40))
    np.testing.assert_allclose(grid.presence(leaving), [0.125, 0.25, 10 / 60, 0.0, 0.0])


def test_presence_arrival_in_the_future() -> None:
    """A vehicle arriving at 1:30 and leaving at 3:15 is present 0, 0.5, 1 and 0.25 hours."""
    grid = problem()
    arriving = vehicle(arrival=START + 1.5 * HOUR, departure=START + 3.25 * HOUR)
    np.testing.assert_allclose(grid.presence(arriving), [0.0, 0.5, 1.0, 0.25])


def test_presence_arrival_in_the_past_counts_from_the_start() -> None:
    """An arrival before the plan starts is the same as being plugged in now."""
    grid = problem()
    early = vehicle(arrival=START - 5 * HOUR, departure=START + 2.5 * HOUR)
    np.testing.assert_allclose(grid.presence(early), [1.0, 1.0, 0.5, 0.0])


def test_presence_arrival_after_the_plan_ends() -> None:
    """A vehicle arriving after the last slot is present nowhere in the plan."""
    grid = problem()
    late = vehicle(arrival=START + 5 * HOUR, departure=START + 6 * HOUR)
    np.testing.assert_allclose(grid.presence(late), [0.0, 0.0, 0.0, 0.0])


def test_energy_for_soc() -> None:
    """From 40 % to 80 % of 60 kWh at 90 % efficiency is 24 / 0.9 kWh at the pile; none if already above."""
    assert Vehicle.energy_for_soc(0.8, 0.4, 60.0, 0.9) == pytest.approx(24.0 / 0.9)
    assert Vehicle.energy_for_soc(0.5, 0.7, 60.0, 0.9) == 0.0


def test_phase_group_counts_three_phase_chargers_a_third() -> None:
    """GroupLimit.phase at 32 A and 230 V is 7.36 kW; single-phase piles count 1, three-phase 1/3."""
    group = GroupLimit.phase("L1", 32.0, 230.0, single=["A"], three=["B", "C"])
    assert group.name == "phase L1"
    assert group.limit_kw == pytest.approx(7.36)
    assert dict(group.members) == pytest.approx({"A": 1.0, "B": 1 / 3, "C": 1 / 3})
