"""The linear program behind a plan, as plain arrays (the same LP goes to HiGHS or to linprog).

Variables are energies per slot (kWh), so that a re-solve a minute later, when slot 0 is shorter
and every vehicle needs a little less, changes only bounds and right-hand sides:

    x[i,t]  energy charged into vehicle i in slot t      0 <= x <= max_kw * hours present
    f[i,t]  energy discharged from V2G vehicle i         0 <= f <= max_discharge_kw * hours present
    y[i,t]  battery energy of V2G vehicle i after slot t
    u[i]    energy vehicle i will not get by departure   0 <= u <= its need
    g+[t]   energy imported in slot t                    0 <= g+ <= limit * hours
    g-[t]   energy exported in slot t                    0 <= g- <= export limit * hours
    P[m]    new peak above month m's peak so far (kW)    P >= 0 (only with a demand charge)

    minimise  unmet penalty * sum(u)                                   energy first
              + sum(import price * g+) - sum(export price * g-)        then cost
              + demand charge * P + degradation * sum(f)
              + earliness * sum(slot index * x) + flatness * sum(P)   then tie-breaks

The penalty on undelivered energy is far above any price, and the tie-breaks are scaled so that
the largest they can add up to stays below the smallest price difference in the plan: they only
choose between plans of the same energy and cost (earlier energy first, which is the safer plan
when vehicles come or go unannounced; and, where a demand charge makes peaks cost, an even one).

Subject to, per slot: sum(x) - sum(f) - g+ + g- = -background * hours (site balance); with a
demand charge, each billing window's import within the month's peak (g+ summed over the window
<= window hours * (peak so far + P)); group limits; the upward ramp of the piles' total; per
vehicle: sum(x) + u = need (or the V2G battery balance and final level). A vehicle whose charging
tapers takes at most x[t] <= slope[t] * (full - y[t-1]) in each slot (the battery's
constant-voltage phase, exact over a slot), with its battery level y as a chain of rows. These
rows are added lazily (`taper_violations`): only for the vehicles a plan without them would have
charged faster than their battery takes.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from scheduler.problem import GroupLimit, Problem, Vehicle

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
INF = np.inf

# Kinds of variables and rows, in the high bits of their keys (see `_keys`).
G_PLUS, G_MINUS, PEAK, CHARGE, UNMET, DISCHARGE, LEVEL_COL = range(7)
BALANCE, WINDOW, ENERGY, LEVEL, TAPER, GROUP, RAMP = range(8, 15)


def _code(name: str) -> int:
    """A stable 32-bit code for a vehicle or group name (its CRC-32)."""
    return zlib.crc32(name.encode())


def _keys(kind: int, code: int | IntArray, minute: int | IntArray) -> IntArray:
    """Integer names of variables or rows: kind (4 bits), owner (32), slot minute (27)."""
    return np.atleast_1d(
        (np.int64(kind) << np.int64(59))
        | (np.asarray(code, dtype=np.int64) << np.int64(27))
        | (np.asarray(minute, dtype=np.int64) & np.int64((1 << 27) - 1))
    )


@dataclass(frozen=True)
class VehicleColumns:
    """Where one vehicle's variables sit in the LP."""

    slots: IntArray
    charge: IntArray
    discharge: IntArray | None
    unmet: int


@dataclass(frozen=True)
class Taper:
    """What a lazily checked taper needs: x[t] <= slope * (full - stored - eta * earlier x)."""

    vehicle: str
    charge: IntArray
    slots: IntArray
    slope: FloatArray
    full: float
    stored: float
    efficiency: float


@dataclass
class LpModel:
    """min cost @ x  s.t.  row_lower <= A x <= row_upper,  col_lower <= x <= col_upper."""

    cost: FloatArray
    col_lower: FloatArray
    col_upper: FloatArray
    matrix: sp.csc_matrix
    row_lower: FloatArray
    row_upper: FloatArray
    col_keys: IntArray
    row_keys: IntArray
    vehicles: dict[str, VehicleColumns]
    import_cols: IntArray
    export_cols: IntArray
    peak_cols: IntArray
    slot_names: IntArray
    tapers: list[Taper] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        rows, cols = self.matrix.shape
        return int(rows), int(cols)

    def taper_violations(self, x: FloatArray, tolerance_kwh: float = 1e-6) -> list[str]:
        """The vehicles whose taper the solution `x` breaks (their rows are not in the LP)."""
        found = []
        for taper in self.tapers:
            given = x[taper.charge]
            before = taper.stored + taper.efficiency * (np.cumsum(given) - given)
            if np.any(given > taper.slope * (taper.full - before) + tolerance_kwh):
                found.append(taper.vehicle)
        return found


