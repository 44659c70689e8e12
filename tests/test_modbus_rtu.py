"""Modbus RTU end to end: the simulator serves a meter and a pile on one serial line (one end of a
socat pseudo-terminal pair) and the daemon's drivers read and write them from the other end, in
real RTU frames with their CRC; the same devices behind an RTU-over-TCP gateway; and the station
file's checks of the new protocols.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from base.clock import VirtualClock
from base.config import Station, load_station
from base.events import DeviceRef
from base.loading import ConfigError
from controller.devices import StationLinks
from drivers.codec import from_project_units
from drivers.errors import DeviceTimeout, DriverError
from drivers.modbus import ModbusDevice
from simulator.faults import Fault, FaultKind, FaultScript
from simulator.hardware import StationSimulator
from simulator.rtu_server import request_frames, with_crc
from simulator.serial_pair import on_serial_ports, pseudo_terminal_pair
from tests.conftest import (
    free_ports,
    need_system_program,
    start_process,
    station_files_on_free_ports,
)

METER = "eastron-sdm630"
PILE = "P01"

GRID_METER = """[grid_meter]
id = "grid"
device = "janitza-umg96rm-e"
host = "127.0.0.1"
"""


def _station(tmp_path: Path, meter: str, pile: str) -> Path:
    """The reference station with its grid meter (an Eastron SDM630) and pile P01 at `meter`
    and `pile` (TOML lines), the other piles on TCP as before."""
    path = station_files_on_free_ports(tmp_path)
    text = path.read_text()
    start = text.index(GRID_METER)
    end = text.index("\n\n", start)
    text = text[:start] + f'[grid_meter]\nid = "grid"\ndevice = "{METER}"\n{meter}' + text[end:]
    old = f'id = "{PILE}"\nport = '
    at = text.index(old)
    line_end = text.index("\n", at + len(old))
    text = text[:at] + f'id = "{PILE}"\n{pile}' + text[line_end:]
    path.write_text(text)
    return path


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals made by socat: (simulator's end, daemon's end)."""
    need_system_program("socat", "the pseudo-terminal pair of a serial line")
    with pseudo_terminal_pair(tmp_path) as pair:
        yield pair.simulator_end, pair.daemon_end


async def _exercise(station: Station, simulator_station: Station) -> None:
    """Read the meter and pile through the daemon's links, write the pile, ask an absent unit."""
    clock = VirtualClock(time.time())
    async with StationSimulator(simulator_station, clock) as sim:
        links = StationLinks(station, clock)
        # The test takes part in virtual time, so the plant does not step while it reads.
        with clock.participant():
            try:
                await _check(station, sim, links)
            finally:
                await links.close()


async def _check(station: Station, sim: StationSimulator, links: StationLinks) -> None:
    """Readings equal the models' values, a write arrives, an absent unit times out."""
    meter = station.grid_meter
    meter_device = links.device(station, meter, DeviceRef.meter(meter.id))
    pile_device = links.device(station, station.pile(PILE), DeviceRef.pile(PILE))
    assert isinstance(meter_device, ModbusDevice)
    assert isinstance(pile_device, ModbusDevice)
    # One line (or one gateway connection) for both: a bus.
    assert meter_device.link is pile_device.link

    names = ["power", "voltage_l1", "current_l2", "energy_import"]
    read = await meter_device.read(names)
    want = sim.models[meter.id].values()
    for name in names:
        expected = want[name]
        assert isinstance(expected, float)
        wire = from_project_units(meter_device.map[name], expected)
        assert read[name] == pytest.approx(wire, rel=1e-6, abs=1e-3), name

    await pile_device.write({"setpoint": 150.0})
    assert sim.models[PILE].values()["setpoint"] == pytest.approx(150.0)
    back = await pile_device.read(["setpoint"])
    assert back["setpoint"] == pytest.approx(150.0)

    # Nobody answers unit 9: a clean timeout, and the bus still works afterwards.
    absent = ModbusDevice("meter ghost", meter_device.link, meter_device.map, 9)
    with pytest.raises(DeviceTimeout) as info:
        await absent.read(["power"])
    assert isinstance(info.value, DriverError)
    assert "unit 9" in str(info.value)
    again = await meter_device.read(["power"])
    assert again["power"] == pytest.approx(read["power"], rel=1e-6, abs=1e-3)


@pytest.mark.asyncio
async def test_meter_and_pile_on_one_serial_line(tmp_path: Path, pty_pair: tuple[str, str]) -> None:
    """Over a pseudo-terminal pair: readings equal the model's, a write arrives, an absent unit
    times out as a DriverError."""
    sim_end, daemon_end = pty_pair
    # Parity stays N: this kernel's pseudo-terminals refuse to set parity bits (EINVAL).
    line = 'protocol = "modbus-rtu"\nbaudrate = 19200\nparity = "N"\nserial_port = "{port}"\n'
    path = _station(
        tmp_path,
        line.format(port=daemon_end) + "unit = 1\n",
        line.format(port=daemon_end) + "unit = 2",
    )
    station = load_station(path)
    assert station.grid_meter.serial and station.pile(PILE).baudrate == 19200
    # The simulator opens the other end of the pair.
    await _exercise(station, on_serial_ports(station, {daemon_end: sim_end}))


