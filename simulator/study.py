"""A tariff study across stations: the study file, its stations and variants, and its tasks.

A study file (TOML) names the tariffs, the policies, the step and plan period, the period
(`days` from a `start` date, or whole `months`) and the stations: each a station file with its
session source (a sessions CSV or ACN-Data file, or `generated`: the station's own seeded
generator over the period), optionally with a CSV of variants of it (transformer rating, number
and rating of piles, share of V2G trucks, scale of the site's own load). `load_study` checks all
of it, every station and variant through the station loader, and raises one `ConfigError` with
every problem, each naming its file and field.

Each (station, variant, period, tariff, policy) is one `Task`; `Study.task_input` gives what a
worker needs to run it (the scenario, self-contained), and `run_task` runs it and returns its
row of results. `uncontrolled` always runs: it is the baseline every saving is measured against.
"""

from __future__ import annotations

import calendar
import copy
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import Field, ValidationError, field_validator, model_validator

from base.config import Station, load_station
from base.loading import (
    ConfigError,
    ConfigProblem,
    Problems,
    Row,
    Strict,
    read_number,
    read_table,
    read_text,
    read_toml,
)
from control.decider import Policy
from simulator.fast import Scenario, simulate
from simulator.fleet import Visit, random_days
from simulator.scenario import load_sessions
from simulator.whatif import BASELINE, TariffCase, load_cases

GENERATED = "generated"
VARIANT_COLUMNS = ("variant", "rating_kva", "piles", "pile_kw", "v2g_share", "background_scale")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")


def _name(value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(
            f"{value!r}: letters, digits, '-', '_' and '.' only (it names files and rows)"
        )
    return value


class StudySettings(Strict):
    """[study]: what every station runs under."""

    name: str = Field(min_length=1)
    tariffs: list[str] = Field(min_length=1)
    policies: list[str] = Field(default_factory=lambda: ["mpc"], min_length=1)
    step_s: float = Field(default=300.0, gt=0, le=3600, allow_inf_nan=False)
    plan_period_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)

    @field_validator("policies")
    @classmethod
    def _policies(cls, values: list[str]) -> list[str]:
        known = [p.value for p in Policy]
        for value in values:
            if value not in known:
                raise ValueError(f"unknown policy {value!r}; known: {known}")
        return list(dict.fromkeys(values))


class PeriodSettings(Strict):
    """[period]: `days` days from `start` (one period), or each of `months` (one period each)."""

    start: date | None = None
    days: int | None = Field(default=None, ge=1, le=366)
    months: list[str] | None = Field(default=None, min_length=1)

    @field_validator("months")
    @classmethod
    def _months(cls, values: list[str] | None) -> list[str] | None:
        for value in values or []:
            match = _MONTH.match(value)
            if not match or not 1 <= int(match.group(2)) <= 12:
                raise ValueError(f"{value!r} is not a month YYYY-MM")
        return values

    @model_validator(mode="after")
    def _one_kind(self) -> PeriodSettings:
        if self.months is not None and (self.start is not None or self.days is not None):
            raise ValueError("give either months, or start and days, not both")
        if self.months is None and (self.start is None or self.days is None):
            raise ValueError("give start and days (e.g. start = 2026-11-02, days = 7), or months")
        return self


class StationEntry(Strict):
    """[[stations]]: a station file, its session source, and optionally its variants."""

    name: str
    station: str = Field(min_length=1)
    sessions: str = Field(min_length=1)
    variants: str | None = None

    @field_validator("name")
    @classmethod
    def _plain(cls, value: str) -> str:
        return _name(value)


class StudyFile(Strict):
    """The study file's document."""

    study: StudySettings
    period: PeriodSettings
    stations: list[StationEntry] = Field(min_length=1)


