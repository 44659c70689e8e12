"""The fast limiter: from wanted powers to setpoints that are smooth and never overload the site.

Pure functions. `budget_kw` says how much the controllable piles may draw together, from the
measured grid load; `limit_setpoints` moves each pile's setpoint towards its target at the ramp
limit, except that when the budget demands a faster cut, safety wins over smoothness.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PileBounds:
    """What one pile may be told: 0, or between `min_kw` and `max_kw`."""

    min_kw: float
    max_kw: float

    def clamp(self, kw: float) -> float:
        """The nearest allowed setpoint at or below `kw` (0 when `kw` is under the minimum)."""
        if kw <= 0 or self.max_kw <= 0:
            return 0.0
        kw = min(kw, self.max_kw)
        return kw if kw >= min(self.min_kw, self.max_kw) else 0.0


def budget_kw(
    *,
    limit_kw: float,
    reserve_kw: float,
    grid_kw: float | None,
    controlled_kw: float,
    worst_uncontrolled_kw: float,
    unreachable_extra_kw: float = 0.0,
) -> float:
    """Power the controlled piles may draw together.

    `grid_kw` is the measured site load (None if the meter is stale or lost); `controlled_kw`
    what the controlled piles drew at the same moment, so the rest of the site draws
    `grid_kw - controlled_kw`. Without a fresh meter reading the site's other load is taken to be
    `worst_uncontrolled_kw`. `unreachable_extra_kw` is what piles we cannot talk to may add on
    their own (up to their fallback power).
    """
    uncontrolled = worst_uncontrolled_kw if grid_kw is None else grid_kw - controlled_kw
    return limit_kw - reserve_kw - uncontrolled - unreachable_extra_kw


def limit_setpoints(
    targets: Mapping[str, float],
    previous: Mapping[str, float],
    bounds: Mapping[str, PileBounds],
    budget: float,
    max_step_kw: float,
) -> dict[str, float]:
    """Setpoints for this cycle.

    Each setpoint moves from `previous` towards its target by at most `max_step_kw`; if the sum
    would exceed `budget`, the piles still ramping down are cut faster, in proportion to how far
    they are above their targets. The result is always within each pile's bounds and, whenever
    the targets fit the budget, sums to no more than it.
    """
    clamped = {pid: bounds[pid].clamp(targets.get(pid, 0.0)) for pid in bounds}
    new: dict[str, float] = {}
    for pid, target in clamped.items():
        before = previous.get(pid, 0.0)
        floor = min(bounds[pid].min_kw, bounds[pid].max_kw)
        if target > before:
            step = min(target, before + max_step_kw)
            new[pid] = max(step, floor) if step > 0 else 0.0
        elif target < before:
            step = max(target, before - max_step_kw)
            new[pid] = step if step >= floor or step <= 0 else (target if target == 0 else floor)
        else:
            new[pid] = target
        # A pile whose rating dropped (reported by the pile) is capped at once, not ramped down.
        new[pid] = min(new[pid], bounds[pid].max_kw) if new[pid] > 0 else 0.0
    excess = sum(new.values()) - max(budget, 0.0)
    if excess > 1e-9:
        above = {pid: new[pid] - clamped[pid] for pid in new if new[pid] > clamped[pid]}
        total_above = sum(above.values())
        if total_above > 0:
            share = min(1.0, excess / total_above)
            for pid, gap in above.items():
                # Never below the target, which is 0 or within bounds, so clamp keeps it valid.
                new[pid] = bounds[pid].clamp(new[pid] - gap * share)
        excess = sum(new.values()) - max(budget, 0.0)
        if excess > 1e-9:
            # The targets themselves do not fit (the budget collapsed this cycle): cut everyone
            # in proportion, pausing those that fall under their minimum.
            total = sum(new.values())
            factor = max(budget, 0.0) / total if total > 0 else 0.0
            new = {pid: bounds[pid].clamp(kw * factor) for pid, kw in new.items()}
    return new
