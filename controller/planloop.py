"""The plan loop: re-plans when the controller says a plan is due, in a worker thread.

`PlanLoop` owns the solver's thread and its task. Half a control period after each cycle it
asks whether a plan is due; if so it builds the problem from the last cycle's snapshot, solves
it in the thread with a deadline (never blocking the fast loop) and hands the answer to the
planner, which adopts it or the fallback's. A plan made under a config a reload has since
replaced is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Protocol

from base.clock import Clock, Ticker, stop_task
from control.cycle import Control
from control.planner import Planner
from control.site import SiteSnapshot
from control.step import Cycle
from controller.status import Tally
from controller.telemetry.writer import TelemetryWriter
from controller.worker import Worker
from scheduler.plan import Plan
from scheduler.solver import Solver

log = logging.getLogger(__name__)


class PlanHost(Protocol):
    """What the plan loop reads of the daemon it serves."""

    clock: Clock
    control: Control
    planner: Planner
    tally: Tally
    telemetry: TelemetryWriter | None
    period_s: float
    last_cycle: Cycle | None
    config_serial: int

    @property
    def solve_deadline_s(self) -> float:
        """How long a solve may take."""
        ...


class PlanLoop:
    """Plans in a worker thread whenever a plan is due (a service of the daemon)."""

    def __init__(self, host: PlanHost, log_once: Callable[[Exception, str], None]) -> None:
        self.host = host
        self.log_once = log_once
        self.solver = Solver(time_limit_s=host.solve_deadline_s)
        self.worker = Worker("flexcharge-solver")
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the thread and the loop."""
        self.worker.start()
        self._task = asyncio.create_task(self._loop(), name="plan loop")

    async def stop(self) -> None:
        """Cancel a solve under way, end the loop and the thread."""
        self.solver.cancel()
        if self._task is not None:
            await stop_task(self._task)
            self._task = None
        self.worker.stop()

    async def _loop(self) -> None:
        host = self.host
        with host.clock.participant():
            ticker = Ticker(host.clock, host.period_s, start=host.clock.now() + host.period_s / 2)
            while True:
                ticker.period = host.period_s  # a reload may have changed it
                await ticker.wait()
                cycle = host.last_cycle
                if cycle is None:
                    continue
                reason = host.control.plan_due(host.clock.now())
                if reason is None:
                    continue
                try:
                    await self.replan(cycle.snapshot, reason)
                except Exception as exc:
                    self.log_once(exc, "planning failed")

    async def replan(self, snapshot: SiteSnapshot, reason: str) -> Plan | None:
        """Solve a new plan in the worker thread and adopt it (or the fallback)."""
        host = self.host
        problem = host.planner.problem(snapshot)
        if problem is None:
            return None
        serial = host.config_serial
        self.solver.time_limit_s = host.solve_deadline_s
        future = self.worker.run(self.solver.solve, problem)
        try:
            plan = await asyncio.wait_for(
                asyncio.shield(future), timeout=host.solve_deadline_s * 2 + 1
            )
        except TimeoutError:
            self.solver.cancel()
            plan = None
        if serial != host.config_serial:
            log.debug("a plan made under the config a reload replaced was dropped")
            return None
        plan = host.planner.accept(problem, plan, reason, host.clock.now())
        if host.telemetry is not None:
            host.telemetry.plan(plan, host.clock.now())
        return plan
