"""Telemetry: what the station measured, decided, planned and noticed, as time-series points.

The data model is InfluxDB's: a `Point` has a measurement, tags (indexed strings), fields (values)
and a time. The daemon and `simulate` write

- `site` (tags `station`, `band`): `grid_kw` (absent without a fresh meter reading), `limit_kw`,
  `background_kw` (absent when it cannot be measured), `piles_kw`, `budget_kw`, `wanted_kw`,
  `price`, once per control cycle;
- `pile` (tags `station`, `pile`, `state`): what the pile reported (`power_kw`, `applied_kw`,
  `soc_pct`, `energy_kwh`) and what was decided for it (`target_kw`, `setpoint_kw`, `written`),
  once per control cycle; `state` is the pile's state, or `unread` without a fresh reading;
- `plan` (tags `station`, `vehicle`): `power_kw` planned in each slot, at the slot's start, and
  `planned_at`, on each new plan; a later plan overwrites the slots it covers again;
- `planning` (tags `station`, `status`): `vehicles`, `solve_ms`, `objective`, on each new plan;
- `event` (tags `station`, `kind` = control or device): `text` and `seq` (the daemon's event
  count), on each event. Events are spaced at least a millisecond apart, so that two events of
  one cycle stay two points (a point's key is measurement, tags and time).

A `TelemetryWriter` takes points from the control loop without ever blocking it (a bounded queue
in memory) and writes them in batches from its own thread to a `Sink`: an InfluxDB 2.x write
endpoint (`InfluxSink`) or the embedded `LocalStore` (SQLite) with the same model. While the sink
fails, batches go to a `DiskBuffer` (bounded in bytes; when full the oldest are dropped, counted
and logged once) and are replayed in order once the sink is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from base.config import Station
from control.site import SiteSnapshot
from scheduler.plan import Plan

log = logging.getLogger(__name__)

FieldValue = float | int | bool | str

# "FXTM": tells a flexcharge telemetry store or buffer from any other SQLite database.
APPLICATION_ID = 0x4658544D
SCHEMA_VERSION = 1
NS = 1_000_000_000
EVENT_SPACING_NS = 1_000_000


@dataclass(frozen=True)
class Point:
    """One time-series point: measurement, tags, fields and time (ns since the epoch)."""

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    time_ns: int

    @classmethod
    def of(
        cls,
        measurement: str,
        when: float,
        tags: Mapping[str, str],
        fields: Mapping[str, FieldValue | None],
    ) -> Point:
        """A point at `when` (epoch seconds); fields that are None or not finite are left out."""
        kept = tuple(
            (name, value)
            for name, value in sorted(fields.items())
            if value is not None and not (isinstance(value, float) and not math.isfinite(value))
        )
        return cls(measurement, tuple(sorted(tags.items())), kept, _ns(when))

    @property
    def time(self) -> float:
        """The point's time, epoch seconds."""
        return self.time_ns / NS

    def tag(self, name: str) -> str | None:
        """The value of one tag (None if the point lacks it)."""
        return dict(self.tags).get(name)

    def field(self, name: str) -> FieldValue | None:
        """The value of one field (None if the point lacks it)."""
        return dict(self.fields).get(name)

    def line(self) -> str:
        """The point in InfluxDB line protocol (nanosecond precision)."""
        from influxdb_client import Point as InfluxPoint
        from influxdb_client import WritePrecision

        point = InfluxPoint(self.measurement)
        for name, text in self.tags:
            point.tag(name, text)
        for name, value in self.fields:
            point.field(name, value)
        return str(point.time(self.time_ns, WritePrecision.NS).to_line_protocol())

    def to_json(self) -> list[object]:
        """A compact JSON-able form (what the disk buffer keeps)."""
        return [
            self.measurement,
            [list(t) for t in self.tags],
            [list(f) for f in self.fields],
            self.time_ns,
        ]

    @classmethod
    def from_json(cls, data: Sequence[object]) -> Point:
        """The point `to_json` gave."""
        measurement, tags, fields, time_ns = data
        assert isinstance(tags, list) and isinstance(fields, list) and isinstance(time_ns, int)
        return cls(
            str(measurement),
            tuple((str(k), str(v)) for k, v in tags),
            tuple((str(k), v) for k, v in fields),
            time_ns,
        )


def _ns(when: float) -> int:
    """Epoch seconds to nanoseconds, exact to the microsecond (a float holds no more)."""
    return round(when * 1_000_000) * 1000


