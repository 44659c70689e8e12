"""The `simulate`, `compare` and `sessions` subcommands, called in-process through cli.main()."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from base.config import CONFIG_ROOT, load_station
from flexcharge import cli
from simulator.fleet import random_days
from simulator.scenario import load_sessions

STATION = str(CONFIG_ROOT / "stations" / "bozhou-depot.toml")
ZONE = ZoneInfo("Asia/Shanghai")
OUTPUTS = ["events.csv", "metrics.json", "plot.png", "timeseries.csv"]
HEADER = "id,arrival,departure,energy_kwh,max_kw,pile,capacity_kwh,soc_arrival,v2g"


@pytest.fixture
def sessions(tmp_path: Path) -> Path:
    """Three trucks for one evening and night, one of them on a named pile."""
    path = tmp_path / "evening.csv"
    path.write_text(
        f"{HEADER}\n"
        "A,2026-11-10T18:00:00+08:00,2026-11-11T06:00:00+08:00,300,480,,600,0.2,false\n"
        "B,2026-11-10T18:30:00+08:00,2026-11-11T06:00:00+08:00,250,400,P09,600,0.3,false\n"
        "C,2026-11-10T20:00:00+08:00,2026-11-10T23:30:00+08:00,200,480,,,,\n",
        encoding="utf-8",
    )
    return path


def simulate_args(
    sessions: Path, out: Path, *policies: str, command: str = "simulate"
) -> list[str]:
    args = [command, "--station", STATION, "--sessions", str(sessions), "--out", str(out)]
    for policy in policies:
        args += ["--policy", policy]
    return args


def test_simulate_one_policy(
    sessions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert cli.main(simulate_args(sessions, out, "mpc")) == cli.EXIT_OK
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["policy"] == "mpc"
    assert metrics["scenario"] == "evening"
    assert metrics["vehicles"] == 3
    assert metrics["energy_requested_kwh"] == 750.0
    assert metrics["delivered_pct"] >= 99.0
    assert metrics["over_limit_kwh"] == 0
    assert (
        (out / "timeseries.csv")
        .read_text(encoding="utf-8")
        .startswith("time,site_kw,site_peak_kw,background_kw,piles_kw,limit_kw,price,band\n")
    )
    assert (out / "plot.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "mpc: cost" in printed
    assert f"written to {out / 'metrics.json'}" in printed


def test_simulate_without_a_policy_runs_mpc(sessions: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli.main([*simulate_args(sessions, out), "--step", "120"]) == cli.EXIT_OK
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["policy"] == "mpc"


def test_simulate_two_policies(
    sessions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert cli.main(simulate_args(sessions, out, "mpc", "uncontrolled")) == cli.EXIT_OK
    for policy in ("mpc", "uncontrolled"):
        assert sorted(p.name for p in (out / policy).iterdir()) == OUTPUTS
        metrics = json.loads((out / policy / "metrics.json").read_text(encoding="utf-8"))
        assert metrics["policy"] == policy
    assert (out / "plot.png").stat().st_size > 0
    compared = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert [m["policy"] for m in compared] == ["mpc", "uncontrolled"]
    assert compared[0]["cost_yuan"] < compared[1]["cost_yuan"]
    printed = capsys.readouterr().out
    assert "policies compared (evening)" in printed
    assert f"written to {out}\n" in printed


def test_compare_named_policies(sessions: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = simulate_args(sessions, out, "equal-share", "edf", "llf", command="compare")
    assert cli.main(args) == cli.EXIT_OK
    compared = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    assert [m["policy"] for m in compared] == ["equal-share", "edf", "llf"]
    assert all(m["over_limit_kwh"] == 0 for m in compared)


def test_simulate_with_limit_and_background_files(sessions: Path, tmp_path: Path) -> None:
    limit = tmp_path / "limit.csv"
    limit.write_text(
        "time,kw\n2026-11-10T00:00:00+08:00,4275\n2026-11-11T00:00:00+08:00,2000\n",
        encoding="utf-8",
    )
    background = tmp_path / "background.csv"
    background.write_text(
        "time,kw\n2026-11-10T00:00:00+08:00,500\n2026-11-12T00:00:00+08:00,-100\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    args = [
        *simulate_args(sessions, out, "equal-share"),
        "--limit",
        str(limit),
        "--background",
        str(background),
    ]
    assert cli.main(args) == cli.EXIT_OK
    metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["limit_kw"] == 2000.0
    assert metrics["over_limit_kwh"] == 0


def test_sessions_command_writes_what_load_sessions_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "day.csv"
    args = ["sessions", "--station", STATION, "--start", "2026-11-10", "--out", str(out)]
    assert cli.main(args) == cli.EXIT_OK
    visits = load_sessions(out)
    start = datetime(2026, 11, 10, tzinfo=ZONE).timestamp()
    assert visits
    assert all(start <= v.arrival < start + 86400 for v in visits)
    station = load_station(STATION)
    assert station.simulator is not None
    expected = [
        v
        for v in random_days(station.simulator, start, start + 86400, ZONE)
        if start <= v.arrival < start + 86400
    ]
    assert [v.vehicle_id for v in visits] == [v.vehicle_id for v in expected]
    assert [v.energy_kwh for v in visits] == [v.energy_kwh for v in expected]
    assert f"{len(visits)} sessions" in capsys.readouterr().out
    first = out.read_bytes()
    assert cli.main(args) == cli.EXIT_OK
    assert out.read_bytes() == first  # seeded: the same day every time


def test_sessions_command_over_several_days(tmp_path: Path) -> None:
    out = tmp_path / "days.csv"
    args = ["sessions", "--station", STATION, "--start", "2026-11-10", "--days", "2"]
    assert cli.main([*args, "--out", str(out)]) == cli.EXIT_OK
    days = {datetime.fromtimestamp(v.arrival, ZONE).date().isoformat() for v in load_sessions(out)}
    assert days == {"2026-11-10", "2026-11-11"}


def test_sessions_command_with_a_bad_date(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "day.csv"
    args = ["sessions", "--station", STATION, "--start", "10/11/2026", "--out", str(out)]
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    assert stopped.value.code == cli.EXIT_BAD_CONFIG
    assert "--start: not a date: '10/11/2026'" in capsys.readouterr().err
    assert not out.exists()


def test_sessions_naming_a_pile_the_station_lacks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "unknown-pile.csv"
    path.write_text(
        f"{HEADER}\n"
        "A,2026-11-10T18:00:00+08:00,2026-11-11T06:00:00+08:00,300,480,P99,,,\n"
        "B,2026-11-10T18:00:00+08:00,2026-11-11T06:00:00+08:00,300,480,P01,,,\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert cli.main(simulate_args(path, out, "mpc")) == cli.EXIT_BAD_CONFIG
    printed = capsys.readouterr().out
    assert f"{path}: session A: pile: 'P99' is not a pile of" in " ".join(printed.split())
    assert not out.exists()


def test_malformed_sessions_report_row_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "broken.csv"
    path.write_text(
        f"{HEADER}\n"
        "A,2026-11-10T18:00:00+08:00,2026-11-11T06:00:00+08:00,300,480,,,,\n"
        "B,2026-11-10T18:00:00+08:00,2026-11-11T06:00:00+08:00,300,fast,,,,\n"
        "C,2026-11-10T18:00:00,2026-11-11T06:00:00+08:00,300,480,,,,\n",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    assert cli.main(simulate_args(path, out, "mpc")) == cli.EXIT_BAD_CONFIG
    printed = capsys.readouterr().out
    assert "2 problem(s)" in printed
    assert f"{path}: row 3: max_kw: " in printed
    assert f"{path}: row 4: arrival: " in printed
    assert not out.exists()


def test_malformed_limit_file_reports_row_and_field(
    sessions: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    limit = tmp_path / "limit.csv"
    limit.write_text(
        "time,kw\n2026-11-10T12:00:00+08:00,4000\n2026-11-10T06:00:00+08:00,3000\n",
        encoding="utf-8",
    )
    args = [*simulate_args(sessions, tmp_path / "out", "mpc"), "--limit", str(limit)]
    assert cli.main(args) == cli.EXIT_BAD_CONFIG
    assert f"{limit}: row 3: time: not after the previous row's time" in capsys.readouterr().out


def test_missing_sessions_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere.csv"
    assert cli.main(simulate_args(missing, tmp_path / "out")) == cli.EXIT_BAD_CONFIG
    assert f"{missing}: file not found" in capsys.readouterr().out
