"""The fast simulation: the daemon's control logic on the simulated plant, no sockets.

Scenarios are a few hours to a day of station time with a handful of vehicles at 60 s steps, each
policy run once per module. The night scenario starts at 09:00 so that its window holds the
depot's own daytime peak, as every real billing month does: mpc plans 24 h ahead and knows the
depot will set that peak tomorrow anyway, so in a window without it the demand charge would bill
mpc for a peak nobody would pay for.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from base.config import CONFIG_ROOT, Station, load_station
from simulator.bound import bound_problem, step_times
from simulator.fast import Scenario, SimResult, simulate
from simulator.fleet import Visit, assign_piles
from simulator.report import comparison_table, write_outputs
from simulator.scenario import Series
from tests.builders import local

ZONE = ZoneInfo("Asia/Shanghai")
CONTROLLED = ("equal-share", "mpc", "offline-optimal")


def truck(vid: str, arrival: str, departure: str, energy_kwh: float = 300.0) -> Visit:
    """A heavy truck: 600 kWh pack at 20 %, accepting up to 480 kW."""
    return Visit(
        vid,
        local(arrival),
        local(departure),
        energy_kwh=energy_kwh,
        max_kw=480.0,
        capacity_kwh=600.0,
        soc_arrival=0.2,
    )


# -- the reference depot: trucks back in the evening, gone at six ----------------------------------

NIGHT_ARRIVALS = ["18:00", "18:10", "18:20", "18:35", "18:45", "19:00"]


@pytest.fixture(scope="module")
def night(reference: Station) -> Scenario:
    visits = [
        truck(f"T{i}", f"2026-11-10T{at}", "2026-11-11T06:00")
        for i, at in enumerate(NIGHT_ARRIVALS)
    ]
    return Scenario.around(
        reference,
        visits,
        name="night",
        start=local("2026-11-10T09:00"),
        end=local("2026-11-11T07:00"),
    )


@pytest.fixture(scope="module")
def night_results(night: Scenario) -> dict[str, SimResult]:
    return {
        policy: simulate(night, policy, step_s=60)
        for policy in ("uncontrolled", "equal-share", "mpc", "offline-optimal")
    }


@pytest.mark.parametrize("policy", ["mpc", "offline-optimal"])
def test_planning_policies_deliver_everything_in_the_valley(
    night_results: dict[str, SimResult], policy: str
) -> None:
    metrics = night_results[policy].metrics
    assert metrics["vehicles"] == 6
    assert metrics["energy_requested_kwh"] == 1800.0
    assert float(metrics["delivered_pct"]) >= 99.5
    assert metrics["vehicles_served"] == 6
    assert float(metrics["valley_share_pct"]) > 80
    assert metrics["fallbacks"] == 0


def test_uncontrolled_charges_at_arrival_and_costs_more(
    night_results: dict[str, SimResult],
) -> None:
    uncontrolled = night_results["uncontrolled"]
    assert float(uncontrolled.metrics["valley_share_pct"]) < 20
    assert float(uncontrolled.metrics["delivered_pct"]) >= 99.5
    evening = (uncontrolled.times > local("2026-11-10T18:05")) & (
        uncontrolled.times <= local("2026-11-10T18:30")
    )
    assert uncontrolled.piles_kw[evening].min() > 400  # the first truck at full power
    assert night_results["mpc"].piles_kw[evening].max() < 1.0  # mpc waits for the valley
    for policy in ("mpc", "offline-optimal"):
        assert float(uncontrolled.metrics["cost_yuan"]) > 2 * float(
            night_results[policy].metrics["cost_yuan"]
        )


@pytest.mark.parametrize("policy", CONTROLLED)
def test_controlled_policies_stay_under_the_limit(
    night_results: dict[str, SimResult], policy: str
) -> None:
    result = night_results[policy]
    assert result.metrics["over_limit_kwh"] == 0
    assert result.metrics["limit_kw"] == 4275.0
    assert result.site_kw.max() <= 4275.0
    assert result.metrics["group_over_kwh"] == 0


def test_mpc_close_to_offline_optimal_and_cheaper_than_equal_share(
    night_results: dict[str, SimResult],
) -> None:
    mpc = float(night_results["mpc"].metrics["cost_yuan"])
    best = float(night_results["offline-optimal"].metrics["cost_yuan"])
    equal = float(night_results["equal-share"].metrics["cost_yuan"])
    assert mpc <= 1.05 * best
    assert mpc < equal


def test_metrics_keys_and_types(night_results: dict[str, SimResult]) -> None:
    metrics = night_results["mpc"].metrics
    for key in (
        "policy",
        "scenario",
        "cost_yuan",
        "energy_cost_yuan",
        "demand_charge_yuan",
        "energy_requested_kwh",
        "energy_delivered_kwh",
        "delivered_pct",
        "valley_share_pct",
        "peak_kw",
        "peak_15min_kw",
        "limit_kw",
        "over_limit_kwh",
        "max_ramp_kw_per_min",
        "solve_ms_p50",
        "solve_ms_p95",
        "plans",
        "fallbacks",
        "vehicles",
        "vehicles_served",
        "group_over_kwh",
    ):
        assert key in metrics, key
    assert (metrics["policy"], metrics["scenario"]) == ("mpc", "night")
    assert int(metrics["plans"]) > 10
    assert 0 < float(metrics["solve_ms_p50"]) <= float(metrics["solve_ms_p95"])
    assert float(metrics["max_ramp_kw_per_min"]) <= 400.0 + 1e-6  # the station's plan ramp
    assert json.loads(json.dumps(metrics)) == pytest.approx(metrics)


def test_no_vehicle_gets_more_than_it_asked_for(night_results: dict[str, SimResult]) -> None:
    result = night_results["uncontrolled"]
    for vid, wanted in result.requested_kwh.items():
        assert result.delivered_kwh[vid] <= wanted + 0.5, vid


def test_write_outputs(night_results: dict[str, SimResult], tmp_path: Path) -> None:
    result = night_results["mpc"]
    out = tmp_path / "out" / "mpc"
    write_outputs(result, out, ZONE)
    assert sorted(p.name for p in out.iterdir()) == [
        "events.csv",
        "metrics.json",
        "plot.png",
        "timeseries.csv",
    ]
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8")) == pytest.approx(
        result.metrics
    )
    with (out / "timeseries.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == [
        "time",
        "site_kw",
        "site_peak_kw",
        "background_kw",
        "piles_kw",
        "limit_kw",
        "price",
        "band",
    ]
    assert len(rows) - 1 == len(result.times)
    first = rows[1]
    assert first[0] == "2026-11-10T09:01:00+08:00"
    assert float(first[1]) == pytest.approx(float(first[3]) + float(first[4]), abs=0.11)
    assert float(first[2]) >= float(first[1]) - 0.1  # the highest within the step
    assert float(first[5]) == 4275.0
    assert first[7] == "peak"
    assert {row[7] for row in rows[1:]} == {"valley", "flat", "peak"}
    png = (out / "plot.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000


def test_comparison_table(night_results: dict[str, SimResult]) -> None:
    table = comparison_table(list(night_results.values()), currency="CNY")
    assert table.row_count == 4
    assert "night" in str(table.title)
    assert table.columns[1].header == "cost CNY"
    assert list(table.columns[0].cells) == list(night_results)


def test_the_bound_knows_every_arrival_at_the_steps_resolution(night: Scenario) -> None:
    served, unserved = assign_piles(night.visits, {p.id: p.max_kw for p in night.station.piles})
    assert not unserved
    times = step_times(night.start, night.end, 60.0)
    boundaries = np.concatenate([[night.start], times])
    problem = bound_problem(night, served, boundaries, 60.0)
    problem.check()
    assert problem.start == night.start
    assert problem.end == night.end
    assert problem.slots == (night.end - night.start) / 60
    # The site's own limit: the controller's reserve is a hedge only a controller needs.
    assert np.all(problem.limit_kw == 4275.0)
    assert sorted(v.id for v in problem.vehicles) == [f"T{i}" for i in range(6)]
    assert all(v.arrival is not None and v.pile is not None for v in problem.vehicles)
    assert {v.pile for v in problem.vehicles} == {"P01", "P02", "P03", "P04", "P05", "P06"}


# -- a utility limit that moves -------------------------------------------------------------------


def evening_trucks() -> list[Visit]:
    return [truck(f"E{i}", f"2026-11-10T19:{2 * i:02d}", "2026-11-10T22:00") for i in range(6)]


def limit_series(*steps: tuple[str, float]) -> Series:
    return Series(
        np.array([local(f"2026-11-10T{at}") for at, _ in steps]),
        np.array([kw for _, kw in steps]),
        "step",
    )


@pytest.fixture(scope="module")
def curtailed(reference: Station) -> dict[str, SimResult]:
    """The limit is cut to 2500 kW from 18:30 to 19:45, while the trucks arrive at 19:00."""
    limit = limit_series(("00:00", 4275.0), ("18:30", 2500.0), ("19:45", 4275.0))
    scenario = Scenario.around(
        reference,
        evening_trucks(),
        limit=limit,
        start=local("2026-11-10T18:00"),
        end=local("2026-11-10T22:30"),
    )
    return {p: simulate(scenario, p) for p in ("uncontrolled", "equal-share", "mpc")}


@pytest.mark.parametrize("policy", ["equal-share", "mpc"])
def test_a_lowered_limit_is_respected(curtailed: dict[str, SimResult], policy: str) -> None:
    result = curtailed[policy]
    assert result.metrics["over_limit_kwh"] == 0
    assert result.metrics["limit_kw"] == 2500.0
    assert np.all(result.site_kw <= result.limit_kw)
    low = (result.times > local("2026-11-10T18:30")) & (result.times < local("2026-11-10T19:45"))
    assert np.all(result.limit_kw[low] == 2500.0)
    assert float(result.metrics["delivered_pct"]) >= 99.0


def test_the_limit_binds_and_is_used_again_when_it_rises(curtailed: dict[str, SimResult]) -> None:
    equal = curtailed["equal-share"]
    low = (equal.times > local("2026-11-10T19:10")) & (equal.times <= local("2026-11-10T19:45"))
    assert equal.site_kw[low].max() > 2500.0 - 200  # equal-share charges up to the cut limit
    after = (equal.times > local("2026-11-10T19:50")) & (equal.times <= local("2026-11-10T20:00"))
    assert equal.site_kw[after].max() > 2500.0 + 500  # and beyond it once the limit is back
    assert float(curtailed["uncontrolled"].metrics["over_limit_kwh"]) > 0  # which ignores it


def test_a_limit_cut_while_charging_is_not_blamed_on_the_step_before(reference: Station) -> None:
    limit = limit_series(("00:00", 4275.0), ("19:30", 2500.0), ("21:30", 4275.0))
    scenario = Scenario.around(
        reference,
        evening_trucks(),
        limit=limit,
        start=local("2026-11-10T19:00"),
        end=local("2026-11-10T20:00"),
    )
    result = simulate(scenario, "equal-share")
    before = result.times == local("2026-11-10T19:30")
    assert result.site_kw[before][0] > 2500  # charging at full power under the old limit
    over = result.peak_kw > result.limit_kw + 1e-6
    # Only the step that starts with the cut goes over, for the piles' reaction to it: the
    # controller sees the new limit at 19:30, each pile starts to come down 1 s later and comes
    # down at 60 kW/s, the four together at 240 kW/s.
    assert list(result.times[over]) == [local("2026-11-10T19:31")]
    excess = result.site_kw[before][0] - 2500.0
    reaction_kwh = excess * (1.0 + excess / 240.0 / 2) / 3600
    assert 0 < float(result.metrics["over_limit_kwh"]) <= reaction_kwh


# -- the workplace AC station: phase and feeder limits --------------------------------------------


@pytest.fixture(scope="module")
def workplace() -> Station:
    return load_station(CONFIG_ROOT / "stations" / "workplace-ac.toml")


@pytest.fixture(scope="module")
def busy_workplace(workplace: Station) -> dict[str, SimResult]:
    """Every one of the 40 points taken within ten minutes of 08:00, all cars gone at 12:00."""
    visits = [
        Visit(
            f"C{i:02d}",
            local("2026-11-10T08:00") + 15 * i,
            local("2026-11-10T12:00"),
            energy_kwh=25.0,
            max_kw=11.0,
            capacity_kwh=60.0,
            soc_arrival=0.3,
        )
        for i in range(40)
    ]
    scenario = Scenario.around(
        workplace, visits, start=local("2026-11-10T07:30"), end=local("2026-11-10T12:30")
    )
    return {p: simulate(scenario, p) for p in ("uncontrolled", "equal-share", "mpc")}


@pytest.mark.parametrize("policy", ["equal-share", "mpc"])
def test_phase_and_feeder_limits_hold(busy_workplace: dict[str, SimResult], policy: str) -> None:
    result = busy_workplace[policy]
    assert result.metrics["vehicles"] == 40
    # Setpoints keep every group within its limit; within a minute-long step a pile handing power
    # to another may still overlap for the second or two their ramps take (5 kW/s): a few Wh.
    assert float(result.metrics["group_over_kwh"]) < 0.05


def test_the_busy_workplace_would_overload_its_groups(
    busy_workplace: dict[str, SimResult],
) -> None:
    assert float(busy_workplace["uncontrolled"].metrics["group_over_kwh"]) > 10


def test_mpc_delivers_about_what_equal_share_does_at_the_busy_workplace(
    busy_workplace: dict[str, SimResult],
) -> None:
    mpc = float(busy_workplace["mpc"].metrics["delivered_pct"])
    equal = float(busy_workplace["equal-share"].metrics["delivered_pct"])
    assert mpc >= 0.9 * equal


# -- warm-up days ---------------------------------------------------------------------------------


def test_warmup_measures_only_the_scenarios_own_vehicles(reference: Station) -> None:
    visits = [
        truck("W1", "2026-11-10T18:00", "2026-11-10T23:00", 200.0),
        truck("W2", "2026-11-10T18:30", "2026-11-10T23:30", 250.0),
        truck("W3", "2026-11-10T19:00", "2026-11-11T01:00", 150.0),
    ]
    scenario = Scenario.around(
        reference, visits, start=local("2026-11-10T17:00"), end=local("2026-11-11T02:00")
    )
    warm = scenario.with_warmup(1)
    assert warm.start == scenario.start - 86400
    assert warm.measured_start == scenario.start
    assert len(warm.visits) == 6
    assert {v.vehicle_id for v in warm.visits} == {"W1", "W2", "W3", "W1~1", "W2~1", "W3~1"}
    assert len(warm.history) == 3
    assert scenario.with_warmup(0) is scenario
    result = simulate(warm, "mpc", step_s=60, plan_period_s=600)
    assert result.metrics["vehicles"] == len(visits)
    assert sorted(result.requested_kwh) == ["W1", "W2", "W3"]
    assert result.metrics["energy_requested_kwh"] == 600.0
    assert float(result.metrics["delivered_pct"]) >= 99.0
    assert result.times[0] > scenario.start
    assert result.times[-1] == scenario.end


def test_a_station_without_a_simulator_section_is_refused(reference: Station) -> None:
    bare = dataclasses.replace(reference, simulator=None)
    scenario = Scenario.around(bare, [truck("X", "2026-11-10T18:00", "2026-11-10T20:00")])
    with pytest.raises(ValueError, match="no \\[simulator\\] section"):
        simulate(scenario, "mpc")