# -- what the station turns into points ------------------------------------------------------


def cycle_points(
    station: str,
    when: float,
    snapshot: SiteSnapshot,
    budget_kw: float,
    targets: Mapping[str, float],
    setpoints: Mapping[str, float],
    written: Mapping[str, bool],
) -> list[Point]:
    """The `site` point and one `pile` point per pile of one control cycle."""
    site = Point.of(
        "site",
        when,
        {"station": station, "band": snapshot.band},
        {
            "grid_kw": snapshot.grid_kw,
            "limit_kw": snapshot.limit_kw,
            "background_kw": snapshot.background_kw,
            "piles_kw": snapshot.piles_kw,
            "budget_kw": budget_kw,
            "wanted_kw": sum(p.wants_kw for p in snapshot.piles),
            "price": snapshot.price,
        },
    )
    points = [site]
    for view in snapshot.piles:
        reading = view.reading
        fields: dict[str, FieldValue | None] = {
            "target_kw": targets.get(view.id),
            "setpoint_kw": setpoints.get(view.id),
            "written": written.get(view.id) if view.id in setpoints else None,
        }
        if reading is not None:
            fields.update(
                power_kw=reading.power_kw,
                applied_kw=reading.applied_setpoint_kw,
                soc_pct=reading.soc_pct,
                energy_kwh=reading.energy_import_kwh,
            )
        if all(value is None for value in fields.values()):
            continue
        state = "unread" if reading is None else reading.state.value
        points.append(
            Point.of("pile", when, {"station": station, "pile": view.id, "state": state}, fields)
        )
    return points


def plan_points(station: str, plan: Plan, when: float) -> list[Point]:
    """One `planning` point for a new plan, and its power per vehicle per slot (`plan`)."""
    points = [
        Point.of(
            "planning",
            when,
            {"station": station, "status": plan.status.value},
            {
                "vehicles": len(plan.power_kw),
                "solve_ms": plan.solve_ms,
                "objective": plan.objective,
            },
        )
    ]
    for vehicle, series in plan.power_kw.items():
        for slot, kw in enumerate(series):
            points.append(
                Point.of(
                    "plan",
                    float(plan.boundaries[slot]),
                    {"station": station, "vehicle": vehicle},
                    {"power_kw": float(kw), "planned_at": when},
                )
            )
    return points


def event_point(station: str, when: float, text: str, kind: str, seq: int) -> Point:
    """An `event` point: what the daemon told the operator, or a device failing or recovering."""
    return Point.of("event", when, {"station": station, "kind": kind}, {"text": text, "seq": seq})


# -- where points go -------------------------------------------------------------------------


class SinkError(Exception):
    """A write failed; `retry` is False when sending the same points again cannot succeed."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Sink(Protocol):
    """Where the writer's batches go."""

    description: str

    def write(self, points: Sequence[Point]) -> None:
        """Write a batch, all of it or (raising `SinkError`) none of it, as far as it knows."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


class InfluxSink:
    """An InfluxDB 2.x write endpoint (`/api/v2/write`), through `influxdb-client`."""

    def __init__(
        self, url: str, *, org: str, bucket: str, token: str | None, timeout_s: float
    ) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.url, self.org, self.bucket = url, org, bucket
        self.description = f"InfluxDB at {url} (org {org}, bucket {bucket})"
        # The writer retries and buffers itself: the client must fail fast, not retry inside.
        self._client = InfluxDBClient(
            url=url, token=token or "", org=org, timeout=int(timeout_s * 1000), retries=False
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, points: Sequence[Point]) -> None:
        """Write one batch in line protocol; `SinkError` names what the server said."""
        from influxdb_client.rest import ApiException

        try:
            # Line protocol at the client's default precision, nanoseconds (as `Point.line`).
            self._api.write(
                bucket=self.bucket,
                org=self.org,
                record=[p.line() for p in points],
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            reason = f"HTTP {status} {exc.reason or ''}".strip()
            body = (exc.body or "")[:200] if isinstance(exc.body, str) else ""
            if status in (401, 403):
                raise SinkError(f"{reason}: check [telemetry] token / token_env") from None
            if status == 404:
                raise SinkError(f"{reason}: check [telemetry] org and bucket ({body})") from None
            if status in (400, 413, 422):
                raise SinkError(
                    f"{reason}: the server refused the points ({body})", retry=False
                ) from None
            raise SinkError(f"{reason} {body}".strip()) from None
        except Exception as exc:
            # urllib3 connection errors and timeouts: the database is down or unreachable.
            raise SinkError(_short(exc)) from None

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    return f"{type(exc).__name__}: {text[:200]}"


class _SqliteFile:
    """An SQLite file flexcharge made for telemetry: created if missing, refused if foreign."""

    def __init__(self, path: Path, kind: str, schema: str, setting: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        new = not path.exists() or path.stat().st_size == 0
        try:
            if new:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise TelemetryError(f"{path} ({setting}): cannot open: {exc}") from exc
        try:
            self._db.execute("PRAGMA busy_timeout = 5000")
            if new:
                self._db.executescript(f"BEGIN; {schema} COMMIT;")
                self._db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            else:
                (app,) = self._db.execute("PRAGMA application_id").fetchone()
                (version,) = self._db.execute("PRAGMA user_version").fetchone()
                if app != APPLICATION_ID or version != SCHEMA_VERSION:
                    raise TelemetryError(
                        f"{path} ({setting}): not a flexcharge {kind} of schema {SCHEMA_VERSION} "
                        f"(application id {app}, schema {version}); move it away or name another"
                    )
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            self._db.close()
            raise TelemetryError(f"{path} ({setting}): not a usable {kind}: {exc}") from exc
        except TelemetryError:
            self._db.close()
            raise

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()


class TelemetryError(Exception):
    """A telemetry file cannot be used; names the file and the setting."""


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
        self._file = _SqliteFile(
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
            args.append(_ns(start))
        if end is not None:
            sql += " AND time_ns < ?"
            args.append(_ns(end))
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


BUFFER_SCHEMA = """
CREATE TABLE batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    points INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""


