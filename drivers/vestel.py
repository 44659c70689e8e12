"""Vestel EVC04 chargers (also Webasto Next / Unite).

Whole amps with FC6; the fail-safe is the life bit plus a writable communication timeout and
failsafe current. The charging current register reads back what was written, not the limit the
charger applies (after a timeout it applies the failsafe current): whether it follows is judged
from the power it draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from base.devicemap import CHARGERS, PileState, Value
from drivers.charger import MapCharger
from drivers.errors import BadValue

_CP_UNAVAILABLE = 7
_CP_FAULTED = 8


class VestelCharger(MapCharger):
    """A Vestel EVC04 / Webasto Next."""

    REQUIRED_REGISTERS = CHARGERS["vestel"].required
    RESOLUTION_A = 1.0
    DEFAULT_TIMEOUT_S = 20.0

    def _state(self, raw: Mapping[str, Value | None]) -> PileState:
        cp = raw.get("cp_state")
        if cp == _CP_FAULTED:
            return PileState.FAULT
        if cp == _CP_UNAVAILABLE:
            return PileState.UNAVAILABLE
        cable = raw.get("cable_state")
        if not isinstance(cable, int) or cable < 2:
            return PileState.AVAILABLE
        return PileState.CHARGING if raw.get("charging") == 1 else PileState.CONNECTED

    def _max_current(self, raw: Mapping[str, Value | None]) -> float:
        value = raw.get("max_hw_current")
        if not isinstance(value, (int, float)):
            raise BadValue(self.id, "max_hw_current: the charger reports it unavailable")
        return float(value)

    def _min_current(self, raw: Mapping[str, Value | None]) -> float:
        value = raw.get("min_hw_current")
        return float(value) if isinstance(value, (int, float)) else self.min_current_a

    async def _write_current(self, amps: float) -> None:
        await self.device.write({"setpoint": int(amps), "life_bit": 1})

    async def arm_failsafe(self, timeout_s: float, fallback_a: float) -> None:
        """Write the communication timeout and the failsafe current (whole amps, floored)."""
        current = self.allowed(fallback_a)
        await self.device.write(
            {"comm_timeout": max(1, math.floor(timeout_s)), "failsafe_current": int(current)}
        )
        self.timeout_s = max(1, math.floor(timeout_s))
