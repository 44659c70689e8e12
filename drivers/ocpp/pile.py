"""One OCPP connector (1.6) or EVSE (2.0.1) as the controller's `Pile`.

`read` gives the latest state, session and meter values the charge point sent (a `DriverError`
when it is not connected or its meter values are late); `command` turns a setpoint into a
charging profile in the unit the charge point takes, sent only when the setpoint moves by
`deadband_kw` or the profile in force nears the end of its validity; `arm_failsafe` installs the
pile's fallback power as the bottom profile with no end. What the charge point was told and
since when are the reading's facts; whether it follows is the follow judge's call
(`control.follow`), as for every pile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from base.stationdevices import PileConfig
from drivers.errors import ConnectionLost, DeviceRejected, DeviceTimeout, DriverError
from drivers.ocpp import profiles
from drivers.ocpp.connection import ConnectorState, Link
from drivers.ocpp.profiles import Unit
from drivers.pile import PileReading

if TYPE_CHECKING:
    from drivers.ocpp.server import CsmsServer

log = logging.getLogger(__name__)

# A profile is renewed once this share of its validity has passed.
RENEW_AT = 0.5
# A latency not measured within this long is not measured (the judge sees the rest).
LATENCY_WINDOW_S = 120.0
# While the composite schedule says other than the profile sent (a charge point that applies
# profiles late, or not at all), it is asked again this often.
COMPOSITE_RECHECK_S = 5.0


@dataclass(frozen=True)
class Sent:
    """The dynamic profile in force on a pile, as sent."""

    kw: float
    limit: float
    unit: Unit
    purpose: str
    profile_id: int
    at: float
    transaction: int | str | None


class OcppPile:
    """A pile whose charge point is connected to (or expected at) the CSMS server."""

    def __init__(self, config: PileConfig, server: CsmsServer, now: Callable[[], float]) -> None:
        self.id = config.id
        self.config = config
        self.server = server
        self.now = now
        self.label = f"pile {config.id}"
        self.sent: Sent | None = None
        self.applied_kw: float | None = None
        self.composite_kw: float | None = None
        self.latency_s: float | None = None
        self.failsafe_purpose: str | None = None
        self._commanded: float | None = None
        self._changed_at = -math.inf
        self._pending: tuple[float, float, float] | None = None
        self._unused = ""
        self._composite_at = -math.inf
        server.attach(self)

    # -- the Pile protocol ---------------------------------------------------------------------

    async def connect(self) -> None:
        """Nothing to open: the charge point connects to the server."""

    async def read(self) -> PileReading:
        """The latest the charge point said of this connector."""
        link = self._link()
        state = link.connectors.get(self.config.connector)
        if state is None:
            raise DeviceTimeout(
                self.label,
                f"{link.identity} has not reported connector {self.config.connector} yet",
            )
        now = self.now()
        settings = self.server.settings
        if state.transaction_id is not None:
            since = state.sample_at if state.sample_at is not None else state.changed_at
            age = now - (since if since is not None else now)
            late_after = settings.meter_values_s + self.server.stale_after_s
            if age > late_after:
                raise DeviceTimeout(
                    self.label,
                    f"no meter values from {link.identity} for {age:.0f} s "
                    f"(asked every {settings.meter_values_s} s)",
                )
        sample = state.sample
        power = sample.power_kw
        if power is None and sample.current_a and self.config.supply == "dc":
            power = sum(sample.current_a) * self.config.kw_per_a
        elif power is None and sample.current_a:
            power = sum(sample.current_a) * self.config.voltage_v / 1000.0
            if len(sample.current_a) == 1:
                power *= self.config.phases
        power = 0.0 if power is None or state.transaction_id is None else power
        self._measure_latency(power, state.sample_at)
        unit = profiles.unit_for(self.config, link.caps)
        applied = self.applied_kw
        if applied is None:
            applied = self.config.fallback_kw if self.failsafe_purpose else self.config.max_kw
        return PileReading(
            state=state.state,
            power_kw=power,
            applied_setpoint_kw=applied,
            max_charge_kw=self.config.max_kw,
            max_discharge_kw=self.config.max_discharge_kw if self._may_discharge(link) else 0.0,
            min_kw=self.config.min_kw,
            energy_import_kwh=state.energy_import_kwh,
            energy_export_kwh=state.energy_export_kwh,
            session_energy_kwh=state.session_energy_kwh,
            session_id=state.session_id,
            soc_pct=state.soc_pct if state.state.vehicle_present else None,
            commanded_kw=self._commanded,
            commanded_since=self._changed_at if self._commanded is not None else None,
            setpoint_unused=self._unused,
            resolution_kw=profiles.resolution_kw(self.config, unit),
        )

    async def command(self, setpoint_kw: float) -> None:
        """Send the setpoint as a charging profile when it moved or its profile nears its end."""
        link = self._link()
        kw = setpoint_kw if setpoint_kw >= 0 or self._may_discharge(link) else 0.0
        unit = profiles.unit_for(self.config, link.caps)
        limit = profiles.limit_in(self.config, kw, unit)
        told = profiles.kw_of(self.config, limit, unit)
        now = self.now()
        if told != self._commanded:
            self._changed_at = now
        self._commanded = told
        if self._due(told, unit, now, link):
            await self._send(link, told, limit, unit, now)
        elif self._composite_differs() and now - self._composite_at >= COMPOSITE_RECHECK_S:
            assert self.sent is not None
            await self._check_composite(link, self.sent.unit)

    async def arm_failsafe(self, timeout_s: float, fallback_kw: float) -> None:
        """Install the fallback power as a TxDefaultProfile (or the station-wide maximum) at the
        bottom of the stack, with no end (`timeout_s` is the profiles' validity: unused here)."""
        link = self._link()
        await self.install_failsafe(link, fallback_kw)

    # -- what the server asks ------------------------------------------------------------------

    async def install_failsafe(self, link: Link, fallback_kw: float) -> None:
        """Send the fail-safe profile, trying each purpose the charge point has not refused."""
        unit = profiles.unit_for(self.config, link.caps)
        limit = profiles.limit_in(self.config, fallback_kw, unit)
        body = profiles.schedule(self.config, limit, unit, None, None)
        timeout = self.server.boot_timeout_s
        for purpose in profiles.FAILSAFE_PURPOSES:
            if purpose in self.server.refused(link.identity):
                continue
            status = await link.set_profile(
                self.config.connector,
                purpose,
                profiles.FAILSAFE_LEVEL,
                self._profile_id(purpose, failsafe=True),
                body,
                None,
                timeout,
            )
            if status == "Accepted":
                self.failsafe_purpose = purpose
                return
            self.server.refuse(link.identity, purpose, status)
        raise DeviceRejected(
            self.label, f"{link.identity} refuses every fail-safe profile purpose", 0
        )

    def rebooted(self) -> None:
        """The charge point booted again: every profile it had is gone."""
        self.sent, self.applied_kw, self.failsafe_purpose, self._pending = None, None, None, None

    async def release(self) -> None:
        """Leave the charge point at its safe power: clear the dynamic profile (the fail-safe
        below it then applies), or if that fails, send the fallback power as the limit."""
        link = self.server.link(self.config.identity)
        sent = self.sent
        if link is None or sent is None:
            return
        timeout = self.server.boot_timeout_s
        try:
            status = await link.clear_profile(sent.profile_id, timeout)
            if status != "Accepted":
                raise DeviceRejected(self.label, f"ClearChargingProfile: {status}", 0)
        except DriverError:
            unit = profiles.unit_for(self.config, link.caps)
            limit = profiles.limit_in(self.config, self.config.fallback_kw, unit)
            await self._send(link, self.config.fallback_kw, limit, unit, self.now())
        else:
            self.sent = None
        log.info("%s: left at its fail-safe %.0f kW", self.label, self.config.fallback_kw)

    def facts(self) -> dict[str, Any]:
        """What is known of the charge point's smart charging, for status and logs."""
        link = self.server.link(self.config.identity)
        return {
            "connected": link is not None,
            "version": self.config.ocpp_version,
            "purpose": None if self.sent is None else self.sent.purpose,
            "unit": None if self.sent is None else self.sent.unit,
            "failsafe_purpose": self.failsafe_purpose,
            "refused_purposes": sorted(self.server.refused(self.config.identity)),
            "composite_kw": self.composite_kw,
            "latency_s": self.latency_s,
            "capabilities": None if link is None else dict(link.caps.answers),
        }

    # -- inside --------------------------------------------------------------------------------

    def _link(self) -> Link:
        link = self.server.link(self.config.identity)
        if link is None:
            raise ConnectionLost(
                self.label, f"charge point {self.config.identity} is not connected"
            )
        return link

    def _may_discharge(self, link: Link) -> bool:
        return self.config.bidirectional and link.version == "2.0.1" and link.caps.bidirectional

    def _due(self, kw: float, unit: Unit, now: float, link: Link) -> bool:
        sent = self.sent
        if sent is None or sent.unit != unit:
            return True
        state = link.connectors.get(self.config.connector)
        transaction = None if state is None else state.transaction_id
        if sent.purpose == "TxProfile" and sent.transaction != transaction:
            return True
        if (
            sent.purpose != "TxProfile"
            and transaction is not None
            and "TxProfile" not in self.server.refused(link.identity, transaction)
        ):
            return True  # a transaction started: its own profile now
        validity = self.server.settings.profile_validity_s
        if now - sent.at >= RENEW_AT * validity:
            return True
        return abs(kw - sent.kw) >= self.server.settings.deadband_kw

    async def _send(self, link: Link, kw: float, limit: float, unit: Unit, now: float) -> None:
        validity = self.server.settings.profile_validity_s
        state = link.connectors.get(self.config.connector)
        transaction = None if state is None else state.transaction_id
        body = profiles.schedule(self.config, limit, unit, now, validity)
        timeout = self.server.io_timeout_s
        refused = self.server.refused(link.identity, transaction)
        for purpose in profiles.PURPOSES:
            if purpose in refused or (purpose == "TxProfile" and transaction is None):
                continue
            profile_id = self._profile_id(purpose, failsafe=False)
            status = await link.set_profile(
                self.config.connector,
                purpose,
                profiles.DYNAMIC_LEVEL,
                profile_id,
                body,
                now + validity,
                timeout,
            )
            if status != "Accepted":
                self.server.refuse(link.identity, purpose, status, transaction)
                continue
            before = self.sent
            self.sent = Sent(kw, limit, unit, purpose, profile_id, now, transaction)
            self._unused = ""
            if before is not None and before.purpose != purpose:
                await self._clear_quietly(link, before.profile_id)
            if before is None or before.kw != kw:
                self._expect(now, kw, state)
                self.applied_kw = kw
                await self._check_composite(link, unit)
            return
        self._unused = f"{link.identity} refuses every charging profile purpose"
        raise DeviceRejected(self.label, self._unused, 0)

    async def _clear_quietly(self, link: Link, profile_id: int) -> None:
        try:
            await link.clear_profile(profile_id, self.server.io_timeout_s)
        except DriverError as exc:
            log.warning("%s: could not clear profile %d: %s", self.label, profile_id, exc)

    def _composite_differs(self) -> bool:
        sent, composite = self.sent, self.composite_kw
        if sent is None or composite is None:
            return False
        return abs(composite - sent.kw) > profiles.resolution_kw(self.config, sent.unit) + 1e-9

    async def _check_composite(self, link: Link, unit: Unit) -> None:
        if link.identity in self.server.no_composite:
            return
        self._composite_at = self.now()
        try:
            limit = await link.composite(
                self.config.connector,
                math.ceil(self.server.settings.profile_validity_s),
                unit,
                self.server.io_timeout_s,
            )
        except DriverError as exc:
            self.server.no_composite.add(link.identity)
            log.info(
                "%s: no GetCompositeSchedule (%s); trusting accepted profiles", self.label, exc
            )
            return
        if limit is None:
            return
        self.composite_kw = profiles.kw_of(self.config, limit, unit)
        self.applied_kw = self.composite_kw

    def _expect(self, now: float, kw: float, state: ConnectorState | None) -> None:
        """Time the power's move towards `kw` from what the pile draws now. Steps sent while
        the power is still on its way in the same direction (a ramp) keep the first one's
        time, so a charge point that applies late is timed from the first step it missed."""
        drawn = 0.0
        if state is not None and state.transaction_id is not None:
            drawn = state.sample.power_kw or 0.0
        pending = self._pending
        if pending is not None and (kw - pending[2]) * (pending[1] - pending[2]) > 0:
            self._pending = (pending[0], kw, pending[2])
        else:
            self._pending = (now, kw, drawn)

    def _measure_latency(self, power: float, sample_at: float | None) -> None:
        pending = self._pending
        if pending is None or sample_at is None:
            return
        sent_at, target, before = pending
        if sample_at - sent_at > LATENCY_WINDOW_S:
            self._pending = None
            return
        if sample_at <= sent_at:
            return
        tolerance = max(1.0, 0.05 * self.config.max_kw)
        if abs(target - before) <= 2 * tolerance:
            self._pending = None  # what it drew was already near enough: nothing to time
            return
        lowered = target < before and power <= target + tolerance
        raised = target > before and power >= target - tolerance
        if lowered or raised:
            self._pending = None
            self.latency_s = sample_at - sent_at
            log.info(
                "%s: applied %.0f kW %.1f s after its profile was sent",
                self.label,
                target,
                self.latency_s,
            )

    def _profile_id(self, purpose: str, *, failsafe: bool) -> int:
        base = 1000 if failsafe else 2000
        if purpose == "ChargePointMaxProfile":
            return base + 900
        offset = 0 if purpose == "TxProfile" else 300
        return base + offset + self.config.connector
