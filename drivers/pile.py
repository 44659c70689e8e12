"""Charging piles as the controller sees them, whatever protocol they speak.

`Pile` is the interface the controller uses; `DcPile` implements it for DC piles that
follow a map of kind "pile" (such as `configs/devices/flexcharge-dc-pile.toml`). Power is in kW,
positive when the pile charges a vehicle and negative when it discharges one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from base.devicemap import PILE, UNIT_SCALE, PileMode, PileState, Value
from drivers.codec import from_project_units
from drivers.device import Device
from drivers.errors import BadValue


@dataclass(frozen=True)
class PileReading:
    """One reading of a pile and the vehicle plugged into it."""

    state: PileState
    power_kw: float
    applied_setpoint_kw: float
    max_charge_kw: float
    max_discharge_kw: float
    min_kw: float
    energy_import_kwh: float
    energy_export_kwh: float
    session_energy_kwh: float
    session_id: int
    soc_pct: float | None = None
    ev_max_kw: float | None = None
    ev_capacity_kwh: float | None = None
    fallback_countdown_s: float | None = None
    fault_code: int = 0
    # Facts for the controller's follow judge (`control.follow`); the driver never judges them.
    # The setpoint the driver last wrote, as the pile takes it (None: nothing written yet), and
    # since when (the controller's clock; None: the driver keeps no clock).
    commanded_kw: float | None = None
    commanded_since: float | None = None
    # What the pile says when it does not use the setpoint it is written (empty: it does).
    setpoint_unused: str = ""
    # The step in which the pile reports its applied setpoint (0: as exact as a float).
    resolution_kw: float = 0.0
    # Why the pile does not follow what it is told: set by the judge, never by a driver.
    fault: str = ""


class Pile(Protocol):
    """What the controller needs of a pile."""

    id: str

    async def connect(self) -> None:
        """Open the connection to the pile."""
        ...

    async def read(self) -> PileReading:
        """Read the pile's state, power and vehicle."""
        ...

    async def command(self, setpoint_kw: float) -> None:
        """Set the power limit; every call also keeps the pile's fail-safe timer from firing."""
        ...

    async def arm_failsafe(self, timeout_s: float, fallback_kw: float) -> None:
        """Set what the pile does on its own when the controller falls silent."""
        ...


# A reading's numbers in the order they are checked: (field, register, default when the map
# lacks it (None: required), kind). A number is required unless it has a default; an optional
# one is None when the map lacks it or the pile says it is unavailable.
_NUMBER, _INT, _OPTIONAL = "number", "int", "optional"
# A required number the pile's map lacks (`DcPile._plan`): reading it fails where it is checked.
_LACKING = "lacking"
_FIELDS: tuple[tuple[str, str, float | None, str], ...] = (
    ("power_kw", "power", None, _NUMBER),
    ("applied_setpoint_kw", "applied_setpoint", None, _NUMBER),
    ("max_charge_kw", "max_charge_power", None, _NUMBER),
    ("max_discharge_kw", "max_discharge_power", 0.0, _NUMBER),
    ("min_kw", "min_power", 0.0, _NUMBER),
    ("energy_import_kwh", "energy_import", None, _NUMBER),
    ("energy_export_kwh", "energy_export", 0.0, _NUMBER),
    ("session_energy_kwh", "session_energy", 0.0, _NUMBER),
    ("session_id", "session_id", 0.0, _INT),
    ("soc_pct", "soc", None, _OPTIONAL),
    ("ev_max_kw", "ev_max_power", None, _OPTIONAL),
    ("ev_capacity_kwh", "ev_capacity", None, _OPTIONAL),
    ("fallback_countdown_s", "fallback_countdown", None, _OPTIONAL),
    ("fault_code", "fault_code", 0.0, _INT),
)

# Each state by its label (calling an enum is slower than looking it up).
_STATES = {state.value: state for state in PileState}

# The modes a setpoint's sign asks for (an enum's members are slower to look up).
_CHARGE, _DISCHARGE, _IDLE = PileMode.CHARGE, PileMode.DISCHARGE, PileMode.IDLE

# What `DcPile.read` uses of a pile map (the rest the driver only writes).
_READ = tuple(
    n
    for n in (*PILE.required, *PILE.optional)
    if n not in ("setpoint", "mode", "heartbeat", "comm_timeout", "fallback_power")
)


