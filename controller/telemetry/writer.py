"""The telemetry writer: takes points from the control loop and writes them from its own thread.

A `TelemetryWriter` takes points from the control loop without ever blocking it (a bounded queue
in memory) and writes them in batches from its own thread to a `Sink`: an InfluxDB 2.x write
endpoint (`InfluxSink`) or the embedded `LocalStore` (SQLite) with the same model. While the sink
fails, batches go to a `DiskBuffer` (bounded in bytes; when full the oldest are dropped, counted
and logged once) and are replayed in order once the sink is back. The local store is kept within
its retention from the same thread, every `upkeep_every_s` of station time. `writer_for` makes
the writer a station's [telemetry] section asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from base.config import Station
from base.events import Event
from base.health import Health
from control.step import Cycle
from controller.telemetry.buffer import DiskBuffer
from controller.telemetry.files import TelemetryError
from controller.telemetry.local import LocalStore, Upkeep
from controller.telemetry.points import (
    NS,
    Point,
    cycle_points,
    epoch_ns,
    event_point,
    plan_points,
)
from controller.telemetry.retention import Retention
from controller.telemetry.sinks import InfluxSink, Sink, SinkError
from scheduler.plan import Plan

log = logging.getLogger(__name__)

# One point of each cycle: its time is the station's time (a plan's are ahead of it).
CYCLE_MEASUREMENT = "site"
# Two events of one cycle must stay two points: a point's key is measurement, tags and time.
EVENT_SPACING_NS = 1_000_000


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

    A `LocalStore` sink is kept within its retention (`LocalStore.maintain`) by the same thread,
    between batches and once more on stop: at the first cycle written, then every
    `upkeep_every_s` of station time (the time of the newest cycle written, so a simulation's
    store is kept as the daemon's is, and nothing still queued is older than what was rolled
    up), each upkeep rolling up for at most about `upkeep_budget_s` (wall time).
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
        upkeep_every_s: float = 600.0,
        upkeep_budget_s: float = 2.0,
    ) -> None:
        self.sink = sink
        self.buffer = buffer
        self.station = station
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.queue_max_points = queue_max_points
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.upkeep_every_s = upkeep_every_s
        self.upkeep_budget_s = upkeep_budget_s
        self.last_upkeep: Upkeep | None = None
        self.last_upkeep_at: float | None = None
        self._station_now: float | None = None
        self._next_upkeep = -math.inf
        self._queue: deque[Point] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._exited = False
        self._thread: threading.Thread | None = None
        self._counts = TelemetryCounts()
        self._event_seq = 0
        self._last_event_ns = 0
        # Wall time (monotonic): the writer's thread paces I/O, not control.
        self._sink_health = Health("telemetry", logger=log)
        self._queue_health = Health("telemetry", logger=log)
        self._buffer_health = Health("telemetry", logger=log)
        self._refusal_health = Health("telemetry", logger=log)
        self._upkeep_health = Health("telemetry", logger=log)
        self._retry_at = 0.0
        self._retry_s = retry_min_s
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
                    self._queue_health.fail(
                        time.monotonic(),
                        f"more than {self.queue_max_points} points waiting for "
                        f"{self.sink.description}; dropping the oldest (counted)",
                    )
                self._queue.append(point)
                self._counts.handed += 1
                if len(self._queue) == self.batch_size:
                    self._cond.notify_all()

    def cycle(self, cycle: Cycle, *, block: bool = False) -> None:
        """Queue the points of one control cycle."""
        self.put(cycle_points(self.station, cycle), block=block)

    def plan(self, plan: Plan, when: float, *, block: bool = False) -> None:
        """Queue the points of a new plan."""
        self.put(plan_points(self.station, plan, when), block=block)

    def event(self, event: Event, *, block: bool = False) -> None:
        """Queue an event."""
        self._event_seq += 1
        at_ns = max(epoch_ns(event.time), self._last_event_ns + EVENT_SPACING_NS)
        self._last_event_ns = at_ns
        self.put([event_point(self.station, at_ns / NS, event, self._event_seq)], block=block)

    @property
    def counts(self) -> TelemetryCounts:
        """The counts so far (a copy)."""
        with self._cond:
            return replace(
                self._counts,
                pending=len(self._queue),
                held=self.buffer.points,
                outages=self._sink_health.episodes,
                down_s=self._sink_health.down_s(time.monotonic()),
            )

    @property
    def down(self) -> bool:
        """True while the sink is failing."""
        return not self._sink_health.ok

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
                    self._upkeep()
                    return
                self._replay()
                self._upkeep()
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
        if len(self._queue) <= self.queue_max_points // 2:
            self._queue_health.recover(
                time.monotonic(),
                lambda down: f"telemetry: the queue has room again after {down:.0f} s",
            )
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

    def _upkeep(self) -> None:
        """Keep a local store within its retention, when an upkeep is due."""
        if not isinstance(self.sink, LocalStore):
            return
        with self._cond:
            now = self._station_now
        if now is None or now < self._next_upkeep or self.down:
            return
        self._next_upkeep = now + self.upkeep_every_s
        self.last_upkeep_at = now
        try:
            upkeep = self.sink.maintain(now, budget_s=self.upkeep_budget_s)
        except TelemetryError as exc:
            self._upkeep_health.fail(
                time.monotonic(),
                f"cannot keep {self.sink.description} within its retention ({exc})",
            )
            return
        self.last_upkeep = upkeep
        self._upkeep_health.recover(
            time.monotonic(),
            lambda down: f"telemetry: {self.sink.description} is kept again after {down:.0f} s",
        )
        if upkeep.migrated:
            log.info(
                "telemetry: %s rebuilt once to give deleted points' space back: %d bytes",
                self.sink.path,
                upkeep.size_bytes,
            )
        if upkeep.capped:
            log.warning(
                "telemetry: %s was over its cap (%d bytes): deleted its %d oldest points, "
                "those before %s",
                self.sink.path,
                self.sink.retention.max_bytes,
                upkeep.capped,
                _iso(upkeep.capped_before),
            )

    def _keep(self, batch: list[Point]) -> None:
        try:
            kept, dropped = self.buffer.append(batch)
        except (TelemetryError, sqlite3.Error, OSError) as exc:
            kept, dropped = 0, len(batch)
            self._buffer_health.fail(
                time.monotonic(), f"cannot buffer points on disk ({exc}); dropping them"
            )
        with self._cond:
            self._counts.buffered += kept
            self._counts.dropped += dropped
        if dropped:
            self._buffer_health.fail(
                time.monotonic(),
                f"the disk buffer {self.buffer.path} is full ({self.buffer.max_bytes} bytes); "
                "dropping the oldest points (counted)",
            )

    def _failed(self, exc: SinkError) -> None:
        now = time.monotonic()
        with self._cond:
            why = (
                f"cannot write to {self.sink.description} ({exc}); "
                f"buffering points on disk in {self.buffer.path}"
            )
            if self._sink_health.fail(now, why):
                self._retry_s = self.retry_min_s
            else:
                self._retry_s = min(self._retry_s * 2, self.retry_max_s)
            self._retry_at = now + self._retry_s

    def _reject(self, batch: list[Point], exc: SinkError) -> None:
        with self._cond:
            self._counts.dropped += len(batch)
            self._counts.rejected += len(batch)
        # A database that refuses one batch (a wrong bucket, a token without write access)
        # refuses every one: told once, and once when it takes points again.
        self._refusal_health.fail(
            time.monotonic(),
            f"{self.sink.description} refused {len(batch)} points ({exc}); dropping what it "
            "refuses (counted)",
        )

    def _wrote(self, batch: list[Point], *, replayed: bool) -> None:
        cycles = [p.time for p in batch if p.measurement == CYCLE_MEASUREMENT]
        with self._cond:
            if cycles:
                self._station_now = max(max(cycles), self._station_now or -math.inf)
            self._counts.written += len(batch)
            if replayed:
                self._counts.replayed += len(batch)
            held = self.buffer.points + (len(batch) if replayed else 0)
            self._sink_health.recover(
                time.monotonic(),
                lambda down: (
                    f"telemetry: {self.sink.description} is back after {down:.0f} s; "
                    f"replaying {held} buffered points in order"
                ),
            )
        if not self.buffer:
            self._buffer_health.recover(
                time.monotonic(),
                lambda down: f"telemetry: the disk buffer has room again after {down:.0f} s",
            )
        self._refusal_health.recover(
            time.monotonic(),
            lambda down: (
                f"telemetry: {self.sink.description} takes points again after {down:.0f} s"
            ),
        )


def _iso(when: float | None) -> str:
    if when is None:
        return "-"
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# -- from a station's config -------------------------------------------------------------------


def writer_for(
    station: Station,
    station_file: Path | None = None,
    *,
    directory: Path,
    local_store: Path | None = None,
    buffer_dir: Path | None = None,
) -> TelemetryWriter | None:
    """The writer a station's [telemetry] section asks for (None when it is disabled).

    `directory` is the telemetry directory: without a `url` the writer writes to the local store
    (`local_store`, else the section's, by default <station file stem>.sqlite there), and its
    disk buffer is <station file stem>.buffer.sqlite in `buffer_dir`, else the section's, else
    there; the section's relative paths are in it too. Raises `ConfigError` naming the setting
    when the token's environment variable is unset, and `TelemetryError` when a file cannot be
    used.
    """
    settings = station.telemetry
    if not settings.enabled:
        return None
    stem = (station_file or station.path).stem
    buffer = DiskBuffer(
        (buffer_dir or directory / (settings.buffer_dir or ".")) / f"{stem}.buffer.sqlite",
        int(settings.buffer_max_mb * 1e6),
    )
    sink: Sink
    if settings.url is None:
        sink = LocalStore(local_store or directory / (settings.local_store or f"{stem}.sqlite"))
    else:
        assert settings.org is not None and settings.bucket is not None
        sink = InfluxSink(
            settings.url,
            org=settings.org,
            bucket=settings.bucket,
            token=station.telemetry_token(),
            timeout_s=settings.timeout_s,
        )
    if isinstance(sink, LocalStore):
        sink.retention = Retention(
            max_age_s=settings.retention_days * 86400,
            max_bytes=int(settings.store_max_mb * 1e6),
            downsample_after_s=settings.downsample_after_h * 3600,
            downsample_to_s=settings.downsample_to_s,
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