@dataclass(frozen=True)
class Period:
    """The days a task covers: visits arriving from `first` (a local date) for `days` days."""

    label: str
    first: date
    days: int

    def bounds(self, zone: ZoneInfo) -> tuple[float, float]:
        """Epoch seconds of the period's first local midnight and of the one after it."""
        start = datetime.combine(self.first, datetime.min.time(), tzinfo=zone)
        end = datetime.combine(
            self.first + timedelta(days=self.days), datetime.min.time(), tzinfo=zone
        )
        return start.timestamp(), end.timestamp()


@dataclass(frozen=True)
class Site:
    """One station variant of the study, and where its sessions come from."""

    station: str
    variant: str
    model: Station
    visits: tuple[Visit, ...] | None  # from a sessions file; None: generated
    v2g_share: float = 0.0


@dataclass(frozen=True, order=True)
class Task:
    """One run of the study: a station variant over a period under a tariff and a policy."""

    station: str
    variant: str
    period: str
    tariff: str
    policy: str

    @property
    def id(self) -> str:
        """A name for its run file (every part is a plain name)."""
        parts = (self.station, self.variant, self.period, self.tariff, self.policy)
        return "~".join(re.sub(r"[^A-Za-z0-9_.+-]", "_", part) for part in parts)


@dataclass(frozen=True)
class TaskInput:
    """Everything a worker needs to run a task, on any machine."""

    task: Task
    scenario: Scenario
    step_s: float
    plan_period_s: float


@dataclass(frozen=True)
class Study:
    """A checked study: its settings, tariffs, periods and station variants."""

    path: Path
    name: str
    cases: tuple[TariffCase, ...]
    policies: tuple[str, ...]
    step_s: float
    plan_period_s: float
    periods: tuple[Period, ...]
    sites: tuple[Site, ...]

    @property
    def currency(self) -> str:
        """The currency every cost is in."""
        return self.cases[0].tariff.currency

    def tasks(self) -> list[Task]:
        """Every task, in the order of the results' rows (the baseline first of each)."""
        return [
            Task(site.station, site.variant, period.label, case.label, policy)
            for site in self.sites
            for period in self.periods
            for case in self.cases
            for policy in self.policies
        ]

    def site(self, task: Task) -> Site:
        """The station variant a task runs."""
        for site in self.sites:
            if (site.station, site.variant) == (task.station, task.variant):
                return site
        raise KeyError(task)

    def task_input(self, task: Task) -> TaskInput:
        """The scenario of `task` and its settings: the visits arriving in its period (from the
        sessions file, or generated from the station's seed), under its tariff."""
        site = self.site(task)
        period = next(p for p in self.periods if p.label == task.period)
        case = next(c for c in self.cases if c.label == task.tariff)
        visits = _period_visits(site, period)
        start, _ = period.bounds(ZoneInfo(site.model.info.timezone))
        scenario = Scenario.around(
            site.model,
            visits,
            tariff=case.tariff,
            name=f"{site.station}.{site.variant}.{period.label}",
            start=start,
        )
        return TaskInput(task, scenario, self.step_s, self.plan_period_s)

    def with_days(self, days: int) -> Study:
        """The same study over `days` days from its first period's first day (a quick look)."""
        first = self.periods[0].first
        period = Period(f"{first.isoformat()}+{days}d", first, days)
        return replace(self, periods=(period,))


def _period_visits(site: Site, period: Period) -> list[Visit]:
    zone = ZoneInfo(site.model.info.timezone)
    start, end = period.bounds(zone)
    if site.visits is None:
        assert site.model.simulator is not None  # checked by load_study
        pool = random_days(site.model.simulator, start, end, zone)
    else:
        pool = list(site.visits)
    visits = [v for v in pool if start <= v.arrival < end]
    return with_v2g_share(visits, site.v2g_share)


def with_v2g_share(visits: Sequence[Visit], share: float) -> list[Visit]:
    """`visits` with `share` of them (spread evenly in arrival order) V2G trucks: the k-th visit
    is one when the running count `k x share` passes a whole number (the same on every run)."""
    if share <= 0:
        return list(visits)
    marked = []
    for k, visit in enumerate(visits):
        v2g = math.floor((k + 1) * share) > math.floor(k * share)
        marked.append(replace(visit, v2g=True) if v2g else visit)
    return marked