class _Flows:
    """Every vehicle's charge (+1) and discharge (-1) columns, with their slots and piles."""

    def __init__(self) -> None:
        self.slots: list[IntArray] = []
        self.cols: list[IntArray] = []
        self.signs: list[FloatArray] = []
        self.piles: list[list[str]] = []
        self.pile_of: list[IntArray] = []

    def add(self, slots: IntArray, cols: IntArray, sign: float, pile: str) -> None:
        self.add_many(slots, cols, [pile], np.zeros(len(cols), dtype=np.int64), sign)

    def add_many(
        self,
        slots: IntArray,
        cols: IntArray,
        piles: list[str],
        pile_of: IntArray,
        sign: float = 1.0,
    ) -> None:
        self.slots.append(slots)
        self.cols.append(cols)
        self.signs.append(np.full(len(cols), sign))
        self.piles.append(piles)
        self.pile_of.append(pile_of)

    def joined(self) -> tuple[IntArray, IntArray, FloatArray]:
        """(slot, column, sign) of every flow."""
        return np.concatenate(self.slots), np.concatenate(self.cols), np.concatenate(self.signs)

    def weighted(self, members: Mapping[str, float]) -> tuple[IntArray, IntArray, FloatArray]:
        """(slot, column, sign times share) of the flows at the piles in `members`."""
        if not self.slots:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0)
        weights = np.concatenate(
            [
                sign * np.array([members.get(p, 0.0) for p in piles])[index]
                for sign, piles, index in zip(self.signs, self.piles, self.pile_of, strict=True)
            ]
        )
        keep = weights != 0
        return np.concatenate(self.slots)[keep], np.concatenate(self.cols)[keep], weights[keep]


class _Builder:
    """Columns, rows and coefficients, collected in blocks and joined once."""

    def __init__(self) -> None:
        self.cost: list[FloatArray] = []
        self.lower: list[FloatArray] = []
        self.upper: list[FloatArray] = []
        self.col_keys: list[IntArray] = []
        self.n_cols = 0
        self.row_lower: list[FloatArray] = []
        self.row_upper: list[FloatArray] = []
        self.row_keys: list[IntArray] = []
        self.n_rows = 0
        self.entries_r: list[IntArray] = []
        self.entries_c: list[IntArray] = []
        self.entries_v: list[FloatArray] = []

    def cols(self, keys: IntArray, cost: object, lower: object, upper: object) -> IntArray:
        first, count = self.n_cols, len(keys)
        self.col_keys.append(keys)
        self.cost.append(_fill(cost, count))
        self.lower.append(_fill(lower, count))
        self.upper.append(_fill(upper, count))
        self.n_cols += count
        return np.arange(first, self.n_cols, dtype=np.int64)

    def rows(self, keys: IntArray, lower: object, upper: object) -> IntArray:
        first, count = self.n_rows, len(keys)
        self.row_keys.append(keys)
        self.row_lower.append(_fill(lower, count))
        self.row_upper.append(_fill(upper, count))
        self.n_rows += count
        return np.arange(first, self.n_rows, dtype=np.int64)

    def entries(self, rows: object, cols: object, values: object) -> None:
        r = np.asarray(rows, dtype=np.int64)
        c = np.asarray(cols, dtype=np.int64)
        self.entries_r.append(r)
        self.entries_c.append(c)
        self.entries_v.append(_fill(values, len(r)))

    def matrix(self) -> sp.csc_matrix:
        shape = (self.n_rows, self.n_cols)
        if not self.entries_r:
            return sp.csc_matrix(shape)
        # From coordinates: duplicates are summed and indices sorted on the way.
        return sp.csc_matrix(
            (
                np.concatenate(self.entries_v),
                (np.concatenate(self.entries_r), np.concatenate(self.entries_c)),
            ),
            shape=shape,
        )


