"""Solving a `Problem` with HiGHS, warm between the receding-horizon re-solves.

`Solver` keeps one HiGHS instance. When the next problem has the same structure as the last
(the same vehicles in the same slots, which is the case for every re-solve within a slot) only
costs, bounds and the few changed coefficients are passed, and HiGHS continues from its optimal
basis: a re-solve a minute later typically needs no simplex iteration at all. When the structure
changed (an arrival, a departure, a new slot) the model is rebuilt and the previous basis is
carried over by variable name where it still applies.

Outcomes are statuses, never exceptions: see `scheduler.plan.PlanStatus`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Hashable

import highspy
import numpy as np

from scheduler.lp import LpModel, build_lp
from scheduler.plan import Plan, PlanStatus
from scheduler.problem import Problem

_INF = highspy.kHighsInf
_banner_lock = threading.Lock()
_banner_shown = False


def _new_highs() -> highspy.Highs:
    """A silent HiGHS instance.

    HiGHS prints a banner on stdout when the first instance of a process is created, before any
    option can turn output off; the command line's own output must not carry it.
    """
    global _banner_shown
    with _banner_lock:
        if _banner_shown:
            highs = highspy.Highs()
        else:
            sys.stdout.flush()
            saved = os.dup(1)
            try:
                with open(os.devnull, "w") as devnull:
                    os.dup2(devnull.fileno(), 1)
                    highs = highspy.Highs()
            finally:
                os.dup2(saved, 1)
                os.close(saved)
            _banner_shown = True
    highs.silent()
    return highs


def _finite(values: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(values, dtype=float), -_INF, _INF)


def to_highs_lp(model: LpModel) -> highspy.HighsLp:
    """The model as a HiGHS LP."""
    lp = highspy.HighsLp()
    rows, cols = model.shape
    lp.num_col_ = cols
    lp.num_row_ = rows
    lp.col_cost_ = model.cost
    lp.col_lower_ = _finite(model.col_lower)
    lp.col_upper_ = _finite(model.col_upper)
    lp.row_lower_ = _finite(model.row_lower)
    lp.row_upper_ = _finite(model.row_upper)
    matrix = model.matrix
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = matrix.indptr.astype(np.int32)
    lp.a_matrix_.index_ = matrix.indices.astype(np.int32)
    lp.a_matrix_.value_ = matrix.data
    lp.a_matrix_.num_col_ = cols
    lp.a_matrix_.num_row_ = rows
    return lp


class Solver:
    """A HiGHS instance reused across solves (one solve at a time)."""

    def __init__(self, *, time_limit_s: float | None = None, warm: bool = True) -> None:
        self.time_limit_s = time_limit_s
        self.warm = warm
        self._highs = _new_highs()
        self._highs.setOptionValue("threads", 1)
        self._model: LpModel | None = None
        self.last_model: LpModel | None = None

    def cancel(self) -> None:
        """Ask a running solve to stop (it returns with status TIME_LIMIT)."""
        self._highs.cancelSolve()

    def solve(self, problem: Problem, *, time_limit_s: float | None = None) -> Plan:
        """Plan for `problem` (checked first; a malformed problem raises `ProblemError`)."""
        problem.check()
        started = time.perf_counter()
        model = build_lp(problem)
        highs = self._highs
        limit = time_limit_s if time_limit_s is not None else self.time_limit_s
        # HiGHS measures its time limit against its run time since the instance was made, summed
        # over every solve: the deadline of this solve counts from where that clock stands now.
        deadline = highs.getRunTime() + float(limit) if limit is not None else _INF
        highs.setOptionValue("time_limit", deadline)
        warm = False
        previous = self._model
        if self.warm and previous is not None and _same_structure(previous, model):
            _update(highs, previous, model)
            warm = True
        else:
            basis = (
                _carry_basis(highs, previous, model) if self.warm and previous is not None else None
            )
            highs.clearModel()
            highs.passModel(to_highs_lp(model))
            if basis is not None:
                warm = highs.setBasis(basis) == highspy.HighsStatus.kOk
        self._model = model
        self.last_model = model
        try:
            highs.run()
        except Exception as exc:  # HiGHS raising is a failed solve, not a crash of the caller
            self._model = None
            return Plan(
                PlanStatus.FAILED,
                problem.boundaries,
                message=f"HiGHS: {exc}",
                solve_ms=(time.perf_counter() - started) * 1000,
            )
        return _plan(highs, problem, model, started, warm)


def solve(problem: Problem, *, time_limit_s: float | None = None) -> Plan:
    """Plan for `problem` with a fresh solver (no warm start)."""
    return Solver(time_limit_s=time_limit_s, warm=False).solve(problem)


def _same_structure(old: LpModel, new: LpModel) -> bool:
    if (
        old.shape != new.shape
        or old.col_blocks != new.col_blocks
        or old.row_blocks != new.row_blocks
    ):
        return False
    a, b = old.matrix, new.matrix
    return bool(np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices))


def _update(highs: highspy.Highs, old: LpModel, new: LpModel) -> None:
    """Pass only what changed: HiGHS keeps its factorisation when little does."""
    cost = np.flatnonzero(old.cost != new.cost).astype(np.int32)
    if len(cost):
        highs.changeColsCost(len(cost), cost, new.cost[cost])
    cols = np.flatnonzero(
        (old.col_lower != new.col_lower) | (old.col_upper != new.col_upper)
    ).astype(np.int32)
    if len(cols):
        highs.changeColsBounds(
            len(cols), cols, _finite(new.col_lower[cols]), _finite(new.col_upper[cols])
        )
    rows = np.flatnonzero(
        (old.row_lower != new.row_lower) | (old.row_upper != new.row_upper)
    ).astype(np.int32)
    if len(rows):
        highs.changeRowsBounds(
            len(rows), rows, _finite(new.row_lower[rows]), _finite(new.row_upper[rows])
        )
    changed = np.flatnonzero(old.matrix.data != new.matrix.data)
    if len(changed):
        col_of = np.repeat(np.arange(new.shape[1]), np.diff(new.matrix.indptr))
        for k in changed:
            highs.changeCoeff(int(new.matrix.indices[k]), int(col_of[k]), float(new.matrix.data[k]))


def _carry_basis(
    highs: highspy.Highs, old: LpModel | None, new: LpModel
) -> highspy.HighsBasis | None:
    """The previous optimal basis, mapped onto the new model's variables by name."""
    if old is None or highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    previous = highs.getBasis()
    if not previous.valid:
        return None
    col_status = dict(zip(old.col_keys, previous.col_status, strict=True))
    row_status = dict(zip(old.row_keys, previous.row_status, strict=True))
    lower = highspy.HighsBasisStatus.kLower
    basic = highspy.HighsBasisStatus.kBasic
    basis = highspy.HighsBasis()
    basis.col_status = [col_status.get(key, lower) for key in new.col_keys]
    # A new row starts with its slack basic, which keeps the count of basic variables right.
    basis.row_status = [row_status.get(key, basic) for key in new.row_keys]
    basis.valid = True
    count = sum(1 for s in basis.col_status if s == basic) + sum(
        1 for s in basis.row_status if s == basic
    )
    if count != len(new.row_keys):
        return None
    return basis


