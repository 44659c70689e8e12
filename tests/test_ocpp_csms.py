"""The CSMS server against an independent OCPP client (issue 14, items 1 and 5).

The charge points here are written directly on `websockets` with hand-built OCPP-J frames
([2, id, action, payload] calls, [3, id, payload] results), not with the `ocpp` library the
server uses, so a misreading of the specification in that library (or in our use of it) shows.
The server runs for real on a free loopback port; its clock is a plain number the tests move.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import ssl
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidMessage, InvalidStatus

from base import certs
from base.config import Station, load_station
from base.devicemap import PileState
from drivers.errors import ConnectionLost, DeviceTimeout
from drivers.ocpp.pile import OcppPile
from drivers.ocpp.server import REFUSAL_RETRY_S, CsmsServer
from tests.test_config import STATION, configs, edit
from tests.test_config_ocpp import ocpp_station

__all__ = ["configs"]

WAIT_S = 5.0  # real I/O waits only: a frame that does not come within this has not come
START = 1_800_000_000.0


class Clock:
    """Station time the test sets."""

    def __init__(self) -> None:
        self.t = START

    def now(self) -> float:
        return self.t


class RawChargePoint:
    """An OCPP-J charge point on bare websockets: it answers the server's calls from `answers`
    (action -> payload -> result payload) and records every call it got."""

    def __init__(self, ws: ClientConnection, answers: dict[str, Callable[[Any], Any]]) -> None:
        self.ws = ws
        self.answers = answers
        self.got: list[tuple[str, Any]] = []
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._arrived = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            if frame[0] == 2:
                _, uid, action, payload = frame
                self.got.append((action, payload))
                answer = self.answers.get(action, lambda p: {})(payload)
                await self.ws.send(json.dumps([3, uid, answer]))
                async with self._arrived:
                    self._arrived.notify_all()
            elif frame[0] in (3, 4):
                future = self._pending.pop(frame[1])
                if frame[0] == 3:
                    future.set_result(frame[2])
                else:
                    future.set_exception(AssertionError(f"CallError: {frame}"))

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        """Send a call and return the result's payload."""
        uid = f"cp-{next(self._ids)}"
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[uid] = future
        await self.ws.send(json.dumps([2, uid, action, payload]))
        return await asyncio.wait_for(future, WAIT_S)

    async def expect(self, action: str, count: int = 1) -> list[Any]:
        """Wait until the server has sent `count` calls of `action`; their payloads."""

        def found() -> list[Any]:
            return [p for a, p in self.got if a == action]

        async with asyncio.timeout(WAIT_S):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(found()) >= count)
        return found()

    def sent(self, action: str) -> list[Any]:
        """The calls of `action` the server has sent so far."""
        return [p for a, p in self.got if a == action]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


def answers_16(units: str = "Current,Power", rejects: tuple[str, ...] = ()) -> dict[str, Any]:
    """A 1.6 charge point's answers to the server's calls."""
    last: dict[str, Any] = {}

    def set_profile(p: Any) -> dict[str, str]:
        profile = p["csChargingProfiles"]
        if profile["chargingProfilePurpose"] in rejects:
            return {"status": "Rejected"}
        last["schedule"] = profile["chargingSchedule"]
        return {"status": "Accepted"}

    def composite(p: Any) -> dict[str, Any]:
        if "schedule" not in last:
            return {"status": "Rejected"}
        return {
            "status": "Accepted",
            "connectorId": p["connectorId"],
            "chargingSchedule": last["schedule"],
        }

    return {
        "GetConfiguration": lambda p: {
            "configurationKey": [
                {
                    "key": "ChargingScheduleAllowedChargingRateUnit",
                    "readonly": True,
                    "value": units,
                },
                {"key": "ChargeProfileMaxStackLevel", "readonly": True, "value": "3"},
                {"key": "ChargingScheduleMaxPeriods", "readonly": True, "value": "24"},
                {
                    "key": "SupportedFeatureProfiles",
                    "readonly": True,
                    "value": "Core,SmartCharging",
                },
            ]
        },
        "ChangeConfiguration": lambda p: {"status": "Accepted"},
        "SetChargingProfile": set_profile,
        "ClearChargingProfile": lambda p: {"status": "Accepted"},
        "GetCompositeSchedule": composite,
    }


