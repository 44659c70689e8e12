"""The simulator's Modbus servers and the drivers, against each other on real loopback sockets.

Every register of the DC pile map and of the meter maps is read (and, where writable, written)
through the driver and compared with the plant model; the device rules real hardware enforces
(function codes, whole 32-bit writes, read-only registers, the fail-safe) are checked from a plain
pymodbus client's side.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import replace

import pytest
from pymodbus.client import AsyncModbusTcpClient

from base.clock import VirtualClock
from base.config import CONFIG_ROOT, Station
from base.devicemap import PileState
from base.mapfile import load_register_map
from control.follow import NOT_FOLLOWING, FollowWatch
from drivers.errors import ConnectionLost, DeviceRejected, DeviceTimeout
from drivers.meter import MapMeter
from drivers.modbus import ModbusDevice, ModbusLink
from drivers.pile import DcPile
from simulator.hardware import StationSimulator
from tests.conftest import free_ports, local_time, truck_visit

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]


def _pile_driver(
    station: Station, pile_id: str, link: ModbusLink, now: Callable[[], float] | None = None
) -> DcPile:
    config = station.pile(pile_id)
    device = ModbusDevice(f"pile {pile_id}", link, station.map_for(config.device), config.unit)
    return DcPile(pile_id, device, now)


async def _client(host: str, port: int) -> AsyncModbusTcpClient:
    client = AsyncModbusTcpClient(host, port=port, timeout=1, retries=0, reconnect_delay=0)
    assert await client.connect()
    return client


async def test_pile_map_read_through_the_driver_matches_the_plant(station: Station) -> None:
    """Every readable register of the DC pile map reads back what the plant model holds."""
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    with clock.participant():
        async with StationSimulator(
            station, clock, visits=[truck_visit(start, "P01", soc=0.2)]
        ) as sim:
            config = station.pile("P01")
            link = ModbusLink(config.host, config.port, timeout_s=1.0)
            pile = _pile_driver(station, "P01", link)
            try:
                await pile.arm_failsafe(30.0, 100.0)
                await pile.command(250.0)
                await clock.sleep(20)
                reading = await pile.read()
                model = sim.plant.piles["P01"]
                assert model.vehicle is not None
                assert reading.state is PileState.CHARGING
                assert reading.soc_pct == pytest.approx(model.vehicle.soc * 100, abs=0.06)
                assert reading.power_kw == pytest.approx(model.power_kw, abs=0.006)
                assert reading.power_kw == pytest.approx(250.0, abs=0.01)
                assert reading.applied_setpoint_kw == pytest.approx(250.0)
                assert reading.max_charge_kw == pytest.approx(480.0)
                assert reading.max_discharge_kw == 0.0
                assert reading.min_kw == pytest.approx(20.0)
                assert reading.ev_max_kw == pytest.approx(450.0)
                assert reading.ev_capacity_kwh == pytest.approx(500.0)
                assert reading.energy_import_kwh == pytest.approx(
                    model.energy_import_kwh, abs=0.051
                )
                assert reading.session_energy_kwh == pytest.approx(
                    model.session_energy_kwh, abs=0.006
                )
                assert reading.session_id == 1
                assert reading.fault_code == 0
                assert reading.fallback_countdown_s == pytest.approx(30.0 - 20.0, abs=1.0)
                raw = await pile.device.read(
                    ["setpoint", "mode", "heartbeat", "comm_timeout", "fallback_power"]
                )
                assert raw["setpoint"] == pytest.approx(250.0)
                assert raw["mode"] == 1
                assert raw["heartbeat"] == 0, "the pile clears the heartbeat the controller wrote"
                assert raw["comm_timeout"] == 30
                assert raw["fallback_power"] == pytest.approx(100.0)
                other = station.pile("P02")
                other_link = ModbusLink(other.host, other.port, timeout_s=1.0)
                try:
                    empty = await _pile_driver(station, "P02", other_link).read()
                finally:
                    other_link.close()
                assert empty.state is PileState.AVAILABLE
                assert empty.soc_pct is None and empty.ev_max_kw is None, (
                    "0xFFFF reads as unavailable"
                )
            finally:
                link.close()


async def test_pile_follows_its_setpoint_after_its_delay_at_its_ramp(station: Station) -> None:
    """The pile starts moving one delay after the write, then ramps at its rated speed."""
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    with clock.participant():
        async with StationSimulator(station, clock, visits=[truck_visit(start, "P01")]) as sim:
            config = station.pile("P01")
            link = ModbusLink(config.host, config.port, timeout_s=1.0)
            pile = _pile_driver(station, "P01", link)
            try:
                # Until a controller speaks the pile runs at its fallback, and goes on doing so
                # for its delay after the first write.
                await pile.command(0.0)
                await clock.sleep(5)
                assert (await pile.read()).power_kw == 0.0
                await pile.command(300.0)
                settings = sim.settings
                await clock.sleep(settings.pile_delay_s)
                assert (await pile.read()).power_kw == pytest.approx(0.0, abs=0.01)
                await clock.sleep(2)
                moved = (await pile.read()).power_kw
                assert 0 < moved <= 2 * settings.pile_ramp_kw_per_s + 0.01
                await clock.sleep(300 / settings.pile_ramp_kw_per_s + 1)
                assert (await pile.read()).power_kw == pytest.approx(300.0, abs=0.01)
            finally:
                link.close()


async def test_failsafe_fires_when_the_controller_falls_silent_and_not_before(
    station: Station,
) -> None:
    """Without writes for longer than the timeout the pile applies its fallback power."""
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    with clock.participant():
        async with StationSimulator(station, clock, visits=[truck_visit(start, "P03")]) as sim:
            config = station.pile("P03")
            link = ModbusLink(config.host, config.port, timeout_s=1.0)
            pile = _pile_driver(station, "P03", link)
            try:
                await pile.arm_failsafe(10.0, 60.0)
                for _ in range(5):  # a controller writing every 4 s keeps it armed
                    await pile.command(300.0)
                    await clock.sleep(4)
                    assert (await pile.read()).applied_setpoint_kw == pytest.approx(300.0)
                await clock.sleep(11)
                reading = await pile.read()
                assert reading.applied_setpoint_kw == pytest.approx(60.0)
                assert reading.fallback_countdown_s == 0
                await clock.sleep(10)
                assert sim.plant.piles["P03"].power_kw == pytest.approx(60.0)
                await pile.command(200.0)
                await clock.sleep(1 + sim.settings.pile_delay_s)
                assert (await pile.read()).applied_setpoint_kw == pytest.approx(200.0)
            finally:
                link.close()


async def test_device_rules_are_enforced_on_the_wire(station: Station) -> None:
    """Half a 32-bit value, FC6 on a 32-bit value, read-only writes, wrong FCs, bad values."""
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    with clock.participant():
        async with StationSimulator(station, clock, visits=[truck_visit(start, "P01")]) as sim:
            config = station.pile("P01")
            client = await _client(config.host, config.port)
            try:
                setpoint = station.map_for(config.device)["setpoint"]
                cases = [
                    (
                        "FC6 on the 32-bit setpoint",
                        client.write_register(setpoint.address, 5, device_id=1),
                        3,
                    ),
                    (
                        "FC16 of half the setpoint",
                        client.write_registers(setpoint.address + 1, [5], device_id=1),
                        3,
                    ),
                    (
                        "write to the read-only state",
                        client.write_registers(0, [1], device_id=1),
                        2,
                    ),
                    (
                        "FC4 on an FC3-only map",
                        client.read_input_registers(0, count=2, device_id=1),
                        1,
                    ),
                    (
                        "a setpoint above the rating",
                        client.write_registers(setpoint.address, [0, 60000], device_id=1),
                        3,
                    ),
                    (
                        "discharge mode on a charge-only pile",
                        client.write_registers(setpoint.address + 2, [2], device_id=1),
                        3,
                    ),
                    (
                        "an unknown unit id",
                        client.read_holding_registers(0, count=1, device_id=9),
                        11,
                    ),
                    (
                        "an address the map does not define",
                        client.read_holding_registers(50, count=1, device_id=1),
                        2,
                    ),
                ]
                for what, request, code in cases:
                    response = await request
                    assert response.isError(), what
                    assert response.exception_code == code, what
                model = sim.plant.piles["P01"]
                assert model.setpoint_kw == 0.0 and model.mode.value == "idle", (
                    "rejected writes change nothing"
                )
                ok = await client.write_registers(setpoint.address, [0, 12345, 1, 1], device_id=1)
                assert not ok.isError()
                assert model.setpoint_kw == pytest.approx(123.45)
            finally:
                client.close()


@pytest.mark.parametrize(
    "meter_map",
    ["janitza-umg96rm-e", "eastron-sdm630", "carlo-gavazzi-em24", "flexcharge-metering-terminal"],
)
async def test_meter_maps_read_through_the_driver(station: Station, meter_map: str) -> None:
    """Every meter map (FC3/FC4 Janitza in W/Wh, FC4 SDM630 in W/kWh, FC4 EM24 int32 low word
    first in 0.1 W / 0.1 kWh) reads the plant's site load."""
    regmap = load_register_map(CONFIG_ROOT / "devices" / f"{meter_map}.toml")
    station = replace(
        station,
        grid_meter=station.grid_meter.model_copy(update={"device": meter_map}),
        device_maps={**station.device_maps, meter_map: regmap},
    )
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    with clock.participant():
        async with StationSimulator(station, clock, visits=[]) as sim:
            gm = station.grid_meter
            link = ModbusLink(gm.host, gm.port, timeout_s=1.0)
            meter = MapMeter(gm.id, ModbusDevice("meter", link, regmap, gm.unit))
            client = await _client(gm.host, gm.port)
            try:
                await clock.sleep(3600)
                reading = await meter.read()
                plant = sim.plant
                assert reading.power_kw == pytest.approx(plant.site_kw, rel=1e-6)
                assert 1700 < reading.power_kw < 1900, "10:00-11:00 depot load"
                assert sum(p for p in reading.power_phases_kw if p is not None) == pytest.approx(
                    plant.site_kw, rel=1e-5
                )
                assert all(v is not None and 220 < v < 240 for v in reading.voltages_v)
                # EM24 counts in 0.1 kWh.
                assert reading.energy_import_kwh == pytest.approx(
                    plant.energy_import_kwh, rel=1e-6, abs=0.051
                )
                assert reading.energy_import_kwh == pytest.approx(1800, rel=0.05)
                # The read function code the map does not use for `power`: refused as a function
                # code the meter does not answer (01), or as an address of a table the meter
                # has but that holds no such register (02); Janitza reads both alike.
                fcs = regmap["power"].read_fcs
                address = regmap["power"].address
                for fc, read in (
                    (3, client.read_holding_registers),
                    (4, client.read_input_registers),
                ):
                    response = await read(address, count=2, device_id=gm.unit)
                    if fc in fcs:
                        assert not response.isError(), fc
                    else:
                        code = 1 if fc not in regmap.function_codes else 2
                        assert response.isError() and response.exception_code == code, fc
            finally:
                link.close()
                client.close()