def _fill(values: object, count: int) -> FloatArray:
    """`values` as a float array of `count` (a scalar is repeated)."""
    array = np.asarray(values, dtype=float)
    return np.full(count, float(array)) if array.ndim == 0 else array


def _joined(parts: Sequence[FloatArray]) -> FloatArray:
    return np.concatenate(parts) if parts else np.zeros(0)


def _joined_keys(parts: Sequence[IntArray]) -> IntArray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def tie_break_scale(problem: Problem) -> float:
    """How much the tie-breaks may weigh: a tenth of the smallest difference between two prices
    of the plan, spread over its slots (so no tie-break can outweigh a price)."""
    prices = np.unique(np.round(np.concatenate([problem.import_price, problem.export_price]), 9))
    steps = np.diff(prices)
    smallest = float(steps[steps > 1e-9].min()) if np.any(steps > 1e-9) else 1.0
    return 0.1 * smallest / max(problem.slots, 1)


def build_lp(
    problem: Problem,
    tapered: Collection[str] = (),
    *,
    chain_taper: bool = False,
) -> LpModel:
    """The LP of a checked problem.

    The vehicles in `tapered` get their taper rows (with a battery-level chain); the other
    tapering vehicles are only listed in `LpModel.tapers`, for `taper_violations` to check (the
    solver adds the ones a plan broke, and keeps them for later plans). With `chain_taper`
    every tapering vehicle gets its rows up front (the textbook form, for comparisons).
    """
    b = _Builder()
    hours = problem.hours
    slots = problem.slots
    bounds = np.asarray(problem.boundaries, dtype=float)
    # Each slot is named by the start of the tariff quarter it lies in, which stays put while a
    # re-solve a minute later shortens slot 0 and lengthens the last slot: only when a slot
    # passes do slots come and go (and the LP change shape).
    ends = bounds[:-1].copy()
    if slots > 1:
        ends[0] = bounds[1] - (bounds[2] - bounds[1])
    names = np.round(ends / 60.0).astype(np.int64)
    w = problem.weights
    scale = tie_break_scale(problem)
    earliness = min(w.earliness_per_kwh_slot, scale)
    flatness = min(w.flatness_per_kw, scale)

    export_limit = problem.limit_kw if problem.export_limit_kw is None else problem.export_limit_kw
    g_plus = b.cols(_keys(G_PLUS, 0, names), problem.import_price, 0.0, problem.limit_kw * hours)
    # A site either imports or exports at any moment. Crediting export above the import price
    # would let the LP buy and sell in the same slot for a paper profit, so within a slot it is
    # credited at most at the import price (which changes nothing for a site that only does one).
    credit = np.minimum(problem.export_price, problem.import_price)
    g_minus = b.cols(_keys(G_MINUS, 0, names), -credit, 0.0, export_limit * hours)
    balance = b.rows(
        _keys(BALANCE, 0, names), -problem.background_kw * hours, -problem.background_kw * hours
    )
    b.entries(balance, g_plus, -1.0)
    b.entries(balance, g_minus, 1.0)
    peaks = np.zeros(0, dtype=np.int64)
    if problem.demand_charge > 0:
        peaks = _demand_rows(b, problem, names, g_plus, flatness)

    vehicles: dict[str, VehicleColumns] = {}
    tapers: list[Taper] = []
    net = _Flows()
    chained = {
        v.id for v in problem.vehicles if v.v2g or (v.tapers and (chain_taper or v.id in tapered))
    }
    simple = [v for v in problem.vehicles if v.id not in chained]
    if simple:
        _simple_vehicles(b, problem, simple, names, balance, earliness, vehicles, tapers, net)
    for vehicle in problem.vehicles:
        if vehicle.id in chained:
            _chain_vehicle(b, problem, vehicle, names, balance, earliness, vehicles, net)

    for group in problem.groups:
        if not _group_binds(problem, group):
            continue
        group_rows = b.rows(_keys(GROUP, _code(group.name), names), -INF, group.limit_kw * hours)
        slots_, cols, weights = net.weighted(group.members)
        b.entries(group_rows[slots_], cols, weights)

    if problem.ramp_kw_per_min is not None and net.slots:
        _ramp_rows(b, problem, names, net)

    return LpModel(
        cost=_joined(b.cost),
        col_lower=_joined(b.lower),
        col_upper=_joined(b.upper),
        matrix=b.matrix(),
        row_lower=_joined(b.row_lower),
        row_upper=_joined(b.row_upper),
        col_keys=_joined_keys(b.col_keys),
        row_keys=_joined_keys(b.row_keys),
        vehicles=vehicles,
        import_cols=g_plus,
        export_cols=g_minus,
        peak_cols=peaks,
        slot_names=names,
        tapers=tapers,
    )


