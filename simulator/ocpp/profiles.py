"""OCPP smart charging as a charge point keeps it: the profile stack and its composite limit.

A profile (SetChargingProfile, 1.6 or 2.0.1) has a purpose, a stack level, a validity
(validFrom/validTo) and a schedule (start, duration, periods of limits in A or W). At any instant
the charge point obeys, per purpose, the valid profile of the highest stack level whose schedule
covers that instant; a TxProfile overrules the TxDefaultProfile while a transaction runs, and the
charge point's (or station's) max profile caps both: the composite limit is the lower of the two
(OCPP 1.6 section 3.13, 2.0.1 K08). No profile in force: the charge point's rating.

Everything here is pure: times are epoch seconds, limits are converted to kW by `Electrics`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

RateUnit = Literal["A", "W"]
_RECURRENCE_S = {"Daily": 86400.0, "Weekly": 7 * 86400.0}


class Purpose(StrEnum):
    """What a profile is for (1.6's ChargePointMaxProfile is 2.0.1's ChargingStationMaxProfile)."""

    MAX = "max"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"


PURPOSE_NAMES: dict[str, Purpose] = {
    "ChargePointMaxProfile": Purpose.MAX,
    "ChargingStationMaxProfile": Purpose.MAX,
    "TxDefaultProfile": Purpose.TX_DEFAULT,
    "TxProfile": Purpose.TX,
}


def purpose_of(name: str) -> Purpose | None:
    """The purpose an OCPP purpose name stands for (None: one this simulator does not keep)."""
    return PURPOSE_NAMES.get(name)


def parse_time(text: str | None) -> float | None:
    """An OCPP date-time as epoch seconds (None stays None)."""
    if text is None:
        return None
    return datetime.fromisoformat(text).timestamp()


@dataclass(frozen=True)
class Electrics:
    """How a charge point turns limits in A (per phase) or W into kW and back."""

    supply: Literal["ac", "dc"]
    phases: int = 3
    voltage_v: float = 230.0
    # The pile's dc_voltage_v: a DC charge point converts amperes at its link voltage.
    dc_voltage_v: float = 750.0

    def to_kw(self, limit: float, unit: str, phases: int | None = None) -> float:
        """A schedule period's limit in kW."""
        if unit == "W":
            return limit / 1000
        if self.supply == "dc":
            return limit * self.dc_voltage_v / 1000
        return limit * (phases or self.phases) * self.voltage_v / 1000

    def from_kw(self, kw: float, unit: str) -> float:
        """A power in `unit`."""
        if unit == "W":
            return kw * 1000
        if self.supply == "dc":
            return kw * 1000 / self.dc_voltage_v
        return kw * 1000 / (self.phases * self.voltage_v)


@dataclass(frozen=True)
class Period:
    """One period of a schedule: from `start_s` after the schedule's start, this limit."""

    start_s: float
    limit: float
    phases: int | None = None


@dataclass(frozen=True)
class Profile:
    """One charging profile as installed (`received`: when it arrived; `effective`: when the
    charge point starts obeying it, later for one that applies profiles late; `until`: when a
    profile that replaces it takes effect, if that is later than its arrival)."""

    id: int
    stack_level: int
    purpose: Purpose
    kind: str
    unit: str
    periods: tuple[Period, ...]
    received: float
    effective: float
    recurrency: str | None = None
    valid_from: float | None = None
    valid_to: float | None = None
    start: float | None = None
    duration_s: float | None = None
    transaction_id: str | None = None
    until: float | None = None

    @classmethod
    def from_ocpp(
        cls, data: Mapping[str, Any], *, received: float, effective: float | None = None
    ) -> Profile:
        """A profile from SetChargingProfile's payload (snake_case keys, as the `ocpp` library
        hands them: 1.6 `cs_charging_profiles` or 2.0.1 `charging_profile`).

        Raises ValueError for a purpose this simulator does not keep."""
        name = data["charging_profile_purpose"]
        purpose = purpose_of(name)
        if purpose is None:
            raise ValueError(f"purpose {name} is not supported")
        schedule = data["charging_schedule"]
        if isinstance(schedule, list):  # 2.0.1: a list of (alternative) schedules
            schedule = schedule[0]
        periods = tuple(
            Period(float(p["start_period"]), float(p["limit"]), p.get("number_phases"))
            for p in schedule["charging_schedule_period"]
        )
        tx = data.get("transaction_id")
        return cls(
            id=int(data.get("charging_profile_id", data.get("id", 0))),
            stack_level=int(data["stack_level"]),
            purpose=purpose,
            kind=data["charging_profile_kind"],
            unit=schedule["charging_rate_unit"],
            periods=tuple(sorted(periods, key=lambda p: p.start_s)),
            received=received,
            effective=received if effective is None else effective,
            recurrency=data.get("recurrency_kind"),
            valid_from=parse_time(data.get("valid_from")),
            valid_to=parse_time(data.get("valid_to")),
            start=parse_time(schedule.get("start_schedule")),
            duration_s=schedule.get("duration"),
            transaction_id=None if tx is None else str(tx),
        )

    def schedule_start(self, at: float, tx_start: float | None) -> float:
        """When the schedule in force at `at` began."""
        if self.kind == "Relative":
            return self.received if tx_start is None else tx_start
        start = self.start if self.start is not None else (self.valid_from or self.received)
        period = _RECURRENCE_S.get(self.recurrency or "") if self.kind == "Recurring" else None
        if period is not None and at >= start:
            start += math.floor((at - start) / period) * period
        return start

    def period_at(
        self, at: float, tx_start: float | None, *, expires: bool = True
    ) -> Period | None:
        """The period in force at `at` (None: the profile does not apply then). `expires` False:
        validTo and the schedule's duration are ignored (a charge point that keeps profiles)."""
        if at < self.effective or (self.until is not None and at >= self.until):
            return None
        if self.valid_from is not None and at < self.valid_from:
            return None
        if expires and self.valid_to is not None and at >= self.valid_to:
            return None
        offset = at - self.schedule_start(at, tx_start)
        if offset < 0 or (expires and self.duration_s is not None and offset >= self.duration_s):
            return None
        found = None
        for period in self.periods:
            if period.start_s > offset:
                break
            found = period
        return found

    def breakpoints(self, begin: float, end: float, tx_start: float | None) -> Iterable[float]:
        """The instants in [begin, end) where this profile's limit may change."""
        times = [self.effective, self.valid_from, self.valid_to, self.until]
        first = self.schedule_start(begin, tx_start)
        recurrence = _RECURRENCE_S.get(self.recurrency or "") if self.kind == "Recurring" else None
        start = first
        while start < end:
            times.extend(start + p.start_s for p in self.periods)
            if self.duration_s is not None:
                times.append(start + self.duration_s)
            if recurrence is None:
                break
            start += recurrence
        return (t for t in times if t is not None and begin <= t < end)


