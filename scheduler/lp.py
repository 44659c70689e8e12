"""The linear program behind a plan, as plain arrays (the same LP goes to HiGHS or to linprog).

Variables are energies per slot (kWh), so that a re-solve a minute later, when slot 0 is shorter
and every vehicle needs a little less, changes only bounds and right-hand sides:

    x[i,t]  energy charged into vehicle i in slot t      0 <= x <= max_kw * hours present
    f[i,t]  energy discharged from V2G vehicle i         0 <= f <= max_discharge_kw * hours present
    y[i,t]  battery energy of vehicle i after slot t     (V2G and tapering vehicles only)
    u[i]    energy vehicle i will not get by departure   0 <= u <= its need
    g+[t]   energy imported in slot t                    0 <= g+ <= limit * hours
    g-[t]   energy exported in slot t                    0 <= g- <= export limit * hours
    P[m]    new peak above month m's peak so far (kW)    P >= 0

    minimise  sum(import price * g+) - sum(export price * g-) + demand charge * P
              + degradation * sum(f) + unmet penalty * sum(u)
              + earliness * sum(slot index * x) + flatness * sum(P)

subject to, per slot: sum(x) - sum(f) - g+ + g- = -background * hours (site balance);
g+ - hours * P[month of the slot] <= peak so far * hours; group limits; the upward ramp of the piles'
total; per vehicle: sum(x) + u = need (or the V2G battery balance and final level); for a
vehicle whose charging tapers, x[t] no more than its battery takes at the level y[t-1]; with
`reserve_share`, y[t] + v >= what the vehicle could no longer catch up at that share of its power
(v, a slack priced between any tariff difference and the unmet penalty).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from scheduler.problem import Problem

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
INF = np.inf
# Up to this many binding reserve rows, a vehicle's reserve is written with suffix sums rather
# than a battery-level chain (which adds a column and a row per slot).
_SUFFIX_ROWS = 12


@dataclass(frozen=True)
class VehicleColumns:
    """Where one vehicle's variables sit in the LP."""

    slots: IntArray
    charge: IntArray
    discharge: IntArray | None
    unmet: int


@dataclass
class LpModel:
    """min cost @ x  s.t.  row_lower <= A x <= row_upper,  col_lower <= x <= col_upper."""

    cost: FloatArray
    col_lower: FloatArray
    col_upper: FloatArray
    matrix: sp.csc_matrix
    row_lower: FloatArray
    row_upper: FloatArray
    col_blocks: list[Names]
    row_blocks: list[Names]
    vehicles: dict[str, VehicleColumns]
    import_cols: IntArray
    export_cols: IntArray
    peak_cols: IntArray

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        rows, cols = self.matrix.shape
        return int(rows), int(cols)

    @property
    def col_keys(self) -> list[Hashable]:
        """Every variable's name, e.g. ("x", vehicle id, slot end)."""
        return _expand(self.col_blocks)

    @property
    def row_keys(self) -> list[Hashable]:
        """Every row's name."""
        return _expand(self.row_blocks)


@dataclass(frozen=True)
class KeyBlock:
    """The names of a run of variables (or rows), one per slot: (*name, slot end)."""

    name: tuple[Hashable, ...]
    ends: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.ends)

    def keys(self) -> list[Hashable]:
        """The names one by one."""
        return [(*self.name, end) for end in self.ends]


Names = KeyBlock | list[Hashable]


def _block(name: tuple[Hashable, ...], ends: FloatArray, index: IntArray | None = None) -> KeyBlock:
    picked = ends if index is None else ends[index]
    return KeyBlock(name, tuple(picked.tolist()))


def _expand(blocks: list[Names]) -> list[Hashable]:
    keys: list[Hashable] = []
    for block in blocks:
        keys.extend(block.keys() if isinstance(block, KeyBlock) else block)
    return keys


