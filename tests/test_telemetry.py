"""Telemetry without a server: the points model, the writer's batching, buffering and replay
against a sink that fails on demand, the disk buffer's bound, the local store, the [telemetry]
settings, and the daemon writing a short run to its local store."""

from __future__ import annotations

import csv
import logging
import math
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from base.config import CONFIG_ROOT, REFERENCE_STATION, Station, load_station
from base.devicemap import PileState
from base.loading import ConfigError
from control.site import PileView, SiteSnapshot
from control.step import Cycle
from controller.telemetry.buffer import DiskBuffer
from controller.telemetry.files import TelemetryError
from controller.telemetry.local import LocalStore, query_local
from controller.telemetry.points import Point, cycle_points, plan_points
from controller.telemetry.sinks import SinkError
from controller.telemetry.writer import TelemetryWriter, writer_for
from drivers.pile import PileReading
from flexcharge.cli import main
from scheduler.plan import Plan, PlanStatus
from tests.builders import pile_reading
from tests.conftest import (
    StartStation,
    local_time,
    station_with_section,
    truck_visit,
)
from tests.victoria import poll_until


class FlakySink:
    """A sink that keeps what it is given, and fails while `down` (or refuses while `refuse`)."""

    description = "the test sink"

    def __init__(self) -> None:
        self.down = False
        self.refuse = False
        self.batches: list[list[Point]] = []
        self.attempts = 0
        self.lock = threading.Lock()

    def write(self, points: Sequence[Point]) -> None:
        with self.lock:
            self.attempts += 1
            if self.refuse:
                raise SinkError("HTTP 400 bad points", retry=False)
            if self.down:
                raise SinkError("connection refused")
            self.batches.append(list(points))

    @property
    def points(self) -> list[Point]:
        with self.lock:
            return [p for batch in self.batches for p in batch]

    def close(self) -> None:
        pass


def _points(n: int, start: int = 0, measurement: str = "site") -> list[Point]:
    return [
        Point.of(measurement, 1.7e9 + k, {"station": "S"}, {"grid_kw": float(k), "n": k})
        for k in range(start, start + n)
    ]


def _writer(sink: FlakySink, tmp_path: Path, **kw: object) -> TelemetryWriter:
    options: dict[str, object] = {
        "batch_size": 10,
        "flush_interval_s": 0.02,
        "retry_min_s": 0.02,
        "retry_max_s": 0.05,
    }
    options.update(kw)
    buffer = DiskBuffer(tmp_path / "buffer.sqlite", int(options.pop("max_bytes", 10**7)))  # type: ignore[call-overload]
    return TelemetryWriter(sink, buffer, station="S", **options)  # type: ignore[arg-type]


# -- the points model ------------------------------------------------------------------------


def test_points_leave_out_missing_values_and_speak_line_protocol() -> None:
    point = Point.of(
        "pile",
        1_800_000_000.25,
        {"station": "Bozhou depot", "pile": "P,1"},
        {
            "power_kw": 1.5,
            "soc_pct": None,
            "bad": math.nan,
            "written": True,
            "seq": 3,
            "t": 'a "b"',
        },
    )
    assert point.time_ns == 1_800_000_000_250_000_000
    assert point.field("soc_pct") is None and point.field("bad") is None
    assert point.line() == (
        'pile,pile=P\\,1,station=Bozhou\\ depot power_kw=1.5,seq=3i,t="a \\"b\\"",written=true '
        "1800000000250000000"
    )
    assert Point.from_json(point.to_json()) == point


def _reading(power: float, state: PileState = PileState.CHARGING) -> PileReading:
    return pile_reading(power, state, applied_kw=power + 1)


def test_a_cycle_is_a_site_point_and_a_point_per_pile(reference: Station) -> None:
    p1, p2 = reference.piles[:2]
    snapshot = SiteSnapshot(
        time=1.8e9,
        limit_kw=4275.0,
        grid_kw=2000.0,
        meter=None,
        piles=(PileView(p1, _reading(300.0), None), PileView(p2, None, _reading(0.0))),
        band="valley",
        price=0.3162,
    )
    cycle = Cycle(
        1.8e9,
        snapshot,
        2200.0,
        {p1.id: 350.0},
        {p1.id: 320.0, p2.id: 0.0},
        {p1.id: True, p2.id: False},
        {p1.id: 12.5},
    )
    site, one, two = cycle_points("S", cycle)
    assert (site.measurement, site.tag("band")) == ("site", "valley")
    assert site.field("grid_kw") == 2000.0 and site.field("piles_kw") == 300.0
    assert site.field("background_kw") is None, "not measurable with a pile unread"
    assert site.field("budget_kw") == 2200.0 and site.field("limit_kw") == 4275.0
    assert (one.tag("pile"), one.tag("state")) == (p1.id, "charging")
    assert one.field("power_kw") == 300.0 and one.field("soc_pct") == 42.0
    assert one.field("session_kwh") == 12.5 and two.field("session_kwh") is None
    assert (one.field("target_kw"), one.field("setpoint_kw"), one.field("written")) == (
        350.0,
        320.0,
        True,
    )
    assert (two.tag("state"), two.field("power_kw"), two.field("written")) == (
        "unread",
        None,
        False,
    )


