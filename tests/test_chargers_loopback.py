"""AC chargers of three makes and Modbus/TCP Security, driver against simulator on loopback.

The mixed reference station (configs/stations/mixed-site.toml) serves an Alfen NG9xx, a Vestel
EVC04 and an ABB Terra AC exactly as their makers document them; here each is
driven through its make's driver over real sockets: every register read and compared with the
simulated charger, every writable register written, each fail-safe made to fire by a silent
controller and kept from firing by a running one, the makes' rules checked from a plain client's
side, and the TLS links refused to peers without the station's certificates.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient

from base import certs
from base.clock import VirtualClock
from base.config import CONFIG_ROOT, Station, load_station
from base.devicemap import PileState
from control.follow import NOT_FOLLOWING, FollowWatch
from drivers.acpile import AcPile
from drivers.charger import MapCharger
from drivers.codec import from_project_units
from drivers.errors import DeviceFault, DriverError
from drivers.makes import charger_class
from drivers.modbus import ModbusDevice, ModbusLink
from drivers.tls import client_context
from simulator.chargers import AcChargerModel, AlfenModel
from simulator.fleet import Visit
from simulator.hardware import StationSimulator
from tests.conftest import local_time, on_free_ports

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]

MIXED = CONFIG_ROOT / "stations" / "mixed-site.toml"
CHARGERS = {"alfen": "ALF1", "vestel": "VES1", "abb-terra-ac": "ABB1"}


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A station CA made for these tests."""
    directory = tmp_path_factory.mktemp("certs")
    certs.init(directory, station="test hub")
    return directory