def load_study(path: Path | str) -> Study:
    """Load and check a study file, its tariffs, stations, variants and sessions files.

    Raises `ConfigError` listing every problem found in any of them.
    """
    path = Path(path)
    problems = Problems(path)
    raw = read_toml(path, problems)
    try:
        spec = StudyFile.model_validate(raw)
    except ValidationError as err:
        problems.add_validation(err, None)
        raise ConfigError(problems.items) from None
    here = path.parent
    tariff_paths = [here / t for t in spec.study.tariffs]
    cases = problems.gather(lambda: load_cases(tariff_paths))
    periods = _periods(spec.period)
    sites: list[Site] = []
    names: set[str] = set()
    for index, entry in enumerate(spec.stations):
        where = f"stations[{index}] ({entry.name})"
        if entry.name in names:
            problems.add(where, "name", "given to two stations")
            continue
        names.add(entry.name)
        sites.extend(_entry_sites(entry, where, here, periods, problems))
    if cases:
        zones = {site.model.info.timezone for site in sites}
        for case in cases:
            if zones and case.tariff.timezone not in zones:
                problems.add(
                    None,
                    "study.tariffs",
                    f"{case.path}: its time zone {case.tariff.timezone} is no station's "
                    f"({', '.join(sorted(zones))}): its bands would fall at the wrong hours",
                )
    problems.raise_if_any()
    assert cases is not None
    policies = [BASELINE, *(p for p in spec.study.policies if p != BASELINE)]
    return Study(
        path,
        spec.study.name,
        tuple(cases),
        tuple(policies),
        spec.study.step_s,
        spec.study.plan_period_s,
        periods,
        tuple(sites),
    )


def _periods(spec: PeriodSettings) -> tuple[Period, ...]:
    if spec.months is None:
        assert spec.start is not None and spec.days is not None
        return (Period(f"{spec.start.isoformat()}+{spec.days}d", spec.start, spec.days),)
    periods = []
    for text in dict.fromkeys(spec.months):
        year, month = int(text[:4]), int(text[5:])
        periods.append(Period(text, date(year, month, 1), calendar.monthrange(year, month)[1]))
    return tuple(periods)


def _entry_sites(
    entry: StationEntry,
    where: str,
    here: Path,
    periods: Sequence[Period],
    problems: Problems,
) -> list[Site]:
    """The station variants of one [[stations]] entry (none, with problems added, if bad)."""
    station_path = here / entry.station
    template = problems.referenced(
        lambda: load_station(station_path),
        where,
        "station",
        f"the station {entry.station!r} ({station_path})",
    )
    if template is None:
        return []
    visits: tuple[Visit, ...] | None = None
    if entry.sessions == GENERATED:
        if template.simulator is None:
            problems.add(
                where,
                "sessions",
                f"'{GENERATED}' needs the station's [simulator] section, which "
                f"{station_path} lacks; name a sessions file instead",
            )
            return []
    else:
        sessions_path = here / entry.sessions
        loaded = problems.referenced(
            lambda: load_sessions(sessions_path, station=template),
            where,
            "sessions",
            f"the sessions {entry.sessions!r} ({sessions_path})",
        )
        if loaded is None:
            return []
        visits = tuple(loaded)
    if template.simulator is None:
        problems.add(where, "station", f"{station_path} has no [simulator] section to play it")
        return []
    if entry.variants is None:
        sites = [Site(entry.name, "base", template, visits)]
    else:
        variants = here / entry.variants
        sites = (
            problems.gather(
                lambda: _variants(entry, where, variants, station_path, template, visits)
            )
            or []
        )
    for site in sites:
        zone = ZoneInfo(site.model.info.timezone)
        for period in periods:
            chosen = _period_visits(site, period)
            if not chosen:
                start, _ = period.bounds(zone)
                problems.add(
                    where,
                    "sessions",
                    f"no visit arrives in the period {period.label} "
                    f"({datetime.fromtimestamp(start, zone):%Y-%m-%d %Z}) for {site.variant}",
                )
    return sites


