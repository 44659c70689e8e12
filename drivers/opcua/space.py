"""The OPC-UA address space flexcharge reads and the simulator serves.

Address space (what `simulator.opcua.OpcUaStationServer` serves, and what a real terminal or
regulation device must offer to be driven by flexcharge):

- namespace URI `urn:flexcharge:station` (`NAMESPACE_URI`);
- one object per device, `Objects/<object>`, NodeId `ns=<idx>;s=<object>`;
- under it one variable per name of the device's register map, `Objects/<object>/<name>`,
  NodeId `ns=<idx>;s=<object>.<name>`, browse names in the same namespace;
- each variable holds the engineering value in the unit of the map's register (what
  `drivers.codec.decode` produces: kW, kWh, %, s, enumeration codes), as an Int64 for integer registers
  without scaling (UInt64 for u64), a String for text and a Double otherwise (`variant_type`);
- a variable is writable if and only if the register's access is writable;
- "unavailable" (no vehicle, no limit signal in force) is a Null value with status `BadNoData`;
  a NaN Double is read as unavailable too. Both read as None.

Register addresses and unit ids do not matter over OPC-UA.
"""

from __future__ import annotations

import logging
import math

from asyncua import ua

from base.devicemap import Register, Value, ValueType
from drivers.codec import encode
from drivers.errors import BadValue

log = logging.getLogger(__name__)


NAMESPACE_URI = "urn:flexcharge:station"


def status_name(code: int) -> str:
    """The name of an OPC-UA status code, e.g. "BadUserAccessDenied"."""
    return ua.StatusCode(ua.UInt32(code)).name


def node_name(object_name: str, name: str) -> str:
    """The string identifier of a device variable: `<object>.<name>`."""
    return f"{object_name}.{name}"


def string_node(identifier: str, namespace: int) -> ua.NodeId:
    """The NodeId `ns=<namespace>;s=<identifier>`."""
    return ua.NodeId(ua.String(identifier), ua.Int16(namespace))


def variant_type(reg: Register) -> ua.VariantType:
    """The OPC-UA type of the variable that holds a register's engineering value."""
    if reg.type is ValueType.STRING:
        return ua.VariantType.String
    if reg.type.is_integer and reg.scale == 1.0:
        return ua.VariantType.UInt64 if reg.type is ValueType.U64 else ua.VariantType.Int64
    return ua.VariantType.Double


def engineering_variant(reg: Register, value: Value) -> ua.Variant:
    """`value` (in the register's unit) as the variant its variable holds; `BadValue` if it cannot be.

    The register's type and scale bound the value whatever the protocol (a u16 timeout stays
    within 0-65535 s), so a value Modbus would refuse is refused here too.
    """
    kind = variant_type(reg)
    if kind is ua.VariantType.String:
        if not isinstance(value, str):
            raise BadValue(reg.name, f"expected text, got {value!r}")
        encode(reg, value)
        return ua.Variant(value, kind)
    if isinstance(value, (str, bool)):
        raise BadValue(reg.name, f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise BadValue(reg.name, f"not a finite number: {value!r}")
    encode(reg, value)
    if kind is ua.VariantType.Double:
        return ua.Variant(float(value), kind)
    return ua.Variant(round(value), kind)
