"""Modbus TCP (and TLS) servers that answer as the devices do, and keep their connection rules.

pymodbus listens and holds the connections; each request is taken apart and answered here from
the devices' register banks, in the order the Modbus application protocol (V1.1b3, section 6 and
its state diagrams) gives a server: an absent unit id is answered as a gateway does (0x0B), a
function code the device does not answer with exception 01, a quantity out of range or a request
of the wrong length with 03, an address the device does not have with 02, a value it refuses
with 03, and every exception response carries the request's function code with bit 7 set. A
frame whose MBAP header is not Modbus (protocol id other than 0, a length below 2) is discarded;
one longer than any Modbus frame closes the connection.

Some devices accept only a few masters at once and close a connection that stays idle (the Alfen
NG9xx: 2 masters, 60 s). `DeviceServer` enforces both: a connection beyond `max_connections` is
closed as soon as it opens, and `close_idle(now)` (called by the simulator on its clock) closes
connections that have sent nothing for `idle_timeout_s`. A fault script may make the server
silent (requests heard, never answered), late, or drop and refuse connections (`gate`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Callable, Mapping
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTlsServer
from pymodbus.server.requesthandler import ServerRequestHandler

from base.clock import Clock
from simulator.faults import FaultKind
from simulator.registers import RegisterBank

log = logging.getLogger(__name__)

_MBAP = struct.Struct(">HHHB")  # transaction id, protocol id, length, unit id
_ADDRESS_COUNT = struct.Struct(">HH")
# The MBAP length counts the unit id and the PDU; a PDU is at most 253 bytes.
_MAX_LENGTH = 254
_MAX_READ = 125  # registers in one FC3/FC4 response
_MAX_WRITE = 123  # registers in one FC16 request


def exception_pdu(function_code: int, code: int) -> bytes:
    """An exception response: the function code with bit 7 set, then the exception code."""
    return bytes(((function_code | 0x80) & 0xFF, code))


def answer(banks: Mapping[int, RegisterBank], unit: int, pdu: bytes) -> bytes:
    """The response PDU a device (or the gateway in front of it) gives to a request PDU."""
    function_code = pdu[0]
    bank = banks.get(unit)
    if bank is None:
        return exception_pdu(function_code, ExcCodes.GATEWAY_NO_RESPONSE)
    if function_code not in bank.map.function_codes:
        return exception_pdu(function_code, ExcCodes.ILLEGAL_FUNCTION)
    data = pdu[1:]
    if function_code in (3, 4):
        if len(data) != 4:
            return exception_pdu(function_code, ExcCodes.ILLEGAL_VALUE)
        address, count = _ADDRESS_COUNT.unpack(data)
        if not 1 <= count <= _MAX_READ:
            return exception_pdu(function_code, ExcCodes.ILLEGAL_VALUE)
        if address + count > 0x10000:
            return exception_pdu(function_code, ExcCodes.ILLEGAL_ADDRESS)
        answer = bank.read_words(unit, function_code, address, count)
        if isinstance(answer, ExcCodes):
            return exception_pdu(function_code, answer)
        return bytes((function_code, 2 * count)) + struct.pack(f">{count}H", *answer)
    if function_code == 6:
        if len(data) != 4:
            return exception_pdu(function_code, ExcCodes.ILLEGAL_VALUE)
        address, value = _ADDRESS_COUNT.unpack(data)
        refusal = bank.write_words(unit, 6, address, [value])
        return pdu if refusal is None else exception_pdu(function_code, refusal)
    # FC16, the only other function code a map may list.
    if len(data) < 5:
        return exception_pdu(function_code, ExcCodes.ILLEGAL_VALUE)
    address, count = _ADDRESS_COUNT.unpack_from(data)
    size = data[4]
    if not 1 <= count <= _MAX_WRITE or size != 2 * count or len(data) != 5 + size:
        return exception_pdu(function_code, ExcCodes.ILLEGAL_VALUE)
    if address + count > 0x10000:
        return exception_pdu(function_code, ExcCodes.ILLEGAL_ADDRESS)
    words = list(struct.unpack_from(f">{count}H", data, 5))
    refusal = bank.write_words(unit, 16, address, words)
    if refusal is not None:
        return exception_pdu(function_code, refusal)
    return pdu[:5]


class _Connection(ServerRequestHandler):
    """One client connection, with the time it last sent a request."""

    server: DeviceServer

    def callback_connected(self) -> None:
        super().callback_connected()
        server = self.server
        self.last_active = server.clock.now()
        # pymodbus's framer keeps one frame at most; requests sent back to back need more.
        self.max_buffer_size = 64 * (_MAX_LENGTH + 6)
        if server.gate is not None and server.gate() is FaultKind.DROPPED:
            self.transport.close()
            return
        limit = server.max_connections
        if limit is not None and len(server.active_connections) > limit:
            server.refused += 1
            log.info("%s: refusing a connection beyond %d", server.name, limit)
            self.transport.close()

    def callback_data(self, data: bytes, addr: tuple[Any, ...] | None = None) -> int:
        self.last_active = self.server.clock.now()
        used, frames = self._frames(data)
        if not frames:
            return used
        access = None if self.server.gate is None else self.server.gate()
        if access is FaultKind.DROPPED:
            self.transport.close()
            return len(data)
        if access is FaultKind.SILENT:
            return used  # heard, never answered
        if isinstance(access, float):
            # Answered late: the requests are handled after the latency (real seconds).
            asyncio.get_running_loop().call_later(access, self._respond, frames)
            return used
        self._respond(frames)
        return used

    def _frames(self, data: bytes) -> tuple[int, list[tuple[int, int, bytes]]]:
        """The complete frames at the start of `data` (transaction id, unit id, PDU) and the
        bytes they take; a frame not yet complete waits for the rest."""
        used = 0
        frames = []
        while len(data) - used >= _MBAP.size:
            transaction, protocol, length, unit = _MBAP.unpack_from(data, used)
            if length > _MAX_LENGTH:
                # No Modbus frame is this long: the stream cannot be trusted to be framed.
                log.info(
                    "%s: closing a connection that sent a %d-byte frame", self.server.name, length
                )
                self.transport.close()
                return len(data), []
            end = used + 6 + length
            if len(data) < end:
                break
            pdu = data[used + _MBAP.size : end]
            used = end
            if protocol == 0 and pdu:
                frames.append((transaction, unit, pdu))
        return used, frames

    def _respond(self, frames: list[tuple[int, int, bytes]]) -> None:
        transport = self.transport
        if not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            return
        banks = self.server.banks
        for transaction, unit, pdu in frames:
            response = answer(banks, unit, pdu)
            header = _MBAP.pack(transaction, 0, len(response) + 1, unit)
            # Straight to the socket: pymodbus's `send` would drop a request still arriving.
            transport.write(header + response)


class DeviceServer(ModbusTlsServer):
    """A Modbus TCP server, or Modbus/TCP Security with `sslctx`, with connection rules.

    Subclasses pymodbus's TLS server because that one takes both forms: without an SSL context
    it is a plain TCP server.
    """

    def __init__(
        self,
        banks: Mapping[int, RegisterBank],
        *,
        address: tuple[str, int],
        clock: Clock,
        name: str,
        sslctx: ssl.SSLContext | None = None,
        max_connections: int | None = None,
        idle_timeout_s: float | None = None,
        gate: Callable[[], FaultKind | float | None] | None = None,
    ) -> None:
        """`banks`: the bank that answers for each unit id; `gate` says how a request is
        treated now (a fault script's `access`)."""
        self.banks = dict(banks)
        self.clock = clock
        self.gate = gate
        self.name = name
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.refused = 0
        self.closed_idle = 0
        if sslctx is None:
            # pymodbus picks TLS framing from `tls_setup`; without it this is a TCP server.
            super(ModbusTlsServer, self).__init__([], address=address)
        else:
            super().__init__([], address=address, sslctx=sslctx)
        # pymodbus logs why it cannot listen and raises a RuntimeError without the reason; keep
        # the OSError, so that a taken port can be reported as such.
        self.listen_error: OSError | None = None
        create = self.call_create

        async def create_remembering_why() -> Any:
            try:
                return await create()
            except OSError as exc:
                self.listen_error = exc
                raise

        self.call_create = create_remembering_why

    def callback_new_connection(self) -> _Connection:
        """A connection that knows its server's rules."""
        return _Connection(self, self.trace_packet, self.trace_pdu, self.trace_connect)

    def close_idle(self, now: float) -> int:
        """Close connections idle longer than the device allows; return how many."""
        if self.idle_timeout_s is None:
            return 0
        closed = 0
        for connection in list(self.active_connections.values()):
            if now - getattr(connection, "last_active", now) > self.idle_timeout_s:
                connection.close()
                closed += 1
        self.closed_idle += closed
        return closed
