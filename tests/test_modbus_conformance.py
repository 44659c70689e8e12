"""Every simulated Modbus device, driven by a second, independent Modbus client.

The client is libmodbus' `mbpoll` (Debian's package, installed by `make system-deps`), not
pymodbus: it reads every register of every map with each function code the map allows and
checks the words against the simulated device's values, decoded here with `struct` alone; reads
every run of adjacent registers in one request; writes every writable register and checks that
the device took the value; and sends the requests a device must refuse, checking the exception
code libmodbus reports. Requests no client library sends (function codes 0x00, 0x41, 0x7F, 8,
17, 43; quantities 0 and 126; truncated and split frames; a foreign protocol id) are built by
hand and sent over a plain socket, in a test of their own that needs no mbpoll. Each make's
counts are printed (`pytest -s`).

The Modbus application protocol (V1.1b3) is the reference for the exception codes: 01 a function
code the device does not answer, 02 an address it does not have, 03 a quantity out of range, a
request of the wrong length or a value the device refuses, 0x0B from the gateway in front of an
absent unit; every exception response carries the request's function code with bit 7 set.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import struct
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from base import certs
from base.clock import VirtualClock
from base.config import CONFIG_ROOT, Station, load_station
from base.devicemap import UNIT_SCALE, Register, RegisterMap, Value, ValueType
from base.mapfile import load_register_map
from base.stationdevices import DeviceEndpoint
from simulator.chargers import AbbTerraModel, VestelModel
from simulator.fleet import Visit
from simulator.hardware import StationSimulator
from tests.conftest import local_time, need_system_program, on_free_ports
from tests.test_registers import FMT

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]

MIXED = CONFIG_ROOT / "stations" / "mixed-site.toml"
REFERENCE = CONFIG_ROOT / "stations" / "bozhou-depot.toml"
ABSENT_UNIT = 77
FREE_ADDRESS = 60000  # no map has a register there

# Each make: the station that has one and the device; "meter": the reference station's grid
# meter, given the make's map.
MAKES = {
    "alfen-ng9xx": (MIXED, "ALF1"),
    "vestel-evc04": (MIXED, "VES1"),
    "abb-terra-ac": (MIXED, "ABB1"),
    "flexcharge-dc-pile": (REFERENCE, "P01"),
    "janitza-umg96rm-e": (REFERENCE, "meter"),
    "eastron-sdm630": (REFERENCE, "meter"),
    "carlo-gavazzi-em24": (REFERENCE, "meter"),
    "flexcharge-metering-terminal": (REFERENCE, "meter"),
}

# A value each writable register takes, in the register's unit (mbpoll writes value / scale).
WRITES: dict[str, dict[str, float]] = {
    "alfen-ng9xx": {
        "setpoint": 32.0,  # the nameplate current of a 22 kW charger
        "scn_max_current_l1": 20.0,
        "scn_max_current_l2": 21.0,
        "scn_max_current_l3": 22.0,
        "phases": 3,
    },
    "vestel-evc04": {
        "failsafe_current": 8,
        "comm_timeout": 30,
        "power_limit": 11040,
        "setpoint": 16,  # the nameplate current of an 11 kW charger
        "life_bit": 1,
    },
    "abb-terra-ac": {"setpoint": 32_000, "comm_timeout": 45},
    "flexcharge-dc-pile": {
        "comm_timeout": 30,
        "fallback_power": 50.0,
        "setpoint": 120.0,
        "mode": 1,
        "heartbeat": 1,
    },
}
# Values each make refuses (03), in the register's unit.
REFUSED: dict[str, list[tuple[str, float]]] = {
    "alfen-ng9xx": [("setpoint", 33.0), ("phases", 2)],
    "vestel-evc04": [("setpoint", 17), ("life_bit", 2), ("failsafe_current", 3)],
    "abb-terra-ac": [("setpoint", 40_000), ("comm_timeout", 0)],
    "flexcharge-dc-pile": [("mode", 7), ("comm_timeout", 0), ("setpoint", 999.99)],
}
# Registers a write changes no value of that reads back: what shows the device took it.
WRITTEN: dict[tuple[str, str], Callable[[object, float], bool]] = {
    ("vestel-evc04", "power_limit"): lambda model, w: (
        isinstance(model, VestelModel) and model.power_limit_kw == pytest.approx(w / 1000)
    ),
    ("vestel-evc04", "life_bit"): lambda model, _w: isinstance(model, VestelModel),
    ("abb-terra-ac", "setpoint"): lambda model, w: (
        isinstance(model, AbbTerraModel) and model.limit_a == pytest.approx(w / 1000)
    ),
    ("abb-terra-ac", "comm_timeout"): lambda model, w: (
        isinstance(model, AbbTerraModel) and model.pile.comm_timeout_s == w
    ),
    # The pile clears its heartbeat as soon as it has seen it.
    ("flexcharge-dc-pile", "heartbeat"): lambda _model, _w: True,
}
# Registers that say "no value" (NaN) when the device has none to give.
UNAVAILABLE = {("flexcharge-metering-terminal", "utility_limit")}
LIBMODBUS_CODES = {
    "Illegal function": 1,
    "Illegal data address": 2,
    "Illegal data value": 3,
    "Gateway path unavailable": 10,
    "Target device failed to respond": 11,
}


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A station CA for the mixed station's TLS devices (which this test does not read)."""
    directory = tmp_path_factory.mktemp("certs")
    certs.init(directory, station="conformance")
    return directory


