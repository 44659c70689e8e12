"""Modbus transports: one connection per server or serial line, devices addressed through
register maps.

`ModbusLink` owns one pymodbus client (one TCP connection to host:port, with MBAP framing or, to
an RS-485 gateway, RTU framing) and turns every way a request can fail into the `DriverError`
tree; `SerialLink` is the same over a serial line (Modbus RTU): the devices on one line are a
bus, and pymodbus sends one request at a time on it. `ModbusDevice` is one unit id behind a link, read and
written by register name through its `RegisterMap`. Several devices may share a link (a charger
whose station and sockets answer on different unit ids, an RS-485 gateway).

A `ModbusDevice` needs of its link only what `ModbusTransport` names: the fast simulation gives it
one that answers from the simulator's register banks in-process, and raises the same errors, made
by the functions below (`no_answer`, `answered_exception`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, AsyncModbusTlsClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from base.devicemap import ReadBlock, RegisterMap, Value
from base.stationdevices import DeviceEndpoint
from drivers.codec import BlockDecoder, WritePlan, WriteRequest
from drivers.errors import BadValue, ConnectionLost, DeviceRejected, DeviceTimeout, DriverError

log = logging.getLogger(__name__)

_EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target failed to respond",
}


def request_name(function_code: int, address: int, count: int, unit_id: int) -> str:
    """A request as messages name it: "FC3 0+2 unit 1"."""
    return f"FC{function_code} {address}+{count} unit {unit_id}"


def no_answer(device: str, what: str, timeout_s: float) -> DeviceTimeout:
    """The error of a request `what` that got no answer within `timeout_s`."""
    return DeviceTimeout(device, f"{what}: no answer within {timeout_s} s")


def answered_exception(device: str, what: str, code: int) -> DeviceRejected:
    """The error of a request `what` the device answered with Modbus exception `code`."""
    name = _EXCEPTION_NAMES.get(code, "exception")
    return DeviceRejected(device, f"{what}: device answered {name} ({code})", code)


class ModbusTransport(Protocol):
    """What a `ModbusDevice` needs of its link: a connection, block reads, write requests."""

    @property
    def address(self) -> str:
        """host:port, for messages."""
        ...

    async def connect(self, device: str) -> None:
        """Open the connection if it is not open (`ConnectionLost` if that fails)."""
        ...

    async def read(self, block: ReadBlock, device: str) -> Sequence[int]:
        """The words of one block of registers."""
        ...

    async def write(self, request: WriteRequest, device: str) -> None:
        """Send one write request."""
        ...


@dataclass(frozen=True)
class SerialLine:
    """A serial line (an RS-485 bus) and how its devices talk: the station file's settings."""

    port: str
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    bytesize: int = 8

    @classmethod
    def of(cls, endpoint: DeviceEndpoint) -> SerialLine:
        """The line a Modbus RTU device of the station file hangs on."""
        assert endpoint.serial_port is not None  # the station file check requires it
        return cls(
            endpoint.serial_port,
            baudrate=endpoint.baudrate,
            parity=endpoint.parity,
            stopbits=endpoint.stopbits,
            bytesize=endpoint.bytesize,
        )


