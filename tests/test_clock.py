"""The clock: a sleep that something may end early, on virtual and on real time."""

from __future__ import annotations

import asyncio
import time

import pytest

from base.clock import Ticker, VirtualClock, WallClock

pytestmark = [pytest.mark.asyncio, pytest.mark.usefixtures("no_leaked_tasks")]

T0 = 1_800_000_000.0


async def test_a_woken_participant_runs_at_the_time_it_was_woken() -> None:
    """Virtual time does not move past a participant that was woken while it slept, even when
    another participant goes back to sleep before the woken one runs; its ticker keeps to its
    grid."""
    clock = VirtualClock(T0)
    woke: list[tuple[float, float]] = []
    wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def looping() -> None:
        nonlocal wake
        with clock.participant():
            ticker = Ticker(clock, 10.0, start=T0 + 10)
            for _ in range(3):
                tick = await ticker.wait(wake)
                woke.append((tick, clock.now()))
                if wake.done():
                    wake = asyncio.get_running_loop().create_future()

    async def busy() -> None:
        with clock.participant():
            for _ in range(30):
                await clock.sleep(1.0)

    async def operator() -> None:
        await clock.sleep_until(T0 + 13)
        wake.set_result(None)

    await asyncio.gather(looping(), busy(), operator())
    assert woke == [(T0 + 10, T0 + 10), (T0 + 13, T0 + 13), (T0 + 20, T0 + 20)]


async def test_a_wake_done_before_the_sleep_returns_at_once() -> None:
    """A sleep asked with a wake that is already done does not wait (virtual and real)."""
    wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    wake.set_result(None)
    clock = VirtualClock(T0)
    with clock.participant():
        await clock.sleep_until(T0 + 60, wake)
        assert clock.now() == T0
    wall = WallClock()
    deadline = time.time() + 600
    await wall.sleep_until(deadline, wake)
    assert time.time() < deadline


async def test_the_wall_clock_is_woken_before_its_deadline() -> None:
    """On real time, a sleep ends when its wake is done, well before its deadline (a sleep that
    did not would hold the test until pytest-timeout fails it)."""
    wall = WallClock()
    wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_later(0.01, wake.set_result, None)
    deadline = time.time() + 600
    await wall.sleep_until(deadline, wake)
    assert wake.done() and time.time() < deadline


async def test_time_moves_on_for_a_watcher_woken_alone_between_participants_ticks() -> None:
    """A task that is not a participant, woken by itself at a time no participant was due
    (every participant asleep), sleeps again and time still moves on: it once stood still there
    for ever (the OCPP bench's half-second polling between 1 s cycles)."""
    clock = VirtualClock(T0)
    seen: list[float] = []

    async def cycling() -> None:
        with clock.participant():
            for _ in range(5):
                await clock.sleep(1.0)

    async def watching() -> None:
        for _ in range(6):
            await clock.sleep(0.5)
            seen.append(clock.now() - T0)

    await asyncio.wait_for(asyncio.gather(cycling(), watching()), timeout=10)
    assert seen == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
