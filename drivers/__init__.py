"""Device I/O: register maps and codecs, Modbus transport, pile and meter drivers.

Everything that touches a device lives here; every failure is a `DriverError`.
"""

from drivers.errors import (
    BadValue,
    ConnectionLost,
    DeviceFault,
    DeviceRejected,
    DeviceTimeout,
    DriverError,
)

__all__ = [
    "BadValue",
    "ConnectionLost",
    "DeviceFault",
    "DeviceRejected",
    "DeviceTimeout",
    "DriverError",
]
