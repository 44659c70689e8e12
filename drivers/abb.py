"""ABB Terra AC wallboxes.

Current limit in mA (FC16, 32-bit), a writable communication timeout, and a read-back of the
applied limit. The charging state is one byte of its register pair (bits 8-15, as ABB documents
it: the IEC 61851 state, with bit 7 set below the rated current); the map's `mask` picks the byte
out and its enumeration names both forms. What the wallbox falls back to on a timeout is set by
its installer, not over Modbus: the station's fallback_kw for an ABB pile must allow for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from base.devicemap import CHARGERS, PileState, Value
from drivers.charger import MapCharger, Mode3
from drivers.errors import BadValue


class AbbTerraCharger(MapCharger):
    """An ABB Terra AC."""

    REQUIRED_REGISTERS = CHARGERS["abb-terra-ac"].required
    RESOLUTION_A = 0.1
    DEFAULT_TIMEOUT_S = 60.0

    def _state(self, raw: Mapping[str, Value | None]) -> PileState:
        label = self.device.map.label("state", raw.get("state"))
        try:
            return Mode3(label or "other").pile_state
        except ValueError:
            return PileState.UNAVAILABLE

    def _max_current(self, raw: Mapping[str, Value | None]) -> float:
        value = raw.get("max_rated_current")
        if not isinstance(value, (int, float)):
            raise BadValue(self.id, "max_rated_current: the charger reports it unavailable")
        return float(value) / 1000

    async def arm_failsafe(self, timeout_s: float, fallback_a: float) -> None:
        """Write the communication timeout (the fallback current is the installer's)."""
        seconds = max(1, math.floor(timeout_s))
        await self.device.write({"comm_timeout": seconds})
        self.timeout_s = seconds
