"""Loading and checking time-of-use tariff files (`configs/tariffs/*.toml`) into `Tariff`s."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
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
from base.tariff import (
    WEEKDAY_NAMES,
    CoverageProblem,
    DayType,
    Period,
    Season,
    Tariff,
    coverage_problems,
)

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
    # Each day type's periods that parsed, and where each was in the file.
    kept: dict[tuple[int, int], list[int]] = {}
    for s_index, season in enumerate(spec.seasons):
        day_types: list[DayType] = []
        for d_index, day_type in enumerate(season.day_types):
            field_ = f"seasons[{s_index}].day_types[{d_index}].periods"
            periods: list[Period] = []
            for index, period in enumerate(day_type.periods):
                parsed = _period(
                    period,
                    spec.bands,
                    problems,
                    _where(season.name, day_type.name),
                    f"{field_}[{index}]",
                )
                if parsed is not None:
                    periods.append(parsed)
                    kept.setdefault((s_index, d_index), []).append(index)
            days = frozenset(WEEKDAY_NAMES.index(day) for day in day_type.weekdays)
            day_types.append(DayType(day_type.name, days, tuple(periods)))
        seasons.append(Season(season.name, frozenset(season.months), tuple(day_types)))
    tariff = Tariff(
        name=spec.name,
        timezone=spec.timezone,
        currency=spec.currency,
        band_prices=dict(spec.bands),
        seasons=tuple(seasons),
        export_price=spec.export_price,
        demand_charge_per_kw_month=spec.demand_charge_per_kw_month,
    )
    for gap in coverage_problems(tariff):
        problems.add(gap.where(tariff), _field(gap, kept), gap.message)
    problems.raise_if_any()
    # Periods in time order, as the schedule reads.
    return replace(
        tariff,
        seasons=tuple(
            replace(
                season,
                day_types=tuple(
                    replace(d, periods=tuple(sorted(d.periods, key=lambda p: p.start_min)))
                    for d in season.day_types
                ),
            )
            for season in tariff.seasons
        ),
    )


def _where(season: str, day_type: str | None = None) -> str:
    """How a problem names a part of a tariff file."""
    return f"season {season}" if day_type is None else f"season {season}, day type {day_type}"


def _field(gap: CoverageProblem, kept: dict[tuple[int, int], list[int]]) -> str:
    """The file's field a coverage problem is about."""
    if gap.field in ("seasons", "months", "day_types"):
        return gap.field
    if gap.field == "weekdays":
        return "weekdays"
    field_ = f"seasons[{gap.season}].day_types[{gap.day_type}].periods"
    if gap.period is None:
        return field_
    assert gap.season is not None and gap.day_type is not None
    return f"{field_}[{kept[(gap.season, gap.day_type)][gap.period]}]"


def _period(
    spec: _PeriodSpec, bands: Mapping[str, float], problems: Problems, where: str, field_: str
) -> Period | None:
    """One period of a day type, or None (and a problem) if its times are not a span."""
    try:
        start, end = minute_of_day(spec.start), minute_of_day(spec.end)
    except ValueError as exc:
        problems.add(where, field_, str(exc))
        return None
    if end <= start:
        problems.add(where, field_, f"ends ({spec.end}) before it starts ({spec.start})")
        return None
    if spec.band not in bands:
        problems.add(
            where, f"{field_}.band", f"unknown band {spec.band!r}; [bands] has {sorted(bands)}"
        )
    return Period(start, end, spec.band)
