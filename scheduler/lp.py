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

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from scheduler.problem import Problem

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
INF = np.inf


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
    col_keys: list[Hashable]
    row_keys: list[Hashable]
    vehicles: dict[str, VehicleColumns]
    import_cols: IntArray
    export_cols: IntArray
    peak_cols: IntArray

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        rows, cols = self.matrix.shape
        return int(rows), int(cols)


class _Builder:
    def __init__(self) -> None:
        self.cost: list[float] = []
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.col_keys: list[Hashable] = []
        self.row_lower: list[float] = []
        self.row_upper: list[float] = []
        self.row_keys: list[Hashable] = []
        self.entries_r: list[NDArray[np.int64]] = []
        self.entries_c: list[NDArray[np.int64]] = []
        self.entries_v: list[FloatArray] = []

    def cols(
        self,
        keys: Sequence[Hashable],
        cost: NDArray[np.floating],
        lower: NDArray[np.floating],
        upper: NDArray[np.floating],
    ) -> IntArray:
        first = len(self.col_keys)
        self.col_keys.extend(keys)
        self.cost.extend(np.asarray(cost, dtype=float).tolist())
        self.lower.extend(np.asarray(lower, dtype=float).tolist())
        self.upper.extend(np.asarray(upper, dtype=float).tolist())
        return np.arange(first, len(self.col_keys), dtype=np.int64)

    def rows(
        self, keys: Sequence[Hashable], lower: NDArray[np.floating], upper: NDArray[np.floating]
    ) -> IntArray:
        first = len(self.row_keys)
        self.row_keys.extend(keys)
        self.row_lower.extend(np.asarray(lower, dtype=float).tolist())
        self.row_upper.extend(np.asarray(upper, dtype=float).tolist())
        return np.arange(first, len(self.row_keys), dtype=np.int64)

    def entries(self, rows: IntArray, cols: IntArray, values: FloatArray | float) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        self.entries_r.append(rows)
        self.entries_c.append(cols)
        self.entries_v.append(np.broadcast_to(np.asarray(values, dtype=float), rows.shape).copy())

    def matrix(self) -> sp.csc_matrix:
        shape = (len(self.row_keys), len(self.col_keys))
        if not self.entries_r:
            return sp.csc_matrix(shape)
        return sp.csc_matrix(
            (
                np.concatenate(self.entries_v),
                (np.concatenate(self.entries_r), np.concatenate(self.entries_c)),
            ),
            shape=shape,
        )


