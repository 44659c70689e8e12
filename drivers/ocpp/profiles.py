"""Setpoints as OCPP charging profiles: what a charge point supports, the unit and rounding it
takes, and the profile documents of each version.

Every dynamic profile is absolute, starts when it is sent and ends `validity_s` later (both its
schedule's `duration` and `validTo`), so that a charge point left alone falls back to the
fail-safe profile below it: the pile's fallback power, installed at boot with no end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from base.stationdevices import PileConfig

Unit = Literal["W", "A"]
# The profile purposes a dynamic limit may go in, most specific first; the first a charge point
# does not reject is kept for it.
PURPOSES = ("TxProfile", "TxDefaultProfile", "ChargePointMaxProfile")
# The fail-safe goes in TxDefaultProfile, or the station-wide one where that is refused.
FAILSAFE_PURPOSES = ("TxDefaultProfile", "ChargePointMaxProfile")
# Stack levels: the fail-safe at the bottom, dynamic limits above it.
FAILSAFE_LEVEL = 0
DYNAMIC_LEVEL = 1
# OCPP limits are decimals with one fractional digit.
_STEP = {"A": 0.1, "W": 1.0}


@dataclass
class Capabilities:
    """What a charge point says of its smart charging (GetConfiguration / GetVariables)."""

    units: tuple[Unit, ...] = ("A", "W")
    max_periods: int | None = None
    max_stack_level: int | None = None
    max_profiles: int | None = None
    smart_charging: bool = True
    bidirectional: bool = False
    # What each key or variable answered, for the log and the facts.
    answers: dict[str, str] = field(default_factory=dict)


def unit_for(pile: PileConfig, caps: Capabilities) -> Unit:
    """The unit a pile's limits go in: amperes for AC, watts for DC, unless the charge point
    takes only the other."""
    preferred: Unit = "A" if pile.supply == "ac" else "W"
    if preferred in caps.units or not caps.units:
        return preferred
    return caps.units[0]


def limit_in(pile: PileConfig, kw: float, unit: Unit) -> float:
    """`kw` in the unit, rounded down to the step OCPP takes (never above what was asked)."""
    value = kw * 1000.0 if unit == "W" else kw / pile.kw_per_a
    step = _STEP[unit]
    magnitude = math.floor(abs(value) / step + 1e-9) * step
    return round(math.copysign(magnitude, value), 1)


def kw_of(pile: PileConfig, limit: float, unit: Unit) -> float:
    """A limit in `unit` as kW."""
    return limit / 1000.0 if unit == "W" else limit * pile.kw_per_a


def resolution_kw(pile: PileConfig, unit: Unit) -> float:
    """The step of a limit in `unit`, in kW."""
    return kw_of(pile, _STEP[unit], unit)


def timestamp(epoch: float) -> str:
    """An OCPP date-time (UTC, ISO 8601 with Z)."""
    when = datetime.fromtimestamp(epoch, tz=UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def schedule(
    pile: PileConfig, limit: float, unit: Unit, start: float | None, validity_s: float | None
) -> dict[str, Any]:
    """One charging schedule: `limit` from `start` for `validity_s` (None: relative, no end)."""
    period: dict[str, Any] = {"startPeriod": 0, "limit": limit}
    if unit == "A" and pile.supply == "ac":
        period["numberPhases"] = pile.phases
    body: dict[str, Any] = {"chargingRateUnit": unit, "chargingSchedulePeriod": [period]}
    if start is not None:
        body["startSchedule"] = timestamp(start)
    if validity_s is not None:
        body["duration"] = math.ceil(validity_s)
    return body


def profile_16(
    profile_id: int,
    purpose: str,
    level: int,
    body: dict[str, Any],
    *,
    transaction_id: int | None = None,
    valid_to: float | None = None,
) -> dict[str, Any]:
    """An OCPP 1.6 `csChargingProfiles`."""
    profile: dict[str, Any] = {
        "chargingProfileId": profile_id,
        "stackLevel": level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Absolute" if "startSchedule" in body else "Relative",
        "chargingSchedule": body,
    }
    if transaction_id is not None and purpose == "TxProfile":
        profile["transactionId"] = transaction_id
    if valid_to is not None:
        profile["validTo"] = timestamp(valid_to)
    return profile


def profile_201(
    profile_id: int,
    purpose: str,
    level: int,
    body: dict[str, Any],
    *,
    transaction_id: str | None = None,
    valid_to: float | None = None,
) -> dict[str, Any]:
    """An OCPP 2.0.1 `chargingProfile` (station-wide purposes renamed as 2.0.1 names them)."""
    profile: dict[str, Any] = {
        "id": profile_id,
        "stackLevel": level,
        "chargingProfilePurpose": purpose_201(purpose),
        "chargingProfileKind": "Absolute" if "startSchedule" in body else "Relative",
        "chargingSchedule": [{"id": profile_id, **body}],
    }
    if transaction_id is not None and purpose == "TxProfile":
        profile["transactionId"] = transaction_id
    if valid_to is not None:
        profile["validTo"] = timestamp(valid_to)
    return profile


def purpose_201(purpose: str) -> str:
    """The 2.0.1 name of a 1.6 profile purpose."""
    return "ChargingStationMaxProfile" if purpose == "ChargePointMaxProfile" else purpose