class DiskBuffer:
    """Batches the sink could not take, kept on disk in order, at most `max_bytes` of them.

    The bound counts the batches' encoded size (the SQLite file adds a little). When a new
    batch would cross it, the oldest batches are dropped to make room and counted in `dropped`.
    The file is created only when a first batch must be kept, and survives a restart.
    """

    def __init__(self, path: Path | str, max_bytes: int) -> None:
        """A buffer at `path` (opened at once if it exists, so that a restart replays it)."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dropped = 0
        self._file: _SqliteFile | None = None
        self._bytes = 0
        self._points = 0
        if self.path.exists():
            self._open()

    def _open(self) -> _SqliteFile:
        if self._file is None:
            self._file = _SqliteFile(
                self.path, "telemetry buffer", BUFFER_SCHEMA, "telemetry.buffer_dir"
            )
            with self._file.transaction() as db:
                row = db.execute(
                    "SELECT coalesce(sum(bytes), 0), coalesce(sum(points), 0) FROM batches"
                ).fetchone()
            self._bytes, self._points = int(row[0]), int(row[1])
        return self._file

    @property
    def bytes(self) -> int:
        """Encoded size of the batches held."""
        return self._bytes

    @property
    def points(self) -> int:
        """Points held."""
        return self._points

    def __bool__(self) -> bool:
        return self._points > 0

    def append(self, points: Sequence[Point]) -> tuple[int, int]:
        """Keep a batch after those held; returns the points kept and the (oldest) dropped."""
        body = json.dumps([p.to_json() for p in points], separators=(",", ":")).encode()
        if len(body) > self.max_bytes:
            self.dropped += len(points)
            return 0, len(points)
        file = self._open()
        dropped = 0
        with file.transaction() as db:
            while self._bytes + len(body) > self.max_bytes:
                row = db.execute(
                    "SELECT id, points, bytes FROM batches ORDER BY id LIMIT 1"
                ).fetchone()
                if row is None:
                    break
                db.execute("DELETE FROM batches WHERE id = ?", (row[0],))
                dropped += int(row[1])
                self._points -= int(row[1])
                self._bytes -= int(row[2])
            db.execute(
                "INSERT INTO batches (points, bytes, body) VALUES (?, ?, ?)",
                (len(points), len(body), body),
            )
        self._points += len(points)
        self._bytes += len(body)
        self.dropped += dropped
        return len(points), dropped

    def oldest(self) -> tuple[int, list[Point]] | None:
        """The oldest batch held (its id and points), or None."""
        if not self._points or self._file is None:
            return None
        with self._file.transaction() as db:
            row = db.execute("SELECT id, body FROM batches ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        return int(row[0]), [Point.from_json(item) for item in json.loads(row[1])]

    def remove(self, batch_id: int) -> None:
        """Forget a batch once the sink has it."""
        assert self._file is not None
        with self._file.transaction() as db:
            row = db.execute(
                "SELECT points, bytes FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        self._points -= int(row[0])
        self._bytes -= int(row[1])

    def close(self) -> None:
        """Close the file (what it holds stays for the next run)."""
        if self._file is not None:
            self._file.close()
            self._file = None


# -- the writer --------------------------------------------------------------------------------


@dataclass
class TelemetryCounts:
    """What became of the points handed to a writer.

    `written` counts every point the sink took, `replayed` those of them that had waited in the
    disk buffer; `buffered` the points put into the buffer while the sink failed; `dropped` the
    points lost: the in-memory queue or the disk buffer overflowing, or batches the server
    refused outright (`rejected`, counted in `dropped` too). `pending` are queued in memory,
    `held` in the disk buffer; `down_s` is how long the sink failed, over `outages` outages.
    """

    handed: int = 0
    written: int = 0
    buffered: int = 0
    replayed: int = 0
    dropped: int = 0
    rejected: int = 0
    pending: int = 0
    held: int = 0
    down_s: float = 0.0
    outages: int = 0

    def summary(self) -> str:
        """One line for the log."""
        return (
            f"{self.written} points written ({self.replayed} of them replayed from the disk "
            f"buffer), {self.buffered} buffered while the database was down, "
            f"{self.dropped} dropped, {self.held} held in the buffer for the next run"
        )


class TelemetryWriter:
    """Takes points from the control loop and writes them to a sink from its own thread.

    `put` (and `cycle`, `plan`, `event`) never wait on the sink: points go to a queue in memory
    of at most `queue_max_points` (when full, the oldest are dropped and counted). The thread
    writes a batch when `batch_size` points are waiting or `flush_interval_s` has passed (real
    time: it paces I/O, not control). A batch the sink fails to take goes to the disk buffer,
    and so does everything after it until the sink takes the buffer's oldest batch again (tried
    after `retry_min_s`, doubling up to `retry_max_s`); the buffer is then replayed in order
    before anything newer. The owner starts it with `start` and ends it with `stop` (or `close`
    outside asyncio), which writes what is queued, or buffers it if the sink is down.
    """

    def __init__(
        self,
        sink: Sink,
        buffer: DiskBuffer,
        *,
        station: str,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        queue_max_points: int = 100_000,
        retry_min_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self.sink = sink
        self.buffer = buffer
        self.station = station
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_max_points = queue_max_points
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self._queue: deque[Point] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._exited = False
        self._thread: threading.Thread | None = None
        self._counts = TelemetryCounts()
        self._event_seq = 0
        self._last_event_ns = 0
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._retry_s = retry_min_s
        self._queue_full = False
        self._buffer_full = False
        self._done: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    # -- the control loop's side ---------------------------------------------------------------

    def put(self, points: Iterable[Point], *, block: bool = False) -> None:
        """Queue points for writing. Never waits, unless `block` (`simulate` is lossless): a
        full queue otherwise drops its oldest points, counted and logged once."""
        with self._cond:
            for point in points:
                if block:
                    self._cond.wait_for(
                        lambda: (
                            len(self._queue) < self.queue_max_points
                            or self._thread is None
                            or self._exited
                        )
                    )
                if len(self._queue) >= self.queue_max_points:
                    self._queue.popleft()
                    self._counts.dropped += 1
                    if not self._queue_full:
                        self._queue_full = True
                        log.error(
                            "telemetry: more than %d points waiting for %s; dropping the oldest "
                            "(counted; logged once)",
                            self.queue_max_points,
                            self.sink.description,
                        )
                self._queue.append(point)
                self._counts.handed += 1
                if len(self._queue) == self.batch_size:
                    self._cond.notify_all()

    def cycle(
        self,
        when: float,
        snapshot: SiteSnapshot,
        budget_kw: float,
        targets: Mapping[str, float],
        setpoints: Mapping[str, float],
        written: Mapping[str, bool],
        *,
        block: bool = False,
    ) -> None:
        """Queue the points of one control cycle."""
        self.put(
            cycle_points(self.station, when, snapshot, budget_kw, targets, setpoints, written),
            block=block,
        )

    def plan(self, plan: Plan, when: float, *, block: bool = False) -> None:
        """Queue the points of a new plan."""
        self.put(plan_points(self.station, plan, when), block=block)

    def event(self, when: float, text: str, kind: str = "control", *, block: bool = False) -> None:
        """Queue an event (`kind`: control, or device for a device failing or recovering)."""
        self._event_seq += 1
        at_ns = max(_ns(when), self._last_event_ns + EVENT_SPACING_NS)
        self._last_event_ns = at_ns
        self.put([event_point(self.station, at_ns / NS, text, kind, self._event_seq)], block=block)

    @property
    def counts(self) -> TelemetryCounts:
        """The counts so far (a copy)."""
        with self._cond:
            counts = replace(self._counts, pending=len(self._queue), held=self.buffer.points)
            if self._down_since is not None:
                counts.down_s += time.monotonic() - self._down_since
            return counts

    @property
    def down(self) -> bool:
        """True while the sink is failing."""
        return self._down_since is not None

    # -- ownership -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer's thread (points queued before are written too)."""
        if self._thread is not None:
            return
        if self.buffer:
            log.info(
                "telemetry: %d points left in %s by an earlier run; replaying them first",
                self.buffer.points,
                self.buffer.path,
            )
        self._thread = threading.Thread(target=self._run, name="flexcharge-telemetry", daemon=True)
        self._thread.start()

    async def stop(self) -> TelemetryCounts:
        """Write (or buffer) what is queued, end the thread, close the sink; the final counts.

        Waits without blocking the event loop: at most about two sink timeouts when the
        database hangs, nothing when it refuses connections.
        """
        if self._thread is not None:
            loop = asyncio.get_running_loop()
            finished: asyncio.Future[None] = loop.create_future()
            with self._cond:
                self._stopping = True
                if not self._exited:
                    self._done.append((loop, finished))
                    finished_later = True
                else:
                    finished_later = False
                self._cond.notify_all()
            if finished_later:
                await finished
        return self.close()

    def close(self) -> TelemetryCounts:
        """`stop` outside asyncio: write (or buffer) what is queued, end the thread, close."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        else:
            self._drain()
        with contextlib.suppress(Exception):
            self.sink.close()
        self.buffer.close()
        return self.counts

    # -- the writer's thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            next_flush = time.monotonic() + self.flush_interval_s
            while True:
                with self._cond:
                    self._wait_for_work(next_flush)
                    stopping = self._stopping
                    batch = self._take()
                if batch:
                    next_flush = time.monotonic() + self.flush_interval_s
                    self._deliver(batch)
                if stopping:
                    if not self.down:
                        self._replay(until_empty=True)
                    self._drain()
                    return
                self._replay()
        except Exception:
            log.exception("telemetry: the writer failed; telemetry stops, control carries on")
        finally:
            with self._cond:
                self._exited = True
                done, self._done = self._done, []
                self._cond.notify_all()
            for loop, future in done:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_settle, future)

    def _wait_for_work(self, next_flush: float) -> None:
        """Wait (holding the lock) until a batch or a replay is due, or stop."""
        while not self._stopping and len(self._queue) < self.batch_size:
            now = time.monotonic()
            if self.buffer and (not self.down or now >= self._retry_at):
                return
            if self._queue and now >= next_flush:
                return
            wakes = [now + self.flush_interval_s]
            if self._queue:
                wakes.append(next_flush)
            if self.buffer:
                wakes.append(self._retry_at)
            self._cond.wait(timeout=max(min(wakes) - now, 0.001))

    def _take(self) -> list[Point]:
        count = min(len(self._queue), self.batch_size)
        batch = [self._queue.popleft() for _ in range(count)]
        if count:
            self._cond.notify_all()  # a blocked `put` may go on
        return batch

    def _drain(self) -> None:
        """On stop: everything queued goes to the sink, or (when it fails) to the buffer."""
        while True:
            with self._cond:
                batch = self._take()
            if not batch:
                return
            self._deliver(batch)

    def _deliver(self, batch: list[Point]) -> None:
        # Anything waiting in the buffer is older: newer points queue up behind it.
        if self.buffer or self.down:
            self._keep(batch)
            return
        try:
            self.sink.write(batch)
        except SinkError as exc:
            if not exc.retry:
                self._reject(batch, exc)
                return
            self._failed(exc)
            self._keep(batch)
            return
        self._wrote(batch, replayed=False)

    def _replay(self, *, until_empty: bool = False) -> None:
        """Send the buffer's oldest batches while the sink takes them (once a retry is due)."""
        while self.buffer:
            if self.down and time.monotonic() < self._retry_at:
                return
            oldest = self.buffer.oldest()
            if oldest is None:
                return
            batch_id, batch = oldest
            try:
                self.sink.write(batch)
            except SinkError as exc:
                if exc.retry:
                    self._failed(exc)
                    return
                self.buffer.remove(batch_id)
                self._reject(batch, exc)
                continue
            self.buffer.remove(batch_id)
            self._wrote(batch, replayed=True)
            if not until_empty:
                with self._cond:
                    if len(self._queue) >= self.batch_size:
                        return  # take the newest into the buffer's tail, then go on

    def _keep(self, batch: list[Point]) -> None:
        try:
            kept, dropped = self.buffer.append(batch)
        except (TelemetryError, sqlite3.Error, OSError) as exc:
            kept, dropped = 0, len(batch)
            if not self._buffer_full:
                self._buffer_full = True
                log.error("telemetry: cannot buffer points on disk (%s); dropping them", exc)
        with self._cond:
            self._counts.buffered += kept
            self._counts.dropped += dropped
        if dropped and not self._buffer_full:
            self._buffer_full = True
            log.error(
                "telemetry: the disk buffer %s is full (%d bytes); dropping the oldest points "
                "(counted; logged once)",
                self.buffer.path,
                self.buffer.max_bytes,
            )

    def _failed(self, exc: SinkError) -> None:
        now = time.monotonic()
        with self._cond:
            if self._down_since is None:
                self._down_since = now
                self._counts.outages += 1
                self._retry_s = self.retry_min_s
                log.error(
                    "telemetry: cannot write to %s (%s); buffering points on disk in %s",
                    self.sink.description,
                    exc,
                    self.buffer.path,
                )
            else:
                self._retry_s = min(self._retry_s * 2, self.retry_max_s)
            self._retry_at = now + self._retry_s

    def _reject(self, batch: list[Point], exc: SinkError) -> None:
        with self._cond:
            self._counts.dropped += len(batch)
            self._counts.rejected += len(batch)
        log.error(
            "telemetry: %s refused %d points (%s); dropped", self.sink.description, len(batch), exc
        )

    def _wrote(self, batch: list[Point], *, replayed: bool) -> None:
        with self._cond:
            self._counts.written += len(batch)
            if replayed:
                self._counts.replayed += len(batch)
            if self._down_since is not None:
                down = time.monotonic() - self._down_since
                self._counts.down_s += down
                self._down_since = None
                log.warning(
                    "telemetry: %s is back after %.0f s; replaying %d buffered points in order",
                    self.sink.description,
                    down,
                    self.buffer.points + (len(batch) if replayed else 0),
                )
        if not self.buffer:
            self._buffer_full = False


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# -- from a station's config -------------------------------------------------------------------