def build_lp(problem: Problem) -> LpModel:
    """The LP of a checked problem."""
    b = _Builder()
    hours = problem.hours
    slots = problem.slots
    # Slots are keyed by their end, which stays put while slot 0 shrinks between re-solves.
    ends = [float(t) for t in problem.boundaries[1:]]
    w = problem.weights
    slot_index = np.arange(slots)

    export_limit = problem.limit_kw if problem.export_limit_kw is None else problem.export_limit_kw
    g_plus = b.cols(
        [("g+", e) for e in ends], problem.import_price, np.zeros(slots), problem.limit_kw * hours
    )
    # A site either imports or exports at any moment. Crediting export above the import price
    # would let the LP buy and sell in the same slot for a paper profit, so within a slot it is
    # credited at most at the import price (which changes nothing for a site that only does one).
    credit = np.minimum(problem.export_price, problem.import_price)
    g_minus = b.cols([("g-", e) for e in ends], -credit, np.zeros(slots), export_limit * hours)
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
        [("balance", e) for e in ends],
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
    peak_rows = b.rows([("peak", e) for e in ends], np.full(slots, -INF), before * hours)
    b.entries(peak_rows, g_plus, 1.0)
    b.entries(peak_rows, peaks[period_of], -hours)

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
        keys = [("x", vid, ends[t]) for t in active]
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
                [("f", vid, ends[t]) for t in active],
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
        reserve = problem.reserve_share is not None and not vehicle.expected and need > 0
        level = None
        if vehicle.v2g or vehicle.tapers or reserve:
            # The battery's energy after each slot (or, with the battery unknown, the energy
            # delivered so far): y[t] - y[t-1] - eta * x[t] + f[t] / eta = 0, y[-1] = stored now.
            floor = min(vehicle.min_soc * capacity, stored) if vehicle.v2g else 0.0
            level = b.cols(
                [("y", vid, ends[t]) for t in active],
                np.zeros(len(active)),
                np.full(len(active), floor),
                np.full(len(active), capacity),
            )
            rhs = np.zeros(len(active))
            rhs[0] = stored
            level_rows = b.rows([("level", vid, ends[t]) for t in active], rhs, rhs)
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
            slope = (1 - np.exp(-rate * present[active])) / eta
            upper = slope * capacity
            upper[0] = slope[0] * (capacity - stored)
            taper_rows = b.rows(
                [("taper", vid, ends[t]) for t in active], np.full(len(active), -INF), upper
            )
            b.entries(taper_rows, charge, 1.0)
            b.entries(taper_rows[1:], level[:-1], slope[1:])
        if reserve and level is not None:
            # Keep the vehicle able to finish at `reserve_share` of its power from the end of any
            # slot: a hedge against an early departure or a crowd arriving, paid for by a slack
            # that costs far more than any price difference but less than undelivered energy.
            share = problem.reserve_share
            assert share is not None
            after = np.concatenate([np.cumsum(present[active][::-1])[::-1][1:], [0.0]])
            need_by = target - eta * share * vehicle.max_kw * after
            binding = np.flatnonzero(need_by > stored + 1e-6)
            if len(binding):
                slack = int(
                    b.cols(
                        [("v", vid)], np.array([w.reserve_per_kwh]), np.zeros(1), np.array([INF])
                    )[0]
                )
                reserve_rows = b.rows(
                    [("reserve", vid, ends[active[k]]) for k in binding],
                    need_by[binding],
                    np.full(len(binding), INF),
                )
                b.entries(reserve_rows, level[binding], 1.0)
                b.entries(reserve_rows, np.full(len(binding), slack), 1.0)
        if vehicle.v2g:
            assert level is not None
            unmet = int(
                b.cols(
                    [("u", vid)],
                    np.array([penalty / eta]),
                    np.zeros(1),
                    np.array([need * eta]),
                )[0]
            )
            row = b.rows([("energy", vid)], np.array([target]), np.array([INF]))
            b.entries(np.full(2, row[0]), np.array([level[-1], unmet]), 1.0)
        else:
            unmet = int(b.cols([("u", vid)], np.array([penalty]), np.zeros(1), np.array([need]))[0])
            row = b.rows([("energy", vid)], np.array([need]), np.array([need]))
            b.entries(np.full(len(charge) + 1, row[0]), np.append(charge, unmet), 1.0)
        vehicles[vid] = VehicleColumns(active, charge, discharge, unmet)

    for group in problem.groups:
        group_rows = b.rows(
            [("group", group.name, e) for e in ends], np.full(slots, -INF), group.limit_kw * hours
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
        upper[0] += problem.piles_kw_now
        ramp_rows = b.rows([("ramp", e) for e in ends], np.full(slots, -INF), upper)
        for active, cols, sign in all_net:
            b.entries(ramp_rows[active], cols, sign / hours[active])
            later = active + 1 < slots
            b.entries(ramp_rows[active[later] + 1], cols[later], -sign / hours[active[later]])

    matrix = b.matrix()
    return LpModel(
        cost=np.asarray(b.cost),
        col_lower=np.asarray(b.lower),
        col_upper=np.asarray(b.upper),
        matrix=matrix,
        row_lower=np.asarray(b.row_lower),
        row_upper=np.asarray(b.row_upper),
        col_keys=b.col_keys,
        row_keys=b.row_keys,
        vehicles=vehicles,
        import_cols=g_plus,
        export_cols=g_minus,
        peak_cols=peaks,
    )