def answers_201(bidirectional: bool = False, rejects: tuple[str, ...] = ()) -> dict[str, Any]:
    """A 2.0.1 charging station's answers to the server's calls."""
    values = {
        ("SmartChargingCtrlr", "RateUnit"): "A,W",
        ("SmartChargingCtrlr", "PeriodsPerSchedule"): "24",
        ("V2XChargingCtrlr", "Enabled"): "true" if bidirectional else "false",
    }

    def get_variables(p: Any) -> dict[str, Any]:
        results = []
        for item in p["getVariableData"]:
            key = (item["component"]["name"], item["variable"]["name"])
            result = {"component": item["component"], "variable": item["variable"]}
            if key in values:
                result |= {"attributeStatus": "Accepted", "attributeValue": values[key]}
            else:
                result |= {"attributeStatus": "UnknownVariable"}
            results.append(result)
        return {"getVariableResult": results}

    def set_variables(p: Any) -> dict[str, Any]:
        return {
            "setVariableResult": [
                {
                    "attributeStatus": "Accepted",
                    "component": i["component"],
                    "variable": i["variable"],
                }
                for i in p["setVariableData"]
            ]
        }

    def set_profile(p: Any) -> dict[str, str]:
        purpose = p["chargingProfile"]["chargingProfilePurpose"]
        return {"status": "Rejected" if purpose in rejects else "Accepted"}

    return {
        "GetVariables": get_variables,
        "SetVariables": set_variables,
        "SetChargingProfile": set_profile,
        "ClearChargingProfile": lambda p: {"status": "Accepted"},
        "GetCompositeSchedule": lambda p: {"status": "Rejected"},
    }


BOOT_16 = {"chargePointVendor": "Independent", "chargePointModel": "Raw-16"}
BOOT_201 = {
    "chargingStation": {"vendorName": "Independent", "model": "Raw-201"},
    "reason": "PowerUp",
}


class Site:
    """A running CSMS for a station and the piles it drives."""

    def __init__(self, station: Station, clock: Clock, server: CsmsServer) -> None:
        self.station, self.clock, self.server = station, clock, server
        self.piles = {
            p.id: OcppPile(p, server, clock.now) for p in station.piles if p.protocol == "ocpp"
        }

    def url(self, identity: str, scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.server.port}/{identity}"

    async def charge_point(
        self,
        identity: str,
        version: str,
        answers: dict[str, Any] | None = None,
        **options: Any,
    ) -> RawChargePoint:
        """Connect and boot a charge point; wait until the server has installed its fail-safe
        profile."""
        subprotocol = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
        ws = await connect(
            self.url(identity, "wss" if "ssl" in options else "ws"),
            subprotocols=[subprotocol],  # type: ignore[list-item]
            **options,
        )
        assert ws.subprotocol == subprotocol
        if answers is None:
            answers = answers_16() if version == "1.6" else answers_201()
        cp = RawChargePoint(ws, answers)
        boot = await cp.call("BootNotification", BOOT_16 if version == "1.6" else BOOT_201)
        assert boot["status"] == "Accepted"
        assert boot["interval"] == self.station.ocpp.heartbeat_s  # type: ignore[union-attr]
        await cp.expect("SetChargingProfile")
        # The server takes the answer in its own time (the ocpp library checks every message
        # against its schema in a worker thread): wait for its boot sequence to finish.
        link = self.server.link(identity)
        if link is not None and link.tasks:
            await asyncio.wait(set(link.tasks), timeout=WAIT_S)
        return cp