class ModbusLink:
    """One Modbus TCP (or TLS, or RTU-over-TCP) connection, shared by the devices behind it.

    Requests on one link are serialised by pymodbus; requests on different links run
    concurrently. The link reconnects on the next request after a failure; it never starts a
    background task of its own.
    """

    _client: AsyncModbusTcpClient | AsyncModbusSerialClient

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout_s: float = 1.0,
        sslctx: ssl.SSLContext | None = None,
        rtu: bool = False,
    ) -> None:
        """`rtu`: RTU frames (with their CRC) over the TCP connection, as serial gateways take
        them, instead of Modbus TCP's MBAP header."""
        self.host = host
        self.port = port
        self.timeout_s = timeout_s
        # retries=0 and reconnect_delay=0: the controller decides when to retry, and pymodbus
        # must not start reconnect tasks that nobody owns.
        if sslctx is not None:
            self._client = AsyncModbusTlsClient(
                host, port=port, sslctx=sslctx, timeout=timeout_s, retries=0, reconnect_delay=0
            )
        else:
            framer = FramerType.RTU if rtu else FramerType.SOCKET
            self._client = AsyncModbusTcpClient(
                host, port=port, framer=framer, timeout=timeout_s, retries=0, reconnect_delay=0
            )
        self._connecting = asyncio.Lock()

    @property
    def address(self) -> str:
        """host:port, for messages."""
        return f"{self.host}:{self.port}"

    @property
    def connected(self) -> bool:
        """True while the TCP connection is open."""
        return bool(self._client.connected)

    async def connect(self, device: str) -> None:
        """Open the connection if it is not open; raise `ConnectionLost` if that fails."""
        async with self._connecting:
            if self.connected:
                return
            try:
                ok = await self._client.connect()
            except (OSError, ModbusException) as exc:
                raise ConnectionLost(device, f"cannot connect to {self.address}: {exc}") from exc
            if not ok:
                raise ConnectionLost(device, f"cannot connect to {self.address}")

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._client.close()

    async def read(self, block: ReadBlock, device: str) -> list[int]:
        """Read one block of registers."""
        if block.function_code == 3:
            call = self._client.read_holding_registers
        elif block.function_code == 4:
            call = self._client.read_input_registers
        else:
            raise DriverError(device, f"cannot read with function code {block.function_code}")
        what = request_name(block.function_code, block.address, block.count, block.unit_id)
        response = await self._execute(
            device, what, lambda: call(block.address, count=block.count, device_id=block.unit_id)
        )
        registers = list(response.registers)
        if len(registers) != block.count:
            raise DeviceRejected(
                device, f"{what}: answered {len(registers)} registers, not {block.count}", 0
            )
        return registers

    async def write(self, request: WriteRequest, device: str) -> None:
        """Send one write request (FC6 or FC16)."""
        what = request_name(
            request.function_code, request.address, len(request.words), request.unit_id
        )
        if request.function_code == 6:
            await self._execute(
                device,
                what,
                lambda: self._client.write_register(
                    request.address, request.words[0], device_id=request.unit_id
                ),
            )
        else:
            await self._execute(
                device,
                what,
                lambda: self._client.write_registers(
                    request.address, list(request.words), device_id=request.unit_id
                ),
            )

    async def _execute(
        self, device: str, what: str, send: Callable[[], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        if not self.connected:
            await self.connect(device)
        try:
            return await self._send(device, what, send)
        except ConnectionLost:
            # Devices close connections they find idle (Alfen: 60 s): that is noticed only on
            # the next request. One new connection and one retry; a real loss fails again.
            self.close()
            await self.connect(device)
            return await self._send(device, what, send)

    async def _send(
        self, device: str, what: str, send: Callable[[], Awaitable[ModbusPDU]]
    ) -> ModbusPDU:
        try:
            response: ModbusPDU = await send()
        except ConnectionException as exc:
            raise ConnectionLost(device, f"{what}: connection to {self.address} lost") from exc
        except ModbusIOException as exc:
            raise no_answer(device, what, self.timeout_s) from exc
        except ModbusException as exc:
            raise DriverError(device, f"{what}: {exc}") from exc
        except TimeoutError as exc:
            raise no_answer(device, what, self.timeout_s) from exc
        except OSError as exc:
            raise ConnectionLost(device, f"{what}: {exc}") from exc
        if response.isError():
            raise answered_exception(device, what, int(getattr(response, "exception_code", 0)))
        return response


class SerialLink(ModbusLink):
    """One serial line (Modbus RTU), shared by the devices on it (by unit id)."""

    def __init__(self, line: SerialLine, *, timeout_s: float = 1.0) -> None:
        self.line = line
        self.host = line.port
        self.port = 0
        self.timeout_s = timeout_s
        self._client = AsyncModbusSerialClient(
            line.port,
            framer=FramerType.RTU,
            baudrate=line.baudrate,
            parity=line.parity,
            stopbits=line.stopbits,
            bytesize=line.bytesize,
            timeout=timeout_s,
            retries=0,
            reconnect_delay=0,
        )
        self._connecting = asyncio.Lock()

    @property
    def address(self) -> str:
        """The serial port, for messages."""
        return self.line.port


class ModbusDevice:
    """One device (unit id) behind a link, read and written by register name."""

    def __init__(
        self, name: str, link: ModbusTransport, register_map: RegisterMap, unit_id: int
    ) -> None:
        self.name = name
        self.link = link
        self.map = register_map
        self.unit_id = unit_id
        # Read and write plans by the names asked for: a driver asks for the same ones each time.
        self._plans: dict[tuple[str, ...], tuple[BlockDecoder, ...]] = {}
        self._writes: dict[tuple[str, ...], WritePlan] = {}

    async def connect(self) -> None:
        """Open the link if needed."""
        await self.link.connect(self.name)

    async def read(self, names: Iterable[str]) -> Mapping[str, Value | None]:
        """Read the named registers, in as few requests as the map allows (a block that answers
        the very words it answered last gives the very mapping it gave then)."""
        key = tuple(names)
        plan = self._plans.get(key)
        if plan is None:
            blocks = self.map.read_plan(key, self.unit_id)
            plan = self._plans[key] = tuple(BlockDecoder(block) for block in blocks)
        values: dict[str, Value | None] = {}
        for decoder in plan:
            words = await self.link.read(decoder.block, self.name)
            try:
                decoded = decoder(words)
            except BadValue as exc:
                # The codec knows only the register; this is the device the station names.
                raise BadValue(self.name, f"{exc.device}: {exc.message}") from None
            if len(plan) == 1:
                return decoded
            values.update(decoded)
        return values

    async def write(self, values: Mapping[str, Value | None]) -> None:
        """Write the named registers; contiguous FC16 registers go in one request."""
        key = tuple(values)
        plan = self._writes.get(key)
        if plan is None:
            plan = self._writes[key] = WritePlan(self.map, key, self.unit_id)
        try:
            requests = plan.requests(values)
        except BadValue as exc:
            # The plan's message names the register; name the device, not its map.
            raise BadValue(self.name, exc.message) from None
        for request in requests:
            await self.link.write(request, self.name)


class ModbusLinks:
    """The station's Modbus connections, one per (host, port) and one per serial line, created
    on first use."""

    def __init__(self, *, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._links: dict[tuple[str, int, str], ModbusLink] = {}

    def get(
        self,
        host: str,
        port: int,
        *,
        tls: Callable[[], ssl.SSLContext] | None = None,
        rtu: bool = False,
    ) -> ModbusLink:
        """The link to host:port: Modbus/TCP Security when `tls` is given (it makes the SSL
        context, called only when the link is new), RTU framing when `rtu`. Links to the same
        address in different framings are different links."""
        framing = "tls" if tls is not None else "rtu" if rtu else "tcp"
        key = (host, port, framing)
        if key not in self._links:
            sslctx = None if tls is None else tls()
            self._links[key] = ModbusLink(
                host, port, timeout_s=self.timeout_s, sslctx=sslctx, rtu=rtu
            )
        return self._links[key]

    def serial(self, line: SerialLine) -> ModbusLink:
        """The link over serial line `line` (the devices on it share it: a bus). The first
        device on a port sets the line's settings."""
        key = (line.port, 0, "serial")
        if key not in self._links:
            self._links[key] = SerialLink(line, timeout_s=self.timeout_s)
        return self._links[key]

    def close(self) -> None:
        """Close every link."""
        for link in self._links.values():
            link.close()