def test_a_plan_is_power_per_vehicle_per_slot() -> None:
    plan = Plan(
        PlanStatus.OPTIMAL,
        np.array([100.0, 900.0, 1800.0]),
        {"a": np.array([10.0, 20.0]), "b": np.array([0.0, 5.0])},
        objective=3.0,
        solve_ms=12.0,
    )
    planning, *slots = plan_points("S", plan, 100.0)
    assert planning.measurement == "planning" and planning.field("vehicles") == 2
    assert [(p.tag("vehicle"), p.time, p.field("power_kw")) for p in slots] == [
        ("a", 100.0, 10.0),
        ("a", 900.0, 20.0),
        ("b", 100.0, 0.0),
        ("b", 900.0, 5.0),
    ]


# -- the writer --------------------------------------------------------------------------------


def test_writer_batches_in_order_without_waiting(tmp_path: Path) -> None:
    sink = FlakySink()
    writer = _writer(sink, tmp_path)
    writer.start()
    try:
        sent = _points(95)
        for point in sent:
            writer.put([point])
        poll_until(lambda: len(sink.points) == 95, 10, "the points to be written")
    finally:
        counts = writer.close()
    assert sink.points == sent
    assert max(len(b) for b in sink.batches) <= 10
    assert (counts.written, counts.buffered, counts.dropped, counts.held) == (95, 0, 0, 0)


def test_while_the_sink_is_down_points_wait_on_disk_and_replay_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FlakySink()
    writer = _writer(sink, tmp_path)
    writer.start()
    try:
        writer.put(_points(30))
        poll_until(lambda: len(sink.points) == 30, 10, "the first points")
        sink.down = True
        with caplog.at_level(logging.INFO, "controller.telemetry"):
            writer.put(_points(200, 30))
            poll_until(lambda: writer.counts.buffered == 200, 10, "the points to be buffered")
            assert writer.down and writer.counts.held == 200
            poll_until(lambda: sink.attempts > 5, 10, "retries")
            sink.down = False
            writer.put(_points(50, 230))
            poll_until(lambda: len(sink.points) == 280, 10, "the replay")
    finally:
        counts = writer.close()
    assert [p.field("n") for p in sink.points] == list(range(280)), "every point once, in order"
    assert (counts.written, counts.buffered, counts.replayed, counts.dropped) == (280, 250, 250, 0)
    assert counts.outages == 1 and counts.held == 0
    failing = [r for r in caplog.records if "cannot write" in r.getMessage()]
    back = [r for r in caplog.records if "is back" in r.getMessage()]
    assert len(failing) == 1 and len(back) == 1, "logged once when it failed and once when back"


def test_what_is_buffered_at_stop_is_replayed_by_the_next_run(tmp_path: Path) -> None:
    sink = FlakySink()
    sink.down = True
    writer = _writer(sink, tmp_path)
    writer.start()
    writer.put(_points(25))
    counts = writer.close()
    assert (counts.written, counts.held, counts.buffered) == (0, 25, 25)
    sink.down = False
    again = _writer(sink, tmp_path)
    again.start()
    try:
        again.put(_points(5, 25))
        poll_until(lambda: len(sink.points) == 30, 10, "the buffer of the last run")
    finally:
        counts = again.close()
    assert [p.field("n") for p in sink.points] == list(range(30))
    assert counts.replayed == 25


def test_a_full_disk_buffer_drops_the_oldest_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FlakySink()
    sink.down = True
    one_batch = len(b"[]") + 10 * 120  # about the encoded size of ten points
    writer = _writer(sink, tmp_path, max_bytes=5 * one_batch)
    writer.start()
    with caplog.at_level(logging.ERROR, "controller.telemetry"):
        writer.put(_points(200))
        poll_until(lambda: writer.counts.pending == 0, 10, "the queue to empty")
        counts = writer.close()
    assert counts.written == 0 and counts.dropped > 0
    assert counts.held + counts.dropped == 200, "nothing lost but what the bound dropped"
    assert writer.buffer.bytes <= 5 * one_batch
    full = [r for r in caplog.records if "is full" in r.getMessage()]
    assert len(full) == 1
    kept = DiskBuffer(tmp_path / "buffer.sqlite", 10**7)
    first = kept.oldest()
    kept.close()
    assert first is not None and first[1][0].field("n") == counts.dropped, "the newest were kept"


