"""Vehicle visits: who arrives when, with what battery, and when they must leave.

`random_day` draws a reproducible day of truck visits for a station from its `[simulator]`
settings: arrival waves around times of day, dwell ranges, pack sizes and states of charge. The
same seed and date always give the same day.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from base.stationsettings import SimulatorSettings


@dataclass(frozen=True)
class Visit:
    """One vehicle's stay at the station: when, how much energy it wants, and its battery.

    `energy_kwh` is what the driver wants delivered (measured at the pile). The battery is
    optional: without it the vehicle is taken to arrive at 20 % and leave at 90 % of a pack sized
    for that energy. `stated_energy_kwh` and `stated_departure` (epoch seconds) are what the
    driver told the system on arrival, when known (ACN-Data's claimed sessions); they may differ
    from `energy_kwh` and `departure`, which are what happened.
    """

    vehicle_id: str
    arrival: float
    departure: float
    energy_kwh: float
    max_kw: float
    capacity_kwh: float | None = None
    soc_arrival: float | None = None
    pile: str | None = None
    v2g: bool = False
    stated_energy_kwh: float | None = None
    stated_departure: float | None = None

    @property
    def battery(self) -> tuple[float, float, float]:
        """(capacity kWh, state of charge on arrival, state of charge wanted), filled in if unknown."""
        energy = max(self.energy_kwh, 0.0)
        if self.capacity_kwh is None:
            capacity = max(energy / 0.7, 1.0)
            soc = 0.2 if self.soc_arrival is None else self.soc_arrival
        else:
            capacity = self.capacity_kwh
            soc = (
                max(0.0, 0.9 - energy / capacity) if self.soc_arrival is None else self.soc_arrival
            )
        return capacity, soc, min(1.0, soc + energy / capacity)


def _day_seed(seed: int, day: date) -> int:
    digest = hashlib.sha256(f"{seed}:{day.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def random_day(settings: SimulatorSettings, day: date, zone: ZoneInfo) -> list[Visit]:
    """The visits arriving on local calendar day `day`, in arrival order."""
    rng = np.random.default_rng(_day_seed(settings.seed, day))
    midnight = datetime.combine(day, time(0), tzinfo=zone).timestamp()
    count = int(rng.poisson(settings.vehicles_per_day))
    shares = np.array([wave.share for wave in settings.arrivals], dtype=float)
    waves = rng.choice(len(settings.arrivals), size=count, p=shares / shares.sum())
    visits: list[Visit] = []
    for index, wave_index in enumerate(waves):
        wave = settings.arrivals[int(wave_index)]
        arrival_h = float(np.clip(rng.normal(wave.mean_h, wave.spread_h), 0.0, 23.99))
        dwell_h = float(rng.uniform(*wave.dwell_h))
        capacity = float(rng.choice(settings.battery_kwh))
        soc_arrival = float(rng.uniform(*settings.soc_arrival))
        soc_target = float(rng.uniform(*settings.soc_target))
        max_kw = float(rng.uniform(*settings.vehicle_max_kw))
        arrival = midnight + arrival_h * 3600
        soc_arrival = round(soc_arrival, 3)
        room = (1.0 - soc_arrival) * capacity
        visits.append(
            Visit(
                vehicle_id=f"{day:%m%d}-{index + 1:02d}",
                arrival=round(arrival),
                departure=round(arrival + dwell_h * 3600),
                energy_kwh=_tenths_that_fit(max(soc_target - soc_arrival, 0.0) * capacity, room),
                max_kw=round(max_kw),
                capacity_kwh=capacity,
                soc_arrival=soc_arrival,
            )
        )
    visits.sort(key=lambda v: v.arrival)
    return visits


def _tenths_that_fit(energy_kwh: float, room_kwh: float) -> float:
    # Rounded to the nearest 0.1 kWh, a pack filled to 100 % would ask for more than it holds,
    # and the sessions loader rightly refuses that row.
    nearest = round(energy_kwh, 1)
    return nearest if nearest <= room_kwh else math.floor(room_kwh * 10) / 10


def random_days(
    settings: SimulatorSettings, start: float, end: float, zone: ZoneInfo
) -> list[Visit]:
    """Visits arriving in [start, end), including those of the day before still present."""
    first = datetime.fromtimestamp(start, zone).date() - timedelta(days=1)
    last = datetime.fromtimestamp(end, zone).date()
    visits: list[Visit] = []
    day = first
    while day <= last:
        visits.extend(
            v for v in random_day(settings, day, zone) if v.departure > start and v.arrival < end
        )
        day += timedelta(days=1)
    return sorted(visits, key=lambda v: v.arrival)


def assign_piles(
    visits: Iterable[Visit], piles: Mapping[str, float]
) -> tuple[list[Visit], list[Visit]]:
    """Which pile each visit gets, and when it plugs in, decided before the simulation runs.

    The rule is the plant's: a vehicle takes its named pile, or else the fastest free one
    (`piles` maps pile id to rating); when none is free it waits, first come first served, and
    gives up at its departure. Departures free piles before arrivals take them. Returns the
    visits that get a pile (with `pile` set and `arrival` moved to when they plug in) and those
    that leave without one. Knowing this in advance lets a perfect-knowledge plan and the plant
    agree on where every vehicle is.
    """
    order = sorted(visits, key=lambda v: v.arrival)
    busy_until: dict[str, float] = dict.fromkeys(piles, -math.inf)
    served: list[Visit] = []
    unserved: list[Visit] = []
    queue: list[Visit] = []
    events = sorted({v.arrival for v in order} | {v.departure for v in order})
    pending = iter(order)
    upcoming = next(pending, None)
    for now in events:
        while upcoming is not None and upcoming.arrival <= now:
            queue.append(upcoming)
            upcoming = next(pending, None)
        waiting: list[Visit] = []
        for visit in queue:
            if visit.departure <= now:
                unserved.append(visit)
                continue
            free = [p for p, until in busy_until.items() if until <= now]
            if visit.pile is not None:
                choice = visit.pile if visit.pile in free else None
            else:
                # max() keeps the first of equals, as the plant does.
                choice = max(free, key=lambda p: piles[p]) if free else None
            if choice is None:
                waiting.append(visit)
                continue
            busy_until[choice] = visit.departure
            served.append(replace(visit, pile=choice, arrival=max(visit.arrival, now)))
        queue = waiting
    unserved.extend(queue)
    return served, unserved
