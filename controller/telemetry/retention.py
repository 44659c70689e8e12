"""How long the local store keeps telemetry, and how it rolls old cycles up into coarser points.

`Retention` is what [telemetry] asks of the local store: points older than `max_age_s` are
deleted, the store is kept under `max_bytes` (its oldest points deleted first), and `site` and
`pile` points older than `downsample_after_s` are rolled up into one point per series per
`downsample_to_s` (`rollup`). Plans, plannings and events are sparse and kept as written.

A rolled-up point is timed at the start of its interval and carries `cycles`, how many control
cycles it stands for; each field is rolled up by its `Rule` (`ROLLUPS`): power as the mean (the
energy over the interval is still mean x duration), with the highest value too for the site's
load (`grid_kw_max`, `piles_kw_max`: a peak above the limit is not averaged away), the limit as
its lowest, counters, SoC and price as their last value, `written` as whether any cycle wrote.
Rolling up rolled-up points again gives the same result as rolling up the cycles they stand for
(means are weighted by `cycles`), so the store and `query(every_s=...)` can mix resolutions.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from controller.telemetry.points import NS, FieldValue, Point

# What a rolled-up point carries besides its fields: how many cycles it stands for.
CYCLES = "cycles"


class Rule(enum.Enum):
    """How one field of many points becomes the field of one."""

    MEAN = "mean"
    PEAK = "mean, and the max as <field>_max"
    MIN = "min"
    MAX = "max"
    LAST = "last"


ROLLUPS: Mapping[str, Mapping[str, Rule]] = {
    "site": {
        "grid_kw": Rule.PEAK,
        "limit_kw": Rule.MIN,
        "background_kw": Rule.MEAN,
        "piles_kw": Rule.PEAK,
        "budget_kw": Rule.MEAN,
        "wanted_kw": Rule.MEAN,
        "price": Rule.LAST,
    },
    "pile": {
        "power_kw": Rule.MEAN,
        "applied_kw": Rule.MEAN,
        "target_kw": Rule.MEAN,
        "setpoint_kw": Rule.MEAN,
        "soc_pct": Rule.LAST,
        "energy_kwh": Rule.LAST,
        "session_kwh": Rule.LAST,
        "written": Rule.MAX,
    },
}


@dataclass(frozen=True)
class Retention:
    """What the local store keeps: points at most `max_age_s` old, at most `max_bytes` of them,
    `site` and `pile` points older than `downsample_after_s` rolled up per `downsample_to_s`."""

    max_age_s: float = 30 * 86400.0
    max_bytes: int = 1_000_000_000
    downsample_after_s: float = 86400.0
    downsample_to_s: float = 60.0


def rule_for(measurement: str, name: str, value: FieldValue) -> Rule:
    """The rule of one field: the measurement's, else by type (numbers averaged, flags any)."""
    rule = ROLLUPS.get(measurement, {}).get(name)
    if rule is not None:
        return rule
    if isinstance(value, bool):
        return Rule.MAX
    return Rule.MEAN if isinstance(value, float) else Rule.LAST


def rollup(points: Sequence[Point], at_ns: int) -> Point:
    """One point at `at_ns` standing for `points` (of one series, oldest first; see module)."""
    first = points[0]
    weights = [_cycles(p) for p in points]
    peaks = {f"{n}_max" for n, r in ROLLUPS.get(first.measurement, {}).items() if r is Rule.PEAK}
    names: dict[str, FieldValue] = {}
    for point in points:
        for name, value in point.fields:
            if name != CYCLES and name not in peaks:
                names.setdefault(name, value)
    fields: dict[str, FieldValue] = {CYCLES: sum(weights)}
    for name, sample in names.items():
        rule = rule_for(first.measurement, name, sample)
        have = [(p.field(name), w, p) for p, w in zip(points, weights, strict=True)]
        values = [(v, w, p) for v, w, p in have if v is not None]
        if rule is Rule.LAST:
            fields[name] = values[-1][0]
        elif rule is Rule.MIN:
            fields[name] = min(v for v, _, _ in values)
        elif rule is Rule.MAX:
            fields[name] = max(v for v, _, _ in values)
        else:
            total = sum(w for _, w, _ in values)
            fields[name] = sum(float(v) * w for v, w, _ in values) / total
            if rule is Rule.PEAK:
                fields[f"{name}_max"] = max(_peak(p, name, v) for v, _, p in values)
    return Point.of(first.measurement, at_ns / NS, dict(first.tags), fields)


def downsample(points: Iterable[Point], every_ns: int) -> list[Point]:
    """Every series' points rolled up per interval of `every_ns` (aligned to the epoch), each
    timed at its interval's start; by time, then tags."""
    groups: dict[tuple[tuple[tuple[str, str], ...], int], list[Point]] = {}
    for point in points:
        groups.setdefault((point.tags, point.time_ns // every_ns), []).append(point)
    rolled = [
        rollup(sorted(group, key=lambda p: p.time_ns), bucket * every_ns)
        for (_, bucket), group in groups.items()
    ]
    return sorted(rolled, key=lambda p: (p.time_ns, p.tags))


def _cycles(point: Point) -> int:
    count = point.field(CYCLES)
    return int(count) if isinstance(count, int | float) and count > 0 else 1


def _peak(point: Point, name: str, value: FieldValue) -> float:
    peak = point.field(f"{name}_max")
    return float(peak if isinstance(peak, int | float) else value)
