"""The simulator's OPC-UA servers and the OPC-UA driver, against each other on real loopback sockets.

Real asyncua servers and clients, with certificates from a station CA made by `certs.init`:
encrypted sessions with both policies reading the metering terminal and driving a DC pile through
the same `MapMeter` and `DcPile` the Modbus tests use, with a result per written item; refusals
(intruder, revoked certificate, foreign application URI, a server the client does not trust or
whose certificate is revoked, a wrong password, an unencrypted session, a policy or mode the
server does not offer) with their status and no error in the server's log; the subscription
path, its polling fallback, and a server that stops or hangs. `test_opcua_peer.py` does the same
with node-opcua's client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from asyncua import Client, ua
from asyncua.crypto import security_policies

from base import certs
from base.clock import VirtualClock
from base.config import Station
from base.devicemap import PileMode, PileState
from base.loading import ConfigError
from control.step import Cycle
from controller.daemon import Daemon
from drivers.errors import BadValue, ConnectionLost, DeviceRejected, DeviceTimeout
from drivers.meter import MapMeter
from drivers.opcua.device import OpcUaDevice
from drivers.opcua.link import OpcUaLink, read_refusals
from drivers.opcua.security import POLICIES, OpcUaSecurity
from drivers.pile import DcPile
from simulator.hardware import StationSimulator
from simulator.opcua import OpcUaStationServer
from simulator.plant import Plant
from simulator.registers import MeterRegisters
from simulator.scenario import Series
from tests.conftest import free_ports, local_time, on_one_opcua_endpoint, truck_visit

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]

USER = "operator"
PASSWORD = "correct horse battery staple"
PASSWORD_ENV = "FLEXCHARGE_TEST_OPCUA_PASSWORD"
UTILITY_LIMIT_KW = 3800.0


def _open_sockets() -> int:
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        with contextlib.suppress(OSError):
            count += os.readlink(fd).startswith("socket:")
    return count


@pytest.fixture(autouse=True)
def no_leaked_sockets() -> Iterator[None]:
    """Fail a test that leaves a socket open (a session, a listener)."""
    before = _open_sockets()
    yield
    deadline = time.monotonic() + 2.0
    while _open_sockets() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _open_sockets() <= before, "sockets left open"


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A station CA with the daemon's and the simulator's certificates."""
    directory = tmp_path_factory.mktemp("certs")
    certs.init(directory)
    return directory


