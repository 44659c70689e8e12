"""Time-of-use tariffs: which price band applies at a given local time, and what it costs.

A `Tariff` is built (and checked) from a file in `configs/tariffs/` by `base.tarifffile`; here it is plain data with lookups. Times are aware datetimes or epoch seconds; bands
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


@dataclass(frozen=True)
class CoverageProblem:
    """One gap or overlap in a tariff's schedule, placed by index so a loader can name the field.

    `season`, `day_type` and `period` index `Tariff.seasons`, that season's `day_types` and that
    day type's `periods`; `field` is what is wrong there: "seasons" (a month no season has),
    "months", "day_types" (a weekday no day type has), "weekdays" or "periods".
    """

    field: str
    message: str
    season: int | None = None
    day_type: int | None = None
    period: int | None = None

    def where(self, tariff: Tariff) -> str:
        """The part of the tariff it is in: "tariff", "season S" or "season S, day type D"."""
        if self.season is None:
            return "tariff"
        season = tariff.seasons[self.season]
        if self.day_type is None:
            return f"season {season.name}"
        return f"season {season.name}, day type {season.day_types[self.day_type].name}"


def coverage_problems(tariff: Tariff) -> list[CoverageProblem]:
    """Every gap and overlap in the tariff's schedule; empty when each instant has one band.

    Every month must be in exactly one season, every weekday in exactly one day type of its
    season, and every minute of 00:00-24:00 in exactly one period of its day type. The tariff
    loader reports these against the file's fields; `flexcharge tariff` re-checks a `Tariff`
    however it was made.
    """
    found: list[CoverageProblem] = []
    month_owner: dict[int, str] = {}
    for s_index, season in enumerate(tariff.seasons):
        for month in sorted(season.months):
            if month in month_owner:
                found.append(
                    CoverageProblem(
                        "months", f"month {month} is also in season {month_owner[month]}", s_index
                    )
                )
            else:
                month_owner[month] = season.name
        day_owner: dict[int, str] = {}
        for d_index, day_type in enumerate(season.day_types):
            for day in sorted(day_type.weekdays):
                if day in day_owner:
                    found.append(
                        CoverageProblem(
                            "weekdays",
                            f"{WEEKDAY_NAMES[day]} is also in day type {day_owner[day]}",
                            s_index,
                            d_index,
                        )
                    )
                else:
                    day_owner[day] = day_type.name
            found.extend(_period_problems(day_type, s_index, d_index))
        for number, weekday in enumerate(WEEKDAY_NAMES):
            if number not in day_owner:
                found.append(CoverageProblem("day_types", f"no day type covers {weekday}", s_index))
    for month in range(1, 13):
        if month not in month_owner:
            found.append(CoverageProblem("seasons", f"no season covers month {month}"))
    return found


def _period_problems(day_type: DayType, s_index: int, d_index: int) -> list[CoverageProblem]:
    found: list[CoverageProblem] = []
    ordered = sorted(enumerate(day_type.periods), key=lambda item: item[1].start_min)
    reached = 0
    for index, period in ordered:
        if period.start_min < reached:
            found.append(
                CoverageProblem(
                    "periods",
                    f"overlaps the period before it (starts {hhmm(period.start_min)}, "
                    f"previous ends {hhmm(reached)})",
                    s_index,
                    d_index,
                    index,
                )
            )
        elif period.start_min > reached:
            found.append(
                CoverageProblem(
                    "periods",
                    f"no band from {hhmm(reached)} to {hhmm(period.start_min)}",
                    s_index,
                    d_index,
                )
            )
        reached = max(reached, period.end_min)
    if reached < MINUTES_PER_DAY:
        found.append(
            CoverageProblem("periods", f"no band from {hhmm(reached)} to 24:00", s_index, d_index)
        )
    return found
