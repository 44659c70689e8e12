"""The physical station, simulated: vehicles, piles, the site's own load and the grid meter.

Everything here is driven by `Plant.step(now, dt)` on the simulation clock and knows nothing of
sockets; `simulator.registers` exposes the plant's devices through their register maps. The plant
also keeps the ground truth (true site load, energy delivered per visit) that tests and the demo
summary compare the controller's view against.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from controller.config import BackgroundProfile, PileConfig, SimulatorSettings, Station
from controller.site import PileView, SiteSnapshot
from drivers.meter import MeterReading
from drivers.pile import PileMode, PileReading, PileState
from scheduler.tariff import Tariff
from simulator.fleet import Visit
from simulator.scenario import Series

# The communication timeout a pile falls back to when it reboots and forgets the controller's.
FACTORY_TIMEOUT_S = 60.0


class Rejected(Exception):
    """A write the device refuses (answered with Modbus exception 3, illegal data value)."""


@dataclass
class Vehicle:
    """A vehicle plugged into a pile (or waiting for one)."""

    visit: Visit
    soc: float
    taper_soc: float
    capacity_kwh: float
    soc_target: float
    delivered_kwh: float = 0.0

    @classmethod
    def arriving(cls, visit: Visit, taper_soc: float) -> Vehicle:
        """The vehicle of `visit`, as it arrives."""
        capacity, soc, target = visit.battery
        return cls(visit, soc, taper_soc, capacity, target)

    @property
    def full(self) -> bool:
        """True once the vehicle's BMS has reached its target."""
        return self.soc >= self.soc_target - 1e-6

    def acceptance_kw(self) -> float:
        """What the BMS asks for now: its maximum, tapering linearly above `taper_soc`."""
        if self.full:
            return 0.0
        if self.soc <= self.taper_soc:
            return self.visit.max_kw
        remaining = (1.0 - self.soc) / (1.0 - self.taper_soc)
        return max(0.05, remaining) * self.visit.max_kw

    def room_kwh(self) -> float:
        """Energy until the BMS's target."""
        return max(0.0, (self.soc_target - self.soc) * self.capacity_kwh)

    def take(self, kwh: float) -> None:
        """Add energy to the battery (negative: discharge)."""
        self.delivered_kwh += kwh
        self.soc = min(1.0, self.soc + kwh / self.capacity_kwh)


