"""The scheduling problem: one validated description of what a plan must satisfy.

A `Problem` is a slot grid (aligned to the tariff's clock, slot 0 possibly partial), per-slot site
data (limit, forecast background load, import and export prices), the vehicles to serve, the
month-to-date peak and demand charge, group limits (feeders, switchboards, phases) and the ramp
limit. Everything is in the project's units: kW, kWh, seconds since the epoch, currency per kWh.

`Problem.check()` raises `ProblemError` listing every inconsistency at once; solver outcomes
(infeasible, out of time) are never exceptions (see `scheduler.plan`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


class ProblemError(ValueError):
    """The problem is malformed; `problems` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid scheduling problem:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class Vehicle:
    """A vehicle to serve: how much energy it needs at its pile, and until when.

    `energy_kwh` is measured at the pile (what its meter will count). A vehicle that may discharge
    (`v2g`) also needs `capacity_kwh` and `soc`, so that its battery never goes below `min_soc`
    or above full; `efficiency` converts between pile and battery energy for it.
    `arrival` is set only for vehicles not yet plugged in (offline, perfect-knowledge plans).
    An `expected` vehicle is a forecast, not a promise: its unmet energy weighs
    `Weights.expected_unmet_per_kwh`. With `taper_soc` (and the battery known), the vehicle takes at most
    max_kw * (1 - soc) / (1 - taper_soc) once its state of charge passes `taper_soc`, as a
    battery's constant-voltage phase does; `accepts_kw`, when the pile's rating caps `max_kw`
    below what the battery takes, is the battery's own maximum, from which its taper falls.
    """

    id: str
    pile: str
    energy_kwh: float
    departure: float
    max_kw: float
    min_kw: float = 0.0
    efficiency: float = 1.0
    v2g: bool = False
    max_discharge_kw: float = 0.0
    capacity_kwh: float | None = None
    soc: float | None = None
    min_soc: float = 0.2
    arrival: float | None = None
    taper_soc: float | None = None
    expected: bool = False
    accepts_kw: float | None = None

    @property
    def battery_kw(self) -> float:
        """The most the battery itself takes (its taper scales from this), `max_kw` unless the
        pile allows less than the battery would take."""
        return self.max_kw if self.accepts_kw is None else max(self.accepts_kw, self.max_kw)

    @property
    def tapers(self) -> bool:
        """True if the vehicle's charging power will fall off before it is done (so plans must
        start early enough): its battery is known and its target lies above `taper_soc`."""
        if self.taper_soc is None or self.capacity_kwh is None or self.soc is None:
            return False
        return self.soc + self.efficiency * self.energy_kwh / self.capacity_kwh > self.taper_soc

    @staticmethod
    def energy_for_soc(
        target_soc: float, soc: float, capacity_kwh: float, efficiency: float
    ) -> float:
        """Energy at the pile that brings a battery from `soc` to `target_soc`."""
        return max(0.0, target_soc - soc) * capacity_kwh / efficiency


@dataclass(frozen=True)
class GroupLimit:
    """A limit on a subset of piles: a feeder, a switchboard, or one phase of an AC site.

    `members` maps a pile to how much of its power counts against the limit (1 for a pile on a
    feeder; 1 for a single-phase charger on this phase; 1/3 for a three-phase charger).
    """

    name: str
    members: Mapping[str, float]
    limit_kw: float

    @staticmethod
    def phase(
        phase: str, limit_a: float, voltage_v: float, single: Sequence[str], three: Sequence[str]
    ) -> GroupLimit:
        """A per-phase current limit: single-phase chargers on `phase` count in full, three-phase
        chargers a third of their power."""
        members = {pile: 1.0 for pile in single}
        members.update({pile: 1.0 / 3.0 for pile in three})
        return GroupLimit(f"phase {phase}", members, limit_a * voltage_v / 1000.0)


@dataclass(frozen=True)
class Weights:
    """Objective weights. The tie-breaks are orders of magnitude below any price difference."""

    unmet_per_kwh: float = 1000.0
    expected_unmet_per_kwh: float = 1000.0
    degradation_per_kwh: float = 0.05
    earliness_per_kwh_slot: float = 1e-5
    flatness_per_kw: float = 1e-3