class DcPile:
    """A DC pile driven through a pile map, over Modbus or OPC-UA."""

    def __init__(
        self, pile_id: str, device: Device, now: Callable[[], float] | None = None
    ) -> None:
        """`now` (the controller's clock) dates each new setpoint, so that the controller can
        tell whether the pile applies it in time."""
        self.id = pile_id
        self.device = device
        self.now = now
        self._commanded: float | None = None
        self._changed_at = -math.inf
        # The last values read and the reading made of them.
        self._last: tuple[Mapping[str, Value | None], PileReading] | None = None
        regmap = device.map
        # Only what `read` uses: the registers the driver writes are not read back.
        self._regs = {n: regmap[n] for n in _READ if n in regmap and regmap[n].access.readable}
        self._names = tuple(self._regs)
        # Each one's factor to the project's units (`in_project_units`), worked out once.
        self._per_unit = {n: UNIT_SCALE[reg.unit][1] for n, reg in self._regs.items()}
        # `_FIELDS` for this map, worked out once (a pile is read every cycle): those it has, in
        # order, with their factors (and those it lacks that a reading needs, where they fail);
        # the values of the others, absent or their defaults.
        self._plan: list[tuple[str, str, float, str]] = []
        self._absent: dict[str, float | int | None] = {}
        for field, name, default, kind in _FIELDS:
            if name in self._regs:
                self._plan.append((field, name, self._per_unit[name], kind))
            elif kind is _OPTIONAL:
                self._absent[field] = None
            elif default is None:
                self._plan.append((field, name, 0.0, _LACKING))
            else:
                self._absent[field] = int(default) if kind is _INT else default
        self._mode_codes = {label: code for code, label in regmap.enums["mode"].items()}
        # The setpoint's factor to the project's units (`from_project_units` divides by it).
        self._setpoint_per_unit = UNIT_SCALE[regmap["setpoint"].unit][1]

    async def connect(self) -> None:
        """Open the connection to the pile."""
        await self.device.connect()

    async def read(self) -> PileReading:
        """Read every register the controller uses in one pass."""
        raw = await self.device.read(self._names)
        last = self._last
        if last is None or (last[0] is not raw and last[0] != raw):
            reading = self._reading(raw)
        else:
            # The pile says what it said last time: the same reading, but for what was written.
            reading = last[1]
            since = self._since()
            if reading.commanded_kw != self._commanded or reading.commanded_since != since:
                reading = replace(reading, commanded_kw=self._commanded, commanded_since=since)
        self._last = (raw, reading)
        return reading

    def _since(self) -> float | None:
        return None if self.now is None else self._changed_at

    def _reading(self, raw: Mapping[str, Value | None]) -> PileReading:
        label = self.device.map.label("state", raw["state"])
        state = _STATES.get(label or "")
        if state is None:
            raise BadValue(self.id, f"state: unknown state code {raw['state']!r}")
        fields: dict[str, Any] = dict(self._absent)
        # The device answers every register it was asked for (`_names`: those the map has).
        for field, name, per_unit, kind in self._plan:
            if kind is _LACKING:
                raise BadValue(self.id, f"{name}: not in the pile's register map")
            value = raw[name]
            if value is None:
                if kind is _OPTIONAL:
                    fields[field] = None
                    continue
                raise BadValue(self.id, f"{name}: the pile reports it unavailable")
            if isinstance(value, str):  # as `in_project_units` says it
                raise BadValue(name, f"expected a number, got text {value!r}")
            number = float(value) * per_unit
            fields[field] = int(number) if kind is _INT else number
        return PileReading(
            state=state, commanded_kw=self._commanded, commanded_since=self._since(), **fields
        )

    async def command(self, setpoint_kw: float) -> None:
        """Write setpoint, mode and heartbeat together (one FC16 request on the reference map)."""
        if setpoint_kw > 0:
            mode = _CHARGE
        elif setpoint_kw < 0:
            mode = _DISCHARGE
        else:
            mode = _IDLE
        if setpoint_kw != self._commanded and self.now is not None:
            self._changed_at = self.now()
        self._commanded = setpoint_kw
        await self.device.write(
            {
                "setpoint": setpoint_kw / self._setpoint_per_unit,
                "mode": self._mode_codes[mode],  # a `PileMode` is its label
                "heartbeat": 1,
            }
        )

    async def arm_failsafe(self, timeout_s: float, fallback_kw: float) -> None:
        """Write the communication timeout and fallback power."""
        regmap = self.device.map
        await self.device.write(
            {
                "comm_timeout": timeout_s,
                "fallback_power": from_project_units(regmap["fallback_power"], fallback_kw),
            }
        )