@dataclass
class PileModel:
    """A pile's power electronics and its regulation device's registers."""

    config: PileConfig
    ramp_kw_per_s: float
    delay_s: float
    comm_timeout_s: float
    fallback_kw: float
    setpoint_kw: float = 0.0
    mode: PileMode = PileMode.IDLE
    last_contact: float = -math.inf
    power_kw: float = 0.0
    applied_kw: float = 0.0
    energy_import_kwh: float = 0.0
    energy_export_kwh: float = 0.0
    session_energy_kwh: float = 0.0
    session_id: int = 0
    vehicle: Vehicle | None = None
    fault_code: int = 0
    # Faults a test or scenario injects: see simulator.faults.
    ignoring: bool = False
    overshoot: float = 1.0
    ramp_factor: float = 1.0
    down_until: float = -math.inf
    _pending: deque[tuple[float, float, PileMode]] = field(default_factory=deque)
    _commanded: tuple[float, PileMode] = (0.0, PileMode.IDLE)

    @property
    def id(self) -> str:
        """The pile's id."""
        return self.config.id

    @property
    def max_charge_kw(self) -> float:
        """Rated charging power."""
        return self.config.max_kw

    @property
    def max_discharge_kw(self) -> float:
        """Rated discharging power (0 for charge-only piles)."""
        return self.config.max_discharge_kw

    def state(self) -> PileState:
        """What the pile reports in its state register."""
        if self.fault_code:
            return PileState.FAULT
        if self.vehicle is None:
            return PileState.AVAILABLE
        if self.power_kw > 0.5:
            return PileState.CHARGING
        if self.power_kw < -0.5:
            return PileState.DISCHARGING
        if self.vehicle.full:
            return PileState.FINISHED
        return PileState.CONNECTED

    def reading(self, now: float) -> PileReading:
        """What the pile's registers say now (the simulator serves exactly this)."""
        vehicle = self.vehicle
        return PileReading(
            state=self.state(),
            power_kw=self.power_kw,
            applied_setpoint_kw=self.applied_kw,
            max_charge_kw=self.max_charge_kw,
            max_discharge_kw=self.max_discharge_kw,
            min_kw=self.config.min_kw,
            energy_import_kwh=self.energy_import_kwh,
            energy_export_kwh=self.energy_export_kwh,
            session_energy_kwh=max(0.0, self.session_energy_kwh),
            session_id=self.session_id,
            soc_pct=None if vehicle is None else round(vehicle.soc * 100, 1),
            ev_max_kw=None if vehicle is None else vehicle.acceptance_kw(),
            ev_capacity_kwh=None if vehicle is None else vehicle.capacity_kwh,
            fallback_countdown_s=min(65535.0, float(round(self.countdown(now)))),
            fault_code=self.fault_code,
        )

    def timed_out(self, now: float) -> bool:
        """True while the controller has been silent longer than the communication timeout."""
        return now - self.last_contact > self.comm_timeout_s

    def countdown(self, now: float) -> float:
        """Seconds left before the fail-safe fires."""
        return max(0.0, self.comm_timeout_s - (now - self.last_contact))

    # -- writes from the controller -----------------------------------------------------

    def command(self, now: float, setpoint_kw: float | None, mode: PileMode | None) -> None:
        """Accept a setpoint and/or mode write; raise `Rejected` for values the pile refuses."""
        new_setpoint = self.setpoint_kw if setpoint_kw is None else setpoint_kw
        new_mode = self.mode if mode is None else mode
        self._check_power(new_setpoint, "setpoint")
        if new_mode is PileMode.DISCHARGE and self.max_discharge_kw <= 0:
            raise Rejected("this pile cannot discharge")
        self._resume(now)
        self.setpoint_kw, self.mode = new_setpoint, new_mode
        self.last_contact = now
        if not self.ignoring:
            self._pending.append((now + self.delay_s, new_setpoint, new_mode))

    def reboot(self, now: float, down_s: float) -> None:
        """Restart: off for `down_s`, then at its own safe value, its fail-safe settings lost."""
        self.down_until = now + down_s
        self._pending.clear()
        self.setpoint_kw, self.mode = self.config.fallback_kw, PileMode.CHARGE
        self._commanded = (self.config.fallback_kw, PileMode.CHARGE)
        # Its factory settings: its own safe value, and a timeout no controller chose.
        self.comm_timeout_s, self.fallback_kw = FACTORY_TIMEOUT_S, self.config.fallback_kw
        self.last_contact = -math.inf

    def heartbeat(self, now: float, *, continuous: bool = False) -> None:
        """The controller is alive (`continuous`: it has been in touch ever since its last
        contact, as the daemon's one-second writes are between a fast simulation's steps)."""
        if not continuous:
            self._resume(now)
        self.last_contact = now

    def _resume(self, now: float) -> None:
        # Contact after the fail-safe fired: the pile stays at its fallback power until it is
        # told something new; a setpoint from before the silence is not taken up again.
        if self.timed_out(now):
            self._pending.clear()
            self._commanded = (self.fallback_kw, PileMode.CHARGE)

    def configure(self, comm_timeout_s: float | None, fallback_kw: float | None) -> None:
        """Change the fail-safe; raise `Rejected` for values the pile refuses."""
        if comm_timeout_s is not None and not 1 <= comm_timeout_s <= 3600:
            raise Rejected(f"communication timeout {comm_timeout_s} s is outside 1-3600 s")
        if fallback_kw is not None:
            self._check_power(fallback_kw, "fallback power")
        if comm_timeout_s is not None:
            self.comm_timeout_s = comm_timeout_s
        if fallback_kw is not None:
            self.fallback_kw = fallback_kw

    def _check_power(self, kw: float, what: str) -> None:
        if kw > self.max_charge_kw + 1e-6 or kw < -self.max_discharge_kw - 1e-6:
            raise Rejected(
                f"{what} {kw:g} kW is outside -{self.max_discharge_kw:g}..{self.max_charge_kw:g} kW"
            )

    # -- physics --------------------------------------------------------------------------

    def _limit(self, now: float) -> float:
        """The power limit the pile applies at `now`."""
        if now < self.down_until or self.fault_code:
            return 0.0
        if self.timed_out(now):
            limit = self.fallback_kw
        else:
            setpoint, mode = self._commanded
            if mode is PileMode.CHARGE:
                limit = max(0.0, setpoint)
            elif mode is PileMode.DISCHARGE:
                limit = min(0.0, setpoint)
            else:
                limit = 0.0
        return 0.0 if 0 < limit < self.config.min_kw else limit

    def _target(self, limit: float) -> float:
        """The power the pile heads for under `limit`, given its vehicle."""
        if self.vehicle is None:
            return 0.0
        if limit >= 0:
            return min(limit * self.overshoot, self.vehicle.acceptance_kw())
        return limit if self.vehicle.soc > 0.05 else 0.0

    def _ramp(self, power: float, target: float, seconds: float) -> float:
        step = self.ramp_kw_per_s * self.ramp_factor * max(seconds, 0.0)
        return power + max(-step, min(step, target - power))

    def step(self, now: float, dt: float) -> float:
        """Advance by `dt` seconds; return the energy (kWh) drawn from the site."""
        # Within the step the pile heads for what it was told until a newer setpoint takes
        # effect (after its delay) or its fail-safe fires, then for that: piecewise.
        since = now - dt
        power = self.power_kw
        breaks = []
        while self._pending and self._pending[0][0] <= now:
            breaks.append(self._pending.popleft())
        fallback_from = self.last_contact + self.comm_timeout_s
        if since < fallback_from <= now:
            breaks.append((fallback_from, *self._commanded))
            breaks.sort(key=lambda b: b[0])
        for effective, setpoint, mode in breaks:
            if effective > since:
                power = self._ramp(power, self._target(self._limit(since)), effective - since)
                since = effective
            self._commanded = (setpoint, mode)
        limit = self._limit(now)
        self.applied_kw = limit
        target = self._target(limit)
        if now < self.down_until:
            power, since = 0.0, now  # the power electronics are off
        moved = self._ramp(power, target, now - since)
        if self.vehicle is not None and moved > 0:
            # The BMS cuts its own demand at once; only the pile's increase is ramp-limited.
            moved = min(moved, self.vehicle.acceptance_kw())
        vehicle = self.vehicle
        if vehicle is None:
            self.power_kw = 0.0
            return 0.0
        if moved <= 0:
            self.power_kw = moved
            kwh = moved * dt / 3600
            vehicle.take(kwh)
        else:
            # Within a long step the battery fills and its BMS asks for less: follow it in
            # short pieces, so a vehicle never takes more than it wants (fast simulation runs
            # minute-long steps).
            kwh = 0.0
            pieces = max(1, math.ceil(dt / 5.0))
            power = moved
            for _ in range(pieces):
                power = min(moved, vehicle.acceptance_kw())
                if power <= 0:
                    break
                piece = min(power * dt / pieces / 3600, vehicle.room_kwh())
                vehicle.take(piece)
                kwh += piece
            self.power_kw = max(power, 0.0)
        if kwh > 0:
            self.energy_import_kwh += kwh
        else:
            self.energy_export_kwh -= kwh
        self.session_energy_kwh += kwh
        return kwh

    def plug(self, vehicle: Vehicle) -> None:
        """A vehicle connects."""
        self.vehicle = vehicle
        self.session_id += 1
        self.session_energy_kwh = 0.0
        self.power_kw = 0.0

    def unplug(self) -> Vehicle | None:
        """The vehicle leaves."""
        vehicle, self.vehicle = self.vehicle, None
        self.power_kw = 0.0
        return vehicle