def _station(make: str, certs_dir: Path) -> tuple[Station, DeviceEndpoint]:
    path, device = MAKES[make]
    station = on_free_ports(load_station(path))
    if path == MIXED:
        station = station.with_security(certs=str(certs_dir))
    if device != "meter":
        return station, station.pile(device)
    regmap = load_register_map(CONFIG_ROOT / "devices" / f"{make}.toml")
    meter = station.grid_meter.model_copy(update={"device": make})
    station = replace(station, grid_meter=meter, device_maps={**station.device_maps, make: regmap})
    return station, meter


@dataclass
class Mbpoll:
    """libmodbus' command-line master, one request a run."""

    program: str
    host: str
    port: int

    async def run(self, unit: int, *args: str) -> tuple[int, str, str]:
        """Exit status, standard output and error of one request to `unit`.

        The end of the process is awaited on a pidfd rather than with asyncio's subprocesses,
        whose child watcher leaves a thread behind for a moment after each one."""
        command = [self.program, "-m", "tcp", "-p", str(self.port), "-a", str(unit)]
        command += ["-0", "-1", "-o", "5", *args]
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            # Popen only spawns; the wait is on the pidfd below.
            proc = subprocess.Popen(command, stdout=out, stderr=err)  # noqa: ASYNC220
            pidfd = os.pidfd_open(proc.pid)
            ended = loop.create_future()
            loop.add_reader(pidfd, lambda: ended.done() or ended.set_result(None))
            try:
                await ended
            finally:
                loop.remove_reader(pidfd)
                os.close(pidfd)
            status = proc.wait()
            out.seek(0)
            err.seek(0)
            return status, out.read().decode(), err.read().decode()

    async def read(self, unit: int, fc: int, address: int, count: int) -> list[int] | int:
        """The words of one read (FC3 or FC4), or the exception code libmodbus reports."""
        table = {3: "4:hex", 4: "3:hex"}[fc]
        rc, out, err = await self.run(
            unit, "-t", table, "-r", str(address), "-c", str(count), self.host
        )
        if rc:
            return self.code(err)
        words = [int(w, 16) for w in re.findall(r"^\[\d+\]:\s+0x([0-9A-F]{4})$", out, re.M)]
        assert len(words) == count, out
        return words

    async def write(self, unit: int, reg: Register, value: float) -> int:
        """Write one register's value in its own units (FC6 for one word, FC16 for two); the
        exception code libmodbus reports, or 0."""
        kind = {ValueType.F32: "4:float", ValueType.I32: "4:int", ValueType.U32: "4:int"}
        order = ["-B"] if reg.word_order == "big" else []
        text = wire_text(reg, value)
        if reg.type.words == 1:
            args = ["-t", "4", "-r", str(reg.address), self.host, text]
        else:
            args = [*order, "-t", kind[reg.type], "-r", str(reg.address), self.host, text]
        rc, out, err = await self.run(unit, *args)
        if rc:
            return self.code(err)
        assert "Written 1 references" in out, out
        return 0

    async def refused(self, unit: int, *args: str) -> int:
        """The exception code of a request that must fail."""
        # Values to write come after the host, options before it.
        cut = args.index("--") if "--" in args else len(args)
        rc, _out, err = await self.run(unit, *args[:cut], self.host, *args[cut:])
        assert rc != 0, f"{args} was answered"
        return self.code(err)

    @staticmethod
    def code(err: str) -> int:
        """The exception code in libmodbus' message."""
        match = re.search(r"failed: (.+)$", err.strip(), re.M)
        assert match is not None, err
        assert match.group(1) in LIBMODBUS_CODES, err
        return LIBMODBUS_CODES[match.group(1)]


