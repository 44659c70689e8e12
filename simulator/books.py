"""The plant's books: what the site drew over each piece of a step, exactly.

A step is cut into pieces at arrivals, departures and whatever times its caller names (tariff band
boundaries), so that each piece has one price. Within a piece every pile's power is piecewise
linear (or convex: a battery's exponential taper) between its breakpoints (`simulator.charging`),
so the site's power is too, between the union of the breakpoints: its highest value and its
energy above a limit are found at and between them, not at the step's end. A vehicle that fills
up or leaves mid-step is in the books for exactly the time it drew power.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from base.tariff import Tariff
from simulator.scenario import Series


@dataclass(frozen=True)
class Piece:
    """The site over one piece of a step (kWh and kW; the limit is the one the step answers to).

    `piles_kwh` is the energy into vehicles (net of discharge), `background_kwh` the site's own
    load; `import_kwh - export_kwh` is their sum. `peak_kw` is the highest site power within the
    piece, `over_kwh` the energy above the limit and `over_s` the time spent above it.
    """

    start: float
    end: float
    piles_kwh: float
    background_kwh: float
    import_kwh: float
    export_kwh: float
    peak_kw: float
    over_kwh: float
    over_s: float
    group_over_kwh: float = 0.0

    @property
    def seconds(self) -> float:
        """The piece's length."""
        return self.end - self.start


@dataclass
class Profile:
    """The piles' total power over a piece: on each interval between consecutive union
    breakpoints it moves linearly from `rise[j]` (just after `times[j]`) to `fall[j]` (just before
    `times[j + 1]`)."""

    times: list[float]
    rise: list[float]
    fall: list[float]


def profile(
    traces: Sequence[tuple[Sequence[float], Sequence[float]]], t0: float, t1: float
) -> Profile:
    """The sum of piecewise-linear traces (times, kW), each from `t0` to `t1`.

    A trace may jump (two breakpoints at one time): the value on its left holds up to the jump,
    the one on its right after it.
    """
    offset = 0.0
    moving: list[tuple[Sequence[float], Sequence[float]]] = []
    union: set[float] = {t0, t1}
    for times, kw in traces:
        # The value right after t0 is that of the last breakpoint at t0.
        first = 0
        while first + 1 < len(times) and times[first + 1] <= t0:
            first += 1
        level = kw[first]
        rest = kw[first:] if first else kw
        # Flat from t0 on (`count` compares in C; a trace's powers are numbers, never NaN).
        if rest.count(level) == len(rest):
            offset += level
            continue
        moving.append((times[first:], kw[first:]))
        union.update(t for t in times[first:] if t0 < t < t1)
    points = sorted(union)
    count = len(points) - 1
    rise = [offset] * count
    fall = [offset] * count
    for times, kw in moving:
        i = 0
        last = len(times) - 1
        for j in range(count):
            lo, hi = points[j], points[j + 1]
            # The trace's segment covering [lo, hi]: it starts at or before lo and ends after it.
            while i < last and times[i + 1] <= lo:
                i += 1
            if i >= last:
                rise[j] += kw[last]
                fall[j] += kw[last]
                continue
            ta, tb, va, vb = times[i], times[i + 1], kw[i], kw[i + 1]
            slope = (vb - va) / (tb - ta)
            rise[j] += va + slope * (lo - ta)
            fall[j] += va + slope * (hi - ta)
    return Profile(points, rise, fall)


@dataclass(frozen=True)
class Excess:
    """The site's power against a level over a piece."""

    peak_kw: float
    area_kwh: float
    seconds: float
    longest_s: float
    run_s: float


def excess(shape: Profile, base_kw: float, level_kw: float, run_s: float = 0.0) -> Excess:
    """The highest power of the piles' `shape` plus a constant `base_kw`, the energy and time above
    `level_kw`, the longest stretch above it (counting `run_s` seconds above it just before the
    piece), and how long it has been above it at the end (0 if it is not)."""
    peak = -float("inf")
    area = seconds = longest = 0.0
    times = shape.times
    for j in range(len(times) - 1):
        a = shape.rise[j] + base_kw
        b = shape.fall[j] + base_kw
        h = times[j + 1] - times[j]
        peak = max(peak, a, b)
        if a >= level_kw and b >= level_kw:
            area += ((a + b) / 2 - level_kw) * h
            seconds += h
            run_s += h
        elif a > level_kw or b > level_kw:
            hi, lo = max(a, b), min(a, b)
            above = h * (hi - level_kw) / (hi - lo)
            area += (hi - level_kw) * above / 2
            seconds += above
            run_s = run_s + above if a > b else above
        else:
            run_s = 0.0
        longest = max(longest, run_s)
        if b < level_kw:
            run_s = 0.0
    return Excess(peak, area / 3600.0, seconds, longest, run_s)


