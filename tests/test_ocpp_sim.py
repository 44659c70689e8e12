"""Simulated OCPP charge points (1.6J and 2.0.1, AC and DC) against a small CSMS on loopback.

The CSMS here is written in the test on the `ocpp` library's central-system side (its
`ChargePoint` classes on a `websockets` server), not flexcharge's own: it answers what charge
points send, records every message, and asks the simulated charge points what a CSMS asks
(configuration, charging profiles, composite schedules). The charge points run in the hardware
simulator (`StationSimulator`) over the plant's pile models, on an unpaced virtual clock that
moves only when the test sleeps on it.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from ocpp.routing import on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from base import certs
from base.clock import VirtualClock
from base.config import REFERENCE_STATION, Station, load_station
from base.stationdevices import ChargePointQuirks, OcppSettings, PileConfig
from drivers.tls import server_context
from simulator.faults import Fault, FaultKind, FaultScript
from simulator.fleet import Visit
from simulator.hardware import StationSimulator
from simulator.ocpp.charge_point import SimulatedChargePoint, timestamp
from simulator.plant import PileModel
from tests.conftest import free_ports, local_time, on_free_ports

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]

PASSWORD = "correct horse battery staple"
KINDS = [("1.6", "ac"), ("1.6", "dc"), ("2.0.1", "ac"), ("2.0.1", "dc")]


def now_text() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Hub:
    """The test CSMS's record: every message from each charge point, and its connections."""

    heartbeat_s: int = 30
    password: str | None = None
    messages: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    points: dict[str, Any] = field(default_factory=dict)
    connects: list[str] = field(default_factory=list)
    closes: list[str] = field(default_factory=list)
    transactions: int = 0
    # The plant's piles by identity: each message notes the pile's (power kW, energy kWh) as it
    # arrives, under "plant".
    plant: dict[str, PileModel] = field(default_factory=dict)

    def note(self, identity: str, action: str, payload: dict[str, Any]) -> None:
        pile = self.plant.get(identity)
        if pile is not None:
            payload = {**payload, "plant": (pile.power_kw, pile.energy_import_kwh)}
        self.messages.append((identity, action, payload))

    def seen(self, identity: str, action: str) -> list[dict[str, Any]]:
        return [p for i, a, p in self.messages if i == identity and a == action]


class Csms16(Cp16):
    """The central system's side of one 1.6 charge point."""

    def __init__(self, identity: str, ws: ServerConnection, hub: Hub) -> None:
        super().__init__(identity, ws, response_timeout=10)
        self.hub = hub

    @on("BootNotification")
    def on_boot16(self, **payload: Any) -> Any:
        self.hub.note(self.id, "BootNotification", payload)
        return result16.BootNotification(
            current_time=now_text(), interval=self.hub.heartbeat_s, status="Accepted"
        )

    @on("Heartbeat")
    def on_heartbeat16(self, **payload: Any) -> Any:
        self.hub.note(self.id, "Heartbeat", payload)
        return result16.Heartbeat(current_time=now_text())

    @on("StatusNotification")
    def on_status16(self, **payload: Any) -> Any:
        self.hub.note(self.id, "StatusNotification", payload)
        return result16.StatusNotification()

    @on("Authorize")
    def on_authorize16(self, **payload: Any) -> Any:
        self.hub.note(self.id, "Authorize", payload)
        return result16.Authorize(id_tag_info={"status": "Accepted"})

    @on("StartTransaction")
    def on_start16(self, **payload: Any) -> Any:
        self.hub.note(self.id, "StartTransaction", payload)
        self.hub.transactions += 1
        return result16.StartTransaction(
            transaction_id=self.hub.transactions, id_tag_info={"status": "Accepted"}
        )

    @on("StopTransaction")
    def on_stop16(self, **payload: Any) -> Any:
        self.hub.note(self.id, "StopTransaction", payload)
        return result16.StopTransaction()

    @on("MeterValues")
    def on_meter16(self, **payload: Any) -> Any:
        self.hub.note(self.id, "MeterValues", payload)
        return result16.MeterValues()


