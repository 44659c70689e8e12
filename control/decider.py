"""The decider: each cycle's targets and setpoints.

A policy gives each vehicle a target: the plan's energy for the current slot (mpc,
offline-optimal), or a baseline split of the headroom (equal-share, edf, llf); power a vehicle
does not take is offered to the others the plan has charging in this slot. The limiter
(`control.limiter`, where all budget arithmetic lives) then moves setpoints towards the targets
at the ramp limit and never lets them add up to more than the headroom.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from base.config import Station
from control.follow import FollowWatch
from control.limiter import (
    PileBounds,
    RiseBucket,
    cycle_budget_kw,
    limit_setpoints,
    plan_hold_kw,
)
from control.sessions import Session
from control.site import PileView, SiteSnapshot
from scheduler.allocation import Demand, fair_share, laxity_h, priority_fill
from scheduler.plan import FloatArray, Plan
from scheduler.problem import GroupLimit

# Control periods up to this long hold rises back until released power is really given up.
HOLD_RISES_UP_TO_S = 10.0


class Policy(StrEnum):
    """How targets are chosen."""

    MPC = "mpc"
    OFFLINE = "offline-optimal"
    EQUAL_SHARE = "equal-share"
    EDF = "edf"
    LLF = "llf"
    UNCONTROLLED = "uncontrolled"

    @property
    def plans(self) -> bool:
        """True for the policies that follow an optimised plan."""
        return self in (Policy.MPC, Policy.OFFLINE)


@dataclass(frozen=True)
class Decision:
    """One cycle's outcome."""

    budget_kw: float
    targets: Mapping[str, float]
    setpoints: Mapping[str, float]


@dataclass(frozen=True)
class Following:
    """The plan being followed: `serial` counts adoptions, `site_kw` is the site load per slot
    it accepted (None: not known)."""

    plan: Plan
    serial: int
    site_kw: FloatArray | None = None


def track(session: Session, following: Following, now: float) -> None:
    """Start measuring a session's progress against the plan followed, if not yet."""
    if session.plan_serial != following.serial:
        plan = following.plan
        slot = plan.slot_at(now)
        # From the start of the slot the vehicle is in: what the plan gives it in that slot
        # it must get there, even if it plugged in half-way through.
        session.plan_serial = following.serial
        session.plan_from = now if slot is None else float(plan.boundaries[slot])
        session.plan_baseline_kwh = session.delivered_kwh


def progress_gap(session: Session, following: Following | None, now: float) -> float:
    """Delivered minus planned energy since the plan was adopted (kWh)."""
    if following is None or session.plan_serial != following.serial:
        return 0.0
    planned = following.plan.energy_between(session.vehicle_id, session.plan_from, now)
    return (session.delivered_kwh - session.plan_baseline_kwh) - planned


