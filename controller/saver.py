"""The state saver: the station's state file, read on start and written while running.

`StateSaver` owns the store's thread. On start it resumes the saved state into the controller,
the sessions' energy accounts into the controller's ledger (which from then on keeps the closed
ones until they are saved); while running the fast loop hands it copies (`hand_over`), at once
after a session started or ended and else at most every `SAVE_EVERY_S`; its task writes them in
the thread. On stop it writes the last state.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from base.clock import Clock, stop_task
from base.health import Health
from control.cycle import Control
from control.ledger import SessionLedger
from controller.store import SavedState, StateStore
from controller.worker import Worker

log = logging.getLogger(__name__)

# The state file is written at most this often (station seconds), and at once when a session
# starts or ends.
SAVE_EVERY_S = 1.0


class StateSaver:
    """Resumes, keeps and writes the station's state (a service of the daemon)."""

    def __init__(self, store: StateStore, control: Control, clock: Clock) -> None:
        self.store = store
        self.control = control
        self.clock = clock
        self.piles: frozenset[str] = frozenset()
        self.health = Health(str(store.path), logger=log)
        self.worker = Worker("flexcharge-state")
        self._task: asyncio.Task[None] | None = None
        self._unsaved: tuple[SavedState, float] | None = None
        self._wanted = asyncio.Event()
        self._last_at: float | None = None

    @property
    def ledger(self) -> SessionLedger:
        """The controller's ledger, whose accounts the file keeps."""
        return self.control.ledger

    async def start(self) -> None:
        """Resume the saved state (raises `StateError` if the file cannot be read), then save."""
        self.worker.start()
        try:
            # On a virtual clock, the plant must not run on while the file is read.
            with self.clock.participant():
                await self._restore()
        except BaseException:
            self.worker.stop()
            raise
        self._task = asyncio.create_task(self._loop(), name="state saver")

    async def stop(self) -> None:
        """Write the last state and end the thread."""
        if not self.worker.running:
            return
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        self.hand_over(self.clock.now(), now_anyway=True)
        await self._save()
        self.worker.stop()

    async def _restore(self) -> None:
        now = self.clock.now()
        saved = await self.worker.run(self.store.load, now, self.control.zone)
        gone = [r for r in saved.records if r.pile not in self.piles]
        for record in gone:
            record.ended_at = now
        self.control.ledger = SessionLedger(
            (r for r in saved.records if r.pile in self.piles), closed=gone
        )
        notes = self.control.restore_state(saved.control, now)
        log.info("resuming from %s: %s", self.store.path, "; ".join(notes) or "nothing to resume")

    def hand_over(self, now: float, *, now_anyway: bool = False) -> None:
        """Give the saver the current state: at once after a session started or ended, else at
        most every `SAVE_EVERY_S`. Only copies are handed over; the saver's thread reads them."""
        due = self._last_at is None or now - self._last_at >= SAVE_EVERY_S
        if not (due or now_anyway or self.ledger.changed):
            return
        self.ledger.changed = False
        self._last_at = now
        self._unsaved = (SavedState(self.control.export_state(), tuple(self.ledger.records())), now)
        self._wanted.set()

    async def _loop(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self._save()

    async def _save(self) -> None:
        """Write the state last handed over, in the store's thread (a failure is told once)."""
        if self._unsaved is None:
            return
        state, at = self._unsaved
        self._unsaved = None
        try:
            await self.worker.run(self.store.save, state, at)
        except (sqlite3.Error, OSError) as exc:
            self.health.fail(self.clock.now(), f"cannot save the state: {exc}")
            return
        self.health.recover(
            self.clock.now(),
            lambda down: f"{self.store.path}: saving the state again after {down:.0f} s",
        )
        self.ledger.saved(state.records)