@pytest.mark.asyncio
async def test_meter_and_pile_behind_an_rtu_over_tcp_gateway(tmp_path: Path) -> None:
    """RTU frames over one TCP connection to a gateway: the same readings, write and timeout."""
    (port,) = free_ports(1)
    gateway = f'protocol = "modbus-rtu-over-tcp"\nhost = "127.0.0.1"\nport = {port}\n'
    path = _station(tmp_path, gateway + "unit = 1\n", gateway + "unit = 2")
    station = load_station(path)
    await _exercise(station, station)


def test_rtu_request_frames_are_cut_by_function_code_and_checked_by_crc() -> None:
    """Two requests back to back are two frames; half a frame waits; a bad CRC is dropped."""
    read = with_crc(bytes((1, 3, 0, 0, 0, 2)))
    write = with_crc(bytes((2, 16, 0, 10, 0, 1, 2, 0x12, 0x34)))
    used, frames = request_frames(read + write + read[:3])
    assert used == len(read) + len(write)
    assert frames == [(1, read[1:-2]), (2, write[1:-2])]
    garbled = read[:-1] + bytes((read[-1] ^ 0xFF,))
    assert request_frames(garbled) == (len(garbled), [])


def test_station_file_names_rtu_problems(tmp_path: Path) -> None:
    """A modbus-rtu device without serial_port, and a TCP one with serial settings, are named
    with their device and field; a TCP device still needs host and port."""
    path = _station(
        tmp_path, 'protocol = "modbus-rtu"\nunit = 1\n', "port = 15099\nbaudrate = 9600"
    )
    with pytest.raises(ConfigError) as info:
        load_station(path)
    found = {(p.device, p.field) for p in info.value.problems}
    assert ("meter grid", "serial_port") in found
    assert (f"pile {PILE}", "baudrate") in found
    path = _station(tmp_path / "again", 'host = "127.0.0.1"\n', "port = 15099")
    with pytest.raises(ConfigError) as info:
        load_station(path)
    problems = [(p.device, p.field, p.message) for p in info.value.problems]
    assert ("meter grid", "grid_meter.port", "required, but missing") in problems


def test_devices_on_one_serial_port_must_share_its_line_settings(tmp_path: Path) -> None:
    """A pile at 9600 baud on the meter's 19200-baud line is named with its field; so is a
    second device with the line's unit id."""
    line = 'protocol = "modbus-rtu"\nserial_port = "/dev/ttyUSB0"\n'
    path = _station(
        tmp_path,
        f'{line}baudrate = 19200\nparity = "E"\n',
        f'{line}baudrate = 9600\nparity = "E"\nunit = 1',
    )
    with pytest.raises(ConfigError) as info:
        load_station(path)
    problems = {(p.device, p.field): p.message for p in info.value.problems}
    assert "differs from 19200 of meter grid" in problems[(f"pile {PILE}", "baudrate")]
    assert (f"pile {PILE}", "parity") not in problems
    assert "already used by meter grid" in problems[(f"pile {PILE}", "port")]


@pytest.mark.loopback
def test_a_demo_with_its_grid_meter_on_a_serial_line(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """`flexcharge demo` on a station whose grid meter hangs on /dev/ttyUSB0: the demo puts
    the simulator and the daemon at the two ends of a pseudo-terminal pair and controls the
    station through it, so the daemon's measured peak is the plant's."""
    need_system_program("socat", "the pseudo-terminal pair of a serial line")
    line = 'protocol = "modbus-rtu"\nserial_port = "/dev/ttyUSB0"\nbaudrate = 19200\nunit = 1\n'
    path = _station(tmp_path, line, "port = 15099")
    demo = start_process(
        ["demo", "--station", str(path), "--hours", "0.5", "--speed", "2000", "--duration", "60"],
        processes,
    )
    out, err = demo.communicate(timeout=180)
    assert demo.returncode == 0, out + err
    assert "over Modbus RTU and Modbus TCP" in out
    assert "serial line /dev/ttyUSB0" in out
    assert "time over the limit │ 0 s measured; true 0 s" in out
    assert "Traceback" not in out + err


@pytest.mark.asyncio
async def test_a_silent_device_on_a_bus_fails_alone(
    tmp_path: Path, pty_pair: tuple[str, str]
) -> None:
    """A fault script's silent meter on a serial line times out; the pile on the same line
    still answers."""
    sim_end, daemon_end = pty_pair
    line = f'protocol = "modbus-rtu"\nbaudrate = 19200\nserial_port = "{daemon_end}"\n'
    station = load_station(_station(tmp_path, line + "unit = 1\n", line + "unit = 2"))
    clock = VirtualClock(time.time())
    faults = FaultScript([Fault(FaultKind.SILENT, "grid", 0.0)])
    simulated = on_serial_ports(station, {daemon_end: sim_end})
    async with StationSimulator(simulated, clock, faults=faults):
        links = StationLinks(station, clock)
        with clock.participant():
            try:
                meter = links.device(station, station.grid_meter, DeviceRef.meter("grid"))
                pile = links.device(station, station.pile(PILE), DeviceRef.pile(PILE))
                with pytest.raises(DeviceTimeout):
                    await meter.read(["power"])
                await pile.write({"setpoint": 120.0})
                back = await pile.read(["setpoint"])
                assert back["setpoint"] == pytest.approx(120.0)
            finally:
                await links.close()
