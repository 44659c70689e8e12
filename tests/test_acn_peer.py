"""The research peer's side in flexcharge: the ACN days it is given, the ACN station and tariff
files, and the peer script's independence. Nothing here needs the peer's venv."""

from __future__ import annotations

import ast
import sys
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from base.config import CONFIG_ROOT, load_station
from base.tarifffile import load_tariff
from simulator.scenario import ACN_COLUMNS
from tests.peer import SCRIPT, THREAD_VARS, peer_env
from tests.peer.days import DEV_DAYS, acn_day

FIXTURE = Path(__file__).parent / "data" / "acn-jpl-2019-10-08.csv.gz"
LA = ZoneInfo("America/Los_Angeles")


def test_a_real_day_in_periods_from_local_midnight() -> None:
    """The committed JPL day: 68 sessions, none dropped; the first and last worked by hand."""
    day = acn_day("jpl", date(2019, 10, 8), sessions=FIXTURE)
    assert day["name"] == "jpl 2019-10-08"
    assert day["start"] == "2019-10-08T00:00:00-07:00"
    assert (day["period_min"], day["voltage_v"], day["max_a"], day["limit_kw"]) == (5, 208, 32, 80)
    assert day["tariff"] == "sce_tou_ev_4_march_2019"
    assert day["dropped"] == {"no_whole_period": 0, "no_energy": 0, "overlap": 0}
    assert day["capped"] == 0
    sessions = day["sessions"]
    assert len(sessions) == 68
    assert len(day["stations"]) == 51 and day["stations"] == sorted(day["stations"])
    # 03:54:39 is 14079 s after midnight: period 46 (46.93 rounded down); 13:30:24 is 162.08.
    assert sessions[0] == {
        "id": "1_1_194_821_2019-10-08 10:54:39.337073",
        "station": "AG-1F13",
        "arrival": 46,
        "departure": 162,
        "energy_kwh": 9.446,
    }
    # 21:39:38 is period 259.93, 23:29:11 is 281.84: the last departure, so 282 periods.
    assert sessions[-1] == {
        "id": "1_1_178_823_2019-10-09 04:39:38.083576",
        "station": "AG-1F08",
        "arrival": 259,
        "departure": 281,
        "energy_kwh": 5.507,
    }
    assert day["periods"] == 282
    assert sum(s["energy_kwh"] for s in sessions) == pytest.approx(996.607, abs=1e-6)


def _row(session: str, station: str, arrival: str, departure: str, kwh: float) -> str:
    return f"{arrival},{departure},{kwh},{kwh},{station},{session},{departure},False"


