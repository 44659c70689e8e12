"""Plan-with-fallback: the one way a plan is made, by the daemon and by fast simulation alike.

The shells differ only in how they run the solver (the daemon in a worker thread with a
deadline, fast simulation inline): both ask `Planner.problem` for the scheduling problem, solve
it their way, and hand the answer (or None, when no answer came in time) to `Planner.accept`,
which adopts the optimiser's plan or, failing that, the least-laxity-first fallback's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from base.health import Health, Notify
from control.cycle import Control
from control.site import SiteSnapshot
from scheduler.fallback import fallback_plan
from scheduler.plan import Plan
from scheduler.problem import Problem, ProblemError

log = logging.getLogger(__name__)


@dataclass
class PlanCounts:
    """How plans were made: adopted, from the fallback, and the solver's times."""

    plans: int = 0
    fallbacks: int = 0
    solve_ms: list[float] = field(default_factory=list)


class Planner:
    """Builds each scheduling problem and adopts the optimiser's plan or the fallback's."""

    def __init__(self, control: Control, notify: Notify | None = None):
        self.control = control
        self.counts = PlanCounts()
        self.optimiser = Health("the optimiser", notify=notify, logger=log)
        self.building = Health("the scheduling problem", notify=notify, logger=log)

    def problem(self, snapshot: SiteSnapshot) -> Problem | None:
        """The checked problem for the site now; None (told once) if it cannot be built."""
        try:
            problem = self.control.problem(snapshot)
            problem.check()
        except ProblemError as exc:
            self.building.fail(snapshot.time, f"cannot be built: {exc}")
            return None
        self.building.recover(snapshot.time)
        return problem

    def accept(self, problem: Problem, plan: Plan | None, reason: str, now: float) -> Plan:
        """Adopt the solver's plan, or the fallback's when it gave none (None: no answer in
        time); a failure is told once, and once when the optimiser plans again."""
        self.counts.plans += 1
        if plan is not None:
            self.counts.solve_ms.append(plan.solve_ms)
        if plan is not None and plan.status.has_schedule:
            status = plan.status
            self.optimiser.recover(
                now, lambda down: f"the optimiser is planning again ({status}) after {down:.0f} s"
            )
            log.debug(
                "plan (%s): %s in %.0f ms, objective %.2f",
                reason,
                plan.status,
                plan.solve_ms,
                plan.objective or 0,
            )
        else:
            why = (
                "no answer before the deadline"
                if plan is None
                else f"{plan.status}: {plan.message}"
            )
            self.optimiser.fail(
                now,
                why,
                text=f"the optimiser gave no plan ({why}); using least laxity first until it does",
            )
            self.counts.fallbacks += 1
            plan = fallback_plan(problem, reason=why)
        self.control.adopt(plan, now, problem)
        return plan
