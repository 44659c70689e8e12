"""The controller's decisions, without any I/O: the same code runs the daemon and fast simulation.

`Control` follows the site through `SiteSnapshot`s. It keeps track of each vehicle's session (what
it needs and when it leaves), of the month's peak, and of the current plan; it says when a new
plan is due and builds the `scheduler.Problem` for it; and every cycle it turns the snapshot into
setpoints:

- a policy gives each vehicle a target: the plan's energy for the current slot (mpc,
  offline-optimal), or a baseline split of the headroom (equal-share, edf, llf);
- power a vehicle does not take is offered to the others the plan has charging in this slot;
- the limiter moves setpoints towards the targets at the ramp limit and never lets them add up
  to more than the measured headroom.

The daemon (`controller.daemon`) wraps it with Modbus I/O and tasks; `simulator.fast` wraps it
with the plant model and a loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from zoneinfo import ZoneInfo

import numpy as np

from base.config import Station
from base.devicemap import PileState
from base.tariff import Tariff
from control.estimate import Estimator
from control.follow import FollowWatch
from control.forecast import BackgroundForecast
from control.limiter import PileBounds, budget_kw, limit_setpoints
from control.reload import reconnects
from control.sessions import PastVisit, Session, Wish
from control.site import BackgroundWatch, PileView, SiteSnapshot
from drivers.pile import PileReading
from scheduler.allocation import Demand, fair_share, laxity_h, priority_fill
from scheduler.plan import FloatArray, Plan
from scheduler.problem import GroupLimit, Problem, Vehicle, Weights, month_starts, slot_boundaries

log = logging.getLogger(__name__)


# Finished visits this recent are remembered: yesterday's forecast today's arrivals, and all of
# them what a vehicle nobody told us about probably needs.
HISTORY_S = 14 * 86400

# Control periods up to this long hold rises back until released power is really given up.
HOLD_RISES_UP_TO_S = 10.0


class Policy(StrEnum):
    """How targets are chosen."""

    MPC = "mpc"
    OFFLINE = "offline-optimal"
    EQUAL_SHARE = "equal-share"
    EDF = "edf"
    LLF = "llf"
    UNCONTROLLED = "uncontrolled"

    @property
    def plans(self) -> bool:
        """True for the policies that follow an optimised plan."""
        return self in (Policy.MPC, Policy.OFFLINE)


@dataclass(frozen=True)
class Decision:
    """One cycle's outcome."""

    budget_kw: float
    targets: Mapping[str, float]
    setpoints: Mapping[str, float]


@dataclass
class MonthPeak:
    """The month's highest 15-minute average import, as the utility bills it, and the energy the
    current window has imported so far."""

    zone: ZoneInfo
    peak_kw: float = 0.0
    month: tuple[int, int] | None = None
    window_start: float | None = None
    window_kwh: float = 0.0

    def _window(self, when: float) -> float:
        local = datetime.fromtimestamp(when, self.zone)
        # Quarter hours start on whole seconds; rounding drops the float noise that would make
        # two times of one window (wall-clock times have fractions) look like two windows.
        return float(
            round(when - (local.minute % 15) * 60 - local.second - local.microsecond / 1e6)
        )

    def add(self, now: float, grid_kw: float, dt: float) -> None:
        """Account `grid_kw` drawn over the `dt` seconds before `now`."""
        middle = now - dt / 2
        local = datetime.fromtimestamp(middle, self.zone)
        if (local.year, local.month) != self.month:
            self.month, self.peak_kw = (local.year, local.month), 0.0
        start = self._window(middle)
        if start != self.window_start:
            self.window_start, self.window_kwh = start, 0.0
        self.window_kwh += max(grid_kw, 0.0) * dt / 3600
        # A window's average so far is a floor on what it will be: count it now.
        self.peak_kw = max(self.peak_kw, self.window_kwh / 0.25)

    def elapsed_h(self, now: float) -> float:
        """Hours of the current window before `now`."""
        return (now - self._window(now)) / 3600

    def so_far_kwh(self, now: float) -> float:
        """What the window containing `now` has imported before `now`."""
        return self.window_kwh if self.window_start == self._window(now) else 0.0


@dataclass(frozen=True)
class ControlState:
    """What `Control` keeps across a restart: sessions in progress, the month's peak, the plan it
    follows (with the site load that plan accepted), finished visits and wishes not yet used.

    Everything else (setpoints, faults, the background estimate) is measured again within seconds.
    """

    sessions: tuple[Session, ...] = ()
    month: MonthPeak | None = None
    plan: Plan | None = None
    planned_at: float | None = None
    plan_site_kw: FloatArray | None = None
    history: tuple[PastVisit, ...] = ()
    wishes: Mapping[tuple[str, int], Wish] = field(default_factory=dict)