@dataclass(frozen=True)
class Problem:
    """Everything the optimiser needs for one plan."""

    boundaries: FloatArray
    limit_kw: FloatArray
    background_kw: FloatArray
    import_price: FloatArray
    export_price: FloatArray
    vehicles: tuple[Vehicle, ...]
    peak_kw: float = 0.0
    demand_charge: float = 0.0
    groups: tuple[GroupLimit, ...] = ()
    ramp_kw_per_min: float | None = None
    piles_kw_now: float = 0.0
    export_limit_kw: FloatArray | None = None
    weights: Weights = field(default_factory=Weights)
    new_months: tuple[float, ...] = ()
    demand_window_s: float | None = None
    window_import_kwh: float = 0.0
    # The share of its maximum below which a tapering battery's acceptance does not fall (the LP
    # lays it along the whole taper, so that its rows stay an upper bound).
    taper_floor: float = 0.0

    @property
    def start(self) -> float:
        """When the plan starts (epoch seconds)."""
        return float(self.boundaries[0])

    def billing_periods(self) -> list[tuple[float, float, float]]:
        """(start, end, peak so far) of each billing period the plan touches: the current one
        with `peak_kw`, then one from each of `new_months` (a new month starts with no peak)."""
        edges = [
            self.start,
            *(t for t in sorted(self.new_months) if self.start < t < self.end),
            self.end,
        ]
        return [
            (edges[i], edges[i + 1], self.peak_kw if i == 0 else 0.0) for i in range(len(edges) - 1)
        ]

    @property
    def end(self) -> float:
        """When the plan's last slot ends."""
        return float(self.boundaries[-1])

    @property
    def slots(self) -> int:
        """Number of slots."""
        return len(self.boundaries) - 1

    @property
    def slot_hours(self) -> float:
        """The length of a whole slot (the first and last may be shorter), in hours."""
        lengths = np.diff(self.boundaries)
        return float(np.max(lengths)) / 3600.0

    @property
    def hours(self) -> FloatArray:
        """Length of each slot in hours."""
        return np.diff(self.boundaries) / 3600.0

    @property
    def whole_hours(self) -> FloatArray:
        """Each slot's length had it not been cut short: slot 0 as long as slot 1, the last at
        least as long as the one before it (the others as they are)."""
        whole = self.hours.copy()
        if len(whole) > 1:
            whole[0] = whole[1]
            whole[-1] = max(whole[-1], whole[-2])
        return whole

    def presence(self, vehicle: Vehicle) -> FloatArray:
        """Hours of each slot that `vehicle` is plugged in."""
        arrival = self.start if vehicle.arrival is None else max(vehicle.arrival, self.start)
        lo = np.maximum(self.boundaries[:-1], arrival)
        hi = np.minimum(self.boundaries[1:], vehicle.departure)
        return np.maximum(hi - lo, 0.0) / 3600.0

    def check(self) -> Problem:
        """Raise `ProblemError` with every inconsistency; return self when sound."""
        found: list[str] = []
        b = np.asarray(self.boundaries, dtype=float)
        if b.ndim != 1 or len(b) < 2:
            raise ProblemError(["boundaries: need at least one slot (two boundaries)"])
        if not np.all(np.isfinite(b)):
            found.append("boundaries: not all finite")
        elif np.any(np.diff(b) <= 0):
            found.append("boundaries: must increase strictly")
        slots = len(b) - 1
        arrays: dict[str, FloatArray] = {
            "limit_kw": self.limit_kw,
            "background_kw": self.background_kw,
            "import_price": self.import_price,
            "export_price": self.export_price,
        }
        if self.export_limit_kw is not None:
            arrays["export_limit_kw"] = self.export_limit_kw
        for name, values in arrays.items():
            array = np.asarray(values, dtype=float)
            if array.shape != (slots,):
                found.append(
                    f"{name}: {array.shape[0] if array.ndim else 0} values for {slots} slots"
                )
            elif not np.all(np.isfinite(array)):
                found.append(
                    f"{name}: contains NaN or infinity (slot {int(np.argmin(np.isfinite(array)))})"
                )
        for name in ("limit_kw", "export_limit_kw"):
            limit = arrays.get(name)
            if limit is not None and np.shape(limit) == (slots,) and np.any(np.asarray(limit) < 0):
                found.append(f"{name}: negative in slot {int(np.argmax(np.asarray(limit) < 0))}")
        scalars = {
            "peak_kw": self.peak_kw,
            "demand_charge": self.demand_charge,
            "piles_kw_now": self.piles_kw_now,
        }
        for name, value in scalars.items():
            if not math.isfinite(value) or (name != "piles_kw_now" and value < 0):
                found.append(f"{name}: must be a non-negative number, got {value}")
        if self.demand_window_s is not None and not self.demand_window_s > 0:
            found.append(f"demand_window_s: must be positive, got {self.demand_window_s}")
        if not (math.isfinite(self.window_import_kwh) and self.window_import_kwh >= 0):
            found.append(
                f"window_import_kwh: must be a non-negative number, got {self.window_import_kwh}"
            )
        if not 0 <= self.taper_floor < 1:
            found.append(f"taper_floor: must be in [0, 1), got {self.taper_floor}")
        if self.ramp_kw_per_min is not None and not (self.ramp_kw_per_min > 0):
            found.append(f"ramp_kw_per_min: must be positive, got {self.ramp_kw_per_min}")
        w = self.weights
        if not (
            w.unmet_per_kwh > 0
            and w.degradation_per_kwh >= 0
            and w.earliness_per_kwh_slot >= 0
            and w.flatness_per_kw >= 0
        ):
            found.append(
                "weights: the unmet-energy penalty must be positive and the others not negative"
            )
        ids: set[str] = set()
        piles: set[str] = set()
        start = float(b[0]) if len(b) else 0.0
        for vehicle in self.vehicles:
            found.extend(f"vehicle {vehicle.id}: {p}" for p in _vehicle_problems(vehicle, start))
            if vehicle.id in ids:
                found.append(f"vehicle {vehicle.id}: listed twice")
            ids.add(vehicle.id)
            piles.add(vehicle.pile)
        names: set[str] = set()
        for group in self.groups:
            if group.name in names:
                found.append(f"group {group.name}: two groups have this name")
            names.add(group.name)
            if not (math.isfinite(group.limit_kw) and group.limit_kw >= 0):
                found.append(
                    f"group {group.name}: limit must be a non-negative number, got {group.limit_kw}"
                )
            for pile, share in group.members.items():
                if not (math.isfinite(share) and share > 0):
                    found.append(
                        f"group {group.name}: member {pile} counts {share}, must be positive"
                    )
        if found:
            raise ProblemError(found)
        return self