@pytest_asyncio.fixture
async def site(configs: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start a CSMS for the OCPP copy of the reference depot (P01: 1.6 as P01, P02: 2.0.1 as
    CP-2, EVSE 2), with [ocpp] settings changed as asked."""
    started: list[tuple[CsmsServer, list[RawChargePoint]]] = []

    async def start(edits: tuple[tuple[str, str], ...] = (), **ocpp: Any) -> Site:
        ocpp_station(configs)
        for old, new in edits:
            edit(configs, STATION, old, new)
        station = load_station(configs / STATION).with_ocpp(port=0, **ocpp)
        clock = Clock()
        server = CsmsServer(station, clock.now)
        await server.start()
        started.append((server, []))
        return Site(station, clock, server)

    yield start
    for server, _ in reversed(started):
        await server.stop()


def session_frames_16(cp: RawChargePoint) -> Callable[..., Any]:
    async def start(connector: int = 1, id_tag: str = "TRUCK-1", wh: int = 10_000) -> Any:
        await cp.call(
            "StatusNotification",
            {"connectorId": connector, "errorCode": "NoError", "status": "Preparing"},
        )
        answer = await cp.call(
            "StartTransaction",
            {
                "connectorId": connector,
                "idTag": id_tag,
                "meterStart": wh,
                "timestamp": "2027-01-15T08:00:00Z",
            },
        )
        await cp.call(
            "StatusNotification",
            {"connectorId": connector, "errorCode": "NoError", "status": "Charging"},
        )
        return answer

    return start


def meter_values_16(kw: float, wh: float, soc: float | None = None) -> list[dict[str, Any]]:
    sampled = [
        {"value": f"{kw * 1000:.0f}", "measurand": "Power.Active.Import", "unit": "W"},
        {"value": f"{wh:.0f}", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "120.5", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
    ]
    if soc is not None:
        sampled.append({"value": f"{soc:g}", "measurand": "SoC", "unit": "Percent"})
    return [{"timestamp": "2027-01-15T08:00:05Z", "sampledValue": sampled}]


# --------------------------------------------------------------------------- boot and messages


@pytest.mark.asyncio
async def test_boot_probe_interval_and_failsafe_16(site: Callable[..., Any]) -> None:
    """1.6: BootNotification Accepted with the heartbeat interval; the server probes with
    GetConfiguration, asks for MeterValueSampleInterval and installs the fail-safe
    TxDefaultProfile at the pile's fallback power, with no end; Heartbeat answers the time."""
    s = await site(heartbeat_s=42, meter_values_s=3)
    cp = await s.charge_point("P01", "1.6")
    keys = cp.sent("GetConfiguration")[0]["key"]
    assert (
        "ChargingScheduleAllowedChargingRateUnit" in keys and "ChargeProfileMaxStackLevel" in keys
    )
    interval = await cp.expect("ChangeConfiguration")
    assert interval[0] == {"key": "MeterValueSampleInterval", "value": "3"}
    profile = cp.sent("SetChargingProfile")[0]
    document = profile["csChargingProfiles"]
    assert profile["connectorId"] == 1
    assert document["chargingProfilePurpose"] == "TxDefaultProfile" and document["stackLevel"] == 0
    assert "validTo" not in document and "duration" not in document["chargingSchedule"]
    # A DC pile in watts: 100 kW fallback.
    schedule = document["chargingSchedule"]
    assert schedule["chargingRateUnit"] == "W"
    assert schedule["chargingSchedulePeriod"][0]["limit"] == 100_000
    beat = await cp.call("Heartbeat", {})
    assert beat["currentTime"].startswith("2027-01-15T08:00:00")
    await cp.call(
        "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
    )
    reading = await s.piles["P01"].read()
    assert reading.state is PileState.AVAILABLE and reading.power_kw == 0.0
    assert s.piles["P01"].failsafe_purpose == "TxDefaultProfile"
    await cp.close()


@pytest.mark.asyncio
async def test_boot_probe_interval_and_failsafe_201(site: Callable[..., Any]) -> None:
    """2.0.1: the same with GetVariables (SmartChargingCtrlr) and SetVariables
    (SampledDataCtrlr.TxUpdatedInterval), the fail-safe on the pile's EVSE."""
    s = await site()
    cp = await s.charge_point("CP-2", "2.0.1")
    asked = {
        (i["component"]["name"], i["variable"]["name"])
        for i in cp.sent("GetVariables")[0]["getVariableData"]
    }
    assert ("SmartChargingCtrlr", "RateUnit") in asked and ("V2XChargingCtrlr", "Enabled") in asked
    interval = (await cp.expect("SetVariables"))[0]["setVariableData"][0]
    assert interval["variable"]["name"] == "TxUpdatedInterval" and interval["attributeValue"] == "5"
    profile = cp.sent("SetChargingProfile")[0]
    assert profile["evseId"] == 2
    assert profile["chargingProfile"]["chargingProfilePurpose"] == "TxDefaultProfile"
    assert (
        profile["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"]
        == 100_000
    )
    beat = await cp.call("Heartbeat", {})
    assert "currentTime" in beat
    await cp.close()


@pytest.mark.asyncio
async def test_authorize_accepts_all_or_the_list(site: Callable[..., Any]) -> None:
    """Authorize: every idTag with an empty list; only the listed ones otherwise (both
    versions, and StartTransaction's idTagInfo too)."""
    s = await site(id_tags=["TRUCK-1"])
    cp16 = await s.charge_point("P01", "1.6")
    assert (await cp16.call("Authorize", {"idTag": "TRUCK-1"}))["idTagInfo"]["status"] == "Accepted"
    assert (await cp16.call("Authorize", {"idTag": "STRANGER"}))["idTagInfo"]["status"] == "Invalid"
    started = await session_frames_16(cp16)(id_tag="STRANGER")
    assert started["idTagInfo"]["status"] == "Invalid"
    cp201 = await s.charge_point("CP-2", "2.0.1")
    ok = await cp201.call("Authorize", {"idToken": {"idToken": "TRUCK-1", "type": "ISO14443"}})
    no = await cp201.call("Authorize", {"idToken": {"idToken": "STRANGER", "type": "ISO14443"}})
    assert ok["idTokenInfo"]["status"] == "Accepted" and no["idTokenInfo"]["status"] == "Invalid"
    s.server.settings = s.server.settings.model_copy(update={"id_tags": []})
    assert (await cp16.call("Authorize", {"idTag": "ANYONE"}))["idTagInfo"]["status"] == "Accepted"
    await cp16.close()
    await cp201.close()


# --------------------------------------------------------------------------- sessions, readings


@pytest.mark.asyncio
async def test_transaction_and_meter_values_become_a_session_16(site: Callable[..., Any]) -> None:
    """StartTransaction, MeterValues, StopTransaction: the pile's state, session id and energy,
    power and SoC as a Modbus pile reports them."""
    s = await site()
    cp = await s.charge_point("P01", "1.6")
    pile = s.piles["P01"]
    started = await session_frames_16(cp)(wh=10_000)
    tx = started["transactionId"]
    await cp.call(
        "MeterValues",
        {
            "connectorId": 1,
            "transactionId": tx,
            "meterValue": meter_values_16(150.0, 25_000, soc=41),
        },
    )
    reading = await pile.read()
    assert reading.state is PileState.CHARGING
    assert reading.power_kw == pytest.approx(150.0)
    assert reading.energy_import_kwh == pytest.approx(25.0)
    assert reading.session_energy_kwh == pytest.approx(15.0)
    assert reading.session_id == tx and reading.soc_pct == 41
    await cp.call(
        "StopTransaction",
        {"transactionId": tx, "meterStop": 30_000, "timestamp": "2027-01-15T09:00:00Z"},
    )
    await cp.call(
        "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Finishing"}
    )
    after = await pile.read()
    assert after.state is PileState.FINISHED and after.power_kw == 0.0
    assert after.session_energy_kwh == pytest.approx(
        20.0
    ) and after.energy_import_kwh == pytest.approx(30.0)
    # A second session gets a new id.
    again = await session_frames_16(cp)(wh=30_000)
    assert again["transactionId"] != tx and (await pile.read()).session_id == again["transactionId"]
    await cp.close()


