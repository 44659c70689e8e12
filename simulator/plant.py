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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np

from base.config import Station
from base.devicemap import PileMode, PileState
from base.stationdevices import PileConfig
from base.stationsettings import BackgroundProfile, SimulatorSettings
from drivers.pile import PileReading
from simulator.books import Excess, Integral, Piece, Profile, excess, profile
from simulator.charging import Battery, advance
from simulator.fleet import Visit
from simulator.scenario import Series

# The communication timeout a pile falls back to when it reboots and forgets the controller's.
FACTORY_TIMEOUT_S = 60.0


class Rejected(Exception):
    """A write the device refuses (answered with Modbus exception 3, illegal data value)."""


@dataclass
class VehicleModel(Battery):
    """A vehicle plugged into a pile (or waiting for one): its battery, and what it was given."""

    visit: Visit = field(kw_only=True)
    delivered_kwh: float = field(default=0.0, kw_only=True)

    @classmethod
    def arriving(cls, visit: Visit, taper_soc: float) -> VehicleModel:
        """The vehicle of `visit`, as it arrives."""
        capacity, soc, target = visit.battery
        return cls(capacity, soc, target, visit.max_kw, taper_soc, visit=visit)


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
    vehicle: VehicleModel | None = None
    fault_code: int = 0
    # Faults a test or scenario injects: see simulator.faults.
    ignoring: bool = False
    overshoot: float = 1.0
    ramp_factor: float = 1.0
    down_until: float = -math.inf
    # How much later than its delay it applies what it is told (an OCPP charge point's
    # `applies-late` fault).
    late_s: float = 0.0
    # How much longer than its delay a rise written now is held back: a fast simulation writes
    # once a step what the daemon's one-second cycles write once other piles have come down.
    hold_rises_s: float = 0.0
    # Commands written and not yet in force: (when they take effect, (setpoint, mode)).
    _pending: deque[tuple[float, tuple[float, PileMode]]] = field(default_factory=deque)
    # The power's breakpoints since `begin_trace` (the plant's current piece of a step).
    trace_t: list[float] = field(default_factory=list)
    trace_kw: list[float] = field(default_factory=list)
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
            fallback_countdown_s=float(round(min(65535.0, self.countdown(now)))),
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
        """Accept a setpoint and/or mode write; raise `Rejected` for values the pile refuses.

        A rise takes effect `hold_rises_s` later than the pile's own delay.
        """
        new_setpoint = self.setpoint_kw if setpoint_kw is None else setpoint_kw
        new_mode = self.mode if mode is None else mode
        self._check_power(new_setpoint, "setpoint")
        if new_mode is PileMode.DISCHARGE and self.max_discharge_kw <= 0:
            raise Rejected("this pile cannot discharge")
        self._resume(now)
        self.setpoint_kw, self.mode = new_setpoint, new_mode
        self.last_contact = now
        if not self.ignoring:
            held = self.hold_rises_s if new_setpoint > self.power_kw else 0.0
            effective = now + self.delay_s + self.late_s + max(held, 0.0)
            while self._pending and self._pending[-1][0] > effective:
                self._pending.pop()  # a newer command overtakes one still held back
            self._pending.append((effective, (new_setpoint, new_mode)))

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

    def begin_trace(self, when: float) -> None:
        """Start recording the power's breakpoints afresh at `when`."""
        self.trace_t = [when]
        self.trace_kw = [self.power_kw]

    def _advance(self, t0: float, t1: float) -> float:
        """Move the power from `t0` to `t1` under the limit in force between them; return kWh."""
        if t1 <= t0:
            return 0.0
        middle = (t0 + t1) / 2
        if middle < self.down_until:
            # The power electronics are off.
            if self.power_kw != 0.0:
                self.trace_t.append(t0)
                self.trace_kw.append(0.0)
            self.power_kw = 0.0
            self.trace_t.append(t1)
            self.trace_kw.append(0.0)
            return 0.0
        if self.vehicle is None and self.power_kw == 0.0:
            # Nothing plugged in and nothing flowing: it stays so whatever the limit (as
            # `advance` has it), and most piles are idle most of the day.
            self.power_kw = 0.0
            self.trace_t.append(t1)
            self.trace_kw.append(0.0)
            return 0.0
        limit = self._limit(middle)
        if limit > 0:
            limit *= self.overshoot
        stretch = advance(
            self.vehicle, self.power_kw, limit, self.ramp_kw_per_s * self.ramp_factor, t0, t1
        )
        self.trace_t.extend(stretch.times[1:])
        self.trace_kw.extend(stretch.kw[1:])
        self.power_kw = stretch.power_kw
        kwh = stretch.kwh
        if kwh > 0:
            self.energy_import_kwh += kwh
        else:
            self.energy_export_kwh -= kwh
        self.session_energy_kwh += kwh
        if self.vehicle is not None:
            self.vehicle.delivered_kwh += kwh
        return kwh

    def step(self, now: float, dt: float) -> float:
        """Advance by `dt` seconds to `now`; return the energy (kWh) drawn from the site.

        The power follows what the pile was told until a newer setpoint takes effect (after its
        delay), its fail-safe fires or it comes back from a reboot, then that: piecewise, each
        piece integrated exactly (`simulator.charging`).
        """
        since = now - dt
        changes: list[tuple[float, tuple[float, PileMode] | None]] = []
        while self._pending and self._pending[0][0] <= now:
            changes.append(self._pending.popleft())
        fallback_from = self.last_contact + self.comm_timeout_s
        if since < fallback_from < now:
            changes.append((fallback_from, None))
        if since < self.down_until < now:
            changes.append((self.down_until, None))
        if len(changes) > 1:  # mostly one: the setpoint written at the step's start
            changes.sort(key=lambda change: change[0])
        kwh = 0.0
        for effective, command in changes:
            if command is not None and command == self._commanded:
                continue  # the same command again (most steps): nothing changes there
            if effective > since:
                kwh += self._advance(since, effective)
                since = effective
            if command is not None:
                self._commanded = command
        kwh += self._advance(since, now)
        self.applied_kw = self._limit(now)
        return kwh

    def plug(self, vehicle: VehicleModel) -> None:
        """A vehicle connects."""
        self.vehicle = vehicle
        self.session_id += 1
        self.session_energy_kwh = 0.0
        self.power_kw = 0.0

    def unplug(self) -> VehicleModel | None:
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
class VisitRecord:
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
    """Ground-truth statistics of the site load, from the highest power within each piece of
    every step (not the power at the step's end)."""

    limit_kw: float
    peak_kw: float = 0.0
    peak_at: float = 0.0
    over_s: float = 0.0
    longest_over_s: float = 0.0
    over_kwh: float = 0.0
    run_s: float = 0.0

    def add(self, piece: Piece, found: Excess) -> None:
        """Account one piece of a step."""
        if found.peak_kw > self.peak_kw:
            self.peak_kw, self.peak_at = found.peak_kw, piece.end
        self.over_s += found.seconds
        self.over_kwh += found.area_kwh
        self.longest_over_s = max(self.longest_over_s, found.longest_s)
        self.run_s = found.run_s


