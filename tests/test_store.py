"""The state file and the energy accounts: what survives a restart, and that no session's energy
is lost or counted twice across one.

Pure tests of `StateStore` and `SessionLedger` (with `Control` where the two meet), then one
daemon test on the virtual clock over loopback Modbus: the daemon stops saving (as if killed),
the truck it was charging leaves and another plugs in while nobody watches, and the restarted
daemon closes the first session with the energy the plant really delivered.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from base.clock import VirtualClock
from base.config import Station
from base.devicemap import PileState
from control.cycle import Control, ControlState, MonthPeak
from control.ledger import SessionLedger
from control.sessions import EnergyAccount, Session, Wish
from control.site import PileView, SiteSnapshot
from controller.daemon import Daemon
from controller.store import SCHEMA_VERSION, SavedState, StateError, StateStore
from drivers.pile import PileReading
from scheduler.plan import Plan, PlanStatus
from simulator.fleet import Visit
from simulator.hardware import StationSimulator
from tests.conftest import local_time

STATION = "Bozhou logistics depot"


def _reading(
    counter: float, *, session: int, energy: float = 0.0, present: bool = True
) -> PileReading:
    return PileReading(
        state=PileState.CHARGING if present else PileState.AVAILABLE,
        power_kw=100.0 if present else 0.0,
        applied_setpoint_kw=100.0,
        max_charge_kw=480.0,
        max_discharge_kw=0.0,
        min_kw=20.0,
        energy_import_kwh=counter,
        energy_export_kwh=0.0,
        session_energy_kwh=energy,
        session_id=session,
        soc_pct=40.0 if present else None,
        ev_capacity_kwh=500.0 if present else None,
    )


def _snapshot(station: Station, now: float, readings: dict[str, PileReading]) -> SiteSnapshot:
    views = tuple(
        PileView(p, readings.get(p.id), readings.get(p.id))
        for p in station.piles
        if p.id in readings
    )
    return SiteSnapshot(
        time=now,
        limit_kw=station.limit_kw,
        grid_kw=1500.0,
        meter=None,
        piles=views,
        band="flat",
        price=0.6,
    )


class ControlledPile:
    """The reference station's P01 followed by `Control` and a ledger, as the daemon does."""

    def __init__(self, station: Station, store: StateStore, now: float) -> None:
        self.station = station
        self.store = store
        self.control = Control(station, policy="equal-share")
        saved = store.load(now, self.control.zone)
        self.control.restore_state(saved.control, now)
        self.ledger = self.control.ledger = SessionLedger(saved.records)
        self.events: list[str] = []

    def cycle(self, now: float, reading: PileReading) -> None:
        snapshot = _snapshot(self.station, now, {"P01": reading})
        self.events += [e.text for e in self.control.observe(snapshot, 1.0)]

    def save(self, now: float) -> None:
        records = tuple(self.ledger.records())
        self.store.save(SavedState(self.control.export_state(), records), now)
        self.ledger.saved(records)


def _rows(path: Path) -> list[sqlite3.Row]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return db.execute("SELECT * FROM sessions ORDER BY plugged_at").fetchall()
    finally:
        db.close()


def _month_peak(path: Path) -> float:
    db = sqlite3.connect(path)
    try:
        (peak,) = db.execute("SELECT MAX(peak_kw) FROM month_peak").fetchone()
    finally:
        db.close()
    return float(peak)


def test_a_missing_file_and_its_directory_are_created(tmp_path: Path) -> None:
    path = tmp_path / "var" / "state" / "depot.sqlite"
    with StateStore(path, STATION) as store:
        saved = store.load(0.0, ZoneInfo("Asia/Shanghai"))
    assert path.is_file()
    assert saved.records == () and saved.control.month is None and saved.control.plan is None
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        db.close()


