"""Energy per session, counted exactly once, from each pile's lifetime import counter.

The rule (the state file, `controller.store`, keeps these accounts across restarts):

- A session's energy is the pile's lifetime import counter (`PileReading.energy_import_kwh`) now,
  minus the counter when the session started. A session first seen part-way (the controller was
  down when it began) starts its account earlier by what the pile says that session has already
  delivered (`session_energy_kwh`), so the energy drawn while nobody watched is not lost.
- A session still plugged in after a restart (same pile, same pile session id) keeps its account:
  the counter has gone on counting while the daemon was down.
- A session that ended while the daemon was down is closed at the first reading after the
  restart, with the counter's rise up to then, minus what the pile's new session (a different
  session id) has already delivered: that part belongs to the new session's account.
- Accounts never overlap: a pile's new session starts counting no earlier than where the previous
  session's account ended. If the pile's own figures disagree with its counter, a kWh may be
  attributed to the wrong session, but it is never counted twice.
- A counter that goes back (the pile was replaced, or its counter reset) cannot measure across the
  reset: the session keeps what it had counted and continues from the new reading.

Every account is cross-checked against the pile's own session counter; a disagreement beyond
`TOLERANCE_KWH` is logged once per session (a pile without a session counter, reading 0, is not
checked).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from control.sessions import Session
from control.site import SiteSnapshot
from drivers.pile import PileReading

log = logging.getLogger(__name__)

# How far a session's account may drift from the pile's own session counter before it is worth a
# warning: the reference map's counters step by 0.1 kWh and both are read in one pass.
TOLERANCE_KWH = 0.5
# A counter this much below the last one seen has been reset; less is rounding.
COUNTER_SLACK_KWH = 0.2


@dataclass
class SessionRecord:
    """One session as the state file keeps it: what the controller knows, and its energy account.

    `start_counter_kwh` is the pile's lifetime import counter where the account starts,
    `last_counter_kwh` the counter last seen; `energy_kwh` is the difference (plus what was counted
    before a counter reset). `ended_at` is None while the vehicle is plugged in.
    """

    pile: str
    pile_session_id: int
    plugged_at: float
    vehicle_id: str
    need_kwh: float
    departure: float
    departure_known: bool
    max_kw: float
    v2g: bool
    min_soc: float
    capacity_kwh: float | None
    soc: float | None
    start_counter_kwh: float
    energy_kwh: float
    last_counter_kwh: float
    ended_at: float | None = None

    @property
    def key(self) -> tuple[str, int, float]:
        """What identifies the session: pile, the pile's session id, when it was plugged in."""
        return (self.pile, self.pile_session_id, self.plugged_at)

    @property
    def counted_to_kwh(self) -> float:
        """The counter reading where this session's account ends (so far)."""
        return self.start_counter_kwh + self.energy_kwh

    @classmethod
    def opened(
        cls, session: Session, reading: PileReading, counted_to_kwh: float | None
    ) -> SessionRecord:
        """The account of a session seen for the first time in `reading`."""
        counter = reading.energy_import_kwh
        already = min(max(reading.session_energy_kwh, 0.0), max(counter, 0.0))
        start = counter - already
        if counted_to_kwh is not None:
            start = min(max(start, counted_to_kwh), counter)
        record = cls(
            pile=session.pile,
            pile_session_id=session.session_id,
            plugged_at=session.plugged_at,
            vehicle_id=session.vehicle_id,
            need_kwh=session.need_kwh,
            departure=session.departure,
            departure_known=session.departure_known,
            max_kw=session.max_kw,
            v2g=session.v2g,
            min_soc=session.min_soc,
            capacity_kwh=session.capacity_kwh,
            soc=session.soc,
            start_counter_kwh=start,
            energy_kwh=counter - start,
            last_counter_kwh=counter,
        )
        return record

    def describe(self, session: Session) -> None:
        """Take what the controller now knows of the session (a wish may have changed it)."""
        self.vehicle_id = session.vehicle_id
        self.need_kwh = session.need_kwh
        self.departure = session.departure
        self.departure_known = session.departure_known
        self.max_kw = session.max_kw
        self.v2g = session.v2g
        self.min_soc = session.min_soc
        self.capacity_kwh = session.capacity_kwh
        self.soc = session.soc

    def session(self) -> Session:
        """The controller's session, as it resumes after a restart."""
        return Session(
            vehicle_id=self.vehicle_id,
            pile=self.pile,
            session_id=self.pile_session_id,
            plugged_at=self.plugged_at,
            need_kwh=self.need_kwh,
            departure=self.departure,
            departure_known=self.departure_known,
            max_kw=self.max_kw,
            delivered_kwh=self.energy_kwh,
            capacity_kwh=self.capacity_kwh,
            soc=self.soc,
            v2g=self.v2g,
            min_soc=self.min_soc,
        )


