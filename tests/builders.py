"""Builders several test files share: local station times, scheduling problems of hourly slots
with their vehicles, and a pile's reading. Plain functions; the fixtures are in conftest.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
from numpy.typing import ArrayLike, NDArray

from base.devicemap import PileState
from drivers.pile import PileReading
from scheduler.plan import Plan
from scheduler.problem import Problem, Vehicle

SHANGHAI = ZoneInfo("Asia/Shanghai")


def local(text: str) -> float:
    """Epoch seconds of a local time at the shipped Chinese stations, e.g. '2026-11-10T18:00'."""
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).timestamp()


# -- scheduling problems -------------------------------------------------------------------------

START = datetime(2026, 11, 25, 0, 0, tzinfo=SHANGHAI).timestamp()
HOUR = 3600.0


def per_slot(value: ArrayLike, slots: int) -> NDArray[np.float64]:
    """`value` as one float per slot (a scalar is repeated)."""
    return np.broadcast_to(np.asarray(value, dtype=float), (slots,)).copy()


def hourly(
    prices: Sequence[float],
    vehicles: list[Vehicle],
    *,
    limit: ArrayLike = 100.0,
    background: ArrayLike = 0.0,
    export: ArrayLike = 0.0,
    **changes: object,
) -> Problem:
    """A problem of one-hour slots from START, one a price, with the given import prices."""
    slots = len(prices)
    base = Problem(
        boundaries=START + HOUR * np.arange(slots + 1, dtype=float),
        limit_kw=per_slot(limit, slots),
        background_kw=per_slot(background, slots),
        import_price=np.asarray(prices, dtype=float),
        export_price=per_slot(export, slots),
        vehicles=tuple(vehicles),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def ev(
    vid: str, need: float, *, hours: float = 4.0, max_kw: float = 10.0, **changes: object
) -> Vehicle:
    """A vehicle on pile P-`vid` needing `need` kWh, leaving `hours` after START."""
    base = Vehicle(
        id=vid, pile=f"P-{vid}", energy_kwh=need, departure=START + hours * HOUR, max_kw=max_kw
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def kw(plan: Plan, vid: str) -> NDArray[np.float64]:
    """Planned net power of one vehicle per slot."""
    return np.asarray(plan.power_kw[vid], dtype=float)


def pile_reading(
    power: float, state: PileState = PileState.CHARGING, *, applied_kw: float | None = None
) -> PileReading:
    """A DC pile's reading at `power` kW (rated 480 kW, its import counter at 1000 kWh plus
    `power`, a session of 5 kWh, SoC 42 %), applying `applied_kw` (by default `power`)."""
    return PileReading(
        state=state,
        power_kw=power,
        applied_setpoint_kw=power if applied_kw is None else applied_kw,
        max_charge_kw=480.0,
        max_discharge_kw=0.0,
        min_kw=0.0,
        energy_import_kwh=1000.0 + power,
        energy_export_kwh=0.0,
        session_energy_kwh=5.0,
        session_id=1,
        soc_pct=42.0,
    )