class Decider:
    """Targets and setpoints for every pile, each cycle; remembers what was written."""

    def __init__(self, station: Station, follow: FollowWatch) -> None:
        self.station = station
        self.follow = follow
        self.setpoints: dict[str, float] = {p.id: 0.0 for p in station.piles}
        # Piles whose applied setpoint has been read: the limiter starts each from what it
        # applies (after a restart, what the last run told it), not from zero.
        self._seeded: set[str] = set()
        self.rises = RiseBucket()
        self._group_budgets = _group_budgets(station)
        # Each pile's bounds, and the view they were made from (a pile at rest keeps its view).
        self._bounds: dict[str, tuple[PileView, PileBounds]] = {}

    def seed(self, view: PileView) -> None:
        """Start a pile's setpoint from what it applies, the first time it is read."""
        if view.id not in self._seeded and view.reading is not None and view.current:
            self._seeded.add(view.id)
            self.setpoints[view.id] = PileBounds(
                view.min_kw, view.max_kw, view.max_discharge_kw
            ).clamp(view.reading.applied_setpoint_kw)

    def reconfigure(self, station: Station, kept: set[str]) -> None:
        """Follow a reloaded config: piles not kept start over."""
        for pid in [pid for pid in self.setpoints if pid not in kept]:
            del self.setpoints[pid]
        for pile in station.piles:
            self.setpoints.setdefault(pile.id, 0.0)
        self.station = station
        self._group_budgets = _group_budgets(station)

    def decide(
        self,
        snapshot: SiteSnapshot,
        dt: float,
        *,
        policy: Policy,
        sessions: Mapping[str, Session],
        following: Following | None,
        month_peak_kw: float,
        worst_background_kw: float | None,
    ) -> Decision:
        """Setpoints for every pile this cycle."""
        station = self.station
        control = station.control
        now = snapshot.time
        controlled, blind = snapshot.read, snapshot.blind
        if policy is Policy.UNCONTROLLED:
            # The baseline the others are measured against: every vehicle at full power.
            full = {v.id: (v.max_kw if v.vehicle_present else 0.0) for v in controlled}
            full.update({v.id: self.setpoints.get(v.id, 0.0) for v in blind})
            return Decision(math.inf, full, full)
        budget = cycle_budget_kw(
            snapshot,
            self.setpoints,
            sum(self.follow.excess_kw(v.id) for v in controlled),
            worst_background_kw,
            control,
            dt,
        )
        plan_budget = budget
        slot = None if following is None else following.plan.slot_at(now)
        # Holding the site to the load the plan accepted only pays where a new peak costs: with
        # a demand charge. Without one it would only strand headroom a vehicle could use.
        if (
            policy.plans
            and station.tariff.demand_charge_per_kw_month > 0
            and following is not None
            and following.site_kw is not None
            and slot is not None
            and snapshot.grid_kw is not None
        ):
            accepted = max(month_peak_kw, float(following.site_kw[slot]))
            plan_budget = plan_hold_kw(budget, snapshot, accepted, control.reserve_kw)
        targets = self._targets(snapshot, controlled, plan_budget, dt, policy, sessions, following)
        for view in controlled:
            cap = self.follow.cap_kw(view)
            if cap is not None:
                targets[view.id] = min(targets.get(view.id, 0.0), cap)
            if not (snapshot.meter_current and view.current):
                # Data from an earlier cycle may hold or lower power, never raise it.
                targets[view.id] = min(targets.get(view.id, 0.0), self.setpoints.get(view.id, 0.0))
        bounds = {v.id: self._bounds_of(v) for v in controlled}
        rate = station.scheduler.ramp_kw_per_min
        setpoints = limit_setpoints(
            targets,
            self.setpoints,
            bounds,
            budget,
            control.ramp_kw_per_s * dt,
            self.rises.allowance(rate, dt),
            groups=self._group_budgets,
            drawing={v.id: v.reading.power_kw for v in controlled if v.reading is not None},
            # A loop of seconds sees piles still coming down from the last cycle; a fast
            # simulation's minute-long step has them down within the step, where holding rises
            # back a whole step would only waste power.
            hold_rises=dt <= HOLD_RISES_UP_TO_S,
        )
        self.rises.spend(
            rate,
            sum(setpoints.values()) - sum(self.setpoints.get(pid, 0.0) for pid in setpoints),
        )
        for view in blind:
            # Repeat the last setpoint (it keeps the fail-safe armed if the write gets through),
            # but never more than the pile would fall back to anyway.
            setpoints[view.id] = min(
                self.setpoints.get(view.id, 0.0), max(view.config.fallback_kw, 0.0)
            )
        return Decision(budget, targets, setpoints)

    def _bounds_of(self, view: PileView) -> PileBounds:
        """What the pile may be told, made again only when its view is a new one."""
        kept = self._bounds.get(view.id)
        if kept is not None and kept[0] is view:
            return kept[1]
        bounds = PileBounds(view.min_kw, view.max_kw, view.max_discharge_kw)
        self._bounds[view.id] = (view, bounds)
        return bounds

    def committed(self, written: Mapping[str, float], now: float) -> None:
        """The setpoints that were actually written at `now` (a decision's `time`)."""
        self.setpoints.update(written)
        for pid, kw in written.items():
            self.follow.told(pid, now, kw)

    def _targets(
        self,
        snapshot: SiteSnapshot,
        controlled: Sequence[PileView],
        budget: float,
        dt: float,
        policy: Policy,
        sessions: Mapping[str, Session],
        following: Following | None,
    ) -> dict[str, float]:
        now = snapshot.time
        charging = [v for v in controlled if v.wants_kw > 0 and v.id in sessions]
        targets = {v.id: 0.0 for v in controlled}

        def most(view: PileView) -> float:
            # Never more than it can take until the next decision: what it takes, and what it
            # still needs over the cycle (offering more would only strand headroom).
            return min(view.wants_kw, sessions[view.id].remaining_kwh * 3600.0 / dt)

        if policy is Policy.EQUAL_SHARE:
            demands = [Demand(v.id, v.min_kw, most(v), sessions[v.id].plugged_at) for v in charging]
            targets.update(fair_share(budget, demands))
        elif policy is Policy.EDF:
            demands = [Demand(v.id, v.min_kw, most(v), sessions[v.id].departure) for v in charging]
            targets.update(priority_fill(budget, demands))
        elif policy is Policy.LLF or following is None:
            demands = [
                Demand(v.id, v.min_kw, most(v), _laxity(sessions[v.id], v, now)) for v in charging
            ]
            targets.update(priority_fill(budget, demands))
        else:
            targets.update(self._follow_plan(snapshot, controlled, budget, sessions, following))
        return targets

    def _follow_plan(
        self,
        snapshot: SiteSnapshot,
        controlled: Sequence[PileView],
        budget: float,
        sessions: Mapping[str, Session],
        following: Following,
    ) -> dict[str, float]:
        plan = following.plan
        now = snapshot.time
        slot = plan.slot_at(now)
        slot_edge = 0.0 if slot is None else float(plan.boundaries[slot + 1])
        wanted: dict[str, float] = {}
        # The most each vehicle can use: what it takes, and what it still needs by the slot's end.
        most: dict[str, float] = {}
        for view in controlled:
            session = sessions.get(view.id)
            if session is None or slot is None:
                continue
            track(session, following, now)
            # Catch up on (or hold back from) the plan's energy up to the end of this slot, so
            # a shortfall earlier in the plan is made good as soon as the vehicle allows.
            slot_end = min(slot_edge, session.departure)
            left_h = max((slot_end - now) / 3600, 1e-6)
            planned = plan.energy_between(session.vehicle_id, session.plan_from, slot_end)
            still = planned - (session.delivered_kwh - session.plan_baseline_kwh)
            power = still / left_h
            if plan.unmet_kwh.get(session.vehicle_id, 0.0) > 0.5:
                # The plan cannot give this vehicle all it needs: every kWh counts, so it takes
                # what it can (the limiter still keeps the site safe). On the development days
                # this delivers a little more than following the plan (README, Real sessions).
                power = view.wants_kw
            most[view.id] = min(view.wants_kw, session.remaining_kwh / left_h)
            power = min(power, most[view.id]) if power > 0 else max(power, -view.max_discharge_kw)
            wanted[view.id] = power
        # Power a vehicle does not take goes to the others the plan charges in this slot.
        spare = 0.0
        for view in controlled:
            session = sessions.get(view.id)
            if session is None or slot is None:
                continue
            # `plan.power_at(now)`, in the slot found above.
            series = plan.power_kw.get(session.vehicle_id)
            planned = 0.0 if series is None else float(series[slot])
            if planned > 0 and wanted.get(view.id, 0.0) < planned:
                spare += planned - max(wanted.get(view.id, 0.0), 0.0)
        if spare > 1e-6:
            room = [
                Demand(v.id, 0.0, most[v.id] - wanted[v.id])
                for v in controlled
                if wanted.get(v.id, 0.0) > 0 and most[v.id] > wanted[v.id]
            ]
            for pid, extra in fair_share(spare, room).items():
                wanted[pid] += extra
        total = sum(kw for kw in wanted.values() if kw > 0)
        if total > budget:
            # Less headroom than the plan assumed: the vehicles with the least time to spare
            # keep their power, the others wait for the next plan.
            views = {v.id: v for v in controlled}
            cut = priority_fill(
                budget + sum(-kw for kw in wanted.values() if kw < 0),
                [
                    Demand(pid, 0.0, kw, _laxity(sessions[pid], views[pid], now))
                    for pid, kw in wanted.items()
                    if kw > 0
                ],
            )
            wanted.update(cut)
        return wanted


def _laxity(session: Session, view: PileView, now: float) -> float:
    return laxity_h(now, session.departure, session.remaining_kwh, max(view.wants_kw, 1e-3))


def _group_budgets(station: Station) -> list[tuple[dict[str, float], float]]:
    return [(dict(g.members), g.limit_kw) for g in group_limits(station)]


def group_limits(station: Station) -> tuple[GroupLimit, ...]:
    """A station's group and phase limits as the scheduler takes them."""
    groups = [GroupLimit(g.name, dict.fromkeys(g.piles, 1.0), g.limit_kw) for g in station.groups]
    phases = station.phase_limits
    if phases is not None:
        three = [p.id for p in station.piles if p.phases == 3]
        for name, amps in (("L1", phases.l1_a), ("L2", phases.l2_a), ("L3", phases.l3_a)):
            single = [p.id for p in station.piles if p.phases == 1 and p.phase == name]
            groups.append(GroupLimit.phase(name, amps, phases.voltage_v, single, three))
    return tuple(groups)