def test_a_refused_batch_is_dropped_not_retried_forever(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FlakySink()
    sink.refuse = True
    writer = _writer(sink, tmp_path)
    writer.start()
    with caplog.at_level(logging.INFO, "controller.telemetry"):
        for k in range(3):
            writer.put(_points(10, 10 * k))
            poll_until(lambda k=k: writer.counts.rejected == 10 * (k + 1), 10, "the refusal")
        sink.refuse = False
        writer.put(_points(10, 30))
        poll_until(lambda: len(sink.points) == 10, 10, "the next batch")
    counts = writer.close()
    assert (counts.dropped, counts.rejected, counts.written) == (30, 30, 10)
    # Every batch refused, told once; and once when it takes points again.
    told = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in told] == [logging.ERROR, logging.INFO], told
    assert "refused 10 points" in told[0][1] and "takes points again" in told[1][1]


def test_put_never_waits_a_full_queue_drops_its_oldest(tmp_path: Path) -> None:
    sink = FlakySink()
    writer = _writer(sink, tmp_path, queue_max_points=100)
    writer.put(_points(150))  # no thread yet: nothing drains it, and put must not wait for one
    assert writer.counts.dropped == 50 and writer.counts.pending == 100
    writer.close()
    assert [p.field("n") for p in sink.points] == list(range(50, 150))


def test_a_full_queue_is_told_once_per_episode_and_when_it_has_room_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = FlakySink()
    writer = _writer(sink, tmp_path, queue_max_points=100)
    with caplog.at_level(logging.INFO, "controller.telemetry"):
        writer.put(_points(150))  # no thread yet: the queue overflows
        writer.start()
        poll_until(lambda: writer.counts.pending == 0, 10, "the queue to drain")
        counts = writer.close()
    texts = [r.getMessage() for r in caplog.records]
    full = [t for t in texts if "dropping the oldest" in t]
    room = [t for t in texts if "queue has room again" in t]
    assert (len(full), len(room)) == (1, 1), texts  # re-armed: a new overflow is told again
    assert counts.dropped == 50


@pytest.mark.asyncio
async def test_stop_awaits_the_thread_without_blocking_the_loop(tmp_path: Path) -> None:
    sink = FlakySink()
    writer = _writer(sink, tmp_path, flush_interval_s=5.0, batch_size=1000)
    writer.start()
    writer.put(_points(7))
    counts = await writer.stop()
    assert counts.written == 7 and not any(
        t.name == "flexcharge-telemetry" for t in threading.enumerate()
    )


# -- the local store and the buffer file ---------------------------------------------------------