class Background:
    """The site's own load: an hourly profile plus slowly wandering noise (AR(1), seeded)."""

    def __init__(self, profile: BackgroundProfile, zone: ZoneInfo, seed: int, tau_s: float = 300.0):
        self.profile = np.asarray(profile.profile_kw, dtype=float)
        self.noise_kw = profile.noise_kw
        self.zone = zone
        self.tau_s = tau_s
        self._rng = np.random.default_rng(seed)
        self._noise = 0.0

    def base_kw(self, now: float) -> float:
        """The profile at `now`, linear between hour midpoints."""
        local = datetime.fromtimestamp(now, self.zone)
        hour = local.hour + local.minute / 60 + local.second / 3600 - 0.5
        low = math.floor(hour)
        frac = hour - low
        return float((1 - frac) * self.profile[low % 24] + frac * self.profile[(low + 1) % 24])

    def step(self, now: float, dt: float) -> float:
        """The load at `now`, after moving the noise on by `dt`."""
        if self.noise_kw > 0:
            rho = math.exp(-dt / self.tau_s)
            self._noise = rho * self._noise + self.noise_kw * math.sqrt(1 - rho * rho) * float(
                self._rng.standard_normal()
            )
        return max(0.0, self.base_kw(now) + self._noise)


@dataclass
class SessionRecord:
    """What happened to one visit (ground truth)."""

    visit: Visit
    pile: str | None = None
    plugged_at: float | None = None
    left_at: float | None = None
    delivered_kwh: float = 0.0
    soc_end: float | None = None

    @property
    def requested_kwh(self) -> float:
        """Energy the vehicle wanted."""
        return self.visit.energy_kwh