@pytest.mark.asyncio
async def test_transaction_event_becomes_a_session_201(site: Callable[..., Any]) -> None:
    """TransactionEvent Started/Updated/Ended with meter values (2.0.1 numbers, units with
    multipliers) on EVSE 2."""
    s = await site()
    cp = await s.charge_point("CP-2", "2.0.1")
    pile = s.piles["P02"]
    await cp.call(
        "StatusNotification",
        {
            "timestamp": "2027-01-15T08:00:00Z",
            "connectorStatus": "Occupied",
            "evseId": 2,
            "connectorId": 1,
        },
    )

    def event(kind: str, seq: int, kw: float, kwh: float, state: str) -> dict[str, Any]:
        return {
            "eventType": kind,
            "timestamp": "2027-01-15T08:00:00Z",
            "triggerReason": "MeterValuePeriodic",
            "seqNo": seq,
            "transactionInfo": {"transactionId": "tx-201", "chargingState": state},
            "evse": {"id": 2, "connectorId": 1},
            "meterValue": [
                {
                    "timestamp": "2027-01-15T08:00:00Z",
                    "sampledValue": [
                        {
                            "value": kw,
                            "measurand": "Power.Active.Import",
                            "unitOfMeasure": {"unit": "W", "multiplier": 3},
                        },
                        {
                            "value": kwh,
                            "measurand": "Energy.Active.Import.Register",
                            "unitOfMeasure": {"unit": "kWh"},
                        },
                        {"value": 63, "measurand": "SoC", "unitOfMeasure": {"unit": "Percent"}},
                    ],
                }
            ],
        }

    await cp.call("TransactionEvent", event("Started", 0, 0, 100.0, "EVConnected"))
    await cp.call("TransactionEvent", event("Updated", 1, 200, 112.5, "Charging"))
    reading = await pile.read()
    assert reading.state is PileState.CHARGING and reading.power_kw == pytest.approx(200.0)
    assert reading.session_energy_kwh == pytest.approx(12.5) and reading.soc_pct == 63
    assert reading.session_id > 0
    await cp.call("TransactionEvent", event("Ended", 2, 0, 120.0, "EVConnected"))
    ended = await pile.read()
    assert ended.power_kw == 0.0 and ended.session_energy_kwh == pytest.approx(20.0)
    await cp.close()


@pytest.mark.asyncio
async def test_stale_or_absent_charge_point_raises(site: Callable[..., Any]) -> None:
    """Meter values older than the interval plus stale_after_s raise DeviceTimeout; a charge
    point not connected raises ConnectionLost; the range check is the controller's (sensing)."""
    s = await site(meter_values_s=2)
    pile = s.piles["P01"]
    with pytest.raises(ConnectionLost, match="P01 is not connected"):
        await pile.read()
    cp = await s.charge_point("P01", "1.6")
    tx = (await session_frames_16(cp)())["transactionId"]
    await cp.call(
        "MeterValues",
        {"connectorId": 1, "transactionId": tx, "meterValue": meter_values_16(80.0, 12_000)},
    )
    s.clock.t += 2 + 5  # the interval and stale_after_s: still fresh
    assert (await pile.read()).power_kw == pytest.approx(80.0)
    s.clock.t += 0.5
    with pytest.raises(DeviceTimeout, match="no meter values from P01 for 8 s"):
        await pile.read()
    await cp.close()
    await asyncio.wait_for(s.server.wait_connected("P01", False), WAIT_S)
    with pytest.raises(ConnectionLost):
        await pile.read()