def writer_for(
    station: Station,
    station_file: Path | None = None,
    *,
    local_store: Path | None = None,
    buffer_dir: Path | None = None,
) -> TelemetryWriter | None:
    """The writer a station's [telemetry] section asks for (None when it is disabled).

    Without a `url` it writes to the local store (`local_store`, else the section's, by default
    var/telemetry/<station file stem>.sqlite under the working directory). Raises `ConfigError`
    naming the setting when the token's environment variable is unset, and `TelemetryError`
    when a file cannot be used.
    """
    settings = station.telemetry
    if not settings.enabled:
        return None
    stem = (station_file or station.path).stem
    buffer = DiskBuffer(
        (buffer_dir or Path(settings.buffer_dir)) / f"{stem}.buffer.sqlite",
        int(settings.buffer_max_mb * 1e6),
    )
    sink: Sink
    if settings.url is None:
        sink = LocalStore(
            local_store or settings.local_store or Path("var") / "telemetry" / f"{stem}.sqlite"
        )
    else:
        assert settings.org is not None and settings.bucket is not None
        sink = InfluxSink(
            settings.url,
            org=settings.org,
            bucket=settings.bucket,
            token=station.telemetry_token(),
            timeout_s=settings.timeout_s,
        )
    return TelemetryWriter(
        sink,
        buffer,
        station=station.name,
        batch_size=settings.batch_size,
        flush_interval_s=settings.flush_interval_s,
        queue_max_points=settings.queue_max_points,
        retry_max_s=settings.retry_max_s,
    )


__all__ = [
    "DiskBuffer",
    "InfluxSink",
    "LocalStore",
    "Point",
    "Sink",
    "SinkError",
    "TelemetryCounts",
    "TelemetryError",
    "TelemetryWriter",
    "cycle_points",
    "event_point",
    "plan_points",
    "query_local",
    "writer_for",
]
