"""What the daemon shows the outside, and what the outside may ask of it.

`StationStatus` is a read-only copy of the daemon's state at one instant; the HTTP API, the
metrics, the live view and the demo read it instead of reaching into the daemon's parts.
`StationPort` is all they may do: read that status, watch cycles, and a few operator commands
(a driver's wish, a limit override, a reload, a stop). `StatusSource` is the reading half, which
the API's process also has from the copies the daemon hands it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from base.config import Station
from base.events import Event
from control.decider import Policy
from control.planner import PlanCounts
from control.reasons import PileReason, pile_reasons
from control.sensing import LimitOverride, LimitSource
from control.sessions import Session, Wish
from control.site import PileView
from control.step import Cycle
from scheduler.plan import Plan


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
    energy_by_band: dict[str, float] = field(default_factory=dict)
    charging_cost: float = 0.0
    # How plans were made: the planner's own counts, read, never copied.
    planning: PlanCounts = field(default_factory=PlanCounts)
    _counters: dict[str, float] = field(default_factory=dict)

    @property
    def plans(self) -> int:
        """Plans adopted (the solver's or the fallback's)."""
        return self.planning.plans

    @property
    def fallbacks(self) -> int:
        """Plans from the fallback heuristic."""
        return self.planning.fallbacks

    @property
    def solve_ms(self) -> list[float]:
        """The solver's times (ms)."""
        return self.planning.solve_ms

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


@dataclass(frozen=True)
class DeviceHealth:
    """One device's health as its feed knows it: since when it fails (None while healthy)
    and when it last answered plausibly (None: never)."""

    device: str
    ok: bool
    episodes: int
    error: str | None = None
    since: float | None = None
    last_seen: float | None = None


@dataclass(frozen=True)
class StationStatus:
    """The daemon's state at `time`, copied: reading it never races the control loop."""

    time: float
    station: Station
    policy: str
    last_cycle: Cycle | None
    plan: Plan | None
    planned_at: float | None
    sessions: Mapping[str, Session]
    wishes: Mapping[tuple[str, int], Wish]
    faults: Mapping[str, str]
    setpoints: Mapping[str, float]
    devices: tuple[DeviceHealth, ...]
    pile_errors: Mapping[str, str | None]
    limit_source: LimitSource
    utility_limit_kw: float | None
    override: LimitOverride | None
    tally: Tally
    events: tuple[Event, ...] = ()
    event_count: int = 0

    def reasons(self) -> dict[str, PileReason]:
        """Why each pile draws what it draws, from the last cycle (`control.reasons`)."""
        return pile_reasons(
            self.last_cycle,
            policy=Policy(self.policy),
            plan=self.plan,
            sessions=self.sessions,
            faults=self.faults,
            pile_ids=tuple(p.id for p in self.station.piles),
        )

    def device(self, label: str) -> DeviceHealth | None:
        """The health of the device named `label` ("pile P03"), if the daemon reads it."""
        return next((d for d in self.devices if d.device == label), None)


class StatusSource(Protocol):
    """Where the daemon's state can be read: the daemon itself, or the API process's copy."""

    def status(self) -> StationStatus:
        """The daemon's state now (the copy's: as last handed over)."""
        ...

    def watch(self, observer: Callable[[Cycle], None]) -> None:
        """Call `observer` after every cycle (in the control loop: it must be quick)."""
        ...


class StationPort(StatusSource, Protocol):
    """What the API, the metrics, the live view and the demo may see and ask of a daemon."""

    def unwatch(self, observer: Callable[[Cycle], None]) -> None:
        """Stop calling `observer` (nothing to do if it is not watching)."""
        ...

    def wish(self, pile_id: str, session_id: int, wish: Wish) -> None:
        """What a driver or fleet system says of the session at a pile."""
        ...

    def override_limit(self, kw: float, until: float, reason: str) -> LimitOverride:
        """Lower the site limit until `until` (raises ValueError if it would raise it)."""
        ...

    def clear_override(self) -> LimitOverride | None:
        """End the operator's override now; the one that ended, if any."""
        ...

    def request_reload(self, path: Path) -> None:
        """Reload the station file at `path`."""
        ...

    def request_stop(self) -> None:
        """Stop the daemon."""
        ...