def _vehicle_problems(v: Vehicle, start: float) -> list[str]:
    found = []
    if not v.pile:
        found.append("no pile")
    if not (math.isfinite(v.energy_kwh) and v.energy_kwh >= 0):
        found.append(f"energy_kwh must be a non-negative number, got {v.energy_kwh}")
    if not (math.isfinite(v.max_kw) and v.max_kw > 0):
        found.append(f"max_kw must be positive, got {v.max_kw}")
    if not (math.isfinite(v.min_kw) and 0 <= v.min_kw <= max(v.max_kw, 0)):
        found.append(f"min_kw must be between 0 and max_kw, got {v.min_kw}")
    if not (0 < v.efficiency <= 1):
        found.append(f"efficiency must be in (0, 1], got {v.efficiency}")
    if not math.isfinite(v.departure):
        found.append("departure is not a time")
    elif v.departure <= start:
        found.append("departs before the plan starts (estimate its departure later)")
    if v.arrival is not None and not math.isfinite(v.arrival):
        found.append("arrival is not a time")
    elif v.arrival is not None and math.isfinite(v.departure) and v.arrival >= v.departure:
        found.append("arrives after it departs")
    if v.accepts_kw is not None and not (math.isfinite(v.accepts_kw) and v.accepts_kw > 0):
        found.append(f"accepts_kw must be positive, got {v.accepts_kw}")
    if v.taper_soc is not None and not 0 < v.taper_soc < 1:
        found.append(f"taper_soc must be in (0, 1), got {v.taper_soc}")
    if v.soc is not None and not 0 <= v.soc <= 1:
        found.append(f"soc must be in [0, 1], got {v.soc}")
    if v.capacity_kwh is not None and not (math.isfinite(v.capacity_kwh) and v.capacity_kwh > 0):
        found.append(f"capacity_kwh must be positive, got {v.capacity_kwh}")
    if v.v2g:
        if not (math.isfinite(v.max_discharge_kw) and v.max_discharge_kw > 0):
            found.append(f"a V2G vehicle needs max_discharge_kw > 0, got {v.max_discharge_kw}")
        if v.capacity_kwh is None or v.soc is None:
            found.append("a V2G vehicle needs capacity_kwh and soc")
        if not 0 <= v.min_soc < 1:
            found.append(f"min_soc must be in [0, 1), got {v.min_soc}")
    elif v.max_discharge_kw:
        found.append("max_discharge_kw is set but v2g is false")
    return found


def slot_boundaries(
    start: float,
    zone: ZoneInfo,
    *,
    horizon_s: float = 86400.0,
    slot_s: float = 900.0,
    later: Sequence[tuple[float, float]] = (),
) -> FloatArray:
    """Slot boundaries from `start`, aligned to multiples of `slot_s` after local midnight.

    Slot 0 runs from `start` to the next aligned boundary (it may be partial); the last slot ends
    at `start + horizon_s`. `later` coarsens the far part of the plan: (after this many seconds
    from `start`, slots of this many seconds), each aligned the same way, in order.
    """
    stages = [(0.0, slot_s), *later]
    if any(length <= 0 for _, length in stages) or horizon_s <= 0:
        raise ProblemError(
            [f"slot and horizon must be positive, got slots {stages} and horizon {horizon_s} s"]
        )
    local = datetime.fromtimestamp(start, zone)
    # Count real seconds from local midnight (epoch arithmetic, not wall-clock arithmetic), so a
    # daylight-saving change during the night does not shift the grid.
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0).timestamp()
    end = start + horizon_s
    points = [start]
    for index, (_, length) in enumerate(stages):
        until = start + stages[index + 1][0] if index + 1 < len(stages) else end
        elapsed = points[-1] - midnight
        boundary = midnight + (math.floor(elapsed / length + 1e-9) + 1) * length
        while boundary < min(until, end) - 1e-6:
            points.append(boundary)
            boundary += length
    points.append(end)
    return np.asarray(points, dtype=float)


def month_starts(start: float, end: float, zone: ZoneInfo) -> tuple[float, ...]:
    """Local midnights of the 1st of each month strictly inside (start, end)."""
    local = datetime.fromtimestamp(start, zone)
    found: list[float] = []
    year, month = local.year, local.month
    while True:
        month += 1
        if month == 13:
            year, month = year + 1, 1
        first = datetime(year, month, 1, tzinfo=zone).timestamp()
        if first >= end:
            return tuple(found)
        found.append(first)