def _group_binds(problem: Problem, group: GroupLimit) -> bool:
    """False when a group's limit can never bind: without discharge the piles together draw at
    most the site limit less the site's own load (sum(x) = g+ - g- - background), and no member
    counts for more than its share of that."""
    if any(v.v2g for v in problem.vehicles) or not group.members:
        return True
    charging = problem.limit_kw - problem.background_kw
    return bool(max(group.members.values()) * float(np.max(charging)) > group.limit_kw)


def _presence(problem: Problem, vehicles: Sequence[Vehicle]) -> FloatArray:
    """Hours each vehicle is plugged in during each slot (vehicles x slots)."""
    start = problem.start
    arrival = np.array([start if v.arrival is None else max(v.arrival, start) for v in vehicles])
    departure = np.array([v.departure for v in vehicles])
    lo = np.maximum(problem.boundaries[:-1][None, :], arrival[:, None])
    hi = np.minimum(problem.boundaries[1:][None, :], departure[:, None])
    return np.maximum(hi - lo, 0.0) / 3600.0


def _taper_slope(
    problem: Problem, vehicle: Vehicle, present: FloatArray, active: IntArray
) -> tuple[FloatArray, float, float]:
    """(slope per active slot, full, stored) of a tapering vehicle's rows.

    In the constant-voltage phase the battery takes its own maximum (`battery_kw`) times
    (1 - soc) / (1 - taper), so the room left to full decays as exp(-k t), k = eta battery_kw /
    (capacity (1 - taper)); the pile's rating caps x separately. Over a slot
    that allows x[t] <= (1 - exp(-k hours)) / eta * (full - y[t-1]): exact in the taper phase,
    and loose (so harmless) below it. With a floor under the acceptance the row takes it as a
    shift of the whole line (so it stays an upper bound): full reads as a little above capacity.
    """
    assert vehicle.capacity_kwh is not None and vehicle.soc is not None
    assert vehicle.taper_soc is not None
    eta = vehicle.efficiency
    capacity = vehicle.capacity_kwh
    rate = eta * vehicle.battery_kw / (capacity * (1 - vehicle.taper_soc))
    full = capacity * (1 + problem.taper_floor * (1 - vehicle.taper_soc))
    steady = present[active].copy()
    slots = problem.slots
    if len(active) and active[-1] == slots - 1:
        # The last slot grows as the horizon moves on; its coefficient uses a whole slot.
        steady[-1] = max(
            steady[-1],
            min(problem.slot_hours, (vehicle.departure - float(problem.boundaries[-2])) / 3600),
        )
    slope = (1 - np.exp(-rate * steady)) / eta
    return slope, full, vehicle.soc * capacity


def _simple_vehicles(
    b: _Builder,
    problem: Problem,
    vehicles: Sequence[Vehicle],
    names: IntArray,
    balance: IntArray,
    earliness: float,
    found: dict[str, VehicleColumns],
    tapers: list[Taper],
    net: _Flows,
) -> None:
    """Vehicles that only charge, all at once: x per present slot, u, and an energy row each."""
    w = problem.weights
    present = _presence(problem, vehicles)
    owner, slot = np.nonzero(present > 1e-9)
    codes = np.array([_code(v.id) for v in vehicles], dtype=np.int64)
    max_kw = np.array([v.max_kw for v in vehicles])
    need = np.array([v.energy_kwh for v in vehicles])
    penalty = np.array(
        [w.expected_unmet_per_kwh if v.expected else w.unmet_per_kwh for v in vehicles]
    )
    charge = b.cols(
        _keys(CHARGE, codes[owner], names[slot]),
        earliness * slot,
        0.0,
        max_kw[owner] * present[owner, slot],
    )
    unmet = b.cols(_keys(UNMET, codes, 0), penalty, 0.0, need)
    energy = b.rows(_keys(ENERGY, codes, 0), need, need)
    b.entries(balance[slot], charge, 1.0)
    b.entries(energy[owner], charge, 1.0)
    b.entries(energy, unmet, 1.0)
    net.add_many(slot, charge, [v.pile for v in vehicles], owner)
    starts = np.searchsorted(owner, np.arange(len(vehicles)))
    stops = np.searchsorted(owner, np.arange(len(vehicles)), side="right")
    for index, vehicle in enumerate(vehicles):
        cols = charge[starts[index] : stops[index]]
        active = slot[starts[index] : stops[index]]
        found[vehicle.id] = VehicleColumns(active, cols, None, int(unmet[index]))
        if vehicle.tapers and len(active):
            slope, full, stored = _taper_slope(problem, vehicle, present[index], active)
            tapers.append(Taper(vehicle.id, cols, active, slope, full, stored, vehicle.efficiency))


