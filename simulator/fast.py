"""Fast simulation: the daemon's control logic driving the plant on a simulated clock, no sockets.

One loop, one step at a time: the plant advances to `now`, the controller's `Control` observes
the site as the daemon would read it, re-plans when a plan is due (in the same `Solver` the daemon
uses), decides setpoints through the same limiter, and the setpoints go straight to the plant's
piles. Days of station time run in seconds, which is what the policy comparisons, the tariff
what-ifs and CI need.

Policies: the daemon's `mpc`; the baselines `uncontrolled` (every vehicle at full power, limit
ignored), `equal-share`, `edf`, `llf`; and `offline-optimal`, one solve with perfect knowledge of
every arrival, departure, energy, background and limit, followed by the same fast loop.
"""

from __future__ import annotations

import calendar
import math
import re
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

from controller.config import Station
from controller.control import Control, Decision, Policy, Wish
from controller.control import Visit as PastVisit
from controller.forecast import BackgroundForecast
from controller.sensing import Sensors
from controller.site import SiteSnapshot
from controller.telemetry import TelemetryWriter
from drivers.meter import reading_from
from drivers.pile import PileMode, PileReading
from drivers.registers import Value
from scheduler.fallback import fallback_plan
from scheduler.problem import Problem, Vehicle, Weights, month_starts, slot_boundaries
from scheduler.solver import Solver
from scheduler.tariff import Tariff
from simulator.faults import Fault, FaultScript
from simulator.fleet import Visit, assign_piles
from simulator.plant import PileModel, Plant
from simulator.plant import Vehicle as PlantVehicle
from simulator.registers import MeterRegisters
from simulator.scenario import Series


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
    solve_ms: list[float] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    controller_delivered_kwh: dict[str, float] = field(default_factory=dict)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def _wish(visit: Visit) -> Wish:
    return Wish(
        vehicle_id=visit.vehicle_id,
        energy_kwh=visit.energy_kwh,
        departure=visit.departure,
        v2g=visit.v2g,
    )


def offline_problem(scenario: Scenario, visits: Sequence[Visit], control: Control) -> Problem:
    """The whole scenario as one problem, with every future arrival known."""
    station = scenario.station
    zone = ZoneInfo(station.info.timezone)
    settings = station.scheduler
    boundaries = slot_boundaries(
        scenario.start,
        zone,
        horizon_s=scenario.end - scenario.start,
        slot_s=settings.slot_minutes * 60,
    )
    starts, ends = boundaries[:-1], boundaries[1:]
    mids = (starts + ends) / 2
    if scenario.background is not None:
        background = scenario.background.mean_over(starts, ends)
    else:
        forecast = BackgroundForecast(station.background.profile_kw, zone)
        background = forecast(boundaries, scenario.start, None)
    limit = (
        scenario.limit.mean_over(starts, ends)
        if scenario.limit is not None
        else np.full(len(mids), station.limit_kw)
    )
    vehicles = []
    for visit in visits:
        assert visit.pile is not None
        pile = station.pile(visit.pile)
        capacity, soc, _ = visit.battery
        vehicles.append(
            Vehicle(
                id=visit.vehicle_id,
                pile=visit.pile,
                energy_kwh=visit.energy_kwh,
                departure=visit.departure,
                max_kw=min(visit.max_kw, pile.max_kw),
                min_kw=min(pile.min_kw, pile.max_kw),
                efficiency=settings.efficiency,
                v2g=visit.v2g and pile.bidirectional,
                max_discharge_kw=pile.max_discharge_kw if visit.v2g and pile.bidirectional else 0.0,
                capacity_kwh=capacity,
                soc=soc,
                arrival=visit.arrival,
                taper_soc=settings.taper_soc,
            )
        )
    return Problem(
        boundaries=boundaries,
        limit_kw=np.maximum(limit - station.control.reserve_kw, 0.0),
        background_kw=background,
        import_price=np.array([scenario.tariff.price_at(float(t)) for t in mids]),
        export_price=np.full(len(mids), scenario.tariff.export_price),
        vehicles=tuple(vehicles),
        demand_charge=scenario.tariff.demand_charge_per_kw_month,
        groups=control.group_limits(),
        ramp_kw_per_min=settings.ramp_kw_per_min,
        weights=Weights(
            unmet_per_kwh=settings.unmet_penalty_per_kwh,
            degradation_per_kwh=settings.degradation_per_kwh,
        ),
        new_months=month_starts(scenario.start, scenario.end, zone),
        demand_window_s=900.0,
    )