class _Builder:
    def __init__(self) -> None:
        self.cost: list[NDArray[np.float64]] = []
        self.lower: list[NDArray[np.float64]] = []
        self.upper: list[NDArray[np.float64]] = []
        self.col_blocks: list[Names] = []
        self.n_cols = 0
        self.row_lower: list[NDArray[np.float64]] = []
        self.row_upper: list[NDArray[np.float64]] = []
        self.row_blocks: list[Names] = []
        self.n_rows = 0
        self.entries_r: list[NDArray[np.int64]] = []
        self.entries_c: list[NDArray[np.int64]] = []
        self.entries_v: list[FloatArray] = []

    def cols(
        self,
        names: Names,
        cost: NDArray[np.floating],
        lower: NDArray[np.floating],
        upper: NDArray[np.floating],
    ) -> IntArray:
        first, count = self.n_cols, len(names)
        self.col_blocks.append(names)
        self.cost.append(_fill(cost, count))
        self.lower.append(_fill(lower, count))
        self.upper.append(_fill(upper, count))
        self.n_cols += count
        return np.arange(first, self.n_cols, dtype=np.int64)

    def rows(
        self, names: Names, lower: NDArray[np.floating], upper: NDArray[np.floating]
    ) -> IntArray:
        first, count = self.n_rows, len(names)
        self.row_blocks.append(names)
        self.row_lower.append(_fill(lower, count))
        self.row_upper.append(_fill(upper, count))
        self.n_rows += count
        return np.arange(first, self.n_rows, dtype=np.int64)

    def entries(self, rows: IntArray, cols: IntArray, values: FloatArray | float) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        self.entries_r.append(rows)
        self.entries_c.append(cols)
        self.entries_v.append(_fill(values, len(rows)))

    def matrix(self) -> sp.csc_matrix:
        shape = (self.n_rows, self.n_cols)
        if not self.entries_r:
            return sp.csc_matrix(shape)
        return sp.csc_matrix(
            (
                np.concatenate(self.entries_v),
                (np.concatenate(self.entries_r), np.concatenate(self.entries_c)),
            ),
            shape=shape,
        )


def _fill(values: NDArray[np.floating] | float, count: int) -> FloatArray:
    """`values` as a float array of `count` (a scalar is repeated)."""
    if isinstance(values, (int, float)):
        return np.full(count, float(values))
    array = np.asarray(values, dtype=float)
    return np.full(count, float(array)) if array.ndim == 0 else array


def _joined(parts: list[NDArray[np.float64]]) -> FloatArray:
    return np.concatenate(parts) if parts else np.zeros(0)


