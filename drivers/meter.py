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

from base.devicemap import METER, Value
from drivers.codec import in_project_units
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

    async def connect(self) -> None:
        """Open the connection to the meter."""
        await self.device.connect()

    async def read(self) -> MeterReading:
        """Read power (required), and per-phase values and energy where the map has them."""
        raw = await self.device.read(self._names)
        regmap = self.device.map
        values = {name: in_project_units(regmap[name], raw[name]) for name in raw}
        if values["power"] is None:
            raise BadValue(self.id, "power: the meter reports it unavailable (NaN)")
        return reading_from(values)


def reading_from(values: Mapping[str, Value | None]) -> MeterReading:
    """A reading from a meter's named values in the project's units (absent or None: unknown;
    power unavailable reads NaN)."""

    def number(name: str) -> float | None:
        value = values.get(name)
        return None if value is None else float(value)

    def three(prefix: str) -> tuple[float | None, float | None, float | None]:
        return (number(f"{prefix}_l1"), number(f"{prefix}_l2"), number(f"{prefix}_l3"))

    power = number("power")
    return MeterReading(
        power_kw=math.nan if power is None else power,
        power_phases_kw=three("power"),
        voltages_v=three("voltage"),
        currents_a=three("current"),
        energy_import_kwh=number("energy_import"),
        energy_export_kwh=number("energy_export"),
        frequency_hz=number("frequency"),
        utility_limit_kw=number("utility_limit"),
        device_time=number("clock"),
    )