def simulate(
    scenario: Scenario,
    policy: Policy | str,
    *,
    step_s: float = 60.0,
    plan_period_s: float | None = None,
    progress: Callable[[float], None] | None = None,
    telemetry: TelemetryWriter | None = None,
) -> SimResult:
    """Run one policy through the scenario; `progress` gets the fraction done now and then.

    With `telemetry`, every step, plan and event is written as the daemon writes them (the
    caller starts and closes the writer; no point is dropped: a full queue waits).

    The controller reads the plant through the same `Sensors` checks as the daemon. With the
    scenario's `faults`, devices, vehicles and the utility misbehave as scripted; devices that do
    not answer get no setpoints. `SimResult.events` holds what the controller noticed and when.
    """
    policy = Policy(policy)
    station = scenario.station
    if station.simulator is None:
        raise ValueError(f"{station.path}: the station has no [simulator] section")
    station = _with_tariff(station, scenario.tariff)
    zone = ZoneInfo(station.info.timezone)
    started = time.perf_counter()
    ratings = {p.id: p.max_kw for p in station.piles}
    served, _ = assign_piles(scenario.visits, ratings)
    plant = Plant(
        station, served, record=False, background=scenario.background, limit=scenario.limit
    )
    forecast = None
    if scenario.background is not None:
        forecast = BackgroundForecast(scenario.background.hourly_profile(zone), zone)
    control = Control(station, policy=policy, forecast=forecast, plan_period_s=plan_period_s)
    control.history.extend(scenario.history)
    counted: dict[str, float] = {}
    control.on_departure = lambda visit: counted.__setitem__(visit.vehicle_id, visit.delivered_kwh)
    visits_by_id = {v.vehicle_id: v for v in served}

    def plugged(pile: PileModel, vehicle: PlantVehicle) -> None:
        # The fleet system tells the controller what each truck needs and when it leaves.
        control.wish(pile.id, pile.session_id, _wish(visits_by_id[vehicle.visit.vehicle_id]))

    plant.on_plug = plugged
    events: list[tuple[float, str]] = []
    faults = FaultScript(scenario.faults)
    faults.check(station)
    sensing = _Sensing(station, plant, faults, events)
    solver = Solver(time_limit_s=station.scheduler.solve_deadline_s)
    solve_ms: list[float] = []
    plans = fallbacks = 0
    if policy is Policy.OFFLINE:
        whole = offline_problem(scenario, served, control)
        plan = solver.solve(whole, time_limit_s=max(60.0, station.scheduler.solve_deadline_s))
        solve_ms.append(plan.solve_ms)
        plans += 1
        if not plan.status.has_schedule:
            fallbacks += 1
            plan = fallback_plan(whole, reason=plan.message)
        control.adopt(plan, scenario.start, whole)
        if telemetry is not None:
            telemetry.plan(plan, scenario.start, block=True)

    steps = math.ceil((scenario.end - scenario.start) / step_s)
    times: NDArray[np.float64] = scenario.start + step_s * np.arange(1, steps + 1, dtype=float)
    site = np.zeros(steps)
    background = np.zeros(steps)
    piles = np.zeros(steps)
    limits = np.zeros(steps)
    group_over = np.zeros(steps)
    groups = [(dict(g.members), g.limit_kw) for g in control.group_limits()]
    prices = np.zeros(steps)
    bands: list[str] = []
    report_every = max(1, steps // 100)
    step_ms = np.zeros(steps)
    reached: set[str] = set()  # piles the controller was in touch with at the last step
    told = 0
    for k, now in enumerate(times):
        step_started = time.perf_counter()
        now = float(now)
        # The daemon's fast loop writes every second; between our steps it would have kept every
        # pile's fail-safe timer from running out.
        events.extend((now, f"simulator: {text}") for text in faults.apply(plant, now))
        for pile in plant.piles.values():
            if faults.reachable(pile.id, now):
                pile.heartbeat(now, continuous=pile.id in reached)
                reached.add(pile.id)
            else:
                reached.discard(pile.id)
        plant.step(now, step_s)
        snapshot = sensing.snapshot(now, scenario.tariff)
        events.extend((now, text) for text in control.observe(snapshot, step_s))
        reason = control.plan_due(now)
        if reason is not None:
            problem = control.problem(snapshot)
            plan = solver.solve(problem)
            solve_ms.append(plan.solve_ms)
            plans += 1
            if not plan.status.has_schedule:
                fallbacks += 1
                plan = fallback_plan(problem, reason=plan.message)
            control.adopt(plan, now, problem)
            if telemetry is not None:
                telemetry.plan(plan, now, block=True)
        decision = control.decide(snapshot, step_s)
        written = {}
        for pid, kw in decision.setpoints.items():
            if not faults.reachable(pid, now):
                continue
            mode = PileMode.CHARGE if kw > 0 else PileMode.DISCHARGE if kw < 0 else PileMode.IDLE
            plant.piles[pid].command(now, kw, mode)
            written[pid] = kw
        control.committed(written)
        if telemetry is not None:
            _tell(telemetry, now, snapshot, decision, written, events, told)
            told = len(events)
        site[k] = plant.site_kw
        background[k] = plant.background_kw
        piles[k] = plant.site_kw - plant.background_kw
        limits[k] = plant.interval_limit_kw
        group_over[k] = sum(
            max(
                0.0,
                sum(share * plant.piles[pid].power_kw for pid, share in members.items()) - limit_kw,
            )
            for members, limit_kw in groups
        )
        prices[k] = snapshot.price
        bands.append(snapshot.band)
        step_ms[k] = (time.perf_counter() - step_started) * 1000
        if progress is not None and k % report_every == 0:
            progress(k / steps)
    plant.step(scenario.end + step_s, step_s)  # let the last departures happen
    if progress is not None:
        progress(1.0)
    first = scenario.measured_start
    requested = {v.vehicle_id: v.energy_kwh for v in scenario.visits if v.arrival >= first}
    delivered = {
        vid: plant.sessions[vid].delivered_kwh if vid in plant.sessions else 0.0
        for vid in requested
    }
    window = times > first
    times, site, background, piles = times[window], site[window], background[window], piles[window]
    limits, prices, group_over = limits[window], prices[window], group_over[window]
    bands = [band for band, keep in zip(bands, window, strict=True) if keep]
    result = SimResult(
        policy.value,
        scenario.name,
        {},
        times,
        site,
        background,
        piles,
        limits,
        prices,
        bands,
        requested,
        delivered,
        solve_ms,
        events,
        counted,
    )
    result.metrics = _metrics(result, scenario, station, step_s, plans, fallbacks)
    result.metrics["wall_s"] = round(time.perf_counter() - started, 2)
    result.metrics["group_over_kwh"] = round(float(group_over.sum() * step_s / 3600), 3)
    # One step is one control cycle (plant, sensing, control, the plan when one is due).
    result.metrics["cycle_ms_p50"] = round(_percentile(list(step_ms), 50), 3)
    result.metrics["cycle_ms_p99"] = round(_percentile(list(step_ms), 99), 3)
    result.metrics["cycle_ms_max"] = round(float(step_ms.max()) if steps else 0.0, 3)
    return result


PRICE_BLIND = frozenset({Policy.UNCONTROLLED, Policy.EQUAL_SHARE, Policy.EDF, Policy.LLF})
"""Policies whose decisions never look at a price: one run serves every tariff (`repriced`)."""


def repriced(result: SimResult, scenario: Scenario) -> SimResult:
    """`result` billed under `scenario.tariff` instead of the tariff it was simulated under.

    Only for a policy in `PRICE_BLIND`, simulated on the same scenario with the same step: its
    setpoints, and so every kW of the run, do not depend on the prices, which the metrics then
    see exactly as a separate `simulate` under the new tariff would.
    """
    if Policy(result.policy) not in PRICE_BLIND:
        raise ValueError(f"{result.policy} decides on prices: simulate it under each tariff")
    step_s = float(result.metrics["step_s"])
    tariff = scenario.tariff
    bands = [tariff.band_at(float(t)) for t in result.times]
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
        billed.metrics.setdefault(key, value)  # wall time, cycle times, group overload
    return billed


# What a device's feed reports when it starts or stops failing ("pile P03: ...").
_DEVICE_EVENT = re.compile(r"^(pile|meter|terminal) \S+: ")


def _tell(
    telemetry: TelemetryWriter,
    now: float,
    snapshot: SiteSnapshot,
    decision: Decision,
    written: Mapping[str, float],
    events: Sequence[tuple[float, str]],
    told: int,
) -> None:
    """Hand one step and the events since the last one to the telemetry writer."""
    for when, text in events[told:]:
        kind = (
            "simulator"
            if text.startswith("simulator: ")
            else "device"
            if _DEVICE_EVENT.match(text)
            else "control"
        )
        telemetry.event(when, text, kind, block=True)
    ok = {pid: pid in written for pid in decision.setpoints}
    telemetry.cycle(
        now, snapshot, decision.budget_kw, decision.targets, decision.setpoints, ok, block=True
    )


class _Sensing:
    """The plant read as the daemon reads its devices: through the fault script and `Sensors`."""

    def __init__(
        self,
        station: Station,
        plant: Plant,
        faults: FaultScript,
        events: list[tuple[float, str]],
    ) -> None:
        self.station = station
        self.plant = plant
        self.faults = faults
        self.sensors = Sensors(station, notify=lambda when, text: events.append((when, text)))
        self.meters = [station.grid_meter.id]
        if station.terminal is not None:
            self.meters.append(station.terminal.id)
        self.meter = MeterRegisters(plant)  # the grid meter and the terminal measure the same
        # What each device measured, as long ago as a device is scripted to answer late.
        self.history: deque[tuple[float, dict[str, Value | None], dict[str, PileReading]]] = deque()
        self.keep_s = faults.longest_latency_s

    def snapshot(self, now: float, tariff: Tariff) -> SiteSnapshot:
        """Read every device as of `now` and check it."""
        plant, faults, sensors = self.plant, self.faults, self.sensors
        piles = {pid: pile.reading(now) for pid, pile in plant.piles.items()}
        self.history.append((now, dict(self.meter.values()), piles))
        while len(self.history) > 1 and self.history[1][0] <= now - self.keep_s:
            self.history.popleft()
        for index, meter_id in enumerate(self.meters):
            label = "meter" if index == 0 else "terminal"
            at, values, _ = self._as_of(meter_id, now)
            error = faults.unreachable_error(meter_id, f"{label} {meter_id}", now)
            result = error or reading_from(faults.meter_values(meter_id, now, values))
            take = sensors.take_meter if index == 0 else sensors.take_terminal
            take(result, now, at)
        for pid, pile in plant.piles.items():
            at, _, readings = self._as_of(pid, now)
            error = faults.unreachable_error(pid, f"pile {pid}", now)
            if sensors.take_pile(pid, error or readings[pid], now, at):
                # Back after being unreachable: the daemon re-arms its fail-safe.
                pile.configure(pile.config.comm_timeout_s, pile.config.fallback_kw)
        return sensors.snapshot(now, tariff)

    def _as_of(
        self, device: str, now: float
    ) -> tuple[float, dict[str, Value | None], dict[str, PileReading]]:
        latency = self.faults.latency_s(device, now)
        if latency <= 0:
            return self.history[-1]
        for entry in reversed(self.history):
            if entry[0] <= now - latency:
                return entry
        return self.history[0]


def _with_tariff(station: Station, tariff: Tariff) -> Station:
    return station if station.tariff is tariff else replace(station, tariff=tariff)


def _quarter_peaks(
    times: NDArray[np.float64], kw: NDArray[np.float64], zone: ZoneInfo
) -> dict[tuple[int, int], float]:
    """Highest 15-minute average import per calendar month."""
    quarters = np.floor(times / 900.0)
    peaks: dict[tuple[int, int], float] = {}
    for quarter in np.unique(quarters):
        mask = quarters == quarter
        mean = float(np.mean(np.maximum(kw[mask], 0.0)))
        local = datetime.fromtimestamp(float(quarter) * 900, zone)
        key = (local.year, local.month)
        peaks[key] = max(peaks.get(key, 0.0), mean)
    return peaks


def _month_shares(
    times: NDArray[np.float64], step_s: float, zone: ZoneInfo
) -> dict[tuple[int, int], float]:
    """For each calendar month the scenario touches, the fraction of that month it covers."""
    seconds: dict[tuple[int, int], float] = {}
    for when in times:
        local = datetime.fromtimestamp(float(when), zone)
        key = (local.year, local.month)
        seconds[key] = seconds.get(key, 0.0) + step_s
    shares = {}
    for (year, month), covered in seconds.items():
        days = calendar.monthrange(year, month)[1]
        shares[(year, month)] = min(1.0, covered / (days * 86400))
    return shares


def _site_cost(
    tariff: Tariff, kw: NDArray[np.float64], prices: NDArray[np.float64], hours: float
) -> float:
    imported = np.maximum(kw, 0.0) * hours
    exported = np.maximum(-kw, 0.0) * hours
    return float(prices @ imported - tariff.export_price * exported.sum())


def _metrics(
    result: SimResult,
    scenario: Scenario,
    station: Station,
    step_s: float,
    plans: int,
    fallbacks: int,
) -> dict[str, float | int | str]:
    tariff = scenario.tariff
    zone = ZoneInfo(station.info.timezone)
    hours = step_s / 3600
    times, site, background, piles = (
        result.times,
        result.site_kw,
        result.background_kw,
        result.piles_kw,
    )
    limits, prices, bands = result.limit_kw, result.price, result.bands
    requested, delivered, solve_ms = result.requested_kwh, result.delivered_kwh, result.solve_ms
    energy_with = _site_cost(tariff, site, prices, hours)
    energy_without = _site_cost(tariff, background, prices, hours)
    peaks_with = _quarter_peaks(times, site, zone)
    peaks_without = _quarter_peaks(times, background, zone)
    # The demand charge is monthly; a scenario shorter than a month bears its share of it, as if
    # every day of the month looked like the days simulated.
    months = _month_shares(times, step_s, zone)
    demand_with = tariff.demand_charge_per_kw_month * sum(peaks_with[m] * months[m] for m in months)
    demand_without = tariff.demand_charge_per_kw_month * sum(
        peaks_without[m] * months[m] for m in months
    )
    charging_cost = (energy_with + demand_with) - (energy_without + demand_without)
    total_requested = sum(requested.values())
    total_delivered = sum(delivered.values())
    charged = np.maximum(piles, 0.0) * hours
    valley = sum(
        kwh
        for kwh, band in zip(charged, bands, strict=True)
        if band == min(tariff.band_prices, key=tariff.band_prices.__getitem__)
    )
    ramps = np.diff(piles) / (step_s / 60) if len(piles) > 1 else np.zeros(1)
    served = [vid for vid, kwh in requested.items() if delivered.get(vid, 0.0) >= 0.99 * kwh - 0.05]
    return {
        "policy": result.policy,
        "scenario": result.scenario,
        "cost_yuan": round(charging_cost, 2),
        "energy_cost_yuan": round(energy_with - energy_without, 2),
        "demand_charge_yuan": round(demand_with - demand_without, 2),
        "site_cost_yuan": round(energy_with + demand_with, 2),
        "site_energy_cost_yuan": round(energy_with, 2),
        "site_demand_charge_yuan": round(demand_with, 2),
        "energy_requested_kwh": round(total_requested, 1),
        "energy_delivered_kwh": round(total_delivered, 1),
        "delivered_pct": round(100 * total_delivered / total_requested, 3)
        if total_requested
        else 100.0,
        "valley_share_pct": round(100 * valley / max(float(charged.sum()), 1e-9), 1),
        "peak_kw": round(float(site.max()), 1),
        "peak_15min_kw": round(max(peaks_with.values()), 1),
        "limit_kw": round(float(limits.min()), 1),
        "over_limit_kwh": round(float((np.maximum(site - limits, 0.0) * hours).sum()), 3),
        "max_ramp_kw_per_min": round(float(max(ramps.max(), 0.0)), 1),
        "max_drop_kw_per_min": round(float(max(-ramps.min(), 0.0)), 1),
        "solve_ms_p50": round(_percentile(solve_ms, 50), 2),
        "solve_ms_p95": round(_percentile(solve_ms, 95), 2),
        "plans": plans,
        "fallbacks": fallbacks,
        "vehicles": len(requested),
        "vehicles_served": len(served),
        "cost_per_vehicle_yuan": round(charging_cost / max(len(requested), 1), 2),
        "cost_per_kwh_yuan": round(charging_cost / max(total_delivered, 1e-9), 4),
        "step_s": step_s,
    }