@pytest.fixture
def opcua_station(station: Station, certs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Station:
    """The reference station with the metering terminal and piles P01, P02 on one OPC-UA endpoint."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    return on_one_opcua_endpoint(station, certs_dir, USER, PASSWORD_ENV)


def _security(
    station: Station,
    *,
    identity: certs.Identity | None = None,
    trust_dir: Path | None = None,
    crl_dir: Path | None = None,
    policies: tuple[str, ...] = ("Basic256Sha256", "Aes128Sha256RsaOaep"),
    password: str = PASSWORD,
) -> OpcUaSecurity:
    ident = identity or station.identity("daemon")
    return OpcUaSecurity(
        encrypt=True,
        certificate=ident.cert_pem,
        private_key=ident.key_pem,
        trust_dir=trust_dir or station.identity("daemon").trust_dir,
        crl_dir=crl_dir or station.identity("daemon").crl_dir,
        application_uri=ident.application_uri,
        policies=policies,
        user=USER,
        password=password,
    )


def _link(
    station: Station,
    clock: VirtualClock,
    *,
    security: OpcUaSecurity | None = None,
    url: str | None = None,
    timeout_s: float = 1.0,
    connect_timeout_s: float = 5.0,
    keepalive_s: float = 1.0,
) -> OpcUaLink:
    return OpcUaLink(
        url or station.grid_meter.opcua_url,
        security or _security(station),
        now=clock.now,
        timeout_s=timeout_s,
        connect_timeout_s=connect_timeout_s,
        keepalive_s=keepalive_s,
    )


def _meter(station: Station, link: OpcUaLink) -> MapMeter:
    gm = station.grid_meter
    return MapMeter(
        gm.id, OpcUaDevice(f"meter {gm.id}", link, station.map_for(gm.device), gm.opcua_object)
    )


@contextlib.asynccontextmanager
async def _terminal(
    station: Station, plant: Plant, clock: VirtualClock, **options: object
) -> AsyncIterator[OpcUaStationServer]:
    """A server for the metering terminal alone, on the station's OPC-UA endpoint."""
    gm = station.grid_meter
    server = OpcUaStationServer(
        gm.opcua_url,
        clock,
        identity=station.identity("simulator"),
        credentials=station.opcua_credentials(),
        **options,  # type: ignore[arg-type]
    )
    server.add(gm.opcua_object, station.map_for(gm.device), MeterRegisters(plant), "terminal")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@contextlib.asynccontextmanager
async def _simulated(station: Station) -> AsyncIterator[tuple[VirtualClock, StationSimulator]]:
    """The station simulated from 10:00, a truck on P01, on a virtual clock the caller drives."""
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    with clock.participant():
        async with StationSimulator(station, clock, visits=[truck_visit(start, "P01")]) as sim:
            yield clock, sim


def _plant(station: Station, start: float) -> Plant:
    plant = Plant(station)
    plant.step(start, 1.0)
    return plant


async def _eventually(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Wait in real time, bounded, for a network event (a notification, a closed socket)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- reading and driving


@pytest.mark.parametrize("policy", ["Basic256Sha256", "Aes128Sha256RsaOaep"])
async def test_encrypted_session_reads_the_grid_state_the_plant_has(
    opcua_station: Station, policy: str
) -> None:
    """SignAndEncrypt with user and password: MapMeter over OPC-UA reads what the plant holds."""
    station = opcua_station
    async with _simulated(station) as (clock, sim):
        plant = sim.plant
        plant.limit_series = Series(
            np.array([clock.now() - 60, clock.now() + 86400]),
            np.array([UTILITY_LIMIT_KW] * 2),
            "step",
        )
        link = _link(station, clock, security=_security(station, policies=(policy,)))
        meter = _meter(station, link)
        try:
            await clock.sleep(600)
            reading = await meter.read()
            assert link.policy == policy
            assert link.connected

            served = sim.models[station.grid_meter.id].values()
            assert reading.power_kw == plant.site_kw
            assert 1700 < reading.power_kw < 1900, "10:00-10:10 depot load and one truck"
            assert reading.power_phases_kw == (plant.site_kw / 3,) * 3
            for phase in range(3):
                assert reading.voltages_v[phase] == served[f"voltage_l{phase + 1}"]
                assert reading.currents_a[phase] == served[f"current_l{phase + 1}"]
            assert 220 < (reading.voltages_v[0] or 0) < 240
            assert reading.frequency_hz == 50.0
            assert reading.energy_import_kwh == plant.energy_import_kwh
            assert reading.energy_import_kwh == pytest.approx(1800 * 600 / 3600, rel=0.1)
            assert reading.energy_export_kwh == 0.0
            assert reading.utility_limit_kw == UTILITY_LIMIT_KW
        finally:
            await link.close()
        assert not link.connected


async def test_dc_pile_is_driven_over_opcua(opcua_station: Station) -> None:
    """DcPile over OPC-UA: commands reach the simulated pile, reads see what it does."""
    station = opcua_station
    async with _simulated(station) as (clock, sim):
        link = _link(station, clock, url=station.pile("P01").opcua_url)
        regmap = station.map_for(station.pile("P01").device)
        pile = DcPile("P01", OpcUaDevice("pile P01", link, regmap, "P01"))
        model = sim.plant.piles["P01"]
        try:
            await pile.arm_failsafe(30.0, 100.0)
            await pile.command(250.0)
            assert model.setpoint_kw == 250.0 and model.mode is PileMode.CHARGE
            assert model.comm_timeout_s == 30.0 and model.fallback_kw == 100.0

            await clock.sleep(20)
            reading = await pile.read()
            # What the driver adds of its own: what it commanded (undated: it has no clock).
            assert (reading.commanded_kw, reading.commanded_since) == (250.0, None)
            assert replace(reading, commanded_kw=None) == model.reading(clock.now()), (
                "every other field as the plant has it"
            )
            assert reading.state is PileState.CHARGING
            assert reading.power_kw == pytest.approx(250.0)
            assert reading.applied_setpoint_kw == 250.0
            assert reading.soc_pct is not None and 20 < reading.soc_pct < 21
            assert reading.ev_max_kw == 450.0 and reading.ev_capacity_kwh == 500.0
            assert reading.session_id == 1 and reading.fallback_countdown_s == 10
            raw = await pile.device.read(
                ["setpoint", "mode", "heartbeat", "comm_timeout", "fallback_power"]
            )
            assert raw == {
                "setpoint": 250.0,
                "mode": 1,
                "heartbeat": 0,  # the pile clears the heartbeat the controller wrote
                "comm_timeout": 30,
                "fallback_power": 100.0,
            }
            assert isinstance(raw["mode"], int) and isinstance(raw["setpoint"], float)

            other = await DcPile("P02", OpcUaDevice("pile P02", link, regmap, "P02")).read()
            assert other.state is PileState.AVAILABLE
            assert other.soc_pct is None and other.ev_max_kw is None, "BadNoData reads as None"

            with pytest.raises(DeviceRejected) as refused:
                await pile.command(-50.0)  # a charge-only pile refuses to discharge
            assert refused.value.code == ua.StatusCodes.BadOutOfRange
            assert "pile P01" in str(refused.value) and link.address in str(refused.value)
            assert model.setpoint_kw == 250.0 and model.mode is PileMode.CHARGE
            assert (await pile.read()).applied_setpoint_kw == 250.0

            # What the server enforces for clients that skip the map's checks: a result per
            # item, the refused ones changing nothing and failing none of the others.
            with pytest.raises(DeviceRejected) as mixed:
                await link.write(
                    "pile P01",
                    {
                        "P01.state": ua.Variant(3, ua.VariantType.Int64),
                        "P01.mode": ua.Variant(2.0, ua.VariantType.Double),
                        "P01.fallback_power": ua.Variant(120.0, ua.VariantType.Double),
                    },
                )
            assert str(mixed.value).endswith(": state: BadNotWritable, mode: BadTypeMismatch")
            assert mixed.value.code == ua.StatusCodes.BadNotWritable
            assert model.mode is PileMode.CHARGE and model.fallback_kw == 120.0
            # A device that refuses its values (a discharge) fails none of another device's.
            with pytest.raises(DeviceRejected) as across:
                await link.write(
                    "piles",
                    {
                        "P01.setpoint": ua.Variant(-50.0, ua.VariantType.Double),
                        "P01.mode": ua.Variant(2, ua.VariantType.Int64),
                        "P02.fallback_power": ua.Variant(90.0, ua.VariantType.Double),
                    },
                )
            assert str(across.value).endswith(": setpoint: BadOutOfRange, mode: BadOutOfRange")
            assert model.setpoint_kw == 250.0 and model.mode is PileMode.CHARGE
            assert sim.plant.piles["P02"].fallback_kw == 90.0

            await pile.command(0.0)
            assert model.setpoint_kw == 0.0 and model.mode is PileMode.IDLE
            await clock.sleep(2)
            assert (await pile.read()).applied_setpoint_kw == 0.0
        finally:
            await link.close()


async def test_daemon_controls_opcua_devices_and_leaves_them_safe(
    opcua_station: Station, caplog: pytest.LogCaptureFixture
) -> None:
    """Daemon.for_station reads the terminal and drives P01 over OPC-UA, the rest over Modbus."""
    station = opcua_station.with_control(period_s=2.0)
    cycles: list[Cycle] = []
    async with _simulated(station) as (clock, sim):
        daemon = Daemon.for_station(station, clock, policy="equal-share")
        daemon.observers.append(cycles.append)
        await daemon.start()  # connected and armed before station time moves
        await clock.sleep(120)
        await daemon.shutdown()

        assert len(cycles) >= 50
        last = cycles[-1]
        assert last.snapshot.meter is not None and last.snapshot.meter_current
        assert all(c.snapshot.meter is not None for c in cycles[1:])
        p01 = next(v for v in last.snapshot.piles if v.id == "P01")
        assert p01.reading is not None and p01.reading.state is PileState.CHARGING
        assert last.setpoints["P01"] > 100, "the truck on P01 was given power"
        assert all(last.written.values()), "every pile, OPC-UA and Modbus, took its setpoint"
        assert sim.plant.piles["P01"].power_kw > 100
        assert sim.plant.piles["P01"].setpoint_kw == station.pile("P01").fallback_kw, (
            "left at its fallback power over OPC-UA on shutdown"
        )
    assert "WITHOUT encryption" not in caplog.text


async def test_daemon_needs_the_password_and_warns_about_unencrypted_devices(
    opcua_station: Station, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing password is a ConfigError; a device with opcua_security = "none" is warned of."""
    clock = VirtualClock(local_time(opcua_station, "2026-11-25T10:00"))
    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ConfigError, match=PASSWORD_ENV):
        Daemon.for_station(opcua_station, clock)
    insecure = replace(
        opcua_station,
        grid_meter=opcua_station.grid_meter.model_copy(update={"opcua_security": "none"}),
        piles=tuple(p for p in opcua_station.piles if p.protocol != "opcua"),
    )
    daemon = Daemon.for_station(insecure, clock)
    caplog.set_level(logging.WARNING, logger="controller.daemon")
    await daemon.start()
    await daemon.shutdown()
    warnings = [r.getMessage() for r in caplog.records if "WITHOUT encryption" in r.getMessage()]
    assert len(warnings) == 1 and "grid" in warnings[0]


# --------------------------------------------------------------------------- refusals


REFUSALS = {
    "intruder certificate": "refused this client's certificate (BadSecurityChecksFailed)",
    "revoked certificate": (
        "refused this client's certificate (BadCertificateRevoked); the station CA has revoked it"
    ),
    "foreign application URI": (
        "refused this client's certificate (BadCertificateUriInvalid); the application URI "
        "this client declares is not the one in its certificate"
    ),
    "untrusted server": "refused the server at",
    "revoked server": "refused the server at {url}: its certificate is revoked (BadCertificateRevoked",
    "wrong password": f"refused user {USER!r} (BadUserAccessDenied): wrong user name or password",
}


def _server_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the server side logged at ERROR or with a traceback."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.name.startswith(("asyncua.server", "asyncua.crypto", "asyncuagds", "simulator"))
        and (r.levelno >= logging.ERROR or r.exc_info)
    ]


@pytest.mark.parametrize("case", list(REFUSALS))
async def test_refusals_are_driver_errors_that_say_why(
    opcua_station: Station,
    certs_dir: Path,
    tmp_path: Path,
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each refused client or server ends in ConnectionLost saying why; the server logs no error."""
    station = opcua_station
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    daemon = station.identity("daemon")
    if case == "intruder certificate":
        intruder = certs.self_signed(
            tmp_path,
            name="intruder",
            application_uri=certs.APPLICATION_URIS["daemon"],
            hosts=certs.default_hosts(),
        )
        security = _security(station, identity=intruder)
    elif case == "revoked certificate":
        revoked = certs.issue(certs_dir, "revoked-client", application_uri="urn:example:revoked")
        certs.revoke(certs_dir, revoked.cert_pem)
        security = _security(station, identity=revoked)
    elif case == "foreign application URI":
        security = _security(station, identity=replace(daemon, application_uri="urn:example:other"))
    elif case == "untrusted server":
        certs.init(tmp_path / "other")
        other = tmp_path / "other"
        security = _security(station, trust_dir=other / "ca", crl_dir=other / "crl")
    elif case == "revoked server":
        copy = tmp_path / "copy"
        shutil.copytree(certs_dir, copy)
        certs.revoke(copy, certs.identity(copy, "simulator").cert_pem)
        security = _security(station, trust_dir=copy / "ca", crl_dir=copy / "crl")
    else:
        security = _security(station, password="not the password")
    caplog.set_level(logging.INFO, logger="simulator.opcua_guard")
    with clock.participant():
        async with _terminal(station, _plant(station, start), clock):
            link = _link(station, clock, security=security)
            with pytest.raises(ConnectionLost) as refused:
                await _meter(station, link).read()
            message = str(refused.value)
            assert REFUSALS[case].format(url=link.address) in message
            assert message.startswith("meter grid: ") and link.address in message
            for secret in (PASSWORD, "not the password", "PRIVATE KEY"):
                assert secret not in message
            assert not link.connected
            await link.close()
            good = _link(station, clock)
            try:
                assert (await _meter(station, good).read()).frequency_hz == 50.0
            finally:
                await good.close()
    assert _server_errors(caplog) == []


async def _open_channels(
    station: Station,
    policy: type[security_policies.SecurityPolicy],
    mode: ua.MessageSecurityMode,
    *,
    times: int,
) -> list[ua.UaStatusCodeError]:
    """Open a channel to the station's terminal `times` times, with the daemon's certificate and
    `policy` in `mode`, each on a new connection: the refusals (each must be one; the client
    waits up to 60 s, so a refusal that came from its own timeout would be a TimeoutError)."""
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    daemon = station.identity("daemon")
    simulator = station.identity("simulator")
    refusals = []
    with clock.participant():
        async with _terminal(station, _plant(station, start), clock):
            for _ in range(times):
                client = Client(station.grid_meter.opcua_url, timeout=60)
                client.application_uri = daemon.application_uri
                read_refusals(client)
                await client.set_security(
                    policy,
                    certificate=str(daemon.cert_pem),
                    private_key=str(daemon.key_pem),
                    server_certificate=str(simulator.cert_pem),
                    mode=mode,
                )
                await client.connect_socket()
                try:
                    await client.send_hello()
                    with pytest.raises(ua.UaStatusCodeError) as refused:
                        await client.open_secure_channel()
                finally:
                    client.disconnect_socket()
                refusals.append(refused.value)
    return refusals


@pytest.mark.parametrize(
    ("policy", "mode", "status"),
    [
        ("Basic256Sha256", ua.MessageSecurityMode.Sign, "BadSecurityModeRejected"),
        ("Aes128Sha256RsaOaep", ua.MessageSecurityMode.Sign, "BadSecurityModeRejected"),
        ("Basic256", ua.MessageSecurityMode.SignAndEncrypt, "BadSecurityPolicyRejected"),
        ("Basic256", ua.MessageSecurityMode.Sign, "BadSecurityPolicyRejected"),
        ("Basic128Rsa15", ua.MessageSecurityMode.SignAndEncrypt, "BadSecurityPolicyRejected"),
    ],
)
async def test_policies_and_modes_not_offered_are_refused_at_once(
    opcua_station: Station,
    caplog: pytest.LogCaptureFixture,
    policy: str,
    mode: ua.MessageSecurityMode,
    status: str,
) -> None:
    """A client that ignores the endpoint list and asks for a deprecated policy, or Sign
    without encryption, gets the server's status for it when it opens the channel; the server
    logs one line, no error and no traceback. (The client waits up to 60 s: a refusal that
    came from its own timeout would be a TimeoutError, not the status.)"""
    caplog.set_level(logging.INFO, logger="simulator.opcua_guard")
    (refused,) = await _open_channels(
        opcua_station, getattr(security_policies, f"SecurityPolicy{policy}"), mode, times=1
    )
    assert refused.code == getattr(ua.StatusCodes, status)
    refusals = [r.getMessage() for r in caplog.records if "refused a channel" in r.getMessage()]
    assert len(refusals) == 1 and status in refusals[0]
    assert _server_errors(caplog) == []


async def test_a_client_refused_again_and_again_is_logged_at_the_1st_and_10th_time(
    opcua_station: Station, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that keeps asking for what the server refuses (a daemon reconnecting every
    cycle) is logged at its first refusal and its tenth, not at each one."""
    caplog.set_level(logging.INFO, logger="simulator.opcua_guard")
    await _open_channels(
        opcua_station,
        security_policies.SecurityPolicyBasic256Sha256,
        ua.MessageSecurityMode.Sign,
        times=12,
    )
    refusals = [r.getMessage() for r in caplog.records if "refused a channel" in r.getMessage()]
    assert len(refusals) == 2, refusals
    assert "BadSecurityModeRejected" in refusals[0] and "since its last session" not in refusals[0]
    assert "; 10 such refusals of this host since its last session" in refusals[1]


async def test_no_unencrypted_endpoint_or_session_unless_asked(
    opcua_station: Station, caplog: pytest.LogCaptureFixture
) -> None:
    """Only SignAndEncrypt endpoints are offered, and an unencrypted session is refused
    (BadSecurityPolicyRejected) even to a client that ignores the endpoint list; asked for,
    NoSecurity is offered with a warning."""
    station = opcua_station
    url = station.grid_meter.opcua_url
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    plant = _plant(station, start)
    with clock.participant():
        async with _terminal(station, plant, clock):
            endpoints = await Client(url).connect_and_get_server_endpoints()
            assert {e.SecurityMode for e in endpoints} == {ua.MessageSecurityMode.SignAndEncrypt}
            assert {e.SecurityPolicyUri for e in endpoints} == {p.URI for p in POLICIES.values()}

            insecure = _link(station, clock, security=OpcUaSecurity.insecure())
            with pytest.raises(
                ConnectionLost,
                match=r"refused an unencrypted session \(BadSecurityPolicyRejected\)",
            ):
                await _meter(station, insecure).read()
            await insecure.close()

            client = Client(url)
            await client.connect_socket()
            try:
                await client.send_hello()
                await client.open_secure_channel()
                params = ua.CreateSessionParameters(
                    ClientDescription=ua.ApplicationDescription(
                        ApplicationUri="urn:intruder", ApplicationType=ua.ApplicationType.Client
                    ),
                    EndpointUrl=url,
                    SessionName="unencrypted",
                    ClientNonce=os.urandom(32),
                    RequestedSessionTimeout=10_000,
                )
                with pytest.raises(ua.uaerrors.BadSecurityPolicyRejected):
                    await client.uaclient.create_session(params)
            finally:
                client.disconnect_socket()

        caplog.set_level(logging.WARNING, logger="simulator.opcua")
        async with _terminal(station, plant, clock, allow_insecure=True):
            assert "UNENCRYPTED endpoint" in caplog.text
            endpoints = await Client(url).connect_and_get_server_endpoints()
            assert ua.MessageSecurityMode.None_ in {e.SecurityMode for e in endpoints}
            insecure = _link(station, clock, security=OpcUaSecurity.insecure())
            try:
                assert (await _meter(station, insecure).read()).power_kw == plant.site_kw
                assert insecure.policy == "None"
            finally:
                await insecure.close()


# --------------------------------------------------------------------------- subscription and failures


async def test_reads_come_from_the_subscription_while_it_is_fresh(opcua_station: Station) -> None:
    """Healthy: no polls at all; a subscription silent for longer than the bound: one poll."""
    station = opcua_station
    async with _simulated(station) as (clock, sim):
        plant = sim.plant
        link = _link(station, clock)
        meter = _meter(station, link)
        try:
            first = await meter.read()
            assert first.power_kw == plant.site_kw
            assert (link.polls, link.subscription_reads) == (1, 0)
            assert link.subscribed
            await _eventually(lambda: link.fresh, "the subscription's first publish")
            assert link.notifications >= 14, "one initial value per variable"

            readings = [await meter.read() for _ in range(5)]
            assert (link.polls, link.subscription_reads) == (1, 5)
            assert all(r == first for r in readings)

            await clock.sleep(30)  # station time moves on; nothing published at its pace
            assert plant.site_kw != first.power_kw
            assert not link.fresh
            moved = await meter.read()
            assert (link.polls, link.subscription_reads) == (2, 5), "stale: polled"
            assert moved.power_kw == plant.site_kw

            await _eventually(lambda: link.fresh, "a publish after the clock moved")
            again = await meter.read()
            assert (link.polls, link.subscription_reads) == (2, 6)
            assert again.power_kw == plant.site_kw
            assert again.energy_import_kwh == plant.energy_import_kwh
        finally:
            await link.close()


async def test_polls_when_the_server_takes_no_subscription(
    opcua_station: Station, caplog: pytest.LogCaptureFixture
) -> None:
    """A server without the subscription services is polled, with one warning, not a flood."""
    station = opcua_station
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    plant = _plant(station, start)
    caplog.set_level(logging.WARNING, logger="drivers.opcua")
    with clock.participant():
        async with _terminal(station, plant, clock, subscriptions=False):
            link = _link(station, clock)
            meter = _meter(station, link)
            try:
                for step in range(1, 4):
                    plant.step(start + step, 1.0)
                    assert (await meter.read()).power_kw == plant.site_kw
                    assert (link.polls, link.subscription_reads) == (step, 0)
                assert not link.subscribed and link.connected
            finally:
                await link.close()
    warnings = [r.getMessage() for r in caplog.records if "takes no subscription" in r.getMessage()]
    assert len(warnings) == 1 and "BadUserAccessDenied" in warnings[0]


async def test_stopped_server_is_detected_and_the_next_call_reconnects(
    opcua_station: Station,
) -> None:
    """A server that goes away is noticed without a request, reported once, reconnected after."""
    station = opcua_station
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    plant = _plant(station, start)
    with clock.participant():
        link = _link(station, clock)
        meter = _meter(station, link)
        try:
            async with _terminal(station, plant, clock):
                await meter.read()
                await _eventually(lambda: link.fresh, "the subscription")
            await _eventually(lambda: not link.connected, "the lost transport to be noticed")

            with pytest.raises(ConnectionLost) as lost:
                await meter.read()
            assert str(lost.value).startswith(f"meter grid: connection to {link.address} lost")
            with pytest.raises(ConnectionLost, match="cannot connect to"):
                await meter.read()

            plant.step(start + 1, 1.0)
            async with _terminal(station, plant, clock):
                assert (await meter.read()).power_kw == plant.site_kw
                assert link.connected
                await _eventually(lambda: link.fresh, "the new session's subscription")
                assert (await meter.read()).power_kw == plant.site_kw
        finally:
            await link.close()


class _Relay:
    """A TCP relay in front of a server that can stop passing bytes: a hung server."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._pumps: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def close(self) -> None:
        for task in self._pumps:
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        self._writers += [writer, upstream_writer]
        for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._pumps.add(task)
            task.add_done_callback(self._pumps.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                await self.flowing.wait()
                sink.write(data)
                await sink.drain()
        sink.close()


async def test_hung_server_times_out_and_recovers(opcua_station: Station) -> None:
    """A server that stops answering: a stale subscription, a poll that times out, then back."""
    station = opcua_station
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    plant = _plant(station, start)
    with clock.participant():
        async with _terminal(station, plant, clock):
            relay = _Relay(station.grid_meter.port)
            port = await relay.start()
            # Keep-alives every 30 s: the poll's 0.5 s timeout, not asyncua's probe, sees the hang.
            link = _link(
                station,
                clock,
                url=f"opc.tcp://127.0.0.1:{port}{station.grid_meter.path}",
                timeout_s=0.5,
                connect_timeout_s=2.0,
                keepalive_s=30.0,
            )
            meter = _meter(station, link)
            try:
                await meter.read()
                await _eventually(lambda: link.fresh, "the subscription")
                relay.flowing.clear()
                await clock.sleep(100)  # longer than the 90 s bound without a publish
                with pytest.raises(DeviceTimeout, match=r"read: no answer from .* within 0.5 s"):
                    await meter.read()
                with pytest.raises(DeviceTimeout, match="while connecting"):
                    await meter.read()
                relay.flowing.set()
                assert (await meter.read()).power_kw == plant.site_kw
                assert link.connected
            finally:
                await link.close()
                await relay.close()


async def test_silent_port_and_closed_port_are_driver_errors(opcua_station: Station) -> None:
    """Nothing listening: ConnectionLost; a listener that never answers: DeviceTimeout."""
    station = opcua_station
    clock = VirtualClock(0.0)
    (closed_port,) = free_ports(1)
    link = _link(station, clock, url=f"opc.tcp://127.0.0.1:{closed_port}/flexcharge")
    with pytest.raises(
        ConnectionLost, match=f"cannot connect to opc.tcp://127.0.0.1:{closed_port}"
    ):
        await _meter(station, link).read()
    await link.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = _link(
        station,
        clock,
        url=f"opc.tcp://127.0.0.1:{port}/flexcharge",
        timeout_s=0.2,
        connect_timeout_s=0.5,
    )
    try:
        with pytest.raises(DeviceTimeout, match="while connecting"):
            await _meter(station, link).read()
    finally:
        await link.close()
        server.close()
        await server.wait_closed()


async def test_bad_input_is_refused_before_anything_is_sent(opcua_station: Station) -> None:
    """Unknown names, read-only names, 'unavailable' and out-of-range values name device and field."""
    station = opcua_station
    clock = VirtualClock(0.0)
    link = _link(station, clock, url="opc.tcp://127.0.0.1:9/flexcharge")
    device = OpcUaDevice("pile P01", link, station.map_for("flexcharge-dc-pile"), "P01")
    cases: list[tuple[dict[str, object], str]] = [
        ({"state": 2}, "pile P01: state: read-only"),
        ({"colour": 1}, "pile P01: colour: not in the flexcharge-dc-pile map"),
        ({"setpoint": None}, "pile P01: setpoint: cannot write 'unavailable'"),
        ({"comm_timeout": 70000}, "pile P01: comm_timeout: 70000 s is outside"),
        ({"setpoint": float("nan")}, "pile P01: setpoint: not a finite number"),
        ({"mode": "charge"}, "pile P01: mode: expected a number"),
    ]
    for values, message in cases:
        with pytest.raises(BadValue) as refused:
            await device.write(values)  # type: ignore[arg-type]
        assert str(refused.value).startswith(message)
    with pytest.raises(BadValue, match="pile P01: colour: not in"):
        await device.read(["colour"])
    assert link.polls == 0 and not link.connected
    with pytest.raises(ValueError, match="password is never sent over an unencrypted link"):
        OpcUaSecurity(encrypt=False, user=USER, password=PASSWORD)
    with pytest.raises(ValueError, match="unknown security policies"):
        _security(station, policies=("Basic128Rsa15",))
    assert PASSWORD not in repr(_security(station))
    with pytest.raises(ValueError, match="not an OPC-UA endpoint URL"):
        OpcUaLink("http://x", OpcUaSecurity.insecure(), now=clock.now)