# --------------------------------------------------------------------------- charging profiles


@pytest.mark.asyncio
async def test_setpoint_becomes_a_profile_with_validity_and_deadband(
    site: Callable[..., Any],
) -> None:
    """A setpoint becomes a TxProfile for the transaction, in W, valid for profile_validity_s
    (duration and validTo); a move within the deadband is not re-sent, one beyond it is, and the
    profile is renewed halfway through its validity; GetCompositeSchedule's answer is a fact."""
    s = await site(deadband_kw=5.0)
    cp = await s.charge_point("P01", "1.6")
    pile = s.piles["P01"]
    tx = (await session_frames_16(cp)())["transactionId"]
    await pile.command(200.0)
    profile = cp.sent("SetChargingProfile")[-1]["csChargingProfiles"]
    assert profile["chargingProfilePurpose"] == "TxProfile" and profile["transactionId"] == tx
    assert profile["stackLevel"] == 1 and profile["chargingProfileKind"] == "Absolute"
    schedule = profile["chargingSchedule"]
    assert (
        schedule["chargingRateUnit"] == "W"
        and schedule["chargingSchedulePeriod"][0]["limit"] == 200_000
    )
    assert schedule["duration"] == 30 and schedule["startSchedule"].startswith(
        "2027-01-15T08:00:00"
    )
    assert profile["validTo"].startswith("2027-01-15T08:00:30")
    assert len(cp.sent("GetCompositeSchedule")) == 1 and pile.composite_kw == pytest.approx(200.0)
    sent = len(cp.sent("SetChargingProfile"))
    await pile.command(203.0)  # within the deadband
    assert len(cp.sent("SetChargingProfile")) == sent
    reading = await pile.read()
    assert reading.commanded_kw == pytest.approx(
        203.0
    ) and reading.applied_setpoint_kw == pytest.approx(200.0)
    await pile.command(150.0)
    assert len(cp.sent("SetChargingProfile")) == sent + 1
    s.clock.t += 15  # half the validity: renewed although unchanged
    await pile.command(150.0)
    assert len(cp.sent("SetChargingProfile")) == sent + 2
    await cp.close()


@pytest.mark.asyncio
async def test_amperes_when_the_charge_point_takes_only_current(site: Callable[..., Any]) -> None:
    """A DC charge point that declares only Current gets its limits in A (kW / dc_voltage_v,
    750 V by default, rounded down to 0.1 A)."""
    s = await site()
    cp = await s.charge_point("P01", "1.6", answers_16(units="Current"))
    fallback = cp.sent("SetChargingProfile")[0]["csChargingProfiles"]["chargingSchedule"]
    assert fallback["chargingRateUnit"] == "A"
    assert fallback["chargingSchedulePeriod"][0]["limit"] == 133.3  # 100 kW / 750 V
    await session_frames_16(cp)()
    await pile_command(s, "P01", 50.0)
    schedule = cp.sent("SetChargingProfile")[-1]["csChargingProfiles"]["chargingSchedule"]
    assert (
        schedule["chargingRateUnit"] == "A"
        and schedule["chargingSchedulePeriod"][0]["limit"] == 66.6
    )
    await cp.close()


async def pile_command(s: Site, pile_id: str, kw: float) -> None:
    await s.piles[pile_id].command(kw)


@pytest.mark.asyncio
async def test_purpose_fallback_after_rejected(site: Callable[..., Any]) -> None:
    """A charge point that rejects TxProfile gets TxDefaultProfile (above the fail-safe), and
    is not asked for TxProfile again."""
    s = await site()
    cp = await s.charge_point("P01", "1.6", answers_16(rejects=("TxProfile",)))
    await session_frames_16(cp)()
    await pile_command(s, "P01", 120.0)
    purposes = [
        p["csChargingProfiles"]["chargingProfilePurpose"] for p in cp.sent("SetChargingProfile")
    ]
    assert purposes == ["TxDefaultProfile", "TxProfile", "TxDefaultProfile"]
    assert cp.sent("SetChargingProfile")[-1]["csChargingProfiles"]["stackLevel"] == 1
    await pile_command(s, "P01", 60.0)
    purposes = [
        p["csChargingProfiles"]["chargingProfilePurpose"] for p in cp.sent("SetChargingProfile")
    ]
    assert purposes[-1] == "TxDefaultProfile" and purposes.count("TxProfile") == 1
    assert s.piles["P01"].facts()["refused_purposes"] == ["TxProfile"]
    await cp.close()


