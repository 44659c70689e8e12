"""Serial lines on one machine: a pair of linked pseudo-terminals per line, made by `socat`.

A station whose devices hang on a serial line (Modbus RTU) names the real port, such as
/dev/ttyUSB0. To run that station with its hardware simulated, the simulator takes one end of a
pseudo-terminal pair and the daemon the other, so every request still travels as real RTU frames
with their CRC and timing. `serial_pairs` makes one pair per serial port the station uses.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from base.config import Station
from base.programs import system_program
from base.stationdevices import DeviceEndpoint

_Device = TypeVar("_Device", bound=DeviceEndpoint)


class SerialPairError(Exception):
    """No pseudo-terminal pair could be made (socat missing, or it failed)."""


@dataclass(frozen=True)
class SerialPair:
    """Two linked pseudo-terminals: what one end writes, the other reads."""

    simulator_end: str
    daemon_end: str


@contextlib.contextmanager
def pseudo_terminal_pair(directory: Path, name: str = "tty") -> Iterator[SerialPair]:
    """A socat-made pair of pseudo-terminals (symlinks in `directory`) for as long as the block
    runs; `SerialPairError` if socat is not installed or makes none within 10 s."""
    socat = system_program("socat")
    if socat is None:
        raise SerialPairError(
            "a simulated serial line needs socat for its pseudo-terminal pair: install it "
            "(`make system-deps`, or apt-get install socat)"
        )
    sim, daemon = directory / f"{name}-simulator", directory / f"{name}-daemon"
    process = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={sim}", f"pty,raw,echo=0,link={daemon}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not (sim.exists() and daemon.exists()):
            if process.poll() is not None:
                why = process.stderr.read().decode(errors="replace") if process.stderr else ""
                raise SerialPairError(f"socat made no pseudo-terminal pair: {why.strip()}")
            if time.monotonic() > deadline:
                raise SerialPairError("socat made no pseudo-terminal pair within 10 s")
            time.sleep(0.02)
        yield SerialPair(str(sim), str(daemon))
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


@contextlib.contextmanager
def serial_pairs(station: Station) -> Iterator[tuple[Station, Station]]:
    """(the simulator's station, the daemon's station): copies of `station` whose serial devices
    are on the two ends of one pseudo-terminal pair per serial port. A station without serial
    devices is given back as both, and nothing is started."""
    ports = sorted({str(d.serial_port) for d in station.devices if d.serial})
    if not ports:
        yield station, station
        return
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flexcharge-")))
        pairs = {
            port: stack.enter_context(pseudo_terminal_pair(directory, f"line{k}"))
            for k, port in enumerate(ports)
        }
        yield (
            on_serial_ports(station, {p: pair.simulator_end for p, pair in pairs.items()}),
            on_serial_ports(station, {p: pair.daemon_end for p, pair in pairs.items()}),
        )


def on_serial_ports(station: Station, moved: dict[str, str]) -> Station:
    """A copy of `station` with its serial devices moved from each port of `moved` to its value."""

    def move(device: _Device) -> _Device:
        if not device.serial or device.serial_port not in moved:
            return device
        return device.model_copy(update={"serial_port": moved[device.serial_port]})

    return replace(
        station,
        grid_meter=move(station.grid_meter),
        terminal=None if station.terminal is None else move(station.terminal),
        piles=tuple(move(p) for p in station.piles),
    )
