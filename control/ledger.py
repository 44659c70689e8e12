"""Energy per session, counted exactly once, from each pile's lifetime import counter.

A session's account is its energy, the one figure everything says: `Control` (which keeps the
ledger, in the daemon and in fast simulation alike) sets the session's `delivered_kwh` from it
every cycle, so the plan, the API, telemetry, the log and the state file (`controller.store`,
which keeps the accounts across restarts) read the same number, also after a counter reset.

The rule:

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
  reset: the session keeps what it had counted and continues from the new reading (logged once).
- A session ends when the book says it does (`control.book.ends`): a pile in fault says nothing of
  its vehicle, so its account stays open. A session a reload ends (`end`) keeps what it counted.

Every account is cross-checked against the pile's own session counter; a disagreement beyond
`TOLERANCE_KWH` is logged once per session (a pile without a session counter, reading 0, is not
checked, nor is a session whose counter went back: the pile's figures then differ by the reset).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace

from control.book import ends
from control.sessions import EnergyAccount, Session
from control.site import SiteSnapshot
from drivers.pile import PileReading

log = logging.getLogger(__name__)

# How far a session's account may drift from the pile's own session counter before it is worth a
# warning: the reference map's counters step by 0.1 kWh and both are read in one pass.
TOLERANCE_KWH = 0.5
# A counter this much below the last one seen has been reset; less is rounding.
COUNTER_SLACK_KWH = 0.2


class SessionLedger:
    """The energy accounts of the sessions in progress, and of those closed but not yet saved.

    The ledger keeps the controller's own `Session` objects and writes their `account` and
    `delivered_kwh`: there is no copy to keep in step. Each cycle `close_ended` and `follow` run
    before the session book sees the site (so a session leaves, or is full, with its energy as it
    is now), and `follow` again after it (to open accounts for the sessions it has just
    started); `Control.observe` runs them.
    """

    def __init__(
        self,
        sessions: Iterable[Session] = (),
        *,
        closed: Iterable[Session] = (),
        tolerance_kwh: float = TOLERANCE_KWH,
        keeps_closed: bool = True,
    ) -> None:
        """`sessions`: those with open accounts; `closed`: closed ones that still need saving;
        `keeps_closed` False: nothing saves them, so closed sessions are not kept."""
        self.open: dict[str, Session] = {s.pile: s for s in sessions}
        self.tolerance_kwh = tolerance_kwh
        self.keeps_closed = keeps_closed
        self._closed: list[Session] = list(closed)
        self.changed = bool(self._closed)
        self._counted_to: dict[str, float] = {}
        self._warned: set[tuple[str, int, float]] = set()

    def close_ended(self, snapshot: SiteSnapshot) -> list[Session]:
        """Close the accounts of sessions a fresh reading shows are over; return them.

        A session being closed takes its account's energy, so the visit it leaves in the
        controller's history carries what the counter says, also after a restart.
        """
        closed = []
        for view in snapshot.piles:
            reading, session = view.reading, self.open.get(view.id)
            if reading is None or session is None or not ends(session, reading):
                continue
            self._close(session, reading, snapshot.time)
            closed.append(session)
        return closed

    def follow(self, snapshot: SiteSnapshot, sessions: Mapping[str, Session]) -> None:
        """Count the energy of the controller's sessions; open accounts for new ones."""
        for view in snapshot.piles:
            reading, session = view.reading, sessions.get(view.id)
            if reading is None or session is None or ends(session, reading):
                continue
            held = self.open.get(view.id)
            if held is not None and held.session_id != session.session_id:
                self._close(held, reading, snapshot.time)
                held = None
            if held is None:
                if session.account is None:
                    session.account = _opened(reading, self._counted_to.get(view.id))
                self.open[view.id] = session
                self.changed = True
            else:
                if held is not session:
                    # The same session under another object: its account carries on.
                    session.account = held.account
                    self.open[view.id] = session
                assert session.account is not None
                self._count(session, session.account, reading)
            assert session.account is not None
            session.delivered_kwh = session.account.energy_kwh
            self._cross_check(session, reading)

    def end(self, piles: Collection[str], now: float) -> None:
        """Close the accounts of the sessions at `piles` with what they counted (a reload ended
        them: the pile is gone, or reached through another device)."""
        for pile in piles:
            session = self.open.get(pile)
            if session is None:
                continue
            account = session.account
            assert account is not None
            self._counted_to.pop(pile, None)
            self._closed_at(session, account, now)

    def records(self) -> list[Session]:
        """Copies of the sessions with open accounts and of those closed since `saved` was last
        told (for the saver's thread)."""
        return [
            replace(s, account=None if s.account is None else replace(s.account))
            for s in (*self._closed, *self.open.values())
        ]

    def saved(self, sessions: Iterable[Session]) -> None:
        """`sessions` are in the state file: closed ones need not be saved again."""
        done = {s.key for s in sessions if s.ended_at is not None}
        self._closed = [s for s in self._closed if s.key not in done]

    def _close(self, session: Session, reading: PileReading, now: float) -> None:
        account = session.account
        assert account is not None
        counter = reading.energy_import_kwh
        if counter < account.last_counter_kwh - COUNTER_SLACK_KWH:
            self._counter_went_back(session, account, counter, "ends with it")
            self._counted_to.pop(session.pile, None)
        else:
            drawn = max(counter, account.last_counter_kwh) - account.start_counter_kwh
            if reading.session_id != session.session_id:
                drawn -= max(reading.session_energy_kwh, 0.0)
            account.energy_kwh = max(account.energy_kwh, drawn)
            account.last_counter_kwh = max(counter, account.last_counter_kwh)
            self._counted_to[session.pile] = account.counted_to_kwh
        self._closed_at(session, account, now)

    def _closed_at(self, session: Session, account: EnergyAccount, now: float) -> None:
        session.ended_at = now
        session.delivered_kwh = account.energy_kwh
        del self.open[session.pile]
        if self.keeps_closed:
            self._closed.append(session)
        self.changed = True

    def _count(self, session: Session, account: EnergyAccount, reading: PileReading) -> None:
        counter = reading.energy_import_kwh
        if counter < account.last_counter_kwh - COUNTER_SLACK_KWH:
            self._counter_went_back(session, account, counter, "counts on from the new reading")
            account.start_counter_kwh = counter - account.energy_kwh
            account.last_counter_kwh = counter
            return
        counter = max(counter, account.last_counter_kwh)
        account.energy_kwh = counter - account.start_counter_kwh
        account.last_counter_kwh = counter

    def _counter_went_back(
        self, session: Session, account: EnergyAccount, counter: float, then: str
    ) -> None:
        # The pile's own session figures now differ from the account by the reset: told here.
        self._warned.add(session.key)
        log.warning(
            "pile %s: lifetime import counter went back from %.1f to %.1f kWh (reset or "
            "replaced?); session %d keeps its %.1f kWh and %s",
            session.pile,
            account.last_counter_kwh,
            counter,
            session.session_id,
            account.energy_kwh,
            then,
        )

    def _cross_check(self, session: Session, reading: PileReading) -> None:
        own = reading.session_energy_kwh
        account = session.account
        if own == 0.0 or account is None or session.key in self._warned:
            return
        if abs(account.energy_kwh - own) > self.tolerance_kwh:
            self._warned.add(session.key)
            log.warning(
                "pile %s, session %d: %.2f kWh by the lifetime counter, but the pile's session "
                "counter says %.2f kWh; the lifetime counter is the one billed",
                session.pile,
                session.session_id,
                account.energy_kwh,
                own,
            )


def _opened(reading: PileReading, counted_to_kwh: float | None) -> EnergyAccount:
    """The account of a session seen for the first time in `reading`."""
    counter = reading.energy_import_kwh
    already = min(max(reading.session_energy_kwh, 0.0), max(counter, 0.0))
    start = counter - already
    if counted_to_kwh is not None:
        start = min(max(start, counted_to_kwh), counter)
    return EnergyAccount(start, counter - start, counter)