class SessionLedger:
    """The energy accounts of the sessions in progress, and of those closed but not yet saved.

    Each cycle the daemon calls `close_ended` before `Control.observe` (so a session that ended
    leaves the controller with its final energy) and `follow` after it (to open accounts for the
    sessions it has just started, and count the others).
    """

    def __init__(
        self,
        records: Iterable[SessionRecord] = (),
        *,
        closed: Iterable[SessionRecord] = (),
        tolerance_kwh: float = TOLERANCE_KWH,
    ) -> None:
        """`records`: the accounts still open; `closed`: closed ones that still need saving."""
        self.open: dict[str, SessionRecord] = {r.pile: r for r in records}
        self.tolerance_kwh = tolerance_kwh
        self._closed: list[SessionRecord] = list(closed)
        self.changed = bool(self._closed)
        self._counted_to: dict[str, float] = {}
        self._warned: set[tuple[str, int, float]] = set()

    def close_ended(
        self, snapshot: SiteSnapshot, sessions: Mapping[str, Session]
    ) -> list[SessionRecord]:
        """Close the accounts of sessions a fresh reading shows are over; return them.

        A controller session being closed gets the account's energy, so the visit it leaves in
        the controller's history carries what the counter says, also after a restart.
        """
        closed = []
        for view in snapshot.piles:
            reading, record = view.reading, self.open.get(view.id)
            if reading is None or record is None:
                continue
            if reading.state.vehicle_present and reading.session_id == record.pile_session_id:
                continue
            self._close(record, reading, snapshot.time)
            session = sessions.get(view.id)
            if session is not None and session.session_id == record.pile_session_id:
                session.delivered_kwh = record.energy_kwh
            closed.append(record)
        return closed

    def follow(self, snapshot: SiteSnapshot, sessions: Mapping[str, Session]) -> None:
        """Count the energy of the controller's sessions; open accounts for new ones."""
        for view in snapshot.piles:
            reading, session = view.reading, sessions.get(view.id)
            if reading is None or session is None or session.session_id != reading.session_id:
                continue
            record = self.open.get(view.id)
            if record is not None and record.pile_session_id != session.session_id:
                self._close(record, reading, snapshot.time)
                record = None
            if record is None:
                record = SessionRecord.opened(session, reading, self._counted_to.get(view.id))
                self.open[view.id] = record
                self.changed = True
            else:
                self._count(record, reading)
            record.describe(session)
            self._cross_check(record, reading)

    def records(self) -> list[SessionRecord]:
        """Copies of the open accounts and of those closed since `saved` was last told."""
        return [replace(r) for r in (*self._closed, *self.open.values())]

    def saved(self, records: Iterable[SessionRecord]) -> None:
        """`records` are in the state file: closed ones need not be saved again."""
        done = {r.key for r in records if r.ended_at is not None}
        self._closed = [r for r in self._closed if r.key not in done]

    def _close(self, record: SessionRecord, reading: PileReading, now: float) -> None:
        counter = reading.energy_import_kwh
        if counter < record.last_counter_kwh - COUNTER_SLACK_KWH:
            self._counter_went_back(record, counter)
            self._counted_to.pop(record.pile, None)
        else:
            drawn = max(counter, record.last_counter_kwh) - record.start_counter_kwh
            if reading.session_id != record.pile_session_id:
                drawn -= max(reading.session_energy_kwh, 0.0)
            record.energy_kwh = max(record.energy_kwh, drawn)
            record.last_counter_kwh = max(counter, record.last_counter_kwh)
            self._counted_to[record.pile] = record.counted_to_kwh
        record.ended_at = now
        del self.open[record.pile]
        self._closed.append(record)
        self.changed = True

    def _count(self, record: SessionRecord, reading: PileReading) -> None:
        counter = reading.energy_import_kwh
        if counter < record.last_counter_kwh - COUNTER_SLACK_KWH:
            self._counter_went_back(record, counter)
            record.start_counter_kwh = counter - record.energy_kwh
            record.last_counter_kwh = counter
            return
        counter = max(counter, record.last_counter_kwh)
        record.energy_kwh = counter - record.start_counter_kwh
        record.last_counter_kwh = counter

    def _counter_went_back(self, record: SessionRecord, counter: float) -> None:
        log.warning(
            "pile %s: lifetime import counter went back from %.1f to %.1f kWh (reset or "
            "replaced?); session %d keeps its %.1f kWh and counts on from the new reading",
            record.pile,
            record.last_counter_kwh,
            counter,
            record.pile_session_id,
            record.energy_kwh,
        )

    def _cross_check(self, record: SessionRecord, reading: PileReading) -> None:
        own = reading.session_energy_kwh
        if own == 0.0 or record.key in self._warned:
            return
        if abs(record.energy_kwh - own) > self.tolerance_kwh:
            self._warned.add(record.key)
            log.warning(
                "pile %s, session %d: %.2f kWh by the lifetime counter, but the pile's session "
                "counter says %.2f kWh; the lifetime counter is the one billed",
                record.pile,
                record.pile_session_id,
                record.energy_kwh,
                own,
            )
