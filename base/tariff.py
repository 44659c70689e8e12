"""Time-of-use tariffs: which price band applies at a given local time, and what it costs.

A `Tariff` is built (and checked) from a file in `configs/tariffs/` by the controller's config
loader; here it is plain data with lookups. Times are aware datetimes or epoch seconds; bands
follow the tariff's own time zone, so a station abroad still charges in its local valley.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

MINUTES_PER_DAY = 24 * 60


@dataclass(frozen=True)
class Period:
    """A stretch of the day, [start, end) in minutes after local midnight, in one band."""

    start_min: int
    end_min: int
    band: str


@dataclass(frozen=True)
class DayType:
    """The band schedule for some weekdays (0 = Monday) of a season."""

    name: str
    weekdays: frozenset[int]
    periods: tuple[Period, ...]

    def band_at_minute(self, minute: int) -> str:
        """The band in force `minute` minutes after midnight."""
        for period in self.periods:
            if period.start_min <= minute < period.end_min:
                return period.band
        raise LookupError(f"day type {self.name}: no band at minute {minute}")


@dataclass(frozen=True)
class Season:
    """A set of months (1-12) sharing day types."""

    name: str
    months: frozenset[int]
    day_types: tuple[DayType, ...]

    def day_type(self, weekday: int) -> DayType:
        """The day type that applies on `weekday` (0 = Monday)."""
        for day_type in self.day_types:
            if weekday in day_type.weekdays:
                return day_type
        raise LookupError(f"season {self.name}: no day type for weekday {weekday}")


@dataclass(frozen=True)
class Tariff:
    """A time-of-use import tariff with a flat export price and a monthly demand charge."""

    name: str
    timezone: str
    currency: str
    band_prices: Mapping[str, float]
    seasons: tuple[Season, ...]
    export_price: float = 0.0
    demand_charge_per_kw_month: float = 0.0

    @property
    def zone(self) -> ZoneInfo:
        """The tariff's time zone."""
        return ZoneInfo(self.timezone)

    def local(self, when: datetime | float) -> datetime:
        """`when` as an aware datetime in the tariff's zone."""
        if isinstance(when, datetime):
            if when.tzinfo is None:
                raise ValueError("tariff lookups need an aware datetime")
            return when.astimezone(self.zone)
        return datetime.fromtimestamp(when, self.zone)

    def season(self, when: datetime | float) -> Season:
        """The season in force at `when`."""
        month = self.local(when).month
        for season in self.seasons:
            if month in season.months:
                return season
        raise LookupError(f"tariff {self.name}: no season covers month {month}")

    def band_at(self, when: datetime | float) -> str:
        """The band name in force at `when`."""
        local = self.local(when)
        day_type = self.season(local).day_type(local.weekday())
        return day_type.band_at_minute(local.hour * 60 + local.minute)

    def price_at(self, when: datetime | float) -> float:
        """The import price (currency per kWh) at `when`."""
        return self.band_prices[self.band_at(when)]

    def next_change(self, when: datetime | float) -> datetime:
        """The first instant after `when` at which the band schedule may change."""
        local = self.local(when)
        minute = local.hour * 60 + local.minute
        day_type = self.season(local).day_type(local.weekday())
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        for period in day_type.periods:
            if period.end_min > minute:
                boundary = period.end_min
                break
        else:
            boundary = MINUTES_PER_DAY
        # Build the boundary as a wall time, so DST days are handled by the zone.
        day = midnight.date() + timedelta(days=boundary // MINUTES_PER_DAY)
        rest = boundary % MINUTES_PER_DAY
        return datetime(day.year, day.month, day.day, rest // 60, rest % 60, tzinfo=self.zone)

    def prices(self, times: Sequence[float]) -> list[float]:
        """Import prices at each of `times` (epoch seconds)."""
        return [self.price_at(t) for t in times]

    @property
    def spread(self) -> float:
        """Highest minus lowest band price."""
        return max(self.band_prices.values()) - min(self.band_prices.values())


WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def hhmm(minute: int) -> str:
    """A minute of the day as HH:MM (1440 is 24:00)."""
    return f"{minute // 60:02d}:{minute % 60:02d}"


def schedule_problems(tariff: Tariff) -> list[str]:
    """Every gap and overlap in the tariff's schedule; empty when each instant has one band.

    Checks that every month is in exactly one season, every weekday in exactly one day type of
    its season, and every minute of 00:00-24:00 in exactly one period of its day type. The config
    loader refuses a file that fails any of these; this re-checks a `Tariff` however it was made.
    """
    problems: list[str] = []
    for month in range(1, 13):
        owners = [s.name for s in tariff.seasons if month in s.months]
        if len(owners) != 1:
            problems.append(f"month {month}: in {len(owners)} seasons {owners}")
    for season in tariff.seasons:
        for weekday, name in enumerate(WEEKDAY_NAMES):
            owners = [d.name for d in season.day_types if weekday in d.weekdays]
            if len(owners) != 1:
                problems.append(f"season {season.name}: {name} in {len(owners)} day types {owners}")
        for day_type in season.day_types:
            cover = [0] * MINUTES_PER_DAY
            for period in day_type.periods:
                for minute in range(max(period.start_min, 0), min(period.end_min, MINUTES_PER_DAY)):
                    cover[minute] += 1
            where = f"season {season.name}, day type {day_type.name}"
            start = 0
            for minute in range(1, MINUTES_PER_DAY + 1):
                if minute == MINUTES_PER_DAY or cover[minute] != cover[start]:
                    span = f"{hhmm(start)}-{hhmm(minute)}"
                    if cover[start] == 0:
                        problems.append(f"{where}: gap {span}, no band")
                    elif cover[start] > 1:
                        problems.append(f"{where}: overlap {span}, {cover[start]} periods")
                    start = minute
    return problems
