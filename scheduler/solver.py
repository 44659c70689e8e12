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

import highspy
import numpy as np

from scheduler.lp import LpModel, build_lp, with_cuts
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
        # Taper rows added where a plan broke them, kept (in order) for the plans after it.
        self._cuts: list[tuple[str, int]] = []

    def cancel(self) -> None:
        """Ask a running solve to stop (it returns with status TIME_LIMIT)."""
        self._highs.cancelSolve()

    def solve(self, problem: Problem, *, time_limit_s: float | None = None) -> Plan:
        """Plan for `problem` (checked first; a malformed problem raises `ProblemError`)."""
        problem.check()
        started = time.perf_counter()
        present = {v.id for v in problem.vehicles}
        first = round(problem.start / 60.0) - 24 * 60
        self._cuts = [(v, name) for v, name in self._cuts if v in present and name >= first]
        model = build_lp(problem, cuts=self._cuts)
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
            model = self._add_taper_rows(highs, model)
        except Exception as exc:  # HiGHS raising is a failed solve, not a crash of the caller
            self._model = None
            return Plan(
                PlanStatus.FAILED,
                problem.boundaries,
                message=f"HiGHS: {exc}",
                solve_ms=(time.perf_counter() - started) * 1000,
            )
        return _plan(highs, problem, model, started, warm)

    def _add_taper_rows(self, highs: highspy.Highs, model: LpModel) -> LpModel:
        """Re-solve with the taper rows the plan broke until it breaks none; the model solved.

        Each row is added where it was broken (a plan rarely breaks more than the last slots of
        a vehicle's charging), and HiGHS continues from its basis: the rows only cut it off.
        """
        for _ in range(MAX_TAPER_ROUNDS):
            if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal or not len(model.tapers):
                return model
            broken = model.taper_violations(np.asarray(highs.getSolution().col_value, dtype=float))
            if not broken:
                return model
            cuts = [(v, name) for v, names in broken.items() for name in names]
            self._cuts.extend(cuts)
            # What build_lp(problem, cuts=self._cuts) gives, from the model it extends.
            model = _append_rows(highs, model, with_cuts(model, cuts))
            self._model = self.last_model = model
            highs.run()
        return model


def _append_rows(highs: highspy.Highs, old: LpModel, new: LpModel) -> LpModel:
    """Pass `new`'s rows beyond `old`'s to HiGHS (the same columns; rows only added at the end)."""
    first = old.shape[0]
    rows = new.matrix.tocsr()[first:]
    highs.addRows(
        rows.shape[0],
        _finite(new.row_lower[first:]),
        _finite(new.row_upper[first:]),
        rows.nnz,
        rows.indptr[:-1].astype(np.int32),
        rows.indices.astype(np.int32),
        rows.data,
    )
    return new


# A plan breaks a taper only in the last slots of a vehicle's charging, so a few rounds settle
# it; the bound only guards against a loop.
MAX_TAPER_ROUNDS = 20


def solve(problem: Problem, *, time_limit_s: float | None = None) -> Plan:
    """Plan for `problem` with a fresh solver (no warm start)."""
    return Solver(time_limit_s=time_limit_s, warm=False).solve(problem)