@pytest.mark.asyncio
async def test_a_refused_purpose_is_tried_again_later_and_in_the_next_transaction(
    site: Callable[..., Any],
) -> None:
    """A TxProfile refusal may be passing: the same transaction gets TxDefaultProfile, but
    REFUSAL_RETRY_S later TxProfile is tried again, and so it is in the next transaction."""
    s = await site()
    rejects = ["TxProfile"]
    answers = answers_16()
    accept = answers["SetChargingProfile"]

    def set_profile(p: Any) -> dict[str, str]:
        if p["csChargingProfiles"]["chargingProfilePurpose"] in rejects:
            return {"status": "Rejected"}
        return accept(p)  # type: ignore[no-any-return]

    answers["SetChargingProfile"] = set_profile
    cp = await s.charge_point("P01", "1.6", answers)

    def purposes() -> list[str]:
        return [
            p["csChargingProfiles"]["chargingProfilePurpose"] for p in cp.sent("SetChargingProfile")
        ]

    tx = (await session_frames_16(cp)())["transactionId"]
    await pile_command(s, "P01", 120.0)
    await pile_command(s, "P01", 60.0)
    assert purposes() == ["TxDefaultProfile", "TxProfile", "TxDefaultProfile", "TxDefaultProfile"]
    s.clock.t += REFUSAL_RETRY_S
    await pile_command(s, "P01", 60.0)
    assert purposes()[-2:] == ["TxProfile", "TxDefaultProfile"], "tried again, still refused"
    await cp.call(
        "StopTransaction",
        {"transactionId": tx, "meterStop": 30_000, "timestamp": "2027-01-15T09:00:00Z"},
    )
    rejects.clear()
    await session_frames_16(cp)(wh=30_000)
    await pile_command(s, "P01", 90.0)
    assert purposes()[-1] == "TxProfile", "the next transaction tries it again"
    assert s.piles["P01"].facts()["purpose"] == "TxProfile"
    await cp.close()


@pytest.mark.asyncio
async def test_discharge_only_where_2_0_1_declares_it(site: Callable[..., Any]) -> None:
    """A bidirectional 2.0.1 pile whose station declares V2X gets negative limits; without
    that declaration the setpoint is clamped at 0."""
    edits = (("connector = 2\n", "connector = 2\nmax_discharge_kw = 100.0\n"),)
    s = await site(edits)
    cp = await s.charge_point("CP-2", "2.0.1", answers_201(bidirectional=True))
    await s.piles["P02"].command(-80.0)
    limit = cp.sent("SetChargingProfile")[-1]["chargingProfile"]["chargingSchedule"][0]
    assert limit["chargingSchedulePeriod"][0]["limit"] == -80_000
    assert (await s.piles["P02"].read()).max_discharge_kw == 100.0
    await cp.close()
    await asyncio.wait_for(s.server.wait_connected("CP-2", False), WAIT_S)
    cp = await s.charge_point("CP-2", "2.0.1", answers_201(bidirectional=False))
    await s.piles["P02"].command(-80.0)
    limit = cp.sent("SetChargingProfile")[-1]["chargingProfile"]["chargingSchedule"][0]
    assert limit["chargingSchedulePeriod"][0]["limit"] == 0
    await cp.close()


@pytest.mark.asyncio
async def test_stop_leaves_charge_points_at_their_safe_power(site: Callable[..., Any]) -> None:
    """Stopping the server clears each dynamic profile (the fail-safe below it applies) before
    the websocket closes."""
    s = await site()
    cp = await s.charge_point("P01", "1.6")
    await session_frames_16(cp)()
    await pile_command(s, "P01", 300.0)
    dynamic = cp.sent("SetChargingProfile")[-1]["csChargingProfiles"]["chargingProfileId"]
    await s.server.stop()
    assert cp.sent("ClearChargingProfile") == [{"id": dynamic}]
    await asyncio.wait_for(cp._reader, WAIT_S)  # the server closed the websocket


# --------------------------------------------------------------------------- who may connect