def test_the_local_store_keeps_the_model_and_merges_as_influxdb_does(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite"
    store = LocalStore(path)
    first = Point.of(
        "plan", 900.0, {"station": "S", "vehicle": "a"}, {"power_kw": 10.0, "planned_at": 1.0}
    )
    again = Point.of(
        "plan", 900.0, {"station": "S", "vehicle": "a"}, {"power_kw": 12.0, "planned_at": 2.0}
    )
    other = Point.of("plan", 900.0, {"station": "S", "vehicle": "b"}, {"power_kw": 1.0})
    store.write([first, other])
    store.write([again])
    assert store.count("plan") == 2
    store.close()
    assert query_local(path, "plan", tags={"vehicle": "a"}) == [again]
    assert [p.tag("vehicle") for p in query_local(path, "plan", start=0, end=901)] == ["a", "b"]
    assert query_local(path, "plan", start=901) == []


def test_a_foreign_file_is_refused_naming_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE x (y)")
    with pytest.raises(TelemetryError, match=r"telemetry\.local_store.*not a flexcharge"):
        LocalStore(path)


# -- configuration ------------------------------------------------------------------------------


def test_telemetry_settings_are_checked_naming_each_field(tmp_path: Path) -> None:
    path = station_with_section(
        tmp_path,
        '[telemetry]\nurl = "http://db:8086"\ntoken = "t"\ntoken_env = "T"\nbatch_size = 0\nbuket = "x"\n',
    )
    with pytest.raises(ConfigError) as err:
        load_station(path)
    fields = {p.field for p in err.value.problems}
    assert {"telemetry.batch_size", "telemetry.buket"} <= fields
    path = station_with_section(
        tmp_path / "b", '[telemetry]\nurl = "http://db:8086"\ntoken = "t"\ntoken_env = "T"\n'
    )
    with pytest.raises(ConfigError) as err:
        load_station(path)
    assert {p.field for p in err.value.problems} == {
        "telemetry.org",
        "telemetry.bucket",
        "telemetry.token",
    }
    path = station_with_section(tmp_path / "c", '[telemetry]\nbucket = "b"\n')
    with pytest.raises(ConfigError, match=r"telemetry\.bucket: applies only with telemetry\.url"):
        load_station(path)


def test_the_token_is_never_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "s3cr3t-t0ken-value"
    path = station_with_section(
        tmp_path,
        f'[telemetry]\nurl = "http://127.0.0.1:9"\norg = "o"\nbucket = "b"\ntoken = "{secret}"\n',
    )
    assert main(["check-config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "telemetry: InfluxDB" in out and "token in the station file" in out
    assert secret not in out
    station = load_station(path)
    assert secret not in repr(station) and secret not in str(station.telemetry)
    assert station.telemetry_token() == secret
    env_path = station_with_section(
        tmp_path / "env",
        '[telemetry]\nurl = "http://127.0.0.1:9"\norg = "o"\nbucket = "b"\ntoken_env = "FLEXCHARGE_TEST_TOKEN"\n',
    )
    monkeypatch.delenv("FLEXCHARGE_TEST_TOKEN", raising=False)
    with pytest.raises(ConfigError, match=r"telemetry\.token_env: the environment variable"):
        writer_for(load_station(env_path), directory=tmp_path)
    monkeypatch.setenv("FLEXCHARGE_TEST_TOKEN", secret)
    assert load_station(env_path).telemetry_token() == secret


# -- the daemon, writing to its local store ------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.loopback
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_the_daemon_writes_its_run_to_the_local_store(
    station: Station,
    tmp_path: Path,
    running_station: StartStation,
) -> None:
    """Without a database, every cycle and event lands in <telemetry directory>/<station>.sqlite."""
    station = station.with_control(period_s=2.0)
    start = local_time(station, "2026-11-25T10:00")
    pile = station.piles[0].id
    writer = writer_for(station, directory=tmp_path)
    assert writer is not None
    site_ = await running_station(
        station,
        [truck_visit(start + 30, pile)],
        start=start,
        policy="equal-share",
        telemetry=writer,
    )
    cycles, daemon = site_.cycles, site_.daemon
    await site_.until(600)
    await site_.stop_daemon()
    counts = writer.counts
    store = tmp_path / f"{station.path.stem}.sqlite"
    site = query_local(store, "site")
    assert [p.time for p in site] == pytest.approx([c.time for c in cycles], abs=1e-6)
    assert [p.field("grid_kw") for p in site] == [c.snapshot.grid_kw for c in cycles]
    assert [p.field("budget_kw") for p in site] == [c.budget_kw for c in cycles]
    charging = query_local(store, "pile", tags={"pile": pile, "state": "charging"})
    assert charging and max(p.field("power_kw") or 0 for p in charging) > 100  # type: ignore[operator]
    assert all(p.tag("station") == station.name for p in site)
    events = query_local(store, "event")
    assert len(events) == daemon.event_count
    assert [p.field("text") for p in events] == [e.text for e in daemon.events]
    assert counts.written == counts.handed and counts.dropped == counts.buffered == 0
    assert not (tmp_path / f"{station.path.stem}.buffer.sqlite").exists()


def test_simulate_writes_its_run_to_a_store_in_its_output(tmp_path: Path) -> None:
    """`simulate --telemetry` without a database: OUT/telemetry.sqlite, one site point a step."""
    out = tmp_path / "out"
    code = main(
        [
            "simulate",
            "--station",
            str(REFERENCE_STATION),
            "--sessions",
            str(CONFIG_ROOT / "scenarios" / "bozhou-day.csv"),
            "--policy",
            "equal-share",
            "--out",
            str(out),
            "--telemetry",
        ]
    )
    assert code == 0
    with (out / "timeseries.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    site = query_local(out / "telemetry.sqlite", "site")
    assert len(site) == len(rows) > 0
    assert [p.field("limit_kw") for p in site] == pytest.approx(
        [float(r["limit_kw"]) for r in rows]
    )
    with (out / "events.csv").open() as handle:
        events = list(csv.DictReader(handle))
    assert [p.field("text") for p in query_local(out / "telemetry.sqlite", "event")] == [
        e["event"] for e in events
    ]
