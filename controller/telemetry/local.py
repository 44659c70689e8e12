"""The local telemetry store: InfluxDB's data model in one SQLite file, used without a database.

`LocalStore` is a sink the writer writes to, and keeps itself within its `Retention` when the
writer asks (`maintain`): points as written are in `points`, rolled-up ones in `rolled_up`, and a
query reads both. `query_local` reads points back from a store file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.telemetry.files import TelemetryError, telemetry_file
from controller.telemetry.points import NS, Point, epoch_ns
from controller.telemetry.retention import ROLLUPS, Retention, downsample, rollup
from controller.telemetry.sinks import SinkError

# Rolled-up points live apart, keyed by time first: they are appended at the end of the tree
# and deleted from its start, so their pages stay full (among the cycles they would be rewritten
# in place, leaving pages a third full). `marks` holds how far the store has rolled up. Stores
# made before get both when opened (a reader that does not know them ignores them).
RETENTION_TABLES = """
CREATE TABLE IF NOT EXISTS rolled_up (
    measurement TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    tags TEXT NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (measurement, time_ns, tags)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
TABLES = ("points", "rolled_up")

LOCAL_SCHEMA = f"""
CREATE TABLE points (
    measurement TEXT NOT NULL,
    tags TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (measurement, tags, time_ns)
) WITHOUT ROWID;
CREATE INDEX points_time ON points (measurement, time_ns);
{RETENTION_TABLES}
"""

DOWNSAMPLED_UNTIL = "downsampled_until_ns"
# Old points are rolled up an hour of data per transaction (a bounded write-ahead log).
CHUNK_S = 3600.0
# Over its cap, the store is cut to this share of it (not a point deleted per write after).
CAP_TARGET = 0.9
# `PRAGMA auto_vacuum` says 2 for INCREMENTAL.
INCREMENTAL = 2

# The distinct measurements of a table, one index seek each (not a scan of the table).
MEASUREMENTS = """
WITH RECURSIVE m(name) AS (
    SELECT min(measurement) FROM {table}
    UNION ALL
    SELECT (SELECT min(measurement) FROM {table} WHERE measurement > m.name) FROM m
    WHERE m.name IS NOT NULL
)
SELECT name FROM m WHERE name IS NOT NULL
"""


@dataclass
class Upkeep:
    """What one `LocalStore.maintain` did.

    `expired` points were deleted for their age and `capped` to keep the store under its cap
    (all older than `capped_before`, epoch seconds); `rolled_up` points became `into` coarser
    ones (`done` is False when the time budget ran out first: the next upkeep goes on);
    `migrated` when the file was rebuilt to give space back (once a store: see `maintain`);
    `size_bytes` is the store's size on disk afterwards.
    """

    expired: int = 0
    rolled_up: int = 0
    into: int = 0
    capped: int = 0
    capped_before: float | None = None
    done: bool = True
    migrated: bool = False
    size_bytes: int = 0


class LocalStore:
    """The embedded store used without a database: one SQLite file, InfluxDB's data model.

    A point's key is its measurement, tags and time; writing a point with the same key again
    merges its fields into the stored ones, as InfluxDB does (so a replayed batch is harmless
    and a later plan overwrites the slots it plans again). `maintain` keeps it within
    `retention`: old points deleted, older cycles rolled up, under its cap, space given back.
    """

    def __init__(self, path: Path | str, retention: Retention | None = None) -> None:
        """Open (or create) the store; `TelemetryError` if the file is not one."""
        self.path = Path(path)
        self.retention = retention or Retention()
        self.description = f"local store {self.path}"
        self._file = telemetry_file(
            self.path, "telemetry store", LOCAL_SCHEMA, "telemetry.local_store"
        )
        self._tags: dict[tuple[tuple[str, str], ...], str] = {}
        try:
            with self._file.reading() as db:
                db.executescript(RETENTION_TABLES)
        except sqlite3.Error as exc:
            self._file.close()
            raise TelemetryError(f"{self.path} (telemetry.local_store): {exc}") from None

    def write(self, points: Sequence[Point]) -> None:
        """Write a batch in one transaction; `SinkError` if the disk refuses."""
        if len(self._tags) > 10_000:
            self._tags.clear()
        rows = [
            (p.measurement, self._tags_text(p.tags), p.time_ns, json.dumps(dict(p.fields)))
            for p in points
        ]
        try:
            with self._file.transaction() as db:
                db.executemany(
                    "INSERT INTO points (measurement, tags, time_ns, fields) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (measurement, tags, time_ns) "
                    "DO UPDATE SET fields = json_patch(fields, excluded.fields)",
                    rows,
                )
        except sqlite3.Error as exc:
            raise SinkError(f"{self.path}: {exc}") from None

    def _tags_text(self, tags: tuple[tuple[str, str], ...]) -> str:
        # A station writes the same few tag sets every cycle: each is encoded once.
        text = self._tags.get(tags)
        if text is None:
            text = self._tags[tags] = json.dumps(tags)
        return text

    def query(
        self,
        measurement: str,
        *,
        tags: Mapping[str, str] | None = None,
        start: float | None = None,
        end: float | None = None,
        every_s: float | None = None,
    ) -> list[Point]:
        """The points of `measurement` with these tag values, in [start, end), oldest first.

        Points older than the retention's `downsample_after_s` may be rolled up (they carry
        `cycles`); with `every_s` (`site` and `pile` only), every series is rolled up per
        interval of that length, so that a range across the boundary has one resolution.
        """
        if every_s is not None and measurement not in ROLLUPS:
            raise ValueError(f"only {' and '.join(ROLLUPS)} points are rolled up")
        where = "measurement = ?"
        args: list[object] = [measurement]
        if start is not None:
            where += " AND time_ns >= ?"
            args.append(epoch_ns(start))
        if end is not None:
            where += " AND time_ns < ?"
            args.append(epoch_ns(end))
        sql = " UNION ALL ".join(
            f"SELECT tags, time_ns, fields FROM {t} WHERE {where}" for t in TABLES
        )
        with self._file.transaction() as db:
            rows = db.execute(sql + " ORDER BY time_ns, tags", args * len(TABLES)).fetchall()
        wanted = dict(tags or {})
        points = []
        for row in rows:
            point = _point(measurement, *row)
            if any(point.tag(k) != v for k, v in wanted.items()):
                continue
            points.append(point)
        if every_s is not None:
            return downsample(points, round(every_s * NS))
        return points

    def count(self, measurement: str | None = None) -> int:
        """How many points the store holds (of one measurement, or all)."""
        n = 0
        with self._file.transaction() as db:
            for table in TABLES:
                if measurement is None:
                    n += db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                else:
                    n += db.execute(
                        f"SELECT count(*) FROM {table} WHERE measurement = ?", (measurement,)
                    ).fetchone()[0]
        return n

    # -- retention ---------------------------------------------------------------------------

    def maintain(self, now: float, *, budget_s: float | None = None) -> Upkeep:
        """Keep the store within its retention at station time `now` (epoch seconds).

        In order: delete points older than `max_age_s` (whole `downsample_to_s` intervals:
        the cut is at the start of the interval it falls in); roll up `site` and `pile` points older
        than `downsample_after_s` (from where the last upkeep stopped; with `budget_s`, for at
        most about that long, wall time); delete the oldest points while the store's pages
        exceed `max_bytes` (down to 90 % of it); give freed pages back to the file system.
        A store without incremental vacuum (a new one: SQLite sets it only before the first
        table; or one made by an earlier flexcharge) is rebuilt once to use it (VACUUM, which
        needs free disk space up to twice the store). Raises `TelemetryError` if the file fails.
        """
        retention = self.retention
        upkeep = Upkeep()
        deadline = None if budget_s is None else time.monotonic() + budget_s
        try:
            every = round(retention.downsample_to_s * NS)
            with self._file.transaction() as db:
                # Whole intervals at a time, so that no rolled-up point stands for fewer
                # cycles than it says.
                cut = epoch_ns(now - retention.max_age_s) // every * every
                upkeep.expired = _delete_before(db, cut)
            self._downsample(epoch_ns(now - retention.downsample_after_s), deadline, upkeep)
            self._cap(epoch_ns(now), upkeep)
            upkeep.migrated = self._reclaim()
            upkeep.size_bytes = self.size_bytes()
        except (sqlite3.Error, OSError) as exc:
            raise TelemetryError(f"{self.path} (telemetry.local_store): upkeep: {exc}") from None
        return upkeep

    def used_bytes(self) -> int:
        """The bytes of the pages holding data (what the cap bounds)."""
        with self._file.reading() as db:
            (pages,) = db.execute("PRAGMA page_count").fetchone()
            (free,) = db.execute("PRAGMA freelist_count").fetchone()
            (size,) = db.execute("PRAGMA page_size").fetchone()
        return int((pages - free) * size)

    def size_bytes(self) -> int:
        """The store's size on disk: the file and its write-ahead log."""
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        return sum(f.stat().st_size for f in files if f.exists())

    def _downsample(self, before_ns: int, deadline: float | None, upkeep: Upkeep) -> None:
        every = round(self.retention.downsample_to_s * NS)
        until = before_ns // every * every
        chunk = every * max(1, round(CHUNK_S * NS / every))
        with self._file.transaction() as db:
            mark = _mark(db)
            if mark is not None:
                mark = mark // every * every  # `downsample_to_s` may have changed since
            else:
                oldest = [_oldest(db, m) for m in ROLLUPS]
                known = [t for t in oldest if t is not None]
                if not known:
                    return
                mark = min(known) // every * every
        while mark < until:
            if deadline is not None and time.monotonic() >= deadline:
                upkeep.done = False
                return
            end = min(mark + chunk, until)
            with self._file.transaction() as db:
                for measurement in ROLLUPS:
                    rolled, into = _roll_up(db, measurement, mark, end, every)
                    upkeep.rolled_up += rolled
                    upkeep.into += into
                db.execute(
                    "INSERT OR REPLACE INTO marks (name, value) VALUES (?, ?)",
                    (DOWNSAMPLED_UNTIL, end),
                )
            mark = end

    def _cap(self, now_ns: int, upkeep: Upkeep) -> None:
        used = self.used_bytes()
        if used <= self.retention.max_bytes:
            return
        target = CAP_TARGET * self.retention.max_bytes
        while used > target:
            with self._file.transaction() as db:
                known = [t for t in (_oldest(db, m) for m in _measurements(db)) if t is not None]
                if not known:
                    return
                oldest = min(known)
                # As if the points were spread evenly: older ones are sparser (rolled up),
                # so this cuts too little rather than too much, and goes round again.
                share = (used - target) / used
                cut = oldest + max(int((now_ns - oldest) * share), 60 * NS)
                upkeep.capped += _delete_before(db, cut)
                upkeep.capped_before = cut / NS
            used = self.used_bytes()

    def _reclaim(self) -> bool:
        """Give free pages back (rebuilding a store made without incremental vacuum); True if
        it was rebuilt."""
        with self._file.reading() as db:
            (mode,) = db.execute("PRAGMA auto_vacuum").fetchone()
            rebuilt = mode != INCREMENTAL
            if rebuilt:
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")
                db.execute("VACUUM")
            elif db.execute("PRAGMA freelist_count").fetchone()[0]:
                # executescript steps it to the end: one step frees one page only.
                db.executescript("PRAGMA incremental_vacuum")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return rebuilt

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def _point(measurement: str, tags_text: str, time_ns: int, fields_text: str) -> Point:
    tags = tuple((str(k), str(v)) for k, v in json.loads(tags_text))
    fields = tuple(sorted(json.loads(fields_text).items()))
    return Point(measurement, tags, fields, int(time_ns))


def _measurements(db: sqlite3.Connection) -> list[str]:
    return sorted(
        {str(name) for table in TABLES for (name,) in db.execute(MEASUREMENTS.format(table=table))}
    )


def _oldest(db: sqlite3.Connection, measurement: str) -> int | None:
    found = [
        db.execute(
            f"SELECT min(time_ns) FROM {table} WHERE measurement = ?", (measurement,)
        ).fetchone()[0]
        for table in TABLES
    ]
    known = [int(t) for t in found if t is not None]
    return min(known) if known else None


def _mark(db: sqlite3.Connection) -> int | None:
    row = db.execute("SELECT value FROM marks WHERE name = ?", (DOWNSAMPLED_UNTIL,)).fetchone()
    return None if row is None else int(row[0])


def _delete_before(db: sqlite3.Connection, cut_ns: int) -> int:
    """Delete every point older than `cut_ns`; how many."""
    deleted = 0
    for measurement in _measurements(db):
        for table in TABLES:
            deleted += db.execute(
                f"DELETE FROM {table} WHERE measurement = ? AND time_ns < ?", (measurement, cut_ns)
            ).rowcount
    return deleted


def _roll_up(
    db: sqlite3.Connection, measurement: str, start_ns: int, end_ns: int, every_ns: int
) -> tuple[int, int]:
    """Move the points of `measurement` in [start_ns, end_ns) to `rolled_up`, one per series
    per `every_ns` (with any rolled up there before); how many points became how many."""
    span = (measurement, start_ns, end_ns)
    rows = [
        row
        for table in TABLES
        for row in db.execute(
            f"SELECT tags, time_ns, fields FROM {table} "
            "WHERE measurement = ? AND time_ns >= ? AND time_ns < ?",
            span,
        )
    ]
    if not rows:
        return 0, 0
    groups: dict[tuple[str, int], list[tuple[str, int, str]]] = {}
    for row in sorted(rows, key=lambda r: r[1]):
        groups.setdefault((row[0], row[1] // every_ns), []).append(row)
    kept: list[tuple[int, str, str]] = []
    rolled = into = 0
    for (tags, bucket), group in groups.items():
        if len(group) == 1:
            kept.append((group[0][1], tags, group[0][2]))
            continue
        point = rollup([_point(measurement, *row) for row in group], bucket * every_ns)
        kept.append((point.time_ns, tags, json.dumps(dict(point.fields))))
        rolled, into = rolled + len(group), into + 1
    for table in TABLES:
        db.execute(
            f"DELETE FROM {table} WHERE measurement = ? AND time_ns >= ? AND time_ns < ?", span
        )
    db.executemany(
        "INSERT INTO rolled_up (measurement, time_ns, tags, fields) VALUES (?, ?, ?, ?)",
        ((measurement, *row) for row in sorted(kept)),
    )
    return rolled, into


def query_local(path: Path | str, measurement: str, **where: object) -> list[Point]:
    """Read points back from a local store file (see `LocalStore.query`)."""
    store = LocalStore(path)
    try:
        return store.query(measurement, **where)  # type: ignore[arg-type]
    finally:
        store.close()