@dataclass
class PlantEvent:
    """Something a person watching the station would notice."""

    time: float
    kind: str
    text: str


@dataclass
class Truth:
    """Ground-truth statistics of the site load, updated every step."""

    limit_kw: float
    peak_kw: float = 0.0
    peak_at: float = 0.0
    over_s: float = 0.0
    longest_over_s: float = 0.0
    over_kwh: float = 0.0
    _run_s: float = 0.0

    def add(self, now: float, site_kw: float, dt: float, limit_kw: float | None = None) -> None:
        """Account one step (against `limit_kw` if the limit moved, else the fixed one)."""
        limit = self.limit_kw if limit_kw is None else limit_kw
        if site_kw > self.peak_kw:
            self.peak_kw, self.peak_at = site_kw, now
        if site_kw > limit:
            self.over_s += dt
            self._run_s += dt
            self.over_kwh += (site_kw - limit) * dt / 3600
            self.longest_over_s = max(self.longest_over_s, self._run_s)
        else:
            self._run_s = 0.0


class Plant:
    """The whole simulated station."""

    def __init__(
        self,
        station: Station,
        visits: Iterable[Visit] = (),
        *,
        settings: SimulatorSettings | None = None,
        record: bool = True,
        background: Series | None = None,
        limit: Series | None = None,
    ) -> None:
        self.station = station
        settings = settings or station.simulator
        if settings is None:
            raise ValueError(f"{station.path}: the station has no [simulator] section")
        self.settings = settings
        zone = ZoneInfo(station.info.timezone)
        self.piles = {
            p.id: PileModel(
                config=p,
                ramp_kw_per_s=settings.pile_ramp_kw_per_s,
                delay_s=settings.pile_delay_s,
                comm_timeout_s=p.comm_timeout_s,
                fallback_kw=p.fallback_kw,
            )
            for p in station.piles
        }
        self.background = Background(station.background, zone, settings.seed)
        self.background_series = background
        self.limit_series = limit
        self.limit_override: float | None = None
        self.limit_kw = station.limit_kw
        self.interval_limit_kw = station.limit_kw
        self.background_kw = 0.0
        self.on_plug: Callable[[PileModel, Vehicle], None] | None = None
        self.site_kw = 0.0
        self.energy_import_kwh = 0.0
        self.energy_export_kwh = 0.0
        self._arrivals: list[tuple[float, int, Visit]] = []
        self._order = 0
        self.queue: deque[Vehicle] = deque()
        self.sessions: dict[str, SessionRecord] = {}
        self.events: list[PlantEvent] = []
        self.truth = Truth(station.limit_kw)
        self.record = record
        self.trace_t = array("d")
        self.trace_site = array("d")
        self.trace_background = array("d")
        self.now: float | None = None
        self.add_visits(visits)

    def add_visits(self, visits: Iterable[Visit]) -> None:
        """Schedule more visits (the hardware simulator adds each new day's)."""
        for visit in visits:
            if visit.vehicle_id in self.sessions:
                continue
            self.sessions[visit.vehicle_id] = SessionRecord(visit)
            heapq.heappush(self._arrivals, (visit.arrival, self._order, visit))
            self._order += 1

    def step(self, now: float, dt: float) -> None:
        """Advance the whole station to `now`, `dt` seconds after the previous step."""
        self.now = now
        self._departures(now)
        while self._arrivals and self._arrivals[0][0] <= now:
            _, _, visit = heapq.heappop(self._arrivals)
            if visit.departure <= now:
                continue
            vehicle = Vehicle.arriving(visit, self.settings.taper_soc)
            self.queue.append(vehicle)
        self._plug_waiting(now)
        if self.background_series is not None:
            self.background_kw = self.background_series.at(now)
        else:
            self.background_kw = self.background.step(now, dt)
        # The power of this step was set at its start, under the limit then in force: that is
        # the limit it answers to (the controller learns of a new one at `now`).
        interval_limit = (
            self.limit_kw if self.limit_series is None else self.limit_series.at(now - dt)
        )
        signalled = self.station.limit_kw
        if self.limit_series is not None:
            signalled = self.limit_series.at(now)
        self.limit_kw = signalled
        if self.limit_override is not None:
            interval_limit = min(interval_limit, self.limit_override)
            self.limit_kw = min(self.limit_kw, self.limit_override)
        piles_kwh = 0.0
        for pile in self.piles.values():
            piles_kwh += pile.step(now, dt)
        piles_kw = sum(p.power_kw for p in self.piles.values())
        self.site_kw = self.background_kw + piles_kw
        if self.site_kw >= 0:
            self.energy_import_kwh += self.site_kw * dt / 3600
        else:
            self.energy_export_kwh -= self.site_kw * dt / 3600
        self.interval_limit_kw = interval_limit
        self.truth.add(now, self.site_kw, dt, interval_limit)
        if self.record:
            self.trace_t.append(now)
            self.trace_site.append(self.site_kw)
            self.trace_background.append(self.background_kw)

    @property
    def utility_limit_kw(self) -> float | None:
        """The limit the utility signals now (None: no signal in force)."""
        if self.limit_series is None and self.limit_override is None:
            return None
        return self.limit_kw

    def move_departure(self, pile_id: str, departure: float) -> Vehicle | None:
        """The vehicle at `pile_id` now leaves at `departure` (early or late); it, or None."""
        vehicle = self.piles[pile_id].vehicle
        if vehicle is not None:
            vehicle.visit = replace(vehicle.visit, departure=departure)
        return vehicle

    def _departures(self, now: float) -> None:
        for pile in self.piles.values():
            vehicle = pile.vehicle
            if vehicle is not None and vehicle.visit.departure <= now:
                pile.unplug()
                record = self.sessions[vehicle.visit.vehicle_id]
                record.left_at, record.delivered_kwh, record.soc_end = (
                    now,
                    vehicle.delivered_kwh,
                    vehicle.soc,
                )
                self._event(
                    now,
                    "departure",
                    f"{vehicle.visit.vehicle_id} left {pile.id}: {vehicle.delivered_kwh:.0f} of "
                    f"{vehicle.visit.energy_kwh:.0f} kWh, SoC {vehicle.soc:.0%}",
                )
        while self.queue and self.queue[0].visit.departure <= now:
            vehicle = self.queue.popleft()
            self.sessions[vehicle.visit.vehicle_id].left_at = now
            self._event(now, "gave up", f"{vehicle.visit.vehicle_id} left without a free pile")

    def _plug_waiting(self, now: float) -> None:
        waiting = deque[Vehicle]()
        while self.queue:
            vehicle = self.queue.popleft()
            pile = self._free_pile(vehicle.visit.pile)
            if pile is None:
                waiting.append(vehicle)
                continue
            pile.plug(vehicle)
            if self.on_plug is not None:
                self.on_plug(pile, vehicle)
            record = self.sessions[vehicle.visit.vehicle_id]
            record.pile, record.plugged_at = pile.id, now
            self._event(
                now,
                "arrival",
                f"{vehicle.visit.vehicle_id} plugged into {pile.id} at SoC {vehicle.soc:.0%}, "
                f"wants {vehicle.visit.energy_kwh:.0f} kWh",
            )
        self.queue = waiting

    def _free_pile(self, wanted: str | None) -> PileModel | None:
        if wanted is not None:
            pile = self.piles.get(wanted)
            return pile if pile is not None and pile.vehicle is None else None
        free = [p for p in self.piles.values() if p.vehicle is None]
        # Drivers take the fastest free pile; among equals, the first.
        return max(free, key=lambda p: p.max_charge_kw) if free else None

    def _event(self, now: float, kind: str, text: str) -> None:
        self.events.append(PlantEvent(now, kind, text))

    def snapshot(self, now: float, tariff: Tariff) -> SiteSnapshot:
        """What a controller reading every device right now would see (no sockets)."""
        views = []
        for pile in self.piles.values():
            reading = pile.reading(now)
            views.append(PileView(pile.config, reading, reading))
        return SiteSnapshot(
            time=now,
            limit_kw=self.limit_kw,
            grid_kw=self.site_kw,
            meter=MeterReading(power_kw=self.site_kw),
            piles=tuple(views),
            band=(band := tariff.band_at(now)),
            price=tariff.band_prices[band],
        )

    def delivered_kwh(self) -> float:
        """Energy delivered to vehicles so far (plugged-in ones included)."""
        total = sum(r.delivered_kwh for r in self.sessions.values() if r.left_at is not None)
        return total + sum(p.vehicle.delivered_kwh for p in self.piles.values() if p.vehicle)
