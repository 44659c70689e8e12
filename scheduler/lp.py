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
              + earliness * sum(urgency * slot index * x) + flatness * sum(P)   tie-breaks

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
from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

from scheduler.problem import GroupLimit, Problem, Vehicle

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
INF = np.inf

# Kinds of variables and rows, in the high bits of their keys (see `_keys`).
G_PLUS, G_MINUS, PEAK, CHARGE, UNMET, DISCHARGE, LEVEL_COL = range(7)
BALANCE, WINDOW, ENERGY, LEVEL, TAPER, GROUP, RAMP, CUT = range(8, 16)


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
class Tapers:
    """What lazily checked tapers need, for every tapering vehicle without its rows:
    x <= slope * (full - stored - eta * the vehicle's earlier x), column by column.

    `cols` are the vehicles' charge columns, vehicle after vehicle in slot order; `owner`,
    `slots` and `slope` go with them; `first` is where each vehicle's columns start, and
    `vehicles`, `full`, `stored` and `efficiency` are per vehicle.
    """

    vehicles: list[str]
    cols: IntArray
    owner: IntArray
    slots: IntArray
    slope: FloatArray
    first: IntArray
    full: FloatArray
    stored: FloatArray
    efficiency: FloatArray

    def __len__(self) -> int:
        return len(self.vehicles)


