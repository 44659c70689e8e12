"""A device read and written by the names of its map, whatever the protocol underneath.

`ModbusDevice` (registers) and `OpcUaDevice` (variables of an OPC-UA object) both implement
`Device`, so a meter or pile driver is written once against names and engineering values in the
map's units, and works over either protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from base.devicemap import RegisterMap, Value


class Device(Protocol):
    """One device: named values in, named values out."""

    name: str
    map: RegisterMap

    async def connect(self) -> None:
        """Open the connection to the device if it is not open."""
        ...

    async def read(self, names: Iterable[str]) -> Mapping[str, Value | None]:
        """Read the named values (None: the device says "unavailable"); the mapping is the
        device's: read it, do not change it."""
        ...

    async def write(self, values: Mapping[str, Value | None]) -> None:
        """Write the named values as one request where the protocol allows."""
        ...