def wire_text(reg: Register, value: float) -> str:
    """A value in the register's unit as mbpoll takes it: the number the register holds."""
    raw = value / reg.scale
    return f"{raw:g}" if reg.type.is_float else str(round(raw))


def decoded(reg: Register, words: list[int]) -> Value | None:
    """A register's value from its words, by `struct` alone (None: unavailable)."""
    ordered = list(reversed(words)) if reg.word_order == "little" else words
    data = b"".join(w.to_bytes(2, "big") for w in ordered)
    if reg.type is ValueType.STRING:
        text = data.decode("utf-16-be" if reg.text_encoding == "utf-16" else "utf-8")
        return text.rstrip("\x00 ")
    if reg.unavailable_all_ones and data == b"\xff" * len(data):
        return None
    raw = struct.unpack(FMT[reg.type], data)[0]
    if isinstance(raw, float):
        return None if math.isnan(raw) else raw * reg.scale
    if reg.mask is not None:
        raw = (raw & reg.mask) >> ((reg.mask & -reg.mask).bit_length() - 1)
    return raw * reg.scale


def expected(reg: Register, value: Value | None) -> Value | None:
    """A model's value (project units) in the register's units."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) / UNIT_SCALE[reg.unit][1]
    return value


def same(reg: Register, got: Value | None, want: Value | None) -> bool:
    """Whether a value read equals the model's, to the register's resolution."""
    if not isinstance(want, (int, float)) or not isinstance(got, (int, float)):
        return got == want
    if reg.type.is_float:
        return got == pytest.approx(want, rel=1e-6, abs=1e-9)
    return got == pytest.approx(want, abs=abs(reg.scale) / 2 + 1e-9)


def runs(regmap: RegisterMap, unit_id: int) -> list[tuple[int, int, list[Register]]]:
    """Each run of adjacent readable registers (unit, function code, registers), at most 125
    words: what a client may read in one request."""
    found = []
    for fc in sorted(regmap.function_codes & {3, 4}):
        by_unit: dict[int, list[Register]] = {}
        for reg in sorted(regmap.registers.values(), key=lambda r: r.address):
            if reg.access.readable and fc in reg.read_fcs:
                by_unit.setdefault(regmap.unit_of(reg, unit_id), []).append(reg)
        for unit, regs in by_unit.items():
            run: list[Register] = []
            for reg in regs:
                if run and (reg.address != run[-1].end or reg.end - run[0].address > 125):
                    found.append((unit, fc, run))
                    run = []
                run.append(reg)
            if len(run) > 1:
                found.append((unit, fc, run))
    return [r for r in found if len(r[2]) > 1]


async def exchange(host: str, port: int, *frames: bytes, split: int = 0) -> list[bytes] | None:
    """Send hand-built frames over one connection; the responses, in order, to a final FC3/FC4
    marker request (transaction id 0xFFFF) that tells when everything before it is answered
    (None: the device closed the connection instead). `split`: send the first frame's first
    bytes alone, then the rest."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        data = b"".join(frames)
        if split:
            writer.write(data[:split])
            await writer.drain()
            for _ in range(3):  # let the server's loop take the first piece on its own
                await asyncio.sleep(0)
            data = data[split:]
        writer.write(data)
        await writer.drain()
        answers = []
        while True:
            try:
                header = await reader.readexactly(7)
            except asyncio.IncompleteReadError as exc:
                assert not exc.partial, "the connection closed in the middle of a response"
                return None
            tid, _pid, length, _unit = struct.unpack(">HHHB", header)
            pdu = await reader.readexactly(length - 1)
            if tid == 0xFFFF:
                return answers
            answers.append(header[:2] + pdu)
    finally:
        writer.close()
        await writer.wait_closed()


