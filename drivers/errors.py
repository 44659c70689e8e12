"""The one exception tree for everything that can go wrong talking to a device.

Every failure a driver sees (a refused connection, a timeout, a Modbus exception response, a
value that cannot be encoded or makes no sense) is raised as a subclass of `DriverError` that names
the device, so the controller can log it once and decide what is safe without knowing the protocol.
"""

from __future__ import annotations


class DriverError(Exception):
    """A device could not be read or written. `device` names it as the station config does."""

    def __init__(self, device: str, message: str) -> None:
        super().__init__(f"{device}: {message}")
        self.device = device
        self.message = message


class ConnectionLost(DriverError):
    """The connection to the device could not be opened or was lost."""


class DeviceTimeout(DriverError):
    """The device did not answer in time."""


class DeviceRejected(DriverError):
    """The device refused the request (`code`: the Modbus exception code or OPC-UA status code)."""

    def __init__(self, device: str, message: str, code: int) -> None:
        super().__init__(device, message)
        self.code = code


class BadValue(DriverError):
    """A value read from or meant for the device is invalid (NaN, out of range, unencodable)."""


class DeviceFault(DriverError):
    """The device answers but reports a fault or does not do what it was told."""
