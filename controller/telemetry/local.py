"""The local telemetry store: InfluxDB's data model in one SQLite file, used without a database.

`LocalStore` is a sink the writer writes to; `query_local` reads points back from a store file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

from controller.telemetry.files import telemetry_file
from controller.telemetry.points import Point, epoch_ns
from controller.telemetry.sinks import SinkError

LOCAL_SCHEMA = """
CREATE TABLE points (
    measurement TEXT NOT NULL,
    tags TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    fields TEXT NOT NULL,
    PRIMARY KEY (measurement, tags, time_ns)
) WITHOUT ROWID;
CREATE INDEX points_time ON points (measurement, time_ns);
"""


class LocalStore:
    """The embedded store used without a database: one SQLite file, InfluxDB's data model.

    A point's key is its measurement, tags and time; writing a point with the same key again
    merges its fields into the stored ones, as InfluxDB does (so a replayed batch is harmless
    and a later plan overwrites the slots it plans again).
    """

    def __init__(self, path: Path | str) -> None:
        """Open (or create) the store; `TelemetryError` if the file is not one."""
        self.path = Path(path)
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
    ) -> list[Point]:
        """The points of `measurement` with these tag values, in [start, end), oldest first."""
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
        for tags_text, time_ns, fields_text in rows:
            point_tags = tuple((str(k), str(v)) for k, v in json.loads(tags_text))
            if any(dict(point_tags).get(k) != v for k, v in wanted.items()):
                continue
            fields = tuple(sorted(json.loads(fields_text).items()))
            points.append(Point(measurement, point_tags, fields, int(time_ns)))
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

    def close(self) -> None:
        """Close the file."""
        self._file.close()


def query_local(path: Path | str, measurement: str, **where: object) -> list[Point]:
    """Read points back from a local store file (see `LocalStore.query`)."""
    store = LocalStore(path)
    try:
        return store.query(measurement, **where)  # type: ignore[arg-type]
    finally:
        store.close()
