"""The one clock every timer and timestamp goes through.

`WallClock` is real time, for the daemon at a real station. `VirtualClock` is station time that
moves only when every task taking part in the simulation is waiting on the clock, so the plant
model and the controller advance in lockstep, whatever the real Modbus round trips cost; with
`pace` it also never runs faster than `pace` times real time (the demo). Tests and fast
simulation use it unpaced, so a simulated day takes only the CPU time its cycles need and nothing
ever sleeps for real.

`Ticker` is the drift-correcting periodic timer the loops use; `stop_task` ends a loop's task.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol


class Clock(Protocol):
    """Station time in epoch seconds, and sleeping on it."""

    def now(self) -> float:
        """Current station time, seconds since the epoch."""
        ...

    async def sleep_until(self, deadline: float, wake: asyncio.Future[None] | None = None) -> None:
        """Return at (or just after) station time `deadline`, or as soon as `wake` is done."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of station time."""
        ...

    def participant(self) -> AbstractContextManager[None]:
        """Mark the current task as one that virtual time waits for while it works."""
        ...


class WallClock:
    """Real time."""

    def now(self) -> float:
        """Current time."""
        return time.time()

    async def sleep_until(self, deadline: float, wake: asyncio.Future[None] | None = None) -> None:
        """Sleep until `deadline` in real time, or until `wake` is done."""
        delay = max(0.0, deadline - time.time())
        if wake is None:
            await asyncio.sleep(delay)
            return
        timer = asyncio.get_running_loop().create_future()
        handle = asyncio.get_running_loop().call_later(delay, _finish, timer)
        try:
            await asyncio.wait((timer, wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            handle.cancel()
            timer.cancel()

    async def sleep(self, seconds: float) -> None:
        """Sleep in real time."""
        await asyncio.sleep(max(0.0, seconds))

    @contextmanager
    def participant(self) -> Iterator[None]:
        """Real time waits for nobody."""
        yield


class VirtualClock:
    """Simulated station time that advances when all participating tasks are asleep on it.

    A participant is a task inside `with clock.participant():`. While any participant is busy
    (computing, or awaiting I/O such as a Modbus request), time stands still. When all of them
    sleep on the clock, time jumps to the earliest deadline and the tasks due then wake up.
    Tasks that are not participants may sleep on the clock too; they wake when time passes
    their deadline. Without participants the clock moves only by `advance`.
    """

    def __init__(
        self,
        start: float,
        *,
        pace: float | None = None,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        if pace is not None and pace <= 0:
            raise ValueError("pace must be positive")
        self._now = float(start)
        self._pace = pace
        self._wall = wall
        self._anchor = (self._now, wall())
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._participants: set[asyncio.Task[object]] = set()
        self._sleeping: set[asyncio.Task[object]] = set()
        # What each sleeping participant waits for (its timer, and what may wake it early):
        # once either is done it is as good as awake (its task has yet to run), and time must
        # not move past it.
        self._waiting: dict[
            asyncio.Task[object], tuple[asyncio.Future[None], asyncio.Future[None] | None]
        ] = {}
        self._pending: asyncio.Handle | None = None

    def now(self) -> float:
        """Current station time."""
        return self._now

    @property
    def pace(self) -> float | None:
        """Station seconds per real second at most (None: as fast as possible)."""
        return self._pace

    async def sleep(self, seconds: float) -> None:
        """Sleep `seconds` of station time."""
        await self.sleep_until(self._now + max(0.0, seconds))

    async def sleep_until(self, deadline: float, wake: asyncio.Future[None] | None = None) -> None:
        """Sleep until station time reaches `deadline`, or until `wake` is done (time does not
        move for that: a sleeping participant woken early is busy again at once)."""
        if deadline <= self._now or (wake is not None and wake.done()):
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._timers, (deadline, next(self._seq), future))
        task = asyncio.current_task()
        sleeping_participant = task in self._participants
        if sleeping_participant:
            assert task is not None
            self._sleeping.add(task)
            self._waiting[task] = (future, wake)
        # Also for a task that is not a participant: woken alone by the last advance (every
        # participant asleep meanwhile), it is the only one left to move time on.
        self._maybe_advance()
        try:
            if wake is None:
                await future
            else:
                await asyncio.wait((future, wake), return_when=asyncio.FIRST_COMPLETED)
        finally:
            future.cancel()  # woken early: its timer is dropped when it comes up
            if sleeping_participant:
                assert task is not None
                self._sleeping.discard(task)
                self._waiting.pop(task, None)

    @contextmanager
    def participant(self) -> Iterator[None]:
        """Make the current task one that time waits for."""
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a participant must be an asyncio task")
        self._participants.add(task)
        try:
            yield
        finally:
            self._participants.discard(task)
            self._sleeping.discard(task)
            self._waiting.pop(task, None)
            self._maybe_advance()

    async def advance(self, seconds: float) -> None:
        """Move time forward by `seconds`, waking sleepers in deadline order (for tests)."""
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            self._fire_next()
            for _ in range(5):
                await asyncio.sleep(0)
        self._now = max(self._now, target)

    def _maybe_advance(self) -> None:
        if self._pending is not None or not self._participants:
            return
        if self._sleeping < self._participants:
            return
        loop = asyncio.get_running_loop()
        # Let callbacks already queued (I/O completions) run before time moves.
        self._pending = loop.call_soon(self._advance)

    def _advance(self) -> None:
        self._pending = None
        if not self._participants or self._sleeping < self._participants:
            return
        if any(
            timer.done() or (wake is not None and wake.done())
            for timer, wake in self._waiting.values()
        ):
            return
        self._drop_cancelled()
        if not self._timers:
            return
        deadline = self._timers[0][0]
        if self._pace is not None:
            station0, wall0 = self._anchor
            due = wall0 + (deadline - station0) / self._pace
            late = self._wall() - due
            if late < 0:
                self._pending = asyncio.get_running_loop().call_later(-late, self._advance)
                return
            if late > 0.25:
                # Behind real time (a slow machine): re-anchor instead of rushing to catch up.
                self._anchor = (deadline, self._wall())
        self._fire_next()

    def _fire_next(self) -> None:
        self._drop_cancelled()
        if not self._timers:
            return
        deadline = self._timers[0][0]
        self._now = max(self._now, deadline)
        while self._timers and self._timers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._timers)
            if not future.done():
                future.set_result(None)

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0][2].done():
            heapq.heappop(self._timers)


class Ticker:
    """A periodic timer that keeps to its grid: a late tick does not shift later ones.

    If ticks are missed entirely (the cycle took longer than several periods), it skips to the
    next grid point rather than firing a burst of catch-up ticks.
    """

    def __init__(self, clock: Clock, period: float, *, start: float | None = None) -> None:
        if period <= 0:
            raise ValueError("period must be positive")
        self.clock = clock
        self.period = period
        self._next = clock.now() if start is None else start
        self.missed = 0

    async def wait(self, wake: asyncio.Future[None] | None = None) -> float:
        """Sleep until the next tick and return its scheduled time; or, if `wake` is done
        first, return the time now, and the next tick stays where it was on the grid."""
        now = self.clock.now()
        if self._next < now - self.period:
            skipped = int((now - self._next) // self.period)
            self.missed += skipped
            self._next += skipped * self.period
        await self.clock.sleep_until(self._next, wake)
        if wake is not None and wake.done() and self.clock.now() < self._next:
            return self.clock.now()
        tick = self._next
        self._next += self.period
        return tick


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Stop a loop's task: cancel it and wait until it has ended (None: nothing to stop)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