class Csms201(Cp201):
    """The CSMS's side of one 2.0.1 charging station."""

    def __init__(self, identity: str, ws: ServerConnection, hub: Hub) -> None:
        super().__init__(identity, ws, response_timeout=10)
        self.hub = hub

    @on("BootNotification")
    def on_boot201(self, **payload: Any) -> Any:
        self.hub.note(self.id, "BootNotification", payload)
        return result201.BootNotification(
            current_time=now_text(), interval=self.hub.heartbeat_s, status="Accepted"
        )

    @on("Heartbeat")
    def on_heartbeat201(self, **payload: Any) -> Any:
        self.hub.note(self.id, "Heartbeat", payload)
        return result201.Heartbeat(current_time=now_text())

    @on("StatusNotification")
    def on_status201(self, **payload: Any) -> Any:
        self.hub.note(self.id, "StatusNotification", payload)
        return result201.StatusNotification()

    @on("Authorize")
    def on_authorize201(self, **payload: Any) -> Any:
        self.hub.note(self.id, "Authorize", payload)
        return result201.Authorize(id_token_info={"status": "Accepted"})

    @on("TransactionEvent")
    def on_transaction201(self, **payload: Any) -> Any:
        self.hub.note(self.id, "TransactionEvent", payload)
        return result201.TransactionEvent()

    @on("MeterValues")
    def on_meter201(self, **payload: Any) -> Any:
        self.hub.note(self.id, "MeterValues", payload)
        return result201.MeterValues()


