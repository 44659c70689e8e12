"""Splitting a power budget among connected vehicles, the ways today's controllers do it.

`fair_share` is the load management open controllers do (equal share under a site limit): every
vehicle gets the same power, except that none gets more than it can take and none gets less than
its pile's minimum. When the budget does not even cover every minimum, vehicles are admitted in
priority order (earliest arrival first) as long as their minimum still fits; one whose minimum does
not fit is paused at 0, and a later one with a smaller minimum may still be admitted.

`priority_fill` serves vehicles one after another, each as much as it takes: earliest deadline
first and least laxity first are priority fills with different orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Demand:
    """One vehicle's claim on the budget: at most `max_kw`, and either 0 or at least `min_kw`."""

    pile_id: str
    min_kw: float
    max_kw: float
    priority: float = 0.0

    def __post_init__(self) -> None:
        if not (self.min_kw >= 0 and self.max_kw >= 0):
            raise ValueError(f"{self.pile_id}: negative bounds {self.min_kw}, {self.max_kw}")


def fair_share(budget_kw: float, demands: Sequence[Demand]) -> dict[str, float]:
    """Split `budget_kw` among `demands`; the result never sums to more than the budget."""
    shares = {d.pile_id: 0.0 for d in demands}
    usable = [d for d in demands if d.max_kw > 0]
    if budget_kw <= 0 or not usable:
        return shares
    # A vehicle that cannot take its pile's minimum still charges at what it takes.
    floors = {d.pile_id: min(d.min_kw, d.max_kw) for d in usable}
    admitted: list[Demand] = []
    floor_total = 0.0
    for demand in sorted(usable, key=lambda d: (d.priority, d.pile_id)):
        if floor_total + floors[demand.pile_id] <= budget_kw + 1e-9:
            admitted.append(demand)
            floor_total += floors[demand.pile_id]
    if not admitted:
        return shares
    total_max = sum(d.max_kw for d in admitted)
    if total_max <= budget_kw:
        shares.update({d.pile_id: d.max_kw for d in admitted})
        return shares
    level = _water_level(budget_kw, [(floors[d.pile_id], d.max_kw) for d in admitted])
    for demand in admitted:
        shares[demand.pile_id] = max(floors[demand.pile_id], min(level, demand.max_kw))
    # Guard against rounding: never hand out more than the budget.
    excess = sum(shares.values()) - budget_kw
    if excess > 0:
        top = max(admitted, key=lambda d: shares[d.pile_id])
        shares[top.pile_id] = max(floors[top.pile_id], shares[top.pile_id] - excess)
    return shares


def _water_level(budget: float, bounds: Sequence[tuple[float, float]]) -> float:
    """The level L with sum(max(lo, min(L, hi))) == budget, for sum(lo) <= budget < sum(hi)."""

    def filled(level: float) -> float:
        return sum(max(lo, min(level, hi)) for lo, hi in bounds)

    # filled() is piecewise linear and non-decreasing; walk its breakpoints, then interpolate.
    points = sorted({0.0, *(lo for lo, _ in bounds), *(hi for _, hi in bounds)})
    previous = points[0]
    for point in points:
        if filled(point) >= budget:
            low_total, high_total = filled(previous), filled(point)
            if high_total == low_total:
                return point
            return previous + (budget - low_total) * (point - previous) / (high_total - low_total)
        previous = point
    return points[-1]


def priority_fill(budget_kw: float, demands: Sequence[Demand]) -> dict[str, float]:
    """Serve `demands` in priority order (lowest first), each up to its maximum.

    A vehicle whose minimum no longer fits is paused and the next one is tried.
    """
    shares = {d.pile_id: 0.0 for d in demands}
    left = max(budget_kw, 0.0)
    for demand in sorted(demands, key=lambda d: (d.priority, d.pile_id)):
        if demand.max_kw <= 0:
            continue
        grant = min(demand.max_kw, left)
        if grant + 1e-9 < min(demand.min_kw, demand.max_kw) or grant <= 0:
            continue
        shares[demand.pile_id] = grant
        left -= grant
    return shares


def laxity_h(now: float, departure: float, energy_kwh: float, max_kw: float) -> float:
    """Hours to spare: time left before departure minus the time charging at full power takes."""
    return (departure - now) / 3600.0 - energy_kwh / max(max_kw, 1e-9)
