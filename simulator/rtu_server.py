"""Modbus RTU servers: the devices of a serial line, answering from their register banks.

A serial line is a bus: every device hears every frame and answers only those addressed to its
unit id; a frame for a unit nobody has, or whose CRC is wrong, goes unanswered (the master times
out), as on a real RS-485 line. The same framing is served over TCP for RTU-over-TCP gateways.
Frames are cut by their function code's length (FC3, FC4, FC6: 8 bytes; FC16: 9 plus its byte
count); the request is answered by `modbus_server.answer`, so the serial devices keep the same
rules as the TCP ones. pymodbus opens the serial port (through pyserial) and computes the CRC.
A fault script's silent, dropped and late faults hit one device of the bus, not the line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from pymodbus.framer import FramerRTU
from pymodbus.transport.serialtransport import create_serial_connection

from drivers.modbus import SerialLine
from simulator.faults import FaultKind
from simulator.modbus_server import answer
from simulator.registers import RegisterBank

log = logging.getLogger(__name__)

# How the device at a unit id treats a request now: FaultKind.SILENT or DROPPED, a latency in s,
# or None (it answers).
UnitGate = Callable[[int], FaultKind | float | None]

_FIXED_SIZE = {3: 8, 4: 8, 6: 8}  # unit, function code, 4 data bytes, CRC
_FC16_HEADER = 7  # unit, function code, address, count, byte count


def with_crc(frame: bytes) -> bytes:
    """`frame` followed by its Modbus CRC (low byte first on the wire)."""
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


def request_frames(data: bytes) -> tuple[int, list[tuple[int, bytes]]]:
    """The complete request frames at the start of `data` (unit id, PDU) and the bytes used.

    A frame not yet complete waits for the rest; a frame with a wrong CRC or a function code
    whose length is unknown makes the rest of the buffer garbage (a real device waits for the
    line to go quiet and starts again).
    """
    used = 0
    frames: list[tuple[int, bytes]] = []
    while len(data) - used >= 2:
        function_code = data[used + 1]
        size = _FIXED_SIZE.get(function_code)
        if size is None and function_code == 16:
            if len(data) - used < _FC16_HEADER:
                break
            size = _FC16_HEADER + data[used + 6] + 2
        if size is None:
            return len(data), frames
        if len(data) - used < size:
            break
        frame = data[used : used + size]
        if with_crc(frame[:-2]) != frame:
            return len(data), frames
        frames.append((frame[0], frame[1:-2]))
        used += size
    return used, frames


class RtuResponder(asyncio.Protocol):
    """The devices on one line (or behind one RTU-over-TCP connection)."""

    def __init__(
        self, banks: Mapping[int, RegisterBank], name: str, gate: UnitGate | None = None
    ) -> None:
        self.banks = banks
        self.name = name
        self.gate = gate
        self.heard = 0
        self._buffer = b""
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def close(self) -> None:
        """Close this responder's connection."""
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        used, frames = request_frames(self._buffer)
        self._buffer = self._buffer[used:]
        for unit, pdu in frames:
            self.heard += 1
            if unit not in self.banks:
                continue  # another device's frame, or nobody's: silence
            # A device on a bus fails alone: the others on the line still answer.
            access = None if self.gate is None else self.gate(unit)
            if access is FaultKind.SILENT or access is FaultKind.DROPPED:
                continue
            reply = with_crc(bytes((unit,)) + answer(self.banks, unit, pdu))
            if isinstance(access, float):
                # Answered late (real seconds), as a slow device answers.
                asyncio.get_running_loop().call_later(access, self._send, reply)
            else:
                self._send(reply)

    def _send(self, reply: bytes) -> None:
        transport = self._transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(reply)


class RtuServer:
    """Devices answering Modbus RTU on a serial port or on a TCP port (RTU over TCP)."""

    def __init__(
        self, banks: Mapping[int, RegisterBank], name: str, gate: UnitGate | None = None
    ) -> None:
        """`gate(unit)` says how the device at `unit` treats a request now (a fault script's
        SILENT or DROPPED: no answer; a latency in s; None: it answers)."""
        self.banks = dict(banks)
        self.name = name
        self.gate = gate
        self._serial: asyncio.BaseTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._responders: list[RtuResponder] = []

    def _responder(self) -> RtuResponder:
        responder = RtuResponder(self.banks, self.name, self.gate)
        self._responders.append(responder)
        return responder

    async def serve_serial(self, line: SerialLine) -> None:
        """Open the line's serial port (e.g. one end of a pseudo-terminal pair) and answer on
        it, with the line's settings."""
        transport, _ = await create_serial_connection(
            asyncio.get_running_loop(),
            self._responder,
            line.port,
            baudrate=line.baudrate,
            bytesize=line.bytesize,
            parity=line.parity,
            stopbits=line.stopbits,
            timeout=0,
        )
        self._serial = transport

    async def serve_tcp(self, host: str, port: int) -> None:
        """Listen on host:port and answer RTU frames on every connection."""
        self._tcp = await asyncio.get_running_loop().create_server(self._responder, host, port)

    async def shutdown(self) -> None:
        """Close the port (idempotent)."""
        if self._serial is not None:
            self._serial.close()
            self._serial = None
        for responder in self._responders:
            responder.close()
        self._responders.clear()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
            self._tcp = None