def test_everything_saved_comes_back(reference: Station, tmp_path: Path) -> None:
    """Sessions, month peak, plan (with the site load it accepted), history, wishes."""
    now = local_time(reference, "2026-11-25T10:07")
    zone = ZoneInfo(reference.info.timezone)
    boundaries = np.array([now - 420, now + 480, now + 1380], dtype=float)
    plan = Plan(
        PlanStatus.OPTIMAL,
        boundaries,
        {"truck-7": np.array([120.0, 0.25])},
        objective=12.5,
        unmet_kwh={"truck-7": 0.0},
        solve_ms=40.0,
    )
    site_kw = np.array([1820.0, 1700.0])
    month = MonthPeak(zone, 2210.5, (2026, 11), now - 420, 140.0)
    wishes = {("P02", 8): Wish("fleet-22", 300.0, now + 3600, v2g=True, min_soc=0.3)}
    open_record = Session(
        "truck-7", "P01", 5, now - 900, 350.0, now + 7200, True, 450.0, delivered_kwh=12.5,
        capacity_kwh=500.0, soc=0.41, account=EnergyAccount(1000.0, 12.5, 1012.5),
    )  # fmt: skip
    ended = replace(
        open_record,
        pile="P03",
        session_id=2,
        plugged_at=now - 7200,
        ended_at=now - 600,
        account=EnergyAccount(1000.0, 12.5, 1012.5),
    )
    state = ControlState(month=month, plan=plan, planned_at=now - 30, plan_site_kw=site_kw)
    state = replace(state, wishes=wishes)
    path = tmp_path / "state.sqlite"
    with StateStore(path, STATION) as store:
        store.save(SavedState(state, (open_record, ended)), now)
    with StateStore(path, STATION) as store:
        saved = store.load(now, zone)

    assert saved.records == (open_record,)
    (session,) = saved.control.sessions
    assert (session.pile, session.session_id, session.vehicle_id) == ("P01", 5, "truck-7")
    assert session.delivered_kwh == 12.5 and session.departure_known
    assert saved.control.month == month
    assert saved.control.planned_at == now - 30
    restored = saved.control.plan
    assert restored is not None and restored.status is PlanStatus.OPTIMAL
    np.testing.assert_array_equal(restored.boundaries, boundaries)
    np.testing.assert_array_equal(restored.power_kw["truck-7"], plan.power_kw["truck-7"])
    assert restored.objective == 12.5
    np.testing.assert_array_equal(saved.control.plan_site_kw, site_kw)
    assert saved.control.wishes == wishes
    (visit,) = saved.control.history
    assert (visit.plugged_at, visit.left_at, visit.delivered_kwh) == (now - 7200, now - 600, 12.5)

    control = Control(reference)
    control.restore_state(saved.control, now)
    assert control.plan is restored and control.plan_due(now) is None
    assert control.month.peak_kw == 2210.5
    assert control.sessions["P01"].vehicle_id == "truck-7"
    later = Control(reference)
    later.restore_state(saved.control, now + 1500)
    assert later.plan is None, "a plan that no longer covers now is not followed"


def test_a_session_still_plugged_in_continues_its_row(reference: Station, tmp_path: Path) -> None:
    """Restart with the same pile session: the row and its energy carry on, no new session."""
    path = tmp_path / "state.sqlite"
    t0 = local_time(reference, "2026-11-25T10:00")
    with StateStore(path, STATION) as store:
        first = ControlledPile(reference, store, t0)
        first.cycle(t0, _reading(1000.0, session=7, energy=0.0))
        first.control.wish("P01", 7, Wish("truck-9", 300.0, t0 + 4 * 3600))
        first.cycle(t0 + 600, _reading(1050.0, session=7, energy=50.0))
        first.save(t0 + 600)
        # Killed here: the pile keeps charging for another 20 kWh while the daemon is down.
        second = ControlledPile(reference, store, t0 + 900)
        second.cycle(t0 + 900, _reading(1070.0, session=7, energy=70.0))
        second.save(t0 + 900)

    assert not any("connected" in e or "left" in e for e in second.events)
    session = second.control.sessions["P01"]
    assert session.vehicle_id == "truck-9" and session.plugged_at == t0
    assert session.need_kwh == 300.0 and session.departure == t0 + 4 * 3600
    (row,) = _rows(path)
    assert row["ended_at"] is None and row["pile_session_id"] == 7
    assert row["energy_kwh"] == pytest.approx(70.0)
    assert row["start_counter_kwh"] == 1000.0 and row["last_counter_kwh"] == 1070.0