@dataclass(frozen=True)
class Limit:
    """The composite limit at an instant, in kW (None: no profile in force)."""

    kw: float | None
    purpose: Purpose | None = None


class ProfileStack:
    """The profiles installed on one connector (or EVSE) of a charge point."""

    def __init__(self, electrics: Electrics) -> None:
        self.electrics = electrics
        self.profiles: list[Profile] = []

    def install(self, profile: Profile) -> None:
        """Install `profile`, replacing one of the same id or of the same purpose and stack
        level. A charge point that applies profiles late keeps obeying the one replaced until
        the new one takes effect."""
        now = profile.received
        kept: list[Profile] = []
        for p in self.profiles:
            if p.until is not None and p.until <= now:
                continue
            if p.id == profile.id or (p.purpose, p.stack_level) == (
                profile.purpose,
                profile.stack_level,
            ):
                if profile.effective <= now:
                    continue
                p = replace(
                    p,
                    until=profile.effective if p.until is None else min(p.until, profile.effective),
                )
            kept.append(p)
        self.profiles = [*kept, profile]

    def clear(
        self,
        profile_id: int | None = None,
        purpose: Purpose | None = None,
        stack_level: int | None = None,
    ) -> int:
        """Remove the profile `profile_id` (if given) or those matching every criterion given;
        return how many were removed."""
        if profile_id is not None:
            kept = [p for p in self.profiles if p.id != profile_id]
        else:
            kept = [
                p
                for p in self.profiles
                if (purpose is not None and p.purpose is not purpose)
                or (stack_level is not None and p.stack_level != stack_level)
            ]
        removed = len(self.profiles) - len(kept)
        self.profiles = kept
        return removed

    def end_transaction(self) -> None:
        """A transaction ended: its TxProfiles go with it."""
        self.profiles = [p for p in self.profiles if p.purpose is not Purpose.TX]

    def limit_at(self, at: float, tx_start: float | None, *, expires: bool = True) -> Limit:
        """The composite limit at `at` (`tx_start`: the running transaction's start, or None)."""
        best: dict[Purpose, tuple[int, float]] = {}
        for profile in self.profiles:
            if profile.purpose is Purpose.TX and tx_start is None:
                continue
            period = profile.period_at(at, tx_start, expires=expires)
            if period is None:
                continue
            held = best.get(profile.purpose)
            if held is None or profile.stack_level > held[0]:
                kw = self.electrics.to_kw(period.limit, profile.unit, period.phases)
                best[profile.purpose] = (profile.stack_level, kw)
        tx = best.get(Purpose.TX)
        purpose = Purpose.TX if tx is not None else Purpose.TX_DEFAULT
        session = tx if tx is not None else best.get(Purpose.TX_DEFAULT)
        cap = best.get(Purpose.MAX)
        if session is None and cap is None:
            return Limit(None)
        if session is None or (cap is not None and cap[1] < session[1]):
            assert cap is not None
            return Limit(cap[1], Purpose.MAX)
        return Limit(session[1], purpose)

    def composite(
        self,
        begin: float,
        duration_s: float,
        tx_start: float | None,
        rating_kw: float,
        *,
        expires: bool = True,
    ) -> list[tuple[float, float]]:
        """The composite schedule from `begin` for `duration_s`: (offset s, kW) periods, equal
        neighbours merged; the rating where no profile is in force."""
        end = begin + duration_s
        times = {begin}
        for profile in self.profiles:
            times.update(profile.breakpoints(begin, end, tx_start))
        periods: list[tuple[float, float]] = []
        for at in sorted(times):
            kw = self.limit_at(at, tx_start, expires=expires).kw
            kw = rating_kw if kw is None else min(kw, rating_kw)
            if not periods or periods[-1][1] != kw:
                periods.append((at - begin, kw))
        return periods
