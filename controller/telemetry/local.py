"""The local telemetry store: InfluxDB's data model in one SQLite file, used without a database.

`LocalStore` is a sink the writer writes to, and keeps itself within its `Retention` when the
writer asks (`maintain`); `query_local` reads points back from a store file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controller.telemetry.files import TelemetryError, telemetry_file
from controller.telemetry.points import NS, Point, epoch_ns
from controller.telemetry.retention import ROLLUPS, Retention, downsample, rollup
from controller.telemetry.sinks import SinkError

# `marks` holds how far the store has rolled up (`downsampled_until_ns`); stores made before it
# get it on their first upkeep (a reader that does not know it ignores it).
MARKS_TABLE = "CREATE TABLE IF NOT EXISTS marks (name TEXT PRIMARY KEY, value INTEGER NOT NULL);"

LOCAL_SCHEMA = f"""
CREATE TABLE points (
    measurement TEXT NOT NULL,
    tags TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (measurement, tags, time_ns)
) WITHOUT ROWID;
CREATE INDEX points_time ON points (measurement, time_ns);
{MARKS_TABLE}
"""

DOWNSAMPLED_UNTIL = "downsampled_until_ns"
# Old points are rolled up an hour of data per transaction (a bounded write-ahead log).
CHUNK_S = 3600.0
# Over its cap, the store is cut to this share of it (not a point deleted per write after).
CAP_TARGET = 0.9
# `PRAGMA auto_vacuum` says 2 for INCREMENTAL.
INCREMENTAL = 2

# The distinct measurements, one index seek each (not a scan of the table).
MEASUREMENTS = """
WITH RECURSIVE m(name) AS (
    SELECT min(measurement) FROM points
    UNION ALL
    SELECT (SELECT min(measurement) FROM points WHERE measurement > m.name) FROM m
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
    `migrated` when the file was rebuilt to give space back (once, for a store made before);
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

    def write(self, points: Sequence[Point]) -> None:
        """Write a batch in one transaction; `SinkError` if the disk refuses."""
        rows = [
            (p.measurement, json.dumps(p.tags), p.time_ns, json.dumps(dict(p.fields)))
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
        sql = "SELECT tags, time_ns, fields FROM points WHERE measurement = ?"
        args: list[object] = [measurement]
        if start is not None:
            sql += " AND time_ns >= ?"
            args.append(epoch_ns(start))
        if end is not None:
            sql += " AND time_ns < ?"
            args.append(epoch_ns(end))
        with self._file.transaction() as db:
            rows = db.execute(sql + " ORDER BY time_ns, tags", args).fetchall()
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
        with self._file.transaction() as db:
            if measurement is None:
                (n,) = db.execute("SELECT count(*) FROM points").fetchone()
            else:
                (n,) = db.execute(
                    "SELECT count(*) FROM points WHERE measurement = ?", (measurement,)
                ).fetchone()
        return int(n)

    # -- retention ---------------------------------------------------------------------------

    def maintain(self, now: float, *, budget_s: float | None = None) -> Upkeep:
        """Keep the store within its retention at station time `now` (epoch seconds).

        In order: delete points older than `max_age_s` (whole `downsample_to_s` intervals:
        the cut is at the start of the interval it falls in); roll up `site` and `pile` points older
        than `downsample_after_s` (from where the last upkeep stopped; with `budget_s`, for at
        most about that long, wall time); delete the oldest points while the store's pages
        exceed `max_bytes` (down to 90 % of it); give freed pages back to the file system.
        A store made before incremental vacuum is rebuilt once (VACUUM, which needs free disk
        space about twice the store). Raises `TelemetryError` if the file fails.
        """
        retention = self.retention
        upkeep = Upkeep()
        deadline = None if budget_s is None else time.monotonic() + budget_s
        try:
            every = round(retention.downsample_to_s * NS)
            with self._file.transaction() as db:
                db.execute(MARKS_TABLE)
                # Whole intervals at a time, so that no rolled-up point stands for fewer
                # cycles than it says.
                cut = epoch_ns(now - retention.max_age_s) // every * every
                upkeep.expired = _delete_before(db, cut)
            self._downsample(epoch_ns(now - retention.downsample_after_s), deadline, upkeep)
            self._cap(epoch_ns(now), upkeep)
            upkeep.migrated = self._reclaim()
        except sqlite3.Error as exc:
            raise TelemetryError(f"{self.path} (telemetry.local_store): upkeep: {exc}") from None
        upkeep.size_bytes = self.size_bytes()
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
    return [str(name) for (name,) in db.execute(MEASUREMENTS)]


def _oldest(db: sqlite3.Connection, measurement: str) -> int | None:
    (oldest,) = db.execute(
        "SELECT min(time_ns) FROM points WHERE measurement = ?", (measurement,)
    ).fetchone()
    return None if oldest is None else int(oldest)


def _mark(db: sqlite3.Connection) -> int | None:
    row = db.execute("SELECT value FROM marks WHERE name = ?", (DOWNSAMPLED_UNTIL,)).fetchone()
    return None if row is None else int(row[0])


def _delete_before(db: sqlite3.Connection, cut_ns: int) -> int:
    """Delete every point older than `cut_ns`; how many."""
    deleted = 0
    for measurement in _measurements(db):
        deleted += db.execute(
            "DELETE FROM points WHERE measurement = ? AND time_ns < ?", (measurement, cut_ns)
        ).rowcount
    return deleted


def _roll_up(
    db: sqlite3.Connection, measurement: str, start_ns: int, end_ns: int, every_ns: int
) -> tuple[int, int]:
    """Roll up the points of `measurement` in [start_ns, end_ns) per `every_ns` (a series'
    interval holding one point is left as it is); how many points became how many."""
    rows = db.execute(
        "SELECT tags, time_ns, fields FROM points "
        "WHERE measurement = ? AND time_ns >= ? AND time_ns < ? ORDER BY time_ns",
        (measurement, start_ns, end_ns),
    ).fetchall()
    groups: dict[tuple[str, int], list[tuple[str, int, str]]] = {}
    for row in rows:
        groups.setdefault((row[0], row[1] // every_ns), []).append(row)
    rolled = [(key, group) for key, group in groups.items() if len(group) > 1]
    if not rolled:
        return 0, 0
    db.executemany(
        "DELETE FROM points WHERE measurement = ? AND tags = ? AND time_ns = ?",
        ((measurement, tags, t) for _, group in rolled for tags, t, _ in group),
    )
    db.executemany(
        "INSERT OR REPLACE INTO points (measurement, tags, time_ns, fields) VALUES (?, ?, ?, ?)",
        _rows(measurement, rolled, every_ns),
    )
    return sum(len(group) for _, group in rolled), len(rolled)


def _rows(
    measurement: str,
    rolled: list[tuple[tuple[str, int], list[tuple[str, int, str]]]],
    every_ns: int,
) -> Iterator[tuple[str, str, int, str]]:
    for (tags, bucket), group in rolled:
        point = rollup([_point(measurement, *row) for row in group], bucket * every_ns)
        yield measurement, tags, point.time_ns, json.dumps(dict(point.fields))


def query_local(path: Path | str, measurement: str, **where: object) -> list[Point]:
    """Read points back from a local store file (see `LocalStore.query`)."""
    store = LocalStore(path)
    try:
        return store.query(measurement, **where)  # type: ignore[arg-type]
    finally:
        store.close()
