"""OCPP piles in the simulator without sockets: the station-file quirks of simulated charge points
([simulator.charge_points.<pile id>]) and the fault-script kinds for them (ws-drop,
ignores-profiles, applies-late, rejects-purpose), loaded and every mistake named by file, row or
section, and field; and the fast simulation of a station with OCPP piles, which runs their pile
models through the DC pile map in-process (not the OCPP transport)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from base.config import REFERENCE_STATION, load_station
from base.loading import ConfigError
from base.stationdevices import ChargePointQuirks, OcppSettings, PileConfig
from simulator.fast import Scenario, simulate
from simulator.faults import Fault, FaultKind, FaultScript, load_faults
from simulator.fleet import Visit
from tests.builders import local
from tests.conftest import station_with_section

# -- configuration and fault scripts ----------------------------------------------------------

OCPP_PILE = """
[ocpp]
port = 15040

[[piles]]
id = "CP1"
protocol = "ocpp"
ocpp_version = "2.0.1"
max_kw = 150.0
min_kw = 10.0
fallback_kw = 50.0
"""


def test_charge_point_quirks_load_and_are_checked(tmp_path: Path) -> None:
    good = station_with_section(
        tmp_path / "good",
        OCPP_PILE
        + '[simulator.charge_points.CP1]\nrejects_purposes = ["TxProfile"]\n'
        + 'rate_units = ["A"]\napply_delay_s = 20\nmax_periods = 5\n',
    )
    station = load_station(good)
    assert station.simulator is not None
    quirks = station.simulator.quirks("CP1")
    assert quirks.rejects_purposes == ["TxProfile"]
    assert quirks.rate_units == ["A"] and quirks.apply_delay_s == 20 and quirks.max_periods == 5
    assert station.simulator.quirks("P01") == ChargePointQuirks()

    bad = station_with_section(
        tmp_path / "bad",
        OCPP_PILE
        + '[simulator.charge_points.CP1]\nrejects_purposes = ["TxProfil"]\nrate_units = ["A", "A"]\n'
        + "apply_delay_s = -1\nmax_periods = 0\ncolour = 1\n",
    )
    with pytest.raises(ConfigError) as err:
        load_station(bad)
    found = {p.field for p in err.value.problems}
    assert found == {
        "simulator.charge_points.CP1.rejects_purposes.0",
        "simulator.charge_points.CP1.rate_units",
        "simulator.charge_points.CP1.apply_delay_s",
        "simulator.charge_points.CP1.max_periods",
        "simulator.charge_points.CP1.colour",
    }, [str(p) for p in err.value.problems]
    assert all(p.file == bad for p in err.value.problems)
    assert "unknown field (misspelt?)" in str(err.value)

    modbus = station_with_section(
        tmp_path / "modbus", OCPP_PILE + "[simulator.charge_points.P01]\n"
    )
    with pytest.raises(ConfigError) as err:
        load_station(modbus)
    [problem] = err.value.problems
    assert (problem.file, problem.field) == (modbus, "simulator.charge_points.P01")
    assert "not an OCPP pile of the station (OCPP piles: CP1)" in str(err.value)


def test_ocpp_fault_kinds_load_and_name_their_bad_rows(tmp_path: Path) -> None:
    station = load_station(station_with_section(tmp_path, OCPP_PILE))
    path = tmp_path / "faults.csv"
    path.write_text(
        "start,end,kind,target,value\n"
        "2026-11-10T23:10:00+08:00,2026-11-10T23:20:00+08:00,ws-drop,CP1,\n"
        "2026-11-10T23:10:00+08:00,,applies-late,CP1,\n"
        "2026-11-10T23:10:00+08:00,,rejects-purpose,CP1,TxDefaultProfile\n"
        "2026-11-10T23:10:00+08:00,,ignores-profiles,CP1,\n",
        encoding="utf-8",
    )
    script = load_faults(path, station=station)
    kinds = [f.kind for f in script.faults]
    assert kinds == [
        FaultKind.WS_DROP,
        FaultKind.APPLIES_LATE,
        FaultKind.REJECTS_PURPOSE,
        FaultKind.IGNORES_PROFILES,
    ]
    assert script.faults[1].amount == 20.0
    assert script.faults[2].label == "TxDefaultProfile"
    t = script.faults[0].start
    assert not script.reachable("CP1", t + 1) and script.reachable("CP1", t + 601)
    assert script.rejected_purposes("CP1", t + 1) == {"TxDefaultProfile"}

    bad = tmp_path / "bad.csv"
    bad.write_text(
        "start,end,kind,target,value\n"
        "2026-11-10T23:10:00+08:00,,rejects-purpose,CP1,\n"
        "2026-11-10T23:10:00+08:00,,rejects-purpose,CP1,TxProfil\n"
        "2026-11-10T23:10:00+08:00,,applies-late,CP1,soon\n"
        "2026-11-10T23:10:00+08:00,,ws-drop,P01,\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_faults(bad)
    assert [(p.device, p.field) for p in err.value.problems] == [
        ("row 2", "value"),
        ("row 3", "value"),
        ("row 4", "value"),
    ]
    assert "unknown purpose 'TxProfil'" in str(err.value)
    wrong = FaultScript([Fault(FaultKind.WS_DROP, "P01", 0.0)])
    with pytest.raises(ConfigError) as err:
        wrong.check(station, path)
    [problem] = err.value.problems
    assert problem.field == "target"
    assert "must be an OCPP pile of the station (CP1)" in problem.message


def test_fast_simulation_runs_ocpp_piles_through_the_dc_pile_path() -> None:
    """Two of the depot's piles as OCPP charge points (2.0.1 and 1.6), one of them dropping its
    websocket for a while: the fast simulation charges their trucks as the others', under the
    limit."""
    depot = load_station(REFERENCE_STATION)
    piles = list(depot.piles)
    for index, version in ((0, "2.0.1"), (1, "1.6")):
        pile = piles[index]
        piles[index] = PileConfig.model_validate(
            {
                "id": pile.id,
                "protocol": "ocpp",
                "ocpp_version": version,
                "max_kw": pile.max_kw,
                "min_kw": pile.min_kw,
                "fallback_kw": pile.fallback_kw,
                "comm_timeout_s": 60.0,
            }
        )
    station = replace(depot, piles=tuple(piles), ocpp=OcppSettings(port=15040))
    assert [p.ocpp for p in station.piles[:3]] == [True, True, False]
    start, end = local("2026-11-10T17:50"), local("2026-11-10T22:10")
    visits = tuple(
        Visit(
            f"T{k}",
            local("2026-11-10T18:00"),
            local("2026-11-10T22:00"),
            energy_kwh=300.0,
            max_kw=480.0,
            capacity_kwh=600.0,
            soc_arrival=0.2,
            pile=f"P0{k + 1}",
        )
        for k in range(3)
    )
    faults = (Fault(FaultKind.WS_DROP, "P01", start + 1800, start + 2400),)
    scenario = Scenario(station, station.tariff, visits, start, end, "ocpp", faults=faults)
    result = simulate(scenario, "mpc", step_s=10.0)
    for vehicle in ("T0", "T1", "T2"):
        assert result.delivered_kwh[vehicle] == pytest.approx(300.0, abs=1.0)
    assert result.metrics["peak_kw"] <= station.limit_kw
    assert any("P01" in e.text and "ws-drop" in e.text for e in result.events)