@pytest.fixture
def mixed(certs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Station:
    """The mixed station on free ports, with the test CA and the terminal's password."""
    monkeypatch.setenv("FLEXCHARGE_OPCUA_PASSWORD", "correct horse battery staple")
    return on_free_ports(load_station(MIXED)).with_security(certs=str(certs_dir))


def _van(start: float, pile: str) -> Visit:
    return Visit(
        vehicle_id=f"van-{pile}",
        arrival=start,
        departure=start + 8 * 3600,
        energy_kwh=60.0,
        max_kw=22.0,
        capacity_kwh=90.0,
        soc_arrival=0.2,
        pile=pile,
    )


@dataclass
class Rig:
    """One charger of the mixed station: simulator, link, driver and the simulated model."""

    station: Station
    clock: VirtualClock
    sim: StationSimulator
    link: ModbusLink
    charger: MapCharger
    model: AcChargerModel

    @property
    def pile_id(self) -> str:
        return self.charger.id


@pytest_asyncio.fixture(params=sorted(CHARGERS))
async def rig(request: pytest.FixtureRequest, mixed: Station) -> AsyncIterator[Rig]:
    """A charger of each make with a van plugged in, its driver connected."""
    pile_id = CHARGERS[request.param]
    config = mixed.pile(pile_id)
    start = local_time(mixed, "2026-11-25T10:00")
    clock = VirtualClock(start)
    # The test's own task takes part in virtual time (`with rig.clock.participant()`): a
    # fixture's task is another one.
    async with StationSimulator(mixed, clock, visits=[_van(start, pile_id)]) as sim:
        link = ModbusLink(config.host, config.port, timeout_s=1.0)
        regmap = mixed.map_for(config.device)
        device = ModbusDevice(f"pile {pile_id}", link, regmap, config.unit)
        charger = charger_class(request.param)(pile_id, device, clock.now)
        model = sim.models[pile_id]
        assert isinstance(model, AcChargerModel)
        try:
            yield Rig(mixed, clock, sim, link, charger, model)
        finally:
            link.close()


async def test_every_register_of_each_charger_map_reads_what_the_charger_holds(rig: Rig) -> None:
    """Each readable register, decoded by the driver, equals the emulated charger's value."""
    with rig.clock.participant():
        await rig.charger.arm_failsafe(rig.station.pile(rig.pile_id).comm_timeout_s, 6.0)
        await rig.charger.set_current(12.0)
        await rig.clock.sleep(20)
        regmap = rig.charger.device.map
        raw = await rig.charger.device.read(regmap.readable())
        expected = rig.model.values()
        assert set(raw) == set(regmap.readable())
        for name, value in raw.items():
            reg = regmap[name]
            want = expected[name]
            if isinstance(want, (int, float)) and not isinstance(want, bool):
                want = from_project_units(reg, float(want))
                step = abs(reg.scale) if reg.type.is_integer else abs(want) * 1e-6
                assert isinstance(value, (int, float)), name
                assert value == pytest.approx(want, abs=step / 2 + 1e-9), name
            else:
                assert value == want, name

        if rig.pile_id == "ABB1":
            # C2 with bit 7 of the state byte set: 12 A is below the rated 32 A.
            assert raw["state"] == 0x84
        reading = await rig.charger.read()
        assert reading.state is PileState.CHARGING
        assert reading.power_kw == pytest.approx(12 * 3 * 230 / 1000, abs=0.01)
        assert reading.power_kw == pytest.approx(rig.model.pile.power_kw, abs=0.01)
        assert all(c == pytest.approx(12.0, abs=0.01) for c in reading.currents_a)
        assert all(v == pytest.approx(230.0, abs=0.1) for v in reading.voltages_v)
        # Nameplate currents: 22 kW three-phase is 32 A, 11 kW is 16 A.
        assert reading.max_current_a == pytest.approx(32.0 if rig.pile_id != "VES1" else 16.0)
        assert reading.min_current_a == pytest.approx(6.0)
        assert reading.setpoint_unused == ""
        assert reading.commanded_a == pytest.approx(12.0)
        assert reading.resolution_a == rig.charger.RESOLUTION_A
        if "applied_current" in regmap:
            assert reading.applied_current_a == pytest.approx(12.0)
        assert rig.model.pile.vehicle is not None
        session = rig.model.pile.session_energy_kwh
        if reading.session_energy_kwh is not None:
            assert reading.session_energy_kwh == pytest.approx(session, abs=0.001)
        if reading.energy_import_kwh is not None:
            assert reading.energy_import_kwh == pytest.approx(
                rig.model.pile.energy_import_kwh, abs=0.051
            )


async def test_every_writable_register_reaches_the_charger(rig: Rig) -> None:
    """Writes through the driver land in the emulated charger, in its units."""
    with rig.clock.participant():
        device = rig.charger.device
        pile = rig.model.pile
        if rig.pile_id == "ALF1":
            await device.write({"setpoint": 12.5, "phases": 3})
            await device.write({"scn_max_current_l1": 20.0, "scn_max_current_l2": 21.0})
            await device.write({"scn_max_current_l3": 22.0})
            assert isinstance(rig.model, AlfenModel)
            assert rig.model.setpoint_a == pytest.approx(12.5)
            assert rig.model.scn_max_a == [20.0, 21.0, 22.0]
            assert pile.setpoint_kw == pytest.approx(12.5 * 0.69)
        elif rig.pile_id == "VES1":
            await device.write({"comm_timeout": 25, "failsafe_current": 8})
            await device.write({"power_limit": 4600.0})
            await device.write({"setpoint": 10, "life_bit": 1})
            assert pile.comm_timeout_s == 25
            assert pile.fallback_kw == pytest.approx(8 * 0.69)
            assert pile.setpoint_kw == pytest.approx(6 * 0.69), (
                "4.6 kW power limit caps 10 A to 6 A"
            )
        else:
            await device.write({"comm_timeout": 45})
            await device.write({"setpoint": 13_250})  # mA
            assert pile.comm_timeout_s == 45
            assert pile.setpoint_kw == pytest.approx(13.25 * 0.69)
        assert rig.sim.banks[rig.pile_id].rejected_writes == 0


async def test_failsafe_fires_when_the_controller_falls_silent_and_not_while_it_runs(
    rig: Rig,
) -> None:
    """A driver called every 2 s keeps the charger on its setpoint for several timeouts, with
    few writes; once silent, the charger falls back to its fail-safe current."""
    with rig.clock.participant():
        config = rig.station.pile(rig.pile_id)
        timeout = config.comm_timeout_s
        fallback_a = config.fallback_kw / 0.69
        await rig.charger.arm_failsafe(timeout, fallback_a)
        timeout = rig.charger.timeout_s
        pile = rig.model.pile
        calls = 0
        for _ in range(int(3 * timeout / 2)):
            await rig.charger.set_current(14.0)
            calls += 1
            await rig.clock.sleep(2)
            assert not pile.timed_out(rig.clock.now()), (
                "the fail-safe fired while the controller ran"
            )
            assert pile.applied_kw == pytest.approx(14 * 0.69)
        # Written on change and then every 45% of the timeout: far fewer writes than calls.
        assert rig.charger.writes <= calls * 2 / (0.45 * timeout) + 2
        reading = await rig.charger.read()
        assert reading.setpoint_unused == ""

        await rig.clock.sleep(timeout + 3)
        assert pile.timed_out(rig.clock.now())
        fallback_kw = math.floor(fallback_a + 1e-9) * 0.69 if fallback_a >= 6 else 0.0
        if rig.pile_id == "ALF1":
            fallback_kw = config.fallback_kw  # the safe current set by the installer
        assert pile.applied_kw == pytest.approx(fallback_kw, abs=0.01)
        await rig.clock.sleep(10)
        assert pile.power_kw == pytest.approx(fallback_kw, abs=0.01)
        reading = await rig.charger.read()
        if rig.pile_id == "ALF1":
            assert reading.fallback_countdown_s == 0
            assert reading.applied_current_a == pytest.approx(config.fallback_kw / 0.69, abs=0.01)
            assert "does not use its Modbus setpoint" in reading.setpoint_unused
        # Back in control: the next call writes at once and the charger follows.
        await rig.charger.set_current(14.0)
        await rig.clock.sleep(5)
        assert pile.applied_kw == pytest.approx(14 * 0.69)


async def test_chargers_never_get_a_current_between_zero_and_their_minimum(rig: Rig) -> None:
    """Wishes below 6 A pause; currents are floored to what the make can express."""
    with rig.clock.participant():
        pile = rig.model.pile
        await rig.charger.set_current(5.9)
        await rig.clock.sleep(5)
        assert rig.charger.written_a == 0.0
        assert pile.applied_kw == 0.0 and pile.power_kw == 0.0
        await rig.charger.set_current(10.97)
        expected = 10.0 if rig.pile_id == "VES1" else 10.9
        assert rig.charger.written_a == pytest.approx(expected)
        await rig.clock.sleep(5)
        assert pile.applied_kw == pytest.approx(expected * 0.69)


async def test_a_charger_that_lost_its_setpoint_is_reported_and_rewritten(mixed: Station) -> None:
    """An Alfen reboots (its Modbus setpoint is lost): the reading says so, the follow judge
    finds it at fault, the next call rewrites the setpoint without waiting for the keep-alive,
    and the fault clears."""
    start = local_time(mixed, "2026-11-25T10:00")
    clock = VirtualClock(start)
    config = mixed.pile("ALF2")
    judge = FollowWatch.of(mixed.control)
    with clock.participant():
        async with StationSimulator(mixed, clock, visits=[_van(start, "ALF2")]) as sim:
            link = ModbusLink(config.host, config.port, timeout_s=1.0)
            device = ModbusDevice("pile ALF2", link, mixed.map_for(config.device), config.unit)
            charger = charger_class("alfen")("ALF2", device, clock.now)
            pile = AcPile(config, charger)
            model = sim.models["ALF2"]
            assert isinstance(model, AlfenModel)
            try:
                await pile.command(15.0)
                await clock.sleep(judge.grace_s + 1)
                reading = await pile.read()
                assert reading.commanded_since == start and reading.setpoint_unused == ""
                assert judge.misapplied(config, reading, clock.now()) == ""
                model.reboot()
                await clock.sleep(1)
                reading = await pile.read()
                assert "does not use its Modbus setpoint" in reading.setpoint_unused
                assert reading.state is not PileState.FAULT, "the driver does not judge"
                judged = judge.judge(config, reading, clock.now())
                assert judged.state is PileState.FAULT and judged.fault_code == NOT_FOLLOWING
                assert "does not use its Modbus setpoint" in judged.fault
                writes = charger.writes
                await pile.command(15.0)
                assert charger.writes == writes + 1, "rewritten at once"
                await clock.sleep(6)
                reading = await pile.read()
                judged = judge.judge(config, reading, clock.now())
                assert judged.fault == "" and judged.state is PileState.CHARGING
                assert model.setpoint_a == pytest.approx(15.0 / 0.69, abs=0.1)
            finally:
                link.close()


async def test_alfen_refuses_a_safe_current_above_the_station_fallback(mixed: Station) -> None:
    """The installer's safe current is checked against what the station's fail-safe allows."""
    start = local_time(mixed, "2026-11-25T10:00")
    clock = VirtualClock(start)
    config = mixed.pile("ALF1")
    with clock.participant():
        async with StationSimulator(mixed, clock, visits=[]) as sim:
            link = ModbusLink(config.host, config.port, timeout_s=1.0)
            device = ModbusDevice("pile ALF1", link, mixed.map_for(config.device), config.unit)
            pile = AcPile(config, charger_class("alfen")("ALF1", device, clock.now))
            model = sim.models["ALF1"]
            assert isinstance(model, AlfenModel)
            try:
                await pile.arm_failsafe(60.0, config.fallback_kw)
                model.safe_current_a = 16.0
                with pytest.raises(DeviceFault, match="safe current 16 A"):
                    await pile.arm_failsafe(60.0, config.fallback_kw)
            finally:
                link.close()


async def test_make_rules_are_enforced_on_the_wire(mixed: Station) -> None:
    """Function codes, whole 32-bit writes, write-only registers, at most two Alfen masters and
    its idle timeout, from a plain pymodbus client's side."""
    start = local_time(mixed, "2026-11-25T10:00")
    clock = VirtualClock(start)
    with clock.participant():
        async with StationSimulator(mixed, clock, visits=[]) as sim:
            alfen, vestel, abb = (mixed.pile(p) for p in ("ALF1", "VES1", "ABB1"))
            clients: list[AsyncModbusTcpClient] = []

            async def client(port: int) -> AsyncModbusTcpClient:
                c = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
                clients.append(c)
                await c.connect()
                return c

            try:
                a = await client(alfen.port)
                cases = [
                    ("Alfen: FC4", a.read_input_registers(1210, count=2, device_id=1), 1),
                    ("Alfen: FC6 on the f32 setpoint", a.write_register(1210, 0, device_id=1), 3),
                    ("Alfen: half the setpoint", a.write_registers(1211, [0], device_id=1), 3),
                    ("Alfen: 2 phases", a.write_register(1215, 2, device_id=1), 3),
                ]
                v = await client(vestel.port)
                cases += [
                    (
                        "Vestel: read the write-only life bit",
                        v.read_holding_registers(6000, count=1, device_id=255),
                        2,
                    ),
                    ("Vestel: life bit 2", v.write_register(6000, 2, device_id=255), 3),
                    (
                        "Vestel: 17 A on a 16 A charger",
                        v.write_register(5004, 17, device_id=255),
                        3,
                    ),
                ]
                b = await client(abb.port)
                cases += [
                    ("ABB: FC6 on the 32-bit limit", b.write_register(0x4100, 0, device_id=1), 3),
                    (
                        "ABB: above the rating",
                        b.write_registers(0x4100, [0, 40_000], device_id=1),
                        3,
                    ),
                    ("ABB: FC4", b.read_input_registers(0x4006, count=2, device_id=1), 1),
                ]
                for what, request, code in cases:
                    response = await request
                    assert response.isError(), what
                    assert response.exception_code == code, what
                # Vestel answers FC3 and FC4 alike.
                fc3 = await v.read_holding_registers(1100, count=1, device_id=255)
                fc4 = await v.read_input_registers(1100, count=1, device_id=255)
                assert fc3.registers == fc4.registers == [16]
                # Nameplate currents are taken, and Vestel's read back with FC3 (as evcc does).
                for what, request in [
                    ("Alfen 32 A", a.write_registers(1210, [0x4200, 0], device_id=1)),
                    ("Vestel 16 A", v.write_register(5004, 16, device_id=255)),
                    ("ABB 32,000 mA", b.write_registers(0x4100, [0, 32_000], device_id=1)),
                ]:
                    assert not (await request).isError(), what
                back = await v.read_holding_registers(5004, count=1, device_id=255)
                assert back.registers == [16]

                # A third master is turned away; the first two keep working.
                a2 = await client(alfen.port)
                a3 = await client(alfen.port)
                await clock.sleep(1)
                assert not (await a2.read_holding_registers(1200, count=1, device_id=1)).isError()
                with pytest.raises(Exception):  # noqa: B017 - any failure: the socket is closed
                    result = await a3.read_holding_registers(1200, count=1, device_id=1)
                    assert not result.isError()
                alfen_server = next(s for s in sim._servers if "ALF1" in s.name)
                assert alfen_server.refused == 1

                # Idle for over 60 s: the charger hangs up; the driver reconnects unnoticed.
                link = ModbusLink(alfen.host, alfen.port, timeout_s=1.0)
                device = ModbusDevice("pile ALF1", link, mixed.map_for(alfen.device), 1)
                try:
                    for c in clients:
                        c.close()
                    await clock.sleep(1)
                    assert (await device.read(["availability"]))["availability"] == 1
                    await clock.sleep(63)
                    assert alfen_server.closed_idle >= 1
                    assert (await device.read(["availability"]))["availability"] == 1
                finally:
                    link.close()
            finally:
                for c in clients:
                    c.close()


async def test_modbus_tls_refuses_peers_without_the_station_certificates(
    mixed: Station, certs_dir: Path, tmp_path: Path
) -> None:
    """The grid meter and two DC piles are on Modbus/TCP Security: the daemon's certificate is
    let in, an intruder's self-signed one is not, and a client that trusts another CA refuses
    the simulator."""
    start = local_time(mixed, "2026-11-25T10:00")
    clock = VirtualClock(start)
    meter = mixed.grid_meter
    daemon = certs.identity(certs_dir, "daemon")
    intruder = certs.self_signed(tmp_path, name="intruder", application_uri="urn:intruder")
    with clock.participant():
        async with StationSimulator(mixed, clock, visits=[]) as sim:
            regmap = mixed.map_for(meter.device)

            async def read_with(ident: certs.Identity, ca: Path) -> float:
                ctx = client_context(ident.cert_pem, ident.key_pem, ca, device="meter")
                link = ModbusLink(meter.host, meter.port, timeout_s=1.0, sslctx=ctx)
                try:
                    raw = await ModbusDevice("meter grid", link, regmap, meter.unit).read(["power"])
                finally:
                    link.close()
                value = raw["power"]
                assert isinstance(value, (int, float))
                return float(value)

            power_w = await read_with(daemon, daemon.ca_pem)
            assert power_w / 1000 == pytest.approx(sim.plant.site_kw, abs=0.001)
            with pytest.raises(DriverError):
                await read_with(intruder, daemon.ca_pem)
            with pytest.raises(DriverError):
                await read_with(daemon, intruder.cert_pem)
            plain = ModbusLink(meter.host, meter.port, timeout_s=0.5)
            try:
                with pytest.raises(DriverError):
                    await ModbusDevice("meter grid", plain, regmap, meter.unit).read(["power"])
            finally:
                plain.close()