def _net_counter(reading: PileReading) -> float:
    """The pile's lifetime energy counters, import less export (kWh)."""
    return reading.energy_import_kwh - reading.energy_export_kwh


def group_limits(station: Station) -> tuple[GroupLimit, ...]:
    """A station's group and phase limits as the scheduler takes them."""
    groups = [GroupLimit(g.name, dict.fromkeys(g.piles, 1.0), g.limit_kw) for g in station.groups]
    phases = station.phase_limits
    if phases is not None:
        three = [p.id for p in station.piles if p.phases == 3]
        for name, amps in (("L1", phases.l1_a), ("L2", phases.l2_a), ("L3", phases.l3_a)):
            single = [p.id for p in station.piles if p.phases == 1 and p.phase == name]
            groups.append(GroupLimit.phase(name, amps, phases.voltage_v, single, three))
    return tuple(groups)


class Control:
    """Sessions, plans and setpoints for one station."""

    def __init__(
        self,
        station: Station,
        *,
        policy: Policy | str | None = None,
        forecast: BackgroundForecast | None = None,
        plan_period_s: float | None = None,
    ) -> None:
        self.station = station
        self.settings = station.scheduler
        self.policy = Policy(policy or self.settings.policy)
        self.zone = ZoneInfo(station.info.timezone)
        self.forecast = forecast or BackgroundForecast(station.background.profile_kw, self.zone)
        self.plan_period_s = plan_period_s or self.settings.plan_period_s
        self.sessions: dict[str, Session] = {}
        self.faults: dict[str, str] = {}
        self.wishes: dict[tuple[str, int], Wish] = {}
        self.setpoints: dict[str, float] = {p.id: 0.0 for p in station.piles}
        # Piles whose applied setpoint has been read: the limiter starts each from what it
        # applies (after a restart, what the last run told it), not from zero.
        self._seeded: set[str] = set()
        self.plan: Plan | None = None
        self.planned_at: float | None = None
        control = station.control
        self.background = BackgroundWatch(window_s=control.background_window_s)
        self._notes: list[str] = []
        self.follow = FollowWatch.of(control, notify=lambda _now, text: self._notes.append(text))
        self._now: float | None = None
        self.month = MonthPeak(self.zone)
        self.limit_kw = station.limit_kw
        self._why: str | None = "first plan"
        self._plan_serial = 0
        self._plan_site_kw: np.ndarray | None = None
        self.history: list[PastVisit] = []
        self.estimator = Estimator(self.zone)
        # Told of every session that ends (the fast simulation keeps its books with it).
        self.on_departure: Callable[[PastVisit], None] | None = None
        self._group_budgets = [(dict(g.members), g.limit_kw) for g in self.group_limits()]
        self._rise_tokens = 0.0
        self._last_background: float | None = None
        self._prices: dict[float, float] = {}
        self._prices_of: Tariff | None = None

    # -- what we are told ------------------------------------------------------------------

    def wish(self, pile: str, session_id: int, wish: Wish) -> None:
        """Record what is known about the session `session_id` at `pile` (before or after it starts)."""
        self.wishes[(pile, session_id)] = wish
        session = self.sessions.get(pile)
        if session is not None and session.session_id == session_id:
            self._apply_wish(session, wish)
            self._why = self._why or f"new information on {pile}"

    # -- following the site --------------------------------------------------------------------

    def observe(self, snapshot: SiteSnapshot, dt: float) -> list[str]:
        """Update sessions, the month's peak and the background estimate; return events."""
        now = snapshot.time
        events: list[str] = []
        for view in snapshot.piles:
            self.follow.check(view, now)
            if view.id not in self._seeded and view.reading is not None and view.current:
                self._seeded.add(view.id)
                self.setpoints[view.id] = PileBounds(
                    view.min_kw, view.max_kw, view.max_discharge_kw
                ).clamp(view.reading.applied_setpoint_kw)
        events.extend(self._notes)
        self._notes.clear()
        if snapshot.grid_kw is not None and snapshot.meter_current:
            self.month.add(now, snapshot.grid_kw, dt)
        background = snapshot.background_kw
        if background is not None and snapshot.meter_current:
            self.background.add(now, background)
            self._last_background = background
        elif snapshot.grid_kw is not None and snapshot.meter_current:
            # A pile we cannot read draws something between nothing and its fallback: grid minus
            # the piles we can read bounds the site's own load from above. The worst case to
            # assume if the meter is lost too must keep learning while a pile is silent.
            self.background.add(now, snapshot.grid_kw - snapshot.piles_kw)
        if abs(snapshot.limit_kw - self.limit_kw) > 1.0:
            events.append(f"site limit now {snapshot.limit_kw:.0f} kW (was {self.limit_kw:.0f} kW)")
            self._why = self._why or "limit changed"
        self.limit_kw = snapshot.limit_kw
        for view in snapshot.piles:
            reading = view.reading
            if reading is None:
                continue
            fault = reading.fault or (
                f"reports fault code {reading.fault_code}" if reading.fault_code else ""
            )
            if fault != self.faults.get(view.id, ""):
                if fault:
                    events.append(f"pile {view.id}: fault: {fault}")
                else:
                    events.append(f"pile {view.id}: fault cleared")
                self.faults[view.id] = fault
            session = self.sessions.get(view.id)
            if reading.state is PileState.FAULT and (
                session is None or reading.session_id == session.session_id
            ):
                # A pile in fault says nothing of its vehicle: the session goes on.
                continue
            if session is not None and (
                not reading.state.vehicle_present or reading.session_id != session.session_id
            ):
                if reading.session_id == session.session_id:
                    # The pile's counter holds the session's last energy after the unplug.
                    session.delivered_kwh = max(session.delivered_kwh, reading.session_energy_kwh)
                elif session.start_counter_kwh is not None:
                    # A new session began before we saw this one end: what the pile's lifetime
                    # counter rose by up to the new session's start was this one's (the state
                    # file's ledger closes sessions the same way).
                    now_at = _net_counter(reading) - reading.session_energy_kwh
                    session.delivered_kwh = max(
                        session.delivered_kwh, now_at - session.start_counter_kwh
                    )
                del self.sessions[view.id]
                visit = PastVisit.of(session, now)
                self.history.append(visit)
                if self.on_departure is not None:
                    self.on_departure(replace(visit, delivered_kwh=session.delivered_kwh))
                events.append(
                    f"{view.id}: vehicle left after {session.delivered_kwh:.0f} of {session.need_kwh:.0f} kWh"
                )
                self._why = self._why or f"departure at {view.id}"
                session = None
            if reading.state.vehicle_present and session is None:
                session = self._start_session(view, now)
                self.sessions[view.id] = session
                soc = "" if reading.soc_pct is None else f" at SoC {reading.soc_pct:.0f}%"
                events.append(
                    f"{view.id}: vehicle connected{soc}, needs {session.need_kwh:.0f} kWh"
                )
                self._why = self._why or f"arrival at {view.id}"
            if session is not None:
                session.delivered_kwh = reading.session_energy_kwh
                session.soc = None if reading.soc_pct is None else reading.soc_pct / 100
                if reading.ev_max_kw is not None:
                    session.max_kw = max(session.max_kw, min(reading.ev_max_kw, view.max_kw))
                    session.battery_kw = max(session.battery_kw or 0.0, reading.ev_max_kw)
                if reading.state is PileState.FINISHED and session.remaining_kwh > 0:
                    # Full before it got what it was said (or guessed) to need: it needs no more.
                    events.append(
                        f"{view.id}: vehicle full after {session.delivered_kwh:.1f} of "
                        f"{session.need_kwh:.1f} kWh"
                    )
                    session.need_kwh = session.delivered_kwh
                    self._why = self._why or f"vehicle full at {view.id}"
                if session.departure_known and now >= session.departure:
                    events.append(f"{view.id}: vehicle still here after its departure time")
                    session.departure_known = False
                if not session.departure_known and session.departure <= now + 60:
                    # Still here after we expected it to leave: it stays a while longer.
                    session.departure = now + self.settings.slot_minutes * 60
        return events

    def _start_session(self, view: PileView, now: float) -> Session:
        reading = view.reading
        assert reading is not None
        wish = self.wishes.pop((view.id, reading.session_id), Wish())
        settings = self.settings
        capacity = reading.ev_capacity_kwh
        soc = None if reading.soc_pct is None else reading.soc_pct / 100
        # Nobody said? Vehicles that came at this time of day before tell (`control.estimate`).
        guess = self.estimator.estimate(self.history, now)
        if capacity is not None and soc is not None:
            need = Vehicle.energy_for_soc(
                wish.target_soc or settings.target_soc, soc, capacity, settings.efficiency
            )
        else:
            need = settings.default_energy_kwh if guess is None else guess.energy_kwh
        stay = settings.default_dwell_h * 3600 if guess is None else guess.stay_s
        session = Session(
            vehicle_id=f"{view.id}#{reading.session_id}",
            pile=view.id,
            session_id=reading.session_id,
            plugged_at=now,
            need_kwh=need,
            departure=now + stay,
            departure_known=False,
            max_kw=view.max_kw
            if reading.ev_max_kw is None
            else min(view.max_kw, reading.ev_max_kw),
            delivered_kwh=reading.session_energy_kwh,
            capacity_kwh=capacity,
            soc=soc,
            start_counter_kwh=_net_counter(reading) - reading.session_energy_kwh,
        )
        self._apply_wish(session, wish)
        return session

    def _apply_wish(self, session: Session, wish: Wish) -> None:
        if wish.vehicle_id:
            session.vehicle_id = wish.vehicle_id
        if wish.energy_kwh is not None:
            session.need_kwh = wish.energy_kwh
        elif (
            wish.target_soc is not None
            and session.capacity_kwh is not None
            and session.soc is not None
        ):
            session.need_kwh = session.delivered_kwh + Vehicle.energy_for_soc(
                wish.target_soc, session.soc, session.capacity_kwh, self.settings.efficiency
            )
        if wish.departure is not None:
            session.departure, session.departure_known = wish.departure, True
            session.said_departure = wish.departure
        pile = self.station.pile(session.pile)
        session.v2g = wish.v2g and pile.bidirectional
        session.min_soc = wish.min_soc

    # -- a reloaded config -------------------------------------------------------------------

    def reconfigure(
        self, station: Station, now: float, *, policy: Policy | str | None = None
    ) -> list[str]:
        """Follow a reloaded config of this station from `now` on; return events.

        The piles that remain keep their sessions, setpoints and faults; the month's peak, the
        background estimate and the visits remembered for forecasting are kept. A pile the new
        config does not have, or reaches differently (endpoint, map), starts over: its session
        ends there. Tariff, limits and settings take effect at once, and a new plan is due.
        `policy` overrides the config's, as at construction.
        """
        old = self.station
        before = {p.id: p for p in old.piles}
        kept = {
            p.id
            for p in station.piles
            if p.id in before and not reconnects(old, station, before[p.id], p)
        }
        ids = {p.id for p in station.piles}
        events: list[str] = []
        for pile in [pid for pid in self.sessions if pid not in kept]:
            session = self.sessions.pop(pile)
            self.history.append(PastVisit.of(session, now))
            events.append(
                f"{pile}: {'reconnected' if pile in ids else 'removed'} by a reload; its session "
                f"ended after {session.delivered_kwh:.0f} of {session.need_kwh:.0f} kWh"
            )
        for pid in [pid for pid in self.setpoints if pid not in kept]:
            del self.setpoints[pid]
        for pile_config in station.piles:
            self.setpoints.setdefault(pile_config.id, 0.0)
        self.faults = {pid: fault for pid, fault in self.faults.items() if pid in kept}
        self.wishes = {
            key: wish
            for key, wish in self.wishes.items()
            if key[0] in kept or (key[0] not in before and key[0] in ids)
        }
        if self.plan_period_s == self.settings.plan_period_s:
            self.plan_period_s = station.scheduler.plan_period_s
        self.station = station
        self.settings = station.scheduler
        self.policy = Policy(policy or self.settings.policy)
        if station.info.timezone != old.info.timezone:
            self.zone = ZoneInfo(station.info.timezone)
            self.month.zone = self.zone
        if station.background != old.background or station.info.timezone != old.info.timezone:
            self.forecast = BackgroundForecast(station.background.profile_kw, self.zone)
        self._group_budgets = [(dict(g.members), g.limit_kw) for g in self.group_limits()]
        self._why = self._why or "config reloaded"
        return events

    # -- plans -------------------------------------------------------------------------------

    def plan_due(self, now: float) -> str | None:
        """Why a new plan is needed now, or None."""
        if self.policy is not Policy.MPC:
            return None
        if self.plan is None:
            return self._why or "first plan"
        if self._why:
            return self._why
        if now >= self.plan.end:
            return "plan ran out"
        if self.planned_at is not None and now - self.planned_at >= self.plan_period_s:
            return "period"
        for session in self.sessions.values():
            gap = self._slot_progress_gap(session, now)
            if abs(gap) > self.settings.deviation_kwh:
                return f"{session.pile} is {gap:+.1f} kWh off its plan"
        return None

    def problem(self, snapshot: SiteSnapshot) -> Problem:
        """The scheduling problem for the site as it is now."""
        now = snapshot.time
        settings = self.settings
        boundaries = slot_boundaries(
            now,
            self.zone,
            horizon_s=settings.horizon_h * 3600,
            slot_s=settings.slot_minutes * 60,
            later=[(hours * 3600, minutes * 60) for hours, minutes in settings.later_slots],
        )
        tariff = self.station.tariff
        mids = (boundaries[:-1] + boundaries[1:]) / 2
        slots = len(mids)
        views = {v.id: v for v in snapshot.piles}
        early_s = self.estimator.early_s(self.history)
        vehicles = []
        for session in self.sessions.values():
            view = views.get(session.pile)
            if view is None or view.reading is None:
                continue
            vehicles.append(
                Vehicle(
                    id=session.vehicle_id,
                    pile=session.pile,
                    energy_kwh=session.remaining_kwh,
                    departure=self._plan_departure(session, now, early_s),
                    max_kw=max(min(session.max_kw, view.max_kw), 1e-3),
                    min_kw=min(view.min_kw, view.max_kw),
                    efficiency=settings.efficiency,
                    v2g=session.v2g
                    and session.capacity_kwh is not None
                    and session.soc is not None,
                    max_discharge_kw=view.max_discharge_kw if session.v2g else 0.0,
                    capacity_kwh=session.capacity_kwh,
                    soc=session.soc,
                    min_soc=session.min_soc,
                    taper_soc=settings.taper_soc,
                    accepts_kw=session.battery_kw,
                )
            )
        vehicles.extend(self._expected_arrivals(now, float(boundaries[-1])))
        limit = max(snapshot.limit_kw - self.station.control.reserve_kw, 0.0)
        return Problem(
            boundaries=boundaries,
            limit_kw=np.full(slots, limit),
            background_kw=self.forecast(boundaries, now, self._last_background),
            import_price=np.array([self._price_at(tariff, float(t)) for t in mids]),
            export_price=np.full(slots, tariff.export_price),
            vehicles=tuple(vehicles),
            peak_kw=self.month.peak_kw,
            demand_charge=tariff.demand_charge_per_kw_month,
            groups=self.group_limits(),
            ramp_kw_per_min=settings.ramp_kw_per_min,
            piles_kw_now=snapshot.piles_kw,
            weights=Weights(
                unmet_per_kwh=settings.unmet_penalty_per_kwh,
                expected_unmet_per_kwh=settings.expected_unmet_penalty_per_kwh,
                degradation_per_kwh=settings.degradation_per_kwh,
            ),
            new_months=month_starts(now, float(boundaries[-1]), self.zone),
            demand_window_s=900.0,
            # The part of the billing window already gone counts at least at the month's peak:
            # a plan must not save room early in a window to spike at its end.
            window_import_kwh=max(
                self.month.so_far_kwh(now), self.month.peak_kw * self.month.elapsed_h(now)
            ),
        )

    def _price_at(self, tariff: Tariff, when: float) -> float:
        """The tariff's price at `when`, remembered: plans a minute apart ask for the same slots."""
        if tariff is not self._prices_of or len(self._prices) > 4096:
            self._prices_of, self._prices = tariff, {}
        price = self._prices.get(when)
        if price is None:
            price = self._prices[when] = tariff.price_at(when)
        return price

    def _plan_departure(self, session: Session, now: float, early_s: float) -> float:
        """When a plan should have a vehicle done: as many seconds before its stated departure as
        drivers here tend to leave early (`Estimator.early_s`); a vehicle still here after that,
        or after its expected departure, is planned to stay a while longer."""
        departure = session.departure - (early_s if session.departure_known else 0.0)
        return max(departure, now + 60.0)

    def _expected_arrivals(self, now: float, horizon_end: float) -> list[Vehicle]:
        """The vehicles yesterday says will come: each visit of the last 24 hours, again a day
        later, on the pile it would get (queueing when all are busy, as drivers do).

        Planning for them keeps headroom, and the month's peak, for the trucks that come every
        afternoon; a plan that only knew the vehicles plugged in now would use the headroom up
        and set a new peak when they arrive.
        """
        if not self.settings.forecast_arrivals:
            return []
        if self.history and self.history[0].plugged_at < now - HISTORY_S:
            self.history = [h for h in self.history if h.plugged_at >= now - HISTORY_S]
        busy_until = {p.id: now for p in self.station.piles}
        for session in self.sessions.values():
            busy_until[session.pile] = max(session.departure, now)
        ratings = {p.id: p.max_kw for p in self.station.piles}
        expected = []
        named: dict[str, int] = {}
        yesterday = [h for h in self.history if h.plugged_at + 86400 > now + 300]
        for past in sorted(yesterday, key=lambda h: h.plugged_at):
            arrival = past.plugged_at + 86400
            departure = min(past.left_at + 86400, horizon_end)
            if arrival <= now + 300 or arrival >= horizon_end or past.wanted_kwh <= 0:
                continue
            pile = min(busy_until, key=lambda p: (max(busy_until[p], arrival), -ratings[p]))
            start = max(busy_until[pile], arrival)
            if start >= departure - 60:
                continue
            busy_until[pile] = departure
            max_kw = min(past.max_kw, ratings[pile])
            energy = min(past.wanted_kwh, max_kw * (departure - start) / 3600)
            # Named by the visit it repeats, so the LP keeps its shape between plans.
            name = f"expected-{past.plugged_at:.0f}-{past.vehicle_id}"
            named[name] = named.get(name, 0) + 1
            expected.append(
                Vehicle(
                    id=name if named[name] == 1 else f"{name}-{named[name]}",
                    pile=pile,
                    energy_kwh=energy,
                    departure=departure,
                    max_kw=max_kw,
                    efficiency=self.settings.efficiency,
                    arrival=start,
                    expected=True,
                )
            )
        return expected

    def group_limits(self) -> tuple[GroupLimit, ...]:
        """The station's group and phase limits as the scheduler takes them."""
        return group_limits(self.station)

    def adopt(self, plan: Plan, now: float, problem: Problem | None = None) -> None:
        """Follow `plan` from now on (a plan without a schedule is ignored).

        With the `problem` it was made for, the fast loop also keeps the site under the load the
        plan accepted for the current slot (or the month's peak, if higher): power a vehicle does
        not take, or a catch-up after a shortfall, must not set a peak the plan avoided at a price.
        """
        if not plan.status.has_schedule:
            return
        self.plan, self.planned_at, self._why = plan, now, None
        self._plan_serial += 1
        self._plan_site_kw = None
        if problem is not None:
            expected = {v.id for v in problem.vehicles if v.expected}
            site = problem.background_kw.copy()
            for vid, series in plan.power_kw.items():
                if vid not in expected:
                    site += series
            self._plan_site_kw = site

    # -- every cycle ---------------------------------------------------------------------------

    def decide(self, snapshot: SiteSnapshot, dt: float) -> Decision:
        """Setpoints for every pile this cycle."""
        control = self.station.control
        now = snapshot.time
        controlled = [v for v in snapshot.piles if v.reading is not None]
        blind = [v for v in snapshot.piles if v.reading is None]
        if self.policy is Policy.UNCONTROLLED:
            # The baseline the others are measured against: every vehicle at full power.
            full = {v.id: (v.max_kw if v.vehicle_present else 0.0) for v in controlled}
            full.update({v.id: self.setpoints.get(v.id, 0.0) for v in blind})
            return Decision(math.inf, full, full)
        worst = self.background.highest(now)
        worst_background = (
            worst + control.background_margin_kw if worst is not None else snapshot.limit_kw
        )
        self._now = now
        # What piles that do not follow draw beyond their setpoints is load we do not control.
        extra = sum(self.follow.excess_kw(v.id) for v in controlled)
        for view in blind:
            assumed = max(self.setpoints.get(view.id, 0.0), view.on_its_own_kw)
            if snapshot.grid_kw is not None and view.last is not None:
                extra += max(0.0, assumed - view.last.power_kw)
            else:
                extra += assumed
        budget = budget_kw(
            limit_kw=snapshot.limit_kw,
            reserve_kw=control.reserve_kw,
            grid_kw=snapshot.grid_kw,
            controlled_kw=sum(v.reading.power_kw for v in controlled if v.reading is not None),
            worst_uncontrolled_kw=worst_background,
            unreachable_extra_kw=extra,
        )
        if snapshot.grid_kw is None:
            # Blind, the worst case is an assumption, not a measurement: come down to it at the
            # ramp limit rather than all at once.
            step = control.ramp_kw_per_s * dt
            gentle = sum(max(self.setpoints.get(v.id, 0.0) - step, 0.0) for v in controlled)
            budget = max(budget, gentle)
        plan_budget = budget
        slot = None if self.plan is None else self.plan.slot_at(now)
        # Holding the site to the load the plan accepted only pays where a new peak costs: with
        # a demand charge. Without one it would only strand headroom a vehicle could use.
        if (
            self.policy.plans
            and self.station.tariff.demand_charge_per_kw_month > 0
            and self._plan_site_kw is not None
            and slot is not None
            and snapshot.grid_kw is not None
        ):
            controlled_kw = sum(v.reading.power_kw for v in controlled if v.reading is not None)
            # A reserve's worth above what the plan accepted leaves room to catch up on what its
            # coarse slots and forecasts got wrong.
            allowed = max(self.month.peak_kw, float(self._plan_site_kw[slot])) + control.reserve_kw
            plan_budget = min(budget, allowed - (snapshot.grid_kw - controlled_kw))
        targets = self._targets(snapshot, controlled, plan_budget, dt)
        for view in controlled:
            cap = self.follow.cap_kw(view)
            if cap is not None:
                targets[view.id] = min(targets.get(view.id, 0.0), cap)
            if not (snapshot.meter_current and view.current):
                # Data from an earlier cycle may hold or lower power, never raise it.
                targets[view.id] = min(targets.get(view.id, 0.0), self.setpoints.get(view.id, 0.0))
        bounds = {v.id: PileBounds(v.min_kw, v.max_kw, v.max_discharge_kw) for v in controlled}
        rate = self.settings.ramp_kw_per_min
        allowance = None
        if rate is not None:
            # A token bucket: the site's total may rise by `rate` a minute, with up to half a
            # minute's (or one cycle's) worth saved up.
            self._rise_tokens = min(self._rise_tokens + rate * dt / 60, rate * max(dt, 30.0) / 60)
            allowance = self._rise_tokens
        setpoints = limit_setpoints(
            targets,
            self.setpoints,
            bounds,
            budget,
            control.ramp_kw_per_s * dt,
            allowance,
            groups=self._group_budgets,
            drawing={v.id: v.reading.power_kw for v in controlled if v.reading is not None},
            # A loop of seconds sees piles still coming down from the last cycle; a fast
            # simulation's minute-long step has them down within the step, where holding rises
            # back a whole step would only waste power.
            hold_rises=dt <= HOLD_RISES_UP_TO_S,
        )
        if rate is not None:
            rose = sum(setpoints.values()) - sum(self.setpoints.get(pid, 0.0) for pid in setpoints)
            self._rise_tokens = max(0.0, self._rise_tokens - max(rose, 0.0))
        for view in blind:
            # Repeat the last setpoint (it keeps the fail-safe armed if the write gets through),
            # but never more than the pile would fall back to anyway.
            setpoints[view.id] = min(
                self.setpoints.get(view.id, 0.0), max(view.config.fallback_kw, 0.0)
            )
        return Decision(budget, targets, setpoints)

    def committed(self, written: Mapping[str, float]) -> None:
        """The setpoints that were actually written (this cycle's, after `decide`)."""
        self.setpoints.update(written)
        if self._now is not None:
            for pid, kw in written.items():
                self.follow.told(pid, self._now, kw)

    def _targets(
        self, snapshot: SiteSnapshot, controlled: list[PileView], budget: float, dt: float
    ) -> dict[str, float]:
        now = snapshot.time
        charging = [v for v in controlled if v.wants_kw > 0 and v.id in self.sessions]
        targets = {v.id: 0.0 for v in controlled}

        def most(view: PileView) -> float:
            # Never more than it can take until the next decision: what it takes, and what it
            # still needs over the cycle (offering more would only strand headroom).
            return min(view.wants_kw, self.sessions[view.id].remaining_kwh * 3600.0 / dt)

        if self.policy is Policy.EQUAL_SHARE:
            demands = [
                Demand(v.id, v.min_kw, most(v), self.sessions[v.id].plugged_at) for v in charging
            ]
            targets.update(fair_share(budget, demands))
        elif self.policy is Policy.EDF:
            demands = [
                Demand(v.id, v.min_kw, most(v), self.sessions[v.id].departure) for v in charging
            ]
            targets.update(priority_fill(budget, demands))
        elif self.policy is Policy.LLF or self.plan is None:
            demands = [
                Demand(v.id, v.min_kw, most(v), self._laxity(self.sessions[v.id], v, now))
                for v in charging
            ]
            targets.update(priority_fill(budget, demands))
        else:
            targets.update(self._follow_plan(snapshot, controlled, budget))
        return targets

    def _laxity(self, session: Session, view: PileView, now: float) -> float:
        return laxity_h(now, session.departure, session.remaining_kwh, max(view.wants_kw, 1e-3))

    def _follow_plan(
        self, snapshot: SiteSnapshot, controlled: list[PileView], budget: float
    ) -> dict[str, float]:
        plan = self.plan
        assert plan is not None
        now = snapshot.time
        slot = plan.slot_at(now)
        wanted: dict[str, float] = {}
        # The most each vehicle can use: what it takes, and what it still needs by the slot's end.
        most: dict[str, float] = {}
        for view in controlled:
            session = self.sessions.get(view.id)
            if session is None or slot is None:
                continue
            self._track(session, now)
            # Catch up on (or hold back from) the plan's energy up to the end of this slot, so
            # a shortfall earlier in the plan is made good as soon as the vehicle allows.
            slot_end = min(float(plan.boundaries[slot + 1]), session.departure)
            left_h = max((slot_end - now) / 3600, 1e-6)
            planned = plan.energy_between(session.vehicle_id, session.plan_from, slot_end)
            still = planned - (session.delivered_kwh - session.plan_baseline_kwh)
            power = still / left_h
            if plan.unmet_kwh.get(session.vehicle_id, 0.0) > 0.5:
                # The plan cannot give this vehicle all it needs: every kWh counts, so it takes
                # what it can (the limiter still keeps the site safe). On the development days
                # this delivers a little more than following the plan (README, Real sessions).
                power = view.wants_kw
            most[view.id] = min(view.wants_kw, session.remaining_kwh / left_h)
            power = min(power, most[view.id]) if power > 0 else max(power, -view.max_discharge_kw)
            wanted[view.id] = power
        # Power a vehicle does not take goes to the others the plan charges in this slot.
        spare = 0.0
        for view in controlled:
            session = self.sessions.get(view.id)
            if session is None or slot is None:
                continue
            planned = plan.power_at(session.vehicle_id, now)
            if planned > 0 and wanted.get(view.id, 0.0) < planned:
                spare += planned - max(wanted.get(view.id, 0.0), 0.0)
        if spare > 1e-6:
            room = [
                Demand(v.id, 0.0, most[v.id] - wanted[v.id])
                for v in controlled
                if wanted.get(v.id, 0.0) > 0 and most[v.id] > wanted[v.id]
            ]
            for pid, extra in fair_share(spare, room).items():
                wanted[pid] += extra
        total = sum(kw for kw in wanted.values() if kw > 0)
        if total > budget:
            # Less headroom than the plan assumed: the vehicles with the least time to spare
            # keep their power, the others wait for the next plan.
            views = {v.id: v for v in controlled}
            cut = priority_fill(
                budget + sum(-kw for kw in wanted.values() if kw < 0),
                [
                    Demand(pid, 0.0, kw, self._laxity(self.sessions[pid], views[pid], now))
                    for pid, kw in wanted.items()
                    if kw > 0
                ],
            )
            wanted.update(cut)
        return wanted

    def _track(self, session: Session, now: float) -> None:
        """Start measuring a session's progress against the current plan."""
        if session.plan_serial != self._plan_serial:
            plan = self.plan
            assert plan is not None
            slot = plan.slot_at(now)
            # From the start of the slot the vehicle is in: what the plan gives it in that slot
            # it must get there, even if it plugged in half-way through.
            session.plan_serial = self._plan_serial
            session.plan_from = now if slot is None else float(plan.boundaries[slot])
            session.plan_baseline_kwh = session.delivered_kwh

    def _slot_progress_gap(self, session: Session, now: float) -> float:
        """Delivered minus planned energy since the plan was adopted (kWh)."""
        plan = self.plan
        if plan is None or session.plan_serial != self._plan_serial:
            return 0.0
        planned = plan.energy_between(session.vehicle_id, session.plan_from, now)
        return (session.delivered_kwh - session.plan_baseline_kwh) - planned

    # -- across restarts -----------------------------------------------------------------------

    def export_state(self) -> ControlState:
        """A copy of what the store saves from `Control` (cheap: called about once a second).

        Sessions are saved from the ledger's records and finished visits are its closed rows, so
        neither is copied here; `StateStore.load` gives both back for `restore_state`.
        """
        return ControlState(
            month=replace(self.month),
            plan=self.plan,
            planned_at=self.planned_at,
            plan_site_kw=self._plan_site_kw,
            wishes=dict(self.wishes),
        )

    def restore_state(self, state: ControlState, now: float) -> list[str]:
        """Take up what an earlier run saved, before the first observation; return what was
        taken up and what was dropped, for the log.

        Sessions come back as they were; the first reading of their pile then either continues
        them (same pile session id) or ends them as usual. The month's peak comes back if it is
        still this month's; the plan if it still covers `now`.
        """
        notes = []
        known = {p.id for p in self.station.piles}
        for saved in state.sessions:
            if saved.pile not in known:
                notes.append(f"session on {saved.pile} dropped: the station has no such pile")
                continue
            self.sessions[saved.pile] = replace(saved, plan_serial=None)
        if self.sessions:
            notes.append(f"{len(self.sessions)} session(s) in progress")
        month = state.month
        local = datetime.fromtimestamp(now, self.zone)
        if month is not None and month.month == (local.year, local.month):
            self.month = replace(month, zone=self.zone)
            notes.append(f"month peak {month.peak_kw:.0f} kW")
        elif month is not None and month.month is not None:
            notes.append("month peak of {}-{:02d} not carried into this month".format(*month.month))
        plan = state.plan
        if plan is not None and plan.status.has_schedule and plan.slot_at(now) is not None:
            self.plan, self.planned_at, self._why = plan, state.planned_at, None
            self._plan_serial += 1
            self._plan_site_kw = state.plan_site_kw
            notes.append(f"plan until {datetime.fromtimestamp(plan.end, self.zone):%d %b %H:%M}")
        elif plan is not None:
            notes.append("last plan no longer covers now")
        self.history = list(state.history)
        self.wishes.update(state.wishes)
        return notes