def _same_structure(old: LpModel, new: LpModel) -> bool:
    if old.shape != new.shape:
        return False
    if not (
        np.array_equal(old.col_keys, new.col_keys) and np.array_equal(old.row_keys, new.row_keys)
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


_STATUSES = list(highspy.HighsBasisStatus.__members__.values())
_CODE = {s: int(s) for s in _STATUSES}
# Each status by its code, so that an array of codes turns into statuses in one indexing.
_STATUS = np.empty(max(_CODE.values()) + 1, dtype=object)
_STATUS[list(_CODE.values())] = _STATUSES
_LOWER = int(highspy.HighsBasisStatus.kLower)
_BASIC = int(highspy.HighsBasisStatus.kBasic)


def _statuses(values: list[highspy.HighsBasisStatus]) -> np.ndarray:
    return np.fromiter(map(_CODE.__getitem__, values), dtype=np.int8, count=len(values))


def _mapped(
    old_keys: np.ndarray, old: np.ndarray, new_keys: np.ndarray, default: int
) -> np.ndarray:
    """Each new key's status under the old keys, `default` for keys that are new."""
    order = np.argsort(old_keys)
    ranked = old_keys[order]
    where = np.clip(np.searchsorted(ranked, new_keys), 0, max(len(ranked) - 1, 0))
    status = np.full(len(new_keys), default, dtype=np.int8)
    if len(ranked):
        hit = ranked[where] == new_keys
        status[hit] = old[order[where[hit]]]
    return status


def _carry_basis(
    highs: highspy.Highs, old: LpModel | None, new: LpModel
) -> highspy.HighsBasis | None:
    """The previous optimal basis, mapped onto the new model's variables by name."""
    if old is None or highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
        return None
    previous = highs.getBasis()
    if not previous.valid:
        return None
    cols = _mapped(old.col_keys, _statuses(previous.col_status), new.col_keys, _LOWER)
    # A new row starts with its slack basic, which keeps the count of basic variables right
    # as long as no basic variable went away with a departed vehicle or a passed slot.
    rows = _mapped(old.row_keys, _statuses(previous.row_status), new.row_keys, _BASIC)
    basis = highspy.HighsBasis()
    basis.col_status = _STATUS[cols].tolist()
    basis.row_status = _STATUS[rows].tolist()
    # Otherwise HiGHS completes it (an "alien" basis): still far closer than starting afresh.
    basis.alien = int(np.count_nonzero(cols == _BASIC) + np.count_nonzero(rows == _BASIC)) != len(
        rows
    )
    basis.valid = True
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


def solve_bound(
    problem: Problem, *, at_least_kwh: float | None = None, time_limit_s: float | None = None
) -> Plan:
    """The best plan in the order operators rank outcomes: as much energy as the limits allow,
    then the lowest cost (energy, demand charge, battery wear), with no tie-breaks.

    Two solves of one HiGHS model: the first minimises the energy not delivered; the second
    holds that at its minimum (to 1e-9 relative) and minimises the cost, from the first's basis.
    With `at_least_kwh`, the first is skipped: the plan is the cheapest that delivers that much
    (INFEASIBLE if no plan can). If the plan charges a vehicle faster than its battery takes,
    the vehicle gets its taper rows and the solves are done again. The plan's `objective` is its
    cost.
    """
    problem.check()
    started = time.perf_counter()
    highs = _new_highs()
    highs.setOptionValue("threads", 1)
    if time_limit_s is not None:
        highs.setOptionValue("time_limit", float(time_limit_s))
    tapered: set[str] = set()
    # Undelivered energy at the pile: a V2G vehicle's unmet variable is in battery energy.
    per_kwh = np.array(
        [1.0 / (v.efficiency if v.v2g else 1.0) for v in problem.vehicles], dtype=float
    )
    model = build_lp(problem)
    for _ in range(MAX_TAPER_ROUNDS):
        highs.clearModel()
        highs.passModel(to_highs_lp(model))
        unmet = np.array([model.vehicles[v.id].unmet for v in problem.vehicles], dtype=np.int32)
        cols = np.arange(model.shape[1], dtype=np.int32)
        energy = np.zeros(model.shape[1])
        energy[unmet] = per_kwh
        if at_least_kwh is None:
            highs.changeColsCost(len(cols), cols, energy)
            highs.run()
            if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                break
            least = float(highs.getInfo().objective_function_value) * (1 + 1e-9) + 1e-7
        else:
            least = sum(v.energy_kwh for v in problem.vehicles) - at_least_kwh
        highs.addRow(-_INF, least, len(unmet), unmet, per_kwh)
        money = model.cost.copy()
        money[unmet] = 0.0
        for columns in model.vehicles.values():
            money[columns.charge] = 0.0
        money[model.peak_cols] = problem.demand_charge
        highs.changeColsCost(len(cols), cols, money)
        highs.run()
        if highs.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            break
        broken = model.taper_violations(np.asarray(highs.getSolution().col_value, dtype=float))
        if not broken:
            break
        tapered.update(broken)
        model = build_lp(problem, tapered)
    return _plan(highs, problem, model, started, True)
