"""Modbus TCP (and TLS) servers that keep a device's connection rules.

Some devices accept only a few masters at once and close a connection that stays idle (the Alfen
NG9xx: 2 masters, 60 s). `DeviceServer` enforces both on top of pymodbus's server: a connection
beyond `max_connections` is closed as soon as it opens, and `close_idle(now)` (called by the
simulator on its clock) closes connections that have sent nothing for `idle_timeout_s`. A fault
script may make the server silent (requests heard, never answered), late, or drop and refuse
connections (`gate`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

from pymodbus.server import ModbusTlsServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimDevice

from base.clock import Clock
from simulator.faults import FaultKind

log = logging.getLogger(__name__)


class _Connection(ServerRequestHandler):
    """One client connection, with the time it last sent a request."""

    server: DeviceServer

    def callback_connected(self) -> None:
        super().callback_connected()
        server = self.server
        self.last_active = server.clock.now()
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
        access = None if self.server.gate is None else self.server.gate()
        if access is FaultKind.DROPPED:
            self.transport.close()
            return len(data)
        if access is FaultKind.SILENT:
            return len(data)  # heard, never answered
        if isinstance(access, float):
            # Answered late: the request is handled after the latency (real seconds).
            asyncio.get_running_loop().call_later(access, self._late, data, addr)
            return len(data)
        used: int = super().callback_data(data, addr)
        return used

    def _late(self, data: bytes, addr: tuple[Any, ...] | None) -> None:
        if not self.transport.is_closing():
            super().callback_data(data, addr)


class DeviceServer(ModbusTlsServer):
    """A Modbus TCP server, or Modbus/TCP Security with `sslctx`, with connection rules.

    Subclasses pymodbus's TLS server because that one takes both forms: without an SSL context
    it is a plain TCP server.
    """

    def __init__(
        self,
        devices: list[SimDevice],
        *,
        address: tuple[str, int],
        clock: Clock,
        name: str,
        sslctx: ssl.SSLContext | None = None,
        max_connections: int | None = None,
        idle_timeout_s: float | None = None,
        gate: Callable[[], FaultKind | float | None] | None = None,
    ) -> None:
        """`gate` says how a request is treated now (a fault script's `access`)."""
        self.clock = clock
        self.gate = gate
        self.name = name
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.refused = 0
        self.closed_idle = 0
        if sslctx is None:
            # pymodbus picks TLS framing from `tls_setup`; without it this is a TCP server.
            super(ModbusTlsServer, self).__init__(devices, address=address)
        else:
            super().__init__(devices, address=address, sslctx=sslctx)

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