async def test_driver_turns_failures_into_the_driver_error_tree(station: Station) -> None:
    """No server, a silent server and a refusing device each raise their own DriverError."""
    (closed_port,) = free_ports(1)
    link = ModbusLink("127.0.0.1", closed_port, timeout_s=0.3)
    pile = _pile_driver(station, "P01", link)
    with pytest.raises(ConnectionLost):
        await pile.read()
    link.close()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):  # swallow requests, never answer, until the client hangs up
            pass
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = ModbusLink("127.0.0.1", port, timeout_s=0.2)
    try:
        with pytest.raises(DeviceTimeout):
            await _pile_driver(station, "P01", link).read()
    finally:
        link.close()
        server.close()
        await server.wait_closed()

    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    with clock.participant():
        async with StationSimulator(station, clock, visits=[]):
            config = station.pile("P02")
            link = ModbusLink(config.host, config.port, timeout_s=1.0)
            try:
                with pytest.raises(DeviceRejected) as rejected:
                    await _pile_driver(station, "P02", link).command(-50.0)  # charge-only pile
                assert rejected.value.code == 3
                assert "pile P02" in str(rejected.value)
                assert not math.isnan(rejected.value.code)
            finally:
                link.close()


async def test_a_pile_that_does_not_follow_its_setpoint_is_reported(station: Station) -> None:
    """The driver reports what it commanded and since when beside the pile's read-back of what
    it applies, and never judges; the follow judge finds the pile at fault after its grace."""
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    judge = FollowWatch.of(station.control)
    config = station.pile("P04")
    with clock.participant():
        async with StationSimulator(station, clock, visits=[truck_visit(start, "P04")]) as sim:
            link = ModbusLink(config.host, config.port, timeout_s=1.0)
            pile = _pile_driver(station, "P04", link, clock.now)
            try:
                await pile.arm_failsafe(30.0, 100.0)
                await pile.command(300.0)
                await clock.sleep(judge.grace_s + 1)
                reading = await pile.read()
                assert (reading.commanded_kw, reading.commanded_since) == (300.0, start)
                assert reading.applied_setpoint_kw == pytest.approx(300.0)
                assert judge.judge(config, reading, clock.now()) == reading
                sim.plant.piles["P04"].delay_s = 1e9  # its electronics stop taking commands
                await pile.command(100.0)
                told_at = clock.now()
                await clock.sleep(2)
                reading = await pile.read()
                assert (reading.commanded_kw, reading.commanded_since) == (100.0, told_at)
                assert reading.applied_setpoint_kw == pytest.approx(300.0)
                assert reading.state is not PileState.FAULT and reading.fault == "", (
                    "the driver reports, it does not judge"
                )
                assert judge.misapplied(config, reading, clock.now()) == "", "within the grace"
                await pile.command(100.0)  # the same setpoint again: still told since then
                await clock.sleep(judge.grace_s - 1)
                reading = await pile.read()
                assert reading.commanded_since == told_at
                judged = judge.judge(config, reading, clock.now())
                assert judged.state is PileState.FAULT and judged.fault_code == NOT_FOLLOWING
                assert judged.fault == "applies 300.0 kW, told 100.0 kW"
            finally:
                link.close()
