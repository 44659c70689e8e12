"""The fast limiter: from wanted powers to setpoints that are smooth and never overload the site.

Pure functions. `budget_kw` says how much the controllable piles may draw together, from the
measured grid load; `limit_setpoints` moves each pile's setpoint towards its target at the ramp
limit, except that when the budget demands a faster cut, safety wins over smoothness.
Setpoints are signed: negative discharges a vehicle (bidirectional piles only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PileBounds:
    """What one pile may be told: 0, or a magnitude between `min_kw` and its rating either way."""

    min_kw: float
    max_kw: float
    max_discharge_kw: float = 0.0

    @property
    def floor(self) -> float:
        """The smallest non-zero magnitude."""
        return min(self.min_kw, self.max_kw)

    def clamp(self, kw: float) -> float:
        """The nearest allowed setpoint between 0 and `kw` (0 when `kw` is under the minimum)."""
        if kw > 0:
            kw = min(kw, self.max_kw)
        elif kw < 0:
            kw = max(kw, -self.max_discharge_kw)
        if kw == 0 or abs(kw) < min(self.min_kw, max(self.max_kw, self.max_discharge_kw)):
            return 0.0
        return kw

    def allows(self, kw: float) -> bool:
        """True if `kw` is a setpoint this pile may be given."""
        return kw == 0 or (
            math.isfinite(kw)
            and -self.max_discharge_kw - 1e-6 <= kw <= self.max_kw + 1e-6
            and abs(kw) >= self.floor - 1e-6
        )


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


def _step_towards(before: float, target: float, step: float, bounds: PileBounds) -> float:
    """One ramp step from `before` towards `target`, never stopping in the dead zone around 0."""
    floor = bounds.floor
    if target > before:
        moved = min(target, before + step)
    elif target < before:
        moved = max(target, before - step)
    else:
        return target
    if moved == 0 or abs(moved) >= floor:
        return moved
    # Inside (-floor, floor): leaving zero jumps to the floor, heading to zero stops at zero.
    heading_away = abs(target) > abs(before) and (before == 0 or (before > 0) == (target > 0))
    if heading_away and target != 0:
        return math.copysign(floor, target)
    return 0.0


def _break_before_make(
    new: dict[str, float],
    previous: Mapping[str, float],
    bounds: Mapping[str, PileBounds],
    budget: float,
    drawing: Mapping[str, float],
) -> None:
    """Hold back rises until the power they take over has really been given up.

    A pile told to come down keeps drawing for its delay and ramp; raising another pile into
    that power at once would put the site over its limit meanwhile. Piles coming down count at
    what they draw now until they get there.
    """
    rising = [pid for pid in new if new[pid] > previous.get(pid, 0.0) + 1e-9]
    if not rising:
        return
    held = 0.0
    for pid, kw in new.items():
        if pid in rising:
            continue
        held += max(kw, drawing.get(pid, kw))
    room = max(budget, 0.0) - held - sum(previous.get(pid, 0.0) for pid in rising)
    wanted = sum(new[pid] - previous.get(pid, 0.0) for pid in rising)
    if wanted <= room + 1e-9:
        return
    # Lowest first, as for the ramp: a pile starting from 0 needs at least its minimum.
    left = max(room, 0.0)
    for pid in sorted(rising, key=lambda p: (previous.get(p, 0.0), p)):
        before = previous.get(pid, 0.0)
        slowed = before + min(new[pid] - before, left)
        if not bounds[pid].allows(slowed):
            slowed = before if bounds[pid].allows(before) else 0.0
        new[pid] = slowed
        left -= max(slowed - before, 0.0)


def limit_setpoints(
    targets: Mapping[str, float],
    previous: Mapping[str, float],
    bounds: Mapping[str, PileBounds],
    budget: float,
    max_step_kw: float,
    max_total_rise_kw: float | None = None,
    groups: Sequence[tuple[Mapping[str, float], float]] = (),
    drawing: Mapping[str, float] | None = None,
    hold_rises: bool = True,
) -> dict[str, float]:
    """Setpoints for this cycle.

    Each setpoint moves from `previous` towards its target by at most `max_step_kw`, and their
    total rises by at most `max_total_rise_kw` (the site's ramp limit); if the sum
    would exceed `budget`, the piles still above their targets are cut faster, in proportion to
    how far above they are. `drawing`, what each pile draws now, keeps power a vehicle stopped
    taking from counting as handed over, and (with `hold_rises`) holds rises back until piles
    told to come down have come down. `groups` are (members with their share, limit kW) pairs, a feeder or
    a phase: a group over its limit has its charging members cut in proportion. The result is
    always within each pile's bounds and every group's limit and, whenever the targets fit the
    budget, sums to no more than it.
    """
    clamped = {pid: bounds[pid].clamp(targets.get(pid, 0.0)) for pid in bounds}
    new: dict[str, float] = {}
    for pid, target in clamped.items():
        moved = _step_towards(previous.get(pid, 0.0), target, max_step_kw, bounds[pid])
        # A pile whose rating dropped (it reports a lower maximum) is capped at once.
        new[pid] = bounds[pid].clamp(moved) if moved != 0 else 0.0
    if max_total_rise_kw is not None:
        rises = {
            pid: new[pid] - previous.get(pid, 0.0)
            for pid in new
            if new[pid] > previous.get(pid, 0.0)
        }

        # The ramp limit is on the site's total: power handed from one pile to another in the
        # same cycle does not raise it, so what others give up may be taken up; but only what
        # they were really drawing (`drawing`), not a setpoint a departed vehicle left behind.
        def released(pid: str, kw: float) -> float:
            before = previous.get(pid, 0.0)
            if drawing is not None:
                before = min(before, max(drawing.get(pid, before), 0.0))
            return max(0.0, before - kw)

        given_up = sum(released(pid, kw) for pid, kw in new.items())
        allowed = max(max_total_rise_kw, 0.0) + given_up
        if sum(rises.values()) > allowed:
            # Share the allowed rise pile by pile, lowest setpoints first, so a pile starting
            # from 0 gets at least its minimum (splitting it evenly could leave every pile below
            # its minimum, and so none could start).
            left = allowed
            for pid in sorted(rises, key=lambda p: (previous.get(p, 0.0), p)):
                before = previous.get(pid, 0.0)
                slowed = before + min(rises[pid], left)
                if not bounds[pid].allows(slowed):
                    slowed = before
                new[pid] = slowed
                left -= slowed - before
    excess = sum(new.values()) - max(budget, 0.0)
    if excess > 1e-9:
        above = {pid: new[pid] - clamped[pid] for pid in new if new[pid] > clamped[pid]}
        total_above = sum(above.values())
        if total_above > 0:
            share = min(1.0, excess / total_above)
            for pid, gap in above.items():
                # Never below the target, which is within bounds, so clamp keeps it valid.
                new[pid] = bounds[pid].clamp(new[pid] - gap * share)
        excess = sum(new.values()) - max(budget, 0.0)
        if excess > 1e-9:
            # The targets themselves do not fit (the budget collapsed this cycle): cut every
            # charging pile in proportion, pausing those that fall under their minimum.
            charging = sum(kw for kw in new.values() if kw > 0)
            allowed = charging - excess
            factor = max(allowed, 0.0) / charging if charging > 0 else 0.0
            new = {pid: bounds[pid].clamp(kw * factor) if kw > 0 else kw for pid, kw in new.items()}
    if drawing is not None and hold_rises:
        _break_before_make(new, previous, bounds, budget, drawing)
    # Cuts only lower setpoints, so a few passes settle overlapping groups (phases and feeders).
    for _ in range(4):
        settled = True
        for members, limit_kw in groups:
            load = sum(share * new.get(pid, 0.0) for pid, share in members.items())
            if load <= limit_kw + 1e-9:
                continue
            settled = False
            charging = sum(
                share * new[pid] for pid, share in members.items() if new.get(pid, 0.0) > 0
            )
            factor = max(charging - (load - limit_kw), 0.0) / charging if charging > 0 else 0.0
            for pid in members:
                if new.get(pid, 0.0) > 0:
                    new[pid] = bounds[pid].clamp(new[pid] * factor * (1 - 1e-12))
        if settled:
            break
    return new