def _chain_vehicle(
    b: _Builder,
    problem: Problem,
    vehicle: Vehicle,
    names: IntArray,
    balance: IntArray,
    earliness: float,
    found: dict[str, VehicleColumns],
    net: _Flows,
) -> None:
    """A vehicle with a battery-level chain: one that may discharge (V2G), or a tapering one
    written out in full."""
    w = problem.weights
    present = problem.presence(vehicle)
    active = np.flatnonzero(present > 1e-9)
    code = _code(vehicle.id)
    need = vehicle.energy_kwh
    penalty = w.expected_unmet_per_kwh if vehicle.expected else w.unmet_per_kwh
    eta = vehicle.efficiency
    unmet_scale = eta if vehicle.v2g else 1.0
    if len(active) == 0:
        unmet = int(b.cols(_keys(UNMET, code, 0), penalty, 0.0, need)[0])
        row = b.rows(_keys(ENERGY, code, 0), need, need)
        b.entries(row, [unmet], 1.0)
        found[vehicle.id] = VehicleColumns(active, np.zeros(0, dtype=np.int64), None, unmet)
        return
    slot_names = names[active]
    charge = b.cols(
        _keys(CHARGE, code, slot_names), earliness * active, 0.0, vehicle.max_kw * present[active]
    )
    b.entries(balance[active], charge, 1.0)
    net.add(active, charge, 1.0, vehicle.pile)
    discharge = None
    if vehicle.v2g:
        discharge = b.cols(
            _keys(DISCHARGE, code, slot_names),
            w.degradation_per_kwh,
            0.0,
            vehicle.max_discharge_kw * present[active],
        )
        b.entries(balance[active], discharge, -1.0)
        net.add(active, discharge, -1.0, vehicle.pile)
    if vehicle.capacity_kwh is not None and vehicle.soc is not None:
        capacity, stored = vehicle.capacity_kwh, vehicle.soc * vehicle.capacity_kwh
    else:
        capacity, stored = INF, 0.0
    target = min(capacity, stored + eta * need)
    unmet = int(b.cols(_keys(UNMET, code, 0), penalty / unmet_scale, 0.0, need * unmet_scale)[0])
    # The battery's energy after each slot: y[t] - y[t-1] - eta * x[t] + f[t] / eta = 0,
    # y[-1] = stored now.
    floor = min(vehicle.min_soc * capacity, stored) if vehicle.v2g else 0.0
    level = b.cols(_keys(LEVEL_COL, code, slot_names), 0.0, floor, capacity)
    rhs = np.zeros(len(active))
    rhs[0] = stored
    level_rows = b.rows(_keys(LEVEL, code, slot_names), rhs, rhs)
    b.entries(level_rows, level, 1.0)
    b.entries(level_rows[1:], level[:-1], -1.0)
    b.entries(level_rows, charge, -eta)
    if discharge is not None:
        b.entries(level_rows, discharge, 1.0 / eta)
    if vehicle.tapers:
        slope, full, _ = _taper_slope(problem, vehicle, present, active)
        upper = slope * full
        upper[0] = slope[0] * (full - stored)
        taper_rows = b.rows(_keys(TAPER, code, slot_names), -INF, upper)
        b.entries(taper_rows, charge, 1.0)
        b.entries(taper_rows[1:], level[:-1], slope[1:])
    if vehicle.v2g:
        row = b.rows(_keys(ENERGY, code, 0), target, INF)
        b.entries([row[0], row[0]], [level[-1], unmet], 1.0)
    else:
        row = b.rows(_keys(ENERGY, code, 0), need, need)
        b.entries(np.full(len(charge) + 1, row[0]), np.append(charge, unmet), 1.0)
    found[vehicle.id] = VehicleColumns(active, charge, discharge, unmet)