class Integral:
    """Exact integrals of a `Series` (linear between its points, or a step), in kWh."""

    def __init__(self, series: Series) -> None:
        self.series = series
        t, kw = series.times, series.kw
        if series.kind == "step":
            pieces = kw[:-1] * np.diff(t)
        else:
            pieces = (kw[:-1] + kw[1:]) / 2 * np.diff(t)
        self.cumulative = np.concatenate([[0.0], np.cumsum(pieces)]) / 3600.0

    def upto(self, when: float) -> float:
        """The integral from the series' first point to `when` (constant outside the series)."""
        t, kw = self.series.times, self.series.kw
        if when <= t[0]:
            return float(kw[0] * (when - t[0]) / 3600.0)
        if when >= t[-1]:
            return float(self.cumulative[-1] + kw[-1] * (when - t[-1]) / 3600.0)
        i = int(np.searchsorted(t, when, side="right")) - 1
        h = when - t[i]
        if self.series.kind == "step":
            part = kw[i] * h
        else:
            slope = (kw[i + 1] - kw[i]) / (t[i + 1] - t[i])
            part = (kw[i] + slope * h / 2) * h
        return float(self.cumulative[i] + part / 3600.0)

    def between(self, t0: float, t1: float) -> float:
        """kWh from `t0` to `t1`."""
        return self.upto(t1) - self.upto(t0)


_COLUMNS = (
    "start",
    "end",
    "piles_kwh",
    "background_kwh",
    "import_kwh",
    "export_kwh",
    "peak_kw",
    "over_kwh",
    "group_over_kwh",
)


class Ledger:
    """Pieces added step by step, kept as columns of machine floats (a month of ten-second steps
    is a quarter of a million of them); `books()` hands them over."""

    def __init__(self) -> None:
        self._steps = array("q")
        self._columns = {name: array("d") for name in _COLUMNS}

    def add(self, step: int, pieces: Sequence[Piece]) -> None:
        """Book the pieces of step `step`."""
        for piece in pieces:
            self._steps.append(step)
            for name, column in self._columns.items():
                column.append(getattr(piece, name))

    def books(self) -> Books:
        """Everything booked so far."""
        return Books(
            step=np.frombuffer(self._steps, dtype=np.int64).copy(),
            **{
                name: np.frombuffer(c, dtype=np.float64).copy() for name, c in self._columns.items()
            },
        )


@dataclass(frozen=True)
class Books:
    """A run's pieces as arrays, with the step each belongs to: what billing and metrics use."""

    start: NDArray[np.float64]
    end: NDArray[np.float64]
    step: NDArray[np.int64]
    piles_kwh: NDArray[np.float64]
    background_kwh: NDArray[np.float64]
    import_kwh: NDArray[np.float64]
    export_kwh: NDArray[np.float64]
    peak_kw: NDArray[np.float64]
    over_kwh: NDArray[np.float64]
    group_over_kwh: NDArray[np.float64]

    @classmethod
    def of(cls, pieces: Sequence[tuple[int, Piece]]) -> Books:
        """Books from (step index, piece) pairs in time order."""

        def column(name: str) -> NDArray[np.float64]:
            return np.fromiter((getattr(p, name) for _, p in pieces), float, len(pieces))

        return cls(
            start=column("start"),
            end=column("end"),
            step=np.fromiter((k for k, _ in pieces), np.int64, len(pieces)),
            piles_kwh=column("piles_kwh"),
            background_kwh=column("background_kwh"),
            import_kwh=column("import_kwh"),
            export_kwh=column("export_kwh"),
            peak_kw=column("peak_kw"),
            over_kwh=column("over_kwh"),
            group_over_kwh=column("group_over_kwh"),
        )

    def since(self, when: float, first_step: int) -> Books:
        """The pieces from `when` on, their steps counted from `first_step`."""
        keep = self.start >= when - 1e-9
        kept = {name: getattr(self, name)[keep] for name in self.__dataclass_fields__}
        kept["step"] = kept["step"] - first_step
        return Books(**kept)

    def per_step(self, values: NDArray[np.float64], steps: int) -> NDArray[np.float64]:
        """`values` (one per piece) summed over each step."""
        return np.bincount(self.step, weights=values, minlength=steps)[:steps].astype(float)

    def peak_per_step(self, steps: int) -> NDArray[np.float64]:
        """The highest site power within each step."""
        peaks = np.full(steps, -np.inf)
        np.maximum.at(peaks, self.step, self.peak_kw)
        return peaks

    def prices(self, tariff: Tariff) -> NDArray[np.float64]:
        """The import price in force during each piece."""
        return np.fromiter((tariff.price_at(float(t)) for t in self.start), float, len(self.start))

    def bands(self, tariff: Tariff) -> list[str]:
        """The band in force during each piece."""
        return [tariff.band_at(float(t)) for t in self.start]

    def split_for(self, tariff: Tariff) -> bool:
        """True if no piece spans a change of `tariff`'s bands (so it bills each piece at one price)."""
        return all(
            tariff.band_at(float(lo)) == tariff.band_at(float(max(lo, hi - 1e-3)))
            for lo, hi in zip(self.start, self.end, strict=True)
        )

    def energy_cost(self, tariff: Tariff) -> tuple[float, float]:
        """(the site's energy bill, the bill of the site's own load alone) under `tariff`."""
        prices = self.prices(tariff)
        with_vehicles = float(
            prices @ self.import_kwh - tariff.export_price * self.export_kwh.sum()
        )
        alone = float(prices @ np.maximum(self.background_kwh, 0.0))
        return with_vehicles, alone
