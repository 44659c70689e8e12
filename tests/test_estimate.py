"""What a vehicle nobody told us about needs, and when drivers who said really leave, from history;
and the controller planning with it when it is told only what drivers said."""

from __future__ import annotations

from dataclasses import dataclass, replace
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from base.config import CONFIG_ROOT, Station, load_station
from control.estimate import Estimator
from control.sessions import PastVisit
from simulator.fast import Scenario, simulate
from simulator.fleet import Visit
from tests.builders import local

ZONE = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True)
class Past:
    plugged_at: float
    left_at: float
    delivered_kwh: float
    said_departure: float | None = None


def morning_history(days: int = 10) -> list[Past]:
    """Vehicles that came at 06:00-06:40 on earlier days, stayed 4-5 h and took 30-39 kWh."""
    found = []
    for day in range(1, days + 1):
        arrival = local("2026-11-20T06:00") - day * 86400 + 240 * (day % 10)
        found.append(Past(arrival, arrival + 3600 * (4 + 0.1 * day), 30.0 + day % 10))
    return found


def test_estimates_come_from_visits_at_the_same_time_of_day() -> None:
    estimator = Estimator(ZONE)
    history = [
        *morning_history(),
        # Evening visits stay long and take little; they say nothing of the morning.
        *(
            Past(local("2026-11-19T19:00") - d * 86400, local("2026-11-20T07:00"), 5.0)
            for d in range(8)
        ),
    ]
    guess = estimator.estimate(history, local("2026-11-20T06:30"))
    assert guess is not None
    assert guess.samples == 10
    stays = sorted(v.left_at - v.plugged_at for v in history[:10])
    assert guess.stay_s == pytest.approx(float(np.quantile(stays, 0.1)))
    assert guess.energy_kwh == pytest.approx(
        float(np.quantile([v.delivered_kwh for v in history[:10]], 0.75))
    )
    assert 4.0 * 3600 <= guess.stay_s < 4.3 * 3600


def test_one_estimator_follows_a_history_that_grows_and_is_replaced() -> None:
    # The estimator keeps the history's columns between estimates: a visit appended to the
    # same list, or a list put in its place (the controller forgets old visits so), must count
    # exactly as it does for an estimator that sees the history for the first time.
    kept = Estimator(ZONE)
    history: list[Past] = []
    asked = local("2026-11-20T06:30")
    seen = []
    for visit in morning_history(12):
        history.append(visit)
        guess = kept.estimate(history, asked)
        assert guess == Estimator(ZONE).estimate(history, asked)
        seen.append(guess)
    assert seen[3] is None and seen[-1] is not None and seen[-1].samples == 12
    pruned = history[4:]
    guess = kept.estimate(pruned, asked)
    assert guess == Estimator(ZONE).estimate(pruned, asked)
    assert guess is not None and guess.samples == 8
    history.append(Past(asked - 86400, asked - 86400 + 3600, 0.0))  # took nothing: ignored
    assert kept.estimate(history, asked) == Estimator(ZONE).estimate(history, asked)


def test_no_estimate_without_enough_comparable_visits() -> None:
    estimator = Estimator(ZONE)
    assert estimator.estimate(morning_history(4), local("2026-11-20T06:30")) is None
    assert estimator.estimate(morning_history(), local("2026-11-20T14:00")) is None


def test_the_time_of_day_wraps_around_midnight() -> None:
    estimator = Estimator(ZONE)
    late = [
        Past(local("2026-11-19T23:30") - d * 86400, local("2026-11-20T06:00") - d * 86400, 20.0)
        for d in range(6)
    ]
    assert estimator.estimate(late, local("2026-11-20T00:45")) is not None


def test_how_early_drivers_leave_against_what_they_said() -> None:
    estimator = Estimator(ZONE)
    start = local("2026-11-19T08:00")
    # Ten drivers said 17:00; they left from 3 h early to 1.5 h late.
    said = start + 9 * 3600
    history = [Past(start, said + (k - 6) * 1800, 10.0, said) for k in range(10)]
    assert estimator.early_s(history) == pytest.approx(
        -float(np.quantile([(k - 6) * 1800 for k in range(10)], 0.1))
    )
    assert estimator.early_s([Past(start, said, 10.0, said)] * 3) == 0.0  # too few said anything
    assert estimator.early_s([Past(start, said + 600, 10.0, said)] * 8) == 0.0  # none left early


@pytest.fixture(scope="module")
def workplace() -> Station:
    return load_station(CONFIG_ROOT / "stations" / "workplace-ac.toml")


def early_bird(vid: str = "V", energy: float = 35.0) -> Visit:
    """A car at 06:00 that wants 35 kWh at 11 kW (3.2 h) and leaves at 10:00 without saying."""
    return Visit(
        vid, local("2026-11-20T06:00"), local("2026-11-20T10:00"), energy, 11.0, pile="W25"
    )


def test_a_vehicle_nobody_told_us_about_is_planned_from_history(workplace: Station) -> None:
    """Told nothing, the controller plans by the station's defaults (8 h, 25 kWh) and waits for
    the flat hours after the morning peak: the car leaves at 10:00 short. With history of cars
    like it, it plans for a 4 h stay and 35 kWh, and the car gets it all."""
    start, end = local("2026-11-20T00:00"), local("2026-11-21T00:00")
    visit = early_bird()
    history = tuple(
        PastVisit(v.plugged_at, v.left_at, v.delivered_kwh, v.delivered_kwh, 11.0)
        for v in morning_history()
    )
    blind = Scenario(workplace, workplace.tariff, (visit,), start, end, information="stated")
    told = replace(blind, history=history)
    without = simulate(blind, "mpc").delivered_kwh["V"]
    with_history = simulate(told, "mpc").delivered_kwh["V"]
    assert with_history == pytest.approx(35.0, abs=0.05)
    assert without < 34.0


def test_a_vehicle_full_before_its_stated_need_frees_its_share(workplace: Station) -> None:
    """A driver says 60 kWh; the car is full at 20. The controller notices and stops planning
    for the other 40 (and says so)."""
    start, end = local("2026-11-20T00:00"), local("2026-11-21T00:00")
    visit = replace(
        early_bird(energy=20.0), stated_energy_kwh=60.0, stated_departure=local("2026-11-20T10:00")
    )
    scenario = Scenario(workplace, workplace.tariff, (visit,), start, end, information="stated")
    result = simulate(scenario, "mpc")
    assert result.delivered_kwh["V"] == pytest.approx(20.0, abs=0.05)
    assert any("vehicle full after 20.0 of 60.0 kWh" in e.text for e in result.events)


def test_information_must_be_exact_or_stated(workplace: Station) -> None:
    scenario = Scenario(
        workplace,
        workplace.tariff,
        (early_bird(),),
        local("2026-11-20T00:00"),
        local("2026-11-21T00:00"),
        information="rumour",
    )
    with pytest.raises(ValueError, match="exact"):
        simulate(scenario, "mpc")
