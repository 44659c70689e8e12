"""The plan to use when the optimiser cannot give one (infeasible, out of time, failed).

Least laxity first, slot by slot: in each slot the vehicles with the least time to spare are served
first, each up to what it can take, the energy it still needs, and what is left of the site's
headroom and of every group limit. It knows nothing of prices, so it is not cheap, but it never
plans a kW above the site's or a group's limit and it never discharges. (The ramp limit and the
piles' minimum powers are the fast loop's to enforce, as they are for optimised plans.)
"""

from __future__ import annotations

import time

import numpy as np

from scheduler.allocation import laxity_h
from scheduler.plan import Plan, PlanStatus
from scheduler.problem import Problem


def fallback_plan(problem: Problem, *, reason: str = "") -> Plan:
    """A plan that respects every limit of `problem`, by least laxity first."""
    started = time.perf_counter()
    problem.check()
    hours = problem.hours
    headroom = np.maximum(problem.limit_kw - problem.background_kw, 0.0)
    remaining = {v.id: v.energy_kwh for v in problem.vehicles}
    power = {v.id: np.zeros(problem.slots) for v in problem.vehicles}
    presence = {v.id: problem.presence(v) for v in problem.vehicles}
    for slot in range(problem.slots):
        left = float(headroom[slot])
        group_left = {g.name: g.limit_kw for g in problem.groups}
        start = float(problem.boundaries[slot])
        present = [
            v for v in problem.vehicles if presence[v.id][slot] > 0 and remaining[v.id] > 1e-9
        ]
        present.sort(key=lambda v: (laxity_h(start, v.departure, remaining[v.id], v.max_kw), v.id))
        for vehicle in present:
            # Average power over the slot, so a vehicle present for part of it is not over-served.
            cap = vehicle.max_kw * presence[vehicle.id][slot] / hours[slot]
            grant = min(cap, remaining[vehicle.id] / hours[slot], left)
            for group in problem.groups:
                share = group.members.get(vehicle.pile)
                if share:
                    grant = min(grant, group_left[group.name] / share)
            if grant <= 1e-9:
                continue
            power[vehicle.id][slot] = grant
            remaining[vehicle.id] -= grant * hours[slot]
            left -= grant
            for group in problem.groups:
                share = group.members.get(vehicle.pile)
                if share:
                    group_left[group.name] -= grant * share
    energy = problem.background_kw * hours
    for series in power.values():
        energy = energy + series * hours
    return Plan(
        status=PlanStatus.FALLBACK,
        boundaries=problem.boundaries,
        power_kw=power,
        message=f"least laxity first ({reason})" if reason else "least laxity first",
        energy_cost=float(
            problem.import_price @ np.maximum(energy, 0)
            - problem.export_price @ np.maximum(-energy, 0)
        ),
        unmet_kwh={vid: max(0.0, left_kwh) for vid, left_kwh in remaining.items()},
        solve_ms=(time.perf_counter() - started) * 1000,
    )