def _negated(shape: Profile) -> Profile:
    return Profile(shape.times, [-v for v in shape.rise], [-v for v in shape.fall])


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
        groups: Sequence[tuple[Mapping[str, float], float]] = (),
    ) -> None:
        self.station = station
        # Feeders and phases: (each member pile's share, limit kW), booked per piece.
        self.groups = [(dict(members), limit_kw) for members, limit_kw in groups]
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
        self._background_integral = None if background is None else Integral(background)
        self.limit_series = limit
        self.limit_override: float | None = None
        self.limit_kw = station.limit_kw
        self.interval_limit_kw = station.limit_kw
        self.background_kw = 0.0
        self.on_plug: Callable[[PileModel, VehicleModel], None] | None = None
        self.site_kw = 0.0
        self.energy_import_kwh = 0.0
        self.energy_export_kwh = 0.0
        self._arrivals: list[tuple[float, int, Visit]] = []
        self._order = 0
        self.queue: deque[VehicleModel] = deque()
        self.sessions: dict[str, VisitRecord] = {}
        self.events: list[PlantEvent] = []
        self.truth = Truth(station.limit_kw)
        self.record = record
        self.trace_t = array("d")
        self.trace_site = array("d")
        self.trace_background = array("d")
        self.now: float | None = None
        # The pieces of the last step (see `simulator.books`).
        self.pieces: list[Piece] = []
        self.add_visits(visits)

    def add_visits(self, visits: Iterable[Visit]) -> None:
        """Schedule more visits (the hardware simulator adds each new day's)."""
        for visit in visits:
            if visit.vehicle_id in self.sessions:
                continue
            self.sessions[visit.vehicle_id] = VisitRecord(visit)
            heapq.heappush(self._arrivals, (visit.arrival, self._order, visit))
            self._order += 1

    def step(self, now: float, dt: float, breaks: Iterable[float] = ()) -> None:
        """Advance the whole station to `now`, `dt` seconds after the previous step.

        Vehicles arrive and leave at their own times within the step, and each piece of the step
        between such times (and `breaks`, e.g. tariff band boundaries) is booked in `pieces`.
        """
        start = now - dt
        self.now = now
        if self.background_series is not None:
            self.background_kw = self.background_series.at(now)
        else:
            # The noise moves once a step; the site's own load holds that value over the step.
            self.background_kw = self.background.step(now, dt)
        # The power of this step was set at its start, under the limit then in force: that is
        # the limit it answers to (the controller learns of a new one at `now`).
        interval_limit = self.limit_kw if self.limit_series is None else self.limit_series.at(start)
        signalled = self.station.limit_kw
        if self.limit_series is not None:
            signalled = self.limit_series.at(now)
        self.limit_kw = signalled
        if self.limit_override is not None:
            interval_limit = min(interval_limit, self.limit_override)
            self.limit_kw = min(self.limit_kw, self.limit_override)
        self.interval_limit_kw = interval_limit
        cuts = sorted(t for t in breaks if start < t < now)
        self.pieces = []
        t = start
        while True:
            cut = min(self._next_change(t), cuts[0] if cuts else now, now)
            self._run(t, cut, interval_limit)
            self._arrive_and_leave(cut)
            t = cut
            while cuts and cuts[0] <= t:
                cuts.pop(0)
            if t >= now:
                break
        piles_kw = sum(p.power_kw for p in self.piles.values())
        self.site_kw = self.background_kw + piles_kw
        if self.record:
            self.trace_t.append(now)
            self.trace_site.append(self.site_kw)
            self.trace_background.append(self.background_kw)

    def _next_change(self, after: float) -> float:
        """The first arrival or departure after `after`."""
        upcoming = math.inf
        if self._arrivals:
            upcoming = self._arrivals[0][0]
        for pile in self.piles.values():
            if pile.vehicle is not None:
                upcoming = min(upcoming, pile.vehicle.visit.departure)
        if self.queue:
            upcoming = min(upcoming, min(v.visit.departure for v in self.queue))
        return upcoming if upcoming > after else math.nextafter(after, math.inf)

    def _run(self, t0: float, t1: float, limit_kw: float) -> None:
        """Run every pile from `t0` to `t1` and book the piece."""
        if t1 <= t0:
            return
        piles_kwh = 0.0
        for pile in self.piles.values():
            pile.begin_trace(t0)
            piles_kwh += pile.step(t1, t1 - t0)
        if self._background_integral is not None:
            background_kwh = self._background_integral.between(t0, t1)
        else:
            background_kwh = self.background_kw * (t1 - t0) / 3600.0
        base = background_kwh * 3600.0 / (t1 - t0) if t1 > t0 else self.background_kw
        shape = profile([(p.trace_t, p.trace_kw) for p in self.piles.values()], t0, t1)
        site = excess(shape, base, limit_kw, self.truth.run_s)
        net = piles_kwh + background_kwh
        if min(min(shape.rise), min(shape.fall)) + base >= 0:
            imported, exported = net, 0.0
        else:
            # The site exported for part of the piece: split the net by the shape's parts.
            below = excess(_negated(shape), -base, 0.0)
            exported = below.area_kwh
            imported = net + exported
        group_over = 0.0
        for members, group_limit in self.groups:
            traces = [
                (self.piles[pid].trace_t, [share * kw for kw in self.piles[pid].trace_kw])
                for pid, share in members.items()
                if pid in self.piles
            ]
            group_over += excess(profile(traces, t0, t1), 0.0, group_limit).area_kwh
        piece = Piece(
            t0,
            t1,
            piles_kwh,
            background_kwh,
            imported,
            exported,
            site.peak_kw,
            site.area_kwh,
            site.seconds,
            group_over,
        )
        self.pieces.append(piece)
        self.energy_import_kwh += imported
        self.energy_export_kwh += exported
        self.truth.add(piece, site)

    def _arrive_and_leave(self, now: float) -> None:
        self._departures(now)
        while self._arrivals and self._arrivals[0][0] <= now:
            _, _, visit = heapq.heappop(self._arrivals)
            if visit.departure <= now:
                continue
            vehicle = VehicleModel.arriving(visit, self.settings.taper_soc)
            self.queue.append(vehicle)
        self._plug_waiting(now)

    @property
    def utility_limit_kw(self) -> float | None:
        """The limit the utility signals now (None: no signal in force)."""
        if self.limit_series is None and self.limit_override is None:
            return None
        return self.limit_kw

    def move_departure(self, pile_id: str, departure: float) -> VehicleModel | None:
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
        if not self.queue:
            return  # nobody waiting (most pieces of most steps)
        waiting = deque[VehicleModel]()
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

    def delivered(self, vehicle_id: str) -> float:
        """Energy delivered to one visit's vehicle so far (0 if it never plugged in)."""
        record = self.sessions.get(vehicle_id)
        if record is None:
            return 0.0
        if record.left_at is None and record.pile is not None:
            vehicle = self.piles[record.pile].vehicle
            if vehicle is not None and vehicle.visit.vehicle_id == vehicle_id:
                return vehicle.delivered_kwh
        return record.delivered_kwh

    def delivered_kwh(self) -> float:
        """Energy delivered to vehicles so far (plugged-in ones included)."""
        total = sum(r.delivered_kwh for r in self.sessions.values() if r.left_at is not None)
        return total + sum(p.vehicle.delivered_kwh for p in self.piles.values() if p.vehicle)
