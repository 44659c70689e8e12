"""Unit tests for control.reasons: the rule that set each pile's power, from a cycle's decision."""

from __future__ import annotations

import numpy as np

from base.config import Station
from base.devicemap import PileState
from control.decider import Policy
from control.reasons import PileReason, ReasonKind, pile_reasons
from control.sessions import Session
from control.site import PileView, SiteSnapshot
from control.step import Cycle
from drivers.pile import PileReading
from scheduler.plan import Plan, PlanStatus

NOW = 1_800_000_000.0


def _reading(state: PileState = PileState.CHARGING, kw: float = 0.0, **more: float) -> PileReading:
    return PileReading(
        state=state,
        power_kw=kw,
        applied_setpoint_kw=kw,
        max_charge_kw=480.0,
        max_discharge_kw=480.0,
        min_kw=10.0,
        energy_import_kwh=100.0,
        energy_export_kwh=0.0,
        session_energy_kwh=10.0,
        session_id=1,
        soc_pct=40.0,
        **more,  # type: ignore[arg-type]
    )


def _session(pile: str, remaining: float = 200.0) -> Session:
    return Session(
        vehicle_id=f"truck-{pile}",
        pile=pile,
        session_id=1,
        plugged_at=NOW - 600,
        need_kwh=remaining + 10.0,
        departure=NOW + 6 * 3600,
        departure_known=True,
        max_kw=480.0,
        delivered_kwh=10.0,
    )


def _plan(kw_by_slot: dict[str, list[float]], status: PlanStatus = PlanStatus.OPTIMAL) -> Plan:
    """A plan of hour-long slots from now."""
    slots = len(next(iter(kw_by_slot.values())))
    return Plan(
        status,
        NOW + 3600.0 * np.arange(slots + 1),
        {vid: np.asarray(kw, dtype=float) for vid, kw in kw_by_slot.items()},
    )


def _why(
    reference: Station,
    readings: dict[str, PileReading | None],
    *,
    setpoints: dict[str, float],
    targets: dict[str, float] | None = None,
    budget: float = 4000.0,
    plan: Plan | None = None,
    policy: Policy = Policy.MPC,
    sessions: dict[str, Session] | None = None,
    faults: dict[str, str] | None = None,
    current: bool = True,
) -> dict[str, PileReason]:
    configs = {p.id: p for p in reference.piles}
    views = tuple(
        PileView(configs[pid], reading, reading, current=current)
        for pid, reading in readings.items()
    )
    snapshot = SiteSnapshot(NOW, 4275.0, 2000.0, None, views, "valley", 0.3)
    cycle = Cycle(NOW, snapshot, budget, targets or dict(setpoints), setpoints, {})
    if sessions is None:
        sessions = {
            pid: _session(pid)
            for pid, r in readings.items()
            if r is not None and r.state.vehicle_present
        }
    return pile_reasons(
        cycle,
        policy=policy,
        plan=plan,
        sessions=sessions,
        faults=faults or {},
        pile_ids=tuple(readings),
    )


def test_no_cycle_yet_is_said_for_every_pile(reference: Station) -> None:
    reasons = pile_reasons(
        None, policy=Policy.MPC, plan=None, sessions={}, faults={}, pile_ids=("P01", "P02")
    )
    assert {r.kind for r in reasons.values()} == {ReasonKind.STARTING}
    assert set(reasons) == {"P01", "P02"}


def test_fault_lost_and_empty_piles(reference: Station) -> None:
    """A fault comes first; a pile without a reading is lost; a free pile has no vehicle."""
    why = _why(
        reference,
        {"P01": _reading(), "P02": None, "P03": _reading(PileState.AVAILABLE)},
        setpoints={"P01": 0.0, "P02": 0.0, "P03": 0.0},
        faults={"P01": "does not follow its setpoint"},
    )
    assert why["P01"].kind is ReasonKind.FAULT
    assert "does not follow its setpoint" in why["P01"].text
    assert why["P02"].kind is ReasonKind.LOST
    assert why["P03"].kind is ReasonKind.NO_VEHICLE