def mbap(tid: int, unit: int, pdu: bytes, protocol: int = 0) -> bytes:
    """One Modbus/TCP frame."""
    return struct.pack(">HHHB", tid, protocol, len(pdu) + 1, unit) + pdu


def _visits(station: Station, device: DeviceEndpoint, start: float) -> list[Visit]:
    if device.id not in {p.id for p in station.piles}:
        return []
    pile = station.pile(device.id)
    return [
        Visit(
            vehicle_id=f"ev-{pile.id}",
            arrival=start,
            departure=start + 8 * 3600,
            energy_kwh=min(400.0, pile.max_kw * 4),
            max_kw=pile.max_kw,
            capacity_kwh=max(90.0, pile.max_kw * 3),
            soc_arrival=0.2,
            pile=pile.id,
        )
    ]


@pytest.mark.parametrize("make", sorted(MAKES))
async def test_each_make_answers_an_independent_client_as_its_map_says(
    make: str, certs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mbpoll reads every register with every function code the map allows and every run of
    adjacent registers, writes every writable register, and gets the exception the protocol
    prescribes for each request the device must refuse; hand-built frames cover the rest."""
    program = need_system_program("mbpoll", "an independent Modbus client (libmodbus)")
    monkeypatch.setenv("FLEXCHARGE_OPCUA_PASSWORD", "correct horse battery staple")
    station, device = _station(make, certs_dir)
    regmap = station.map_for(device.device)
    unit_id = device.unit
    start = local_time(station, "2026-11-25T10:00")
    clock = VirtualClock(start)
    counts: Counter[str] = Counter()
    with clock.participant():
        async with StationSimulator(station, clock, visits=_visits(station, device, start)) as sim:
            model, bank = sim.models[device.id], sim.banks[device.id]
            client = Mbpoll(program, device.host, device.port)
            await clock.sleep(5)

            # -- every writable register takes a value in range -----------------------------
            for name, value in WRITES.get(make, {}).items():
                reg = regmap[name]
                assert await client.write(regmap.unit_of(reg, unit_id), reg, value) == 0, name
                if (make, name) in WRITTEN:
                    assert WRITTEN[make, name](model, value), name
                else:
                    assert same(reg, expected(reg, model.values().get(name)), value), name
                counts["writes"] += 1
            assert counts["writes"] == sum(r.access.writable for r in regmap.registers.values())
            assert bank.rejected_writes == 0
            await clock.sleep(30)  # the vehicle draws its current

            # -- every register, with every function code that reads it ----------------------
            # The plant steps at the instant the test wakes: the values to compare are taken
            # once the reads are done (the virtual clock stands still while they run).
            words_of: dict[tuple[str, int], list[int]] = {}
            for reg in sorted(regmap.registers.values(), key=lambda r: r.address):
                if not reg.access.readable:
                    continue
                for fc in sorted(reg.read_fcs):
                    unit = regmap.unit_of(reg, unit_id)
                    words = await client.read(unit, fc, reg.address, reg.words)
                    assert isinstance(words, list), f"{reg.name} FC{fc}: exception {words}"
                    words_of[reg.name, fc] = words
                    counts["register reads"] += 1
            values = model.values()
            for (name, fc), words in words_of.items():
                reg = regmap[name]
                got, want = decoded(reg, words), expected(reg, values.get(name))
                if (make, name) not in UNAVAILABLE:
                    assert want is not None, f"{name}: the simulated device has no value"
                assert same(reg, got, want), f"{name} FC{fc}: read {got!r}, holds {want!r}"
            counts["registers"] = len(regmap.readable())

            # What the products' documents say of the words themselves, not only the values.
            if make == "abb-terra-ac":
                # The state is the high byte of the second register, not a u32: C2 at the
                # rated current (32 A written above) is 0x0400.
                assert words_of["state", 3] == [0, 0x0400]
            if make == "vestel-evc04":
                # One UTF-16 character a register, read with FC4 as evcc reads it.
                assert words_of["firmware_version", 4][:3] == [ord("v"), ord("3"), ord(".")]

            # -- every run of adjacent registers in one request ------------------------------
            for unit, fc, run in runs(regmap, unit_id):
                count = run[-1].end - run[0].address
                block = await client.read(unit, fc, run[0].address, count)
                assert block == [w for r in run for w in words_of[r.name, fc]], run[0].name
                counts["block reads"] += 1

            # -- what the device must refuse, through libmodbus -------------------------------
            cases = _refusals(regmap, unit_id, make)
            for what, unit, args, code in cases:
                assert await client.refused(unit, *args) == code, what
                counts["exceptions (mbpoll)"] += 1
            assert bank.rejected_writes == sum(1 for c in cases if c[3] == 3)

    print(
        f"\n{make}: {counts['registers']} registers, {counts['register reads']} register reads, "
        f"{counts['block reads']} block reads, {counts['writes']} writes, "
        f"{counts['exceptions (mbpoll)']} exception cases with mbpoll"
    )
    assert counts["exceptions (mbpoll)"] >= 8 and counts["register reads"] >= counts["registers"]


@pytest.mark.parametrize("make", sorted(MAKES))
async def test_each_make_answers_hand_built_frames_as_the_protocol_says(
    make: str, certs_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests no client library sends, built by hand and sent over a plain socket: function
    codes the device does not answer, quantities out of range, wrong lengths, an absent unit, a
    foreign protocol id, an overlong frame, a frame in two pieces and two frames in one."""
    monkeypatch.setenv("FLEXCHARGE_OPCUA_PASSWORD", "correct horse battery staple")
    station, device = _station(make, certs_dir)
    regmap = station.map_for(device.device)
    clock = VirtualClock(local_time(station, "2026-11-25T10:00"))
    checked = 0
    with clock.participant():
        async with StationSimulator(station, clock, visits=[]):
            for what, frames, answers, split in _raw_cases(regmap, device.unit):
                got = await exchange(device.host, device.port, *frames, split=split)
                checked += 1
                if answers is None:
                    assert got is None, f"{what}: answered {got}"
                    continue
                assert got is not None, f"{what}: the connection was closed"
                # A response carrying registers is compared by its head (the words are checked
                # by the test above); an exception response whole.
                heads = [a if a[2] & 0x80 else a[:4] for a in got]
                assert heads == answers, f"{what}: {[a.hex() for a in got]}"
                assert all(len(a) == 4 + a[3] for a in got if not a[2] & 0x80), what
    print(f"\n{make}: {checked} cases with hand-built frames")
    assert checked >= 16


def _refusals(
    regmap: RegisterMap, unit_id: int, make: str
) -> list[tuple[str, int, list[str], int]]:
    """(what, unit, mbpoll arguments, exception code) of requests the device must refuse."""
    fcs = regmap.function_codes
    some = min(regmap.registers.values(), key=lambda r: r.address)
    unit = regmap.unit_of(some, unit_id)
    at = ["-r", str(some.address)]
    cases: list[tuple[str, int, list[str], int]] = [
        ("FC1 read coils", unit, ["-t", "0", *at], 1),
        ("FC2 read discrete inputs", unit, ["-t", "1", *at], 1),
        ("FC5 write a coil", unit, ["-t", "0", *at, "--", "1"], 1),
        ("FC15 write coils", unit, ["-t", "0", *at, "--", "1", "0"], 1),
        ("an absent unit", ABSENT_UNIT, ["-t", "4", *at], 11),
    ]
    for fc, table in ((3, "4"), (4, "3")):
        if fc not in fcs:
            cases.append((f"FC{fc}, which it does not answer", unit, ["-t", table, *at], 1))
            continue
        where = ["-r", str(FREE_ADDRESS)]
        cases.append((f"FC{fc} of an address it does not have", unit, ["-t", table, *where], 2))
    writable = [r for r in regmap.registers.values() if r.access.writable]
    readonly = [r for r in regmap.registers.values() if not r.access.writable]
    if 6 not in fcs:
        cases.append(("FC6, which it does not answer", unit, ["-t", "4", *at, "--", "1"], 1))
    else:
        single = next((r for r in readonly if r.words == 1), None)
        if single is not None:
            where = ["-r", str(single.address)]
            cases.append(
                (
                    f"FC6 to read-only {single.name}",
                    regmap.unit_of(single, unit_id),
                    ["-t", "4", *where, "--", "1"],
                    2,
                )
            )
        half = next((r for r in writable if r.words == 2), None)
        if half is not None:
            where = ["-r", str(half.address)]
            cases.append(
                (
                    f"FC6 to half of {half.name}",
                    regmap.unit_of(half, unit_id),
                    ["-t", "4", *where, "--", "1"],
                    3,
                )
            )
    if 16 not in fcs:
        cases.append(("FC16, which it does not answer", unit, ["-t", "4", *at, "--", "1", "2"], 1))
    else:
        double = next(r for r in readonly if r.words == 2)
        where = ["-r", str(double.address)]
        cases.append(
            (
                f"FC16 to read-only {double.name}",
                regmap.unit_of(double, unit_id),
                ["-t", "4", *where, "--", "1", "2"],
                2,
            )
        )
    for reg in regmap.registers.values():
        if reg.access.writable and not reg.access.readable and 3 in fcs:
            where = ["-r", str(reg.address), "-c", str(reg.words)]
            cases.append(
                (
                    f"FC3 of write-only {reg.name}",
                    regmap.unit_of(reg, unit_id),
                    ["-t", "4", *where],
                    2,
                )
            )
    for name, value in REFUSED.get(make, []):
        reg = regmap[name]
        kind = {ValueType.F32: "4:float", ValueType.I32: "4:int", ValueType.U32: "4:int"}
        table = "4" if reg.words == 1 else kind[reg.type]
        text = wire_text(reg, value)
        args = ["-B", "-t", table, "-r", str(reg.address), "--", text]
        cases.append((f"{name} = {text}", regmap.unit_of(reg, unit_id), args, 3))
    return cases


def _raw_cases(
    regmap: RegisterMap, unit_id: int
) -> list[tuple[str, list[bytes], list[bytes] | None, int]]:
    """(what, frames, the responses expected before the marker's, split) of hand-built
    requests; each response is its transaction id and PDU."""
    fcs = regmap.function_codes
    reg = min((r for r in regmap.registers.values() if r.access.readable), key=lambda r: r.address)
    read_fc = min(reg.read_fcs)
    unit = regmap.unit_of(reg, unit_id)
    marker = mbap(0xFFFF, unit, struct.pack(">BHH", read_fc, reg.address, reg.words))

    def refused(tid: int, pdu: bytes, code: int) -> tuple[list[bytes], list[bytes]]:
        answer = struct.pack(">HBB", tid, (pdu[0] | 0x80) & 0xFF, code)
        return [mbap(tid, unit, pdu), marker], [answer]

    read = struct.pack(">BHH", read_fc, reg.address, reg.words)
    cases: list[tuple[str, list[bytes], list[bytes] | None, int]] = []
    for what, pdu, code in [
        ("FC8 echo (diagnostics 00)", b"\x08\x00\x00\x12\x34", 1),
        ("FC17 report server id", b"\x11", 1),
        ("FC43/14 read device identification", b"\x2b\x0e\x01\x00", 1),
        ("function code 0x00", b"\x00\x00\x00\x00\x01", 1),
        ("function code 0x41", b"\x41\x00\x00\x00\x01", 1),
        ("function code 0x7F", b"\x7f\x00\x00\x00\x01", 1),
        ("a read of 0 registers", struct.pack(">BHH", read_fc, reg.address, 0), 3),
        ("a read of 126 registers", struct.pack(">BHH", read_fc, reg.address, 126), 3),
        ("a read past register 65535", struct.pack(">BHH", read_fc, 65535, 2), 2),
        ("a read without its quantity", struct.pack(">BH", read_fc, reg.address), 3),
        ("a read with a byte too many", read + b"\x00", 3),
    ]:
        frames, answers = refused(0x0100 + len(cases), pdu, code)
        cases.append((what, frames, answers, 0))
    if 16 in fcs:
        writes = [
            # 124 registers: what fits of them in the longest frame there is.
            ("FC16 of 124 registers", struct.pack(">BHHB", 16, 0, 124, 248) + bytes(240), 3),
            (
                "FC16 whose byte count is not twice its quantity",
                struct.pack(">BHHBH", 16, 0, 1, 3, 0) + b"\x00",
                3,
            ),
            ("FC16 of 0 registers", struct.pack(">BHHB", 16, 0, 0, 0), 3),
        ]
        half = next(
            (r for r in regmap.registers.values() if r.access.writable and r.words == 2), None
        )
        if half is not None:
            writes.append(
                (
                    f"FC16 of half of {half.name}",
                    struct.pack(">BHHBH", 16, half.address, 1, 2, 0),
                    3,
                )
            )
        for what, pdu, code in writes:
            frames, answers = refused(0x0200 + len(cases), pdu, code)
            cases.append((what, frames, answers, 0))
    absent = struct.pack(">HBB", 0x0300, 0x80 | read_fc, 11)
    cases.append(("an absent unit", [mbap(0x0300, ABSENT_UNIT, read), marker], [absent], 0))
    # Not Modbus (protocol id 1): discarded; the marker after it is still answered.
    cases.append(
        ("a frame of another protocol", [mbap(0x0301, unit, read, protocol=1), marker], [], 0)
    )
    # A frame that arrives in two pieces is answered once it is whole, as it is when whole;
    # two requests in one piece are both answered, in order.
    ok = struct.pack(">HBB", 0x0302, read_fc, 2 * reg.words)
    cases.append(("a frame in two pieces", [mbap(0x0302, unit, read), marker], [ok], 5))
    twice = [mbap(0x0303, unit, read), mbap(0x0304, unit, read), marker]
    first, second = (struct.pack(">HBB", t, read_fc, 2 * reg.words) for t in (0x0303, 0x0304))
    cases.append(("two requests in one piece", twice, [first, second], 0))
    # No Modbus frame is longer than 260 bytes: the stream is no longer framed; hung up on.
    long = struct.pack(">HHHB", 0x0305, 0, 300, unit) + bytes(299)
    cases.append(("a frame longer than any Modbus frame", [long, marker], None, 0))
    return cases
