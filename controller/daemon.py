"""The daemon: owns the control tasks, runs the fast loop, and shuts down safely.

Every cycle (about once a second) the fast loop reads the grid meter and every pile at once,
decides setpoints (fair share of the headroom, through the ramp-limited limiter) and writes them
back, which also keeps each pile's fail-safe timer from firing. On stop it cancels its task, leaves
every pile at its fallback power and closes the connections, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from controller.clock import Clock, Ticker
from controller.config import Station
from controller.fairshare import Demand, fair_share
from controller.limiter import PileBounds, budget_kw, limit_setpoints
from controller.site import BackgroundWatch, Feed, PileView, SiteSnapshot
from drivers.errors import DriverError
from drivers.meter import Meter, MeterReading, ModbusMeter
from drivers.modbus import ModbusDevice, ModbusLinks
from drivers.pile import ModbusDcPile, Pile, PileReading

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Cycle:
    """One pass of the fast loop: what was seen, what was wanted, what was written."""

    time: float
    snapshot: SiteSnapshot
    budget_kw: float
    targets: Mapping[str, float]
    setpoints: Mapping[str, float]
    written: Mapping[str, bool]

    @property
    def wanted_kw(self) -> float:
        """What the connected vehicles would take together."""
        return sum(p.wants_kw for p in self.snapshot.piles)


@dataclass
class Tally:
    """Running figures of what the daemon measured, for its summary."""

    limit_kw: float
    cycles: int = 0
    peak_grid_kw: float = 0.0
    peak_at: float | None = None
    over_limit_s: float = 0.0
    energy_kwh: float = 0.0
    out_of_bounds: int = 0
    cycle_ms_max: float = 0.0
    cycle_ms_total: float = 0.0
    _counters: dict[str, float] = field(default_factory=dict)

    def add(self, cycle: Cycle, dt: float, cycle_ms: float) -> None:
        """Account one cycle."""
        self.cycles += 1
        self.cycle_ms_max = max(self.cycle_ms_max, cycle_ms)
        self.cycle_ms_total += cycle_ms
        grid = cycle.snapshot.grid_kw
        if grid is not None:
            if grid > self.peak_grid_kw:
                self.peak_grid_kw, self.peak_at = grid, cycle.time
            if grid > self.limit_kw:
                self.over_limit_s += dt
        for view in cycle.snapshot.piles:
            if view.reading is None:
                continue
            counter = view.reading.energy_import_kwh
            before = self._counters.get(view.id)
            if before is not None and counter >= before:
                self.energy_kwh += counter - before
            self._counters[view.id] = counter
            kw = cycle.setpoints.get(view.id, 0.0)
            if kw != 0 and not (view.min_kw - 1e-6 <= kw <= view.max_kw + 1e-6):
                self.out_of_bounds += 1


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


class Daemon:
    """The station controller."""

    def __init__(
        self,
        station: Station,
        clock: Clock,
        meter: Meter,
        piles: Sequence[Pile],
        *,
        close: Callable[[], None] | None = None,
    ) -> None:
        self.station = station
        self.clock = clock
        self.meter = meter
        self.piles = {pile.id: pile for pile in piles}
        self._close = close
        control = station.control
        self.period_s = control.period_s
        self.meter_feed: Feed[MeterReading] = Feed(f"meter {meter.id}")
        self.pile_feeds: dict[str, Feed[PileReading]] = {
            pid: Feed(f"pile {pid}") for pid in self.piles
        }
        self.setpoints: dict[str, float] = {pid: 0.0 for pid in self.piles}
        self.background = BackgroundWatch(window_s=3600.0)
        self.tally = Tally(station.limit_kw)
        self.observers: list[Callable[[Cycle], None]] = []
        self.events: deque[tuple[float, str]] = deque(maxlen=500)
        self.event_count = 0
        self.last_cycle: Cycle | None = None
        self._sessions: dict[str, tuple[int, float]] = {}
        self._present: dict[str, int] = {}
        self._armed: set[str] = set()
        self._curtailing = False
        self._loop_task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._last_cycle_at: float | None = None
        self._errors_logged: set[str] = set()

    @classmethod
    def over_modbus(cls, station: Station, clock: Clock) -> Daemon:
        """A daemon whose meter and piles are the Modbus devices the station config names."""
        links = ModbusLinks(timeout_s=station.control.io_timeout_s)
        gm = station.grid_meter
        meter = ModbusMeter(
            gm.id,
            ModbusDevice(
                f"meter {gm.id}", links.get(gm.host, gm.port), station.map_for(gm.device), gm.unit
            ),
        )
        piles = [
            ModbusDcPile(
                p.id,
                ModbusDevice(
                    f"pile {p.id}", links.get(p.host, p.port), station.map_for(p.device), p.unit
                ),
            )
            for p in station.piles
        ]
        return cls(station, clock, meter, piles, close=links.close)

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Start, control until `request_stop`, then shut down safely."""
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()

    def request_stop(self) -> None:
        """Ask `run` to shut down (safe to call from a signal handler, more than once)."""
        if not self._stop.is_set():
            log.info("stop requested")
            self._stop.set()

    async def start(self) -> None:
        """Connect, arm every pile's fail-safe, and start the fast loop."""
        log.info(
            "controlling %s: %d piles, limit %.0f kW (%.0f kVA x %.2f x %.2f), period %.1f s",
            self.station.name,
            len(self.piles),
            self.station.limit_kw,
            self.station.transformer.rating_kva,
            self.station.transformer.power_factor,
            self.station.transformer.margin,
            self.period_s,
        )
        await asyncio.gather(*(self._arm(pid) for pid in self.piles))
        self._loop_task = asyncio.create_task(self._fast_loop(), name="fast loop")

    async def shutdown(self) -> None:
        """Stop the loop, leave every pile at its fallback power, close connections."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        results = await asyncio.gather(
            *(self.piles[pid].command(self.station.pile(pid).fallback_kw) for pid in self.piles),
            return_exceptions=True,
        )
        for pid, result in zip(self.piles, results, strict=True):
            if isinstance(result, BaseException):
                log.error("pile %s: could not leave it at its fallback power: %s", pid, result)
            else:
                self.setpoints[pid] = self.station.pile(pid).fallback_kw
        log.info("every reachable pile left at its fallback power; stopped")
        if self._close is not None:
            self._close()

    async def _arm(self, pile_id: str) -> None:
        config = self.station.pile(pile_id)
        try:
            await self.piles[pile_id].arm_failsafe(config.comm_timeout_s, config.fallback_kw)
        except DriverError as exc:
            self.pile_feeds[pile_id].failed(exc, self.clock.now())
            self._armed.discard(pile_id)
        else:
            self._armed.add(pile_id)

    # -- the fast loop -------------------------------------------------------------------------

    async def _fast_loop(self) -> None:
        with self.clock.participant():
            ticker = Ticker(self.clock, self.period_s)
            while True:
                await ticker.wait()
                try:
                    await self.cycle()
                except DriverError as exc:
                    log.error("cycle failed: %s", exc)
                except Exception as exc:
                    # A bug must not stop control: log it once, keep cycling.
                    key = f"{type(exc).__name__}: {exc}"
                    if key not in self._errors_logged:
                        self._errors_logged.add(key)
                        log.exception("cycle failed")

    async def cycle(self) -> Cycle:
        """One read - decide - write pass."""
        started = time.perf_counter()
        now = self.clock.now()
        dt = (
            self.period_s
            if self._last_cycle_at is None
            else min(now - self._last_cycle_at, 3 * self.period_s)
        )
        self._last_cycle_at = now
        snapshot = await self._read(now)
        budget, targets, setpoints = self._decide(snapshot, dt)
        written = await self._write(setpoints, now)
        cycle = Cycle(now, snapshot, budget, targets, setpoints, written)
        self.last_cycle = cycle
        self.tally.add(cycle, dt, (time.perf_counter() - started) * 1000)
        self._notice(cycle)
        for observer in self.observers:
            observer(cycle)
        return cycle

    async def _read(self, now: float) -> SiteSnapshot:
        ids = list(self.piles)
        meter_result, pile_results = await asyncio.gather(
            _attempt(self.meter_feed.device, self.meter.read),
            asyncio.gather(*(_attempt(f"pile {pid}", self.piles[pid].read) for pid in ids)),
        )
        self._take(self.meter_feed, meter_result, now)
        rearm = [
            pid
            for pid, result in zip(ids, pile_results, strict=True)
            if self._take(self.pile_feeds[pid], result, now)
        ]
        if rearm:
            # A pile that was unreachable may have rebooted and lost its fail-safe settings.
            await asyncio.gather(*(self._arm(pid) for pid in rearm))
        max_age = self.station.control.stale_after_s
        meter = self.meter_feed.fresh(now, max_age)
        views = tuple(
            PileView(
                self.station.pile(pid),
                self.pile_feeds[pid].fresh(now, max_age),
                self.pile_feeds[pid].value,
            )
            for pid in ids
        )
        tariff = self.station.tariff
        snapshot = SiteSnapshot(
            time=now,
            limit_kw=self.station.limit_kw,
            grid_kw=None if meter is None else meter.power_kw,
            meter=meter,
            piles=views,
            band=tariff.band_at(now),
            price=tariff.price_at(now),
        )
        background = snapshot.background_kw
        if background is not None and self.meter_feed.at == now:
            self.background.add(now, background)
        return snapshot

    def _take(self, feed: Feed[T], result: T | DriverError, now: float) -> bool:
        """Store one read result in its feed; True if the device has just recovered."""
        if isinstance(result, DriverError):
            feed.failed(result, now)
            return False
        return feed.succeeded(result, now)

    def _decide(
        self, snapshot: SiteSnapshot, dt: float
    ) -> tuple[float, dict[str, float], dict[str, float]]:
        control = self.station.control
        now = snapshot.time
        controlled = [v for v in snapshot.piles if v.reading is not None]
        blind = [v for v in snapshot.piles if v.reading is None]
        worst = self.background.highest(now)
        worst_background = (
            worst + control.background_margin_kw if worst is not None else snapshot.limit_kw
        )
        # Piles we cannot read may draw up to the larger of their last setpoint and their
        # fallback power (if they stop hearing us); count what they could add.
        extra = 0.0
        for view in blind:
            assumed = max(self.setpoints[view.id], view.config.fallback_kw)
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
        demands = [
            Demand(v.id, v.min_kw, v.wants_kw, priority=self._session_start(v, now))
            for v in controlled
            if v.wants_kw > 0
        ]
        targets = fair_share(budget, demands)
        meter_is_current = self.meter_feed.at == now
        for view in controlled:
            # Data from an earlier cycle may be used to hold or reduce power, never to raise it.
            if not meter_is_current or self.pile_feeds[view.id].at != now:
                targets[view.id] = min(targets.get(view.id, 0.0), self.setpoints[view.id])
        bounds = {v.id: PileBounds(v.min_kw, v.max_kw) for v in controlled}
        setpoints = limit_setpoints(
            targets, self.setpoints, bounds, budget, control.ramp_kw_per_s * dt
        )
        for view in blind:
            # Keep repeating the last setpoint (it keeps the fail-safe armed if the write gets
            # through) but never more than the pile would fall back to anyway.
            setpoints[view.id] = min(self.setpoints[view.id], max(view.config.fallback_kw, 0.0))
        return budget, targets, setpoints

    def _session_start(self, view: PileView, now: float) -> float:
        reading = view.reading
        assert reading is not None
        known = self._sessions.get(view.id)
        if known is None or known[0] != reading.session_id:
            known = (reading.session_id, now)
            self._sessions[view.id] = known
        return known[1]

    async def _write(self, setpoints: Mapping[str, float], now: float) -> dict[str, bool]:
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
                    else DriverError(f"pile {pid}", repr(result))
                )
                self.pile_feeds[pid].failed(error, now)
                written[pid] = False
            else:
                self.setpoints[pid] = setpoints[pid]
                written[pid] = True
        return written

    # -- what an operator is told ------------------------------------------------------------

    def _notice(self, cycle: Cycle) -> None:
        for view in cycle.snapshot.piles:
            reading = view.reading
            if reading is None:
                continue
            present = reading.state.vehicle_present
            session = self._present.get(view.id)
            if session is not None and (not present or session != reading.session_id):
                del self._present[view.id]
                energy = "" if present else f" after {reading.session_energy_kwh:.0f} kWh"
                self._event(cycle.time, f"{view.id}: vehicle left{energy}")
            if present and view.id not in self._present:
                soc = (
                    f"SoC {reading.soc_pct:.0f}%" if reading.soc_pct is not None else "SoC unknown"
                )
                self._event(cycle.time, f"{view.id}: vehicle connected, {soc}")
                self._present[view.id] = reading.session_id
        wanted = cycle.wanted_kw
        granted = sum(cycle.targets.values())
        curtailing = wanted - granted > 1.0
        if curtailing != self._curtailing:
            self._curtailing = curtailing
            if curtailing:
                self._event(
                    cycle.time,
                    f"curtailing: vehicles want {wanted:.0f} kW, headroom gives {max(cycle.budget_kw, 0):.0f} kW",
                )
            else:
                self._event(cycle.time, "curtailment ended: every vehicle gets what it takes")

    def _event(self, when: float, text: str) -> None:
        self.events.append((when, text))
        self.event_count += 1
        log.info("%s", text)
