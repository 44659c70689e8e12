"""The station's devices as the daemon reaches them: its meter, its utility terminal and its piles,
each with its feed.

`StationIO` reads every device at once into a checked `SiteSnapshot` (through `Sensors`, the
same checks fast simulation applies), writes setpoints, arms each pile's fail-safe (again after
a pile that was unreachable answers), leaves piles at their fallback power when the daemon lets
them go, and switches to a reloaded config's devices with no await in between. A device failure
never raises here: it is a `DriverError` its feed records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TypeVar

from base.clock import Clock
from base.config import Station
from base.events import DeviceRef, Event
from control.follow import FollowWatch
from control.reload import StationChange
from control.sensing import Sensors
from control.site import Feed, SiteSnapshot
from drivers.errors import DriverError
from drivers.meter import Meter, MeterReading
from drivers.pile import Pile, PileReading

log = logging.getLogger(__name__)
T = TypeVar("T")


class StationIO:
    """The meter, the terminal and the piles of one station, and their feeds."""

    def __init__(
        self,
        station: Station,
        clock: Clock,
        meter: Meter,
        piles: Iterable[Pile],
        terminal: Meter | None,
        *,
        notify: Callable[[Event], None],
        follow: FollowWatch,
    ) -> None:
        self.station = station
        self.clock = clock
        self.meter = meter
        self.terminal = terminal
        self.piles = {pile.id: pile for pile in piles}
        self.notify = notify
        self.sensors = Sensors(station, notify=notify, follow=follow)

    @property
    def meter_feed(self) -> Feed[MeterReading]:
        """The grid meter's feed (kept by the sensors)."""
        return self.sensors.meter

    @property
    def terminal_feed(self) -> Feed[MeterReading] | None:
        """The utility terminal's feed, if the station has one."""
        return self.sensors.terminal

    @property
    def pile_feeds(self) -> dict[str, Feed[PileReading]]:
        """Each pile's feed, by pile id."""
        return self.sensors.piles

    async def read(self, now: float) -> SiteSnapshot:
        """Read every device at once and check what they said (re-arming a pile that answers
        again: it may have rebooted and lost its fail-safe settings)."""
        ids = list(self.piles)
        sensors = self.sensors
        meter_result, pile_results, terminal_result = await asyncio.gather(
            _attempt(self.meter_feed.label, self.meter.read),
            asyncio.gather(
                *(_attempt(self.pile_feeds[pid].label, self.piles[pid].read) for pid in ids)
            ),
            self._read_terminal(),
        )
        sensors.take_meter(meter_result, now)
        if terminal_result is not None:
            sensors.take_terminal(terminal_result, now)
        rearm = [
            pid
            for pid, result in zip(ids, pile_results, strict=True)
            if sensors.take_pile(pid, result, now)
        ]
        if rearm:
            await asyncio.gather(*(self.arm(pid) for pid in rearm))
        return sensors.snapshot(now, self.station.tariff)

    async def _read_terminal(self) -> MeterReading | DriverError | None:
        if self.terminal is None or self.terminal_feed is None:
            return None
        return await _attempt(self.terminal_feed.label, self.terminal.read)

    async def write(self, setpoints: Mapping[str, float], now: float) -> dict[str, bool]:
        """Write each pile's setpoint at once; which were written (a failure marks its feed)."""
        ids = list(setpoints)
        results = await asyncio.gather(
            *(self.piles[pid].command(setpoints[pid]) for pid in ids), return_exceptions=True
        )
        written: dict[str, bool] = {}
        for pid, result in zip(ids, results, strict=True):
            if isinstance(result, BaseException):
                error = (
                    result
                    if isinstance(result, DriverError)
                    else DriverError(self.pile_feeds[pid].label, repr(result))
                )
                self.pile_feeds[pid].failed(error, now)
                written[pid] = False
            else:
                written[pid] = True
        return written

    async def arm(self, pile_id: str) -> None:
        """Set a pile's fail-safe (its communication timeout and fallback power)."""
        config = self.station.pile(pile_id)
        try:
            await self.piles[pile_id].arm_failsafe(config.comm_timeout_s, config.fallback_kw)
        except DriverError as exc:
            # Until it is armed, the pile may fall back to anything: it is budgeted at its rating.
            self.sensors.unarmed.add(pile_id)
            self.pile_feeds[pile_id].failed(exc, self.clock.now())
        else:
            self.sensors.unarmed.discard(pile_id)

    async def arm_with(self, station: Station, pile: Pile, feed: Feed[PileReading] | None) -> None:
        """Set the fail-safe of a pile a reload adds or re-rates (before it is switched to)."""
        config = station.pile(pile.id)
        try:
            await pile.arm_failsafe(config.comm_timeout_s, config.fallback_kw)
        except DriverError as exc:
            if feed is not None:
                # Marked failing: the fast loop arms it again once it answers.
                feed.failed(exc, self.clock.now())

    async def leave_at_fallback(
        self, pile_ids: Iterable[str], station: Station
    ) -> dict[str, float]:
        """Command piles the daemon stops controlling to their fallback power (at shutdown, or
        dropped by a reload); the setpoints written. One that does not answer falls back on its
        own after its timeout."""
        fallbacks = {pid: station.pile(pid).fallback_kw for pid in pile_ids}
        results = await asyncio.gather(
            *(self.piles[pid].command(kw) for pid, kw in fallbacks.items()), return_exceptions=True
        )
        written: dict[str, float] = {}
        for pid, result in zip(fallbacks, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "pile %s: no longer controlled, but could not leave it at its fallback "
                    "power (%s); its fail-safe falls back after %g s",
                    pid,
                    result,
                    station.pile(pid).comm_timeout_s,
                )
            else:
                log.info("pile %s: no longer controlled, left at %.0f kW", pid, fallbacks[pid])
                written[pid] = fallbacks[pid]
        return written

    def swap(
        self,
        station: Station,
        change: StationChange,
        drivers: Mapping[str, Pile],
        feeds: Mapping[str, Feed[PileReading]],
        meter: Meter | None,
        terminal: Meter | None,
    ) -> None:
        """Switch to a reloaded config's devices, with no await in between."""
        now = self.clock.now()
        for pid in change.drops:
            _stop_watching(self.pile_feeds[pid], now)
        piles = {p.id: drivers[p.id] for p in station.piles}
        pile_feeds = {p.id: feeds.get(p.id) or self.pile_feeds[p.id] for p in station.piles}
        self.piles.clear()
        self.piles.update(piles)
        sensors = self.sensors
        sensors.piles = pile_feeds
        if meter is not None:
            _stop_watching(self.meter_feed, now)
            self.meter = meter
            sensors.meter = Feed(DeviceRef.meter(meter.id), self.notify)
        if change.terminal:
            if self.terminal_feed is not None:
                _stop_watching(self.terminal_feed, now)
            self.terminal = terminal
            sensors.terminal = (
                None if terminal is None else Feed(DeviceRef.terminal(terminal.id), self.notify)
            )
        sensors.station, sensors.settings = station, station.control
        self.station = station


def _stop_watching(feed: Feed[T], now: float) -> None:
    """A failure logged when it started is logged as ended when a reload drops its device."""
    if not feed.ok:
        log.warning(
            "%s: no longer watched (config reloaded), after %.0f s not answering",
            feed.label,
            now - (feed.failed_since or now),
        )


async def _attempt(device: str, read: Callable[[], Awaitable[T]]) -> T | DriverError:
    """Run a device read; a failure comes back as a `DriverError` value, never raised."""
    try:
        return await read()
    except DriverError as exc:
        return exc
    except Exception as exc:
        # A driver bug, not a device failure: keep the traceback, but treat it like one.
        log.exception("%s: unexpected error while reading", device)
        return DriverError(device, f"unexpected {type(exc).__name__}: {exc}")
