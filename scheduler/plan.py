"""A plan: power per vehicle per slot, and how it came about.

Solver outcomes are values here, never exceptions: an infeasible problem or a solve that ran out
of time comes back as a `Plan` with that status (and no schedule), and the caller decides what to
do (the daemon uses the fallback heuristic).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


class PlanStatus(StrEnum):
    """How a plan was obtained."""

    OPTIMAL = "optimal"
    TIME_LIMIT = "time limit"  # stopped at the deadline; no proven optimum
    INFEASIBLE = "infeasible"
    FAILED = "failed"  # the solver reported an error
    FALLBACK = "fallback"  # the least-laxity-first heuristic, not the optimiser

    @property
    def has_schedule(self) -> bool:
        """True if the plan carries a schedule that respects every limit."""
        return self in (PlanStatus.OPTIMAL, PlanStatus.FALLBACK)


@dataclass(frozen=True)
class Plan:
    """Net power (charge minus discharge, kW) for every vehicle in every slot."""

    status: PlanStatus
    boundaries: FloatArray
    power_kw: Mapping[str, FloatArray] = field(default_factory=dict)
    message: str = ""
    objective: float | None = None
    energy_cost: float = 0.0
    demand_cost: float = 0.0
    degradation_cost: float = 0.0
    unmet_kwh: Mapping[str, float] = field(default_factory=dict)
    solve_ms: float = 0.0
    iterations: int = 0
    warm: bool = False

    @property
    def start(self) -> float:
        """When the plan's first slot starts."""
        return float(self.boundaries[0])

    @property
    def end(self) -> float:
        """When the plan's last slot ends."""
        return float(self.boundaries[-1])

    def slot_at(self, when: float) -> int | None:
        """Index of the slot containing `when`, or None outside the plan."""
        edges = self._edges
        if when < edges[0] or when >= edges[-1]:
            return None
        return bisect.bisect_right(edges, when) - 1

    def power_at(self, vehicle_id: str, when: float) -> float:
        """Planned net power of a vehicle at `when` (0 if the plan does not cover it)."""
        slot = self.slot_at(when)
        series = self.power_kw.get(vehicle_id)
        if slot is None or series is None:
            return 0.0
        return float(series[slot])

    def energy_kwh(self, vehicle_id: str, slot: int) -> float:
        """Planned net energy of a vehicle in one slot."""
        series = self.power_kw.get(vehicle_id)
        if series is None:
            return 0.0
        return (
            float(series[slot]) * float(self.boundaries[slot + 1] - self.boundaries[slot]) / 3600.0
        )

    def energy_between(self, vehicle_id: str, start: float, end: float) -> float:
        """Planned net energy of a vehicle from `start` to `end` (kWh)."""
        if end <= start or vehicle_id not in self.power_kw:
            return 0.0
        return self._energy_until(vehicle_id, end) - self._energy_until(vehicle_id, start)

    @cached_property
    def _edges(self) -> list[float]:
        return [float(t) for t in self.boundaries]

    @cached_property
    def _cumulative(self) -> dict[str, tuple[list[float], list[float]]]:
        return {}

    def _energy_until(self, vehicle_id: str, when: float) -> float:
        """Planned net energy of a vehicle from the plan's start to `when` (kWh)."""
        found = self._cumulative.get(vehicle_id)
        if found is None:
            series = np.asarray(self.power_kw[vehicle_id], dtype=float)
            kwh = series * np.diff(self.boundaries) / 3600.0
            found = ([0.0, *np.cumsum(kwh).tolist()], series.tolist())
            self._cumulative[vehicle_id] = found
        totals, power = found
        edges = self._edges
        if when <= edges[0]:
            return 0.0
        if when >= edges[-1]:
            return totals[-1]
        slot = bisect.bisect_right(edges, when) - 1
        return totals[slot] + power[slot] * (when - edges[slot]) / 3600.0

    def site_kw(self, background_kw: FloatArray) -> FloatArray:
        """Planned site load per slot, given the background forecast it was made with."""
        total = np.asarray(background_kw, dtype=float).copy()
        for series in self.power_kw.values():
            total += series
        return total