def _demand_rows(
    b: _Builder, problem: Problem, names: IntArray, g_plus: IntArray, flatness: float
) -> IntArray:
    """The demand charge: one new-peak variable per billing period (calendar month), above the
    period's peak so far, and for each billing window (a quarter hour) a row keeping the window's
    import within the peak. Returns the peak variables."""
    periods = problem.billing_periods()
    # The even-profile tie-break is a small extra price on each kW of new peak: it spreads load
    # that would set a new peak (a spike at the valley's first minute), and leaves alone load
    # below the month's peak, which may then come as early as the vehicles want it.
    peaks = b.cols(
        # The current month's variable keeps its name while the plan's start moves on.
        _keys(
            PEAK,
            0,
            np.array([0 if i == 0 else round(s / 60) for i, (s, _, _) in enumerate(periods)]),
        ),
        problem.demand_charge + flatness,
        0.0,
        INF,
    )
    starts = np.asarray(problem.boundaries[:-1], dtype=float)
    period_of = np.zeros(len(starts), dtype=np.int64)
    before = np.zeros(len(starts))
    for index, (start, _, peak_kw) in enumerate(periods):
        inside = starts >= start
        period_of[inside] = index
        before[inside] = peak_kw
    # Each slot bills in the window its start lies in. Writing the rows with the window's
    # length (not the slots') keeps the coefficients fixed from one re-solve to the next, so
    # HiGHS keeps its factorisation.
    window_s = problem.demand_window_s or problem.slot_hours * 3600.0
    window_h = window_s / 3600.0
    window_of = np.floor((starts + 1e-6) / window_s).astype(np.int64)
    _, first, slot_window = np.unique(window_of, return_index=True, return_inverse=True)
    room = before[first] * window_h
    # What the window the plan starts in imported before the plan started counts in it too.
    room[0] -= problem.window_import_kwh
    rows = b.rows(_keys(WINDOW, 0, names[first]), -INF, room)
    b.entries(rows[slot_window], g_plus, 1.0)
    b.entries(rows, peaks[period_of[first]], -window_h)
    return peaks


def _ramp_rows(
    b: _Builder,
    problem: Problem,
    names: IntArray,
    net: _Flows,
) -> None:
    """Average pile power may rise from one slot to the next by at most the ramp limit times
    the minutes between the slots' midpoints (slot 0: from the power now)."""
    assert problem.ramp_kw_per_min is not None
    slots = problem.slots
    hours = problem.hours
    mid = (problem.boundaries[:-1] + problem.boundaries[1:]) / 2
    gaps_min = np.diff(np.concatenate([[problem.boundaries[0]], mid])) / 60.0
    upper = problem.ramp_kw_per_min * gaps_min
    # Slot 0, exactly, as energy: sum(x[0]) <= hours[0] * (power now + ramp * minutes). Later
    # slots compare energies over a whole slot's length: a shorter slot 0 then looks lower-powered
    # than it is, which errs on the safe side, and the coefficients stay fixed from one re-solve
    # to the next (see the demand rows).
    upper[0] = hours[0] * (upper[0] + problem.piles_kw_now)
    rows = b.rows(_keys(RAMP, 0, names), -INF, upper)
    scale = np.full(slots, 1.0 / problem.slot_hours)
    scale[0] = 1.0
    active, cols, signs = net.joined()
    b.entries(rows[active], cols, signs * scale[active])
    later = active + 1 < slots
    b.entries(rows[active[later] + 1], cols[later], -signs[later] / problem.slot_hours)


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


def kinds(model: LpModel) -> dict[int, int]:
    """How many columns of each kind a model has (for diagnostics and tests)."""
    values, counts = np.unique(model.col_keys >> np.int64(59), return_counts=True)
    return dict(zip(values.tolist(), counts.tolist(), strict=True))
