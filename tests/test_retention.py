"""The local store's retention: points older than the maximum age deleted, the size cap held
(oldest first), old cycles rolled up into the documented aggregates, history read across the
rolled-up boundary, the space given back, the writer keeping its store on the station's clock,
and the [telemetry] settings checked."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from base.clock import VirtualClock
from base.config import Station, load_station
from base.loading import ConfigError
from control.site import PileView, SiteSnapshot
from control.step import Cycle
from controller.telemetry.buffer import DiskBuffer
from controller.telemetry.local import LocalStore, Upkeep
from controller.telemetry.points import NS, Point
from controller.telemetry.retention import Retention, downsample
from controller.telemetry.writer import TelemetryWriter, writer_for
from tests.builders import pile_reading
from tests.conftest import station_files_on_free_ports, station_with_section

# A minute boundary (1.8e9 is a multiple of 60), so that intervals start where the test says.
T = 1_800_000_000.0
DAY = 86400.0
KEEP_ALL = Retention(max_age_s=3650 * DAY, max_bytes=10**12, downsample_after_s=3650 * DAY)


def _site(when: float, band: str = "valley", **fields: float) -> Point:
    return Point.of("site", when, {"station": "S", "band": band}, fields)


def _pile(when: float, pile: str = "P01", **fields: float | bool) -> Point:
    return Point.of("pile", when, {"station": "S", "pile": pile, "state": "charging"}, fields)


def _event(when: float) -> Point:
    return Point.of("event", when, {"station": "S", "source": "control"}, {"text": "x", "seq": 1})


def _auto_vacuum(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("PRAGMA auto_vacuum").fetchone()[0])


# -- age ----------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_retention_deletes_exactly_the_points_older_than_the_maximum_age(
    tmp_path: Path,
) -> None:
    clock = VirtualClock(T)
    store = LocalStore(
        tmp_path / "t.sqlite", Retention(max_age_s=2 * DAY, downsample_after_s=9 * DAY)
    )
    written: list[Point] = []
    for hour in range(5 * 24):
        points = [_site(clock.now(), grid_kw=float(hour))]
        if hour % 6 == 0:
            points.append(_event(clock.now()))
        store.write(points)
        written += points
        await clock.advance(3600)
    now = clock.now()
    upkeep = store.maintain(now)
    kept = [p for p in written if p.time >= now - 2 * DAY]
    assert upkeep.expired == len(written) - len(kept) > 0
    assert store.query("site") + store.query("event") == sorted(
        kept, key=lambda p: (p.measurement != "site", p.time_ns)
    )
    assert store.maintain(now).expired == 0, "nothing more to delete at the same time"
    store.close()


# -- the size cap -------------------------------------------------------------------------------


def test_the_size_cap_holds_the_store_under_it_deleting_the_oldest_first(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "t.sqlite", KEEP_ALL)
    written = []
    for k in range(720):  # two hours of a 12-pile station's cycles, every 10 s
        when = T + 10 * k
        cycle = [_site(when, grid_kw=1000.0 + k, limit_kw=4275.0, price=0.31)]
        cycle += [_pile(when, f"P{p:02d}", power_kw=100.0 + p, soc_pct=40.5) for p in range(12)]
        store.write(cycle)
        written += cycle
    cap = store.used_bytes() // 3
    store.retention = Retention(max_age_s=3650 * DAY, max_bytes=cap, downsample_after_s=3650 * DAY)
    upkeep = store.maintain(T + 7200)
    assert store.used_bytes() <= cap and upkeep.size_bytes == store.size_bytes() <= cap
    kept = store.query("site") + store.query("pile")
    gone = {(p.measurement, p.tags, p.time_ns) for p in written} - {
        (p.measurement, p.tags, p.time_ns) for p in kept
    }
    assert len(gone) == upkeep.capped == len(written) - len(kept)
    assert kept and gone, "some points deleted, the newest kept"
    oldest_kept = min(p.time_ns for p in kept)
    assert all(time_ns < oldest_kept for _, _, time_ns in gone), "the oldest deleted first"
    assert max(p.time_ns for p in kept) == written[-1].time_ns
    assert upkeep.capped_before is not None and upkeep.capped_before * NS <= oldest_kept
    store.close()


def test_the_cap_deletes_rolled_up_points_before_newer_cycles(tmp_path: Path) -> None:
    store = LocalStore(
        tmp_path / "t.sqlite",
        Retention(max_age_s=30 * DAY, downsample_after_s=3600, downsample_to_s=60),
    )
    store.write([_site(T + k, grid_kw=float(k), limit_kw=4275.0) for k in range(4 * 3600)])
    store.maintain(T + 4 * 3600)  # the first three hours rolled up to minutes
    assert len(store.query("site", end=T + 3 * 3600)) == 180
    cycles_bytes = store.used_bytes()
    store.retention = replace(store.retention, max_bytes=int(cycles_bytes * 0.8))
    upkeep = store.maintain(T + 4 * 3600)
    site = store.query("site")
    assert upkeep.capped > 180 and store.used_bytes() <= store.retention.max_bytes
    assert all(p.field("cycles") is None for p in site), "every rolled-up minute went first"
    assert site[-1].time == T + 4 * 3600 - 1 and len(site) == 3600 - (upkeep.capped - 180)
    store.close()


# -- downsampling --------------------------------------------------------------------------------


def test_old_cycles_are_rolled_up_into_the_documented_aggregates(tmp_path: Path) -> None:
    store = LocalStore(
        tmp_path / "t.sqlite",
        Retention(max_age_s=30 * DAY, downsample_after_s=DAY, downsample_to_s=60),
    )
    store.write(
        [
            _site(T, grid_kw=100.0, limit_kw=4000.0, piles_kw=50.0, price=0.5),
            _site(T + 15, grid_kw=200.0, limit_kw=3500.0, piles_kw=50.0, price=0.5),
            _site(T + 30, grid_kw=300.0, limit_kw=4000.0, piles_kw=50.0, price=0.5),
            _site(T + 45, grid_kw=600.0, limit_kw=4000.0, piles_kw=50.0, price=0.25),
            _site(T + 50, band="peak", grid_kw=900.0),  # another series: alone in its minute
            _site(T + 90, grid_kw=700.0, limit_kw=4000.0, piles_kw=50.0, price=0.25),
            _pile(T, power_kw=10.0, energy_kwh=1000.0, written=False, soc_pct=40.0, target_kw=30.0),
            _pile(T + 20, power_kw=20.0, energy_kwh=1000.125, written=True, target_kw=32.0),
            _pile(T + 40, power_kw=36.0, energy_kwh=1000.25, written=False, soc_pct=42.0),
            _pile(T + 60, power_kw=5.0),
            _event(T + 10),
            _event(T + 11),
        ]
    )
    upkeep = store.maintain(T + DAY + 120)
    assert (upkeep.rolled_up, upkeep.into) == (7, 2)
    valley = {"station": "S", "band": "valley"}
    assert store.query("site") == [
        Point.of(
            "site",
            T,
            valley,
            {
                "cycles": 4,
                "grid_kw": 300.0,  # mean
                "grid_kw_max": 600.0,
                "limit_kw": 3500.0,  # min
                "piles_kw": 50.0,
                "piles_kw_max": 50.0,
                "price": 0.25,  # last
            },
        ),
        _site(T + 50, band="peak", grid_kw=900.0),
        _site(T + 90, grid_kw=700.0, limit_kw=4000.0, piles_kw=50.0, price=0.25),
    ]
    assert store.query("pile") == [
        _pile(
            T,
            cycles=3,
            power_kw=22.0,  # mean
            energy_kwh=1000.25,  # last
            written=True,  # any
            soc_pct=42.0,  # last that has it
            target_kw=31.0,  # mean of those that have it
        ),
        _pile(T + 60, power_kw=5.0),
    ]
    assert len(store.query("event")) == 2, "events are kept as written"
    # Rolled up again with the next minute's cycle: as if from the five cycles themselves.
    two_minutes = store.query("site", tags={"band": "valley"}, every_s=120)
    assert [p.fields for p in two_minutes] == [
        (
            ("cycles", 5),
            ("grid_kw", 380.0),
            ("grid_kw_max", 700.0),
            ("limit_kw", 3500.0),
            ("piles_kw", 50.0),
            ("piles_kw_max", 50.0),
            ("price", 0.25),
        )
    ]
    assert store.maintain(T + DAY + 120) == Upkeep(size_bytes=store.size_bytes()), "all done"
    with pytest.raises(ValueError, match="only site and pile"):
        store.query("event", every_s=60)
    store.close()


def test_history_reads_across_the_rolled_up_boundary(tmp_path: Path) -> None:
    """Three hours of 10 s cycles, the first two rolled up to minutes: a range across the
    boundary is minutes then cycles, holds the same energy, and `every_s` makes it uniform."""
    store = LocalStore(
        tmp_path / "t.sqlite",
        Retention(max_age_s=30 * DAY, downsample_after_s=3600, downsample_to_s=60),
    )
    raw = []
    for k in range(1080):
        when = T + 10 * k
        raw += [
            _site(when, grid_kw=float(k % 7 * 100), limit_kw=4275.0),
            _pile(when, "P01", power_kw=float(k % 5 * 10)),
            _pile(when, "P02", power_kw=float(k % 3 * 20)),
        ]
    store.write(raw)
    store.maintain(T + 3 * 3600)
    boundary = T + 2 * 3600
    start, end = T + 3600, T + 2.5 * 3600
    site = store.query("site", start=start, end=end)
    assert [p.time for p in site if p.time < boundary] == [start + 60 * m for m in range(60)]
    assert all(p.field("cycles") == 6 for p in site if p.time < boundary)
    assert [p.time for p in site if p.time >= boundary] == [boundary + 10 * k for k in range(180)]
    assert all(p.field("cycles") is None for p in site if p.time >= boundary)
    raw_site = [p for p in raw if p.measurement == "site" and start <= p.time < end]
    energy = sum(float(p.field("grid_kw")) * 10 * int(p.field("cycles") or 1) for p in site)  # type: ignore[arg-type]
    assert energy == pytest.approx(sum(float(p.field("grid_kw")) * 10 for p in raw_site))  # type: ignore[arg-type]
    assert max(float(p.field("grid_kw_max") or p.field("grid_kw")) for p in site) == 600.0  # type: ignore[arg-type]

    minutes = store.query("site", start=start, end=end, every_s=60)
    expected = downsample(raw_site, 60 * NS)
    assert [p.time for p in minutes] == [start + 60 * m for m in range(90)]
    assert [p.tags for p in minutes] == [p.tags for p in expected]
    for got, want in zip(minutes, expected, strict=True):
        assert dict(got.fields) == pytest.approx(dict(want.fields))

    p02 = store.query("pile", tags={"pile": "P02"}, start=start, end=end, every_s=60)
    assert len(p02) == 90 and all(p.tag("pile") == "P02" for p in p02)
    assert [p.field("power_kw") for p in p02] == pytest.approx(
        [
            sum(k % 3 * 20 for k in range(m * 6, m * 6 + 6)) / 6
            for m in range(60, 150)  # the minutes of [start, end) from T
        ]
    )
    store.close()


# -- space given back ---------------------------------------------------------------------------


def test_a_store_made_before_is_rebuilt_once_then_gives_space_back_as_it_deletes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.sqlite"
    LocalStore(path).close()
    with sqlite3.connect(path) as db:  # as an earlier flexcharge made it
        db.executescript("DROP TABLE rolled_up; DROP TABLE marks;")
    assert _auto_vacuum(path) == 0, "a new file is made without incremental vacuum"
    store = LocalStore(path, Retention(max_age_s=3600, downsample_after_s=9 * DAY))
    store.write([_site(T + k, grid_kw=float(k), limit_kw=4275.0) for k in range(20_000)])
    full = store.size_bytes()
    upkeep = store.maintain(T + 19_800)
    assert upkeep.migrated and upkeep.expired == 16_200
    assert _auto_vacuum(path) == 2
    assert upkeep.size_bytes < full / 3
    assert [p.time for p in store.query("site")] == [T + k for k in range(16_200, 20_000)]
    store.write([_site(T + k, grid_kw=float(k)) for k in range(20_000, 40_000)])
    grown = store.size_bytes()
    upkeep = store.maintain(T + 39_600)
    assert not upkeep.migrated and upkeep.expired == 36_000 - 16_200
    assert upkeep.size_bytes < grown / 3, "the deleted points' pages went back to the disk"
    store.close()


# -- the writer, on the station's clock -----------------------------------------------------------


def _cycle(station: Station, when: float, power: float) -> Cycle:
    p1, p2 = station.piles[:2]
    snapshot = SiteSnapshot(
        time=when,
        limit_kw=4275.0,
        grid_kw=2000.0 + power,
        meter=None,
        piles=(
            PileView(p1, pile_reading(power), None),
            PileView(p2, pile_reading(2 * power), None),
        ),
        band="valley",
        price=0.3162,
    )
    return Cycle(when, snapshot, 2200.0, {p1.id: 350.0}, {p1.id: 320.0}, {p1.id: True})


@pytest.mark.asyncio
async def test_the_writer_keeps_its_local_store_on_the_stations_clock(
    reference: Station, tmp_path: Path
) -> None:
    """Three hours of cycles on the virtual clock into a store keeping an hour, rolling up
    what is older than ten minutes: upkeeps every five minutes of station time, one on stop."""
    clock = VirtualClock(T)
    store = LocalStore(
        tmp_path / "t.sqlite",
        Retention(max_age_s=3600, downsample_after_s=600, downsample_to_s=60),
    )
    writer = TelemetryWriter(
        store,
        DiskBuffer(tmp_path / "buffer.sqlite", 10**7),
        station="S",
        batch_size=50,
        flush_interval_s=0.02,
        upkeep_every_s=300,
        upkeep_budget_s=600,  # as much as it takes: what the test checks is then certain
    )
    writer.start()
    for k in range(1080):
        writer.cycle(_cycle(reference, clock.now(), float(k % 10)))
        await clock.advance(10)
    last = clock.now() - 10
    counts = await writer.stop()
    assert counts.written == counts.handed == 3 * 1080
    upkept = writer.last_upkeep_at
    assert upkept is not None and last - 300 < upkept <= last
    reopened = LocalStore(tmp_path / "t.sqlite")
    site = reopened.query("site")
    assert min(p.time for p in site) == (upkept - 3600) // 60 * 60
    rolled_until = (upkept - 600) // 60 * 60
    older = [p for p in site if p.time < rolled_until]
    newer = [p for p in site if p.time >= rolled_until]
    assert older and all(p.field("cycles") == 6 and p.time % 60 == 0 for p in older)
    assert newer and all(p.field("cycles") is None for p in newer)
    assert [p.time for p in newer] == [rolled_until + 10 * k for k in range(len(newer))]
    assert newer[-1].time == last
    pile = reopened.query("pile", start=rolled_until - 60, end=rolled_until)
    first = round((rolled_until - 60 - T) / 10)
    mean = sum(k % 10 for k in range(first, first + 6)) / 6
    assert [p.field("power_kw") for p in pile] == pytest.approx([mean, 2 * mean])
    reopened.close()


# -- settings -------------------------------------------------------------------------------------


def test_retention_settings_are_checked_naming_each_field(tmp_path: Path) -> None:
    path = station_with_section(
        tmp_path,
        "[telemetry]\nretention_days = 0\nstore_max_mb = -5\ndownsample_after_h = nan\n"
        "downsample_to_s = 1\n",
    )
    with pytest.raises(ConfigError) as err:
        load_station(path)
    assert {p.field for p in err.value.problems} == {
        "telemetry.retention_days",
        "telemetry.store_max_mb",
        "telemetry.downsample_after_h",
        "telemetry.downsample_to_s",
    }
    path = station_with_section(
        tmp_path / "url",
        '[telemetry]\nurl = "http://db:8086"\norg = "o"\nbucket = "b"\nretention_days = 7\n',
    )
    with pytest.raises(
        ConfigError, match=r"telemetry\.retention_days: applies only to the local store"
    ):
        load_station(path)
    path = station_with_section(
        tmp_path / "ok",
        "[telemetry]\nretention_days = 7\nstore_max_mb = 500\ndownsample_after_h = 6\n"
        "downsample_to_s = 300\n",
    )
    writer = writer_for(
        load_station(path), directory=tmp_path, local_store=tmp_path / "store.sqlite"
    )
    assert writer is not None and isinstance(writer.sink, LocalStore)
    assert writer.sink.retention == Retention(7 * DAY, 500_000_000, 6 * 3600, 300)
    writer.close()
    default = writer_for(
        load_station(station_files_on_free_ports(tmp_path / "default")),
        directory=tmp_path,
        local_store=tmp_path / "default.sqlite",
    )
    assert default is not None and isinstance(default.sink, LocalStore)
    assert default.sink.retention == Retention(30 * DAY, 1_000_000_000, DAY, 60)
    default.close()
