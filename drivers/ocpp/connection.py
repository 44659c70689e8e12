"""One connected charge point, in OCPP 1.6J or 2.0.1, on the `ocpp` library's ChargePoint.

What the charge point sends (BootNotification, Heartbeat, StatusNotification, Authorize,
Start/StopTransaction or TransactionEvent, MeterValues) updates a `ConnectorState` per
connector; what the server asks of it (capabilities, charging profiles, composite schedules,
meter intervals) goes through the version-neutral methods of `Link`. Calls to the charge point
run in tasks of their own, never in a message handler: the library handles one incoming message
at a time, so a handler waiting for the charge point's answer would wait for ever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ocpp import v16, v201
from ocpp.exceptions import OCPPError
from ocpp.routing import on

from base.devicemap import PileState
from base.stationdevices import OcppSettings
from drivers.errors import ConnectionLost, DeviceRejected, DeviceTimeout, DriverError
from drivers.ocpp import profiles
from drivers.ocpp.profiles import Capabilities, Unit
from drivers.ocpp.samples import Sample, parse

log = logging.getLogger(__name__)
# The library logs every frame at INFO: only its warnings are ours to show.
_LIBRARY_LOG = logging.getLogger("flexcharge.ocpp.frames")
_LIBRARY_LOG.setLevel(logging.WARNING)

# 1.6 StatusNotification statuses and 2.0.1 charging states as pile states.
_STATES = {
    "Available": PileState.AVAILABLE,
    "Preparing": PileState.CONNECTED,
    "Charging": PileState.CHARGING,
    "SuspendedEV": PileState.CONNECTED,
    "SuspendedEVSE": PileState.CONNECTED,
    "EVConnected": PileState.CONNECTED,
    "Idle": PileState.CONNECTED,
    "Occupied": PileState.CONNECTED,
    "Finishing": PileState.FINISHED,
    "Reserved": PileState.AVAILABLE,
    "Unavailable": PileState.UNAVAILABLE,
    "Faulted": PileState.FAULT,
}
# The 1.6 configuration keys and 2.0.1 variables probed at boot.
KEYS_16 = (
    "ChargeProfileMaxStackLevel",
    "ChargingScheduleAllowedChargingRateUnit",
    "ChargingScheduleMaxPeriods",
    "MaxChargingProfilesInstalled",
    "SupportedFeatureProfiles",
)
VARIABLES_201 = (
    ("SmartChargingCtrlr", "RateUnit"),
    ("SmartChargingCtrlr", "PeriodsPerSchedule"),
    ("SmartChargingCtrlr", "ProfileStackLevel"),
    ("SmartChargingCtrlr", "Entries"),
    ("SmartChargingCtrlr", "Enabled"),
    # Bidirectional power transfer: a charge point that may discharge says Enabled = true.
    ("V2XChargingCtrlr", "Enabled"),
)
_UNITS_16: dict[str, Unit] = {"Current": "A", "Power": "W", "A": "A", "W": "W"}


@dataclass
class ConnectorState:
    """What one connector (1.6) or EVSE (2.0.1) said last, and when (the server's clock)."""

    status: str = "Unavailable"
    charging_state: str | None = None
    transaction_id: int | str | None = None
    session_id: int = 0
    energy_start_kwh: float | None = None
    session_energy_kwh: float = 0.0
    sample: Sample = field(default_factory=Sample)
    sample_at: float | None = None
    energy_import_kwh: float = 0.0
    energy_export_kwh: float = 0.0
    soc_pct: float | None = None
    changed_at: float | None = None

    @property
    def state(self) -> PileState:
        """The pile state this status says."""
        if self.status == "Occupied" and self.charging_state:
            return _STATES.get(self.charging_state, PileState.CONNECTED)
        state = _STATES.get(self.status, PileState.UNAVAILABLE)
        if state is PileState.CHARGING and (self.sample.power_kw or 0.0) < 0:
            return PileState.DISCHARGING
        return state

    def take(self, sample: Sample, at: float) -> None:
        """A MeterValues sample (or the one in a transaction message)."""
        merged = Sample(
            power_kw=sample.power_kw if sample.power_kw is not None else self.sample.power_kw,
            export_kw=sample.export_kw,
            current_a=sample.current_a or self.sample.current_a,
            energy_import_kwh=sample.energy_import_kwh,
            energy_export_kwh=sample.energy_export_kwh,
            soc_pct=sample.soc_pct,
        )
        if merged.export_kw and not merged.power_kw:
            merged = Sample(**{**merged.__dict__, "power_kw": -merged.export_kw})
        self.sample, self.sample_at = merged, at
        if sample.energy_import_kwh is not None:
            self.energy_import_kwh = sample.energy_import_kwh
            if self.energy_start_kwh is None and self.transaction_id is not None:
                self.energy_start_kwh = sample.energy_import_kwh
        if sample.energy_export_kwh is not None:
            self.energy_export_kwh = sample.energy_export_kwh
        if sample.soc_pct is not None:
            self.soc_pct = sample.soc_pct
        if self.transaction_id is not None and self.energy_start_kwh is not None:
            self.session_energy_kwh = max(0.0, self.energy_import_kwh - self.energy_start_kwh)

    def start(self, transaction_id: int | str, session_id: int, energy_kwh: float | None) -> None:
        """A transaction started."""
        self.transaction_id, self.session_id = transaction_id, session_id
        self.energy_start_kwh, self.session_energy_kwh = energy_kwh, 0.0
        if energy_kwh is not None:
            self.energy_import_kwh = energy_kwh
        self.soc_pct = None

    def stop(self, energy_kwh: float | None) -> None:
        """The transaction ended (the session's energy stays until the next one starts)."""
        if energy_kwh is not None:
            self.energy_import_kwh = energy_kwh
            if self.energy_start_kwh is not None:
                self.session_energy_kwh = max(0.0, energy_kwh - self.energy_start_kwh)
        self.transaction_id = None
        self.sample = Sample(power_kw=0.0, energy_import_kwh=self.energy_import_kwh)


class Csms(Protocol):
    """What a connection needs of the server."""

    settings: OcppSettings

    def now(self) -> float:
        """The server's clock."""
        ...

    def next_session(self) -> int:
        """A new session id (also the 1.6 transactionId)."""
        ...

    def booted(self, link: Link) -> None:
        """The charge point sent BootNotification (the server probes and arms it)."""
        ...


class Link:
    """A connected charge point, whichever version it speaks."""

    identity: str
    version: str
    csms: Csms
    connectors: dict[int, ConnectorState]
    caps: Capabilities
    boots: int
    last_seen: float

    def _setup(self, identity: str, csms: Csms) -> None:
        self.csms = csms
        self.connectors = {}
        self.caps = Capabilities()
        self.boots = 0
        self.last_seen = csms.now()
        self.tasks: set[asyncio.Task[Any]] = set()

    async def run(self) -> None:
        """Handle the charge point's messages until its websocket closes."""
        await self.start()  # type: ignore[attr-defined]  # the library's ChargePoint

    async def close(self) -> None:
        """Close the websocket."""
        await self._connection.close()  # type: ignore[attr-defined]

    def connector(self, number: int) -> ConnectorState:
        """The state of one connector (made on first mention)."""
        return self.connectors.setdefault(number, ConnectorState())

    def spawn(self, work: Any) -> None:
        """Run a coroutine as a task of this connection (cancelled when it closes)."""
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def ask(self, payload: Any, timeout_s: float) -> Any:
        """Send a call and return its result; raise a `DriverError` naming the charge point."""
        what = type(payload).__name__
        try:
            return await asyncio.wait_for(
                self.call(payload, suppress=False),  # type: ignore[attr-defined]
                timeout_s,
            )
        except TimeoutError:
            raise DeviceTimeout(
                self.identity, f"{what}: no answer within {timeout_s:g} s"
            ) from None
        except OCPPError as exc:
            raise DeviceRejected(self.identity, f"{what}: {exc}", 0) from exc
        except Exception as exc:  # a closed websocket
            if isinstance(exc, DriverError):
                raise
            raise ConnectionLost(self.identity, f"{what}: {exc}") from exc

    def _authorized(self, id_tag: str | None) -> str:
        tags = self.csms.settings.id_tags
        return "Accepted" if not tags or id_tag in tags else "Invalid"

    def _seen(self) -> float:
        self.last_seen = now = self.csms.now()
        return now

    # -- version-neutral requests (each version implements them) -------------------------------

    async def probe(self, timeout_s: float) -> Capabilities:
        """Ask the charge point's smart-charging capabilities."""
        raise NotImplementedError

    async def set_sample_interval(self, seconds: int, timeout_s: float) -> bool:
        """Ask for meter values every `seconds`; True if accepted."""
        raise NotImplementedError

    async def set_profile(
        self,
        connector: int,
        purpose: str,
        level: int,
        profile_id: int,
        body: dict[str, Any],
        valid_to: float | None,
        timeout_s: float,
    ) -> str:
        """Send a charging profile; the charge point's status ("Accepted", "Rejected", ...)."""
        raise NotImplementedError

    async def clear_profile(self, profile_id: int, timeout_s: float) -> str:
        """Clear one charging profile by id; the charge point's status."""
        raise NotImplementedError

    async def composite(
        self, connector: int, duration_s: int, unit: Unit, timeout_s: float
    ) -> float | None:
        """The limit the charge point applies now (GetCompositeSchedule), None if it does not
        say."""
        raise NotImplementedError


def _first_limit(schedule: dict[str, Any] | None) -> float | None:
    if not schedule:
        return None
    periods = schedule.get("charging_schedule_period") or []
    return float(periods[0]["limit"]) if periods else None


class Link16(Link, v16.ChargePoint):
    """A charge point speaking OCPP 1.6J."""

    version = "1.6"

    def __init__(self, identity: str, connection: Any, csms: Csms) -> None:
        v16.ChargePoint.__init__(self, identity, connection, logger=_LIBRARY_LOG)
        self.identity = identity
        self._setup(identity, csms)

    @on("BootNotification")
    def _boot(self, **_: Any) -> v16.call_result.BootNotification:
        self.boots += 1
        now = self._seen()
        self.spawn(_after_boot(self))
        return v16.call_result.BootNotification(
            current_time=profiles.timestamp(now),
            interval=self.csms.settings.heartbeat_s,
            status="Accepted",
        )

    @on("Heartbeat")
    def _heartbeat(self) -> v16.call_result.Heartbeat:
        return v16.call_result.Heartbeat(current_time=profiles.timestamp(self._seen()))

    @on("StatusNotification")
    def _status(self, connector_id: int, status: str, **_: Any) -> Any:
        now = self._seen()
        if connector_id > 0:
            state = self.connector(connector_id)
            state.status, state.changed_at = status, now
        return v16.call_result.StatusNotification()

    @on("Authorize")
    def _authorize(self, id_tag: str) -> v16.call_result.Authorize:
        self._seen()
        return v16.call_result.Authorize(id_tag_info={"status": self._authorized(id_tag)})

    @on("StartTransaction")
    def _start(
        self, connector_id: int, id_tag: str, meter_start: int, **_: Any
    ) -> v16.call_result.StartTransaction:
        now = self._seen()
        status = self._authorized(id_tag)
        session = self.csms.next_session()
        state = self.connector(connector_id)
        state.start(session, session, meter_start / 1000.0)
        state.changed_at = now
        return v16.call_result.StartTransaction(
            transaction_id=session, id_tag_info={"status": status}
        )

    @on("StopTransaction")
    def _stop(self, transaction_id: int, meter_stop: int, **_: Any) -> Any:
        self._seen()
        for state in self.connectors.values():
            if state.transaction_id == transaction_id:
                state.stop(meter_stop / 1000.0)
        return v16.call_result.StopTransaction()

    @on("MeterValues")
    def _meter_values(self, connector_id: int, meter_value: list[Any], **_: Any) -> Any:
        now = self._seen()
        if connector_id > 0:
            self.connector(connector_id).take(parse(meter_value), now)
        return v16.call_result.MeterValues()

    async def probe(self, timeout_s: float) -> Capabilities:
        """GetConfiguration of the smart-charging keys."""
        result = await self.ask(v16.call.GetConfiguration(key=list(KEYS_16)), timeout_s)
        answers = {
            str(item["key"]): str(item.get("value", "")) for item in result.configuration_key or []
        }
        caps = Capabilities(answers=answers)
        units = answers.get("ChargingScheduleAllowedChargingRateUnit")
        if units:
            caps.units = tuple(
                _UNITS_16[u.strip()] for u in units.split(",") if u.strip() in _UNITS_16
            )
        caps.max_periods = _int(answers.get("ChargingScheduleMaxPeriods"))
        caps.max_stack_level = _int(answers.get("ChargeProfileMaxStackLevel"))
        caps.max_profiles = _int(answers.get("MaxChargingProfilesInstalled"))
        features = answers.get("SupportedFeatureProfiles")
        if features is not None:
            caps.smart_charging = "SmartCharging" in features
        return caps

    async def set_sample_interval(self, seconds: int, timeout_s: float) -> bool:
        """ChangeConfiguration MeterValueSampleInterval."""
        payload = v16.call.ChangeConfiguration(key="MeterValueSampleInterval", value=str(seconds))
        result = await self.ask(payload, timeout_s)
        return str(result.status) in ("Accepted", "RebootRequired")

    async def set_profile(
        self,
        connector: int,
        purpose: str,
        level: int,
        profile_id: int,
        body: dict[str, Any],
        valid_to: float | None,
        timeout_s: float,
    ) -> str:
        """SetChargingProfile (station-wide purposes on connector 0)."""
        state = self.connector(connector)
        tx = state.transaction_id if isinstance(state.transaction_id, int) else None
        document = profiles.profile_16(
            profile_id, purpose, level, body, transaction_id=tx, valid_to=valid_to
        )
        target = 0 if purpose == "ChargePointMaxProfile" else connector
        payload = v16.call.SetChargingProfile(connector_id=target, cs_charging_profiles=document)
        return str((await self.ask(payload, timeout_s)).status)

    async def clear_profile(self, profile_id: int, timeout_s: float) -> str:
        """ClearChargingProfile by id."""
        result = await self.ask(v16.call.ClearChargingProfile(id=profile_id), timeout_s)
        return str(result.status)

    async def composite(
        self, connector: int, duration_s: int, unit: Unit, timeout_s: float
    ) -> float | None:
        """GetCompositeSchedule of the connector."""
        payload = v16.call.GetCompositeSchedule(
            connector_id=connector, duration=duration_s, charging_rate_unit=_RATE_16[unit]
        )
        result = await self.ask(payload, timeout_s)
        if str(result.status) != "Accepted":
            return None
        return _first_limit(result.charging_schedule)


_RATE_16 = {"A": "A", "W": "W"}


class Link201(Link, v201.ChargePoint):
    """A charging station speaking OCPP 2.0.1 (its EVSEs are the piles' connectors)."""

    version = "2.0.1"

    def __init__(self, identity: str, connection: Any, csms: Csms) -> None:
        v201.ChargePoint.__init__(self, identity, connection, logger=_LIBRARY_LOG)
        self.identity = identity
        self._setup(identity, csms)
        self._sessions: dict[str, int] = {}

    @on("BootNotification")
    def _boot(self, **_: Any) -> v201.call_result.BootNotification:
        self.boots += 1
        now = self._seen()
        self.spawn(_after_boot(self))
        return v201.call_result.BootNotification(
            current_time=profiles.timestamp(now),
            interval=self.csms.settings.heartbeat_s,
            status="Accepted",
        )

    @on("Heartbeat")
    def _heartbeat(self) -> v201.call_result.Heartbeat:
        return v201.call_result.Heartbeat(current_time=profiles.timestamp(self._seen()))

    @on("StatusNotification")
    def _status(self, evse_id: int, connector_status: str, **_: Any) -> Any:
        now = self._seen()
        if evse_id > 0:
            state = self.connector(evse_id)
            state.status, state.changed_at = connector_status, now
        return v201.call_result.StatusNotification()

    @on("Authorize")
    def _authorize(self, id_token: dict[str, Any], **_: Any) -> v201.call_result.Authorize:
        self._seen()
        status = (
            "Accepted" if self._authorized(id_token.get("id_token")) == "Accepted" else "Invalid"
        )
        return v201.call_result.Authorize(id_token_info={"status": status})

    @on("TransactionEvent")
    def _transaction(
        self,
        event_type: str,
        transaction_info: dict[str, Any],
        evse: dict[str, Any] | None = None,
        meter_value: list[Any] | None = None,
        id_token: dict[str, Any] | None = None,
        **_: Any,
    ) -> v201.call_result.TransactionEvent:
        now = self._seen()
        tx = str(transaction_info["transaction_id"])
        number = int(evse["id"]) if evse else self._evse_of(tx)
        state = self.connector(number)
        sample = parse(meter_value or [])
        if event_type == "Started" or tx not in self._sessions:
            session = self._sessions.setdefault(tx, self.csms.next_session())
            begin = parse(
                [
                    {
                        **m,
                        "sampled_value": [
                            {**v, "context": "Sample.Periodic"} for v in m.get("sampled_value", [])
                        ],
                    }
                    for m in meter_value or []
                ]
            )
            state.start(tx, session, begin.energy_import_kwh)
        charging = transaction_info.get("charging_state")
        if charging:
            state.charging_state = charging
        if state.status not in ("Occupied", "Faulted", "Unavailable"):
            state.status = "Occupied"
        state.changed_at = now
        if event_type == "Ended":
            state.stop(sample.energy_import_kwh)
            state.charging_state = None
            self._sessions.pop(tx, None)
        elif meter_value:
            state.take(sample, now)
        answer: dict[str, Any] = {}
        if id_token is not None:
            ok = self._authorized(id_token.get("id_token")) == "Accepted"
            answer["id_token_info"] = {"status": "Accepted" if ok else "Invalid"}
        return v201.call_result.TransactionEvent(**answer)

    def _evse_of(self, tx: str) -> int:
        for number, state in self.connectors.items():
            if state.transaction_id == tx:
                return number
        return 1

    @on("MeterValues")
    def _meter_values(self, evse_id: int, meter_value: list[Any], **_: Any) -> Any:
        now = self._seen()
        if evse_id > 0:
            self.connector(evse_id).take(parse(meter_value), now)
        return v201.call_result.MeterValues()

    @on("NotifyReport")
    def _report(self, **_: Any) -> Any:
        return v201.call_result.NotifyReport()

    async def probe(self, timeout_s: float) -> Capabilities:
        """GetVariables of SmartChargingCtrlr (and V2XChargingCtrlr)."""
        wanted = [
            {"component": {"name": component}, "variable": {"name": variable}}
            for component, variable in VARIABLES_201
        ]
        result = await self.ask(v201.call.GetVariables(get_variable_data=wanted), timeout_s)
        answers: dict[str, str] = {}
        for item in result.get_variable_result:
            if item.get("attribute_status") == "Accepted":
                name = f"{item['component']['name']}.{item['variable']['name']}"
                answers[name] = str(item.get("attribute_value", ""))
        caps = Capabilities(answers=answers)
        units = answers.get("SmartChargingCtrlr.RateUnit")
        if units:
            caps.units = tuple(u for u in ("A", "W") if u in units.replace(" ", "").split(","))
        caps.max_periods = _int(answers.get("SmartChargingCtrlr.PeriodsPerSchedule"))
        caps.max_stack_level = _int(answers.get("SmartChargingCtrlr.ProfileStackLevel"))
        caps.max_profiles = _int(answers.get("SmartChargingCtrlr.Entries"))
        caps.smart_charging = answers.get("SmartChargingCtrlr.Enabled", "true").lower() == "true"
        caps.bidirectional = answers.get("V2XChargingCtrlr.Enabled", "").lower() == "true"
        return caps

    async def set_sample_interval(self, seconds: int, timeout_s: float) -> bool:
        """SetVariables SampledDataCtrlr.TxUpdatedInterval."""
        data = [
            {
                "component": {"name": "SampledDataCtrlr"},
                "variable": {"name": "TxUpdatedInterval"},
                "attribute_value": str(seconds),
            }
        ]
        result = await self.ask(v201.call.SetVariables(set_variable_data=data), timeout_s)
        return all(
            item.get("attribute_status") in ("Accepted", "RebootRequired")
            for item in result.set_variable_result
        )

    async def set_profile(
        self,
        connector: int,
        purpose: str,
        level: int,
        profile_id: int,
        body: dict[str, Any],
        valid_to: float | None,
        timeout_s: float,
    ) -> str:
        """SetChargingProfile (station-wide purposes on EVSE 0)."""
        state = self.connector(connector)
        tx = state.transaction_id if isinstance(state.transaction_id, str) else None
        document = profiles.profile_201(
            profile_id, purpose, level, body, transaction_id=tx, valid_to=valid_to
        )
        target = 0 if purpose == "ChargePointMaxProfile" else connector
        payload = v201.call.SetChargingProfile(evse_id=target, charging_profile=document)
        return str((await self.ask(payload, timeout_s)).status)

    async def clear_profile(self, profile_id: int, timeout_s: float) -> str:
        """ClearChargingProfile by id."""
        payload = v201.call.ClearChargingProfile(charging_profile_id=profile_id)
        return str((await self.ask(payload, timeout_s)).status)

    async def composite(
        self, connector: int, duration_s: int, unit: Unit, timeout_s: float
    ) -> float | None:
        """GetCompositeSchedule of the EVSE."""
        payload = v201.call.GetCompositeSchedule(
            duration=duration_s, evse_id=connector, charging_rate_unit=unit
        )
        result = await self.ask(payload, timeout_s)
        if str(result.status) != "Accepted" or not result.schedule:
            return None
        return _first_limit(result.schedule)


def _int(text: str | None) -> int | None:
    try:
        return None if text is None else int(text)
    except ValueError:
        return None


async def _after_boot(link: Link) -> None:
    # After the BootNotification answer has gone out: the server probes and arms.
    await asyncio.sleep(0)
    link.csms.booted(link)


# The link class for each websocket subprotocol.
LINKS: dict[str, Callable[[str, Any, Csms], Link]] = {"ocpp1.6": Link16, "ocpp2.0.1": Link201}
