"""Telemetry points: what the station measured, decided, planned and noticed, in time series.

The data model is InfluxDB's: a `Point` has a measurement, tags (indexed strings), fields (values)
and a time. The daemon and `simulate` write

- `site` (tags `station`, `band`): `grid_kw` (absent without a fresh meter reading), `limit_kw`,
  `background_kw` (absent when it cannot be measured), `piles_kw`, `budget_kw`, `wanted_kw`,
  `price`, once per control cycle;
- `pile` (tags `station`, `pile`, `state`): what the pile reported (`power_kw`, `applied_kw`,
  `soc_pct`, `energy_kwh`, its lifetime import counter), what was decided for it (`target_kw`,
  `setpoint_kw`, `written`) and, while a session is in progress, that session's energy by its
  account (`session_kwh`, the figure the API and the state file give), once per control cycle;
  `state` is the pile's state, or `unread` without a fresh reading;
- `plan` (tags `station`, `vehicle`): `power_kw` planned in each slot, at the slot's start, and
  `planned_at`, on each new plan; a later plan overwrites the slots it covers again;
- `planning` (tags `station`, `status`): `vehicles`, `solve_ms`, `objective`, on each new plan;
- `event` (tags `station`, `source`, `kind` and, for an event about a device, `device`, its
  label: `base.events`): `text` and `seq` (the daemon's event count), on each event. Events are
  spaced at least a millisecond apart, so that two events of one cycle stay two points (a
  point's key is measurement, tags and time).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from base.events import Event
from control.step import Cycle
from scheduler.plan import Plan

FieldValue = float | int | bool | str

NS = 1_000_000_000


@dataclass(frozen=True)
class Point:
    """One time-series point: measurement, tags, fields and time (ns since the epoch)."""

    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, FieldValue], ...]
    time_ns: int

    @classmethod
    def of(
        cls,
        measurement: str,
        when: float,
        tags: Mapping[str, str],
        fields: Mapping[str, FieldValue | None],
    ) -> Point:
        """A point at `when` (epoch seconds); fields that are None or not finite are left out."""
        kept = tuple(
            (name, value)
            for name, value in sorted(fields.items())
            if value is not None and not (isinstance(value, float) and not math.isfinite(value))
        )
        return cls(measurement, tuple(sorted(tags.items())), kept, epoch_ns(when))

    @property
    def time(self) -> float:
        """The point's time, epoch seconds."""
        return self.time_ns / NS

    def tag(self, name: str) -> str | None:
        """The value of one tag (None if the point lacks it)."""
        return dict(self.tags).get(name)

    def field(self, name: str) -> FieldValue | None:
        """The value of one field (None if the point lacks it)."""
        return dict(self.fields).get(name)

    def line(self) -> str:
        """The point in InfluxDB line protocol (nanosecond precision)."""
        from influxdb_client import Point as InfluxPoint
        from influxdb_client import WritePrecision

        point = InfluxPoint(self.measurement)
        for name, text in self.tags:
            point.tag(name, text)
        for name, value in self.fields:
            point.field(name, value)
        return str(point.time(self.time_ns, WritePrecision.NS).to_line_protocol())

    def to_json(self) -> list[object]:
        """A compact JSON-able form (what the disk buffer keeps)."""
        return [
            self.measurement,
            [list(t) for t in self.tags],
            [list(f) for f in self.fields],
            self.time_ns,
        ]

    @classmethod
    def from_json(cls, data: Sequence[object]) -> Point:
        """The point `to_json` gave."""
        measurement, tags, fields, time_ns = data
        assert isinstance(tags, list) and isinstance(fields, list) and isinstance(time_ns, int)
        return cls(
            str(measurement),
            tuple((str(k), str(v)) for k, v in tags),
            tuple((str(k), v) for k, v in fields),
            time_ns,
        )


def epoch_ns(when: float) -> int:
    """Epoch seconds to nanoseconds, exact to the microsecond (a float holds no more)."""
    return round(when * 1_000_000) * 1000


# -- what the station turns into points ------------------------------------------------------


def cycle_points(station: str, cycle: Cycle) -> list[Point]:
    """The `site` point and one `pile` point per pile of one control cycle."""
    when, snapshot, budget_kw = cycle.time, cycle.snapshot, cycle.budget_kw
    targets, setpoints, written = cycle.targets, cycle.setpoints, cycle.written
    site = Point.of(
        "site",
        when,
        {"station": station, "band": snapshot.band},
        {
            "grid_kw": snapshot.grid_kw,
            "limit_kw": snapshot.limit_kw,
            "background_kw": snapshot.background_kw,
            "piles_kw": snapshot.piles_kw,
            "budget_kw": budget_kw,
            "wanted_kw": sum(p.wants_kw for p in snapshot.piles),
            "price": snapshot.price,
        },
    )
    points = [site]
    for view in snapshot.piles:
        reading = view.reading
        fields: dict[str, FieldValue | None] = {
            "target_kw": targets.get(view.id),
            "setpoint_kw": setpoints.get(view.id),
            "written": written.get(view.id) if view.id in setpoints else None,
            "session_kwh": cycle.session_kwh.get(view.id),
        }
        if reading is not None:
            fields.update(
                power_kw=reading.power_kw,
                applied_kw=reading.applied_setpoint_kw,
                soc_pct=reading.soc_pct,
                energy_kwh=reading.energy_import_kwh,
            )
        if all(value is None for value in fields.values()):
            continue
        state = "unread" if reading is None else reading.state.value
        points.append(
            Point.of("pile", when, {"station": station, "pile": view.id, "state": state}, fields)
        )
    return points


def plan_points(station: str, plan: Plan, when: float) -> list[Point]:
    """One `planning` point for a new plan, and its power per vehicle per slot (`plan`)."""
    points = [
        Point.of(
            "planning",
            when,
            {"station": station, "status": plan.status.value},
            {
                "vehicles": len(plan.power_kw),
                "solve_ms": plan.solve_ms,
                "objective": plan.objective,
            },
        )
    ]
    for vehicle, series in plan.power_kw.items():
        for slot, kw in enumerate(series):
            points.append(
                Point.of(
                    "plan",
                    float(plan.boundaries[slot]),
                    {"station": station, "vehicle": vehicle},
                    {"power_kw": float(kw), "planned_at": when},
                )
            )
    return points


def event_point(station: str, when: float, event: Event, seq: int) -> Point:
    """An `event` point at `when` (the event's time, or just after the one before it)."""
    tags = {"station": station, "source": str(event.source), "kind": str(event.kind)}
    if event.device is not None:
        tags["device"] = event.device.label
    return Point.of("event", when, tags, {"text": event.text, "seq": seq})