NO_TAPERS = Tapers(
    [],
    np.zeros(0, dtype=np.int64),
    np.zeros(0, dtype=np.int64),
    np.zeros(0, dtype=np.int64),
    np.zeros(0),
    np.zeros(0, dtype=np.int64),
    np.zeros(0),
    np.zeros(0),
    np.zeros(0),
)


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
    tapers: Tapers = NO_TAPERS

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        rows, cols = self.matrix.shape
        return int(rows), int(cols)

    def taper_violations(self, x: FloatArray, tolerance_kwh: float = 1e-6) -> dict[str, list[int]]:
        """For every vehicle whose taper the solution `x` breaks (where the LP has no rows for
        it), the names of the slots where it does."""
        t = self.tapers
        if not len(t):
            return {}
        given = x[t.cols]
        total = np.cumsum(given)
        # What each vehicle was given before each of its slots.
        before = total - given - (total[t.first] - given[t.first])[t.owner]
        level = t.stored[t.owner] + t.efficiency[t.owner] * before
        broken = np.flatnonzero(given > t.slope * (t.full[t.owner] - level) + tolerance_kwh)
        found: dict[str, list[int]] = {}
        for k in broken.tolist():
            found.setdefault(t.vehicles[int(t.owner[k])], []).append(
                int(self.slot_names[t.slots[k]])
            )
        return found

    def cut(self, vehicle: str, name: int) -> tuple[float, IntArray, FloatArray] | None:
        """The taper row of `vehicle` in the slot named `name`, without a level chain: the
        battery's level before the slot is what it had plus what it was given since, so
        x + slope * eta * sum(its x before) <= slope * (full - stored). (upper bound, columns,
        coefficients), or None if the vehicle has no column there."""
        t = self.tapers
        try:
            o = t.vehicles.index(vehicle)
        except ValueError:
            return None
        stop = int(t.first[o + 1]) if o + 1 < len(t.first) else len(t.cols)
        where = np.flatnonzero(self.slot_names[t.slots[t.first[o] : stop]] == name)
        if len(where) == 0:
            return None
        k = int(t.first[o]) + int(where[0])
        coefficients = np.full(k - int(t.first[o]) + 1, t.slope[k] * t.efficiency[o])
        coefficients[-1] = 1.0
        upper = float(t.slope[k] * (t.full[o] - t.stored[o]))
        return upper, t.cols[t.first[o] : k + 1], coefficients


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
        rows = np.concatenate(self.entries_r)
        cols = np.concatenate(self.entries_c)
        values = np.concatenate(self.entries_v)
        # Entries by column, then row: the order of a CSC matrix's data.
        place = cols * shape[0] + rows
        order = np.argsort(place, kind="stable")
        place = place[order]
        if np.any(place[1:] == place[:-1]):
            # From coordinates: scipy sums the duplicates and sorts the indices on the way.
            return sp.csc_matrix((values, (rows, cols)), shape=shape)
        # No duplicates: the same matrix, without scipy's costlier conversion from coordinates.
        index = np.int32 if max(len(values), *shape) < 2**31 else np.int64
        indptr = np.zeros(shape[1] + 1, dtype=index)
        np.cumsum(np.bincount(cols, minlength=shape[1]), out=indptr[1:])
        return sp.csc_matrix((values[order], rows[order].astype(index), indptr), shape=shape)


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
    cuts: Sequence[tuple[str, int]] = (),
    *,
    chain_taper: bool = False,
) -> LpModel:
    """The LP of a checked problem.

    The vehicles in `tapered` get all their taper rows, with a battery-level chain; the other
    tapering vehicles get the rows of the (vehicle, slot name) pairs in `cuts` (in that order,
    each a sum over the vehicle's earlier slots), and are listed in `LpModel.tapers` for
    `taper_violations` to check. A solver adds what a plan broke and keeps it for later plans.
    With `chain_taper` every tapering vehicle gets its chain up front (the textbook form).
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
    # The earliness weight per slot may be doubled for a vehicle that leaves soon (`_urgency`).
    earliness = min(w.earliness_per_kwh_slot, scale / 2)
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
    tapers = NO_TAPERS
    net = _Flows()
    chained = {
        v.id for v in problem.vehicles if v.v2g or (v.tapers and (chain_taper or v.id in tapered))
    }
    simple = [v for v in problem.vehicles if v.id not in chained]
    if simple:
        tapers = _simple_vehicles(b, problem, simple, names, balance, earliness, vehicles, net)
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

    if cuts and len(tapers):
        _cut_rows(b, tapers, names, cuts)

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


def with_cuts(model: LpModel, cuts: Sequence[tuple[str, int]]) -> LpModel:
    """`model` with the taper rows of `cuts` after its own: the model `build_lp` makes with
    its cuts followed by these (cut rows come last, each worked out from its own pair alone),
    without building the rest again."""
    b = _Builder()
    b.n_rows, b.n_cols = model.shape
    _cut_rows(b, model.tapers, model.slot_names, cuts)
    if not b.row_keys:
        return model
    old = model.matrix.tocoo()
    b.entries_r.insert(0, old.row.astype(np.int64))
    b.entries_c.insert(0, old.col.astype(np.int64))
    b.entries_v.insert(0, old.data)
    return replace(
        model,
        matrix=b.matrix(),
        row_lower=_joined([model.row_lower, *b.row_lower]),
        row_upper=_joined([model.row_upper, *b.row_upper]),
        row_keys=_joined_keys([model.row_keys, *b.row_keys]),
    )


def _group_binds(problem: Problem, group: GroupLimit) -> bool:
    """False when a group's limit can never bind: without discharge the piles together draw at
    most the site limit less the site's own load (sum(x) = g+ - g- - background), and no member
    counts for more than its share of that."""
    if any(v.v2g for v in problem.vehicles) or not group.members:
        return True
    charging = problem.limit_kw - problem.background_kw
    return bool(max(group.members.values()) * float(np.max(charging)) > group.limit_kw)


def _urgency(reference: float, vehicle: Vehicle) -> float:
    """How much an earlier kWh weighs for a vehicle, from 1 (it leaves a day or more after
    `reference`) to 2 (it leaves at it): among plans of equal energy and cost, the one that
    charges the vehicles that leave soonest first, as earliest-deadline-first would, which is
    the one that holds up best when vehicles come or go unannounced. (`reference` is the start
    of the plan's first slot, so that the weights stay put while a slot lasts.)"""
    return 2.0 - min(max((vehicle.departure - reference) / 86400.0, 0.0), 1.0)


def _cut_rows(b: _Builder, t: Tapers, names: IntArray, cuts: Sequence[tuple[str, int]]) -> None:
    """The taper rows of the (vehicle, slot name) pairs in `cuts`, in that order, without a
    level chain: the battery's level before a slot is what it had plus what it was given since,
    so x + slope * eta * sum(its x before) <= slope * (full - stored)."""
    index = {vid: o for o, vid in enumerate(t.vehicles)}
    slot_of = {int(n): k for k, n in enumerate(names.tolist())}
    asked = [(vid, name) for vid, name in cuts if vid in index and name in slot_of]
    if not asked:
        return
    owner = np.array([index[vid] for vid, _ in asked], dtype=np.int64)
    slot = np.array([slot_of[name] for _, name in asked], dtype=np.int64)
    # Where each (vehicle, slot) column sits among the tapers' columns: they are owner after
    # owner, each in slot order, so their combined keys are sorted.
    width = len(names) + 1
    have = t.owner * width + t.slots
    key = owner * width + slot
    at = np.clip(np.searchsorted(have, key), 0, len(have) - 1)
    found = have[at] == key
    wanted = [pair for pair, ok in zip(asked, found.tolist(), strict=True) if ok]
    if not wanted:
        return
    owner, last = owner[found], at[found]
    first = t.first[owner]
    rows = b.rows(
        _keys(CUT, np.array([_code(v) for v, _ in wanted]), np.array([n for _, n in wanted])),
        -INF,
        t.slope[last] * (t.full[owner] - t.stored[owner]),
    )
    lengths = last - first + 1
    row_of = np.repeat(rows, lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    at = np.repeat(first, lengths) + offsets
    values = np.repeat(t.slope[last] * t.efficiency[owner], lengths)
    values[np.cumsum(lengths) - 1] = 1.0
    b.entries(row_of, t.cols[at], values)


def _presence(problem: Problem, vehicles: Sequence[Vehicle]) -> FloatArray:
    """Hours each vehicle is plugged in during each slot (vehicles x slots)."""
    start = problem.start
    arrival = np.array([start if v.arrival is None else max(v.arrival, start) for v in vehicles])
    departure = np.array([v.departure for v in vehicles])
    lo = np.maximum(problem.boundaries[:-1][None, :], arrival[:, None])
    hi = np.minimum(problem.boundaries[1:][None, :], departure[:, None])
    return np.maximum(hi - lo, 0.0) / 3600.0


def _slopes(
    problem: Problem,
    vehicles: Sequence[Vehicle],
    owner: IntArray,
    hours: FloatArray,
    slots: IntArray,
) -> FloatArray:
    """Each column's slope in its vehicle's taper row: the column of vehicle `owner`, present
    `hours` in slot `slots` (the vehicles all taper).

    In the constant-voltage phase the battery takes its own maximum (`battery_kw`) times
    (1 - soc) / (1 - taper), so the room left to full decays as exp(-k t), k = eta battery_kw /
    (capacity (1 - taper)); the pile's rating caps x separately. Over a slot that allows
    x[t] <= (1 - exp(-k hours)) / eta * (full - y[t-1]): exact in the taper phase, and loose
    (so harmless) below it.
    """
    eta = np.array([v.efficiency for v in vehicles])
    rate = eta * np.array(
        [
            v.battery_kw / (v.capacity_kwh * (1 - v.taper_soc))  # type: ignore[operator]
            for v in vehicles
        ]
    )
    steady = hours.copy()
    if problem.slots > 1:
        # The last slot grows as the horizon moves on; its coefficient uses a whole slot.
        whole = float(problem.whole_hours[-1])
        beyond = np.array([(v.departure - float(problem.boundaries[-2])) / 3600 for v in vehicles])
        at_end = slots == problem.slots - 1
        steady[at_end] = np.maximum(steady[at_end], np.minimum(whole, beyond[owner[at_end]]))
    return (1 - np.exp(-rate[owner] * steady)) / eta[owner]


def _full_kwh(problem: Problem, vehicle: Vehicle) -> float:
    """The battery's full energy in its taper rows: with a floor under the acceptance the rows
    take it as a shift of the whole line (so they stay an upper bound), a little above the
    capacity."""
    assert vehicle.capacity_kwh is not None and vehicle.taper_soc is not None
    return vehicle.capacity_kwh * (1 + problem.taper_floor * (1 - vehicle.taper_soc))


def _simple_vehicles(
    b: _Builder,
    problem: Problem,
    vehicles: Sequence[Vehicle],
    names: IntArray,
    balance: IntArray,
    earliness: float,
    found: dict[str, VehicleColumns],
    net: _Flows,
) -> Tapers:
    """Vehicles that only charge, all at once: x per present slot, u, and an energy row each.
    Returns what the tapering ones need for their rows to be checked lazily."""
    w = problem.weights
    present = _presence(problem, vehicles)
    owner, slot = np.nonzero(present > 1e-9)
    codes = np.array([_code(v.id) for v in vehicles], dtype=np.int64)
    max_kw = np.array([v.max_kw for v in vehicles])
    need = np.array([v.energy_kwh for v in vehicles])
    penalty = np.array(
        [w.expected_unmet_per_kwh if v.expected else w.unmet_per_kwh for v in vehicles]
    )
    reference = float(names[0]) * 60.0
    urgency = np.array([_urgency(reference, v) for v in vehicles])
    charge = b.cols(
        _keys(CHARGE, codes[owner], names[slot]),
        earliness * slot * urgency[owner],
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
        found[vehicle.id] = VehicleColumns(
            slot[starts[index] : stops[index]],
            charge[starts[index] : stops[index]],
            None,
            int(unmet[index]),
        )
    tapering = np.array([v.tapers for v in vehicles], dtype=bool)
    if not tapering.any():
        return NO_TAPERS
    which = np.flatnonzero(tapering & (stops > starts))
    picked = [vehicles[i] for i in which.tolist()]
    renumber = np.full(len(vehicles), -1, dtype=np.int64)
    renumber[which] = np.arange(len(which))
    keep = renumber[owner] >= 0
    new_owner = renumber[owner[keep]]
    kept_slots = slot[keep]
    return Tapers(
        vehicles=[v.id for v in picked],
        cols=charge[keep],
        owner=new_owner,
        slots=kept_slots,
        slope=_slopes(problem, picked, new_owner, present[owner[keep], kept_slots], kept_slots),
        first=np.searchsorted(new_owner, np.arange(len(picked))),
        full=np.array([_full_kwh(problem, v) for v in picked]),
        stored=np.array([(v.soc or 0.0) * (v.capacity_kwh or 0.0) for v in picked]),
        efficiency=np.array([v.efficiency for v in picked]),
    )


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
        _keys(CHARGE, code, slot_names),
        earliness * active * _urgency(float(names[0]) * 60.0, vehicle),
        0.0,
        vehicle.max_kw * present[active],
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
        slope = _slopes(
            problem, [vehicle], np.zeros(len(active), dtype=np.int64), present[active], active
        )
        full = _full_kwh(problem, vehicle)
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
    window_s = problem.demand_window_s or float(problem.whole_hours[0]) * 3600.0
    window_h = window_s / 3600.0
    whole = problem.whole_hours
    # A slot longer than a window (the far part of a coarsened plan) keeps its average within
    # the peak: its own window, of its own length.
    long = whole > window_h + 1e-9
    window_of = np.floor((starts + 1e-6) / window_s).astype(np.int64)
    window_of[long] = -1 - np.flatnonzero(long)
    _, first, slot_window = np.unique(window_of, return_index=True, return_inverse=True)
    length = np.where(long[first], whole[first], window_h)
    room = before[first] * length
    # What the window the plan starts in imported before the plan started counts in it too.
    room[np.argmin(first)] -= problem.window_import_kwh
    rows = b.rows(_keys(WINDOW, 0, names[first]), -INF, room)
    b.entries(rows[slot_window], g_plus, 1.0)
    b.entries(rows, peaks[period_of[first]], -length)
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
    # slots compare energies over a whole slot's length (`whole_hours`): a shorter slot 0 then
    # looks lower-powered than it is, which errs on the safe side, and the coefficients stay fixed
    # from one re-solve to the next (see the demand rows).
    upper[0] = hours[0] * (upper[0] + problem.piles_kw_now)
    rows = b.rows(_keys(RAMP, 0, names), -INF, upper)
    whole = problem.whole_hours
    scale = 1.0 / whole
    scale[0] = 1.0
    active, cols, signs = net.joined()
    b.entries(rows[active], cols, signs * scale[active])
    later = active + 1 < slots
    b.entries(rows[active[later] + 1], cols[later], -signs[later] / whole[active[later]])


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
