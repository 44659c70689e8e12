"""One device behind an OPC-UA link, read and written by the names of its register map, and the
links of a station, one per server endpoint.

An `OpcUaDevice` needs of its link only what `OpcUaTransport` names: the fast simulation gives it
one that answers from the simulator's address space in-process.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal, Protocol

from asyncua import ua

from base.devicemap import Register, RegisterMap, Value, ValueType
from drivers.errors import BadValue, DeviceRejected
from drivers.opcua.link import OpcUaLink
from drivers.opcua.security import OpcUaSecurity
from drivers.opcua.space import engineering_variant, node_name

log = logging.getLogger(__name__)


class OpcUaTransport(Protocol):
    """What an `OpcUaDevice` needs of its link: a session, reads and writes of variables."""

    @property
    def address(self) -> str:
        """The endpoint, for messages."""
        ...

    async def connect(self, device: str) -> None:
        """Open the session if it is not open (a `DriverError` if that fails)."""
        ...

    async def read(
        self, device: str, identifiers: Sequence[str], *, cached: bool = True
    ) -> list[ua.DataValue]:
        """The values of the named variables (`cached`: a subscription's may do)."""
        ...

    async def write(self, device: str, values: Mapping[str, ua.Variant]) -> None:
        """Write the variables in one request."""
        ...


class OpcUaDevice:
    """One device: the object `object_name` behind a link, read and written by map name."""

    def __init__(
        self, name: str, link: OpcUaTransport, register_map: RegisterMap, object_name: str
    ) -> None:
        if not object_name or "." in object_name:
            raise ValueError(
                f"{name}: OPC-UA object name {object_name!r} must be non-empty, no dots"
            )
        self.name = name
        self.link = link
        self.map = register_map
        self.object_name = object_name
        self._written = False

    async def connect(self) -> None:
        """Open the link if needed."""
        await self.link.connect(self.name)

    async def read(self, names: Iterable[str]) -> dict[str, Value | None]:
        """Read the named variables (from the subscription when it is fresh)."""
        regs = [self._register(n, "read") for n in names]
        # After a write, poll once: the subscription may not have delivered its effect yet.
        values = await self.link.read(
            self.name, [node_name(self.object_name, r.name) for r in regs], cached=not self._written
        )
        self._written = False
        return {reg.name: self._decode(reg, value) for reg, value in zip(regs, values, strict=True)}

    async def write(self, values: Mapping[str, Value | None]) -> None:
        """Write the named variables in one Write request."""
        variants: dict[str, ua.Variant] = {}
        for name, value in values.items():
            reg = self._register(name, "write")
            if value is None:
                raise BadValue(self.name, f"{name}: cannot write 'unavailable'")
            try:
                variants[node_name(self.object_name, name)] = engineering_variant(reg, value)
            except BadValue as exc:
                raise BadValue(self.name, f"{name}: {exc.message}") from None
        await self.link.write(self.name, variants)
        self._written = True

    def _register(self, name: str, action: Literal["read", "write"]) -> Register:
        if name not in self.map:
            raise BadValue(self.name, f"{name}: not in the {self.map.name} map")
        reg = self.map[name]
        if action == "read" and not reg.access.readable:
            raise BadValue(self.name, f"{name}: write-only in the {self.map.name} map")
        if action == "write" and not reg.access.writable:
            raise BadValue(self.name, f"{name}: read-only in the {self.map.name} map")
        return reg

    def _decode(self, reg: Register, data: ua.DataValue) -> Value | None:
        status = data.StatusCode
        if status is not None and status.is_bad():
            if status.value == ua.StatusCodes.BadNoData:
                return None
            raise DeviceRejected(
                self.name,
                f"{reg.name}: {self.link.address} answered {status.name} for "
                f"{node_name(self.object_name, reg.name)}",
                status.value,
            )
        value = None if data.Value is None else data.Value.Value
        if value is None:
            return None
        if reg.type is ValueType.STRING:
            if not isinstance(value, str):
                raise BadValue(self.name, f"{reg.name}: expected text, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise BadValue(
                self.name, f"{reg.name}: expected a number, got {type(value).__name__} {value!r}"
            )
        if isinstance(value, float):
            if math.isnan(value):
                return None
            if not math.isfinite(value):
                raise BadValue(self.name, f"{reg.name}: not a finite number: {value!r}")
        return value


class OpcUaLinks:
    """The station's OPC-UA sessions, one per (endpoint URL, security), created on first use."""

    def __init__(
        self,
        *,
        now: Callable[[], float],
        timeout_s: float,
        secure: Callable[[], OpcUaSecurity],
    ) -> None:
        self.now = now
        self.timeout_s = timeout_s
        self._secure = secure
        self._links: dict[tuple[str, bool], OpcUaLink] = {}

    def get(self, url: str, *, encrypt: bool = True) -> OpcUaLink:
        """The link to `url`, SignAndEncrypt unless `encrypt` is False."""
        key = (url, encrypt)
        if key not in self._links:
            security = self._secure() if encrypt else OpcUaSecurity.insecure()
            self._links[key] = OpcUaLink(url, security, now=self.now, timeout_s=self.timeout_s)
        return self._links[key]

    async def close(self) -> None:
        """Close every link."""
        await asyncio.gather(*(link.close() for link in self._links.values()))