def _variants(
    entry: StationEntry,
    where: str,
    csv_path: Path,
    station_path: Path,
    template: Station,
    visits: tuple[Visit, ...] | None,
) -> list[Site]:
    """Every row of a variants CSV as a station, each checked by the station loader; the
    problems of a row name the CSV, the row and what the station loader said."""
    problems = Problems(csv_path)
    sites: list[Site] = []
    outer: list[ConfigProblem] = []
    try:
        table = read_table(read_text(csv_path, problems), problems)
        table.check_header(problems, ["variant"], VARIANT_COLUMNS[1:])
    except ConfigError as err:
        outer.extend(err.problems)
        outer.append(ConfigProblem(csv_path.parent, where, "variants", f"{csv_path} does not load"))
        raise ConfigError(outer) from None
    document = read_toml(station_path, problems)
    seen: set[str] = set()
    for row in table.records(problems):
        site = _variant(row, problems, station_path, document, template, entry, visits, seen)
        if site is not None:
            sites.append(site)
    if not table.body and not problems.items:
        problems.add(None, "", "no variants (a header and no rows)")
    if problems.items:
        raise ConfigError(problems.items)
    return sites


def _variant(
    row: Row,
    problems: Problems,
    station_path: Path,
    document: dict[str, Any],
    template: Station,
    entry: StationEntry,
    visits: tuple[Visit, ...] | None,
    seen: set[str],
) -> Site | None:
    values, good = row.read(
        {
            "variant": _name,
            "rating_kva": lambda t: read_number(t, positive=True),
            "piles": lambda t: _whole(t, 1, 1000),
            "pile_kw": lambda t: read_number(t, positive=True),
            "v2g_share": lambda t: read_number(t, low=0.0, high=1.0),
            "background_scale": lambda t: read_number(t, low=0.0, high=100.0),
        },
        problems,
        required=["variant"],
    )
    if not good:
        return None
    name = values["variant"]
    if name in seen:
        problems.add(row.where, "variant", f"{name!r} is given twice")
        return None
    seen.add(name)
    varied = copy.deepcopy(document)
    if "rating_kva" in values and isinstance(varied.get("transformer"), dict):
        varied["transformer"]["rating_kva"] = values["rating_kva"]
    piles = varied.get("piles")
    if isinstance(piles, list) and piles and all(isinstance(p, dict) for p in piles):
        if "piles" in values:
            varied["piles"] = piles = _resized(piles, int(values["piles"]))
        if "pile_kw" in values:
            for pile in piles:
                pile["max_kw"] = values["pile_kw"]
    background = varied.get("background")
    if "background_scale" in values and isinstance(background, dict):
        scale = values["background_scale"]
        if isinstance(background.get("profile_kw"), list):
            background["profile_kw"] = [
                kw * scale if isinstance(kw, int | float) else kw for kw in background["profile_kw"]
            ]
        if isinstance(background.get("noise_kw"), int | float):
            background["noise_kw"] *= scale
    try:
        model = load_station(station_path, varied)
    except ConfigError as err:
        for problem in err.problems:
            problems.add(row.where, "", f"the variant {name!r}: {problem}")
        return None
    share = float(values.get("v2g_share", 0.0))
    if share > 0 and not any(pile.bidirectional for pile in model.piles):
        problems.add(
            row.where,
            "v2g_share",
            f"{template.name} has no bidirectional pile (max_discharge_kw): no truck could "
            "discharge",
        )
        return None
    if visits is not None:
        known = {pile.id for pile in model.piles}
        named = sorted({v.pile for v in visits if v.pile is not None and v.pile not in known})
        if named:
            problems.add(
                row.where,
                "piles",
                f"the sessions of {entry.name} name piles this variant lacks: {', '.join(named)}",
            )
            return None
    return Site(entry.name, name, model, visits, share)