def test_downtime_departure_and_arrival_neither_lose_nor_double(
    reference: Station, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The vehicle left and another plugged in while the daemon was down."""
    path = tmp_path / "state.sqlite"
    t0 = local_time(reference, "2026-11-25T10:00")
    with StateStore(path, STATION) as store:
        first = ControlledPile(reference, store, t0)
        first.cycle(t0, _reading(1000.0, session=7, energy=0.0))
        first.cycle(t0 + 600, _reading(1050.0, session=7, energy=50.0))
        first.save(t0 + 600)
        # Down: session 7 draws 30 kWh more and leaves; session 8 plugs in and draws 12 kWh.
        second = ControlledPile(reference, store, t0 + 1800)
        second.cycle(t0 + 1800, _reading(1092.0, session=8, energy=12.0))
        second.save(t0 + 1800)
        second.cycle(t0 + 1860, _reading(1094.0, session=8, energy=14.0))
        second.save(t0 + 1860)

    old, new = _rows(path)
    assert (old["pile_session_id"], old["ended_at"]) == (7, t0 + 1800)
    assert old["energy_kwh"] == pytest.approx(80.0)
    assert (new["pile_session_id"], new["ended_at"]) == (8, None)
    assert new["energy_kwh"] == pytest.approx(14.0)
    assert old["energy_kwh"] + new["energy_kwh"] == pytest.approx(1094.0 - 1000.0)
    assert "vehicle left after 80 of" in " ".join(second.events)
    assert second.control.history[-1].delivered_kwh == pytest.approx(80.0)
    assert "session counter says" not in caplog.text


def test_accounts_never_overlap_when_the_pile_contradicts_its_counter(
    reference: Station, caplog: pytest.LogCaptureFixture
) -> None:
    """A new session claiming more than the counter rose (e.g. AC session ids restarting after
    a restart) cannot make a kWh count twice; the disagreement is logged once."""
    t0 = local_time(reference, "2026-11-25T10:00")
    control = Control(reference, policy="equal-share")
    ledger = control.ledger = SessionLedger()
    for now, reading in (
        (t0, _reading(1000.0, session=3, energy=0.0)),
        (t0 + 60, _reading(1020.0, session=3, energy=20.0)),
        (t0 + 120, _reading(1025.0, session=1, energy=25.0)),  # same vehicle, renumbered
        (t0 + 180, _reading(1030.0, session=1, energy=30.0)),
    ):
        control.observe(_snapshot(reference, now, {"P01": reading}), 60.0)
    old, new = ledger.records()
    assert old.account.energy_kwh == pytest.approx(20.0)
    assert new.account.energy_kwh == pytest.approx(10.0)
    assert old.account.energy_kwh + new.account.energy_kwh == pytest.approx(30.0)
    assert caplog.text.count("session counter says") == 1


def test_a_counter_reset_keeps_what_was_counted(
    reference: Station, caplog: pytest.LogCaptureFixture
) -> None:
    """The pile restarted mid-session (both its counters start again): the session keeps its
    energy, and the controller's figure (what the API shows) is the account's, not the pile's
    session counter."""
    t0 = local_time(reference, "2026-11-25T10:00")
    control = Control(reference, policy="equal-share")
    ledger = control.ledger = SessionLedger()
    for now, counter, energy in ((t0, 5000.0, 0.0), (t0 + 60, 5010.0, 10.0), (t0 + 120, 4.0, 4.0)):
        control.observe(
            _snapshot(reference, now, {"P01": _reading(counter, session=2, energy=energy)}), 60.0
        )
    (record,) = ledger.records()
    assert record.account.energy_kwh == pytest.approx(10.0)
    assert control.sessions["P01"].delivered_kwh == pytest.approx(10.0)
    assert "session 2 keeps its 10.0 kWh" in caplog.text
    control.observe(
        _snapshot(reference, t0 + 180, {"P01": _reading(7.0, session=2, energy=7.0)}), 60.0
    )
    assert ledger.records()[0].account.energy_kwh == pytest.approx(13.0)
    assert control.sessions["P01"].delivered_kwh == pytest.approx(13.0)
    assert "session counter says" not in caplog.text, (
        "the reset was told; the pile's figure differs by it"
    )
    # It leaves with that energy: the visit, the closed row and the log say 13 kWh.
    events = control.observe(
        _snapshot(
            reference, t0 + 240, {"P01": _reading(7.0, session=2, energy=7.0, present=False)}
        ),
        60.0,
    )
    assert ledger.records()[0].ended_at == t0 + 240
    assert ledger.records()[0].account.energy_kwh == pytest.approx(13.0)
    assert control.history[-1].delivered_kwh == pytest.approx(13.0)
    assert any("vehicle left after 13 of" in e.text for e in events)


def test_a_pile_in_fault_keeps_its_session_and_its_account_open(reference: Station) -> None:
    """A pile in fault says nothing of its vehicle: the book keeps the session, and so does the
    ledger (it did close the account, and saved the session as ended)."""
    t0 = local_time(reference, "2026-11-25T10:00")
    control = Control(reference, policy="equal-share")
    ledger = control.ledger = SessionLedger()
    for now, reading in (
        (t0, _reading(1000.0, session=4, energy=0.0)),
        (t0 + 60, _reading(1010.0, session=4, energy=10.0)),
        (
            t0 + 120,
            replace(_reading(1012.0, session=4, energy=12.0), state=PileState.FAULT, fault_code=7),
        ),
        (t0 + 180, _reading(1020.0, session=4, energy=20.0)),
    ):
        control.observe(_snapshot(reference, now, {"P01": reading}), 60.0)
    (record,) = ledger.records()
    assert record.ended_at is None and record.account.energy_kwh == pytest.approx(20.0)
    assert control.sessions["P01"].delivered_kwh == pytest.approx(20.0)


def test_month_rollover(reference: Station, tmp_path: Path) -> None:
    """November's peak is not December's demand charge; November's row is kept."""
    path = tmp_path / "state.sqlite"
    zone = ZoneInfo(reference.info.timezone)
    november = local_time(reference, "2026-11-30T23:50")
    december = local_time(reference, "2026-12-01T00:20")
    control = Control(reference)
    control.month.add(november, 2400.0, 300.0)
    assert control.month.peak_kw > 0
    with StateStore(path, STATION) as store:
        store.save(SavedState(control.export_state()), november)
        same_month = Control(reference)
        same_month.restore_state(store.load(november + 60, zone).control, november + 60)
        assert same_month.month.peak_kw == control.month.peak_kw
        later = Control(reference)
        notes = later.restore_state(store.load(december, zone).control, december)
        assert later.month.peak_kw == 0.0 and "not carried into this month" in " ".join(notes)
        later.month.add(december, 1800.0, 60.0)
        store.save(SavedState(later.export_state()), december)
    db = sqlite3.connect(path)
    try:
        months = db.execute("SELECT month, peak_kw FROM month_peak ORDER BY month").fetchall()
    finally:
        db.close()
    assert [m for m, _ in months] == ["2026-11", "2026-12"]
    assert months[0][1] == pytest.approx(control.month.peak_kw)


def test_wall_clock_times_stay_in_their_window(reference: Station) -> None:
    """Times with fractions of a second (the wall clock's) accumulate in one 15-minute window."""
    zone = ZoneInfo(reference.info.timezone)
    month = MonthPeak(zone)
    start = local_time(reference, "2026-11-26T08:30")
    for k in range(1, 600):
        month.add(start + k * 1.0013 + 0.123456, 1800.0, 1.0013)
    assert month.window_start == start
    assert month.window_kwh == pytest.approx(1800.0 * 599 * 1.0013 / 3600)
    assert month.peak_kw == pytest.approx(month.window_kwh / 0.25)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("garbage", "not a usable state file"),
        ("newer", "newer flexcharge (schema 99"),
        ("foreign", "not a flexcharge state file"),
        ("other station", "the state of station 'Workplace'"),
        ("bad row", "table sessions, row P01#5: energy_kwh: 'lots' is not a finite number"),
    ],
)
def test_an_unusable_file_is_refused_naming_it(tmp_path: Path, spoil: str, message: str) -> None:
    path = tmp_path / "state.sqlite"
    if spoil == "garbage":
        path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 40)
    elif spoil == "foreign":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE t (x)")
        db.commit()
        db.close()
    else:
        StateStore(path, "Workplace" if spoil == "other station" else STATION).close()
        db = sqlite3.connect(path)
        if spoil == "newer":
            db.execute("PRAGMA user_version = 99")
        if spoil == "bad row":
            db.execute(
                "INSERT INTO sessions VALUES "
                "('P01', 5, 0, 'x', 1, 1, 0, 1, 0, 0.2, NULL, NULL, 0, 'lots', 0, NULL)"
            )
        db.commit()
        db.close()
    before = path.read_bytes()
    with pytest.raises(StateError) as caught, StateStore(path, STATION) as store:
        store.load(0.0, ZoneInfo("Asia/Shanghai"))
    assert str(path) in str(caught.value)
    assert message in str(caught.value)
    assert path.read_bytes() == before, "never reset"


