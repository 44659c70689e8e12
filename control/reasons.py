"""Why each pile draws what it draws: one reason per pile, read from a cycle's decision.

Pure. `pile_reasons` looks at what a cycle saw and decided (the snapshot, the targets, the
setpoints and the budget) with the plan and the sessions, and says for each pile which of the
controller's rules set its power: a fault, a pile it cannot read, no vehicle, a full vehicle, a
plan waiting for a cheaper period, the site limit, the ramp, the fallback without a plan, a
discharge for price, or the plan itself. The operator's page shows it next to the pile.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from control.decider import Policy
from control.sessions import Session
from control.site import PileView
from control.step import Cycle
from scheduler.plan import Plan, PlanStatus

# Powers closer than this are the same power (kW).
SAME_KW = 0.5
# A vehicle with less than this left to deliver has what it needs (kWh).
MET_KWH = 0.05


class ReasonKind(StrEnum):
    """Which rule set a pile's power."""

    FAULT = "fault"
    LOST = "lost"
    NO_VEHICLE = "no vehicle"
    FULL = "full"
    DISCHARGING = "discharging"
    STALE = "stale data"
    LIMITED = "limited"
    RAMPING = "ramping"
    WAITING = "waiting"
    FALLBACK = "fallback"
    CHARGING = "charging"
    STARTING = "starting"


@dataclass(frozen=True)
class PileReason:
    """Why a pile draws what it draws: the rule (`kind`), a sentence for the operator, and the
    time it ends (`until`, epoch seconds) where one is known: the start of the cheaper slot a
    waiting vehicle is planned to charge in."""

    kind: ReasonKind
    text: str
    until: float | None = None


def pile_reasons(
    cycle: Cycle | None,
    *,
    policy: Policy,
    plan: Plan | None,
    sessions: Mapping[str, Session],
    faults: Mapping[str, str],
    pile_ids: tuple[str, ...],
) -> dict[str, PileReason]:
    """The reason for every pile in `pile_ids`, from the last `cycle` (None: none ran yet)."""
    if cycle is None:
        starting = PileReason(ReasonKind.STARTING, "no control cycle yet")
        return dict.fromkeys(pile_ids, starting)
    views = {v.id: v for v in cycle.snapshot.piles}
    charging_kw = sum(kw for kw in cycle.setpoints.values() if kw > 0)
    budget_full = charging_kw >= cycle.budget_kw - SAME_KW
    reasons = {}
    for pid in pile_ids:
        reasons[pid] = _reason(
            views.get(pid),
            cycle,
            policy=policy,
            plan=plan,
            session=sessions.get(pid),
            fault=faults.get(pid, ""),
            budget_full=budget_full,
        )
    return reasons


def _reason(
    view: PileView | None,
    cycle: Cycle,
    *,
    policy: Policy,
    plan: Plan | None,
    session: Session | None,
    fault: str,
    budget_full: bool,
) -> PileReason:
    if fault:
        return PileReason(ReasonKind.FAULT, f"fault: {fault}; held at 0 kW")
    if view is None or view.reading is None:
        return PileReason(
            ReasonKind.LOST,
            "not read: the controller cannot see it; it is told at most its fallback power",
        )
    if not view.vehicle_present:
        return PileReason(ReasonKind.NO_VEHICLE, "no vehicle connected")
    pid = view.id
    setpoint = cycle.setpoints.get(pid, 0.0)
    target = cycle.targets.get(pid, 0.0)
    if setpoint < -SAME_KW:
        return PileReason(
            ReasonKind.DISCHARGING,
            f"discharging: the plan sells energy back or shaves the site load at the "
            f"{cycle.snapshot.band} price",
        )
    if view.wants_kw <= 0 or (session is not None and session.remaining_kwh <= MET_KWH):
        return PileReason(ReasonKind.FULL, "full: the vehicle has the energy it needs")
    if not (cycle.snapshot.meter_current and view.current) and target <= setpoint + SAME_KW:
        return PileReason(
            ReasonKind.STALE,
            "held: this cycle's readings failed, and older data may only hold or lower power",
        )
    planned = None
    if session is not None and plan is not None and plan.slot_at(cycle.time) is not None:
        planned = plan.power_at(session.vehicle_id, cycle.time)
    # What the vehicle would get without the site's limit: its plan (or all it takes).
    wanted = view.wants_kw if planned is None else min(planned, view.wants_kw)
    if max(target, wanted) > setpoint + SAME_KW and budget_full:
        return PileReason(
            ReasonKind.LIMITED,
            f"held by the site limit: the piles may draw {max(cycle.budget_kw, 0.0):,.0f} kW "
            "together now",
        )
    if target > setpoint + SAME_KW:
        return PileReason(ReasonKind.RAMPING, f"ramping up towards {target:,.0f} kW")
    if policy.plans and plan is None:
        return PileReason(
            ReasonKind.FALLBACK,
            "fallback: no plan yet, the headroom goes to the vehicles with the least time to spare",
        )
    if session is not None and plan is not None and setpoint <= SAME_KW and policy.plans:
        later = _next_planned(plan, session.vehicle_id, cycle.time)
        if later is not None:
            return PileReason(
                ReasonKind.WAITING,
                "waiting: the plan charges it in a cheaper period later",
                until=later,
            )
    if plan is not None and plan.status is PlanStatus.FALLBACK and policy.plans:
        return PileReason(
            ReasonKind.FALLBACK,
            "fallback plan: the optimiser gave no plan, the heuristic's is followed",
        )
    if setpoint <= SAME_KW:
        return PileReason(ReasonKind.CHARGING, f"paused: the {policy} policy gives it nothing now")
    if policy.plans:
        return PileReason(ReasonKind.CHARGING, "charging as planned")
    return PileReason(ReasonKind.CHARGING, f"charging: its {policy} share")


def _next_planned(plan: Plan, vehicle_id: str, now: float) -> float | None:
    """When the plan next gives the vehicle power after the slot at `now` (None: never)."""
    series = plan.power_kw.get(vehicle_id)
    slot = plan.slot_at(now)
    if series is None or slot is None:
        return None
    for index in range(slot + 1, len(series)):
        if float(series[index]) > SAME_KW:
            return float(plan.boundaries[index])
    return None
