"""The checks every reading passes before the controller uses it, and the one follow judge
(drivers report what they told a pile and since when, the pile's own read-back and what it
draws; `FollowWatch` alone decides, with the station's thresholds): pure logic, no I/O."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import pytest

from base.config import Station
from base.devicemap import PileState
from base.events import DeviceRef, Event, Kind, Source
from control.cycle import Control
from control.decider import Policy
from control.follow import NOT_FOLLOWING, Deviation, FollowWatch
from control.sensing import STEADY_READINGS, Sensors
from control.site import PileView, SiteSnapshot
from drivers.errors import DeviceTimeout
from drivers.meter import MeterReading
from drivers.pile import PileReading

T0 = 1_800_000_000.0
GRACE_S = 20.0


def meter(kw: float, *, clock: float | None = None, limit: float | None = None) -> MeterReading:
    return MeterReading(power_kw=kw, device_time=clock, utility_limit_kw=limit)


def pile(kw: float, *, state: PileState = PileState.CHARGING, ev_max: float = 450.0) -> PileReading:
    return PileReading(
        state=state,
        power_kw=kw,
        applied_setpoint_kw=kw,
        max_charge_kw=480.0,
        max_discharge_kw=0.0,
        min_kw=10.0,
        energy_import_kwh=100.0,
        energy_export_kwh=0.0,
        session_energy_kwh=10.0,
        session_id=1,
        soc_pct=50.0,
        ev_max_kw=ev_max,
    )


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def sensors(reference: Station, events: list[str]) -> Sensors:
    return Sensors(reference, notify=lambda event: events.append(event.text))


def test_absurd_and_nan_grid_power_are_failures_not_measurements(
    sensors: Sensors, events: list[str], reference: Station
) -> None:
    sensors.take_meter(meter(1500.0), T0)
    assert sensors.snapshot(T0, reference.tariff).grid_kw == 1500.0
    for t, bad in ((T0 + 1, math.nan), (T0 + 2, 1e6), (T0 + 3, -1e6)):
        sensors.take_meter(meter(bad), t)
        assert sensors.snapshot(t, reference.tariff).meter_current is False
    assert events == ["meter grid: power reads nan: not a measurement"], (
        "logged once when it starts, not every cycle"
    )
    sensors.take_meter(meter(1510.0), T0 + 4)
    assert sensors.snapshot(T0 + 4, reference.tariff).grid_kw == 1510.0
    assert events[-1] == "meter grid: back to normal after 3 s"


def test_old_readings_are_not_used_as_fresh(sensors: Sensors, reference: Station) -> None:
    sensors.take_meter(meter(1500.0), T0)
    sensors.take_meter(DeviceTimeout("meter grid", "no answer"), T0 + 1)
    held = sensors.snapshot(T0 + 1, reference.tariff)
    assert held.grid_kw == 1500.0 and not held.meter_current, "it may hold, not raise"
    stale_at = T0 + reference.control.stale_after_s + 0.5
    assert sensors.snapshot(stale_at, reference.tariff).grid_kw is None


def test_a_meter_frozen_while_the_piles_move_is_caught_at_once(
    sensors: Sensors, events: list[str], reference: Station
) -> None:
    sensors.take_pile("P01", pile(100.0), T0)
    sensors.take_meter(meter(1500.0), T0)
    sensors.snapshot(T0, reference.tariff)
    sensors.take_pile("P01", pile(300.0), T0 + 1)
    sensors.snapshot(T0 + 1, reference.tariff)  # the piles moved 200 kW...
    sensors.take_meter(meter(1500.0), T0 + 2)  # ...the meter did not
    assert sensors.snapshot(T0 + 2, reference.tariff).meter_current is False
    assert events and "frozen" in events[-1] and "while the piles moved" in events[-1]
    # Still the same reading: still frozen, not flapping back.
    sensors.take_meter(meter(1500.0), T0 + 3)
    assert len(events) == 1
    sensors.take_meter(meter(1700.0), T0 + 4)
    assert events[-1].startswith("meter grid: back to normal")


def _cycle(
    sensors: Sensors, reference: Station, at: float, grid: MeterReading | None, kw: float
) -> SiteSnapshot:
    """One cycle as the daemon runs it: the meter (None: it could not be read), P01, the snapshot."""
    sensors.take_meter(DeviceTimeout("meter grid", "no answer") if grid is None else grid, at)
    sensors.take_pile("P01", pile(kw), at)
    return sensors.snapshot(at, reference.tariff)


def test_start_up_is_not_frozen(sensors: Sensors, events: list[str], reference: Station) -> None:
    """The first cycle's piles are not a move: before it the piles had not been measured. A
    value read again one period later has not yet had the chance to move."""
    _cycle(sensors, reference, T0, meter(1500.0), 300.0)
    _cycle(sensors, reference, T0 + 1, meter(1500.0), 340.0)
    assert sensors.meter.ok and events == []
    _cycle(sensors, reference, T0 + 2, meter(1540.0), 380.0)
    assert sensors.meter.ok and events == []


def test_a_reconnect_is_not_frozen(sensors: Sensors, events: list[str], reference: Station) -> None:
    """After the meter could not be read, its first value read again a period later (the poll
    and a subscription's first publish carry the same values) is no freeze, however the piles
    ramp meanwhile; the same value once more, a period after that, is."""
    _cycle(sensors, reference, T0, meter(1500.0), 100.0)
    for k in range(1, 6):
        _cycle(sensors, reference, T0 + k, None, 100.0)
    assert events == ["meter grid: no answer"]
    _cycle(sensors, reference, T0 + 6, meter(1600.0), 200.0)
    _cycle(sensors, reference, T0 + 7, meter(1600.0), 240.0)
    assert sensors.meter.ok, events
    assert events[-1].startswith("meter grid: back to normal")
    _cycle(sensors, reference, T0 + 8, meter(1600.0), 280.0)
    assert not sensors.meter.ok
    assert "frozen: every value unchanged for 2 s while the piles moved 140 kW" in events[-1]


def test_a_frozen_meter_that_drops_out_is_still_frozen_when_it_answers_the_same(
    sensors: Sensors, events: list[str], reference: Station
) -> None:
    _cycle(sensors, reference, T0, meter(1500.0), 100.0)
    _cycle(sensors, reference, T0 + 1, meter(1500.0), 200.0)
    _cycle(sensors, reference, T0 + 2, meter(1500.0), 300.0)
    assert "frozen" in events[-1]
    _cycle(sensors, reference, T0 + 3, None, 300.0)
    _cycle(sensors, reference, T0 + 4, meter(1500.0), 300.0)
    assert not sensors.meter.ok and len(events) == 1, "no recovery told in between"


def test_a_quiet_site_still_freezes_after_the_frozen_time(
    sensors: Sensors, reference: Station
) -> None:
    limit_s = reference.control.frozen_after_s
    for k in range(int(limit_s) + 2):
        sensors.take_meter(meter(800.0), T0 + k)
    assert sensors.meter.ok is False


def test_a_clock_jump_distrusts_the_meter_until_it_keeps_steady_time(
    sensors: Sensors, events: list[str]
) -> None:
    sensors.take_meter(meter(1500.0, clock=T0), T0)
    sensors.take_meter(meter(1501.0, clock=T0 + 3601), T0 + 1)
    assert sensors.meter.ok is False and "jumped by +3600 s" in events[-1]
    for k in range(STEADY_READINGS):
        sensors.take_meter(meter(1502.0 + k, clock=T0 + 3602 + k), T0 + 2 + k)
    assert sensors.meter.ok is True


def test_late_answers_are_reported_once_and_only_hold(
    sensors: Sensors, events: list[str], reference: Station
) -> None:
    for k in range(5):
        sensors.take_meter(meter(1500.0 + k), T0 + k, at=T0 + k - 3)
        assert sensors.snapshot(T0 + k, reference.tariff).meter_current is False
    assert events == [
        "meter grid: answers 3 s late: its readings may hold or lower power, not raise it"
    ]
    sensors.take_meter(meter(1510.0), T0 + 5)
    assert sensors.snapshot(T0 + 5, reference.tariff).meter_current is True
    assert events[-1] == "meter grid: answers in time again"


def test_pile_power_beyond_its_rating_is_a_failure(sensors: Sensors) -> None:
    sensors.take_pile("P01", pile(5000.0), T0)
    assert sensors.piles["P01"].ok is False


def test_a_lost_relay_keeps_the_utility_limit(sensors: Sensors, reference: Station) -> None:
    sensors.take_meter(meter(1500.0, limit=3000.0), T0)
    assert sensors.snapshot(T0, reference.tariff).limit_kw == 3000.0
    sensors.take_meter(DeviceTimeout("meter grid", "no answer"), T0 + 10)
    assert sensors.snapshot(T0 + 10, reference.tariff).limit_kw == 3000.0, "kept while lost"
    sensors.take_meter(meter(1500.0), T0 + 11)  # back, and no limit signal any more
    assert sensors.snapshot(T0 + 11, reference.tariff).limit_kw == reference.limit_kw


# -- piles that do not follow ---------------------------------------------------------------------


def view(reference: Station, reading: PileReading | None, *, armed: bool = True) -> PileView:
    return PileView(reference.pile("P01"), reading, reading, armed=armed)


def test_a_pile_drawing_more_than_told_is_flagged_and_its_excess_counted(
    reference: Station,
) -> None:
    told: list[Event] = []
    watch = FollowWatch(20.0, 2.0, 5.0, notify=told.append)
    watch.told("P01", T0, 200.0)
    for k in range(0, 40):
        watch.check(view(reference, pile(300.0)), T0 + k)
    assert watch.flagged("P01") is Deviation.OVER
    assert watch.excess_kw("P01") == pytest.approx(100.0)
    assert [e.text for e in told] == [
        "pile P01: not following: draws 300 kW, told 200 kW (counted as load it takes on its own)"
    ]
    # Following again, for three graces, clears it (once).
    for k in range(40, 110):
        watch.check(view(reference, pile(200.0)), T0 + k)
    assert (
        watch.flagged("P01") is None and told[-1].text == "pile P01: following its setpoint again"
    )
    # A fault of the pile, logged as a warning; its end, as information.
    assert [(e.source, e.kind, e.device, e.level) for e in told] == [
        (Source.CONTROL, Kind.FAULT, DeviceRef.pile("P01"), logging.WARNING),
        (Source.CONTROL, Kind.FAULT_CLEARED, DeviceRef.pile("P01"), logging.INFO),
    ]


def test_a_pile_ramping_on_its_way_is_not_flagged(reference: Station) -> None:
    watch = FollowWatch(20.0, 2.0, 5.0)
    watch.told("P01", T0, 0.0)
    watch.told("P01", T0 + 25, 400.0)
    for k in range(25, 40):  # 15 s into the ramp: within the grace
        watch.check(view(reference, pile(20.0 * (k - 25))), T0 + k)
    assert watch.flagged("P01") is None


def test_a_pile_drawing_less_is_offered_little_more_than_it_draws(reference: Station) -> None:
    watch = FollowWatch(20.0, 2.0, 5.0)
    watch.told("P01", T0, 400.0)
    for k in range(0, 40):
        watch.check(view(reference, pile(150.0)), T0 + k)
    assert watch.flagged("P01") is Deviation.UNDER
    assert watch.cap_kw(view(reference, pile(150.0))) == pytest.approx(150.0 + 0.05 * 480)
    # A vehicle that takes no more than it draws is not the pile's fault.
    other = FollowWatch(20.0, 2.0, 5.0)
    other.told("P01", T0, 400.0)
    for k in range(0, 40):
        other.check(view(reference, pile(150.0, ev_max=150.0)), T0 + k)
    assert other.flagged("P01") is None


def test_a_pile_never_armed_is_budgeted_at_its_rating(reference: Station) -> None:
    """Lost and never armed, a pile may fall back to anything: count its rating, not its
    configured fallback power."""
    control = Control(reference, policy=Policy.EQUAL_SHARE)
    sensors = Sensors(reference)
    sensors.take_meter(meter(2000.0), T0)
    for p in reference.piles:
        if p.id != "P01":
            sensors.take_pile(p.id, pile(0.0, state=PileState.AVAILABLE), T0)
    sensors.take_pile("P01", DeviceTimeout("pile P01", "no answer"), T0)
    armed = control.decide(sensors.snapshot(T0, reference.tariff), 1.0).budget_kw
    sensors.unarmed.add("P01")
    unarmed = control.decide(sensors.snapshot(T0, reference.tariff), 1.0).budget_kw
    config = reference.pile("P01")
    assert armed - unarmed == pytest.approx(config.max_kw - config.fallback_kw)


def test_the_limiter_starts_each_pile_from_what_it_applies(reference: Station) -> None:
    """After a restart a truck at 400 kW is not dropped to zero and ramped up again: the first
    setpoint starts from the 400 kW the pile applies."""
    control = Control(reference, policy=Policy.EQUAL_SHARE)
    sensors = Sensors(reference)
    sensors.take_meter(meter(2400.0), T0)
    for p in reference.piles:
        reading = pile(400.0) if p.id == "P01" else pile(0.0, state=PileState.AVAILABLE)
        sensors.take_pile(p.id, reading, T0)
    snapshot = sensors.snapshot(T0, reference.tariff)
    control.observe(snapshot, 1.0)
    setpoint = control.decide(snapshot, 1.0).setpoints["P01"]
    step = reference.control.ramp_kw_per_s
    assert 400.0 - step <= setpoint <= 400.0 + step


def test_the_worst_case_background_keeps_learning_while_a_pile_is_silent(
    reference: Station,
) -> None:
    """With a pile unreadable, grid minus the piles read bounds the site's own load from above:
    the worst case kept for a lost meter must not go stale meanwhile."""
    control = Control(reference, policy=Policy.EQUAL_SHARE)
    sensors = Sensors(reference)
    sensors.take_meter(meter(2600.0), T0)
    for p in reference.piles:
        reading = pile(500.0) if p.id == "P02" else pile(0.0, state=PileState.AVAILABLE)
        sensors.take_pile(p.id, reading, T0)
    sensors.take_pile("P01", DeviceTimeout("pile P01", "no answer"), T0)
    control.observe(sensors.snapshot(T0, reference.tariff), 1.0)
    assert control.background.highest(T0) == pytest.approx(2100.0)


# -- the one follow judge: what the pile says it applies ---------------------------------------


def told(
    kw: float,
    *,
    applied: float,
    since: float | None = T0,
    drawing: float | None = None,
    countdown: float | None = 30.0,
    unused: str = "",
    resolution: float = 0.0,
) -> PileReading:
    """P01 told `kw` at `since`, saying it applies `applied` and drawing `drawing` (default:
    what it applies)."""
    return replace(
        pile(applied if drawing is None else drawing),
        applied_setpoint_kw=applied,
        fallback_countdown_s=countdown,
        commanded_kw=kw,
        commanded_since=since,
        setpoint_unused=unused,
        resolution_kw=resolution,
    )


@pytest.fixture
def judge(reference: Station) -> FollowWatch:
    """The judge with the reference station's thresholds (20 s, 2 kW, 5 % of 480 kW = 24 kW)."""
    control = reference.control
    assert (control.follow_grace_s, control.follow_tolerance_kw) == (GRACE_S, 2.0)
    assert control.follow_tolerance_pct == 5.0 and reference.pile("P01").max_kw == 480.0
    return FollowWatch.of(control)


def test_a_mismatch_within_the_grace_is_not_judged_and_after_it_is(
    judge: FollowWatch, reference: Station
) -> None:
    """Applying 300 kW when told 100 kW: nothing for the grace the pile has to apply it, then a
    fault that says why."""
    config = reference.pile("P01")
    reading = told(100.0, applied=300.0)
    for at in (T0, T0 + 1, T0 + GRACE_S - 0.1):
        assert judge.misapplied(config, reading, at) == ""
        assert judge.judge(config, reading, at) is reading
    judged = judge.judge(config, reading, T0 + GRACE_S)
    assert judged.state is PileState.FAULT
    assert judged.fault_code == NOT_FOLLOWING
    assert judged.fault == "applies 300.0 kW, told 100.0 kW"
    assert replace(judged, state=reading.state, fault_code=0, fault="") == reading


def test_the_very_same_reading_again_is_judged_by_when_it_was_measured(
    reference: Station,
) -> None:
    """A pile at rest gives the very same reading step after step, and the sensors keep what
    their checks made of it, but only once its grace is over: within the grace it passes, after
    it it is at fault (the same fault again), and dated within the grace again (a late answer)
    it passes again."""
    sensors = Sensors(reference)
    reading = told(100.0, applied=300.0)
    judge = sensors.follow
    assert not judge.settled(reading, T0 + GRACE_S - 1) and judge.settled(reading, T0 + GRACE_S)
    assert judge.settled(told(100.0, applied=300.0, since=None), T0)

    def taken(at: float) -> PileReading | None:
        sensors.take_pile("P01", reading, at)
        return sensors.piles["P01"].value

    assert taken(T0 + 1) is reading
    assert taken(T0 + GRACE_S - 1) is reading
    faulted = taken(T0 + GRACE_S)
    assert faulted is not None and faulted.fault == "applies 300.0 kW, told 100.0 kW"
    assert taken(T0 + GRACE_S + 10) == faulted
    assert taken(T0 + 5) is reading


def test_the_grace_runs_from_when_the_setpoint_changed(
    judge: FollowWatch, reference: Station
) -> None:
    """A setpoint told at T0 + 60 is judged from then, not from the first one."""
    config = reference.pile("P01")
    late = told(100.0, applied=300.0, since=T0 + 60)
    assert judge.misapplied(config, late, T0 + 70) == ""
    assert judge.misapplied(config, late, T0 + 80) != ""


def test_one_tolerance_never_finer_than_the_device_step(reference: Station) -> None:
    """The tolerance is the largest of the station's kW, its share of the pile's rating and the
    step the device reports in."""
    config = reference.pile("P01")
    judge = FollowWatch.of(reference.control)
    after = T0 + GRACE_S
    assert judge.misapplied(config, told(100.0, applied=124.0), after) == "", "5 % of 480 kW"
    assert judge.misapplied(config, told(100.0, applied=124.5), after) != ""
    exact = FollowWatch.of(
        reference.with_control(follow_tolerance_kw=0.0, follow_tolerance_pct=0.0).control
    )
    assert exact.misapplied(config, told(10.0, applied=10.5), after) != ""
    assert exact.misapplied(config, told(10.0, applied=10.5, resolution=0.69), after) == ""
    assert exact.misapplied(config, told(10.0, applied=10.8, resolution=0.69), after) != ""


def test_what_is_not_a_failure_to_apply(judge: FollowWatch, reference: Station) -> None:
    """Applying less than told (the pile limits itself), riding out a discharge at 0, running on
    its fallback after the controller fell silent, or facts the driver could not date: no
    fault."""
    config = reference.pile("P01")
    after = T0 + 10 * GRACE_S
    for reading in (
        told(300.0, applied=100.0),
        told(-100.0, applied=0.0),
        told(0.0, applied=100.0, countdown=0.0),
        told(100.0, applied=300.0, since=None),
        replace(told(100.0, applied=300.0), commanded_kw=None),
    ):
        assert judge.judge(config, reading, after) is reading


def test_a_device_that_says_it_ignores_its_setpoint_is_at_fault_after_the_grace(
    judge: FollowWatch, reference: Station
) -> None:
    """In the device's words, whatever its countdown says; a code it reports itself is kept."""
    config = reference.pile("P01")
    said = "does not use its Modbus setpoint (1214 = 0)"
    reading = told(16.0, applied=6.0, unused=said, countdown=0.0)
    assert judge.misapplied(config, reading, T0 + 5) == ""
    judged = judge.judge(config, reading, T0 + GRACE_S)
    assert (judged.state, judged.fault, judged.fault_code) == (
        PileState.FAULT,
        said,
        NOT_FOLLOWING,
    )
    own = judge.judge(config, replace(reading, fault_code=7), T0 + GRACE_S)
    assert own.fault_code == 7 and own.fault == said


def test_the_draw_check_is_never_finer_than_the_device_step(reference: Station) -> None:
    """A charger told 10 kW that can only be given whole amps (0.69 kW) draws up to a step off
    without being flagged; beyond it, it is."""
    for drawing, flagged in ((10.6, None), (10.8, Deviation.OVER)):
        watch = FollowWatch(GRACE_S, 0.0, 0.0)
        watch.told("P01", T0, 10.0)
        reading = told(10.0, applied=10.0, drawing=drawing, resolution=0.69)
        for k in range(40):
            watch.check(view(reference, reading), T0 + k)
        assert watch.flagged("P01") is flagged, drawing


def _readings(reference: Station, p01: PileReading) -> dict[str, PileReading]:
    idle = replace(p01, state=PileState.AVAILABLE, power_kw=0.0, applied_setpoint_kw=0.0)
    idle = replace(idle, commanded_kw=None, commanded_since=None, ev_max_kw=None)
    return {p.id: p01 if p.id == "P01" else idle for p in reference.piles}


def test_the_controller_reports_a_misapplying_pile_as_a_device_fault(reference: Station) -> None:
    """Through the sensors (as the daemon and the fast simulation read piles) the controller
    logs the fault once, keeps the session going, and logs when it clears."""
    control = Control(reference, policy=Policy.EQUAL_SHARE)
    sensors = Sensors(reference, follow=control.follow)
    assert sensors.follow is control.follow
    events: list[str] = []
    kinds: list[Kind] = []

    def cycle(at: float, p01: PileReading) -> PileView:
        sensors.take_meter(MeterReading(power_kw=1000.0), at)
        for pid, reading in _readings(reference, p01).items():
            sensors.take_pile(pid, reading, at)
        snapshot = sensors.snapshot(at, reference.tariff)
        for event in control.observe(snapshot, 1.0):
            if event.device == DeviceRef.pile("P01"):
                kinds.append(event.kind)
            events.append(event.text)
        return next(v for v in snapshot.piles if v.id == "P01")

    cycle(T0, told(300.0, applied=300.0, since=T0 - 60))
    assert "P01" in control.sessions
    for k in range(1, int(GRACE_S) + 5):
        seen = cycle(T0 + k, told(100.0, applied=300.0, since=T0 + 1)).reading
    assert seen is not None and seen.state is PileState.FAULT
    assert seen.fault_code == NOT_FOLLOWING
    faults = [text for text in events if "fault" in text]
    assert faults == ["pile P01: fault: applies 300.0 kW, told 100.0 kW"]
    assert control.faults["P01"] == "applies 300.0 kW, told 100.0 kW"
    assert "P01" in control.sessions, "a pile in fault says nothing of its vehicle"
    cycle(T0 + 30, told(100.0, applied=100.0, since=T0 + 1))
    assert events[-1] == "pile P01: fault cleared"
    assert kinds == [Kind.FAULT, Kind.FAULT_CLEARED]


def test_the_sensors_judge_with_the_station_thresholds(reference: Station) -> None:
    """Without a judge handed in, the sensors judge with the station's own [control] settings."""
    slow = reference.with_control(follow_grace_s=60.0)
    sensors = Sensors(slow)
    reading = told(100.0, applied=300.0)
    sensors.take_pile("P01", reading, T0 + 30)
    assert sensors.piles["P01"].value is reading
    sensors.take_pile("P01", reading, T0 + 60)
    value = sensors.piles["P01"].value
    assert value is not None and value.state is PileState.FAULT


def test_a_pile_at_rest_keeps_its_view_and_a_new_reading_or_arming_makes_a_new_one(
    sensors: Sensors, reference: Station
) -> None:
    """The same reading next cycle gives the very same view (what it worked out is kept); a
    new reading, a failed read or a change of arming gives a view that says so."""
    pid = reference.piles[0].id
    first = pile(100.0, ev_max=200.0)
    sensors.take_pile(pid, first, T0)
    before = sensors.snapshot(T0, reference.tariff).piles[0]
    assert before.wants_kw == 200.0 and before.current
    sensors.take_pile(pid, first, T0 + 1)
    again = sensors.snapshot(T0 + 1, reference.tariff).piles[0]
    assert again is before
    sensors.take_pile(pid, pile(100.0, ev_max=50.0), T0 + 2)
    lower = sensors.snapshot(T0 + 2, reference.tariff).piles[0]
    assert lower is not before and lower.wants_kw == 50.0
    sensors.take_pile(pid, DeviceTimeout("pile", "no answer"), T0 + 3)
    held = sensors.snapshot(T0 + 3, reference.tariff).piles[0]
    assert held is not lower and not held.current and held.wants_kw == 50.0
    sensors.unarmed.add(pid)
    unarmed = sensors.snapshot(T0 + 3, reference.tariff).piles[0]
    assert not unarmed.armed and unarmed.on_its_own_kw == reference.piles[0].max_kw