class FrozenStore(StateStore):
    """A state file that stops being written, as if the daemon had been killed."""

    frozen = False

    def save(self, state: SavedState, now: float) -> None:
        if not self.frozen:
            super().save(state, now)


@pytest.mark.asyncio
@pytest.mark.loopback
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_daemon_resumes_after_downtime(station: Station, tmp_path: Path) -> None:
    """Killed while truck A charges; A leaves and B plugs in while the daemon is down; the
    restarted daemon closes A's row with what the plant delivered to A and counts B from its
    start; the month's peak is kept."""
    station = replace(station, piles=station.piles[:2]).with_control(period_s=5.0)
    start = local_time(station, "2026-11-25T10:00")
    visits = [
        Visit("A", start + 10, start + 1200, 400.0, 450.0, 600.0, 0.2, "P01"),
        Visit("B", start + 1500, start + 7200, 400.0, 450.0, 600.0, 0.2, "P01"),
    ]
    clock = VirtualClock(start)
    simulator = StationSimulator(station, clock, visits=visits)
    path = tmp_path / "state.sqlite"
    await simulator.start()
    try:
        # This test takes part in the clock: station time stands still whenever it is busy (a
        # daemon stopping or starting), so the plant never runs on by itself for hours.
        with FrozenStore(path, station.name) as store, clock.participant():
            first = Daemon.for_station(station, clock, policy="equal-share", store=store)
            running = asyncio.create_task(first.run())
            await clock.sleep_until(start + 900)
            store.frozen = True
            saved = {r["pile_session_id"]: dict(r) for r in _rows(path)}
            peak_before = first.control.month.peak_kw
            saved_peak = _month_peak(path)
            first.request_stop()
            await running
            await clock.sleep_until(start + 1800)  # A leaves at fallback power, B plugs in

            store.frozen = False
            second = Daemon.for_station(station, clock, policy="equal-share", store=store)
            running = asyncio.create_task(second.run())
            await clock.sleep_until(start + 1830)
            peak_after = second.control.month.peak_kw
            second.request_stop()
            await running
    finally:
        await simulator.stop()

    (a_id,) = saved
    assert saved[a_id]["energy_kwh"] > 20
    plant = simulator.plant
    a, b = _rows(path)
    assert (a["pile_session_id"], b["pile_session_id"]) == (a_id, a_id + 1)
    assert a["plugged_at"] == saved[a_id]["plugged_at"], "the same row, closed"
    assert start + 1800 <= a["ended_at"] < start + 1830
    assert a["energy_kwh"] == pytest.approx(plant.sessions["A"].delivered_kwh, abs=0.2)
    assert a["energy_kwh"] > saved[a_id]["energy_kwh"] + 5, "energy drawn while down counted"
    assert b["ended_at"] is None
    last = second.last_cycle
    assert last is not None
    reading = next(v.reading for v in last.snapshot.piles if v.id == "P01")
    assert reading is not None
    assert b["energy_kwh"] == pytest.approx(reading.session_energy_kwh, abs=0.2)
    total = reading.energy_import_kwh - a["start_counter_kwh"]
    assert a["energy_kwh"] + b["energy_kwh"] == pytest.approx(total, abs=1e-6)
    # The saver's thread is not a participant of the virtual clock: what it saved may be some
    # cycles old, never newer.
    assert saved_peak <= peak_before
    assert peak_after >= saved_peak > 0
