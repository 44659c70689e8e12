"""The daemon: owns the control tasks, talks to the devices, and shuts down safely.

Two tasks, both owned here:

- the fast loop (about once a second) reads the grid meter and every pile at once, hands the
  snapshot to `Control` for setpoints and writes them back, which also keeps each pile's
  fail-safe timer from firing;
- the plan loop asks `Control` whether a new plan is due (every minute, and on arrivals,
  departures, limit changes and large deviations) and solves it in a worker thread with a
  deadline, so the event loop never blocks; a failed or late solve gives way to the fallback
  heuristic.

With a state file (`controller.store`), it resumes what the last run left on start (sessions,
the month's peak, the plan, the visits it forecasts from), keeps each session's energy account
(`controller.ledger`), and saves in a worker thread: after a session starts or ends, otherwise at
most every `SAVE_EVERY_S`, and once more on stop.

On stop it cancels its tasks, leaves every pile at its fallback power, saves the state and closes
the connections, in that order.
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
from dataclasses import dataclass, field
from typing import TypeVar

from controller.clock import Clock, Ticker
from controller.config import DeviceEndpoint, Station
from controller.control import Control, Decision, Policy
from controller.devices import modbus_device, pile_driver
from controller.ledger import SessionLedger
from controller.site import Feed, PileView, SiteSnapshot
from controller.store import SavedState, StateStore
from drivers.device import Device
from drivers.errors import DriverError
from drivers.meter import MapMeter, Meter, MeterReading
from drivers.modbus import ModbusLinks
from drivers.opcua import OpcUaDevice, OpcUaLinks, OpcUaSecurity
from drivers.pile import Pile, PileReading
from scheduler.fallback import fallback_plan
from scheduler.plan import Plan
from scheduler.problem import Problem, ProblemError
from scheduler.solver import Solver

log = logging.getLogger(__name__)
T = TypeVar("T")

# The state file is written at most this often (station seconds), and at once when a session
# starts or ends.
SAVE_EVERY_S = 1.0


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
    plans: int = 0
    fallbacks: int = 0
    energy_by_band: dict[str, float] = field(default_factory=dict)
    charging_cost: float = 0.0
    solve_ms: list[float] = field(default_factory=list)
    _counters: dict[str, float] = field(default_factory=dict)

    def add(self, cycle: Cycle, dt: float, cycle_ms: float) -> None:
        """Account one cycle."""
        self.cycles += 1
        self.cycle_ms_max = max(self.cycle_ms_max, cycle_ms)
        self.cycle_ms_total += cycle_ms
        piles_kwh = max(cycle.snapshot.piles_kw, 0.0) * dt / 3600
        band = cycle.snapshot.band
        self.energy_by_band[band] = self.energy_by_band.get(band, 0.0) + piles_kwh
        self.charging_cost += piles_kwh * cycle.snapshot.price
        grid = cycle.snapshot.grid_kw
        if grid is not None:
            if grid > self.peak_grid_kw:
                self.peak_grid_kw, self.peak_at = grid, cycle.time
            if grid > cycle.snapshot.limit_kw:
                self.over_limit_s += dt
        for view in cycle.snapshot.piles:
            if view.reading is None:
                continue
            counter = view.reading.energy_import_kwh
            before = self._counters.get(view.id)
            if before is not None and counter >= before:
                self.energy_kwh += counter - before
            self._counters[view.id] = counter
            if view.id in cycle.setpoints and not _within_bounds(cycle.setpoints[view.id], view):
                self.out_of_bounds += 1


def _within_bounds(kw: float, view: PileView) -> bool:
    if kw == 0:
        return True
    if kw > 0:
        return view.min_kw - 1e-6 <= kw <= view.max_kw + 1e-6
    return view.min_kw - 1e-6 <= -kw <= view.max_discharge_kw + 1e-6


def _opcua_security(station: Station) -> OpcUaSecurity:
    """SignAndEncrypt with the daemon's certificate and the station's OPC-UA user and policies."""
    identity = station.identity("daemon")
    assert station.security is not None  # identity() raises ConfigError without [security]
    credentials = station.opcua_credentials()
    user, password = credentials if credentials is not None else (None, None)
    return OpcUaSecurity(
        encrypt=True,
        certificate=identity.cert_pem,
        private_key=identity.key_pem,
        trust_dir=identity.trust_dir,
        application_uri=identity.application_uri,
        policies=tuple(station.security.opcua_policies),
        user=user,
        password=password,
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
    ) -> None:
        """`store`: the station's state file, to resume from on start and save to while running."""
        self.station = station
        self.clock = clock
        self.meter = meter
        self.terminal = terminal
        self.piles = {pile.id: pile for pile in piles}
        self.control = Control(station, policy=policy)
        self._close = close
        self.period_s = station.control.period_s
        self.meter_feed: Feed[MeterReading] = Feed(f"meter {meter.id}")
        self.terminal_feed: Feed[MeterReading] | None = (
            None if terminal is None else Feed(f"terminal {terminal.id}")
        )
        self.pile_feeds: dict[str, Feed[PileReading]] = {
            pid: Feed(f"pile {pid}") for pid in self.piles
        }
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
        self._plan_failing = False
        self.store = store
        self.ledger = SessionLedger()
        self._store_executor: ThreadPoolExecutor | None = None
        self._unsaved: tuple[SavedState, float] | None = None
        self._save_wanted = asyncio.Event()
        self._last_save_at: float | None = None
        self._save_failing = False

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
    ) -> Daemon:
        """A daemon whose meter and piles are the devices the station config names.

        OPC-UA devices are reached through one session per endpoint URL, with the daemon's
        certificate, the station's OPC-UA user and policies; the others over Modbus TCP or
        Modbus/TCP Security, AC chargers through their make's driver. Raises
        `ConfigError` when certificates or the password an encrypted link needs are missing.
        """
        io_timeout = station.control.io_timeout_s
        modbus = ModbusLinks(timeout_s=io_timeout)
        opcua = OpcUaLinks(
            now=clock.now, timeout_s=io_timeout, secure=lambda: _opcua_security(station)
        )

        def device(endpoint: DeviceEndpoint, name: str) -> Device:
            regmap = station.map_for(endpoint.device)
            if endpoint.protocol == "opcua":
                link = opcua.get(
                    endpoint.opcua_url, encrypt=endpoint.opcua_security == "sign-and-encrypt"
                )
                return OpcUaDevice(name, link, regmap, endpoint.opcua_object)
            return modbus_device(endpoint, name, station, modbus)

        gm = station.grid_meter
        meter = MapMeter(gm.id, device(gm, f"meter {gm.id}"))
        term = station.terminal
        terminal = None if term is None else MapMeter(term.id, device(term, f"terminal {term.id}"))
        piles = [pile_driver(p, device(p, f"pile {p.id}"), clock) for p in station.piles]

        async def close() -> None:
            modbus.close()
            await opcua.close()

        return cls(
            station,
            clock,
            meter,
            piles,
            policy=policy,
            close=close,
            terminal=terminal,
            store=store,
        )

    over_modbus = for_station

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
        await asyncio.gather(*(self._arm(pid) for pid in self.piles))
        self._tasks.append(asyncio.create_task(self._fast_loop(), name="fast loop"))
        if self.control.policy is Policy.MPC:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="flexcharge-solver"
            )
            self._tasks.append(asyncio.create_task(self._plan_loop(), name="plan loop"))

    async def shutdown(self) -> None:
        """Stop the loops, leave every pile at its fallback power, close connections."""
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
        if self._close is not None:
            await self._close()

    async def _arm(self, pile_id: str) -> None:
        config = self.station.pile(pile_id)
        try:
            await self.piles[pile_id].arm_failsafe(config.comm_timeout_s, config.fallback_kw)
        except DriverError as exc:
            self.pile_feeds[pile_id].failed(exc, self.clock.now())

    # -- the fast loop -------------------------------------------------------------------------

    async def _fast_loop(self) -> None:
        with self.clock.participant():
            ticker = Ticker(self.clock, self.period_s)
            while True:
                await ticker.wait()
                try:
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
        if self.store is not None:
            self.ledger.close_ended(snapshot, self.control.sessions)
        for text in self.control.observe(snapshot, dt):
            self._event(now, text)
        if self.store is not None:
            self.ledger.follow(snapshot, self.control.sessions)
        decision = self.control.decide(snapshot, dt)
        written = await self._write(decision.setpoints, now)
        cycle = Cycle(
            now, snapshot, decision.budget_kw, decision.targets, decision.setpoints, written
        )
        self.last_cycle = cycle
        self.tally.add(cycle, dt, (time.perf_counter() - started) * 1000)
        self._notice(cycle, decision)
        for observer in self.observers:
            observer(cycle)
        if self.store is not None:
            self._hand_over(now)
        return cycle

    async def _read_terminal(self, now: float) -> None:
        if self.terminal is None or self.terminal_feed is None:
            return
        self._take(
            self.terminal_feed, await _attempt(self.terminal_feed.device, self.terminal.read), now
        )

    async def _read(self, now: float) -> SiteSnapshot:
        ids = list(self.piles)
        meter_result, pile_results, _ = await asyncio.gather(
            _attempt(self.meter_feed.device, self.meter.read),
            asyncio.gather(*(_attempt(f"pile {pid}", self.piles[pid].read) for pid in ids)),
            self._read_terminal(now),
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
                current=self.pile_feeds[pid].at == now,
            )
            for pid in ids
        )
        meter_current = self.meter_feed.at == now
        terminal = None if self.terminal_feed is None else self.terminal_feed.fresh(now, max_age)
        if meter is None and terminal is not None:
            # The terminal measures the same connection: it stands in for a lost grid meter.
            meter = terminal
            meter_current = self.terminal_feed is not None and self.terminal_feed.at == now
        tariff = self.station.tariff
        return SiteSnapshot(
            time=now,
            limit_kw=self._limit(meter, terminal),
            grid_kw=None if meter is None else meter.power_kw,
            meter=meter,
            piles=views,
            band=tariff.band_at(now),
            price=tariff.price_at(now),
            meter_current=meter_current,
        )

    def _limit(self, *readings: MeterReading | None) -> float:
        """The transformer's limit, lowered by a utility limit a fresh reading relays.

        A utility limit that is no longer relayed (terminal lost, signal withdrawn) ends; the
        utility's own equipment is the backstop for a terminal that fails while a limit is on.
        """
        limit = self.station.limit_kw
        for reading in readings:
            relayed = None if reading is None else reading.utility_limit_kw
            if relayed is not None and relayed >= 0:
                limit = min(limit, relayed)
        return limit

    def _take(self, feed: Feed[T], result: T | DriverError, now: float) -> bool:
        """Store one read result in its feed; True if the device has just recovered."""
        if isinstance(result, DriverError):
            feed.failed(result, now)
            return False
        return feed.succeeded(result, now)

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
        try:
            problem = self.control.problem(snapshot)
            problem.check()
        except ProblemError as exc:
            self._log_once(exc, "cannot build the scheduling problem")
            return None
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        deadline = self.station.scheduler.solve_deadline_s
        future = loop.run_in_executor(self._executor, self._solver.solve, problem)
        try:
            plan = await asyncio.wait_for(asyncio.shield(future), timeout=deadline * 2 + 1)
        except TimeoutError:
            self._solver.cancel()
            plan = None
        plan = self._accept(problem, plan, reason)
        self.control.adopt(plan, self.clock.now(), problem)
        return plan

    def _accept(self, problem: Problem, plan: Plan | None, reason: str) -> Plan:
        """The solver's plan, or the fallback heuristic's, logging a failure once."""
        self.tally.plans += 1
        if plan is not None:
            self.tally.solve_ms.append(plan.solve_ms)
        if plan is not None and plan.status.has_schedule:
            if self._plan_failing:
                log.warning("the optimiser is planning again (%s)", plan.status)
                self._plan_failing = False
            log.debug(
                "plan (%s): %s in %.0f ms, objective %.2f",
                reason,
                plan.status,
                plan.solve_ms,
                plan.objective or 0,
            )
            return plan
        why = "no answer before the deadline" if plan is None else f"{plan.status}: {plan.message}"
        if not self._plan_failing:
            log.error(
                "the optimiser gave no plan (%s); using least laxity first until it does", why
            )
            self._plan_failing = True
        self.tally.fallbacks += 1
        return fallback_plan(problem, reason=why)

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
