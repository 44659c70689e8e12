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

With a state file (`controller.store`), it resumes what the last run left on start (sessions with
their energy accounts, which `Control`'s ledger keeps on counting, the month's peak, the plan,
the visits it forecasts from), and saves in a worker thread: after a session starts or ends,
otherwise at most every `SAVE_EVERY_S`, and once more on stop.

Services (the HTTP API) run beside the loops: started after them, stopped before them.

With a telemetry writer (`controller.telemetry`), every cycle, new plan and event is handed to
it as points; it writes them from its own thread, so the loops never wait on the database.

On stop it stops its services, cancels its tasks, leaves every pile at its fallback power, saves
the state, stops the telemetry writer and closes the connections, in that order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from base.clock import Clock, Ticker, stop_task
from base.config import Station, load_station
from base.events import DeviceRef, Event, Kind, Source
from base.loading import ConfigError
from base.loading import ConfigProblem as ConfigProblem
from control.cycle import Control
from control.decider import Decision, Policy
from control.planner import Planner
from control.reload import StationChange
from control.sensing import LimitOverride, Sensors
from control.sessions import Wish
from control.site import Feed
from control.step import Cycle, cycle_of, step
from controller.devices import CsmsService, StationLinks
from controller.planloop import PlanLoop
from controller.saver import StateSaver
from controller.service import Lifecycle, Service
from controller.station_io import StationIO
from controller.status import DeviceHealth, StationStatus, Tally
from controller.store import StateStore
from controller.telemetry.writer import TelemetryWriter
from drivers.acpile import AcPile
from drivers.meter import MapMeter, Meter
from drivers.pile import Pile, PileReading

log = logging.getLogger(__name__)
T = TypeVar("T")

