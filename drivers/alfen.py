"""Alfen Eve NG9xx chargers (Modbus slave TCP/IP, document v2.3).

The socket's setpoint (1210) is valid for a fixed validity time (60 s); the driver rewrites it
well within that. The safe current the socket falls back to is set by the installer and only
read here: `arm_failsafe` refuses a charger whose safe current is above what the station's
fail-safe budget allows for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from base.devicemap import CHARGERS, PileState, Value
from drivers.charger import MapCharger, Mode3
from drivers.errors import BadValue, DeviceFault


class AlfenCharger(MapCharger):
    """One socket of an Alfen NG9xx."""

    REQUIRED_REGISTERS = CHARGERS["alfen"].required
    RESOLUTION_A = 0.1
    DEFAULT_TIMEOUT_S = 60.0
    # The installer types the safe current in by hand; the station's fallback is a power turned
    # into a current: half an amp above it is rounding, not a safe current the budget forgot.
    SAFE_CURRENT_SLACK_A: ClassVar[float] = 0.5

    def _state(self, raw: Mapping[str, Value | None]) -> PileState:
        if raw.get("availability") == 0:
            return PileState.UNAVAILABLE
        text = raw.get("mode3_state")
        try:
            return Mode3(str(text)).pile_state
        except ValueError:
            return PileState.UNAVAILABLE

    def _max_current(self, raw: Mapping[str, Value | None]) -> float:
        value = raw.get("station_max_current")
        if not isinstance(value, (int, float)):
            raise BadValue(self.id, "station_max_current: the charger reports it unavailable")
        return float(value)

    def _countdown(self, raw: Mapping[str, Value | None]) -> float | None:
        value = raw.get("validity_time_left")
        return float(value) if isinstance(value, (int, float)) else None

    def _setpoint_unused(self, raw: Mapping[str, Value | None]) -> str:
        if raw.get("setpoint_in_use") == 0:
            return "does not use its Modbus setpoint (1214 = 0)"
        return ""

    async def arm_failsafe(self, timeout_s: float, fallback_a: float) -> None:
        """Check that the installer's safe current fits the station's fail-safe budget."""
        await super().arm_failsafe(timeout_s, fallback_a)
        raw = await self.device.read(("safe_current",))
        safe = raw["safe_current"]
        if not isinstance(safe, (int, float)):
            raise BadValue(self.id, "safe_current: the charger reports it unavailable")
        if safe > fallback_a + self.SAFE_CURRENT_SLACK_A:
            raise DeviceFault(
                self.id,
                f"safe current {safe:g} A is above the {fallback_a:g} A the station's fallback "
                "allows: lower it on the charger (Alfen ACE service installer) or raise fallback_kw",
            )