def test_rounding_feasibility_and_overlaps(tmp_path: Path) -> None:
    """Hand-made sessions around 2019-10-08 (PDT, UTC-7) at Caltech."""
    rows = [
        # 08:02:30 is period 96.5 -> 96, 08:09:59 is 97.997 -> 97: one period, at most
        # 6.656 kW x 5 min = 0.5547 kWh of the 5 delivered.
        _row("A", "S1", "2019-10-08 08:02:30-07:00", "2019-10-08 08:09:59-07:00", 5.0),
        # From period 97, as A leaves: back to back, no overlap.
        _row("B", "S1", "2019-10-08 08:09:00-07:00", "2019-10-08 10:00:00-07:00", 3.0),
        # Periods 108-132 at S1, inside B's 97-120: the later of the two is dropped.
        _row("C", "S1", "2019-10-08 09:00:00-07:00", "2019-10-08 11:00:00-07:00", 4.0),
        # Both in period 144: no whole period.
        _row("D", "S2", "2019-10-08 12:00:10-07:00", "2019-10-08 12:04:50-07:00", 0.2),
        _row("E", "S2", "2019-10-08 13:00:00-07:00", "2019-10-08 14:00:00-07:00", 0.0),
        # Other days (local time decides, whatever offset the file writes).
        _row("F", "S3", "2019-10-07 23:59:59-07:00", "2019-10-08 08:00:00-07:00", 9.0),
        _row("G", "S3", "2019-10-09 00:00:00-07:00", "2019-10-09 08:00:00-07:00", 9.0),
        _row("H", "S3", "2019-10-08 23:55:00-07:00", "2019-10-09 07:00:00-07:00", 10.0),
        # 15:00 UTC is 08:00 in Pasadena: period 96.
        _row("I", "S4", "2019-10-08 15:00:00+00:00", "2019-10-08 17:00:00+00:00", 6.0),
    ]
    path = tmp_path / "caltech.csv"
    path.write_text(",".join(ACN_COLUMNS) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    day = acn_day("caltech", date(2019, 10, 8), sessions=path)
    got = {s["id"]: (s["station"], s["arrival"], s["departure"]) for s in day["sessions"]}
    assert got == {
        "I": ("S4", 96, 120),
        "A": ("S1", 96, 97),
        "B": ("S1", 97, 120),
        "H": ("S3", 287, 372),  # 24 h (288 periods) + 7 h (84) the next morning
    }
    assert [s["id"] for s in day["sessions"]] == ["I", "A", "B", "H"]  # in order of arrival
    energy = {s["id"]: s["energy_kwh"] for s in day["sessions"]}
    assert energy["A"] == pytest.approx(6.656 * 5 / 60)
    assert (energy["B"], energy["H"], energy["I"]) == (3.0, 10.0, 6.0)
    assert day["dropped"] == {"no_whole_period": 1, "no_energy": 1, "overlap": 1}
    assert day["capped"] == 1
    assert day["periods"] == 373
    assert day["stations"] == ["S1", "S3", "S4"]
    assert day["limit_kw"] == 50


@pytest.mark.parametrize(
    ("site", "when", "words"),
    [
        ("jpl", date(2019, 8, 31), "outside"),
        ("jpl", date(2020, 1, 1), "outside"),
        ("slac", date(2019, 10, 8), "unknown ACN site"),
    ],
)
def test_days_outside_the_development_period_are_refused(site: str, when: date, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        acn_day(site, when, sessions=FIXTURE)


def test_a_day_comes_from_the_wheel_or_a_file() -> None:
    with pytest.raises(ValueError, match="not both or neither"):
        acn_day("jpl", date(2019, 10, 8))
    with pytest.raises(ValueError, match="not both or neither"):
        acn_day("jpl", date(2019, 10, 8), wheel=Path("x.whl"), sessions=FIXTURE)


HOLIDAYS = {date(2019, 9, 2), date(2019, 11, 11), date(2019, 11, 28), date(2019, 11, 29)} | {
    date(2019, 12, d) for d in range(23, 32)
}


def test_development_days() -> None:
    """At least 12 JPL and 6 Caltech weekdays, spread over September to December 2019."""
    assert len(set(DEV_DAYS)) == len(DEV_DAYS)
    for site, count in (("jpl", 12), ("caltech", 6)):
        days = [d for s, d in DEV_DAYS if s == site]
        assert len(days) >= count
        assert {d.month for d in days} == {9, 10, 11, 12}
    for _, day in DEV_DAYS:
        assert date(2019, 9, 1) <= day <= date(2019, 12, 31)
        assert day.weekday() < 5 and day not in HOLIDAYS


# -- the ACN stations and their tariff ------------------------------------------------------------


@pytest.mark.parametrize(("name", "limit", "piles"), [("acn-jpl", 80, 52), ("acn-caltech", 50, 51)])
def test_acn_stations_are_acnsim_sites(name: str, limit: float, piles: int) -> None:
    """One continuous 6.656 kW pile per station, one aggregate limit, nothing else on the site."""
    station = load_station(CONFIG_ROOT / "stations" / f"{name}.toml")
    assert station.limit_kw == limit
    assert station.control.reserve_kw == 0
    assert len(station.piles) == piles
    assert [p.id for p in station.piles] == sorted(p.id for p in station.piles)
    assert {(p.max_kw, p.min_kw, p.phases) for p in station.piles} == {(6.656, 0.0, 1)}
    assert set(station.background.profile_kw) == {0.0} and station.background.noise_kw == 0
    assert station.info.timezone == "America/Los_Angeles"
    assert (station.scheduler.slot_minutes, station.scheduler.policy) == (5, "mpc")
    assert station.simulator is not None and station.simulator.pile_delay_s == 0
    # The phase limits ([phase_limits] is required with single-phase piles) never bind.
    assert station.phase_limits is not None
    assert (
        min(station.phase_limits.l1_a, station.phase_limits.l2_a, station.phase_limits.l3_a)
        * (station.phase_limits.voltage_v / 1000)
        >= limit
    )


def test_jpl_station_has_every_pile_of_the_fixture() -> None:
    station = load_station(CONFIG_ROOT / "stations" / "acn-jpl.toml")
    day = acn_day("jpl", date(2019, 10, 8), sessions=FIXTURE)
    assert set(day["stations"]) <= {p.id for p in station.piles}


def _local(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=LA).timestamp()


@pytest.mark.parametrize(
    ("when", "price"),
    [
        # acnportal's sce_tou_ev_4_march_2019.json, summer (June-September) weekdays
        ("2019-09-10T07:59", 0.05623),
        ("2019-09-10T08:00", 0.0925),
        ("2019-09-10T12:00", 0.26668),
        ("2019-09-10T17:59", 0.26668),
        ("2019-09-10T18:00", 0.0925),
        ("2019-09-10T23:00", 0.05623),
        ("2019-09-14T13:00", 0.05623),  # a Saturday
        # winter (October-May)
        ("2019-10-08T03:00", 0.06087),
        ("2019-10-08T10:00", 0.07492),
        ("2019-10-08T13:00", 0.0869),
        ("2019-10-08T20:00", 0.07492),
        ("2019-10-08T23:30", 0.06087),
        ("2019-10-13T13:00", 0.06087),  # a Sunday
        ("2019-12-25T13:00", 0.0869),  # no holidays, as in acnportal
    ],
)
def test_sce_tou_ev_4_energy_prices(when: str, price: float) -> None:
    tariff = load_tariff(CONFIG_ROOT / "tariffs" / "sce-tou-ev-4.toml")
    assert tariff.price_at(_local(when)) == price
    assert (tariff.currency, tariff.demand_charge_per_kw_month, tariff.export_price) == (
        "USD",
        0,
        0,
    )


# -- the peer script ------------------------------------------------------------------------------


def test_the_peer_script_imports_no_flexcharge() -> None:
    """It runs in the peer's venv, where flexcharge is not installed."""
    tree = ast.parse(SCRIPT.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"controller", "drivers", "scheduler", "simulator", "tests"}
    assert imported <= {
        *sys.stdlib_module_names,
        "__future__",
        "numpy",
        "acnportal",
        "adacharge",
    }, imported


def test_the_peer_gets_adacharge_only_from_adacharge_src(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", "/somewhere/flexcharge")
    monkeypatch.delenv("ADACHARGE_SRC", raising=False)
    env = peer_env()
    assert "PYTHONPATH" not in env
    assert all(env[name] == "1" for name in THREAD_VARS)
    monkeypatch.setenv("ADACHARGE_SRC", "/src/adacharge")
    assert peer_env()["PYTHONPATH"] == "/src/adacharge"
