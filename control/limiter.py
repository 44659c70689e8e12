"""The fast limiter: from wanted powers to setpoints that are smooth and never overload the site.

Pure. All the budget arithmetic lives here: `budget_kw` says how much the controllable piles may
draw together, from the measured grid load, and `cycle_budget_kw` feeds it from a snapshot;
`plan_hold_kw` holds the site to what a plan accepted; `RiseBucket` limits how fast the total
rises; `limit_setpoints` moves each pile's setpoint towards its target at the ramp
limit, except that when the budget demands a faster cut, safety wins over smoothness.
Setpoints are signed: negative discharges a vehicle (bidirectional piles only).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from base.stationsettings import ControlSettings
from control.site import SiteSnapshot


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
    if target > before:
        moved = min(target, before + step)
    elif target < before:
        moved = max(target, before - step)
    else:
        return target
    floor = bounds.floor
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
        given_up = 0.0
        for pid, kw in new.items():
            before = previous.get(pid, 0.0)
            if drawing is not None:
                before = min(before, max(drawing.get(pid, before), 0.0))
            given_up += max(0.0, before - kw)
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


def cycle_budget_kw(
    snapshot: SiteSnapshot,
    setpoints: Mapping[str, float],
    follow_excess_kw: float,
    worst_background_kw: float | None,
    settings: ControlSettings,
    dt: float,
) -> float:
    """What the piles may draw together this cycle, from the snapshot (`budget_kw` at heart).

    Load the controller does not control counts against it: the background at its recent worst
    (plus the margin), what piles that do not follow draw beyond their setpoints
    (`follow_excess_kw`), and for a pile it cannot read, what it may draw on its own beyond what
    it last drew. Blind (no meter reading), the budget comes down to the worst case at the ramp
    limit rather than all at once.
    """
    controlled, blind = snapshot.read, snapshot.blind
    worst = (
        worst_background_kw + settings.background_margin_kw
        if worst_background_kw is not None
        else snapshot.limit_kw
    )
    extra = follow_excess_kw
    for view in blind:
        assumed = max(setpoints.get(view.id, 0.0), view.on_its_own_kw)
        if snapshot.grid_kw is not None and view.last is not None:
            extra += max(0.0, assumed - view.last.power_kw)
        else:
            extra += assumed
    budget = budget_kw(
        limit_kw=snapshot.limit_kw,
        reserve_kw=settings.reserve_kw,
        grid_kw=snapshot.grid_kw,
        controlled_kw=controlled_kw(snapshot),
        worst_uncontrolled_kw=worst,
        unreachable_extra_kw=extra,
    )
    if snapshot.grid_kw is None:
        step = settings.ramp_kw_per_s * dt
        gentle = sum(max(setpoints.get(v.id, 0.0) - step, 0.0) for v in controlled)
        budget = max(budget, gentle)
    return budget


def controlled_kw(snapshot: SiteSnapshot) -> float:
    """What the piles the controller reads drew at the snapshot."""
    return snapshot.piles_kw


def plan_hold_kw(
    budget: float, snapshot: SiteSnapshot, accepted_kw: float, reserve_kw: float
) -> float:
    """The budget held to the site load a plan accepted (`accepted_kw`, or the month's peak if
    higher) plus a reserve's worth to catch up on what its slots and forecasts got wrong.

    Only worth it where a new peak costs (a demand charge); needs a measured grid load.
    """
    assert snapshot.grid_kw is not None
    rest = snapshot.grid_kw - controlled_kw(snapshot)
    return min(budget, accepted_kw + reserve_kw - rest)


class RiseBucket:
    """How fast the piles' total may rise: a token bucket of `rate` kW a minute, with up to half a
    minute's (or one cycle's) worth saved up."""

    def __init__(self) -> None:
        self.tokens = 0.0

    def allowance(self, rate_kw_per_min: float | None, dt: float) -> float | None:
        """What the total may rise by this cycle (None: no limit)."""
        if rate_kw_per_min is None:
            return None
        rate = rate_kw_per_min
        self.tokens = min(self.tokens + rate * dt / 60, rate * max(dt, 30.0) / 60)
        return self.tokens

    def spend(self, rate_kw_per_min: float | None, rose_kw: float) -> None:
        """The total rose by `rose_kw` this cycle."""
        if rate_kw_per_min is not None:
            self.tokens = max(0.0, self.tokens - max(rose_kw, 0.0))
