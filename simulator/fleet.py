"""Vehicle visits: who arrives when, with what battery, and when they must leave.

`random_day` draws a reproducible day of truck visits for a station from its `[simulator]`
settings: arrival waves around times of day, dwell ranges, pack sizes and states of charge. The
same seed and date always give the same day.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from controller.config import SimulatorSettings


@dataclass(frozen=True)
class Visit:
    """One vehicle's stay at the station."""

    vehicle_id: str
    arrival: float
    departure: float
    capacity_kwh: float
    soc_arrival: float
    soc_target: float
    max_kw: float
    pile: str | None = None
    v2g: bool = False

    @property
    def energy_kwh(self) -> float:
        """Energy the vehicle wants (to reach its target from its arrival state of charge)."""
        return max(0.0, self.soc_target - self.soc_arrival) * self.capacity_kwh


def _day_seed(seed: int, day: date) -> int:
    digest = hashlib.sha256(f"{seed}:{day.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def random_day(settings: SimulatorSettings, day: date, zone: ZoneInfo) -> list[Visit]:
    """The visits arriving on local calendar day `day`, in arrival order."""
    rng = np.random.default_rng(_day_seed(settings.seed, day))
    midnight = datetime.combine(day, time(0), tzinfo=zone).timestamp()
    count = int(rng.poisson(settings.trucks_per_day))
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
        visits.append(
            Visit(
                vehicle_id=f"{day:%m%d}-{index + 1:02d}",
                arrival=round(arrival),
                departure=round(arrival + dwell_h * 3600),
                capacity_kwh=capacity,
                soc_arrival=round(soc_arrival, 3),
                soc_target=round(max(soc_target, soc_arrival), 3),
                max_kw=round(max_kw),
            )
        )
    visits.sort(key=lambda v: v.arrival)
    return visits


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
