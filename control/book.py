"""The session book: each vehicle's session as the controller knows it, what drivers said of it,
each pile's fault, and the visits that ended.

Sessions start when a pile reports a vehicle and end when it reports none (or another session);
what a driver or fleet system said (`Wish`) fills in what the pile cannot tell, and what nobody
said is estimated from earlier visits at the same time of day (`control.estimate`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import replace
from zoneinfo import ZoneInfo

from base.config import Station
from base.devicemap import PileState
from base.events import DeviceRef, Event, Kind, Source
from control.estimate import Estimator
from control.sessions import PastVisit, Session, Wish
from control.site import PileView
from drivers.pile import PileReading
from scheduler.problem import Vehicle


def ends(session: Session, reading: PileReading) -> bool:
    """Whether the pile's `reading` ends `session`: no vehicle, or another session. A pile in
    fault says nothing of its vehicle (the session goes on)."""
    if reading.session_id != session.session_id:
        return True
    return not reading.state.vehicle_present and reading.state is not PileState.FAULT


class SessionBook:
    """Sessions in progress, wishes, pile faults and finished visits for one station."""

    def __init__(self, station: Station, zone: ZoneInfo) -> None:
        self.station = station
        self.settings = station.scheduler
        self.sessions: dict[str, Session] = {}
        self.faults: dict[str, str] = {}
        self.wishes: dict[tuple[str, int], Wish] = {}
        self.history: list[PastVisit] = []
        self.estimator = Estimator(zone)
        # `early_s` as of the history it was worked out from (the list, its length and its last
        # visit): the history only grows, or is replaced, between plans.
        self._early: tuple[list[PastVisit], int, PastVisit | None, float] | None = None
        # Told of every session that ends (the fast simulation keeps its books with it).
        self.on_departure: Callable[[PastVisit], None] | None = None

    def early_s(self) -> float:
        """`Estimator.early_s` over the history, worked out again only once it changed."""
        history = self.history
        last = history[-1] if history else None
        cached = self._early
        if (
            cached is None
            or cached[0] is not history
            or cached[1] != len(history)
            or cached[2] is not last
        ):
            cached = self._early = (history, len(history), last, self.estimator.early_s(history))
        return cached[3]

    def wish(self, pile: str, session_id: int, wish: Wish) -> bool:
        """Record what is known about the session `session_id` at `pile` (before or after it
        starts); True if it changed a session in progress."""
        self.wishes[(pile, session_id)] = wish
        session = self.sessions.get(pile)
        if session is not None and session.session_id == session_id:
            self._apply_wish(session, wish)
            return True
        return False

    def observe(self, piles: Collection[PileView], now: float) -> tuple[list[Event], list[str]]:
        """Follow every pile's reading: faults, arrivals, departures, full vehicles, overstays.

        Returns the events, and the reasons a new plan is due (empty if none).
        """
        events: list[Event] = []
        reasons: list[str] = []

        def observed(text: str) -> None:
            events.append(Event(now, Source.CONTROL, Kind.OBSERVED, text))

        for view in piles:
            reading = view.reading
            if reading is None:
                continue
            fault = reading.fault or (
                f"reports fault code {reading.fault_code}" if reading.fault_code else ""
            )
            if fault != self.faults.get(view.id, ""):
                pile = DeviceRef.pile(view.id)
                kind, said = (
                    (Kind.FAULT, f"fault: {fault}")
                    if fault
                    else (Kind.FAULT_CLEARED, "fault cleared")
                )
                events.append(Event(now, Source.CONTROL, kind, f"{pile.label}: {said}", pile))
                self.faults[view.id] = fault
            session = self.sessions.get(view.id)
            if reading.state is PileState.FAULT and (
                session is None or reading.session_id == session.session_id
            ):
                # A pile in fault says nothing of its vehicle: the session goes on.
                continue
            if session is not None and ends(session, reading):
                # Its energy account has closed (`control.ledger`): it leaves with that energy.
                del self.sessions[view.id]
                visit = PastVisit.of(session, now)
                self.history.append(visit)
                if self.on_departure is not None:
                    self.on_departure(replace(visit, delivered_kwh=session.delivered_kwh))
                observed(
                    f"{view.id}: vehicle left after {session.delivered_kwh:.0f} of {session.need_kwh:.0f} kWh"
                )
                reasons.append(f"departure at {view.id}")
                session = None
            if reading.state.vehicle_present and session is None:
                session = self._start_session(view, now)
                self.sessions[view.id] = session
                soc = "" if reading.soc_pct is None else f" at SoC {reading.soc_pct:.0f}%"
                observed(f"{view.id}: vehicle connected{soc}, needs {session.need_kwh:.0f} kWh")
                reasons.append(f"arrival at {view.id}")
            if session is not None:
                session.soc = None if reading.soc_pct is None else reading.soc_pct / 100
                if reading.ev_max_kw is not None:
                    session.max_kw = max(session.max_kw, min(reading.ev_max_kw, view.max_kw))
                    session.battery_kw = max(session.battery_kw or 0.0, reading.ev_max_kw)
                if reading.state is PileState.FINISHED and session.remaining_kwh > 0:
                    # Full before it got what it was said (or guessed) to need: it needs no more.
                    observed(
                        f"{view.id}: vehicle full after {session.delivered_kwh:.1f} of "
                        f"{session.need_kwh:.1f} kWh"
                    )
                    session.need_kwh = session.delivered_kwh
                    reasons.append(f"vehicle full at {view.id}")
                if session.departure_known and now >= session.departure:
                    observed(f"{view.id}: vehicle still here after its departure time")
                    session.departure_known = False
                if not session.departure_known and session.departure <= now + 60:
                    # Still here after we expected it to leave: it stays a while longer.
                    session.departure = now + self.settings.slot_minutes * 60
        return events, reasons

    def end(self, keep: Collection[str], ids: Collection[str], now: float) -> list[str]:
        """End the sessions of piles a reloaded config drops or reaches differently."""
        events: list[str] = []
        for pile in [pid for pid in self.sessions if pid not in keep]:
            session = self.sessions.pop(pile)
            self.history.append(PastVisit.of(session, now))
            events.append(
                f"{pile}: {'reconnected' if pile in ids else 'removed'} by a reload; its session "
                f"ended after {session.delivered_kwh:.0f} of {session.need_kwh:.0f} kWh"
            )
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
