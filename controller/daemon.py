"""The daemon: owns the control tasks, talks to the devices, and shuts down safely.

Two tasks, both owned here:

- the fast loop (about once a second) reads the grid meter and every pile at once, hands the
  snapshot to `Control` for setpoints and writes them back, which also keeps each pile's
  fail-safe timer from firing;
- the plan loop asks `Control` whether a new plan is due (every minute, and on arrivals,
  departures, limit changes and large deviations) and solves it in a worker thread with a
  deadline, so the event loop never blocks; a failed or late solve gives way to the fallback
  heuristic.

A reload (`reload`, `reload_file`, `request_reload` on SIGHUP) applies a new, validated config
between two cycles: removed piles are left at their fallback power, added ones armed and
controlled, the tariff, limits and settings take effect at once and a new plan is due. A config
that fails its checks is refused with every problem, and the old one keeps running.

With a state file (`controller.store`), it resumes what the last run left on start (sessions,
the month's peak, the plan, the visits it forecasts from), keeps each session's energy account
(`control.ledger`), and saves in a worker thread: after a session starts or ends, otherwise at
most every `SAVE_EVERY_S`, and once more on stop.

Services (the HTTP API) run beside the loops: started after them, stopped before them.

With a telemetry writer (`controller.telemetry`), every cycle, new plan and event is handed to
it as points; it writes them from its own thread, so the loops never wait on the database.

On stop it stops its services, cancels its tasks, leaves every pile at its fallback power, saves
the state, stops the telemetry writer and closes the connections, in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Protocol, TypeVar

from base.clock import Clock, Ticker, stop_task
from base.config import Station, load_station
from base.loading import ConfigError
from base.loading import ConfigProblem as ConfigProblem
from control.cycle import Control, Decision, Policy
from control.ledger import SessionLedger
from control.planner import Planner
from control.reload import StationChange
from control.sensing import LimitOverride, Sensors
from control.sessions import Wish
from control.site import Feed, SiteSnapshot
from control.step import step
from controller.devices import StationLinks, pile_driver
from controller.status import Cycle, DeviceHealth, StationStatus, Tally
from controller.store import SavedState, StateStore
from controller.telemetry.writer import TelemetryWriter
from drivers.acpile import AcPile
from drivers.errors import DriverError
from drivers.meter import MapMeter, Meter, MeterReading
from drivers.pile import Pile, PileReading
from scheduler.plan import Plan
from scheduler.solver import Solver

log = logging.getLogger(__name__)
T = TypeVar("T")

# The state file is written at most this often (station seconds), and at once when a session
# starts or ends.
SAVE_EVERY_S = 1.0


class Service(Protocol):
    """Something the daemon runs beside its loops (the HTTP API), in its event loop."""

    async def start(self) -> None:
        """Start serving; raise if that is impossible."""
        ...

    async def stop(self) -> None:
        """Stop serving and wait until its tasks have ended (nothing to do if not started)."""
        ...


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
        policy: Policy | str | None = None,
        close: Callable[[], Awaitable[None]] | None = None,
        terminal: Meter | None = None,
        store: StateStore | None = None,
        telemetry: TelemetryWriter | None = None,
    ) -> None:
        """`store`: the station's state file, to resume from on start and save to while running;
        `telemetry`: where cycles, plans and events are written (the daemon starts and stops it)."""
        self.station = station
        self.clock = clock
        self.meter = meter
        self.terminal = terminal
        self.piles = {pile.id: pile for pile in piles}
        self.control = Control(station, policy=policy)
        self.planner = Planner(self.control)
        self._close = close
        # for_station keeps its connections here, so that a reload can add devices through them.
        self.links: StationLinks | None = None
        self._policy = policy
        self._config_lock = asyncio.Lock()
        self._config_serial = 0
        self._reloads: set[asyncio.Task[bool]] = set()
        self.period_s = station.control.period_s
        self.sensors = Sensors(station, notify=self._record, follow=self.control.follow)
        self.tally = Tally(station.limit_kw)
        self.observers: list[Callable[[Cycle], None]] = []
        self.events: deque[tuple[float, str]] = deque(maxlen=500)
        self.event_count = 0
        self.last_cycle: Cycle | None = None
        self._solver = Solver(time_limit_s=station.scheduler.solve_deadline_s)
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._last_cycle_at: float | None = None
        self._errors_logged: set[str] = set()
        self._curtailing = False
        self.store = store
        self.ledger = SessionLedger()
        self._store_executor: ThreadPoolExecutor | None = None
        self._unsaved: tuple[SavedState, float] | None = None
        self._save_wanted = asyncio.Event()
        self._last_save_at: float | None = None
        self._save_failing = False
        # Started after the loops, stopped (in reverse order) before them.
        self.services: list[Service] = []
        self.telemetry = telemetry

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

    @property
    def setpoints(self) -> Mapping[str, float]:
        """The setpoints last written to each pile."""
        return self.control.setpoints

    @classmethod
    def for_station(
        cls,
        station: Station,
        clock: Clock,
        *,
        policy: Policy | str | None = None,
        store: StateStore | None = None,
        telemetry: TelemetryWriter | None = None,
    ) -> Daemon:
        """A daemon whose meter and piles are the devices the station config names.

        OPC-UA devices are reached through one session per endpoint URL, with the daemon's
        certificate, the station's OPC-UA user and policies; the others over Modbus TCP or
        Modbus/TCP Security, AC chargers through their make's driver. The daemon keeps the
        connections, so that a reload can add devices. Raises `ConfigError` when certificates or
        the password an encrypted link needs are missing.
        """
        links = StationLinks(station, clock)
        gm = station.grid_meter
        meter = MapMeter(gm.id, links.device(station, gm, f"meter {gm.id}"))
        term = station.terminal
        terminal = (
            None
            if term is None
            else MapMeter(term.id, links.device(station, term, f"terminal {term.id}"))
        )
        piles = [
            pile_driver(p, links.device(station, p, f"pile {p.id}"), clock) for p in station.piles
        ]
        daemon = cls(
            station,
            clock,
            meter,
            piles,
            policy=policy,
            close=links.close,
            terminal=terminal,
            store=store,
            telemetry=telemetry,
        )
        daemon.links = links
        return daemon

    over_modbus = for_station

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Start, control until `request_stop`, then shut down safely."""
        await self.start()
        try:
            await self._stop.wait()
        finally:
            await self.shutdown()

    # -- the port the API, metrics, view and demo use ---------------------------------------------

    def status(self) -> StationStatus:
        """The daemon's state now, copied (`StationStatus`)."""
        control, sensors = self.control, self.sensors
        return StationStatus(
            time=self.clock.now(),
            station=self.station,
            policy=str(control.policy),
            last_cycle=self.last_cycle,
            plan=control.plan,
            planned_at=control.planned_at,
            sessions={pid: replace(s) for pid, s in control.sessions.items()},
            wishes=dict(control.wishes),
            faults=dict(control.faults),
            setpoints=dict(control.setpoints),
            devices=tuple(
                DeviceHealth(
                    f.device, f.ok, f.episodes, None if f.error is None else f.error.message
                )
                for f in sensors.feeds()
            ),
            pile_errors={
                pid: None if f.error is None else f.error.message
                for pid, f in self.pile_feeds.items()
            },
            limit_source=sensors.limit_source,
            utility_limit_kw=sensors.utility_limit_kw,
            override=sensors.override,
            tally=replace(self.tally, energy_by_band=dict(self.tally.energy_by_band)),
            events=tuple(self.events),
            event_count=self.event_count,
        )

    def watch(self, observer: Callable[[Cycle], None]) -> None:
        """Call `observer` after every cycle (in the control loop: it must be quick)."""
        self.observers.append(observer)

    def wish(self, pile_id: str, session_id: int, wish: Wish) -> None:
        """What a driver or fleet system says of the session at a pile."""
        self.control.wish(pile_id, session_id, wish)

    def override_limit(self, kw: float, until: float, reason: str) -> LimitOverride:
        """Lower the site limit until `until` (raises ValueError if it would raise it)."""
        return self.sensors.override_limit(kw, until, self.clock.now(), reason)

    def clear_override(self) -> LimitOverride | None:
        """End the operator's override now; the one that ended, if any."""
        return self.sensors.clear_override(self.clock.now())

    def request_stop(self) -> None:
        """Ask `run` to shut down (safe to call from a signal handler, more than once)."""
        if not self._stop.is_set():
            log.info("stop requested")
            self._stop.set()

    async def start(self) -> None:
        """Resume the saved state, connect, arm every pile's fail-safe, and start the loops.

        Raises `StateError` (before touching any device) if the state file cannot be read.
        """
        if self.store is not None:
            self._store_executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="flexcharge-state"
            )
            try:
                # On a virtual clock, the plant must not run on while the file is read.
                with self.clock.participant():
                    await self._restore(self.store)
            except BaseException:
                self._store_executor.shutdown(wait=True)
                self._store_executor = None
                raise
            self._tasks.append(asyncio.create_task(self._save_loop(), name="state saver"))
        transformer = self.station.transformer
        log.info(
            "controlling %s: %d piles, limit %.0f kW (%.0f kVA x %.2f x %.2f), period %.1f s, policy %s",
            self.station.name,
            len(self.piles),
            self.station.limit_kw,
            transformer.rating_kva,
            transformer.power_factor,
            transformer.margin,
            self.period_s,
            self.control.policy,
        )
        for device in self.station.devices:
            if device.protocol == "opcua" and device.opcua_security == "none":
                log.warning(
                    "%s is reached over OPC-UA WITHOUT encryption or authentication "
                    '(opcua_security = "none" at %s)',
                    device.id,
                    device.opcua_url,
                )
        if self.telemetry is not None:
            self.telemetry.start()
            log.info("telemetry to %s", self.telemetry.sink.description)
        await asyncio.gather(*(self._arm(pid) for pid in self.piles))
        self._tasks.append(asyncio.create_task(self._fast_loop(), name="fast loop"))
        if self.control.policy is Policy.MPC:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="flexcharge-solver"
            )
            self._tasks.append(asyncio.create_task(self._plan_loop(), name="plan loop"))
        await self._start_services()

    async def _start_services(self) -> None:
        try:
            for service in self.services:
                await service.start()
        except BaseException:
            await self.shutdown()
            raise

    async def shutdown(self) -> None:
        """Stop the services and loops, leave every pile at its fallback power, close connections."""
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("could not stop %r cleanly", service)
        for reload in list(self._reloads):
            await stop_task(reload)
        self._solver.cancel()
        for task in reversed(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        fallbacks = {pid: self.station.pile(pid).fallback_kw for pid in self.piles}
        results = await asyncio.gather(
            *(self.piles[pid].command(kw) for pid, kw in fallbacks.items()), return_exceptions=True
        )
        for pid, result in zip(fallbacks, results, strict=True):
            if isinstance(result, BaseException):
                log.error("pile %s: could not leave it at its fallback power: %s", pid, result)
            else:
                self.control.committed({pid: fallbacks[pid]})
        log.info("every reachable pile left at its fallback power; stopped")
        if self._store_executor is not None:
            self._hand_over(self.clock.now(), now_anyway=True)
            await self._save()
            self._store_executor.shutdown(wait=True)
            self._store_executor = None
        if self.telemetry is not None:
            counts = await self.telemetry.stop()
            log.info("telemetry: %s", counts.summary())
        if self._close is not None:
            await self._close()

    async def _arm(self, pile_id: str) -> None:
        config = self.station.pile(pile_id)
        try:
            await self.piles[pile_id].arm_failsafe(config.comm_timeout_s, config.fallback_kw)
        except DriverError as exc:
            # Until it is armed, the pile may fall back to anything: it is budgeted at its rating.
            self.sensors.unarmed.add(pile_id)
            self.pile_feeds[pile_id].failed(exc, self.clock.now())
        else:
            self.sensors.unarmed.discard(pile_id)

    # -- the fast loop -------------------------------------------------------------------------

    async def _fast_loop(self) -> None:
        with self.clock.participant():
            ticker = Ticker(self.clock, self.period_s)
            while True:
                ticker.period = self.period_s  # a reload may have changed it
                await ticker.wait()
                try:
                    async with self._config_lock:  # a reload applies between two cycles
                        await self.cycle()
                except Exception as exc:
                    # A bug must not stop control: log it once, keep cycling.
                    self._log_once(exc, "cycle failed")

    def _log_once(self, exc: Exception, what: str) -> None:
        key = f"{what}: {type(exc).__name__}: {exc}"
        if key not in self._errors_logged:
            self._errors_logged.add(key)
            log.exception(what)

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
        done = step(self.control, snapshot, dt, self.ledger if self.store is not None else None)
        for text in done.events:
            self._event(now, text)
        decision = done.decision
        written = await self._write(decision.setpoints, now)
        cycle = Cycle(
            now, snapshot, decision.budget_kw, decision.targets, decision.setpoints, written
        )
        self.last_cycle = cycle
        self.tally.add(cycle, dt, (time.perf_counter() - started) * 1000)
        self._notice(cycle, decision)
        if self.telemetry is not None:
            self.telemetry.cycle(
                now, snapshot, cycle.budget_kw, cycle.targets, decision.setpoints, written
            )
        for observer in self.observers:
            observer(cycle)
        if self.store is not None:
            self._hand_over(now)
        return cycle

    async def _read_terminal(self) -> MeterReading | DriverError | None:
        if self.terminal is None or self.terminal_feed is None:
            return None
        return await _attempt(self.terminal_feed.device, self.terminal.read)

    async def _read(self, now: float) -> SiteSnapshot:
        ids = list(self.piles)
        sensors = self.sensors
        meter_result, pile_results, terminal_result = await asyncio.gather(
            _attempt(self.meter_feed.device, self.meter.read),
            asyncio.gather(*(_attempt(f"pile {pid}", self.piles[pid].read) for pid in ids)),
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
            # A pile that was unreachable may have rebooted and lost its fail-safe settings.
            await asyncio.gather(*(self._arm(pid) for pid in rearm))
        return sensors.snapshot(now, self.station.tariff)

    def _record(self, when: float, text: str) -> None:
        """A device failure starting or ending (already logged by its feed)."""
        self.events.append((when, text))
        self.event_count += 1
        if self.telemetry is not None:
            self.telemetry.event(when, text, "device")

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
                written[pid] = True
        self.control.committed({pid: setpoints[pid] for pid, ok in written.items() if ok})
        return written

    # -- the plan loop ---------------------------------------------------------------------------

    async def _plan_loop(self) -> None:
        with self.clock.participant():
            ticker = Ticker(self.clock, self.period_s, start=self.clock.now() + self.period_s / 2)
            while True:
                ticker.period = self.period_s
                await ticker.wait()
                cycle = self.last_cycle
                if cycle is None:
                    continue
                reason = self.control.plan_due(self.clock.now())
                if reason is None:
                    continue
                try:
                    await self.replan(cycle.snapshot, reason)
                except Exception as exc:
                    self._log_once(exc, "planning failed")

    async def replan(self, snapshot: SiteSnapshot, reason: str) -> Plan | None:
        """Solve a new plan in the worker thread and adopt it (or the fallback)."""
        problem = self.planner.problem(snapshot)
        if problem is None:
            return None
        assert self._executor is not None
        serial = self._config_serial
        loop = asyncio.get_running_loop()
        deadline = self.station.scheduler.solve_deadline_s
        future = loop.run_in_executor(self._executor, self._solver.solve, problem)
        try:
            plan = await asyncio.wait_for(asyncio.shield(future), timeout=deadline * 2 + 1)
        except TimeoutError:
            self._solver.cancel()
            plan = None
        if serial != self._config_serial:
            log.debug("a plan made under the config a reload replaced was dropped")
            return None
        plan = self.planner.accept(problem, plan, reason, self.clock.now())
        counts = self.planner.counts
        self.tally.plans, self.tally.fallbacks = counts.plans, counts.fallbacks
        self.tally.solve_ms = counts.solve_ms
        if self.telemetry is not None:
            self.telemetry.plan(plan, self.clock.now())
        return plan

    # -- reloading the config ----------------------------------------------------------------

    def request_reload(self, path: Path) -> None:
        """Reload the station file at `path` (safe to call from a signal handler).

        The reload runs in a task the daemon owns (shutdown cancels it); reloads requested
        together apply one after the other.
        """
        if self._stop.is_set():
            return
        task = asyncio.create_task(self.reload_file(path), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload_file(self, path: Path) -> bool:
        """Load and check the station file at `path`, then apply it; False if it was refused."""
        log.info("reloading %s", path)
        try:
            station = load_station(path)
        except ConfigError as err:
            self._refuse(err)
            return False
        return await self.reload(station)

    async def reload(self, station: Station) -> bool:
        """Apply a new, already validated config between two cycles; False if it was refused.

        Removed piles are left at their fallback power and no longer controlled; their sessions
        end. Added piles get drivers (sharing the connections already open to their address),
        their fail-safe armed, and setpoints from the next cycle on. A pile whose endpoint or
        map changed is removed and added again; one whose numbers changed keeps its driver and
        session (its fail-safe is re-armed if that changed). Tariff, limits and settings take
        effect at once and a new plan is due. If the drivers for the new devices cannot be made
        (certificates, a password), the reload is refused and nothing changes.
        """
        async with self._config_lock:
            old = self.station
            change = StationChange.between(old, station)
            if change.empty:
                log.info("reload of %s: nothing changed", station.path)
                return True
            try:
                meter, terminal, built = self._drivers_for(station, change)
            except ConfigError as err:
                if self.links is not None:
                    self.links.station = old
                    await self.links.prune(old)
                self._refuse(err)
                return False
            now = self.clock.now()
            await self._let_go(change.drops, old)
            feeds = {pid: Feed[PileReading](f"pile {pid}", self._record) for pid in built}
            for pid in change.rerated:
                driver = self.piles[pid]
                if isinstance(driver, AcPile):
                    driver.config = station.pile(pid)
            rearm = [
                pid
                for pid in change.rerated
                if (old.pile(pid).comm_timeout_s, old.pile(pid).fallback_kw)
                != (station.pile(pid).comm_timeout_s, station.pile(pid).fallback_kw)
            ]
            drivers = {**self.piles, **built}
            await asyncio.gather(
                *(self._arm_with(station, drivers[pid], feeds.get(pid)) for pid in built),
                *(self._arm_with(station, drivers[pid], self.pile_feeds[pid]) for pid in rearm),
            )
            self._swap(station, change, drivers, feeds, meter, terminal)
            for text in self.control.reconfigure(station, now, policy=self._policy):
                self._event(now, text)
            await self._follow_policy()
            if self.links is not None:
                await self.links.prune(station)
            self._event(now, f"config reloaded from {station.path}: {change.summary()}")
            return True

    def _refuse(self, err: ConfigError) -> None:
        log.error(
            "reload refused: %d problem(s); still running the config loaded before",
            len(err.problems),
        )
        for problem in err.problems:
            log.error("reload refused: %s", problem)

    def _drivers_for(
        self, station: Station, change: StationChange
    ) -> tuple[Meter | None, Meter | None, dict[str, Pile]]:
        """Drivers for the devices a reload adds or reconnects (meter, terminal, piles)."""
        links = self.links
        if links is None:
            if change.builds or change.meter or change.terminal:
                raise ConfigError(
                    [
                        ConfigProblem(
                            station.path,
                            None,
                            "",
                            "this daemon was given its drivers, so a reload cannot add devices",
                        )
                    ]
                )
            return None, None, {}
        meter = None
        if change.meter:
            gm = station.grid_meter
            meter = MapMeter(gm.id, links.device(station, gm, f"meter {gm.id}"))
        terminal = None
        if change.terminal and station.terminal is not None:
            term = station.terminal
            terminal = MapMeter(term.id, links.device(station, term, f"terminal {term.id}"))
        piles = {
            pid: pile_driver(
                station.pile(pid),
                links.device(station, station.pile(pid), f"pile {pid}"),
                self.clock,
            )
            for pid in change.builds
        }
        return meter, terminal, piles

    async def _let_go(self, pile_ids: Sequence[str], old: Station) -> None:
        """Leave piles the daemon stops controlling at their fallback power, as shutdown does."""
        fallbacks = {pid: old.pile(pid).fallback_kw for pid in pile_ids}
        results = await asyncio.gather(
            *(self.piles[pid].command(kw) for pid, kw in fallbacks.items()), return_exceptions=True
        )
        for pid, result in zip(fallbacks, results, strict=True):
            if isinstance(result, BaseException):
                log.error(
                    "pile %s: no longer controlled, but could not leave it at its fallback "
                    "power (%s); its fail-safe falls back after %g s",
                    pid,
                    result,
                    old.pile(pid).comm_timeout_s,
                )
            else:
                log.info("pile %s: no longer controlled, left at %.0f kW", pid, fallbacks[pid])

    async def _arm_with(self, station: Station, pile: Pile, feed: Feed[PileReading] | None) -> None:
        config = station.pile(pile.id)
        try:
            await pile.arm_failsafe(config.comm_timeout_s, config.fallback_kw)
        except DriverError as exc:
            if feed is not None:
                # Marked failing: the fast loop arms it again once it answers.
                feed.failed(exc, self.clock.now())

    def _swap(
        self,
        station: Station,
        change: StationChange,
        drivers: Mapping[str, Pile],
        feeds: Mapping[str, Feed[PileReading]],
        meter: Meter | None,
        terminal: Meter | None,
    ) -> None:
        """Switch every structure the loops use to the new config, with no await in between."""
        now = self.clock.now()
        for pid in change.drops:
            self._stop_watching(self.pile_feeds[pid], now)
            self.tally._counters.pop(pid, None)  # a reconnected pile's counter starts anew
            self.control.follow.forget(pid)
        piles = {p.id: drivers[p.id] for p in station.piles}
        pile_feeds = {p.id: feeds.get(p.id) or self.pile_feeds[p.id] for p in station.piles}
        self.piles.clear()
        self.piles.update(piles)
        sensors = self.sensors
        sensors.piles = pile_feeds
        if meter is not None:
            self._stop_watching(self.meter_feed, now)
            self.meter = meter
            sensors.meter = Feed(f"meter {meter.id}", self._record)
        if change.terminal:
            if self.terminal_feed is not None:
                self._stop_watching(self.terminal_feed, now)
            self.terminal = terminal
            sensors.terminal = (
                None if terminal is None else Feed(f"terminal {terminal.id}", self._record)
            )
        sensors.station, sensors.settings = station, station.control
        self.station = station
        self.period_s = station.control.period_s
        self.tally.limit_kw = station.limit_kw
        self._solver.time_limit_s = station.scheduler.solve_deadline_s
        self._config_serial += 1
        # The last snapshot describes the old config: the plan loop waits for the next one.
        self.last_cycle = None

    @staticmethod
    def _stop_watching(feed: Feed[T], now: float) -> None:
        """A failure logged when it started is logged as ended when a reload drops its device."""
        if not feed.ok:
            log.warning(
                "%s: no longer watched (config reloaded), after %.0f s not answering",
                feed.device,
                now - (feed.failed_since or now),
            )

    async def _follow_policy(self) -> None:
        """Start or stop the plan loop when a reload changed the policy of a running daemon."""
        if not self._tasks:
            return
        planning = [t for t in self._tasks if t.get_name() == "plan loop"]
        if self.control.policy is Policy.MPC and not planning:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="flexcharge-solver"
            )
            self._tasks.append(asyncio.create_task(self._plan_loop(), name="plan loop"))
        elif self.control.policy is not Policy.MPC and planning:
            self._solver.cancel()
            for task in planning:
                await stop_task(task)
                self._tasks.remove(task)
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    # -- what an operator is told ------------------------------------------------------------

    def _notice(self, cycle: Cycle, decision: Decision) -> None:
        # Curtailment is the site limit holding vehicles back: the headroom is used up and the
        # vehicles would take clearly more (a plan waiting for the valley is not curtailment).
        # The thresholds differ so that a load hovering at the limit does not flap.
        wanted = cycle.wanted_kw
        budget = max(cycle.budget_kw, 0.0)
        granted = sum(max(kw, 0.0) for kw in decision.setpoints.values())
        margin = max(20.0, 0.02 * self.station.limit_kw)
        if not self._curtailing:
            curtailing = wanted > budget + margin and granted >= budget - margin
        else:
            curtailing = wanted > budget + margin / 2 and granted >= budget - 2 * margin
        if curtailing != self._curtailing:
            self._curtailing = curtailing
            if curtailing:
                self._event(
                    cycle.time,
                    f"curtailing: vehicles want {wanted:.0f} kW, headroom gives {budget:.0f} kW",
                )
            else:
                self._event(cycle.time, "curtailment ended: the headroom covers what vehicles take")

    def _event(self, when: float, text: str) -> None:
        self.events.append((when, text))
        self.event_count += 1
        log.info("%s", text)
        if self.telemetry is not None:
            self.telemetry.event(when, text, "control")

    # -- the state file ------------------------------------------------------------------------

    async def _restore(self, store: StateStore) -> None:
        now = self.clock.now()
        loop = asyncio.get_running_loop()
        saved = await loop.run_in_executor(self._store_executor, store.load, now, self.control.zone)
        gone = [r for r in saved.records if r.pile not in self.piles]
        for record in gone:
            record.ended_at = now
        self.ledger = SessionLedger((r for r in saved.records if r.pile in self.piles), closed=gone)
        notes = self.control.restore_state(saved.control, now)
        log.info("resuming from %s: %s", store.path, "; ".join(notes) or "nothing to resume")

    def _hand_over(self, now: float, *, now_anyway: bool = False) -> None:
        """Give the saver the current state: at once after a session started or ended, else at
        most every `SAVE_EVERY_S`. Only copies are handed over; the saver's thread reads them."""
        due = self._last_save_at is None or now - self._last_save_at >= SAVE_EVERY_S
        if not (due or now_anyway or self.ledger.changed):
            return
        self.ledger.changed = False
        self._last_save_at = now
        self._unsaved = (SavedState(self.control.export_state(), tuple(self.ledger.records())), now)
        self._save_wanted.set()

    async def _save_loop(self) -> None:
        while True:
            await self._save_wanted.wait()
            self._save_wanted.clear()
            await self._save()

    async def _save(self) -> None:
        """Write the state last handed over, in the store's thread (a failure is logged once)."""
        if self._unsaved is None or self.store is None:
            return
        state, at = self._unsaved
        self._unsaved = None
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._store_executor, self.store.save, state, at)
        except (sqlite3.Error, OSError) as exc:
            if not self._save_failing:
                self._save_failing = True
                log.error("%s: cannot save the state: %s", self.store.path, exc)
            return
        if self._save_failing:
            self._save_failing = False
            log.warning("%s: saving the state again", self.store.path)
        self.ledger.saved(state.records)