# The state file is written at most this often (station seconds), and at once when a session
# starts or ends.
SAVE_EVERY_S = 1.0


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
        self.control = Control(station, policy=policy)
        self.planner = Planner(self.control)
        self._close = close
        # for_station keeps its connections here, so that a reload can add devices through them.
        self.links: StationLinks | None = None
        self._policy = policy
        self._config_lock = asyncio.Lock()
        self.config_serial = 0
        self._reloads: set[asyncio.Task[bool]] = set()
        self.period_s = station.control.period_s
        self.devices = StationIO(
            station,
            clock,
            meter,
            piles,
            terminal,
            notify=self._record,
            follow=self.control.follow,
        )
        self.tally = Tally(station.limit_kw, planning=self.planner.counts)
        self.observers: list[Callable[[Cycle], None]] = []
        self.events: deque[Event] = deque(maxlen=500)
        self.event_count = 0
        self.last_cycle: Cycle | None = None
        self._stop = asyncio.Event()
        # Done when a cycle is wanted before the next tick (made by the fast loop when it starts).
        self._wake: asyncio.Future[None] | None = None
        self._last_cycle_at: float | None = None
        self._errors_logged: set[str] = set()
        self._curtailing = False
        self.store = store
        self.saver = None if store is None else StateSaver(store, self.control, clock)
        self.telemetry = telemetry
        self.plan_loop = PlanLoop(self, self._log_once)
        # Started after the daemon's own services, stopped (in reverse order) before them.
        self.services: list[Service] = []
        self.lifecycle = Lifecycle()

    @property
    def piles(self) -> dict[str, Pile]:
        """The piles the daemon controls, by id."""
        return self.devices.piles

    @property
    def sensors(self) -> Sensors:
        """The checks every reading goes through, and each device's feed."""
        return self.devices.sensors

    @property
    def solve_deadline_s(self) -> float:
        """How long a solve may take (the station's [scheduler] setting)."""
        return self.station.scheduler.solve_deadline_s

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
        meter = MapMeter(gm.id, links.device(station, gm, DeviceRef.meter(gm.id)))
        term = station.terminal
        terminal = (
            None
            if term is None
            else MapMeter(term.id, links.device(station, term, DeviceRef.terminal(term.id)))
        )
        piles = [links.pile(station, p) for p in station.piles]
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
                    f.label,
                    f.ok,
                    f.episodes,
                    None if f.error is None else f.error.message,
                    since=f.failed_since,
                    last_seen=f.at,
                )
                for f in sensors.feeds()
            ),
            pile_errors={
                pid: None if f.error is None else f.error.message
                for pid, f in sensors.piles.items()
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

    def unwatch(self, observer: Callable[[Cycle], None]) -> None:
        """Stop calling `observer` (nothing to do if it is not watching)."""
        if observer in self.observers:
            self.observers.remove(observer)

    def wish(self, pile_id: str, session_id: int, wish: Wish) -> None:
        """What a driver or fleet system says of the session at a pile."""
        self.control.wish(pile_id, session_id, wish)

    def override_limit(self, kw: float, until: float, reason: str) -> LimitOverride:
        """Lower the site limit until `until` (raises ValueError if it would raise it); the
        piles are held to it by a cycle run at once, not at the next tick."""
        override = self.sensors.override_limit(kw, until, self.clock.now(), reason)
        self.cycle_now()
        return override

    def clear_override(self) -> LimitOverride | None:
        """End the operator's override now; the one that ended, if any."""
        ended = self.sensors.clear_override(self.clock.now())
        self.cycle_now()
        return ended

    def cycle_now(self) -> None:
        """Have the fast loop run a cycle as soon as it can (after the one under way, if any)
        rather than at its next tick; its ticks keep to their grid."""
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def request_stop(self) -> None:
        """Ask `run` to shut down (safe to call from a signal handler, more than once)."""
        if not self._stop.is_set():
            log.info("stop requested")
            self._stop.set()

    async def start(self) -> None:
        """Start the services in order: the state saver (resuming the saved state), telemetry,
        the fast loop (connecting and arming every pile's fail-safe first), the plan loop, then
        the services added to `services` (the API).

        Raises `StateError` (before touching any device) if the state file cannot be read.
        """
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
        services: list[Service] = []
        if self.saver is not None:
            self.saver.piles = frozenset(self.piles)
            services.append(self.saver)
        if self.telemetry is not None:
            services.append(TelemetryService(self.telemetry))
        if self.links is not None and self.links.csms is not None:
            # Before the fast loop (which arms the piles on it), stopped after it.
            services.append(CsmsService(self.links.csms))
        services.append(FastLoop(self))
        if self.control.policy is Policy.MPC:
            services.append(self.plan_loop)
        await self.lifecycle.start([*services, *self.services])

    async def shutdown(self) -> None:
        """Stop every service in reverse (the fast loop leaves every pile at its fallback power,
        the saver writes the last state), then close the connections."""
        for reload in list(self._reloads):
            await stop_task(reload)
        await self.lifecycle.stop()
        if self._close is not None:
            await self._close()

    async def leave_at_fallback(self, pile_ids: Sequence[str], station: Station) -> None:
        """Leave piles the daemon stops controlling at their fallback power (see `StationIO`)."""
        written = await self.devices.leave_at_fallback(pile_ids, station)
        self.control.committed(written, self.clock.now())

    async def _fast_loop(self) -> None:
        loop = asyncio.get_running_loop()
        with self.clock.participant():
            ticker = Ticker(self.clock, self.period_s)
            self._wake = loop.create_future()
            while True:
                ticker.period = self.period_s  # a reload may have changed it
                await ticker.wait(self._wake)
                if self._wake.done():
                    self._wake = loop.create_future()
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
        snapshot = await self.devices.read(now)
        done = step(self.control, snapshot, dt)
        for event in done.events:
            self._event(event)
        decision = done.decision
        written = await self.devices.write(decision.setpoints, now)
        self.control.committed(
            {pid: decision.setpoints[pid] for pid, ok in written.items() if ok}, now
        )
        cycle = cycle_of(now, snapshot, decision, written, self.control)
        self.last_cycle = cycle
        self.tally.add(cycle, dt, (time.perf_counter() - started) * 1000)
        self._notice(cycle, decision)
        if self.telemetry is not None:
            self.telemetry.cycle(cycle)
        for observer in self.observers:
            observer(cycle)
        if self.saver is not None:
            self.saver.hand_over(now)
        return cycle

    def _record(self, event: Event) -> None:
        """An event already logged where it was made (a feed's health, the sensing checks)."""
        self.events.append(event)
        self.event_count += 1
        if self.telemetry is not None:
            self.telemetry.event(event)

    # -- the plan loop ---------------------------------------------------------------------------

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
            await self.leave_at_fallback(change.drops, old)
            feeds = {pid: Feed[PileReading](DeviceRef.pile(pid), self._record) for pid in built}
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
                *(self.devices.arm_with(station, drivers[pid], feeds.get(pid)) for pid in built),
                *(
                    self.devices.arm_with(station, drivers[pid], self.devices.pile_feeds[pid])
                    for pid in rearm
                ),
            )
            # Switch every structure the loops use to the new config, with no await in between.
            self.devices.swap(station, change, drivers, feeds, meter, terminal)
            for pid in change.drops:
                self.tally._counters.pop(pid, None)  # a reconnected pile's counter starts anew
                self.control.follow.forget(pid)
            self.station = station
            self.period_s = station.control.period_s
            self.tally.limit_kw = station.limit_kw
            self.config_serial += 1
            # The last snapshot describes the old config: the plan loop waits for the next one.
            self.last_cycle = None
            for text in self.control.reconfigure(station, now, policy=self._policy):
                self._event(Event(now, Source.CONTROL, Kind.RELOAD, text))
            await self._follow_policy()
            if self.links is not None:
                await self.links.prune(station)
            text = f"config reloaded from {station.path}: {change.summary()}"
            self._event(Event(now, Source.OPERATOR, Kind.RELOAD, text))
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
            meter = MapMeter(gm.id, links.device(station, gm, DeviceRef.meter(gm.id)))
        terminal = None
        if change.terminal and station.terminal is not None:
            term = station.terminal
            terminal = MapMeter(term.id, links.device(station, term, DeviceRef.terminal(term.id)))
        piles = {pid: links.pile(station, station.pile(pid)) for pid in change.builds}
        return meter, terminal, piles

    async def _follow_policy(self) -> None:
        """Start or stop the plan loop when a reload changed the policy of a running daemon."""
        running = self.lifecycle.running
        if not running:
            return
        planning = self.plan_loop in running
        if self.control.policy is Policy.MPC and not planning:
            await self.lifecycle.add(self.plan_loop)
        elif self.control.policy is not Policy.MPC and planning:
            await self.lifecycle.remove(self.plan_loop)

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
                kind = Kind.CURTAILING
                text = f"curtailing: vehicles want {wanted:.0f} kW, headroom gives {budget:.0f} kW"
            else:
                kind = Kind.CURTAILMENT_ENDED
                text = "curtailment ended: the headroom covers what vehicles take"
            self._event(Event(cycle.time, Source.CONTROL, kind, text))

    def _event(self, event: Event) -> None:
        """An event made here or in the control step: logged at its level, then recorded."""
        event.log(log)
        self._record(event)


class FastLoop:
    """The fast loop as a service: arms every pile, then reads, decides and writes each period;
    on stop it leaves every pile at its fallback power."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Arm every pile's fail-safe, then start cycling."""
        daemon = self.daemon
        await asyncio.gather(*(daemon.devices.arm(pid) for pid in daemon.piles))
        self._task = asyncio.create_task(daemon._fast_loop(), name="fast loop")

    async def stop(self) -> None:
        """Stop cycling and leave every pile at its fallback power."""
        if self._task is None:
            return
        await stop_task(self._task)
        self._task = None
        daemon = self.daemon
        await daemon.leave_at_fallback(list(daemon.piles), daemon.station)
        log.info("every reachable pile left at its fallback power; stopped")


class TelemetryService:
    """The telemetry writer's thread as a service."""

    def __init__(self, writer: TelemetryWriter) -> None:
        self.writer = writer

    async def start(self) -> None:
        """Start the writer's thread."""
        self.writer.start()
        log.info("telemetry to %s", self.writer.sink.description)

    async def stop(self) -> None:
        """Write (or buffer) what is queued and end the thread."""
        counts = await self.writer.stop()
        log.info("telemetry: %s", counts.summary())
