"""Fast simulation: the daemon's control logic driving the plant on a simulated clock, no sockets.

One loop, one step at a time: the plant advances to `now`, the controller's `Control` observes
the site through the daemon's drivers and checks, re-plans when a plan is due (in the same
`Solver` the daemon uses), decides setpoints through the same limiter, and the drivers write them.
The drivers reach the plant's devices in-process (`simulator.inprocess`): only the transport and
the clock differ from the daemon. Days of station time run in seconds, which is what the policy
comparisons, the tariff what-ifs and CI need.

Policies: the daemon's `mpc`; the baselines `uncontrolled` (every vehicle at full power, limit
ignored), `equal-share`, `edf`, `llf`; and `offline-optimal`, one solve with perfect knowledge of
every arrival, departure, energy, background and limit, followed by the same fast loop.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from base.config import Station
from base.events import Event
from base.tariff import Tariff
from control.cycle import Control
from control.decider import Decision, Policy, group_limits
from control.follow import FollowWatch
from control.forecast import BackgroundForecast
from control.planner import Planner
from control.record import Recorder
from control.sensing import Sensors
from control.sessions import PastVisit, Wish
from control.site import SiteSnapshot
from control.step import cycle_of, step
from drivers.errors import DriverError
from drivers.pile import PileReading
from scheduler.solver import Solver
from simulator.books import Books, Ledger
from simulator.bound import offline_bound
from simulator.faults import Fault, FaultScript
from simulator.fleet import Visit, assign_piles
from simulator.inprocess import InProcessStation, StepClock, finish
from simulator.plant import PileModel, Plant, VehicleModel
from simulator.scenario import Series

T = TypeVar("T")


@dataclass(frozen=True)
class Scenario:
    """What to simulate: a station, a tariff, the visits, and optionally load and limit series."""

    station: Station
    tariff: Tariff
    visits: tuple[Visit, ...]
    start: float
    end: float
    name: str = "scenario"
    background: Series | None = None
    limit: Series | None = None
    measure_from: float | None = None
    history: tuple[PastVisit, ...] = ()
    faults: tuple[Fault, ...] = ()
    # What the controller is told of each vehicle: "exact" (the fleet system says what it needs
    # and when it leaves), or "stated" (only what its driver typed in, if anything, and its
    # pile reports no state of charge, as a plain AC charger does).
    information: str = "exact"

    @property
    def measured_start(self) -> float:
        """Where the metrics start (after any warm-up)."""
        return self.start if self.measure_from is None else self.measure_from

    def with_warmup(self, days: int) -> Scenario:
        """The same scenario preceded by `days` days that repeat its first day.

        A station in the middle of a month has a history: trucks parked since the evening before,
        a month's peak already set, yesterday's arrivals to forecast today's. Warm-up days give
        the simulation that history (and the controller remembers one more such day, so that
        its forecast works from the first warm-up day on); the metrics cover only the scenario.
        """
        if days <= 0:
            return self
        first_day = [v for v in self.visits if v.arrival < self.start + 86400]
        earlier = [
            replace(
                v,
                vehicle_id=f"{v.vehicle_id}~{k}",
                arrival=v.arrival - k * 86400,
                departure=v.departure - k * 86400,
            )
            for k in range(1, days + 1)
            for v in first_day
        ]
        remembered = tuple(
            PastVisit(
                v.arrival - (days + 1) * 86400,
                v.departure - (days + 1) * 86400,
                v.energy_kwh,
                v.energy_kwh,
                v.max_kw,
            )
            for v in first_day
        )
        return replace(
            self,
            history=remembered,
            visits=tuple(sorted([*earlier, *self.visits], key=lambda v: v.arrival)),
            start=self.start - days * 86400,
            measure_from=self.measured_start,
            background=None if self.background is None else self.background.repeated_before(days),
            limit=None if self.limit is None else self.limit.repeated_before(days),
        )

    @classmethod
    def around(
        cls,
        station: Station,
        visits: Sequence[Visit],
        *,
        tariff: Tariff | None = None,
        name: str = "scenario",
        background: Series | None = None,
        limit: Series | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> Scenario:
        """A scenario from the first arrival's local midnight to the last departure's next one."""
        zone = ZoneInfo(station.info.timezone)
        if start is None:
            first = datetime.fromtimestamp(min(v.arrival for v in visits), zone)
            start = first.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        if end is None:
            last = max(v.departure for v in visits)
            end = start + math.ceil((last - start) / 86400) * 86400
        return cls(
            station, tariff or station.tariff, tuple(visits), start, end, name, background, limit
        )


@dataclass
class SimResult:
    """What one policy did in one scenario."""

    policy: str
    scenario: str
    metrics: dict[str, float | int | str]
    times: NDArray[np.float64]
    site_kw: NDArray[np.float64]
    background_kw: NDArray[np.float64]
    piles_kw: NDArray[np.float64]
    limit_kw: NDArray[np.float64]
    price: NDArray[np.float64]
    bands: list[str]
    requested_kwh: dict[str, float]
    delivered_kwh: dict[str, float]
    peak_kw: NDArray[np.float64]
    books: Books
    solve_ms: list[float] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    controller_delivered_kwh: dict[str, float] = field(default_factory=dict)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def _wish(visit: Visit, information: str) -> Wish:
    if information == "stated":
        return Wish(
            vehicle_id=visit.vehicle_id,
            energy_kwh=visit.stated_energy_kwh,
            departure=visit.stated_departure,
            v2g=visit.v2g,
        )
    return Wish(
        vehicle_id=visit.vehicle_id,
        energy_kwh=visit.energy_kwh,
        departure=visit.departure,
        v2g=visit.v2g,
    )


def simulate(
    scenario: Scenario,
    policy: Policy | str,
    *,
    step_s: float = 60.0,
    plan_period_s: float | None = None,
    progress: Callable[[float], None] | None = None,
    telemetry: Recorder | None = None,
    also_billed_under: Sequence[Tariff] = (),
    solve_deadline: bool = True,
) -> SimResult:
    """Run one policy through the scenario; `progress` gets the fraction done now and then.

    `solve_deadline` False: every plan is solved to the end, without the station's
    `solve_deadline_s` (wall time, which a loaded machine could hit and fall back where an idle
    one would not), so that the run is the same on any machine.

    The run's books are cut wherever the scenario's tariff, or one of `also_billed_under`,
    changes band, so that `repriced` can bill it exactly under those too.

    With `telemetry`, every step, plan and event is written as the daemon writes them (the
    caller starts and closes the writer; no point is dropped: a full queue waits).

    The controller reads and writes the plant through the daemon's drivers and `Sensors` checks.
    With the scenario's `faults`, devices, vehicles and the utility misbehave as scripted; devices
    that do not answer get no setpoints. `SimResult.events` holds what the controller noticed and
    the script's faults starting and ending, as events (`base.events`).
    """
    policy = Policy(policy)
    station = scenario.station
    if station.simulator is None:
        raise ValueError(f"{station.path}: the station has no [simulator] section")
    station = _with_tariff(station, scenario.tariff)
    zone = ZoneInfo(station.info.timezone)
    started = time.perf_counter()
    if policy is Policy.OFFLINE:
        return _bound(scenario, station, step_s, also_billed_under, telemetry, started)
    ratings = {p.id: p.max_kw for p in station.piles}
    served, _ = assign_piles(scenario.visits, ratings)
    plant = Plant(
        station,
        served,
        record=False,
        background=scenario.background,
        limit=scenario.limit,
        groups=[(g.members, g.limit_kw) for g in group_limits(station)],
    )
    forecast = None
    if scenario.background is not None:
        forecast = BackgroundForecast(scenario.background.hourly_profile(zone), zone)
    control = Control(station, policy=policy, forecast=forecast, plan_period_s=plan_period_s)
    control.history.extend(scenario.history)
    counted: dict[str, float] = {}
    control.on_departure = lambda visit: counted.__setitem__(visit.vehicle_id, visit.delivered_kwh)
    visits_by_id = {v.vehicle_id: v for v in served}

    def plugged(pile: PileModel, vehicle: VehicleModel) -> None:
        # The fleet system tells the controller what each truck needs and when it leaves.
        visit = visits_by_id[vehicle.visit.vehicle_id]
        control.wish(pile.id, pile.session_id, _wish(visit, scenario.information))

    plant.on_plug = plugged
    events: list[Event] = []
    faults = FaultScript(scenario.faults)
    faults.check(station)
    if scenario.information not in ("exact", "stated"):
        raise ValueError(f"information must be 'exact' or 'stated', not {scenario.information!r}")
    sensing = _Sensing(
        station,
        plant,
        faults,
        events,
        control.follow,
        start=scenario.start,
        end=scenario.end,
        soc=scenario.information == "exact",
    )
    solver = Solver(time_limit_s=station.scheduler.solve_deadline_s if solve_deadline else None)
    planner = Planner(control)

    def plan_now(snapshot: SiteSnapshot) -> None:
        # Inline, where the daemon's plan loop solves in a thread half a period on.
        now = snapshot.time
        reason = control.plan_due(now)
        problem = None if reason is None else planner.problem(snapshot)
        if reason is not None and problem is not None:
            plan = planner.accept(problem, solver.solve(problem), reason, now)
            if telemetry is not None:
                telemetry.plan(plan, now, block=True)

    steps = math.ceil((scenario.end - scenario.start) / step_s)
    times: NDArray[np.float64] = scenario.start + step_s * np.arange(1, steps + 1, dtype=float)
    # Pieces of a step are cut where any tariff the run is billed under changes band, and at
    # quarter hours (the demand charge's windows), so that each is billed at one price.
    cuts = _billing_cuts([scenario.tariff, *also_billed_under], scenario.start, float(times[-1]))
    next_cut = 0
    ledger = Ledger()
    limits = np.zeros(steps)
    piles_now = np.zeros(steps)  # the piles' power at each step's end
    report_every = max(1, steps // 100)
    step_ms = np.zeros(steps)
    reached: set[str] = set()  # piles the controller was in touch with at the last step
    scripted = bool(faults)  # without a fault script every pile is always reachable
    told = 0
    for k, now in enumerate(times.tolist()):
        step_started = time.perf_counter()
        # The daemon's fast loop writes every second; between our steps it would have kept every
        # pile's fail-safe timer from running out.
        events.extend(faults.apply(plant, now))
        for pile_id, pile in plant.piles.items():
            if not scripted or faults.reachable(pile_id, now):
                pile.heartbeat(now, continuous=pile_id in reached)
                reached.add(pile_id)
            else:
                reached.discard(pile_id)
        first_cut = next_cut
        while next_cut < len(cuts) and cuts[next_cut] < now:
            next_cut += 1
        plant.step(now, step_s, cuts[first_cut:next_cut])
        ledger.add(k, plant.pieces)
        snapshot = sensing.snapshot(now, scenario.tariff)
        done = step(control, snapshot, step_s, plan=plan_now)
        events.extend(done.events)
        decision = done.decision
        written = sensing.write(now, decision.setpoints, _break_before_make(plant, decision))
        control.committed(written, now)
        if telemetry is not None:
            _tell(telemetry, now, snapshot, decision, written, events, told, control)
            told = len(events)
        limits[k] = plant.interval_limit_kw
        piles_now[k] = plant.site_kw - plant.background_kw
        step_ms[k] = (time.perf_counter() - step_started) * 1000
        if progress is not None and k % report_every == 0:
            progress(k / steps)
    if progress is not None:
        progress(1.0)
    first = scenario.measured_start
    requested = {v.vehicle_id: v.energy_kwh for v in scenario.visits if v.arrival >= first}
    delivered = {vid: plant.delivered(vid) for vid in requested}
    window = times > first
    skipped = int(np.argmax(window)) if window.any() else steps
    books = ledger.books().since(first, skipped)
    result = _result(
        policy.value,
        scenario,
        times[window],
        limits[window],
        books,
        requested,
        delivered,
        planner.counts.solve_ms,
        events,
        counted,
    )
    result.metrics = _metrics(
        result, scenario, station, step_s, planner.counts.plans, planner.counts.fallbacks
    )
    # How fast the piles' total moved, sampled at the steps' ends (as setpoints are).
    sampled = piles_now[window]
    ramps = np.diff(sampled) / (step_s / 60) if len(sampled) > 1 else np.zeros(1)
    result.metrics["max_ramp_kw_per_min"] = round(float(max(ramps.max(), 0.0)), 1)
    result.metrics["max_drop_kw_per_min"] = round(float(max(-ramps.min(), 0.0)), 1)
    result.metrics["wall_s"] = round(time.perf_counter() - started, 2)
    # One step is one control cycle (plant, sensing, control, the plan when one is due).
    result.metrics["cycle_ms_p50"] = round(_percentile(list(step_ms), 50), 3)
    result.metrics["cycle_ms_p99"] = round(_percentile(list(step_ms), 99), 3)
    result.metrics["cycle_ms_max"] = round(float(step_ms.max()) if steps else 0.0, 3)
    return result


def cheapest(scenario: Scenario, energy_kwh: float, *, step_s: float = 60.0) -> SimResult:
    """The cheapest any controller that respects the limits could deliver `energy_kwh` in the
    scenario, knowing it all in advance: the offline bound with an energy floor in place of the
    most energy, billed on the same books (its `cost_yuan` is the least such a run could cost).
    Raises `simulator.bound.BoundError` if no plan delivers that much."""
    station = _with_tariff(scenario.station, scenario.tariff)
    return _bound(scenario, station, step_s, (), None, time.perf_counter(), energy_kwh)


def _bound(
    scenario: Scenario,
    station: Station,
    step_s: float,
    also_billed_under: Sequence[Tariff],
    telemetry: Recorder | None,
    started: float,
    at_least_kwh: float | None = None,
) -> SimResult:
    """The offline bound as a run's result: the plan's own books (`simulator.bound`)."""
    end = scenario.start + step_s * math.ceil((scenario.end - scenario.start) / step_s)
    cuts = _billing_cuts([scenario.tariff, *also_billed_under], scenario.start, end)
    problem, plan, books, delivered_all, times = offline_bound(
        scenario,
        step_s=step_s,
        cuts=cuts,
        at_least_kwh=at_least_kwh,
        time_limit_s=BOUND_TIME_LIMIT_S,
    )
    if telemetry is not None:
        telemetry.plan(plan, scenario.start, block=True)
    first = scenario.measured_start
    requested = {v.vehicle_id: v.energy_kwh for v in scenario.visits if v.arrival >= first}
    delivered = {vid: delivered_all.get(vid, 0.0) for vid in requested}
    window = times > first
    skipped = int(np.argmax(window)) if window.any() else len(times)
    step_of = np.searchsorted(times, problem.boundaries[:-1], side="right")
    limits = np.full(len(times), np.inf)
    np.minimum.at(limits, np.minimum(step_of, len(times) - 1), problem.limit_kw)
    result = _result(
        Policy.OFFLINE.value,
        scenario,
        times[window],
        limits[window],
        books.since(first, skipped),
        requested,
        delivered,
        [plan.solve_ms],
        [],
        {},
    )
    result.metrics = _metrics(result, scenario, station, step_s, 1, 0)
    piles = result.piles_kw
    ramps = np.diff(piles) / (step_s / 60) if len(piles) > 1 else np.zeros(1)
    result.metrics["max_ramp_kw_per_min"] = round(float(max(ramps.max(), 0.0)), 1)
    result.metrics["max_drop_kw_per_min"] = round(float(max(-ramps.min(), 0.0)), 1)
    result.metrics["wall_s"] = round(time.perf_counter() - started, 2)
    return result


def _break_before_make(plant: Plant, decision: Decision) -> float:
    """How long to hold this step's rises back: until the piles coming down have come down.

    The daemon's one-second cycles hold a rise until the power it takes over has really been
    given up (`control.limiter`); a fast simulation writes once a step, so it holds rises for
    as long as the falls take (each pile's delay and ramp), when counting the falling piles at
    what they draw now would put the piles over the budget.
    """
    falls = 0.0
    total = 0.0
    for pid, kw in decision.setpoints.items():
        pile = plant.piles[pid]
        total += max(kw, pile.power_kw)
        if kw < pile.power_kw - 1e-9:
            rate = pile.ramp_kw_per_s * pile.ramp_factor
            falls = max(falls, pile.delay_s + (pile.power_kw - kw) / max(rate, 1e-9))
    return falls if total > decision.budget_kw + 1e-9 else 0.0


def _billing_cuts(tariffs: Sequence[Tariff], start: float, end: float) -> list[float]:
    """Every time in (start, end) at which one of `tariffs` may change band, and every quarter
    hour, in order."""
    found: set[float] = set(np.arange(math.floor(start / 900) * 900 + 900, end, 900.0).tolist())
    for tariff in tariffs:
        when = start
        while True:
            when = tariff.next_change(when).timestamp()
            if when >= end:
                break
            found.add(when)
    return sorted(t for t in found if start < t < end)


def _result(
    policy: str,
    scenario: Scenario,
    times: NDArray[np.float64],
    limits: NDArray[np.float64],
    books: Books,
    requested: dict[str, float],
    delivered: dict[str, float],
    solve_ms: list[float],
    events: list[Event],
    counted: dict[str, float],
) -> SimResult:
    """A run's result, its time series (each step's averages) derived from its books."""
    steps = len(times)
    step_h = (float(times[1] - times[0]) if steps > 1 else 1.0) / 3600.0
    tariff = scenario.tariff
    starts = times - step_h * 3600.0
    bands = [tariff.band_at(float(t)) for t in starts]
    return SimResult(
        policy,
        scenario.name,
        {},
        times,
        (books.per_step(books.import_kwh, steps) - books.per_step(books.export_kwh, steps))
        / step_h,
        books.per_step(books.background_kwh, steps) / step_h,
        books.per_step(books.piles_kwh, steps) / step_h,
        limits,
        np.array([tariff.band_prices[b] for b in bands], dtype=float),
        bands,
        requested,
        delivered,
        books.peak_per_step(steps),
        books,
        solve_ms,
        events,
        counted,
    )


# The bound is one LP over the whole scenario; a month at one-minute steps takes minutes.
BOUND_TIME_LIMIT_S = 1800.0

PRICE_BLIND = frozenset({Policy.UNCONTROLLED, Policy.EQUAL_SHARE, Policy.EDF, Policy.LLF})
"""Policies whose decisions never look at a price: one run serves every tariff (`repriced`)."""


def repriced(result: SimResult, scenario: Scenario) -> SimResult:
    """`result` billed under `scenario.tariff` instead of the tariff it was simulated under.

    Only for a policy in `PRICE_BLIND`, simulated on the same scenario with the same step and
    with the new tariff among `also_billed_under` (so that no piece of its books spans one of
    the new tariff's band changes): its setpoints, and so every kW of the run, do not depend on
    the prices, which the metrics then see exactly as a separate `simulate` under the new tariff
    would.
    """
    if Policy(result.policy) not in PRICE_BLIND:
        raise ValueError(f"{result.policy} decides on prices: simulate it under each tariff")
    tariff = scenario.tariff
    if not result.books.split_for(tariff):
        raise ValueError(
            f"the run's books were not cut at the band changes of {tariff.name}: simulate it "
            "with that tariff in also_billed_under"
        )
    step_s = float(result.metrics["step_s"])
    bands = [tariff.band_at(float(t) - step_s) for t in result.times]
    prices = np.array([tariff.band_prices[band] for band in bands], dtype=float)
    billed = replace(result, price=prices, bands=bands, metrics={})
    station = _with_tariff(scenario.station, tariff)
    billed.metrics = _metrics(
        billed,
        scenario,
        station,
        step_s,
        int(result.metrics["plans"]),
        int(result.metrics["fallbacks"]),
    )
    for key, value in result.metrics.items():
        billed.metrics.setdefault(key, value)  # wall time, cycle times
    return billed


def _tell(
    telemetry: Recorder,
    now: float,
    snapshot: SiteSnapshot,
    decision: Decision,
    written: Mapping[str, float],
    events: Sequence[Event],
    told: int,
    control: Control,
) -> None:
    """Hand one step and the events since the last one to the telemetry writer."""
    for event in events[told:]:
        telemetry.event(event, block=True)
    ok = {pid: pid in written for pid in decision.setpoints}
    telemetry.cycle(cycle_of(now, snapshot, decision, ok, control), block=True)


class _Sensing:
    """The plant read and written as the daemon reads and writes its devices: through their
    drivers (over in-process links, where the fault script acts) and `Sensors`."""

    def __init__(
        self,
        station: Station,
        plant: Plant,
        faults: FaultScript,
        events: list[Event],
        follow: FollowWatch,
        *,
        start: float,
        end: float,
        soc: bool = True,
    ) -> None:
        """`soc` False: the piles report nothing of their vehicles' batteries."""
        self.station = station
        self.plant = plant
        self.sensors = Sensors(station, notify=events.append, follow=follow)
        self.clock = StepClock(start)
        self.devices = InProcessStation(station, plant, faults, self.clock, bms=soc)
        meters = [station.grid_meter, *([] if station.terminal is None else [station.terminal])]
        # Whether a meter's map can carry the utility's limit; if none can, its operator does.
        self.relayed = any("utility_limit" in station.map_for(m.device) for m in meters)
        self.utility_kw: float | None = None
        self.until = end
        # As the daemon's fast loop starts: every pile's fail-safe armed.
        for pid in self.devices.piles:
            self._arm(pid, start)

    def snapshot(self, now: float, tariff: Tariff) -> SiteSnapshot:
        """Read every device as of `now` and check it, as the daemon's cycle does."""
        self.clock.time = now
        self.devices.observe()
        # One coroutine for the whole pass: the drivers' calls within it never suspend, and
        # awaiting them costs less than running each to its end on its own.
        finish(self._take_all(now))
        if not self.relayed:
            self._operator(now)
        return self.sensors.snapshot(now, tariff)

    async def _take_all(self, now: float) -> None:
        """Read every device and hand what it said (or its error) to `Sensors`."""
        devices, sensors, endpoints = self.devices, self.sensors, self.devices.endpoints
        meter = self.station.grid_meter
        sensors.take_meter(*await self._read(meter.id, devices.meter.read(), now))
        if devices.terminal is not None:
            terminal = devices.terminal
            sensors.take_terminal(*await self._read(terminal.id, terminal.read(), now))
        for pid, pile in devices.piles.items():
            try:
                reading: PileReading | DriverError = await pile.read()
            except DriverError as exc:
                reading, at = exc, now
            else:
                at = endpoints[pid].as_of
            if sensors.take_pile(pid, reading, now, at):
                # Back after failing: it may have rebooted and lost its fail-safe settings.
                self._arm(pid, now)

    def _operator(self, now: float) -> None:
        """The utility's limit, at a station where no meter relays it: its operator hears of
        each change and enters it as the daemon's override (lowering the limit until further
        notice, withdrawn when the utility lifts it)."""
        kw = self.plant.utility_limit_kw
        if kw is not None and not 0 <= kw < self.station.limit_kw:
            kw = None
        if kw == self.utility_kw:
            return
        self.utility_kw = kw
        if kw is None:
            self.sensors.clear_override(now)
        else:
            self.sensors.override_limit(kw, max(self.until, now + 1.0), now, "the utility's limit")

    async def _read(
        self, device: str, read: Coroutine[Any, Any, T], now: float
    ) -> tuple[T | DriverError, float, float]:
        """A read's result (or its error), `now`, and when the device measured what it said."""
        try:
            result = await read
        except DriverError as exc:
            return exc, now, now
        return result, now, self.devices.endpoints[device].as_of

    def write(self, now: float, setpoints: Mapping[str, float], hold_s: float) -> dict[str, float]:
        """Write the setpoints through the piles' drivers, rises held back `hold_s` longer than
        each pile's delay; those written."""
        self.clock.time = now
        # Outside a write every model holds nothing back: only a hold has to be set and undone.
        held = self.plant.piles.values() if hold_s else ()
        for model in held:
            model.hold_rises_s = hold_s
        written: dict[str, float] = {}
        try:
            finish(self._command_all(setpoints, written, now))
        finally:
            for model in held:
                model.hold_rises_s = 0.0
        return written

    async def _command_all(
        self, setpoints: Mapping[str, float], written: dict[str, float], now: float
    ) -> None:
        """Write each setpoint through its pile's driver; those written go into `written`."""
        drivers, sensors = self.devices.piles, self.sensors.piles
        for pid, kw in setpoints.items():
            try:
                await drivers[pid].command(kw)
            except DriverError as exc:
                sensors[pid].failed(exc, now)
            else:
                written[pid] = kw

    def _arm(self, pile_id: str, now: float) -> None:
        config = self.station.pile(pile_id)
        try:
            finish(
                self.devices.piles[pile_id].arm_failsafe(config.comm_timeout_s, config.fallback_kw)
            )
        except DriverError as exc:
            # Until it is armed, the pile may fall back to anything: it is budgeted at its rating.
            self.sensors.unarmed.add(pile_id)
            self.sensors.piles[pile_id].failed(exc, now)
        else:
            self.sensors.unarmed.discard(pile_id)


def _with_tariff(station: Station, tariff: Tariff) -> Station:
    return station if station.tariff is tariff else replace(station, tariff=tariff)


def _quarter_peaks(
    starts: NDArray[np.float64], kwh: NDArray[np.float64], zone: ZoneInfo
) -> dict[tuple[int, int], float]:
    """Highest 15-minute average import per calendar month, from the energy of pieces that
    each lie within one quarter hour."""
    quarters = np.floor(starts / 900.0).astype(np.int64)
    if len(quarters) == 0:
        return {}
    first = int(quarters.min())
    energy = np.bincount(quarters - first, weights=kwh)
    peaks: dict[tuple[int, int], float] = {}
    for offset in np.flatnonzero(np.bincount(quarters - first)):
        local = datetime.fromtimestamp(float(first + offset) * 900, zone)
        key = (local.year, local.month)
        peaks[key] = max(peaks.get(key, 0.0), float(energy[offset]) / 0.25)
    return peaks


def _month_shares(books: Books, zone: ZoneInfo) -> dict[tuple[int, int], float]:
    """For each calendar month the books touch, the fraction of that month they cover."""
    seconds: dict[tuple[int, int], float] = {}
    for lo, hi in zip(books.start, books.end, strict=True):
        local = datetime.fromtimestamp(float(lo), zone)
        key = (local.year, local.month)
        seconds[key] = seconds.get(key, 0.0) + float(hi - lo)
    shares = {}
    for (year, month), covered in seconds.items():
        days = calendar.monthrange(year, month)[1]
        shares[(year, month)] = min(1.0, covered / (days * 86400))
    return shares


def _metrics(
    result: SimResult,
    scenario: Scenario,
    station: Station,
    step_s: float,
    plans: int,
    fallbacks: int,
) -> dict[str, float | int | str]:
    """The run's figures, from its books: energy at the price in force during each piece, the
    demand charge on each quarter hour's energy, peaks and over-limit within the steps."""
    tariff = scenario.tariff
    zone = ZoneInfo(station.info.timezone)
    books = result.books
    requested, delivered, solve_ms = result.requested_kwh, result.delivered_kwh, result.solve_ms
    energy_with, energy_without = books.energy_cost(tariff)
    peaks_with = _quarter_peaks(books.start, books.import_kwh, zone)
    peaks_without = _quarter_peaks(books.start, np.maximum(books.background_kwh, 0.0), zone)
    # The demand charge is monthly; a scenario shorter than a month bears its share of it, as if
    # every day of the month looked like the days simulated.
    months = _month_shares(books, zone)
    demand_with = tariff.demand_charge_per_kw_month * sum(peaks_with[m] * months[m] for m in months)
    demand_without = tariff.demand_charge_per_kw_month * sum(
        peaks_without[m] * months[m] for m in months
    )
    charging_cost = (energy_with + demand_with) - (energy_without + demand_without)
    total_requested = sum(requested.values())
    total_delivered = sum(delivered.values())
    charged = np.maximum(books.piles_kwh, 0.0)
    cheapest = min(tariff.band_prices, key=tariff.band_prices.__getitem__)
    in_cheapest = np.array([band == cheapest for band in books.bands(tariff)], dtype=bool)
    valley = float(charged[in_cheapest].sum()) if len(charged) else 0.0
    served = [vid for vid, kwh in requested.items() if delivered.get(vid, 0.0) >= 0.99 * kwh - 0.05]
    return {
        "policy": result.policy,
        "scenario": result.scenario,
        "cost_yuan": round(charging_cost, 4),
        "energy_cost_yuan": round(energy_with - energy_without, 4),
        "demand_charge_yuan": round(demand_with - demand_without, 4),
        "site_cost_yuan": round(energy_with + demand_with, 4),
        "site_energy_cost_yuan": round(energy_with, 4),
        "site_demand_charge_yuan": round(demand_with, 4),
        "energy_requested_kwh": round(total_requested, 3),
        "energy_delivered_kwh": round(total_delivered, 3),
        "delivered_pct": round(100 * total_delivered / total_requested, 3)
        if total_requested
        else 100.0,
        "valley_share_pct": round(100 * valley / max(float(charged.sum()), 1e-9), 1),
        "peak_kw": round(float(books.peak_kw.max()) if len(books.peak_kw) else 0.0, 1),
        "peak_15min_kw": round(max(peaks_with.values(), default=0.0), 1),
        "limit_kw": round(float(result.limit_kw.min()) if len(result.limit_kw) else 0.0, 1),
        "over_limit_kwh": round(float(books.over_kwh.sum()), 3),
        "group_over_kwh": round(float(books.group_over_kwh.sum()), 3),
        "solve_ms_p50": round(_percentile(solve_ms, 50), 2),
        "solve_ms_p95": round(_percentile(solve_ms, 95), 2),
        "plans": plans,
        "fallbacks": fallbacks,
        "vehicles": len(requested),
        "vehicles_served": len(served),
        "cost_per_vehicle_yuan": round(charging_cost / max(len(requested), 1), 4),
        "cost_per_kwh_yuan": round(charging_cost / max(total_delivered, 1e-9), 4),
        "step_s": step_s,
    }