@pytest.mark.asyncio
async def test_unknown_identity_is_refused(site: Callable[..., Any]) -> None:
    """A charge point the station file does not declare gets HTTP 404 before any websocket."""
    s = await site()
    with pytest.raises(InvalidStatus) as refused:
        await connect(s.url("INTRUDER"), subprotocols=["ocpp1.6"])  # type: ignore[list-item]
    assert refused.value.response.status_code == 404


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.asyncio
async def test_basic_auth_refuses_a_wrong_password(
    site: Callable[..., Any], configs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Security profile 1: the right identity and password connect; a wrong password, another
    identity's user name or none at all get 401."""
    monkeypatch.setenv("TEST_OCPP_PASSWORD", "right-one")
    s = await site(security_profile=1, password_env="TEST_OCPP_PASSWORD")
    for headers in (_basic("P01", "wrong"), _basic("CP-2", "right-one"), {}):
        with pytest.raises(InvalidStatus) as refused:
            await connect(s.url("P01"), subprotocols=["ocpp1.6"], additional_headers=headers)  # type: ignore[list-item]
        assert refused.value.response.status_code == 401
    cp = await s.charge_point("P01", "1.6", additional_headers=_basic("P01", "right-one"))
    await cp.close()


@pytest.fixture
def station_certs(configs: Path) -> Path:
    """`certs init` for the copied configs, where [security] certs points."""
    directory = configs / "certs"
    certs.init(directory, hosts=["127.0.0.1", "localhost"])
    return directory


def _client_tls(directory: Path, cert: str | None = None) -> ssl.SSLContext:
    """Trust the station CA; present the certificate in `directory`/`cert` if named."""
    context = ssl.create_default_context(cafile=directory / "ca" / "ca.pem")
    if cert is not None:
        context.load_cert_chain(directory / cert / "cert.pem", directory / cert / "key.pem")
    return context


@pytest.mark.asyncio
async def test_tls_with_basic_auth_profile_2(
    site: Callable[..., Any], station_certs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Security profile 2: wss with the station's daemon certificate and basic auth; plain ws
    is not served."""
    monkeypatch.setenv("TEST_OCPP_PASSWORD", "pw2")
    edits = (("[pile_defaults]\n", '[security]\ncerts = "../certs"\n\n[pile_defaults]\n'),)
    s = await site(edits, security_profile=2, password_env="TEST_OCPP_PASSWORD")
    tls = _client_tls(station_certs)
    cp = await s.charge_point("P01", "1.6", ssl=tls, additional_headers=_basic("P01", "pw2"))
    assert (await cp.call("Heartbeat", {}))["currentTime"]
    await cp.close()
    with pytest.raises((InvalidMessage, OSError)):  # a plain client cannot speak to TLS
        await connect(s.url("P01"), subprotocols=["ocpp1.6"], open_timeout=WAIT_S)  # type: ignore[list-item]


PROFILE_3 = (("[pile_defaults]\n", '[security]\ncerts = "../certs"\n\n[pile_defaults]\n'),)


@pytest.mark.asyncio
async def test_mutual_tls_profile_3(site: Callable[..., Any], station_certs: Path) -> None:
    """Security profile 3: a client certificate the station CA signed for the charge point
    connects without a password; a client without one is refused in the handshake."""
    certs.issue(station_certs, "CP-2", charge_point=True)
    s = await site(PROFILE_3, security_profile=3)
    cp = await s.charge_point("CP-2", "2.0.1", ssl=_client_tls(station_certs, "CP-2"))
    assert (await cp.call("Heartbeat", {}))["currentTime"]
    await cp.close()
    with pytest.raises((ssl.SSLError, InvalidMessage, OSError)):
        ws = await connect(
            s.url("CP-2", "wss"),
            subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
            ssl=_client_tls(station_certs),
            open_timeout=WAIT_S,
        )
        await ws.recv()


@pytest.mark.asyncio
async def test_profile_3_refuses_a_certificate_for_another_charge_point(
    site: Callable[..., Any], station_certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Security profile 3 binds the certificate to the identity: CP-2's certificate does not
    connect as P01, nor does one that names no charge point (the simulator's) or one whose CN
    only starts with the identity; each gets 403 before the websocket opens, with one warning
    naming the identity and the certificate's CN. A certificate `certs issue` made for an
    application named P01 ("<station> P01") connects as P01."""
    certs.issue(station_certs, "CP-2", charge_point=True)
    certs.issue(station_certs, "CP-2-spare", charge_point=True)
    certs.issue(station_certs, "P01", application_uri="urn:site:P01")
    s = await site(PROFILE_3, security_profile=3)
    caplog.set_level("WARNING", logger="drivers.ocpp.server")
    refused = [
        ("P01", "ocpp1.6", "CP-2", "CP-2"),
        ("CP-2", "ocpp2.0.1", "simulator", "flexcharge station simulator"),
        ("CP-2", "ocpp2.0.1", "CP-2-spare", "CP-2-spare"),
    ]
    for identity, subprotocol, cert, common_name in refused:
        caplog.clear()
        with pytest.raises(InvalidStatus) as refusal:
            await connect(
                s.url(identity, "wss"),
                subprotocols=[subprotocol],  # type: ignore[list-item]
                ssl=_client_tls(station_certs, cert),
                open_timeout=WAIT_S,
            )
        assert refusal.value.response.status_code == 403
        assert [r.getMessage() for r in caplog.records] == [
            f"charge point {identity} presented a certificate for {common_name!r}: refused"
        ]
        assert s.server.link(identity) is None and not s.server.links
    cp = await s.charge_point("P01", "1.6", ssl=_client_tls(station_certs, "P01"))
    assert (await cp.call("Heartbeat", {}))["currentTime"]
    assert s.server.link("P01") is not None
    await cp.close()
    # The station's own parties' certificates belong to no charge point, whatever its name.
    assert s.server.certificate_names(["flexcharge station P01"], "P01")
    for party in ("daemon", "simulator"):
        assert not s.server.certificate_names([f"flexcharge station {party}"], party)


@pytest.mark.asyncio
async def test_profile_3_refuses_a_revoked_certificate(
    site: Callable[..., Any], station_certs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Security profile 3 checks each certificate against the station CA's revocation list at
    every connection: `certs revoke` shuts a charge point out from its next connection, with no
    restart; a list the CA did not sign refuses every certificate (whether one was revoked
    cannot be known)."""
    cp2 = certs.issue(station_certs, "CP-2", charge_point=True)
    s = await site(PROFILE_3, security_profile=3)
    caplog.set_level("WARNING", logger="drivers.ocpp.server")

    async def refused(why: str) -> None:
        caplog.clear()
        with pytest.raises(InvalidStatus) as refusal:
            await connect(
                s.url("CP-2", "wss"),
                subprotocols=["ocpp2.0.1"],  # type: ignore[list-item]
                ssl=_client_tls(station_certs, "CP-2"),
                open_timeout=WAIT_S,
            )
        assert refusal.value.response.status_code == 403
        [warning] = [r.getMessage() for r in caplog.records]
        assert warning.startswith("charge point CP-2: ") and why in warning, warning
        assert s.server.link("CP-2") is None

    cp = await s.charge_point("CP-2", "2.0.1", ssl=_client_tls(station_certs, "CP-2"))
    await cp.close()
    crl = certs.revoke(station_certs, cp2.cert_pem)
    await refused("is revoked")
    # A list in the CA's name that some other key signed: an empty one would let CP-2 back in.
    ca = x509.load_pem_x509_certificate(cp2.ca_pem.read_bytes())
    now = datetime.now(UTC)
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
        .sign(rsa.generate_private_key(public_exponent=65537, key_size=2048), hashes.SHA256())
    )
    crl.write_bytes(forged.public_bytes(serialization.Encoding.PEM))
    await refused("is not signed by the station CA")
    crl.write_bytes(b"not a list")
    await refused("cannot read the revocation list")
    crl.unlink()
    await refused("no revocation list to check against")


# --------------------------------------------------------------------------- the daemon's wiring


@pytest.mark.asyncio
async def test_station_links_build_ocpp_piles_and_the_service(configs: Path) -> None:
    """The daemon's StationLinks make an OcppPile for protocol "ocpp" piles (a DcPile for the
    others) on one CSMS server, whose service starts, serves, and on stop clears the dynamic
    profile of each charge point; a reload's prune keeps the server."""
    from base.clock import WallClock
    from controller.devices import CsmsService, StationLinks
    from drivers.pile import DcPile

    ocpp_station(configs)
    station = load_station(configs / STATION).with_ocpp(port=0)
    links = StationLinks(station, WallClock())
    piles = {p.id: links.pile(station, p) for p in station.piles}
    assert isinstance(piles["P01"], OcppPile) and isinstance(piles["P03"], DcPile)
    assert links.csms is not None
    service = CsmsService(links.csms)
    await service.start()
    try:
        s = Site(station, Clock(), links.csms)
        links.csms.attach(piles["P01"])  # type: ignore[arg-type]  # the daemon's, not the Site's
        cp = await s.charge_point("P01", "1.6")
        await session_frames_16(cp)()
        await piles["P01"].command(250.0)
        await links.prune(station)
        assert links.csms.link("P01") is not None
    finally:
        await service.stop()
    assert len(cp.sent("ClearChargingProfile")) == 1
    await links.close()


def test_check_config_shows_the_ocpp_server(
    configs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`flexcharge check-config` names the OCPP server and its charge points."""
    from flexcharge import cli

    ocpp_station(configs)
    assert cli.main(["check-config", str(configs / STATION)]) == 0
    out = capsys.readouterr().out
    assert "2 ocpp" in out
    assert (
        "OCPP server: ws://127.0.0.1:15040/<identity>, security profile 0, charge points CP-2, P01"
        in out
    )
