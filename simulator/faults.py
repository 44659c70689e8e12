"""Faults the simulator injects: devices that go quiet, lie or misbehave; vehicles and the utility
that do the unexpected.

A fault script is a CSV file, one fault per row (header required; ISO 8601 times with their UTC
offset; `end` empty: until the run ends):

    start,end,kind,target,value
    2026-11-25T19:00:00+08:00,2026-11-25T19:05:00+08:00,silent,grid,
    2026-11-25T20:00:00+08:00,,limit-step,site,3000

`target` is a device id of the station (its grid meter, its terminal, a pile), a pile id for the
vehicle faults, or `site` for the utility's limit. `value` depends on the kind:

| kind             | target        | value (default)                                       |
|------------------|---------------|-------------------------------------------------------|
| silent           | any device    | -: requests time out                                  |
| late             | any device    | latency in s (3): answers arrive that much later      |
| dropped          | any device    | -: connections refused, then it comes back            |
| frozen           | meter         | -: every value stays as it was when the fault began   |
| nan              | meter         | -: power reads NaN                                    |
| absurd           | meter         | power it reads, kW (1000000)                          |
| clock-jump       | meter         | jump of its clock, s (3600), until the fault ends     |
| ignores-setpoint | pile          | -: keeps applying what it applied before              |
| overshoot        | pile          | factor on its setpoint (1.3)                          |
| slow-ramp        | pile          | factor on its rated ramp (0.05)                       |
| reboot           | pile          | -: off and unreachable until `end`, then at its own   |
|                  |               | safe value with its fail-safe settings lost           |
| fault-state      | pile          | fault code it reports (7): it stops delivering        |
| leaves-early     | pile          | -: its vehicle leaves at `start`                      |
| stays-late       | pile          | extra stay in s (3600)                                |
| limit-step       | site          | the utility's limit, kW (required)                    |
| ws-drop          | OCPP pile     | -: its websocket is dropped; it reconnects at `end`   |
| ignores-profiles | OCPP pile     | -: accepts profiles, keeps applying what it applied   |
| applies-late     | OCPP pile     | delay in s (20): applies what it is told that late    |
| rejects-purpose  | OCPP pile     | the profile purpose it answers Rejected (required),   |
|                  |               | e.g. TxProfile                                        |

For an OCPP charge point, `silent` and `dropped` drop its websocket like `ws-drop`, and `reboot`
also loses its charging profiles and its transaction: it boots again at `end`. The fast simulation
runs OCPP piles without their transport: there `ws-drop` is `dropped`, `ignores-profiles` is
`ignores-setpoint`, `applies-late` delays the pile's setpoints, and `rejects-purpose` changes nothing.

`load_faults` raises `ConfigError` naming the file, the row and the field of every bad entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np

from base.config import Station
from base.devicemap import Value
from base.events import DeviceRef, Event, Kind, Source
from base.loading import (
    CellReader,
    Problems,
    Row,
    read_number,
    read_table,
    read_text,
    read_time,
)
from simulator.plant import Plant


class FaultKind(StrEnum):
    """What goes wrong."""

    SILENT = "silent"
    LATE = "late"
    DROPPED = "dropped"
    FROZEN = "frozen"
    NAN = "nan"
    ABSURD = "absurd"
    CLOCK_JUMP = "clock-jump"
    IGNORES_SETPOINT = "ignores-setpoint"
    OVERSHOOT = "overshoot"
    SLOW_RAMP = "slow-ramp"
    REBOOT = "reboot"
    FAULT_STATE = "fault-state"
    LEAVES_EARLY = "leaves-early"
    STAYS_LATE = "stays-late"
    LIMIT_STEP = "limit-step"
    # OCPP charge points only (after the others: a station without OCPP piles draws its random
    # faults as before).
    WS_DROP = "ws-drop"
    IGNORES_PROFILES = "ignores-profiles"
    APPLIES_LATE = "applies-late"
    REJECTS_PURPOSE = "rejects-purpose"


DEVICE_FAULTS = frozenset({FaultKind.SILENT, FaultKind.LATE, FaultKind.DROPPED})
METER_FAULTS = frozenset({FaultKind.FROZEN, FaultKind.NAN, FaultKind.ABSURD, FaultKind.CLOCK_JUMP})
PILE_FAULTS = frozenset(
    {
        FaultKind.IGNORES_SETPOINT,
        FaultKind.OVERSHOOT,
        FaultKind.SLOW_RAMP,
        FaultKind.REBOOT,
        FaultKind.FAULT_STATE,
        FaultKind.LEAVES_EARLY,
        FaultKind.STAYS_LATE,
    }
)
OCPP_FAULTS = frozenset(
    {
        FaultKind.WS_DROP,
        FaultKind.IGNORES_PROFILES,
        FaultKind.APPLIES_LATE,
        FaultKind.REJECTS_PURPOSE,
    }
)
# The purposes `rejects-purpose` takes (1.6 and 2.0.1 names).
PURPOSES = (
    "ChargePointMaxProfile",
    "ChargingStationMaxProfile",
    "TxDefaultProfile",
    "TxProfile",
)
DEFAULT_VALUES: dict[FaultKind, float] = {
    FaultKind.LATE: 3.0,
    FaultKind.ABSURD: 1e6,
    FaultKind.CLOCK_JUMP: 3600.0,
    FaultKind.OVERSHOOT: 1.3,
    FaultKind.SLOW_RAMP: 0.05,
    FaultKind.FAULT_STATE: 7.0,
    FaultKind.STAYS_LATE: 3600.0,
    FaultKind.APPLIES_LATE: 20.0,
}
# A reboot without an end keeps the pile off this long.
DEFAULT_REBOOT_S = 30.0


@dataclass(frozen=True)
class Fault:
    """One fault: what, on which device, from `start` until `end` (epoch seconds)."""

    kind: FaultKind
    target: str
    start: float
    end: float = math.inf
    value: float | None = None
    # The value of a kind that takes a name (`rejects-purpose`: the purpose).
    label: str | None = None

    @property
    def amount(self) -> float:
        """The fault's value, or its kind's default."""
        if self.value is not None:
            return self.value
        if self.kind is FaultKind.REBOOT:
            return DEFAULT_REBOOT_S if math.isinf(self.end) else self.end - self.start
        return DEFAULT_VALUES.get(self.kind, math.nan)

    def active(self, now: float) -> bool:
        """True while the fault is on."""
        return self.start <= now < self.end

    def __str__(self) -> str:
        value = "" if self.value is None else f" {self.value:g}"
        if self.label is not None:
            value = f" {self.label}"
        return f"{self.kind}{value} on {self.target}"


class FaultScript:
    """The faults of one run, applied to the plant and to what the controller reads.

    Every device is asked about at every step (a month's soak asks millions of times), so the
    faults in force are kept by target and brought up to date once per time asked about, not
    searched for: the script works on any clock, but expects time to move forwards.
    """

    def __init__(self, faults: Iterable[Fault] = ()) -> None:
        self.faults = tuple(sorted(faults, key=lambda f: f.start))
        self._frozen_values: dict[int, dict[str, Value | None]] = {}
        # `apply`: the next fault to start, and those started that have not ended (indices).
        self._next_start = 0
        self._running: list[int] = []
        # What is in force at `_at`: the next fault to come into force, the indices of those in
        # force, and the same by target.
        self._at: float | None = None
        self._next_live = 0
        self._live: list[int] = []
        self._by_target: dict[str, tuple[tuple[int, Fault], ...]] = {}

    def __bool__(self) -> bool:
        return bool(self.faults)

    def check(self, station: Station, file: Path | None = None) -> None:
        """Raise `ConfigError` if a fault names a device the station lacks or cannot have it."""
        where = file or station.path
        meters = {station.grid_meter.id} | (
            set() if station.terminal is None else {station.terminal.id}
        )
        piles = {p.id for p in station.piles}
        ocpp = {p.id for p in station.piles if p.protocol == "ocpp"}
        problems = Problems(where)
        for number, fault in enumerate(self.faults, start=1):
            if fault.kind is FaultKind.LIMIT_STEP:
                allowed, what = {"site"}, "`site`"
            elif fault.kind in METER_FAULTS:
                allowed, what = meters, "a meter of the station"
            elif fault.kind in PILE_FAULTS:
                allowed, what = piles, "a pile of the station"
            elif fault.kind in OCPP_FAULTS:
                allowed, what = ocpp, "an OCPP pile of the station"
            else:
                allowed, what = meters | piles, "a device of the station"
            if fault.target not in allowed:
                known = ", ".join(sorted(allowed)) or "none"
                problems.add(
                    f"fault {number} ({fault})",
                    "target",
                    f"must be {what} ({known}), not {fault.target!r}",
                )
        problems.raise_if_any()

    def active(self, kind: FaultKind, target: str, now: float) -> Fault | None:
        """The fault of `kind` on `target` in force at `now`, if any."""
        for _, fault in self._on(target, now):
            if fault.kind is kind:
                return fault
        return None

    def _on(self, target: str, now: float) -> tuple[tuple[int, Fault], ...]:
        """The faults on `target` in force at `now`, with their indices, in the script's order."""
        if now != self._at:
            self._bring_to(now)
        return self._by_target.get(target, ())

    def _bring_to(self, now: float) -> None:
        faults = self.faults
        changed = self._at is not None and now < self._at
        if changed:
            self._next_live, self._live = 0, []  # time went back: start afresh
        self._at = now
        live = self._live
        while self._next_live < len(faults) and faults[self._next_live].start <= now:
            live.append(self._next_live)
            self._next_live += 1
            changed = True
        kept = [i for i in live if now < faults[i].end]
        if changed or len(kept) != len(live):
            self._live = kept
            by_target: dict[str, list[tuple[int, Fault]]] = {}
            for index in kept:
                by_target.setdefault(faults[index].target, []).append((index, faults[index]))
            self._by_target = {target: tuple(on) for target, on in by_target.items()}

    # -- the plant -----------------------------------------------------------------------------

    def apply(self, plant: Plant, now: float) -> list[Event]:
        """Start and end the faults that act on the plant; what happened, as events from the
        simulator about the device each fault is on."""
        faults = self.faults
        starting: list[int] = []
        while self._next_start < len(faults) and faults[self._next_start].start <= now:
            starting.append(self._next_start)
            self._next_start += 1
        self._running.extend(starting)
        ending = [i for i in self._running if now >= faults[i].end]
        if not ending and not starting:
            return []
        notes = []
        for index in sorted({*starting, *ending}):
            fault = faults[index]
            if index in starting:
                notes.append(_note(plant, fault, now, Kind.SCRIPTED_FAULT, "starts"))
                self._start(plant, fault, now)
            if index in ending:
                notes.append(_note(plant, fault, now, Kind.SCRIPTED_FAULT_ENDED, "ends"))
                self._end(plant, fault)
        self._running = [i for i in self._running if i not in ending]
        return notes

    def _start(self, plant: Plant, fault: Fault, now: float) -> None:
        kind, pile = fault.kind, plant.piles.get(fault.target)
        if kind is FaultKind.LIMIT_STEP:
            plant.limit_override = fault.amount
        elif pile is None:
            return
        elif kind in (FaultKind.IGNORES_SETPOINT, FaultKind.IGNORES_PROFILES):
            pile.ignoring = True
        elif kind is FaultKind.APPLIES_LATE:
            pile.late_s = fault.amount
        elif kind is FaultKind.OVERSHOOT:
            pile.overshoot = fault.amount
        elif kind is FaultKind.SLOW_RAMP:
            pile.ramp_factor = fault.amount
        elif kind is FaultKind.REBOOT:
            pile.reboot(now, fault.amount)
        elif kind is FaultKind.FAULT_STATE:
            pile.fault_code = int(fault.amount)
        elif kind is FaultKind.LEAVES_EARLY:
            plant.move_departure(pile.id, now)
        elif kind is FaultKind.STAYS_LATE and pile.vehicle is not None:
            plant.move_departure(pile.id, pile.vehicle.visit.departure + fault.amount)

    def _end(self, plant: Plant, fault: Fault) -> None:
        kind, pile = fault.kind, plant.piles.get(fault.target)
        if kind is FaultKind.LIMIT_STEP:
            plant.limit_override = None
        elif pile is None:
            return
        elif kind in (FaultKind.IGNORES_SETPOINT, FaultKind.IGNORES_PROFILES):
            pile.ignoring = False
        elif kind is FaultKind.APPLIES_LATE:
            pile.late_s = 0.0
        elif kind is FaultKind.OVERSHOOT:
            pile.overshoot = 1.0
        elif kind is FaultKind.SLOW_RAMP:
            pile.ramp_factor = 1.0
        elif kind is FaultKind.FAULT_STATE:
            pile.fault_code = 0

    # -- what the controller reads -------------------------------------------------------------

    def reachable(self, device: str, now: float) -> bool:
        """False while `device` takes no requests (silent, dropped, its websocket dropped,
        rebooting)."""
        for _, fault in self._on(device, now):
            if fault.kind in (FaultKind.SILENT, FaultKind.DROPPED, FaultKind.WS_DROP):
                return False
            if fault.kind is FaultKind.REBOOT and now < fault.start + fault.amount:
                return False
        return True

    @property
    def longest_latency_s(self) -> float:
        """The longest any device is scripted to answer late (0 if none is)."""
        return max((f.amount for f in self.faults if f.kind is FaultKind.LATE), default=0.0)

    def rejected_purposes(self, device: str, now: float) -> set[str]:
        """The profile purposes `device` (an OCPP charge point) answers Rejected now."""
        return {
            fault.label
            for _, fault in self._on(device, now)
            if fault.kind is FaultKind.REJECTS_PURPOSE and fault.label is not None
        }

    def latency_s(self, device: str, now: float) -> float:
        """How late `device` answers now."""
        fault = self.active(FaultKind.LATE, device, now)
        return 0.0 if fault is None else max(fault.amount, 0.0)

    def access(self, devices: Iterable[str], now: float) -> FaultKind | float | None:
        """How a server for `devices` treats a request now: SILENT or DROPPED (any of them is
        unreachable), a latency in s, or None (it answers)."""
        latency = 0.0
        for device in devices:
            if not self.reachable(device, now):
                dropped = any(
                    self.active(kind, device, now) is not None
                    for kind in (FaultKind.DROPPED, FaultKind.WS_DROP)
                )
                return FaultKind.DROPPED if dropped else FaultKind.SILENT
            latency = max(latency, self.latency_s(device, now))
        return latency or None

    def meter_values(
        self, device: str, now: float, values: dict[str, Value | None]
    ) -> dict[str, Value | None]:
        """What a meter's registers hold (named values in the project's units), given what it
        measures."""
        for index, fault in self._on(device, now):
            if fault.kind is FaultKind.FROZEN:
                values = self._frozen_values.setdefault(index, values)
            elif fault.kind is FaultKind.NAN:
                values = {**values, "power": None}
            elif fault.kind is FaultKind.ABSURD:
                values = {**values, "power": fault.amount}
            elif fault.kind is FaultKind.CLOCK_JUMP and isinstance(values.get("clock"), float):
                clock = values["clock"]
                assert isinstance(clock, float)
                values = {**values, "clock": clock + fault.amount}
        return values


def _note(plant: Plant, fault: Fault, now: float, kind: Kind, what: str) -> Event:
    text = f"simulator: fault {what}: {fault}"
    return Event(now, Source.SIMULATOR, kind, text, _device(plant.station, fault.target))


def _device(station: Station, target: str) -> DeviceRef | None:
    """The device of the station a fault's target names (None for `site`)."""
    if target == station.grid_meter.id:
        return DeviceRef.meter(target)
    if station.terminal is not None and target == station.terminal.id:
        return DeviceRef.terminal(target)
    if any(p.id == target for p in station.piles):
        return DeviceRef.pile(target)
    return None


# -- the file format ----------------------------------------------------------------------------

COLUMNS = ("start", "end", "kind", "target", "value")
REQUIRED_COLUMNS = ("start", "kind", "target")


def load_faults(path: Path | str, *, station: Station | None = None) -> FaultScript:
    """A fault script from its CSV file (see the module docstring); with `station`, every fault's
    target must be a device of the station that can have it (`FaultScript.check`)."""
    path = Path(path)
    problems = Problems(path)
    table = read_table(read_text(path, problems), problems)
    table.check_header(
        problems, REQUIRED_COLUMNS, [c for c in COLUMNS if c not in REQUIRED_COLUMNS]
    )
    faults = [f for row in table.records(problems) if (f := _fault_row(row, problems)) is not None]
    problems.raise_if_any()
    script = FaultScript(faults)
    if station is not None:
        script.check(station, path)
    return script


def _fault_kind(text: str) -> FaultKind:
    try:
        return FaultKind(text)
    except ValueError:
        known = ", ".join(k.value for k in FaultKind)
        raise ValueError(f"unknown kind {text!r}; known: {known}") from None


FAULT_CELLS: dict[str, CellReader] = {
    "start": read_time,
    "end": read_time,
    "kind": _fault_kind,
    "target": str,
    "value": str,  # read by kind (`_fault_value`)
}


def _fault_row(row: Row, problems: Problems) -> Fault | None:
    values, good = row.read(FAULT_CELLS, problems, REQUIRED_COLUMNS)
    start, end = values.get("start"), values.get("end", math.inf)
    if start is not None and end <= start:
        problems.add(row.where, "end", "must be after start")
        good = False
    kind = values.get("kind")
    if kind is FaultKind.LIMIT_STEP and not row.cells.get("value"):
        problems.add(row.where, "value", "a limit step needs the new limit in kW")
        good = False
    if kind is FaultKind.REJECTS_PURPOSE and not row.cells.get("value"):
        problems.add(row.where, "value", f"the purpose it rejects: one of {', '.join(PURPOSES)}")
        good = False
    value: float | None = None
    label: str | None = None
    text = values.get("value")
    if text is not None:
        try:
            if kind is FaultKind.REJECTS_PURPOSE:
                label = _purpose(text)
            else:
                value = read_number(text, low=0)
        except (ValueError, OverflowError) as exc:
            problems.add(row.where, "value", str(exc) or f"cannot read {text!r}")
            good = False
    if not good:
        return None
    return Fault(values["kind"], values["target"], values["start"], end, value, label)


def _purpose(text: str) -> str:
    if text not in PURPOSES:
        raise ValueError(f"unknown purpose {text!r}; known: {', '.join(PURPOSES)}")
    return text


def random_faults(
    station: Station, start: float, end: float, *, per_day: float, seed: int
) -> FaultScript:
    """A seeded random fault script: `per_day` faults a day on average, of every kind, on random
    devices, each lasting from a minute to half an hour (a soak test's diet)."""
    rng = np.random.default_rng(seed)
    meters = [station.grid_meter.id] + ([] if station.terminal is None else [station.terminal.id])
    piles = [p.id for p in station.piles]
    ocpp = [p.id for p in station.piles if p.protocol == "ocpp"]
    kinds = [k.value for k in FaultKind if ocpp or k not in OCPP_FAULTS]
    count = int(rng.poisson(per_day * (end - start) / 86400))
    faults = []
    for when in np.sort(rng.uniform(start, end, count)):
        kind = FaultKind(rng.choice(kinds))
        label: str | None = None
        if kind is FaultKind.LIMIT_STEP:
            target = "site"
        elif kind in METER_FAULTS:
            target = str(rng.choice(meters))
        elif kind in PILE_FAULTS:
            target = str(rng.choice(piles))
        elif kind in OCPP_FAULTS:
            target = str(rng.choice(ocpp))
            if kind is FaultKind.REJECTS_PURPOSE:
                label = str(rng.choice(PURPOSES))
        else:
            target = str(rng.choice(meters + piles))
        length = float(rng.uniform(60, 1800))
        value: float | None = None
        if kind is FaultKind.LIMIT_STEP:
            value = round(float(rng.uniform(0.5, 0.9)) * station.limit_kw)
        elif kind is FaultKind.REBOOT:
            length = float(rng.uniform(10, 120))
        elif kind is FaultKind.LATE:
            value = float(rng.uniform(2, 4))
        elif kind is FaultKind.OVERSHOOT:
            value = float(rng.uniform(1.1, 1.5))
        elif kind is FaultKind.SLOW_RAMP:
            value = float(rng.uniform(0.01, 0.2))
        elif kind is FaultKind.APPLIES_LATE:
            value = float(rng.uniform(5, 30))
        one_off = kind in (FaultKind.LEAVES_EARLY, FaultKind.STAYS_LATE)
        until = math.inf if one_off else float(when) + length
        faults.append(Fault(kind, target, float(when), until, value, label))
    return FaultScript(faults)