@contextlib.asynccontextmanager
async def csms(hub: Hub, port: int, ssl_context: Any = None) -> AsyncIterator[None]:
    """The test CSMS on 127.0.0.1:`port`, both versions on one port by subprotocol."""

    def check(connection: ServerConnection, request: Request) -> Response | None:
        if hub.password is None:
            return None
        identity = request.path.strip("/")
        token = base64.b64encode(f"{identity}:{hub.password}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {token}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "wrong credentials\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        identity = ws.request.path.strip("/") if ws.request else ""
        point: Any = (Csms16 if ws.subprotocol == "ocpp1.6" else Csms201)(identity, ws, hub)
        hub.points[identity] = point
        hub.connects.append(identity)
        try:
            await point.start()
        except ConnectionClosed:
            pass
        finally:
            hub.closes.append(identity)

    async with serve(
        handler,
        "127.0.0.1",
        port,
        subprotocols=[Subprotocol("ocpp1.6"), Subprotocol("ocpp2.0.1")],
        process_request=check,
        ssl=ssl_context,
    ):
        yield


def ocpp_pile(pile_id: str, version: str, supply: str, **extra: Any) -> PileConfig:
    """An OCPP pile: a 22 kW three-phase AC charger or a 150 kW DC charger."""
    ac = supply == "ac"
    return PileConfig.model_validate(
        {
            "id": pile_id,
            "protocol": "ocpp",
            "ocpp_version": version,
            "ocpp_identity": f"CP-{pile_id}",
            "supply": supply,
            "max_kw": 22.0 if ac else 150.0,
            "min_kw": 0.0 if ac else 10.0,
            "fallback_kw": 6.9 if ac else 50.0,
            "comm_timeout_s": 60.0,
            **extra,
        }
    )


def ocpp_station(
    piles: list[PileConfig],
    port: int,
    quirks: Mapping[str, Mapping[str, Any]] | None = None,
    **ocpp: Any,
) -> Station:
    """The reference station (meters on free ports) with `piles` as its only piles."""
    base = on_free_ports(load_station(REFERENCE_STATION))
    assert base.simulator is not None
    simulator = base.simulator.model_copy(
        update={
            "charge_points": {
                k: ChargePointQuirks.model_validate(v) for k, v in (quirks or {}).items()
            }
        }
    )
    return replace(
        base,
        piles=tuple(piles),
        groups=(),
        simulator=simulator,
        ocpp=OcppSettings.model_validate({"port": port, **ocpp}),
    )


def truck(start: float, pile: str, *, stay_s: float = 6 * 3600) -> Visit:
    return Visit(
        vehicle_id=f"truck-{pile}",
        arrival=start,
        departure=start + stay_s,
        energy_kwh=400.0,
        max_kw=450.0,
        capacity_kwh=600.0,
        soc_arrival=0.2,
        pile=pile,
    )


@dataclass
class Rig:
    """A station of OCPP piles under the simulator, and the test CSMS they connect to."""

    station: Station
    clock: VirtualClock
    sim: StationSimulator
    hub: Hub

    def point(self, pile_id: str) -> SimulatedChargePoint:
        return self.sim.charge_points[pile_id]

    def pile(self, pile_id: str) -> PileModel:
        return self.sim.plant.piles[pile_id]

    def csms_side(self, pile_id: str) -> Any:
        return self.hub.points[self.point(pile_id).identity]

    async def until(self, condition: Callable[[], bool], limit_s: float = 600) -> None:
        """Let virtual time run, a second at a time, until `condition` holds."""
        waited = 0.0
        while not condition():
            assert waited < limit_s, f"not within {limit_s:g} s of station time"
            await self.clock.sleep(1.0)
            waited += 1.0

    def seen(self, pile_id: str, action: str) -> list[dict[str, Any]]:
        return self.hub.seen(self.point(pile_id).identity, action)


@contextlib.asynccontextmanager
async def rig(
    piles: list[PileConfig],
    *,
    visits: list[Visit] | None = None,
    quirks: Mapping[str, Mapping[str, Any]] | None = None,
    faults: list[Fault] | None = None,
    hub: Hub | None = None,
    station: Station | None = None,
    csms_ssl: Any = None,
    **ocpp: Any,
) -> AsyncIterator[Rig]:
    [port] = free_ports(1)
    station = station or ocpp_station(piles, port, quirks, **ocpp)
    assert station.ocpp is not None
    port = station.ocpp.port
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    hub = hub or Hub()
    visits = visits if visits is not None else [truck(start + 10, p.id) for p in station.piles]
    async with csms(hub, port, csms_ssl):
        sim = StationSimulator(station, clock, visits=visits, faults=FaultScript(faults or ()))
        async with sim:
            for pile in station.piles:
                hub.plant[pile.identity] = sim.plant.piles[pile.id]
            yield Rig(station, clock, sim, hub)


def measured(payload: dict[str, Any]) -> dict[tuple[str, str | None], float]:
    """A MeterValues / TransactionEvent payload's first meter value: (measurand, phase) -> value."""
    [value] = payload["meter_value"]
    return {(s["measurand"], s.get("phase")): float(s["value"]) for s in value["sampled_value"]}


def meter_payloads(r: Rig, pile_id: str) -> list[dict[str, Any]]:
    if r.point(pile_id).version == "1.6":
        return [p for p in r.seen(pile_id, "MeterValues") if p.get("transaction_id")]
    return [
        p
        for p in r.seen(pile_id, "TransactionEvent")
        if p["trigger_reason"] == "MeterValuePeriodic"
    ]


def started(r: Rig, pile_id: str) -> list[dict[str, Any]]:
    if r.point(pile_id).version == "1.6":
        return r.seen(pile_id, "StartTransaction")
    return [p for p in r.seen(pile_id, "TransactionEvent") if p["event_type"] == "Started"]


def ended(r: Rig, pile_id: str) -> list[dict[str, Any]]:
    if r.point(pile_id).version == "1.6":
        return r.seen(pile_id, "StopTransaction")
    return [p for p in r.seen(pile_id, "TransactionEvent") if p["event_type"] == "Ended"]


async def configure(r: Rig, pile_id: str, meter_s: int) -> None:
    """Ask for meter values every `meter_s` (ChangeConfiguration / SetVariables)."""
    side = r.csms_side(pile_id)
    if r.point(pile_id).version == "1.6":
        answer = await side.call(
            call16.ChangeConfiguration(key="MeterValueSampleInterval", value=str(meter_s))
        )
        assert answer.status == "Accepted"
    else:
        answer = await side.call(
            call201.SetVariables(
                set_variable_data=[
                    {
                        "attribute_value": str(meter_s),
                        "component": {"name": "SampledDataCtrlr"},
                        "variable": {"name": "TxUpdatedInterval"},
                    }
                ]
            )
        )
        assert answer.set_variable_result[0]["attribute_status"] == "Accepted"


def profile(
    r: Rig,
    profile_id: int,
    purpose: str,
    periods: list[tuple[int, float]],
    *,
    unit: str = "W",
    stack_level: int = 0,
    valid_s: float | None = None,
    duration_s: int | None = None,
) -> dict[str, Any]:
    """A charging profile (snake_case, the version's shape) starting now."""
    now = r.clock.now()
    schedule: dict[str, Any] = {
        "charging_rate_unit": unit,
        "start_schedule": timestamp(now),
        "charging_schedule_period": [{"start_period": s, "limit": v} for s, v in periods],
    }
    if duration_s is not None:
        schedule["duration"] = duration_s
    body: dict[str, Any] = {
        "stack_level": stack_level,
        "charging_profile_purpose": purpose,
        "charging_profile_kind": "Absolute",
    }
    if valid_s is not None:
        body["valid_to"] = timestamp(now + valid_s)
    return {"profile_id": profile_id, "schedule": schedule, "body": body}


async def send_profile(r: Rig, pile_id: str, spec: dict[str, Any]) -> str:
    """SetChargingProfile: the charge point's answer."""
    point = r.point(pile_id)
    side = r.csms_side(pile_id)
    body = dict(spec["body"])
    if point.version == "1.6":
        if body["charging_profile_purpose"] == "ChargingStationMaxProfile":
            body["charging_profile_purpose"] = "ChargePointMaxProfile"
        payload = {
            "charging_profile_id": spec["profile_id"],
            **body,
            "charging_schedule": spec["schedule"],
        }
        if body["charging_profile_purpose"] == "TxProfile":
            assert point.tx is not None
            payload["transaction_id"] = int(point.tx.id)
        connector = 0 if body["charging_profile_purpose"] == "ChargePointMaxProfile" else 1
        answer = await side.call(
            call16.SetChargingProfile(connector_id=connector, cs_charging_profiles=payload)
        )
    else:
        if body["charging_profile_purpose"] == "ChargePointMaxProfile":
            body["charging_profile_purpose"] = "ChargingStationMaxProfile"
        payload = {
            "id": spec["profile_id"],
            **body,
            "charging_schedule": [{"id": 1, **spec["schedule"]}],
        }
        if body["charging_profile_purpose"] == "TxProfile":
            assert point.tx is not None
            payload["transaction_id"] = point.tx.id
        evse = 0 if body["charging_profile_purpose"] == "ChargingStationMaxProfile" else 1
        answer = await side.call(call201.SetChargingProfile(evse_id=evse, charging_profile=payload))
    return str(answer.status)


async def charging(r: Rig, pile_id: str) -> None:
    """Wait until the pile's transaction runs."""
    await r.until(lambda: r.point(pile_id).tx is not None and r.point(pile_id).connected)


# -- boot, transactions, meter values ---------------------------------------------------------


@pytest.mark.parametrize(("version", "supply"), KINDS)
async def test_boot_transaction_and_meter_values_follow_the_plant(
    version: str, supply: str
) -> None:
    """It boots (taking the heartbeat interval given), authorizes and starts a transaction when
    the plant's vehicle plugs in, sends meter values at the interval asked that match the pile
    model, and ends the transaction when the vehicle leaves."""
    pile = ocpp_pile("P1", version, supply)
    [port] = free_ports(1)
    station = ocpp_station([pile], port)
    start = local_time(station, "2026-11-25T10:00")
    async with rig([pile], station=station, visits=[truck(start + 10, "P1", stay_s=300)]) as r:
        with r.clock.participant():
            await r.until(lambda: bool(r.seen("P1", "BootNotification")))
            point = r.point("P1")
            assert point.heartbeat_s == r.hub.heartbeat_s
            boot = r.seen("P1", "BootNotification")[0]
            assert boot.get("charge_point_vendor") or boot["charging_station"]["vendor_name"]
            await charging(r, "P1")
            assert r.seen("P1", "Authorize")
            assert len(started(r, "P1")) == 1
            await configure(r, "P1", 5)
            # Steady state: the pile at its rating, its power constant.
            await r.clock.sleep(60)
            count = len(meter_payloads(r, "P1"))
            await r.clock.sleep(30)
            fresh = meter_payloads(r, "P1")[count:]
            assert 5 <= len(fresh) <= 7  # every 5 s
            rating = pile.max_kw
            model = r.pile("P1")
            assert model.power_kw == pytest.approx(rating)
            values = measured(fresh[-1])
            assert values[("Power.Active.Import", None)] == pytest.approx(rating * 1000, abs=0.1)
            # As the pile's register held it when sent (to one step of the plant).
            energy_wh = values[("Energy.Active.Import.Register", None)]
            plant_kwh = fresh[-1]["plant"][1]
            assert energy_wh == pytest.approx(plant_kwh * 1000, abs=rating / 3.6 + 0.1)
            if supply == "ac":
                amps = rating * 1000 / (3 * 230)
                for phase in ("L1", "L2", "L3"):
                    assert values[("Current.Import", phase)] == pytest.approx(amps, abs=0.01)
            else:
                assert model.vehicle is not None
                assert values[("SoC", None)] == pytest.approx(model.vehicle.soc * 100, abs=0.2)
            assert r.seen("P1", "Heartbeat")
            statuses = r.seen("P1", "StatusNotification")
            key = "status" if version == "1.6" else "connector_status"
            assert statuses[0][key] == "Available"
            assert any(s[key] in ("Charging", "Occupied") for s in statuses)
            # The vehicle leaves after five minutes: the transaction ends with the meter.
            await r.until(lambda: bool(ended(r, "P1")))
            [end] = ended(r, "P1")
            if version == "1.6":
                assert end["reason"] == "EVDisconnected"
                assert end["meter_stop"] == round(model.energy_import_kwh * 1000)
            else:
                assert end["transaction_info"]["stopped_reason"] == "EVDisconnected"
            await r.until(lambda: r.seen("P1", "StatusNotification")[-1][key] == "Available")
            assert r.pile("P1").setpoint_kw == 0.0


# -- smart charging ---------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "supply"), KINDS)
async def test_a_tx_profile_sets_the_plant_setpoint_in_amperes_and_watts(
    version: str, supply: str
) -> None:
    """A TxProfile in A (per phase: x phases x voltage) or W becomes the pile model's setpoint
    in kW, and the power follows."""
    pile = ocpp_pile("P1", version, supply)
    async with rig([pile]) as r:
        with r.clock.participant():
            await charging(r, "P1")
            model = r.pile("P1")
            if supply == "ac":
                spec = profile(r, 10, "TxProfile", [(0, 16.0)], unit="A")
                want_kw = 16 * 3 * 230 / 1000
            else:
                spec = profile(r, 10, "TxProfile", [(0, 40_000.0)], unit="W")
                want_kw = 40.0
            assert await send_profile(r, "P1", spec) == "Accepted"
            assert model.setpoint_kw == pytest.approx(want_kw)
            await r.clock.sleep(10)
            assert model.power_kw == pytest.approx(want_kw)
            # The other unit as well.
            if supply == "ac":
                spec = profile(r, 11, "TxProfile", [(0, 9_000.0)], unit="W", stack_level=1)
                want_kw = 9.0
            else:
                spec = profile(r, 11, "TxProfile", [(0, 100.0)], unit="A", stack_level=1)
                want_kw = 100 * 750 / 1000
            assert await send_profile(r, "P1", spec) == "Accepted"
            assert model.setpoint_kw == pytest.approx(want_kw)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_when_validity_expires_it_falls_back_to_its_default_profile(version: str) -> None:
    """A dynamic TxProfile sent with a validity: once that runs out, the TxDefaultProfile
    installed at boot governs again, and without one the max profile, then the rating."""
    pile = ocpp_pile("P1", version, "dc")
    async with rig([pile]) as r:
        with r.clock.participant():
            await charging(r, "P1")
            model = r.pile("P1")
            default = profile(r, 1, "TxDefaultProfile", [(0, 50_000.0)])
            assert await send_profile(r, "P1", default) == "Accepted"
            cap = profile(r, 2, "ChargePointMaxProfile", [(0, 120_000.0)])
            assert await send_profile(r, "P1", cap) == "Accepted"
            dynamic = profile(r, 3, "TxProfile", [(0, 90_000.0)], valid_s=60)
            sent = r.clock.now()
            assert await send_profile(r, "P1", dynamic) == "Accepted"
            assert model.setpoint_kw == pytest.approx(90.0)
            await r.clock.sleep(30)
            assert model.setpoint_kw == pytest.approx(90.0)
            await r.until(lambda: model.setpoint_kw != pytest.approx(90.0))
            assert r.clock.now() >= sent + 60
            assert model.setpoint_kw == pytest.approx(50.0)
            # Without the default: the max profile; without that too, the rating.
            side = r.csms_side("P1")
            if version == "1.6":
                await side.call(call16.ClearChargingProfile(id=1))
                assert model.setpoint_kw == pytest.approx(120.0)
                await side.call(call16.ClearChargingProfile(id=2))
            else:
                await side.call(call201.ClearChargingProfile(charging_profile_id=1))
                assert model.setpoint_kw == pytest.approx(120.0)
                await side.call(call201.ClearChargingProfile(charging_profile_id=2))
            assert model.setpoint_kw == pytest.approx(pile.max_kw)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_the_composite_schedule_is_the_lower_of_max_and_tx_profiles(version: str) -> None:
    """GetCompositeSchedule: the TxProfile of the highest stack level in force, capped by the
    max profile, period by period, in the unit asked for."""
    pile = ocpp_pile("P1", version, "ac")
    async with rig([pile]) as r:
        with r.clock.participant():
            await charging(r, "P1")
            cap = profile(r, 1, "ChargePointMaxProfile", [(0, 20.0)], unit="A")
            low = profile(r, 2, "TxProfile", [(0, 10.0), (300, 25.0)], unit="A")
            high = profile(r, 3, "TxProfile", [(0, 16.0)], unit="A", stack_level=2, duration_s=120)
            for spec in (cap, low, high):
                assert await send_profile(r, "P1", spec) == "Accepted"
            side = r.csms_side("P1")
            if version == "1.6":
                answer = await side.call(
                    call16.GetCompositeSchedule(
                        connector_id=1, duration=600, charging_rate_unit="A"
                    )
                )
                schedule = answer.charging_schedule
            else:
                answer = await side.call(
                    call201.GetCompositeSchedule(duration=600, evse_id=1, charging_rate_unit="A")
                )
                schedule = answer.schedule
            assert answer.status == "Accepted"
            periods = [
                (p["start_period"], p["limit"]) for p in schedule["charging_schedule_period"]
            ]
            assert periods == [(0, 16.0), (120, 10.0), (300, 20.0)]
            assert r.pile("P1").setpoint_kw == pytest.approx(16 * 3 * 230 / 1000)


# -- quirks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_quirks_refuse_purposes_units_periods_and_stack_levels(version: str) -> None:
    """A charge point that rejects TxProfile, takes amperes only, at most 3 periods and stack
    level 1 answers Rejected to each of those, Accepted to the rest, and says so when asked."""
    pile = ocpp_pile("P1", version, "ac")
    quirks = {
        "P1": {
            "rejects_purposes": ["TxProfile"],
            "rate_units": ["A"],
            "max_periods": 3,
            "max_stack_level": 1,
        }
    }
    async with rig([pile], quirks=quirks) as r:
        with r.clock.participant():
            await charging(r, "P1")
            model = r.pile("P1")
            tx = profile(r, 1, "TxProfile", [(0, 10.0)], unit="A")
            assert await send_profile(r, "P1", tx) == "Rejected"
            watts = profile(r, 2, "TxDefaultProfile", [(0, 10_000.0)], unit="W")
            assert await send_profile(r, "P1", watts) == "Rejected"
            many = profile(r, 3, "TxDefaultProfile", [(60 * k, 10.0) for k in range(4)], unit="A")
            assert await send_profile(r, "P1", many) == "Rejected"
            deep = profile(r, 4, "TxDefaultProfile", [(0, 10.0)], unit="A", stack_level=2)
            assert await send_profile(r, "P1", deep) == "Rejected"
            assert model.setpoint_kw == pytest.approx(pile.max_kw)
            fits = profile(r, 5, "TxDefaultProfile", [(0, 10.0), (60, 12.0), (120, 14.0)], unit="A")
            assert await send_profile(r, "P1", fits) == "Accepted"
            assert model.setpoint_kw == pytest.approx(10 * 3 * 230 / 1000)
            side = r.csms_side("P1")
            if version == "1.6":
                answer = await side.call(call16.GetConfiguration())
                config = {k["key"]: k["value"] for k in answer.configuration_key}
                assert config["ChargingScheduleAllowedChargingRateUnit"] == "Current"
                assert config["ChargingScheduleMaxPeriods"] == "3"
                assert config["ChargeProfileMaxStackLevel"] == "1"
                composite = await side.call(
                    call16.GetCompositeSchedule(connector_id=1, duration=60, charging_rate_unit="W")
                )
            else:
                names = ["RateUnit", "PeriodsPerSchedule", "ProfileStackLevel", "Nonsense"]
                answer = await side.call(
                    call201.GetVariables(
                        get_variable_data=[
                            {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": n}}
                            for n in names
                        ]
                    )
                )
                got = {
                    x["variable"]["name"]: (x["attribute_status"], x.get("attribute_value"))
                    for x in answer.get_variable_result
                }
                assert got == {
                    "RateUnit": ("Accepted", "A"),
                    "PeriodsPerSchedule": ("Accepted", "3"),
                    "ProfileStackLevel": ("Accepted", "1"),
                    "Nonsense": ("UnknownVariable", None),
                }
                composite = await side.call(
                    call201.GetCompositeSchedule(duration=60, evse_id=1, charging_rate_unit="W")
                )
            assert composite.status == "Rejected"  # it does not work in watts


async def test_a_charge_point_that_never_applies_profiles_accepts_them_all() -> None:
    pile = ocpp_pile("P1", "1.6", "dc")
    async with rig([pile], quirks={"P1": {"applies_profiles": False}}) as r:
        with r.clock.participant():
            await charging(r, "P1")
            spec = profile(r, 1, "TxProfile", [(0, 30_000.0)])
            assert await send_profile(r, "P1", spec) == "Accepted"
            await r.clock.sleep(30)
            assert r.pile("P1").setpoint_kw == pytest.approx(pile.max_kw)
            assert r.pile("P1").power_kw == pytest.approx(pile.max_kw)


@pytest.mark.parametrize("how", ["quirk", "fault"])
async def test_a_charge_point_that_applies_late(how: str) -> None:
    """apply_delay_s (or the applies-late fault): the profile is accepted at once and applied
    that much later."""
    pile = ocpp_pile("P1", "2.0.1", "dc")
    [port] = free_ports(1)
    station = ocpp_station([pile], port, {"P1": {"apply_delay_s": 20}} if how == "quirk" else None)
    start = local_time(station, "2026-11-25T10:00")
    faults = [Fault(FaultKind.APPLIES_LATE, "P1", start + 1, start + 3600, 20.0)]
    async with rig([pile], station=station, faults=faults if how == "fault" else None) as r:
        with r.clock.participant():
            await charging(r, "P1")
            model = r.pile("P1")
            # (The fault holds back the transaction's start as well.)
            await r.until(lambda: model.power_kw == pytest.approx(pile.max_kw))
            sent = r.clock.now()
            spec = profile(r, 1, "TxProfile", [(0, 30_000.0)])
            assert await send_profile(r, "P1", spec) == "Accepted"
            await r.clock.sleep(15)
            assert model.power_kw == pytest.approx(pile.max_kw)
            await r.until(lambda: model.power_kw == pytest.approx(30.0))
            assert r.clock.now() >= sent + 20


async def test_a_charge_point_that_keeps_its_last_profile_ignores_validity() -> None:
    pile = ocpp_pile("P1", "1.6", "dc")
    async with rig([pile], quirks={"P1": {"keeps_last_profile": True}}) as r:
        with r.clock.participant():
            await charging(r, "P1")
            spec = profile(r, 1, "TxProfile", [(0, 30_000.0)], valid_s=60, duration_s=60)
            assert await send_profile(r, "P1", spec) == "Accepted"
            await r.clock.sleep(300)
            assert r.pile("P1").setpoint_kw == pytest.approx(30.0)


async def test_faults_reject_a_purpose_and_ignore_profiles_while_they_last() -> None:
    pile = ocpp_pile("P1", "2.0.1", "dc")
    [port] = free_ports(1)
    station = ocpp_station([pile], port)
    start = local_time(station, "2026-11-25T10:00")
    faults = [
        Fault(FaultKind.REJECTS_PURPOSE, "P1", start, start + 120, label="TxProfile"),
        Fault(FaultKind.IGNORES_PROFILES, "P1", start + 200, start + 300),
    ]
    async with rig([pile], station=station, faults=faults) as r:
        with r.clock.participant():
            await charging(r, "P1")
            model = r.pile("P1")
            assert await send_profile(r, "P1", profile(r, 1, "TxProfile", [(0, 30e3)])) == (
                "Rejected"
            )
            await r.until(lambda: r.clock.now() >= start + 210)
            assert await send_profile(r, "P1", profile(r, 2, "TxProfile", [(0, 40e3)])) == (
                "Accepted"
            )
            await r.clock.sleep(20)
            assert model.power_kw == pytest.approx(pile.max_kw)  # ignored
            await r.until(lambda: r.clock.now() >= start + 310)
            assert model.power_kw == pytest.approx(40.0)  # applied once the fault ended


# -- links, reboots, security -----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_dropped_websocket_reconnects_at_the_end_keeping_its_profiles(
    version: str,
) -> None:
    pile = ocpp_pile("P1", version, "dc")
    [port] = free_ports(1)
    station = ocpp_station([pile], port)
    start = local_time(station, "2026-11-25T10:00")
    faults = [Fault(FaultKind.WS_DROP, "P1", start + 100, start + 160)]
    async with rig([pile], station=station, faults=faults) as r:
        with r.clock.participant():
            await charging(r, "P1")
            assert await send_profile(r, "P1", profile(r, 1, "TxProfile", [(0, 60e3)])) == (
                "Accepted"
            )
            await r.until(lambda: not r.point("P1").connected)
            assert r.clock.now() >= start + 100
            identity = r.point("P1").identity
            await r.until(lambda: identity in r.hub.closes)
            await r.clock.sleep(20)
            assert r.pile("P1").setpoint_kw == pytest.approx(60.0)  # kept offline
            await r.until(lambda: r.point("P1").boots == 2)
            assert r.clock.now() >= start + 160
            assert r.hub.connects.count(identity) == 2
            assert len(started(r, "P1")) == 1  # the same transaction
            assert r.pile("P1").setpoint_kw == pytest.approx(60.0)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_reboot_loses_profiles_and_transaction_and_boots_again(version: str) -> None:
    pile = ocpp_pile("P1", version, "dc")
    [port] = free_ports(1)
    station = ocpp_station([pile], port)
    start = local_time(station, "2026-11-25T10:00")
    faults = [Fault(FaultKind.REBOOT, "P1", start + 100, start + 130)]
    async with rig([pile], station=station, faults=faults) as r:
        with r.clock.participant():
            await charging(r, "P1")
            assert await send_profile(r, "P1", profile(r, 1, "TxProfile", [(0, 60e3)])) == (
                "Accepted"
            )
            await r.until(lambda: r.point("P1").boots == 2)
            assert r.clock.now() >= start + 130
            await r.until(lambda: len(started(r, "P1")) == 2)
            [end] = ended(r, "P1")
            reason = (
                end["reason"] if version == "1.6" else end["transaction_info"]["stopped_reason"]
            )
            assert reason == "Reboot"
            assert r.point("P1").stack.profiles == []
            await r.clock.sleep(10)
            assert r.pile("P1").setpoint_kw == pytest.approx(pile.max_kw)  # no profile left


async def test_it_waits_for_a_csms_that_is_not_there_yet_with_backoff() -> None:
    """Started before its CSMS, the charge point tries again, less and less often, and boots
    once the CSMS listens."""
    pile = ocpp_pile("P1", "1.6", "dc")
    [port] = free_ports(1)
    station = ocpp_station([pile], port)
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    hub = Hub()
    async with StationSimulator(station, clock, visits=[]) as sim:
        point = sim.charge_points["P1"]
        with clock.participant():
            await clock.sleep(100)
            assert point.connections == 0
            async with csms(hub, port):
                waited = 0
                while point.boots == 0:
                    assert waited < 60
                    await clock.sleep(1)
                    waited += 1
                assert hub.seen(point.identity, "BootNotification")


async def test_basic_auth_gives_the_password_of_the_station(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Security profile 1: the charge point sends its identity and the station's password; a
    CSMS that wants another keeps it out."""
    monkeypatch.setenv("TEST_OCPP_PASSWORD", PASSWORD)
    pile = ocpp_pile("P1", "2.0.1", "dc")
    [port] = free_ports(1)
    station = ocpp_station([pile], port, security_profile=1, password_env="TEST_OCPP_PASSWORD")
    async with rig([pile], station=station, hub=Hub(password=PASSWORD)) as r:
        with r.clock.participant():
            await r.until(lambda: r.point("P1").boots == 1)
    async with rig([pile], station=station, hub=Hub(password="another")) as r:
        with r.clock.participant():
            await r.clock.sleep(120)
            assert r.point("P1").boots == 0
            assert r.hub.connects == []


async def test_mutual_tls_with_the_station_certificates(tmp_path: Path) -> None:
    """Security profile 3: wss, the CSMS presents the daemon's certificate from `certs init`
    and the charge point its own, named for its identity."""
    certs.init(tmp_path / "certs", station="test hub")
    pile = ocpp_pile("P1", "1.6", "dc")
    [port] = free_ports(1)
    station = ocpp_station([pile], port, security_profile=3).with_security(
        certs=str(tmp_path / "certs")
    )
    daemon = station.identity("daemon")
    context = server_context(daemon.cert_pem, daemon.key_pem, daemon.ca_pem)
    async with rig([pile], station=station, csms_ssl=context) as r:
        with r.clock.participant():
            await r.until(lambda: r.point("P1").boots == 1)
            peer = r.csms_side("P1")._connection.transport.get_extra_info("peercert")
            assert dict(peer["subject"][-1])["commonName"] == "CP-P1"


async def test_simulated_charge_points_pass_the_csms_profile_3_check(tmp_path: Path) -> None:
    """Against flexcharge's own CSMS (drivers.ocpp.server), which under security profile 3
    refuses a certificate that does not name the identity, each simulated charge point presents
    the certificate of its identity, issued in the station's certs directory on first use, and
    connects; the one an operator issued beforehand is used as it is."""
    from drivers.ocpp.server import CsmsServer

    certs.init(tmp_path / "certs", station="test hub")
    mine = certs.issue(tmp_path / "certs", "CP-P2", charge_point=True).cert_pem.read_bytes()
    piles = [ocpp_pile("P1", "1.6", "dc"), ocpp_pile("P2", "2.0.1", "ac")]
    [port] = free_ports(1)
    station = ocpp_station(piles, port, security_profile=3).with_security(
        certs=str(tmp_path / "certs")
    )
    clock = VirtualClock(local_time(station, "2026-11-25T10:00"))
    server = CsmsServer(station, clock.now)
    await server.start()
    try:
        async with StationSimulator(station, clock, visits=[]) as sim:
            with clock.participant():
                waited = 0
                points = sim.charge_points.values()
                while set(server.links) != {"CP-P1", "CP-P2"} or any(p.boots == 0 for p in points):
                    assert waited < 120, sorted(server.links)
                    await clock.sleep(1)
                    waited += 1
    finally:
        await server.stop()
    for identity in ("CP-P1", "CP-P2"):
        pem = (tmp_path / "certs" / identity / "cert.pem").read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity
    assert (tmp_path / "certs" / "CP-P2" / "cert.pem").read_bytes() == mine
