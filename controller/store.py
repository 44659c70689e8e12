"""The daemon's persistent state: one SQLite file per station, so a restart (even after SIGKILL)
resumes where the last run was.

It holds the sessions (in progress and finished) with the energy each has been delivered, the
month-to-date peak the demand charge bills, the last plan, and the wishes not yet matched to a
session. The controller's history of finished visits (its forecast of tomorrow's arrivals) is read
back from the finished sessions.

Energy is counted exactly once (`control.ledger` has the rule in full): a session's energy is
the pile's lifetime import counter minus the counter at the session's start. After a restart, a
session still plugged in (same pile, same pile session id) keeps its row and its account; a
session that ended while the daemon was down is closed with the counter's rise up to the restart,
minus what the pile's new session has already delivered, which the new session's row counts
instead. Energy drawn during the downtime is neither lost nor counted twice.

The file uses a write-ahead log with full sync, so a killed process (or a power cut) loses at most
the last transaction and never leaves the file inconsistent. Its schema is versioned
(`PRAGMA user_version`); a file that is corrupt, of a newer schema, not flexcharge's or another
station's is refused with a `StateError` naming it, never silently reset. A missing file (and its
directory) is created.
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from control.cycle import ControlState, MonthPeak
from control.sessions import EnergyAccount, PastVisit, Session, Wish
from controller.sqlite import FileKind, SqliteFileError, VersionedFile
from scheduler.plan import FloatArray, Plan, PlanStatus

SCHEMA_VERSION = 1
# Finished sessions this recent are the controller's history (it forecasts tomorrow's arrivals
# from the last day, and estimates what a vehicle nobody told it about needs from all of them).
HISTORY_S = 14 * 86400

SCHEMA = """
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE sessions (
    pile TEXT NOT NULL,
    pile_session_id INTEGER NOT NULL,
    plugged_at REAL NOT NULL,
    vehicle_id TEXT NOT NULL,
    need_kwh REAL NOT NULL,
    departure REAL NOT NULL,
    departure_known INTEGER NOT NULL,
    max_kw REAL NOT NULL,
    v2g INTEGER NOT NULL,
    min_soc REAL NOT NULL,
    capacity_kwh REAL,
    soc REAL,
    start_counter_kwh REAL NOT NULL,
    energy_kwh REAL NOT NULL,
    last_counter_kwh REAL NOT NULL,
    ended_at REAL,
    PRIMARY KEY (pile, pile_session_id, plugged_at)
);
CREATE UNIQUE INDEX sessions_open ON sessions (pile) WHERE ended_at IS NULL;
CREATE INDEX sessions_ended ON sessions (ended_at);
CREATE TABLE month_peak (
    month TEXT PRIMARY KEY,
    peak_kw REAL NOT NULL,
    window_start REAL,
    window_kwh REAL NOT NULL,
    saved_at REAL NOT NULL
);
CREATE TABLE plan (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    adopted_at REAL,
    body TEXT NOT NULL
);
CREATE TABLE wishes (
    pile TEXT NOT NULL,
    pile_session_id INTEGER NOT NULL,
    vehicle_id TEXT,
    energy_kwh REAL,
    departure REAL,
    target_soc REAL,
    v2g INTEGER NOT NULL,
    min_soc REAL NOT NULL,
    PRIMARY KEY (pile, pile_session_id)
);
"""

# "FXCH" tells a flexcharge state file from any other SQLite database. Full sync: a session's
# energy account must survive a power cut.
STATE_FILE = FileKind(
    "state file",
    application_id=0x46584348,
    version=SCHEMA_VERSION,
    schema=SCHEMA,
    integrity_check=True,
    synchronous="FULL",
)

# The sessions table's columns: each names the `Session` attribute it holds (a dotted path into
# its energy account), what it is, and whether it may be NULL. Saving and loading both go by it.
SESSION_COLUMNS: dict[str, tuple[str, type[Any], bool]] = {
    "pile": ("pile", str, False),
    "pile_session_id": ("session_id", int, False),
    "plugged_at": ("plugged_at", float, False),
    "vehicle_id": ("vehicle_id", str, False),
    "need_kwh": ("need_kwh", float, False),
    "departure": ("departure", float, False),
    "departure_known": ("departure_known", bool, False),
    "max_kw": ("max_kw", float, False),
    "v2g": ("v2g", bool, False),
    "min_soc": ("min_soc", float, False),
    "capacity_kwh": ("capacity_kwh", float, True),
    "soc": ("soc", float, True),
    "start_counter_kwh": ("account.start_counter_kwh", float, False),
    "energy_kwh": ("account.energy_kwh", float, False),
    "last_counter_kwh": ("account.last_counter_kwh", float, False),
    "ended_at": ("ended_at", float, True),
}


class StateError(Exception):
    """The state file cannot be used (corrupt, newer schema, another station's); names the file."""


@dataclass(frozen=True)
class SavedState:
    """What the state file holds: the controller's state and the sessions' energy accounts.

    On load, `records` are the sessions still open and `control.sessions` the same sessions as the
    controller resumes them; on save, `records` (open and newly closed) are what is written for
    sessions, and `control.sessions` and `control.history` are not written again.
    """

    control: ControlState
    records: tuple[Session, ...] = ()


class StateStore:
    """One station's state file."""

    def __init__(self, path: Path | str, station: str) -> None:
        """Open (or create) the state file of `station`; raises `StateError` if it is unusable."""
        self.path = Path(path)
        self.station = station
        self._saved_plan: Plan | None = None
        self._saved_wishes: dict[tuple[str, int], Wish] | None = None
        try:
            self._file = VersionedFile(
                self.path, STATE_FILE, init=self._stamp, check=self._check_station
            )
        except SqliteFileError as exc:
            raise StateError(str(exc)) from exc

    def close(self) -> None:
        """Close the file (everything saved is already on disk)."""
        self._file.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- opening --------------------------------------------------------------------------

    def _stamp(self, db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES ('station', ?)", (self.station,))

    def _check_station(self, db: sqlite3.Connection) -> str | None:
        row = db.execute("SELECT value FROM meta WHERE key = 'station'").fetchone()
        if row is not None and row[0] == self.station:
            return None
        owner = "no station" if row is None else f"station {row[0]!r}"
        return (
            f"the state of {owner}, not of {self.station!r}; each station needs its own state file"
        )

    # -- loading --------------------------------------------------------------------------

    def load(self, now: float, zone: ZoneInfo) -> SavedState:
        """Everything saved, as of `now`: open sessions, the latest month's peak, the last plan,
        history of the last two weeks and the pending wishes. Raises `StateError` for a row that
        cannot be read, naming the table, the row and the field."""
        with self._file.reading() as db:
            try:
                return self._load(db, now, zone)
            except sqlite3.Error as exc:
                raise StateError(f"{self.path}: cannot read: {exc}") from exc

    def _load(self, db: sqlite3.Connection, now: float, zone: ZoneInfo) -> SavedState:
        db.row_factory = sqlite3.Row
        try:
            open_rows = db.execute(
                f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE ended_at IS NULL"
            ).fetchall()
            ended_rows = db.execute(
                f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions "
                "WHERE ended_at IS NOT NULL AND plugged_at >= ? ORDER BY plugged_at",
                (now - HISTORY_S,),
            ).fetchall()
            month_row = db.execute(
                "SELECT * FROM month_peak ORDER BY month DESC LIMIT 1"
            ).fetchone()
            plan_row = db.execute("SELECT adopted_at, body FROM plan WHERE id = 1").fetchone()
            wish_rows = db.execute("SELECT * FROM wishes").fetchall()
        finally:
            db.row_factory = None
        records = tuple(self._session(row) for row in open_rows)
        ended = (self._session(row) for row in ended_rows)
        history = tuple(PastVisit.of(s, s.ended_at or s.plugged_at) for s in ended)
        plan, site_kw, adopted_at = None, None, None
        if plan_row is not None:
            adopted_at = self._field(plan_row, "adopted_at", "plan", "", float, optional=True)
            plan, site_kw = self._plan(plan_row["body"])
        wishes = {}
        for row in wish_rows:
            where = f"{row['pile']}#{row['pile_session_id']}"
            key = (str(row["pile"]), self._field(row, "pile_session_id", "wishes", where, int))
            wishes[key] = Wish(
                vehicle_id=None if row["vehicle_id"] is None else str(row["vehicle_id"]),
                energy_kwh=self._field(row, "energy_kwh", "wishes", where, float, optional=True),
                departure=self._field(row, "departure", "wishes", where, float, optional=True),
                target_soc=self._field(row, "target_soc", "wishes", where, float, optional=True),
                v2g=bool(self._field(row, "v2g", "wishes", where, int)),
                min_soc=self._field(row, "min_soc", "wishes", where, float),
            )
        self._saved_plan, self._saved_wishes = plan, dict(wishes)
        control = ControlState(
            sessions=records,
            month=None if month_row is None else self._month(month_row, zone),
            plan=plan,
            planned_at=adopted_at,
            plan_site_kw=site_kw,
            history=history,
            wishes=wishes,
        )
        return SavedState(control, records)

    def _field(
        self,
        row: sqlite3.Row,
        name: str,
        table: str,
        where: str,
        kind: type[Any],
        *,
        optional: bool = False,
    ) -> Any:
        value = row[name]
        if value is None and optional:
            return None
        ok = (
            isinstance(value, int)
            if kind is int
            else isinstance(value, int | float) and math.isfinite(value)
        )
        if not ok:
            raise StateError(
                f"{self.path}: table {table}, row {where}: {name}: {value!r} is not "
                f"{'an integer' if kind is int else 'a finite number'}"
            )
        return kind(value)

    def _session(self, row: sqlite3.Row) -> Session:
        """A session (with its energy account) from its row, by `SESSION_COLUMNS`."""
        where = f"{row['pile']}#{row['pile_session_id']}"
        values: dict[str, Any] = {}
        for column, (attribute, kind, optional) in SESSION_COLUMNS.items():
            if kind is str:
                value: Any = str(row[column])
            elif kind is bool:
                value = bool(self._field(row, column, "sessions", where, int))
            else:
                value = self._field(row, column, "sessions", where, kind, optional=optional)
            values[attribute] = value
        account = EnergyAccount(
            **{
                name.removeprefix("account."): values.pop(name)
                for name in [a for a in values if a.startswith("account.")]
            }
        )
        # What the controller counts from is the billed account.
        return Session(**values, account=account, delivered_kwh=account.energy_kwh)

    def _month(self, row: sqlite3.Row, zone: ZoneInfo) -> MonthPeak:
        text = str(row["month"])
        try:
            year, month = (int(part) for part in text.split("-"))
        except ValueError as exc:
            raise StateError(
                f"{self.path}: table month_peak: month: {text!r} is not YYYY-MM"
            ) from exc
        return MonthPeak(
            zone,
            peak_kw=self._field(row, "peak_kw", "month_peak", text, float),
            month=(year, month),
            window_start=self._field(row, "window_start", "month_peak", text, float, optional=True),
            window_kwh=self._field(row, "window_kwh", "month_peak", text, float),
        )

    def _plan(self, body: object) -> tuple[Plan, FloatArray | None]:
        try:
            data = json.loads(str(body))
            boundaries = np.asarray(data["boundaries"], dtype=float)
            power = {str(v): np.asarray(p, dtype=float) for v, p in data["power_kw"].items()}
            slots = len(boundaries) - 1
            if slots < 1 or any(p.shape != (slots,) for p in power.values()):
                raise ValueError("series do not match the slots")
            site = data.get("site_kw")
            site_kw = None if site is None else np.asarray(site, dtype=float)
            if site_kw is not None and site_kw.shape != (slots,):
                raise ValueError("site_kw does not match the slots")
            plan = Plan(
                status=PlanStatus(data["status"]),
                boundaries=boundaries,
                power_kw=power,
                message=str(data.get("message", "")),
                objective=data.get("objective"),
                energy_cost=float(data.get("energy_cost", 0.0)),
                demand_cost=float(data.get("demand_cost", 0.0)),
                degradation_cost=float(data.get("degradation_cost", 0.0)),
                unmet_kwh={str(k): float(v) for k, v in data.get("unmet_kwh", {}).items()},
                solve_ms=float(data.get("solve_ms", 0.0)),
                iterations=int(data.get("iterations", 0)),
                warm=bool(data.get("warm", False)),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise StateError(f"{self.path}: table plan: body: not a plan: {exc}") from exc
        return plan, site_kw

    # -- saving ---------------------------------------------------------------------------

    def save(self, state: SavedState, now: float) -> None:
        """Write `state` in one transaction (sessions, month peak; the plan and the wishes only
        when they changed). Raises `sqlite3.Error` if the disk refuses."""
        control = state.control
        with self._file.transaction() as db:
            placeholders = ", ".join("?" for _ in SESSION_COLUMNS)
            updates = ", ".join(f"{c} = excluded.{c}" for c in list(SESSION_COLUMNS)[3:])
            db.executemany(
                f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}) VALUES ({placeholders}) "
                f"ON CONFLICT (pile, pile_session_id, plugged_at) DO UPDATE SET {updates}",
                [_session_row(r) for r in state.records],
            )
            month = control.month
            if month is not None and month.month is not None:
                db.execute(
                    "INSERT INTO month_peak (month, peak_kw, window_start, window_kwh, saved_at) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (month) DO UPDATE SET "
                    "peak_kw = excluded.peak_kw, window_start = excluded.window_start, "
                    "window_kwh = excluded.window_kwh, saved_at = excluded.saved_at",
                    (
                        "{}-{:02d}".format(*month.month),
                        month.peak_kw,
                        month.window_start,
                        month.window_kwh,
                        now,
                    ),
                )
            plan_changed = control.plan is not None and control.plan is not self._saved_plan
            if plan_changed:
                assert control.plan is not None
                db.execute(
                    "INSERT OR REPLACE INTO plan (id, adopted_at, body) VALUES (1, ?, ?)",
                    (control.planned_at, _plan_json(control.plan, control.plan_site_kw)),
                )
            wishes_changed = dict(control.wishes) != self._saved_wishes
            if wishes_changed:
                db.execute("DELETE FROM wishes")
                db.executemany(
                    "INSERT INTO wishes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [_wish_row(key, wish) for key, wish in control.wishes.items()],
                )
        if plan_changed:
            self._saved_plan = control.plan
        if wishes_changed:
            self._saved_wishes = dict(control.wishes)


def _session_row(session: Session) -> tuple[object, ...]:
    """A session's row, by `SESSION_COLUMNS`."""
    row: list[object] = []
    for attribute, _kind, _optional in SESSION_COLUMNS.values():
        value: object = session
        for part in attribute.split("."):
            value = getattr(value, part)
        row.append(int(value) if isinstance(value, bool) else value)
    return tuple(row)


def _wish_row(key: tuple[str, int], wish: Wish) -> tuple[object, ...]:
    pile, session_id = key
    return (
        pile,
        session_id,
        wish.vehicle_id,
        wish.energy_kwh,
        wish.departure,
        wish.target_soc,
        int(wish.v2g),
        wish.min_soc,
    )


def _plan_json(plan: Plan, site_kw: FloatArray | None) -> str:
    body: Mapping[str, object] = {
        "status": plan.status.value,
        "boundaries": plan.boundaries.tolist(),
        "power_kw": {vid: series.tolist() for vid, series in plan.power_kw.items()},
        "message": plan.message,
        "objective": plan.objective,
        "energy_cost": plan.energy_cost,
        "demand_cost": plan.demand_cost,
        "degradation_cost": plan.degradation_cost,
        "unmet_kwh": dict(plan.unmet_kwh),
        "solve_ms": plan.solve_ms,
        "iterations": plan.iterations,
        "warm": plan.warm,
        "site_kw": None if site_kw is None else np.asarray(site_kw, dtype=float).tolist(),
    }
    return json.dumps(body)