def _whole(text: str, low: int, high: int) -> int:
    value = read_number(text, low=low, high=high)
    if value != int(value):
        raise ValueError(f"{text!r} is not a whole number")
    return int(value)


def _resized(piles: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The first `count` piles, or all of them and copies of the last, each with its own id
    and port (`V01`...)."""
    if count <= len(piles):
        return piles[:count]
    ports = [p["port"] for p in piles if isinstance(p.get("port"), int)]
    extra = []
    for k in range(count - len(piles)):
        pile = copy.deepcopy(piles[-1])
        pile["id"] = f"V{k + 1:02d}"
        if ports:
            pile["port"] = max(ports) + k + 1
        extra.append(pile)
    return [*piles, *extra]


# -- running one task ---------------------------------------------------------------------------

# The columns of a row, in order; saved_vs_uncontrolled is filled when the rows are gathered.
COLUMNS = (
    "station",
    "variant",
    "period",
    "tariff",
    "policy",
    "status",
    "error",
    "attempts",
    "vehicles",
    "energy_requested_kwh",
    "energy_delivered_kwh",
    "delivered_pct",
    "cost",
    "cost_per_kwh",
    "saved_vs_uncontrolled",
    "station_bill",
    "demand_charge",
    "valley_share_pct",
    "peak_kw",
    "peak_15min_kw",
    "limit_kw",
    "over_limit_kwh",
    "plans",
    "fallbacks",
    "currency",
    "cpu_s",
)


def run_task(spec: TaskInput) -> dict[str, Any]:
    """Run one task; its row of results (status "ok"; `attempts` is the caller's to set).

    The solver runs every plan to the end (no wall-clock deadline), so the row is the same on
    any machine, however loaded (only `cpu_s` differs).
    """
    started = time.process_time()
    result = simulate(
        spec.scenario,
        spec.task.policy,
        step_s=spec.step_s,
        plan_period_s=spec.plan_period_s,
        solve_deadline=False,
    )
    m = result.metrics
    return {
        **task_cells(spec.task),
        "status": "ok",
        "error": "",
        "attempts": 1,
        "vehicles": int(m["vehicles"]),
        "energy_requested_kwh": float(m["energy_requested_kwh"]),
        "energy_delivered_kwh": float(m["energy_delivered_kwh"]),
        "delivered_pct": float(m["delivered_pct"]),
        "cost": float(m["cost_yuan"]),
        "cost_per_kwh": float(m["cost_per_kwh_yuan"]),
        "saved_vs_uncontrolled": None,
        "station_bill": float(m["site_cost_yuan"]),
        "demand_charge": float(m["site_demand_charge_yuan"]),
        "valley_share_pct": float(m["valley_share_pct"]),
        "peak_kw": float(m["peak_kw"]),
        "peak_15min_kw": float(m["peak_15min_kw"]),
        "limit_kw": float(m["limit_kw"]),
        "over_limit_kwh": float(m["over_limit_kwh"]),
        "plans": int(m["plans"]),
        "fallbacks": int(m["fallbacks"]),
        "currency": spec.scenario.tariff.currency,
        "cpu_s": round(time.process_time() - started, 3),
    }


def task_cells(task: Task) -> dict[str, Any]:
    """The cells of a row that name its task."""
    return {
        "station": task.station,
        "variant": task.variant,
        "period": task.period,
        "tariff": task.tariff,
        "policy": task.policy,
    }


def failed_row(task: Task, error: str, attempts: int) -> dict[str, Any]:
    """The row of a task that failed every attempt: its error, no figures."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(task_cells(task))
    row.update(status="failed", error=error, attempts=attempts)
    return row
