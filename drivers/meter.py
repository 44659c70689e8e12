"""Meters at the grid connection: the site's measured load.

`Meter` is the interface the controller reads; `MapMeter` implements it for any map of kind
"meter", over any `Device` (Modbus or OPC-UA). Power is in kW, positive when the site imports
from the grid.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from base.devicemap import METER, UNIT_SCALE, Value
from drivers.device import Device
from drivers.errors import BadValue


@dataclass(frozen=True)
class MeterReading:
    """One reading of a three-phase meter. Missing quantities are None."""

    power_kw: float
    power_phases_kw: tuple[float | None, float | None, float | None] = (None, None, None)
    voltages_v: tuple[float | None, float | None, float | None] = (None, None, None)
    currents_a: tuple[float | None, float | None, float | None] = (None, None, None)
    energy_import_kwh: float | None = None
    energy_export_kwh: float | None = None
    frequency_hz: float | None = None
    utility_limit_kw: float | None = None
    device_time: float | None = None


class Meter(Protocol):
    """What the controller needs of a meter."""

    id: str

    async def connect(self) -> None:
        """Open the connection to the meter."""
        ...

    async def read(self) -> MeterReading:
        """Read the meter."""
        ...


class MapMeter:
    """A meter read through a meter map, over Modbus or OPC-UA."""

    def __init__(self, meter_id: str, device: Device) -> None:
        self.id = meter_id
        self.device = device
        regmap = device.map
        self._names = tuple(n for n in (*METER.required, *METER.optional) if n in regmap)
        # Each register's factor to the project's units (`in_project_units`), worked out once.
        self._per_unit = {n: UNIT_SCALE[regmap[n].unit][1] for n in self._names}

    async def connect(self) -> None:
        """Open the connection to the meter."""
        await self.device.connect()

    async def read(self) -> MeterReading:
        """Read power (required), and per-phase values and energy where the map has them."""
        raw = await self.device.read(self._names)
        per_unit = self._per_unit
        values: dict[str, float | None] = {}
        # `in_project_units` for each value, without a call per value: a meter is read every
        # cycle, and every step of a fast simulation.
        for name, value in raw.items():
            if value is None:
                values[name] = None
            elif isinstance(value, str):
                raise BadValue(name, f"expected a number, got text {value!r}")
            else:
                values[name] = float(value) * per_unit[name]
        if values["power"] is None:
            raise BadValue(self.id, "power: the meter reports it unavailable (NaN)")
        return reading_from(values)


# What `reading_from` takes, in the order of its fields.
_READ = (
    "power",
    "power_l1",
    "power_l2",
    "power_l3",
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "current_l2",
    "current_l3",
    "energy_import",
    "energy_export",
    "frequency",
    "utility_limit",
    "clock",
)


def reading_from(values: Mapping[str, Value | None]) -> MeterReading:
    """A reading from a meter's named values in the project's units (absent or None: unknown;
    power unavailable reads NaN)."""
    get = values.get
    (power, p1, p2, p3, v1, v2, v3, i1, i2, i3, imported, exported, hz, limit, clock) = [
        None if value is None else float(value) for value in map(get, _READ)
    ]
    return MeterReading(
        power_kw=math.nan if power is None else power,
        power_phases_kw=(p1, p2, p3),
        voltages_v=(v1, v2, v3),
        currents_a=(i1, i2, i3),
        energy_import_kwh=imported,
        energy_export_kwh=exported,
        frequency_hz=hz,
        utility_limit_kw=limit,
        device_time=clock,
    )
