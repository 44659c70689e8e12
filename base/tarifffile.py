"""Loading and checking time-of-use tariff files (`configs/tariffs/*.toml`) into `Tariff`s."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
)

from base.loading import (
    ConfigError,
    Problems,
    Strict,
    minute_of_day,
    read_toml,
    zone_name,
)
from base.tariff import MINUTES_PER_DAY, WEEKDAY_NAMES, DayType, Period, Season, Tariff, hhmm

# --------------------------------------------------------------------------- tariffs


class _PeriodSpec(Strict):
    start: str
    end: str
    band: str = Field(min_length=1)


class _DayTypeSpec(Strict):
    name: str = Field(min_length=1)
    weekdays: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)
    periods: list[_PeriodSpec] = Field(min_length=1)


class _SeasonSpec(Strict):
    name: str = Field(min_length=1)
    months: list[Annotated[int, Field(ge=1, le=12)]] = Field(min_length=1)
    day_types: list[_DayTypeSpec] = Field(min_length=1)


class _TariffFile(Strict):
    name: str = Field(min_length=1)
    currency: str = Field(min_length=1)
    timezone: str
    export_price: float = Field(ge=0, allow_inf_nan=False)
    demand_charge_per_kw_month: float = Field(ge=0, allow_inf_nan=False)
    bands: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(min_length=1)
    seasons: list[_SeasonSpec] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return zone_name(value)


def load_tariff(path: Path) -> Tariff:
    """Load and check a time-of-use tariff file."""
    path = Path(path)
    problems = Problems(path)
    raw = read_toml(path, problems)
    try:
        spec = _TariffFile.model_validate(raw)
    except ValidationError as err:
        problems.add_validation(err, "tariff")
        raise ConfigError(problems.items) from None
    seasons: list[Season] = []
    month_owner: dict[int, str] = {}
    for s_index, season in enumerate(spec.seasons):
        where = f"season {season.name}"
        for month in season.months:
            if month in month_owner:
                problems.add(
                    where, "months", f"month {month} is also in season {month_owner[month]}"
                )
            month_owner[month] = season.name
        day_owner: dict[int, str] = {}
        day_types: list[DayType] = []
        for d_index, day_type in enumerate(season.day_types):
            dwhere = f"{where}, day type {day_type.name}"
            days: set[int] = set()
            for day in day_type.weekdays:
                number = WEEKDAY_NAMES.index(day)
                if number in day_owner:
                    problems.add(
                        dwhere, "weekdays", f"{day} is also in day type {day_owner[number]}"
                    )
                day_owner[number] = day_type.name
                days.add(number)
            periods = _check_periods(
                day_type.periods,
                spec.bands,
                problems,
                dwhere,
                f"seasons[{s_index}].day_types[{d_index}].periods",
            )
            day_types.append(DayType(day_type.name, frozenset(days), tuple(periods)))
        for number, weekday in enumerate(WEEKDAY_NAMES):
            if number not in day_owner:
                problems.add(where, "day_types", f"no day type covers {weekday}")
        seasons.append(Season(season.name, frozenset(season.months), tuple(day_types)))
    for month in range(1, 13):
        if month not in month_owner:
            problems.add("tariff", "seasons", f"no season covers month {month}")
    problems.raise_if_any()
    return Tariff(
        name=spec.name,
        timezone=spec.timezone,
        currency=spec.currency,
        band_prices=dict(spec.bands),
        seasons=tuple(seasons),
        export_price=spec.export_price,
        demand_charge_per_kw_month=spec.demand_charge_per_kw_month,
    )


def _check_periods(
    specs: list[_PeriodSpec],
    bands: Mapping[str, float],
    problems: Problems,
    where: str,
    field_: str,
) -> list[Period]:
    periods: list[tuple[int, Period]] = []
    for index, spec in enumerate(specs):
        try:
            start, end = minute_of_day(spec.start), minute_of_day(spec.end)
        except ValueError as exc:
            problems.add(where, f"{field_}[{index}]", str(exc))
            continue
        if end <= start:
            problems.add(
                where, f"{field_}[{index}]", f"ends ({spec.end}) before it starts ({spec.start})"
            )
            continue
        if spec.band not in bands:
            problems.add(
                where,
                f"{field_}[{index}].band",
                f"unknown band {spec.band!r}; [bands] has {sorted(bands)}",
            )
        periods.append((index, Period(start, end, spec.band)))
    periods.sort(key=lambda item: item[1].start_min)
    reached = 0
    for index, period in periods:
        if period.start_min < reached:
            problems.add(
                where,
                f"{field_}[{index}]",
                f"overlaps the period before it (starts {hhmm(period.start_min)}, previous ends {hhmm(reached)})",
            )
        elif period.start_min > reached:
            problems.add(where, field_, f"no band from {hhmm(reached)} to {hhmm(period.start_min)}")
        reached = max(reached, period.end_min)
    if periods and reached < MINUTES_PER_DAY:
        problems.add(where, field_, f"no band from {hhmm(reached)} to 24:00")
    return [p for _, p in periods]