def _plan(
    highs: highspy.Highs, problem: Problem, model: LpModel, started: float, warm: bool
) -> Plan:
    status = highs.getModelStatus()
    info = highs.getInfo()
    elapsed = (time.perf_counter() - started) * 1000
    iterations = int(info.simplex_iteration_count)
    message = highs.modelStatusToString(status)
    if status == highspy.HighsModelStatus.kInfeasible:
        return Plan(
            PlanStatus.INFEASIBLE,
            problem.boundaries,
            message=message,
            solve_ms=elapsed,
            iterations=iterations,
        )
    if status in (highspy.HighsModelStatus.kTimeLimit, highspy.HighsModelStatus.kInterrupt):
        return Plan(
            PlanStatus.TIME_LIMIT,
            problem.boundaries,
            message=message,
            solve_ms=elapsed,
            iterations=iterations,
        )
    if status != highspy.HighsModelStatus.kOptimal:
        return Plan(
            PlanStatus.FAILED,
            problem.boundaries,
            message=message,
            solve_ms=elapsed,
            iterations=iterations,
        )
    x = np.asarray(highs.getSolution().col_value, dtype=float)
    hours = problem.hours
    power: dict[str, np.ndarray] = {}
    unmet: dict[str, float] = {}
    for vehicle in problem.vehicles:
        cols = model.vehicles[vehicle.id]
        series = np.zeros(problem.slots)
        if len(cols.slots):
            series[cols.slots] = x[cols.charge]
            if cols.discharge is not None:
                series[cols.slots] -= x[cols.discharge]
            series /= hours
        power[vehicle.id] = series
        missing = float(x[cols.unmet]) / (vehicle.efficiency if vehicle.v2g else 1.0)
        unmet[vehicle.id] = max(0.0, missing)
    imported = x[model.import_cols]
    exported = x[model.export_cols]
    discharged = sum(
        float(x[c.discharge].sum()) for c in model.vehicles.values() if c.discharge is not None
    )
    return Plan(
        status=PlanStatus.OPTIMAL,
        boundaries=problem.boundaries,
        power_kw=power,
        message=message,
        objective=float(info.objective_function_value),
        energy_cost=float(
            problem.import_price @ imported
            - np.minimum(problem.export_price, problem.import_price) @ exported
        ),
        demand_cost=float(problem.demand_charge * x[model.peak_cols].sum()),
        degradation_cost=problem.weights.degradation_per_kwh * discharged,
        unmet_kwh=unmet,
        solve_ms=elapsed,
        iterations=iterations,
        warm=warm,
    )


def column_key_count(model: LpModel) -> dict[Hashable, int]:
    """How many columns of each kind a model has (for diagnostics and tests)."""
    counts: dict[Hashable, int] = {}
    for key in model.col_keys:
        kind = key[0] if isinstance(key, tuple) else key
        counts[kind] = counts.get(kind, 0) + 1
    return counts