def test_a_full_vehicle_and_one_whose_energy_is_met(reference: Station) -> None:
    why = _why(
        reference,
        {"P01": _reading(PileState.FINISHED, ev_max_kw=0.0), "P02": _reading()},
        setpoints={"P01": 0.0, "P02": 0.0},
        sessions={"P01": _session("P01"), "P02": _session("P02", remaining=0.0)},
        plan=_plan({"truck-P01": [0.0, 0.0], "truck-P02": [0.0, 0.0]}),
    )
    assert why["P01"].kind is ReasonKind.FULL
    assert why["P02"].kind is ReasonKind.FULL


def test_a_vehicle_the_plan_charges_later_waits_for_that_slot(reference: Station) -> None:
    """Nothing now, 300 kW from the third hour: waiting, until that slot's start."""
    plan = _plan({"truck-P01": [0.0, 0.0, 300.0, 300.0]})
    why = _why(reference, {"P01": _reading()}, setpoints={"P01": 0.0}, plan=plan)
    assert why["P01"].kind is ReasonKind.WAITING
    assert why["P01"].until == NOW + 2 * 3600


def test_a_vehicle_held_below_its_plan_by_the_budget_is_limited(reference: Station) -> None:
    """The plan gives both 400 kW; the budget of 500 kW is spent: both are held by the limit."""
    plan = _plan({"truck-P01": [400.0], "truck-P02": [400.0]})
    why = _why(
        reference,
        {"P01": _reading(kw=250.0), "P02": _reading(kw=250.0)},
        setpoints={"P01": 250.0, "P02": 250.0},
        targets={"P01": 250.0, "P02": 250.0},
        budget=500.0,
        plan=plan,
    )
    assert why["P01"].kind is ReasonKind.LIMITED
    assert "500 kW" in why["P01"].text


def test_below_target_with_budget_to_spare_is_ramping(reference: Station) -> None:
    plan = _plan({"truck-P01": [400.0]})
    why = _why(
        reference,
        {"P01": _reading(kw=100.0)},
        setpoints={"P01": 100.0},
        targets={"P01": 400.0},
        budget=3000.0,
        plan=plan,
    )
    assert why["P01"].kind is ReasonKind.RAMPING


def test_following_the_plan_is_charging_as_planned(reference: Station) -> None:
    plan = _plan({"truck-P01": [400.0]})
    why = _why(reference, {"P01": _reading(kw=400.0)}, setpoints={"P01": 400.0}, plan=plan)
    assert why["P01"] == PileReason(ReasonKind.CHARGING, "charging as planned")


def test_without_a_plan_the_fallback_shares_the_headroom(reference: Station) -> None:
    why = _why(reference, {"P01": _reading(kw=400.0)}, setpoints={"P01": 400.0}, plan=None)
    assert why["P01"].kind is ReasonKind.FALLBACK
    heuristic = _plan({"truck-P01": [400.0]}, PlanStatus.FALLBACK)
    why = _why(reference, {"P01": _reading(kw=400.0)}, setpoints={"P01": 400.0}, plan=heuristic)
    assert why["P01"].kind is ReasonKind.FALLBACK
    assert "heuristic" in why["P01"].text


def test_a_baseline_policy_charges_its_share(reference: Station) -> None:
    why = _why(
        reference,
        {"P01": _reading(kw=400.0)},
        setpoints={"P01": 400.0},
        policy=Policy.EQUAL_SHARE,
    )
    assert why["P01"].kind is ReasonKind.CHARGING
    assert "equal-share" in why["P01"].text


def test_a_negative_setpoint_is_a_discharge_for_price(reference: Station) -> None:
    plan = _plan({"truck-P01": [-200.0]})
    why = _why(reference, {"P01": _reading(kw=-200.0)}, setpoints={"P01": -200.0}, plan=plan)
    assert why["P01"].kind is ReasonKind.DISCHARGING
    assert "valley" in why["P01"].text


def test_stale_readings_hold_power(reference: Station) -> None:
    """Data from an earlier cycle may hold power, not raise it: the pile is held for it."""
    plan = _plan({"truck-P01": [400.0]})
    why = _why(
        reference,
        {"P01": _reading(kw=100.0)},
        setpoints={"P01": 100.0},
        targets={"P01": 100.0},
        plan=plan,
        current=False,
    )
    assert why["P01"].kind is ReasonKind.STALE
