"""Plan-with-fallback and the control step, as both shells use them (real solver, real fallback).

The controller is replaced by a recorder here: these tests are of the planner's and the step's
own logic (what is adopted, what is told, in which order things happen).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from base.events import Event, Kind, Source
from control.planner import Planner
from control.step import step
from scheduler.plan import Plan, PlanStatus
from scheduler.problem import Problem, Vehicle
from scheduler.solver import solve

START = 1_764_547_200.0  # 2025-12-01 00:00 UTC
HOUR = 3600.0


def problem(limit_kw: float = 100.0) -> Problem:
    slots = 4
    return Problem(
        boundaries=START + HOUR * np.arange(slots + 1, dtype=float),
        limit_kw=np.full(slots, limit_kw),
        background_kw=np.zeros(slots),
        import_price=np.array([1.0, 0.5, 0.5, 1.0]),
        export_price=np.zeros(slots),
        vehicles=(
            Vehicle(id="EV1", pile="P1", energy_kwh=20.0, departure=START + 4 * HOUR, max_kw=10),
        ),
    )


class Recorder:
    """Stands in for `Control`: records what it is asked, in order."""

    def __init__(self, built: Problem | Exception) -> None:
        self.built = built
        self.calls: list[str] = []
        self.adopted: list[Plan] = []
        self.sessions: dict[str, Any] = {}

    def problem(self, _snapshot: object) -> Problem:
        self.calls.append("problem")
        if isinstance(self.built, Exception):
            raise self.built
        return self.built

    def adopt(self, plan: Plan, _now: float, _problem: Problem) -> None:
        self.calls.append("adopt")
        self.adopted.append(plan)

    def observe(self, _snapshot: object, _dt: float) -> list[Event]:
        self.calls.append("observe")
        return [Event(START, Source.CONTROL, Kind.OBSERVED, "EV1 arrived")]

    def decide(self, _snapshot: object, _dt: float) -> str:
        self.calls.append("decide")
        return "decision"


class Snapshot:
    time = START


def test_the_solvers_plan_is_adopted() -> None:
    control = Recorder(problem())
    planner = Planner(control)  # type: ignore[arg-type]
    built = planner.problem(Snapshot())  # type: ignore[arg-type]
    assert built is not None
    plan = planner.accept(built, solve(built), "arrival", START)
    assert plan.status is PlanStatus.OPTIMAL and control.adopted == [plan]
    # The cheap middle hours carry the energy.
    assert plan.power_kw["EV1"][1:3].sum() == pytest.approx(20.0, abs=1e-6)
    assert (planner.counts.plans, planner.counts.fallbacks) == (1, 0)


def test_no_answer_or_a_failed_solve_falls_back_told_once_and_once_on_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    control = Recorder(problem())
    planner = Planner(control)  # type: ignore[arg-type]
    built = problem()
    failed = Plan(PlanStatus.FAILED, built.boundaries, message="HiGHS said no")
    with caplog.at_level(logging.INFO, logger="control.planner"):
        first = planner.accept(built, None, "minute", START)
        second = planner.accept(built, failed, "minute", START + 60)
        third = planner.accept(built, solve(built), "minute", START + 120)
    assert first.status is PlanStatus.FALLBACK and second.status is PlanStatus.FALLBACK
    assert first.power_kw["EV1"].sum() == pytest.approx(20.0), "the fallback still charges"
    assert third.status is PlanStatus.OPTIMAL
    assert control.adopted == [first, second, third]
    assert [r.levelno for r in caplog.records] == [logging.ERROR, logging.INFO]
    texts = [r.getMessage() for r in caplog.records]
    assert texts == [
        "the optimiser gave no plan (no answer before the deadline); using least laxity first "
        "until it does",
        "the optimiser is planning again (optimal) after 120 s",
    ]
    assert (planner.counts.plans, planner.counts.fallbacks) == (3, 2)


def test_a_problem_that_cannot_be_built_is_no_plan_told_once() -> None:
    from scheduler.problem import ProblemError

    told: list[str] = []
    control = Recorder(ProblemError(["vehicle EV1: departure before arrival"]))
    planner = Planner(control, notify=lambda e: told.append(e.text))  # type: ignore[arg-type]
    assert planner.problem(Snapshot()) is None  # type: ignore[arg-type]
    assert planner.problem(Snapshot()) is None  # type: ignore[arg-type]
    assert control.adopted == [] and len(told) == 1 and "departure before arrival" in told[0]


def test_a_step_sees_the_site_then_plans_then_decides() -> None:
    control = Recorder(problem())
    done = step(
        control,  # type: ignore[arg-type]
        Snapshot(),  # type: ignore[arg-type]
        1.0,
        plan=lambda _snapshot: control.calls.append("plan"),
    )
    assert control.calls == ["observe", "plan", "decide"]
    assert done.decision == "decision"
    assert [(e.source, e.kind, e.text) for e in done.events] == [
        (Source.CONTROL, Kind.OBSERVED, "EV1 arrived")
    ]