def build_lp(problem: Problem) -> LpModel:
    """The LP of a checked problem."""
    b = _Builder()
    hours = problem.hours
    slots = problem.slots
    # Each slot is named by the start of the tariff quarter it lies in, which stays put while a
    # re-solve a minute later shortens slot 0 and lengthens the last slot: only when a quarter
    # hour passes do slots come and go (and the LP change shape).
    bounds = np.asarray(problem.boundaries, dtype=float)
    ends = bounds[:-1].copy()
    if slots > 1:
        ends[0] = bounds[1] - (bounds[2] - bounds[1])
    w = problem.weights
    slot_index = np.arange(slots)

    export_limit = problem.limit_kw if problem.export_limit_kw is None else problem.export_limit_kw
    g_plus = b.cols(
        _block(("g+",), ends), problem.import_price, np.zeros(slots), problem.limit_kw * hours
    )
    # A site either imports or exports at any moment. Crediting export above the import price
    # would let the LP buy and sell in the same slot for a paper profit, so within a slot it is
    # credited at most at the import price (which changes nothing for a site that only does one).
    credit = np.minimum(problem.export_price, problem.import_price)
    g_minus = b.cols(_block(("g-",), ends), -credit, np.zeros(slots), export_limit * hours)
    # One new-peak variable per billing period (calendar month): a plan that runs past midnight
    # on the 1st starts the next month's peak from nothing.
    periods = problem.billing_periods()
    # The even-profile tie-break is a small extra price on each kW of new peak: it spreads load
    # that would set a new peak (a spike at the valley's first minute), and leaves alone load
    # below the month's peak, which may then come as early as the vehicles want it.
    peaks = b.cols(
        # The current month's variable keeps its name while the plan's start moves on.
        [("P", "current" if index == 0 else start) for index, (start, _, _) in enumerate(periods)],
        np.full(len(periods), problem.demand_charge + w.flatness_per_kw),
        np.zeros(len(periods)),
        np.full(len(periods), INF),
    )

    balance = b.rows(
        _block(("balance",), ends),
        -problem.background_kw * hours,
        -problem.background_kw * hours,
    )
    b.entries(balance, g_plus, -1.0)
    b.entries(balance, g_minus, 1.0)
    period_of = np.zeros(slots, dtype=np.int64)
    before = np.zeros(slots)
    for index, (start, _, peak_kw) in enumerate(periods):
        inside = problem.boundaries[:-1] >= start
        period_of[inside] = index
        before[inside] = peak_kw
    # The demand charge is on the average of each billing window (a quarter hour): what slot 0
    # may import is what the window allows less what it has already seen. Writing every row with
    # the window's length, not the slot's, keeps the coefficients fixed from one re-solve to the
    # next, so HiGHS keeps its factorisation.
    window = (
        problem.slot_hours if problem.demand_window_s is None else problem.demand_window_s / 3600.0
    )
    room = before * window
    room[0] -= problem.window_import_kwh
    peak_rows = b.rows(_block(("peak",), ends), np.full(slots, -INF), room)
    b.entries(peak_rows, g_plus, 1.0)
    b.entries(peak_rows, peaks[period_of], -window)

    vehicles: dict[str, VehicleColumns] = {}
    pile_terms: dict[str, list[tuple[IntArray, IntArray, float]]] = {}
    all_net: list[tuple[IntArray, IntArray, float]] = []
    for vehicle in problem.vehicles:
        penalty = w.expected_unmet_per_kwh if vehicle.expected else w.unmet_per_kwh
        present = problem.presence(vehicle)
        active = np.flatnonzero(present > 1e-9)
        vid = vehicle.id
        need = vehicle.energy_kwh
        if len(active) == 0:
            unmet = int(b.cols([("u", vid)], np.array([penalty]), np.zeros(1), np.array([need]))[0])
            row = b.rows([("energy", vid)], np.array([need]), np.array([need]))
            b.entries(row, np.array([unmet]), 1.0)
            vehicles[vid] = VehicleColumns(active, np.zeros(0, dtype=np.int64), None, unmet)
            continue
        keys = _block(("x", vid), ends, active)
        charge = b.cols(
            keys,
            w.earliness_per_kwh_slot * slot_index[active],
            np.zeros(len(active)),
            vehicle.max_kw * present[active],
        )
        b.entries(balance[active], charge, 1.0)
        all_net.append((active, charge, 1.0))
        pile_terms.setdefault(vehicle.pile, []).append((active, charge, 1.0))
        discharge = None
        if vehicle.v2g:
            assert vehicle.capacity_kwh is not None
            discharge = b.cols(
                _block(("f", vid), ends, active),
                np.full(len(active), w.degradation_per_kwh),
                np.zeros(len(active)),
                vehicle.max_discharge_kw * present[active],
            )
            b.entries(balance[active], discharge, -1.0)
            all_net.append((active, discharge, -1.0))
            pile_terms[vehicle.pile].append((active, discharge, -1.0))
        eta = vehicle.efficiency
        if vehicle.capacity_kwh is not None and vehicle.soc is not None:
            capacity, stored = vehicle.capacity_kwh, vehicle.soc * vehicle.capacity_kwh
        else:
            capacity, stored = INF, 0.0
        target = min(capacity, stored + eta * need)
        # The reserve: keep the vehicle able to finish at `reserve_share` of its power from the
        # end of any slot (a hedge against an early departure or a crowd arriving), paid for by a
        # slack that costs far more than any price difference but less than undelivered energy.
        # need_by[k] is the battery energy it must have after active slot k for that.
        binding = np.zeros(0, dtype=np.int64)
        need_by = np.zeros(0)
        if problem.reserve_share is not None and not vehicle.expected and need > 0:
            after = np.concatenate([np.cumsum(present[active][::-1])[::-1][1:], [0.0]])
            need_by = target - eta * problem.reserve_share * vehicle.max_kw * after
            binding = np.flatnonzero(need_by > stored + 1e-6)
        # A battery-level chain costs a column and a row per slot; a vehicle needs it to discharge
        # or taper, or when its reserve binds over many slots (else suffix sums are cheaper).
        chain = vehicle.v2g or vehicle.tapers or len(binding) > _SUFFIX_ROWS
        unmet_scale = eta if vehicle.v2g else 1.0
        unmet = int(
            b.cols(
                [("u", vid)],
                np.array([penalty / unmet_scale]),
                np.zeros(1),
                np.array([need * unmet_scale]),
            )[0]
        )
        slack = None
        if len(binding):
            slack = int(
                b.cols([("v", vid)], np.array([w.reserve_per_kwh]), np.zeros(1), np.array([INF]))[0]
            )
        level = None
        if chain:
            # The battery's energy after each slot (or, with the battery unknown, the energy
            # delivered so far): y[t] - y[t-1] - eta * x[t] + f[t] / eta = 0, y[-1] = stored now.
            floor = min(vehicle.min_soc * capacity, stored) if vehicle.v2g else 0.0
            level = b.cols(
                _block(("y", vid), ends, active),
                np.zeros(len(active)),
                np.full(len(active), floor),
                np.full(len(active), capacity),
            )
            rhs = np.zeros(len(active))
            rhs[0] = stored
            level_rows = b.rows(_block(("level", vid), ends, active), rhs, rhs)
            b.entries(level_rows, level, 1.0)
            b.entries(level_rows[1:], level[:-1], -1.0)
            b.entries(level_rows, charge, -eta)
            if discharge is not None:
                b.entries(level_rows, discharge, 1.0 / eta)
        if vehicle.tapers and level is not None:
            assert vehicle.taper_soc is not None
            # In the constant-voltage phase the battery takes max_kw * (1 - soc) / (1 - taper),
            # so the room left to full decays as exp(-k t), k = eta max_kw / (capacity (1 -
            # taper)). Over a slot that allows x[t] <= (1 - exp(-k hours)) / eta * (capacity -
            # y[t-1]): exact in the taper phase, and loose (so harmless) below it.
            rate = eta * vehicle.max_kw / (capacity * (1 - vehicle.taper_soc))
            # The last slot grows as the horizon moves on; its coefficient uses a whole slot.
            steady = present[active].copy()
            if active[-1] == slots - 1:
                steady[-1] = max(
                    steady[-1], min(problem.slot_hours, (vehicle.departure - bounds[-2]) / 3600)
                )
            slope = (1 - np.exp(-rate * steady)) / eta
            upper = slope * capacity
            upper[0] = slope[0] * (capacity - stored)
            taper_rows = b.rows(
                _block(("taper", vid), ends, active), np.full(len(active), -INF), upper
            )
            b.entries(taper_rows, charge, 1.0)
            b.entries(taper_rows[1:], level[:-1], slope[1:])
        if slack is not None:
            keys = _block(("reserve", vid), ends, active[binding])
            if level is not None:
                # y[k] + v >= need_by[k]
                rows = b.rows(keys, need_by[binding], np.full(len(binding), INF))
                b.entries(rows, level[binding], 1.0)
                b.entries(rows, np.full(len(binding), slack), 1.0)
            else:
                # Without a chain (never V2G): the energy still to come after slot k is what is
                # needed minus what was delivered, so sum(x after k) + u - v <= need - (need_by[k]
                # - stored) / eta.
                upper = need - (need_by[binding] - stored) / eta
                rows = b.rows(keys, np.full(len(binding), -INF), upper)
                for row, k in zip(rows, binding, strict=True):
                    tail = charge[k + 1 :]
                    b.entries(
                        np.full(len(tail) + 2, row),
                        np.concatenate([tail, [unmet, slack]]),
                        np.concatenate([np.ones(len(tail)), [1.0, -1.0]]),
                    )
        if vehicle.v2g:
            assert level is not None
            row = b.rows([("energy", vid)], np.array([target]), np.array([INF]))
            b.entries(np.full(2, row[0]), np.array([level[-1], unmet]), 1.0)
        else:
            row = b.rows([("energy", vid)], np.array([need]), np.array([need]))
            b.entries(np.full(len(charge) + 1, row[0]), np.append(charge, unmet), 1.0)
        vehicles[vid] = VehicleColumns(active, charge, discharge, unmet)

    for group in problem.groups:
        group_rows = b.rows(
            _block(("group", group.name), ends), np.full(slots, -INF), group.limit_kw * hours
        )
        for pile, share in group.members.items():
            for active, cols, sign in pile_terms.get(pile, []):
                b.entries(group_rows[active], cols, sign * share)

    if problem.ramp_kw_per_min is not None and all_net:
        # Average pile power may rise from one slot to the next by at most the ramp limit
        # times the minutes between the slots' midpoints (slot 0: from the power now).
        mid = (problem.boundaries[:-1] + problem.boundaries[1:]) / 2
        gaps_min = np.diff(np.concatenate([[problem.boundaries[0]], mid])) / 60.0
        upper = problem.ramp_kw_per_min * gaps_min
        # Slot 0, exactly, as energy: sum(x[0]) <= hours[0] * (power now + ramp * minutes).
        # Later slots compare energies over a whole slot's length: a shorter slot 0 then looks
        # lower-powered than it is, which errs on the safe side, and the coefficients stay fixed
        # from one re-solve to the next (see the peak rows).
        upper[0] = hours[0] * (upper[0] + problem.piles_kw_now)
        ramp_rows = b.rows(_block(("ramp",), ends), np.full(slots, -INF), upper)
        scale = np.full(slots, 1.0 / problem.slot_hours)
        scale[0] = 1.0
        for active, cols, sign in all_net:
            b.entries(ramp_rows[active], cols, sign * scale[active])
            later = active + 1 < slots
            b.entries(ramp_rows[active[later] + 1], cols[later], -sign / problem.slot_hours)

    matrix = b.matrix()
    return LpModel(
        cost=_joined(b.cost),
        col_lower=_joined(b.lower),
        col_upper=_joined(b.upper),
        matrix=matrix,
        row_lower=_joined(b.row_lower),
        row_upper=_joined(b.row_upper),
        col_blocks=b.col_blocks,
        row_blocks=b.row_blocks,
        vehicles=vehicles,
        import_cols=g_plus,
        export_cols=g_minus,
        peak_cols=peaks,
    )


def linprog_arguments(model: LpModel) -> dict[str, object]:
    """The same LP as keyword arguments for `scipy.optimize.linprog` (the baseline benchmarks
    compare against): equality rows to A_eq, the rest to A_ub with lower bounds negated."""
    matrix = model.matrix.tocsr()
    lower, upper = model.row_lower, model.row_upper
    equal = lower == upper
    below = ~equal & np.isfinite(upper)
    above = ~equal & np.isfinite(lower)
    a_ub = sp.vstack([matrix[below], -matrix[above]]).tocsr()
    b_ub = np.concatenate([upper[below], -lower[above]])
    return {
        "c": model.cost,
        "A_ub": a_ub if a_ub.shape[0] else None,
        "b_ub": b_ub if a_ub.shape[0] else None,
        "A_eq": matrix[equal] if equal.any() else None,
        "b_eq": lower[equal] if equal.any() else None,
        "bounds": np.column_stack([model.col_lower, model.col_upper]),
    }
