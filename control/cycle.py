"""The controller's decisions, without any I/O: the same code runs the daemon and fast simulation.

`Control` follows the site through `SiteSnapshot`s and composes the parts that decide:

- the session book (`control.book`) keeps each vehicle's session, what drivers said of it, each
  pile's fault and the visits that ended; the ledger (`control.ledger`) keeps each session's
  energy account, the one figure of its energy;
- `Control` itself keeps the month's peak, the background estimate and the plan: it says when a
  new plan is due and builds the `scheduler.Problem` for it (`control.planner` solves and adopts);
- the decider (`control.decider`) turns each snapshot into targets and setpoints, within the
  budget the limiter (`control.limiter`) allows.

The daemon (`controller.daemon`) feeds it from devices on the wall clock; `simulator.fast` from
the plant on a simulated clock; both through `control.step`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from base.config import Station
from base.events import Event, Kind, Source
from base.tariff import Tariff
from control.book import SessionBook
from control.decider import Decider, Decision, Following, Policy, group_limits, progress_gap
from control.follow import FollowWatch
from control.forecast import BackgroundForecast
from control.ledger import SessionLedger
from control.reload import reconnects
from control.sessions import PastVisit, Session, Wish
from control.site import BackgroundWatch, SiteSnapshot
from scheduler.plan import FloatArray, Plan
from scheduler.problem import GroupLimit, Problem, Vehicle, Weights, month_starts, slot_boundaries

log = logging.getLogger(__name__)


# Finished visits this recent are remembered: yesterday's forecast today's arrivals, and all of
# them what a vehicle nobody told us about probably needs.
HISTORY_S = 14 * 86400


@dataclass
class MonthPeak:
    """The month's highest 15-minute average import, as the utility bills it, and the energy the
    current window has imported so far."""

    zone: ZoneInfo
    peak_kw: float = 0.0
    month: tuple[int, int] | None = None
    window_start: float | None = None
    window_kwh: float = 0.0

    def _window(self, when: float, local: datetime | None = None) -> float:
        """The start of the quarter hour containing `when` (`local`: `when` in the zone, if
        already at hand)."""
        if local is None:
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
        start = self._window(middle, local)
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
        self.book = SessionBook(station, self.zone)
        # Nothing saves closed accounts until a state saver puts its own ledger here.
        self.ledger = SessionLedger(keeps_closed=False)
        self.plan: Plan | None = None
        self.planned_at: float | None = None
        control = station.control
        self.background = BackgroundWatch(window_s=control.background_window_s)
        self._notes: list[Event] = []
        self.follow = FollowWatch.of(control, notify=self._notes.append)
        self.decider = Decider(station, self.follow)
        self.month = MonthPeak(self.zone)
        self.limit_kw = station.limit_kw
        self._why: str | None = "first plan"
        self._plan_serial = 0
        self._plan_site_kw: np.ndarray | None = None
        # The `Following` of the plan adopted last (`following`), made once per adoption.
        self._following: Following | None = None
        self._last_background: float | None = None
        self._prices: dict[float, float] = {}
        self._prices_of: Tariff | None = None

    # -- the parts' state, as the shells and the store see it ----------------------------------

    @property
    def sessions(self) -> dict[str, Session]:
        """Sessions in progress, by pile (the session book's)."""
        return self.book.sessions

    @property
    def wishes(self) -> dict[tuple[str, int], Wish]:
        """What drivers said of sessions, by (pile, pile session id)."""
        return self.book.wishes

    @property
    def faults(self) -> dict[str, str]:
        """Each pile's fault ("" when none)."""
        return self.book.faults

    @property
    def history(self) -> list[PastVisit]:
        """Finished visits remembered for forecasts and estimates."""
        return self.book.history

    @property
    def on_departure(self) -> Callable[[PastVisit], None] | None:
        """Told of every session that ends."""
        return self.book.on_departure

    @on_departure.setter
    def on_departure(self, observer: Callable[[PastVisit], None] | None) -> None:
        self.book.on_departure = observer

    @property
    def setpoints(self) -> dict[str, float]:
        """The setpoints last written to each pile (the decider's)."""
        return self.decider.setpoints

    # -- what we are told ------------------------------------------------------------------

    def wish(self, pile: str, session_id: int, wish: Wish) -> None:
        """Record what is known about the session `session_id` at `pile` (before or after it starts)."""
        if self.book.wish(pile, session_id, wish):
            self._why = self._why or f"new information on {pile}"

    # -- following the site --------------------------------------------------------------------

    def observe(self, snapshot: SiteSnapshot, dt: float) -> list[Event]:
        """Update sessions, their energy accounts, the month's peak and the background estimate;
        return what was noticed, as events from control (a pile's fault and its end are about
        the pile).

        Accounts of sessions that ended close, and the others count this cycle's energy, before
        the book sees the site (so a session leaves, or is full, with its energy as it is now);
        those the book has just started open after it."""
        now = snapshot.time
        events: list[Event] = []
        self.ledger.close_ended(snapshot)
        self.ledger.follow(snapshot, self.sessions)
        for view in snapshot.piles:
            self.follow.check(view, now)
            self.decider.seed(view)
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
            text = f"site limit now {snapshot.limit_kw:.0f} kW (was {self.limit_kw:.0f} kW)"
            events.append(Event(now, Source.CONTROL, Kind.OBSERVED, text))
            self._why = self._why or "limit changed"
        self.limit_kw = snapshot.limit_kw
        happened, reasons = self.book.observe(snapshot.piles, now)
        events.extend(happened)
        self.ledger.follow(snapshot, self.sessions)
        if reasons:
            self._why = self._why or reasons[0]
        return events

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
        book = self.book
        self.ledger.end([pid for pid in book.sessions if pid not in kept], now)
        events = book.end(kept, ids, now)
        self.decider.reconfigure(station, kept)
        book.faults = {pid: fault for pid, fault in book.faults.items() if pid in kept}
        book.wishes = {
            key: wish
            for key, wish in book.wishes.items()
            if key[0] in kept or (key[0] not in before and key[0] in ids)
        }
        book.station, book.settings = station, station.scheduler
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
            gap = progress_gap(session, self.following, now)
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
        early_s = self.book.early_s()
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
            self.book.history = [h for h in self.history if h.plugged_at >= now - HISTORY_S]
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
            pile = _first_free(busy_until, ratings, arrival)
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

    @property
    def following(self) -> Following | None:
        """The plan followed now, if any: the same object until another plan is adopted (a cycle
        asks for it once per session and again to decide)."""
        plan = self.plan
        if plan is None:
            return None
        kept = self._following
        if (
            kept is None
            or kept.plan is not plan
            or kept.serial != self._plan_serial
            or kept.site_kw is not self._plan_site_kw
        ):
            kept = self._following = Following(plan, self._plan_serial, self._plan_site_kw)
        return kept

    def decide(self, snapshot: SiteSnapshot, dt: float) -> Decision:
        """Setpoints for every pile this cycle (`Decider`)."""
        return self.decider.decide(
            snapshot,
            dt,
            policy=self.policy,
            sessions=self.sessions,
            following=self.following,
            month_peak_kw=self.month.peak_kw,
            worst_background_kw=self.background.highest(snapshot.time),
        )

    def committed(self, written: Mapping[str, float], now: float) -> None:
        """The setpoints that were actually written at `now`."""
        self.decider.committed(written, now)

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
            # The very session the ledger counts (no copy to keep in step).
            saved.plan_serial = None
            self.sessions[saved.pile] = saved
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
        self.book.history = list(state.history)
        self.wishes.update(state.wishes)
        return notes


def _first_free(busy_until: dict[str, float], ratings: dict[str, float], arrival: float) -> str:
    """The pile a vehicle arriving at `arrival` gets: the first to be free (from its arrival on),
    the fastest of those, the first listed of equals."""
    best, best_at, best_kw = "", math.inf, -math.inf
    for pile, busy in busy_until.items():
        at = busy if busy > arrival else arrival
        kw = ratings[pile]
        if at < best_at or (at == best_at and kw > best_kw):
            best, best_at, best_kw = pile, at, kw
    return best
