"""A simulated OCPP charge point (1.6J or 2.0.1, AC or DC) over one of the plant's pile models.

The charge point is the pile's firmware: it connects to the station's CSMS as a websocket client
(`ws://host:port/<identity>`, subprotocol `ocpp1.6` or `ocpp2.0.1`; basic auth and TLS for
security profiles 1-3), boots (BootNotification until Accepted, then Heartbeat at the interval
given), tells its state (StatusNotification), runs a transaction while the plant's vehicle is
plugged in (Authorize and Start/StopTransaction, or TransactionEvent Started/Updated/Ended),
sends meter values from the pile model every sample interval, answers configuration requests
(GetConfiguration/ChangeConfiguration, GetVariables/SetVariables) with its capabilities, and keeps
a profile stack (SetChargingProfile, ClearChargingProfile, GetCompositeSchedule;
`simulator.ocpp.profiles`) whose composite limit it writes to the pile model's setpoint, in kW.

There is no watchdog: a charge point left alone keeps its profiles until their validity runs out,
then falls back to what remains (its TxDefaultProfile or max profile), or its rating. A dropped
link is tried again with a backoff on the clock. Quirks (`ChargePointQuirks`) and the fault
script (`ws-drop`, `reboot`, `rejects-purpose`, ...) make it misbehave as charge points in the
field do.

The charge point's own loop takes part in virtual time (its requests hold the clock while they
wait for answers); what the CSMS asks of it is answered as it arrives, at the clock's time then.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from base.clock import Clock, Ticker
from base.devicemap import PileMode
from base.stationdevices import ChargePointQuirks
from simulator.faults import FaultKind, FaultScript
from simulator.ocpp.profiles import Electrics, Profile, ProfileStack, Purpose, purpose_of
from simulator.plant import PileModel

log = logging.getLogger(__name__)

OcppVersion = Literal["1.6", "2.0.1"]
SUBPROTOCOLS: dict[str, str] = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1"}
# Reconnection backoff (clock seconds): doubles from the first to the last.
BACKOFF_S = (1.0, 30.0)
# Intervals until the CSMS sets its own.
DEFAULT_HEARTBEAT_S = 60.0
DEFAULT_METER_S = 60.0
# Below this an AC charge point pauses (IEC 61851).
MIN_CURRENT_A = 6.0
# A reset (Reset request) keeps the charge point off this long.
RESET_DOWN_S = 5.0
VENDOR = "flexcharge-sim"
_UNIT_NAMES = {"A": "Current", "W": "Power"}


def timestamp(now: float) -> str:
    """An OCPP date-time (UTC, milliseconds)."""
    text = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


@dataclass(frozen=True)
class Endpoint:
    """Where and how a charge point reaches its CSMS: `url` without the identity (ws:// or
    wss://), the basic-auth password (security profiles 1-2) and the TLS context (2-3)."""

    url: str
    password: str | None = None
    ssl: ssl.SSLContext | None = None


@dataclass
class Transaction:
    """A transaction of the charge point, for one plug-in of the pile's vehicle."""

    id: str
    session: int
    id_tag: str
    started: float
    meter_start_wh: float
    seq: int = 0
    ended: float | None = None
    meter_stop_wh: float = 0.0
    reason: str = "EVDisconnected"


class SimulatedChargePoint:
    """One OCPP charge point (one connector or EVSE) driving one pile model of the plant."""

    def __init__(
        self,
        pile: PileModel,
        clock: Clock,
        endpoint: Endpoint,
        *,
        version: OcppVersion,
        identity: str,
        connector: int = 1,
        supply: Literal["ac", "dc"] = "dc",
        quirks: ChargePointQuirks | None = None,
        faults: FaultScript | None = None,
        step_s: float = 1.0,
    ) -> None:
        self.pile = pile
        self.clock = clock
        self.endpoint = endpoint
        self.version = version
        self.identity = identity
        self.connector = connector
        self.supply = supply
        self.quirks = quirks or ChargePointQuirks()
        self.faults = faults or FaultScript()
        self.step_s = step_s
        config = pile.config
        self.electrics = Electrics(supply, config.phases, config.voltage_v, config.dc_voltage_v)
        self.stack = ProfileStack(self.electrics)
        self.heartbeat_s = DEFAULT_HEARTBEAT_S
        self.meter_s = DEFAULT_METER_S
        self.tx: Transaction | None = None
        self.ended: list[Transaction] = []
        self.boots = 0
        self.connections = 0
        # The power it applies now (kW), and what it last wrote to the pile.
        self.limit_kw = 0.0
        self._applied: tuple[float, PileMode] | None = None
        self._link: _Link | None = None
        self._receiving: asyncio.Task[None] | None = None
        self._booted = False
        self._next_boot = -math.inf
        self._next_attempt = -math.inf
        self._backoff = BACKOFF_S[0]
        self._next_heartbeat = math.inf
        self._next_meter = math.inf
        self._status: str | None = None
        self._refused_session: int | None = None
        self._tx_count = 0
        self._starting: Transaction | None = None
        self._down_until = -math.inf
        self._reboots_seen: set[float] = set()
        # An OCPP charge point has no Modbus-style watchdog: its profiles' validity is its
        # fail-safe.
        pile.comm_timeout_s = math.inf

    @property
    def id(self) -> str:
        """The pile's id."""
        return self.pile.id

    @property
    def connected(self) -> bool:
        """True while booted on an open link."""
        return self._link is not None and self._booted

    @property
    def rating_kw(self) -> float:
        """What it delivers without a profile."""
        return self.pile.max_charge_kw

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled: connect (again), converse, apply profiles, every step."""
        with self.clock.participant():
            ticker = Ticker(self.clock, self.step_s)
            try:
                while True:
                    await self.tick(self.clock.now())
                    await ticker.wait()
            finally:
                await self._disconnect()

    async def tick(self, now: float) -> None:
        """One step of the firmware at `now`."""
        self._track_reboot(now)
        self._track_vehicle(now)
        self.apply(now)
        if self._link is None:
            if self._reachable(now) and now >= self._next_attempt:
                await self._connect(now)
            if self._link is None:
                return
        assert self._receiving is not None
        if not self._reachable(now) or self._receiving.done():
            await self._disconnect()
            self._next_attempt = now + self._backoff
            return
        try:
            await self._converse(now)
        except (ConnectionClosed, OSError, TimeoutError) as exc:
            log.info("%s: link to the CSMS lost: %s", self.identity, exc)
            await self._disconnect()
            self._next_attempt = now + self._backoff

    def _reachable(self, now: float) -> bool:
        return now >= self._down_until and self.faults.reachable(self.id, now)

    async def _connect(self, now: float) -> None:
        endpoint = self.endpoint
        headers = {}
        if endpoint.password is not None:
            token = base64.b64encode(f"{self.identity}:{endpoint.password}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        protocol = SUBPROTOCOLS[self.version]
        try:
            ws = await connect(
                f"{endpoint.url.rstrip('/')}/{self.identity}",
                subprotocols=[Subprotocol(protocol)],
                additional_headers=headers,
                ssl=endpoint.ssl,
                open_timeout=5,
                close_timeout=2,
            )
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            log.debug("%s: cannot connect to %s: %s", self.identity, endpoint.url, exc)
            self._next_attempt = now + self._backoff
            self._backoff = min(2 * self._backoff, BACKOFF_S[1])
            return
        if ws.subprotocol != protocol:
            log.warning("%s: the CSMS did not take subprotocol %s", self.identity, protocol)
            await ws.close()
            self._next_attempt = now + self._backoff
            self._backoff = min(2 * self._backoff, BACKOFF_S[1])
            return
        link: _Link = Link16(self, ws) if self.version == "1.6" else Link201(self, ws)
        self._link = link
        self._receiving = asyncio.create_task(link.start(), name=f"ocpp {self.identity}")
        self._booted = False
        self._next_boot = now
        self._status = None
        self.connections += 1

    async def _disconnect(self) -> None:
        link, receiving = self._link, self._receiving
        self._link, self._receiving, self._booted = None, None, False
        if link is not None:
            await link.ws.close()
        if receiving is not None:
            receiving.cancel()
            await asyncio.gather(receiving, return_exceptions=True)

    async def _converse(self, now: float) -> None:
        link = self._link
        assert link is not None
        if not self._booted:
            if now < self._next_boot:
                return
            status, interval = await link.boot()
            if status != "Accepted":
                self._next_boot = now + (interval if interval > 0 else 10.0)
                return
            self._booted = True
            self.boots += 1
            self._backoff = BACKOFF_S[0]
            if interval > 0:
                self.heartbeat_s = float(interval)
            self._next_heartbeat = now + self.heartbeat_s
            self._next_meter = now + self.meter_s
        while self.ended:
            await link.stop_transaction(self.ended[0])
            self.ended.pop(0)
        pile = self.pile
        if (
            self.tx is None
            and pile.vehicle is not None
            and pile.session_id != self._refused_session
            and now >= pile.down_until
        ):
            await self._start_transaction(link, now)
        status = self.status()
        if status != self._status:
            await link.status(status, now)
            self._status = status
        if now >= self._next_meter:
            self._next_meter = now + self.meter_s
            await link.meter_values(now)
        if now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_s
            await link.heartbeat()

    async def _start_transaction(self, link: _Link, now: float) -> None:
        vehicle = self.pile.vehicle
        assert vehicle is not None
        id_tag = vehicle.visit.vehicle_id[:20]
        session = self.pile.session_id
        if not await link.authorize(id_tag):
            log.info("%s: %s not authorized", self.identity, id_tag)
            self._refused_session = session
            return
        self._tx_count += 1
        tx = Transaction(
            id=f"{self.identity}-{self._tx_count}",
            session=session,
            id_tag=id_tag,
            started=now,
            meter_start_wh=self.energy_wh,
        )
        # Its answer may be followed at once by the CSMS's TxProfile for it, which the link
        # handles before this coroutine resumes: the transaction being started takes it.
        self._starting = tx
        try:
            tx_id = await link.start_transaction(tx)
        finally:
            self._starting = None
        if tx_id is None:
            self._refused_session = session
            return
        tx.id = tx_id
        self.tx = tx
        self.apply(now)

    def _track_vehicle(self, now: float) -> None:
        """A vehicle that left (or a new plug-in) ends the transaction, online or not."""
        tx = self.tx
        if tx is not None and (self.pile.vehicle is None or self.pile.session_id != tx.session):
            self._end_transaction(now, "EVDisconnected")

    def _end_transaction(self, now: float, reason: str) -> None:
        tx = self.tx
        if tx is None:
            return
        tx.ended, tx.meter_stop_wh, tx.reason = now, self.energy_wh, reason
        self.ended.append(tx)
        self.tx = None
        self.stack.end_transaction()

    def _track_reboot(self, now: float) -> None:
        fault = self.faults.active(FaultKind.REBOOT, self.id, now)
        if fault is not None and fault.start not in self._reboots_seen:
            self._reboots_seen.add(fault.start)
            self.reboot(now, fault.amount, plant=False)
        if now >= self._down_until and self._applied is None:
            self.pile.comm_timeout_s = math.inf

    def reboot(self, now: float, down_s: float, *, plant: bool = True) -> None:
        """Restart: off for `down_s` (`plant`: power the pile model down too), its profiles and
        transaction lost, then boot again."""
        if plant:
            self.pile.reboot(now, down_s)
        self._down_until = now + down_s
        self._end_transaction(now, "Reboot")
        self.stack.profiles.clear()
        self._applied = None
        self._refused_session = None

    # -- the plant -----------------------------------------------------------------------------

    def target_kw(self, now: float) -> float:
        """The power the charge point allows now: nothing outside a transaction, else its
        composite limit (its rating without one), within its ratings."""
        pile = self.pile
        if self.tx is None or pile.vehicle is None:
            return 0.0
        kw = self.rating_kw
        if self.quirks.applies_profiles:
            limit = self.stack.limit_at(
                now, self.tx.started, expires=not self.quirks.keeps_last_profile
            )
            if limit.kw is not None:
                kw = limit.kw
        kw = max(-pile.max_discharge_kw, min(kw, pile.max_charge_kw))
        if self.supply == "ac" and 0 < self.electrics.from_kw(kw, "A") < MIN_CURRENT_A:
            return 0.0
        return kw

    def apply(self, now: float) -> None:
        """Write the limit in force to the pile model (when it changed)."""
        if now < self._down_until:
            return
        kw = self.target_kw(now)
        mode = PileMode.CHARGE if kw > 0 else PileMode.DISCHARGE if kw < 0 else PileMode.IDLE
        self.limit_kw = kw
        if self._applied != (kw, mode):
            self.pile.comm_timeout_s = math.inf
            self.pile.command(now, kw, mode)
            # A pile that ignores what it is told is told again until it takes it.
            self._applied = None if self.pile.ignoring else (kw, mode)

    @property
    def energy_wh(self) -> float:
        """The energy register, Wh."""
        return self.pile.energy_import_kwh * 1000

    def status(self) -> str:
        """The connector's status in OCPP 1.6 words."""
        pile = self.pile
        if pile.fault_code:
            return "Faulted"
        if pile.vehicle is None:
            return "Available"
        if self.tx is None:
            return "Preparing"
        if abs(pile.power_kw) > 0.5:
            return "Charging"
        if pile.vehicle.full:
            return "SuspendedEV"
        return "SuspendedEVSE" if self.limit_kw == 0 else "Charging"

    def samples(self) -> list[tuple[str, float, str, str | None]]:
        """What its meter says now: (measurand, value, unit, phase)."""
        pile = self.pile
        power_kw = max(0.0, pile.power_kw)
        found: list[tuple[str, float, str, str | None]] = [
            ("Power.Active.Import", round(power_kw * 1000, 1), "W", None),
            ("Energy.Active.Import.Register", round(self.energy_wh, 1), "Wh", None),
        ]
        config = pile.config
        if self.supply == "ac":
            amps = power_kw * 1000 / (config.phases * config.voltage_v)
            for index in (1, 2, 3):
                live = config.phases == 3 or config.phase in (None, f"L{index}")
                if config.phases == 1 and config.phase is None:
                    live = index == 1
                found.append(("Current.Import", round(amps if live else 0.0, 2), "A", f"L{index}"))
        elif pile.vehicle is not None:
            volts = 600.0 + 150.0 * pile.vehicle.soc  # as the DC pile's registers show it
            found.append(("Current.Import", round(power_kw * 1000 / volts, 2), "A", None))
            found.append(("SoC", round(pile.vehicle.soc * 100, 1), "Percent", None))
        return found

    # -- smart charging --------------------------------------------------------------------------

    def set_profile(self, connector: int, data: Mapping[str, Any]) -> tuple[str, str | None]:
        """SetChargingProfile: (status, reason) after the quirks had their say."""
        now = self.clock.now()
        name = str(data.get("charging_profile_purpose"))
        if connector not in (0, self.connector):
            return "Rejected", "UnknownEvse"
        if name in self.quirks.rejects_purposes or name in self.faults.rejected_purposes(
            self.id, now
        ):
            return "Rejected", "UnsupportedPurpose"
        purpose = purpose_of(name)
        if purpose is None:
            return "Rejected", "UnsupportedPurpose"
        profile = Profile.from_ocpp(data, received=now, effective=now + self.quirks.apply_delay_s)
        if profile.unit not in self.quirks.rate_units:
            return "Rejected", "UnsupportedRateUnit"
        if len(profile.periods) > self.quirks.max_periods:
            return "Rejected", "TooManyPeriods"
        if profile.stack_level > self.quirks.max_stack_level:
            return "Rejected", "StackLevelTooHigh"
        if purpose is Purpose.TX and not self._takes_tx_profile(profile.transaction_id):
            return "Rejected", "TxNotFound"
        discharge = self.version == "2.0.1" and self.pile.max_discharge_kw > 0
        if not discharge and any(p.limit < 0 for p in profile.periods):
            return "Rejected", "NoDischarge"
        self.stack.install(profile)
        self.apply(now)
        return "Accepted", None

    def _takes_tx_profile(self, transaction_id: str | None) -> bool:
        """A TxProfile is for the running transaction, or for the one being started (in 1.6
        its id is in the StartTransaction answer just received)."""
        if self.tx is not None:
            return transaction_id is None or transaction_id == self.tx.id
        starting = self._starting
        if starting is None:
            return False
        return transaction_id is None or self.version == "1.6" or transaction_id == starting.id

    def clear_profiles(
        self, profile_id: int | None, name: str | None, stack_level: int | None
    ) -> str:
        """ClearChargingProfile: Accepted if any went, else Unknown."""
        purpose = None if name is None else purpose_of(name)
        if name is not None and purpose is None:
            return "Unknown"
        removed = self.stack.clear(profile_id, purpose, stack_level)
        self.apply(self.clock.now())
        return "Accepted" if removed else "Unknown"

    def composite(self, duration_s: int, unit: str | None) -> tuple[str, list[dict[str, Any]]]:
        """GetCompositeSchedule: (unit, periods) from now, or ("", []) for a unit it does not
        take."""
        unit = unit or self.quirks.rate_units[0]
        if unit not in self.quirks.rate_units:
            return "", []
        now = self.clock.now()
        tx_start = None if self.tx is None else self.tx.started
        periods = self.stack.composite(
            now,
            duration_s,
            tx_start,
            self.rating_kw,
            expires=not self.quirks.keeps_last_profile,
        )
        out: list[dict[str, Any]] = []
        for offset, kw in periods:
            period: dict[str, Any] = {
                "start_period": round(offset),
                "limit": round(self.electrics.from_kw(kw, unit), 1),
            }
            if self.supply == "ac":
                period["number_phases"] = self.electrics.phases
            out.append(period)
        return unit, out

    # -- configuration ---------------------------------------------------------------------------

    def settings(self) -> dict[str, tuple[str, bool]]:
        """Its configuration, by OCPP 1.6 key: (value, read-only)."""
        quirks = self.quirks
        units = ",".join(_UNIT_NAMES[u] for u in quirks.rate_units)
        measurands = "Power.Active.Import,Energy.Active.Import.Register,Current.Import"
        if self.supply == "dc":
            measurands += ",SoC"
        return {
            "HeartbeatInterval": (str(round(self.heartbeat_s)), False),
            "MeterValueSampleInterval": (str(round(self.meter_s)), False),
            "MeterValuesSampledData": (measurands, True),
            "ChargeProfileMaxStackLevel": (str(quirks.max_stack_level), True),
            "ChargingScheduleAllowedChargingRateUnit": (units, True),
            "ChargingScheduleMaxPeriods": (str(quirks.max_periods), True),
            "MaxChargingProfilesInstalled": (str(3 * (quirks.max_stack_level + 1)), True),
            "SupportedFeatureProfiles": ("Core,SmartCharging", True),
            "NumberOfConnectors": (str(max(1, self.connector)), True),
        }

    def change(self, key: str, value: str) -> str:
        """ChangeConfiguration / SetVariables of an interval: Accepted, Rejected or
        NotSupported."""
        setters: dict[str, Callable[[float], None]] = {
            "HeartbeatInterval": self._set_heartbeat,
            "MeterValueSampleInterval": self._set_meter,
        }
        if key not in self.settings():
            return "NotSupported"
        setter = setters.get(key)
        if setter is None:
            return "Rejected"
        try:
            seconds = float(value)
        except ValueError:
            return "Rejected"
        if not math.isfinite(seconds) or seconds <= 0:
            return "Rejected"
        setter(seconds)
        return "Accepted"

    def _set_heartbeat(self, seconds: float) -> None:
        self.heartbeat_s = seconds
        self._next_heartbeat = min(self._next_heartbeat, self.clock.now() + seconds)

    def _set_meter(self, seconds: float) -> None:
        self.meter_s = seconds
        self._next_meter = min(self._next_meter, self.clock.now() + seconds)

    def variables(self) -> dict[tuple[str, str], tuple[str, bool]]:
        """Its device model (2.0.1), by (component, variable): (value, read-only)."""
        settings = self.settings()
        found = {
            ("SmartChargingCtrlr", "Enabled"): ("true", True),
            ("SmartChargingCtrlr", "RateUnit"): (",".join(self.quirks.rate_units), True),
            ("SmartChargingCtrlr", "PeriodsPerSchedule"): (str(self.quirks.max_periods), True),
            ("SmartChargingCtrlr", "ProfileStackLevel"): (str(self.quirks.max_stack_level), True),
            ("SmartChargingCtrlr", "Entries"): (settings["MaxChargingProfilesInstalled"][0], True),
            ("SampledDataCtrlr", "TxUpdatedInterval"): settings["MeterValueSampleInterval"],
            ("SampledDataCtrlr", "TxUpdatedMeasurands"): settings["MeterValuesSampledData"],
            ("OCPPCommCtrlr", "HeartbeatInterval"): settings["HeartbeatInterval"],
            ("EVSE", "Power"): (str(round(self.rating_kw * 1000)), True),
        }
        if self.pile.max_discharge_kw > 0:
            found[("V2XChargingCtrlr", "Enabled")] = ("true", True)
        return found


_KEY_OF = {
    ("SampledDataCtrlr", "TxUpdatedInterval"): "MeterValueSampleInterval",
    ("OCPPCommCtrlr", "HeartbeatInterval"): "HeartbeatInterval",
}


class _Link:
    """What a charge point sends, in one OCPP version's messages (one per connection)."""

    ws: ClientConnection

    async def start(self) -> None:
        """Take the CSMS's requests until the link closes."""
        raise NotImplementedError

    async def boot(self) -> tuple[str, int]:
        """BootNotification: (status, interval)."""
        raise NotImplementedError

    async def heartbeat(self) -> None:
        """Heartbeat."""
        raise NotImplementedError

    async def status(self, status: str, now: float) -> None:
        """StatusNotification (`status` in 1.6 words)."""
        raise NotImplementedError

    async def authorize(self, id_tag: str) -> bool:
        """Authorize: True if accepted."""
        raise NotImplementedError

    async def start_transaction(self, tx: Transaction) -> str | None:
        """Start a transaction: its id, or None if refused."""
        raise NotImplementedError

    async def stop_transaction(self, tx: Transaction) -> None:
        """End a transaction."""
        raise NotImplementedError

    async def meter_values(self, now: float) -> None:
        """The meter's values now."""
        raise NotImplementedError


class Link16(ChargePoint16, _Link):
    """OCPP 1.6J."""

    def __init__(self, owner: SimulatedChargePoint, ws: ClientConnection) -> None:
        super().__init__(owner.identity, ws, response_timeout=10)
        self.owner = owner
        self.ws = ws

    async def boot(self) -> tuple[str, int]:
        """BootNotification."""
        result = await self.call(
            call16.BootNotification(
                charge_point_model=f"sim-{self.owner.supply}",
                charge_point_vendor=VENDOR,
                charge_point_serial_number=self.owner.identity[:25],
            )
        )
        if result is None:
            return "Rejected", 0
        return str(result.status), int(result.interval)

    async def heartbeat(self) -> None:
        """Heartbeat."""
        await self.call(call16.Heartbeat())

    async def status(self, status: str, now: float) -> None:
        """StatusNotification."""
        await self.call(
            call16.StatusNotification(
                connector_id=self.owner.connector,
                error_code="NoError" if status != "Faulted" else "OtherError",
                status=status,
                timestamp=timestamp(now),
            )
        )

    async def authorize(self, id_tag: str) -> bool:
        """Authorize."""
        result = await self.call(call16.Authorize(id_tag=id_tag))
        return result is not None and result.id_tag_info.get("status") == "Accepted"

    async def start_transaction(self, tx: Transaction) -> str | None:
        """StartTransaction."""
        result = await self.call(
            call16.StartTransaction(
                connector_id=self.owner.connector,
                id_tag=tx.id_tag,
                meter_start=round(tx.meter_start_wh),
                timestamp=timestamp(tx.started),
            )
        )
        if result is None or result.id_tag_info.get("status") != "Accepted":
            return None
        return str(result.transaction_id)

    async def stop_transaction(self, tx: Transaction) -> None:
        """StopTransaction."""
        assert tx.ended is not None
        await self.call(
            call16.StopTransaction(
                meter_stop=round(tx.meter_stop_wh),
                timestamp=timestamp(tx.ended),
                transaction_id=int(tx.id),
                reason=tx.reason,
                id_tag=tx.id_tag,
            )
        )

    async def meter_values(self, now: float) -> None:
        """MeterValues (of the transaction, if one runs)."""
        owner = self.owner
        sampled = [
            {
                "value": f"{value:g}",
                "measurand": measurand,
                "unit": unit,
                "context": "Sample.Periodic",
                "location": "EV" if measurand == "SoC" else "Outlet",
                **({"phase": phase} if phase else {}),
            }
            for measurand, value, unit, phase in owner.samples()
        ]
        await self.call(
            call16.MeterValues(
                connector_id=owner.connector,
                meter_value=[{"timestamp": timestamp(now), "sampled_value": sampled}],
                transaction_id=None if owner.tx is None else int(owner.tx.id),
            )
        )

    @on("SetChargingProfile")
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any
    ) -> Any:
        """A profile for the stack."""
        status, _reason = self.owner.set_profile(connector_id, cs_charging_profiles)
        return result16.SetChargingProfile(status=status)

    @on("ClearChargingProfile")
    def on_clear_charging_profile(
        self,
        id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> Any:
        """Profiles off the stack."""
        status = self.owner.clear_profiles(id, charging_profile_purpose, stack_level)
        return result16.ClearChargingProfile(status=status)

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(
        self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        """The composite schedule from now."""
        owner = self.owner
        unit, periods = owner.composite(duration, charging_rate_unit)
        if not periods or connector_id not in (0, owner.connector):
            return result16.GetCompositeSchedule(status="Rejected")
        return result16.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=timestamp(owner.clock.now()),
            charging_schedule={
                "duration": duration,
                "charging_rate_unit": unit,
                "charging_schedule_period": periods,
            },
        )

    @on("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        """Configuration keys, and those it does not know."""
        settings = self.owner.settings()
        wanted = key or list(settings)
        known = [
            {"key": k, "readonly": settings[k][1], "value": settings[k][0]}
            for k in wanted
            if k in settings
        ]
        unknown = [k for k in wanted if k not in settings]
        return result16.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        """A configuration key set."""
        return result16.ChangeConfiguration(status=self.owner.change(key, value))

    @on("Reset")
    def on_reset(self, type: str, **_: Any) -> Any:
        """A reset: accepted, then a reboot."""
        owner = self.owner
        owner.reboot(owner.clock.now(), RESET_DOWN_S)
        return result16.Reset(status="Accepted")


_STATUS_201 = {
    "Available": ("Available", None),
    "Preparing": ("Occupied", "EVConnected"),
    "Charging": ("Occupied", "Charging"),
    "SuspendedEV": ("Occupied", "SuspendedEV"),
    "SuspendedEVSE": ("Occupied", "SuspendedEVSE"),
    "Faulted": ("Faulted", None),
}


class Link201(ChargePoint201, _Link):
    """OCPP 2.0.1."""

    def __init__(self, owner: SimulatedChargePoint, ws: ClientConnection) -> None:
        super().__init__(owner.identity, ws, response_timeout=10)
        self.owner = owner
        self.ws = ws
        self._charging_state: str | None = None

    @property
    def _evse(self) -> dict[str, int]:
        return {"id": self.owner.connector, "connector_id": 1}

    async def boot(self) -> tuple[str, int]:
        """BootNotification."""
        result = await self.call(
            call201.BootNotification(
                charging_station={
                    "model": f"sim-{self.owner.supply}",
                    "vendor_name": VENDOR,
                    "serial_number": self.owner.identity[:25],
                },
                reason="PowerUp",
            )
        )
        if result is None:
            return "Rejected", 0
        return str(result.status), int(result.interval)

    async def heartbeat(self) -> None:
        """Heartbeat."""
        await self.call(call201.Heartbeat())

    async def status(self, status: str, now: float) -> None:
        """StatusNotification, and a TransactionEvent when the charging state changed."""
        owner = self.owner
        connector, charging = _STATUS_201[status]
        await self.call(
            call201.StatusNotification(
                timestamp=timestamp(now),
                connector_status=connector,
                evse_id=owner.connector,
                connector_id=1,
            )
        )
        tx = owner.tx
        if tx is not None and charging is not None and charging != self._charging_state:
            self._charging_state = charging
            await self._event(tx, "Updated", "ChargingStateChanged", now)

    async def authorize(self, id_tag: str) -> bool:
        """Authorize."""
        result = await self.call(call201.Authorize(id_token=_token(id_tag)))
        return result is not None and result.id_token_info.get("status") == "Accepted"

    async def start_transaction(self, tx: Transaction) -> str | None:
        """TransactionEvent Started."""
        self._charging_state = "EVConnected"
        result = await self._event(tx, "Started", "Authorized", tx.started, token=True)
        info = getattr(result, "id_token_info", None)
        if info is not None and info.get("status") != "Accepted":
            return None
        return tx.id

    async def stop_transaction(self, tx: Transaction) -> None:
        """TransactionEvent Ended."""
        assert tx.ended is not None
        trigger = "EVDeparted" if tx.reason == "EVDisconnected" else "AbnormalCondition"
        await self._event(tx, "Ended", trigger, tx.ended, stopped=tx.reason)

    async def meter_values(self, now: float) -> None:
        """TransactionEvent Updated with the meter's values in a transaction, else
        MeterValues."""
        owner = self.owner
        values = [self._meter_value(now)]
        if owner.tx is not None:
            await self._event(owner.tx, "Updated", "MeterValuePeriodic", now, values=values)
        else:
            await self.call(call201.MeterValues(evse_id=owner.connector, meter_value=values))

    def _meter_value(self, now: float) -> dict[str, Any]:
        sampled = []
        for measurand, value, unit, phase in self.owner.samples():
            sample: dict[str, Any] = {
                "value": value,
                "measurand": measurand,
                "context": "Sample.Periodic",
                "unit_of_measure": {"unit": unit},
            }
            if phase:
                sample["phase"] = phase
            sampled.append(sample)
        return {"timestamp": timestamp(now), "sampled_value": sampled}

    async def _event(
        self,
        tx: Transaction,
        event: str,
        trigger: str,
        when: float,
        *,
        token: bool = False,
        stopped: str | None = None,
        values: list[dict[str, Any]] | None = None,
    ) -> Any:
        info: dict[str, Any] = {"transaction_id": tx.id}
        if event != "Ended":
            info["charging_state"] = self._charging_state or "EVConnected"
        if stopped is not None:
            info["stopped_reason"] = stopped
        if event == "Ended":
            values = [
                {
                    "timestamp": timestamp(when),
                    "sampled_value": [
                        {
                            "value": round(tx.meter_stop_wh, 1),
                            "measurand": "Energy.Active.Import.Register",
                            "context": "Transaction.End",
                            "unit_of_measure": {"unit": "Wh"},
                        }
                    ],
                }
            ]
        seq = tx.seq
        tx.seq += 1
        return await self.call(
            call201.TransactionEvent(
                event_type=event,
                timestamp=timestamp(when),
                trigger_reason=trigger,
                seq_no=seq,
                transaction_info=info,
                meter_value=values,
                evse=self._evse if event == "Started" else None,
                id_token=_token(tx.id_tag) if token else None,
            )
        )

    @on("SetChargingProfile")
    def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **_: Any
    ) -> Any:
        """A profile for the stack."""
        status, reason = self.owner.set_profile(evse_id, charging_profile)
        info = None if reason is None else {"reason_code": reason}
        return result201.SetChargingProfile(status=status, status_info=info)

    @on("ClearChargingProfile")
    def on_clear_charging_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        """Profiles off the stack."""
        criteria = charging_profile_criteria or {}
        status = self.owner.clear_profiles(
            charging_profile_id,
            criteria.get("charging_profile_purpose"),
            criteria.get("stack_level"),
        )
        return result201.ClearChargingProfile(status=status)

    @on("GetCompositeSchedule")
    def on_get_composite_schedule(
        self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any
    ) -> Any:
        """The composite schedule from now."""
        owner = self.owner
        unit, periods = owner.composite(duration, charging_rate_unit)
        if not periods or evse_id not in (0, owner.connector):
            return result201.GetCompositeSchedule(status="Rejected")
        return result201.GetCompositeSchedule(
            status="Accepted",
            schedule={
                "evse_id": evse_id,
                "duration": duration,
                "schedule_start": timestamp(owner.clock.now()),
                "charging_rate_unit": unit,
                "charging_schedule_period": periods,
            },
        )

    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        """Variables of its device model."""
        known = self.owner.variables()
        components = {component for component, _ in known}
        results = []
        for item in get_variable_data:
            component, variable = item["component"]["name"], item["variable"]["name"]
            result: dict[str, Any] = {
                "component": item["component"],
                "variable": item["variable"],
            }
            if (component, variable) in known:
                result["attribute_status"] = "Accepted"
                result["attribute_value"] = known[(component, variable)][0]
            elif component in components:
                result["attribute_status"] = "UnknownVariable"
            else:
                result["attribute_status"] = "UnknownComponent"
            results.append(result)
        return result201.GetVariables(get_variable_result=results)

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        """Variables set (the intervals; the rest is read-only)."""
        owner = self.owner
        known = owner.variables()
        components = {component for component, _ in known}
        results = []
        for item in set_variable_data:
            pair = (item["component"]["name"], item["variable"]["name"])
            if pair in _KEY_OF:
                status = owner.change(_KEY_OF[pair], str(item["attribute_value"]))
            elif pair in known:
                status = "Rejected"
            else:
                status = "UnknownVariable" if pair[0] in components else "UnknownComponent"
            results.append(
                {
                    "attribute_status": status,
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return result201.SetVariables(set_variable_result=results)

    @on("Reset")
    def on_reset(self, type: str, **_: Any) -> Any:
        """A reset: accepted, then a reboot."""
        owner = self.owner
        owner.reboot(owner.clock.now(), RESET_DOWN_S)
        return result201.Reset(status="Accepted")


def _token(id_tag: str) -> dict[str, str]:
    return {"id_token": id_tag, "type": "Central"}
