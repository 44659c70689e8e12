"""The fault matrix: every fault the simulator can inject, run in fast simulation at the daemon's
one-second period, with the controller reading the plant through the daemon's `Sensors`.

Each case asserts that

- the true site load stayed under the limit, except for at most the reaction time stated for
  the faults that lower the limit (the utility's step: the next cycle, the piles' delay and
  their ramp down);
- energy accounting is consistent: for every vehicle, what the controller counted (its
  session's account, on the pile's lifetime counter) is what the plant delivered, to one step of
  that counter;
- the controller logged the failure once when it started and once when it ended, naming the
  device (in the words of its driver, as the daemon logs it), and then charged as before.

The controller reads the plant through the daemon's drivers over in-process links
(`simulator.inprocess`), so a device shows a fault only as far as its registers can: the reference
station's Janitza grid meter has no clock, so a jump of its clock is tried where a meter keeps time
(`test_a_meter_clock_jump_is_noticed_where_the_meter_keeps_time`).

Twelve trucks plug in at 23:00 wanting more than the transformer allows until they leave from
23:40 on, so the limit binds throughout and a fault cannot hide in idle headroom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest

from base.config import REFERENCE_STATION, Station, load_station
from base.events import Source
from base.loading import ConfigError
from flexcharge import cli
from simulator.fast import Scenario, SimResult, simulate
from simulator.faults import Fault, FaultKind, FaultScript, load_faults
from simulator.fleet import Visit
from tests.conftest import local_time

F0 = 600.0  # the fault starts this long after the scenario
F1 = 1200.0  # and ends here
END = 2900.0


@pytest.fixture(scope="module")
def depot() -> Station:
    """The reference station."""
    return load_station(REFERENCE_STATION)


def busy_night(station: Station, faults: tuple[Fault, ...] = ()) -> Scenario:
    """Twelve trucks from 23:00 that want more than the site can give before they leave."""
    start = local_time(station, "2026-11-10T23:00")
    visits = tuple(
        Visit(
            vehicle_id=f"T{k:02d}",
            arrival=start,
            departure=start + 2400 + 30 * k,
            energy_kwh=300.0,
            max_kw=450.0,
            capacity_kwh=600.0,
            soc_arrival=0.2,
            pile=f"P{k:02d}",
        )
        for k in range(1, 13)
    )
    shifted = tuple(
        replace(f, start=start + f.start, end=start + f.end if math.isfinite(f.end) else f.end)
        for f in faults
    )
    return Scenario(
        station, station.tariff, visits, start, start + END, "busy-night", faults=shifted
    )


@dataclass(frozen=True)
class Case:
    """One row of the matrix: the faults (times from the scenario's start) and what to expect."""

    faults: tuple[Fault, ...]
    starts: tuple[str, ...]  # each logged exactly once, after the fault starts
    ends: tuple[str, ...] = ()  # each logged once the fault has ended
    reaction_s: float = 0.0  # the longest the site may be over its limit
    episodes: bool = False  # the failure may come and go while the fault lasts


def on(kind: FaultKind, target: str, value: float | None = None, end: float = F1) -> Fault:
    return Fault(kind, target, F0, end, value)


K = FaultKind
# What the Modbus driver says of a device that does not answer (silent, or closing every
# connection it is offered): the reference station's first request to its grid meter (the
# Janitza's voltages, currents and powers) and to a pile (all it reads), within its 0.5 s I/O
# timeout.
METER_SILENT = "meter grid: FC3 19000+28 unit 1: no answer within 0.5 s"


def pile_silent(pile: str) -> str:
    return f"pile {pile}: FC3 0+25 unit 1: no answer within 0.5 s"


MATRIX: dict[str, Case] = {
    "grid meter stops answering": Case(
        (on(K.SILENT, "grid"),), (METER_SILENT,), ("meter grid: back to normal",)
    ),
    "grid meter answers late": Case(
        (on(K.LATE, "grid", 3.0),),
        ("meter grid: answers 3 s late",),
        ("meter grid: answers in time again",),
    ),
    "grid meter drops the connection": Case(
        (on(K.DROPPED, "grid"),), (METER_SILENT,), ("meter grid: back to normal",)
    ),
    "grid meter freezes": Case(
        (on(K.FROZEN, "grid"),), ("meter grid: frozen",), ("meter grid: back to normal",)
    ),
    "grid meter reads NaN": Case(
        (on(K.NAN, "grid"),),
        ("meter grid: power: the meter reports it unavailable (NaN)",),
        ("meter grid: back to normal",),
    ),
    "grid meter reads an absurd value": Case(
        (on(K.ABSURD, "grid", 1e6),),
        ("meter grid: power reads 1,000,000 kW",),
        ("meter grid: back to normal",),
    ),
    "one pile stops answering": Case(
        (on(K.SILENT, "P03"),), (pile_silent("P03"),), ("pile P03: back to normal",)
    ),
    "four piles stop answering": Case(
        tuple(on(K.SILENT, p) for p in ("P01", "P02", "P03", "P04")),
        tuple(pile_silent(p) for p in ("P01", "P02", "P03", "P04")),
        tuple(f"pile {p}: back to normal" for p in ("P01", "P02", "P03", "P04")),
    ),
    "a pile answers late": Case(
        (on(K.LATE, "P03", 3.0),),
        ("pile P03: answers 3 s late",),
        ("pile P03: answers in time again",),
    ),
    "a pile drops the connection": Case(
        (on(K.DROPPED, "P03"),), (pile_silent("P03"),), ("pile P03: back to normal",)
    ),
    "a pile ignores its setpoint as the limit drops": Case(
        (on(K.IGNORES_SETPOINT, "P03"), replace(on(K.LIMIT_STEP, "site", 3000.0), start=F0 + 60)),
        ("pile P03: not following",),
        ("pile P03: following its setpoint again",),
        reaction_s=10.0,
    ),
    "a pile overshoots its setpoint": Case(
        (on(K.OVERSHOOT, "P03", 1.3),),
        ("pile P03: not following",),
        ("pile P03: following its setpoint again",),
    ),
    "a pile ramps slower than rated": Case(
        (on(K.SLOW_RAMP, "P03", 0.01),),
        ("pile P03: not following",),
        ("pile P03: following its setpoint again",),
        episodes=True,
    ),
    "a pile reboots": Case(
        (on(K.REBOOT, "P03", end=F0 + 30),), (pile_silent("P03"),), ("pile P03: back to normal",)
    ),
    "a pile reports a fault": Case(
        (on(K.FAULT_STATE, "P03", 7),),
        ("pile P03: fault: reports fault code 7",),
        ("pile P03: fault cleared",),
    ),
    "a vehicle leaves early": Case(
        (on(K.LEAVES_EARLY, "P03", end=math.inf),), ("P03: vehicle left after",)
    ),
    "a vehicle stays late": Case(
        (on(K.STAYS_LATE, "P03", 300.0, end=math.inf),),
        ("P03: vehicle still here after its departure time",),
    ),
    "the utility lowers the limit in a step": Case(
        (on(K.LIMIT_STEP, "site", 2500.0),),
        ("site limit now 2500 kW",),
        ("site limit now 4275 kW",),
        reaction_s=10.0,
    ),
}


@pytest.fixture(scope="module")
def baseline(depot: Station) -> SimResult:
    """The same night without faults."""
    return simulate(busy_night(depot), "mpc", step_s=1.0)


def over_limit(result: SimResult) -> tuple[float, float]:
    """Worst overshoot (kW) and the seconds over the limit (1 s steps)."""
    over = result.site_kw - result.limit_kw
    return float(max(over.max(), 0.0)), float((over > 1e-6).sum())


def back_to_full(result: SimResult, since: float) -> float | None:
    """Seconds from `since` until the site draws 90 % of its limit again (None: never did)."""
    full = (result.times >= since) & (result.site_kw > 0.9 * result.limit_kw)
    return float(result.times[full][0] - since) if full.any() else None


def check_accounting(result: SimResult, station: Station) -> None:
    counted = result.controller_delivered_kwh
    # The lifetime counter is read in its map's steps: a session's account is exact to one.
    step = station.map_for(station.piles[0].device)["energy_import"].scale
    for vehicle, truth in result.delivered_kwh.items():
        assert vehicle in counted, f"{vehicle}: the controller never closed its session"
        assert counted[vehicle] == pytest.approx(truth, abs=step + 1e-9), vehicle


def test_the_night_without_faults_binds_the_limit(depot: Station, baseline: SimResult) -> None:
    """The matrix means something only if the limit binds: the site runs close to it."""
    assert over_limit(baseline) == (0.0, 0.0)
    assert baseline.metrics["peak_kw"] > 0.95 * 4275
    assert float(baseline.metrics["delivered_pct"]) < 100  # the trucks want more than fits
    check_accounting(baseline, depot)
    assert not [e for e in baseline.events if "not following" in e.text]


@pytest.mark.parametrize("name", list(MATRIX))
def test_fault_matrix(depot: Station, baseline: SimResult, name: str) -> None:
    """The site stays under its limit, the books balance, the failure is logged and recovered."""
    case = MATRIX[name]
    scenario = busy_night(depot, case.faults)
    result = simulate(scenario, "mpc", step_s=1.0)
    start = scenario.start
    worst_kw, over_s = over_limit(result)
    assert over_s <= case.reaction_s, f"{name}: {over_s:.0f} s over, worst {worst_kw:.0f} kW"
    check_accounting(result, depot)

    events = [(e.time - start, e.text) for e in result.events if e.source is not Source.SIMULATOR]
    for text in case.starts:
        seen = [t for t, e in events if text in e]
        assert seen, f"{name}: never logged {text!r}: {events}"
        assert case.episodes or len(seen) == 1, f"{name}: {text!r} logged {len(seen)} times"
        assert seen[0] >= F0
    fault_end = max(f.end for f in case.faults)
    last_start = max(t for t, e in events if any(text in e for text in case.starts))
    for text in case.ends:
        seen = [t for t, e in events if text in e]
        # The failure's end is logged after the fault ended, or (for one that comes and goes)
        # after its last episode began.
        ended_by = last_start if case.episodes else fault_end
        assert seen and seen[-1] >= ended_by, f"{name}: never logged {text!r} after the fault"
        assert case.episodes or len(seen) == 1, f"{name}: {text!r} logged {len(seen)} times"
        back = back_to_full(result, start + seen[-1])
        assert back is not None, f"{name}: never back to charging at the limit after the fault"


def test_losing_the_meter_brings_piles_down_at_the_ramp_limit(depot: Station) -> None:
    """Blind, the worst case is assumed: piles come down to it, but no faster than their ramp."""
    result = simulate(busy_night(depot, (on(K.SILENT, "grid"),)), "mpc", step_s=1.0)
    start = result.times[0] - 1
    during = (result.times - start > F0) & (result.times - start < F1)
    drops = -np.diff(result.piles_kw[during])
    ramp = depot.control.ramp_kw_per_s * len(depot.piles)
    assert drops.max() <= ramp + 1.0
    # ...and they did come down, to the budget the worst background leaves.
    assert result.piles_kw[during][-1] < result.piles_kw[during][0] - 200


def mixed_site_morning(mixed: Station, start: float) -> tuple[Visit, ...]:
    """A vehicle at every pile of the mixed site from `start`, for 50 minutes."""
    return tuple(
        Visit(
            vehicle_id=f"V{k}",
            arrival=start,
            departure=start + 3000,
            energy_kwh=60.0,
            max_kw=pile.max_kw,
            capacity_kwh=80.0,
            soc_arrival=0.1,
            pile=pile.id,
        )
        for k, pile in enumerate(mixed.piles)
    )


def test_a_lost_terminal_keeps_the_utility_limit_in_force() -> None:
    """The utility's limit stays in force while the terminal that relays it is lost."""
    mixed = load_station(REFERENCE_STATION.parent / "mixed-site.toml")
    start = local_time(mixed, "2026-11-10T10:00")
    ac = [p for p in mixed.piles if p.phases == 3][:4]
    visits = mixed_site_morning(mixed, start)
    assert ac
    assert mixed.terminal is not None
    terminal = mixed.terminal.id
    faults = (
        Fault(K.LIMIT_STEP, "site", start + 300, start + 2400, 450.0),
        Fault(K.SILENT, terminal, start + 600, start + 1200),
    )
    scenario = Scenario(mixed, mixed.tariff, visits, start, start + 2400, "terminal", faults=faults)
    result = simulate(scenario, "mpc", step_s=1.0)
    worst_kw, over_s = over_limit(result)
    assert over_s <= 10.0, f"{over_s} s over, worst {worst_kw:.0f} kW"
    lost = (result.times > start + 610) & (result.times < start + 1200)
    assert result.site_kw[lost].max() <= 450.0
    # The limit binds: without it the piles would have drawn more.
    assert result.site_kw[lost].max() > 400.0
    texts = [e.text for e in result.events]
    # The simulator's OPC-UA server is down while the terminal is unreachable.
    down = f"terminal {terminal}: cannot connect to {mixed.terminal.opcua_url}: Connect call failed"
    assert any(down in t for t in texts)
    assert any(f"terminal {terminal}: back to normal" in t for t in texts)


def test_a_meter_clock_jump_is_noticed_where_the_meter_keeps_time() -> None:
    """The mixed site's terminal reports its clock: a jump of it is noticed, the terminal's
    readings are not trusted until its clock is steady again, and the site keeps its limit."""
    mixed = load_station(REFERENCE_STATION.parent / "mixed-site.toml")
    assert mixed.terminal is not None
    terminal = mixed.terminal.id
    start = local_time(mixed, "2026-11-10T10:00")
    visits = mixed_site_morning(mixed, start)
    faults = (Fault(K.CLOCK_JUMP, terminal, start + 600, start + 1200, 3600.0),)
    scenario = Scenario(mixed, mixed.tariff, visits, start, start + 1800, "clock", faults=faults)
    result = simulate(scenario, "mpc", step_s=1.0)
    assert over_limit(result) == (0.0, 0.0)
    texts = [(e.time - start, e.text) for e in result.events]
    forward = [t for t, e in texts if f"terminal {terminal}: its clock jumped by +3600 s" in e]
    back = [t for t, e in texts if f"terminal {terminal}: its clock jumped by -3600 s" in e]
    assert forward == [600.0] and back == [1200.0]
    assert any(f"terminal {terminal}: back to normal" in e for t, e in texts if t > 1200)


# -- the fault file ------------------------------------------------------------------------------

HEADER = "start,end,kind,target,value\n"


def test_fault_files_load_and_name_every_bad_row(tmp_path: Path, depot: Station) -> None:
    good = tmp_path / "faults.csv"
    good.write_text(
        HEADER
        + "2026-11-10T23:10:00+08:00,2026-11-10T23:20:00+08:00,silent,grid,\n"
        + "2026-11-10T23:15:00+08:00,,limit-step,site,3000\n",
        encoding="utf-8",
    )
    script = load_faults(good)
    assert [f.kind for f in script.faults] == [K.SILENT, K.LIMIT_STEP]
    assert script.faults[1].end == math.inf and script.faults[1].amount == 3000
    script.check(depot)

    bad = tmp_path / "bad.csv"
    bad.write_text(
        HEADER
        + "2026-11-10T23:10:00,2026-11-10T23:20:00+08:00,silent,grid,\n"
        + "2026-11-10T23:10:00+08:00,2026-11-10T23:00:00+08:00,melts,grid,x\n"
        + "2026-11-10T23:15:00+08:00,,limit-step,site,\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_faults(bad)
    found = {(p.device, p.field) for p in err.value.problems}
    assert found == {
        ("row 2", "start"),
        ("row 3", "kind"),
        ("row 3", "end"),
        ("row 3", "value"),
        ("row 4", "value"),
    }
    assert all(p.file == bad for p in err.value.problems)

    wrong = FaultScript([Fault(K.FROZEN, "P01", 0.0), Fault(K.REBOOT, "grid", 0.0)])
    with pytest.raises(ConfigError) as err:
        wrong.check(depot, good)
    assert [p.field for p in err.value.problems] == ["target", "target"]
    assert "must be a meter of the station" in str(err.value)
    assert "must be a pile of the station" in str(err.value)


def test_a_station_given_checks_the_targets_naming_the_file(tmp_path: Path, depot: Station) -> None:
    path = tmp_path / "faults.csv"
    path.write_text(HEADER + "2026-11-10T23:10:00+08:00,,frozen,P01,\n", encoding="utf-8")
    assert load_faults(path).faults[0].target == "P01"
    with pytest.raises(ConfigError) as err:
        load_faults(path, station=depot)
    [problem] = err.value.problems
    assert (problem.file, problem.field) == (path, "target")
    assert "must be a meter of the station" in problem.message


def fault_problems(path: Path) -> list[tuple[str | None, str, str]]:
    """(device, field, message) of every problem `load_faults` finds, each naming `path`."""
    with pytest.raises(ConfigError) as err:
        load_faults(path)
    assert all(p.file == path for p in err.value.problems)
    return [(p.device, p.field, p.message) for p in err.value.problems]


# -- found by fuzzing: each of these was a raw ValueError or csv.Error -----------------------------


def test_a_nul_in_the_path_of_a_fault_script_is_a_config_error(tmp_path: Path) -> None:
    assert fault_problems(tmp_path / "fa\x00ults.csv") == [
        (None, "", "cannot read: the path contains a NUL character")
    ]


def test_a_fault_script_field_longer_than_csv_allows_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "faults.csv"
    path.write_text(HEADER + f'"{"x" * 200_000}",,silent,grid,\n', encoding="utf-8")
    [(device, field, message)] = fault_problems(path)
    assert (device, field) == (None, "")
    assert message.startswith("not a CSV file: field larger than field limit")


def test_a_fault_script_not_in_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "faults.csv"
    path.write_bytes((HEADER + "2026-11-10T23:10:00+08:00,,silent,gr\xfcn,\n").encode("latin-1"))
    [(device, field, message)] = fault_problems(path)
    assert (device, field) == (None, "")
    assert "not UTF-8" in message


def test_simulate_takes_a_fault_file_and_writes_what_happened(
    tmp_path: Path, depot: Station
) -> None:
    sessions = tmp_path / "night.csv"
    sessions.write_text(
        "arrival,departure,energy_kwh,max_kw,pile\n"
        + "".join(
            f"2026-11-10T23:00:00+08:00,2026-11-10T23:50:00+08:00,300,450,P{k:02d}\n"
            for k in range(1, 13)
        ),
        encoding="utf-8",
    )
    faults = tmp_path / "faults.csv"
    faults.write_text(
        HEADER + "2026-11-10T23:10:00+08:00,2026-11-10T23:20:00+08:00,silent,P05,\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    code = cli.main(
        [
            "simulate",
            "--station",
            str(REFERENCE_STATION),
            "--sessions",
            str(sessions),
            "--faults",
            str(faults),
            "--step",
            "5",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    events = (out / "events.csv").read_text(encoding="utf-8")
    assert pile_silent("P05") in events and "pile P05: back to normal" in events
    assert "2026-11-10T23:10:00+08:00" in events

    # A fault on a pile the station does not have is a config error, before anything runs.
    faults.write_text(HEADER + "2026-11-10T23:10:00+08:00,,silent,P99,\n", encoding="utf-8")
    args = ["simulate", "--station", str(REFERENCE_STATION), "--sessions", str(sessions)]
    assert cli.main([*args, "--faults", str(faults), "--out", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()
