"""Codecs: turning a device's register words into values and back, by its map.

Conversion between words and numbers is pymodbus's own (`convert_to_registers` /
`convert_from_registers`); this module adds scaling, ranges, word order, "unavailable" and the
project's units. Pure: no I/O, no asyncio. A value a register cannot carry is a `BadValue`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from pymodbus.client.mixin import ModbusClientMixin

from base.devicemap import UNIT_SCALE, ReadBlock, Register, RegisterMap, Value, ValueType
from drivers.errors import BadValue

_DT = ModbusClientMixin.DATATYPE

_PYMODBUS_TYPE = {
    ValueType.U16: _DT.UINT16,
    ValueType.I16: _DT.INT16,
    ValueType.U32: _DT.UINT32,
    ValueType.I32: _DT.INT32,
    ValueType.U64: _DT.UINT64,
    ValueType.I64: _DT.INT64,
    ValueType.F32: _DT.FLOAT32,
    ValueType.F64: _DT.FLOAT64,
    ValueType.STRING: _DT.STRING,
}
_INT_RANGE = {
    ValueType.U16: (0, 2**16 - 1),
    ValueType.I16: (-(2**15), 2**15 - 1),
    ValueType.U32: (0, 2**32 - 1),
    ValueType.I32: (-(2**31), 2**31 - 1),
    ValueType.U64: (0, 2**64 - 1),
    ValueType.I64: (-(2**63), 2**63 - 1),
}
_F32_MAX = 3.4028234663852886e38


def decode(reg: Register, words: Sequence[int]) -> Value | None:
    """Turn raw words into an engineering value; None when the device says "unavailable"."""
    if len(words) != reg.words:
        raise BadValue(reg.name, f"expected {reg.words} registers, got {len(words)}")
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise BadValue(reg.name, f"register value {word} is outside 0-65535")
    if reg.type is ValueType.STRING:
        # Text is stored in reading order whatever the device's word order for numbers.
        try:
            text = ModbusClientMixin.convert_from_registers(list(words), _DT.STRING)
        except UnicodeDecodeError as exc:
            raise BadValue(reg.name, f"text is not UTF-8: {exc}") from exc
        assert isinstance(text, str)
        return text.rstrip("\x00 ")
    if reg.unavailable_all_ones and all(w == 0xFFFF for w in words):
        return None
    raw = ModbusClientMixin.convert_from_registers(
        list(words), _PYMODBUS_TYPE[reg.type], word_order=reg.word_order
    )
    assert isinstance(raw, (int, float))
    if isinstance(raw, float) and math.isnan(raw):
        return None
    if reg.scale == 1.0 and isinstance(raw, int):
        return raw
    return raw * reg.scale


def encode(reg: Register, value: Value | None) -> list[int]:
    """Turn an engineering value into raw words; None encodes "unavailable" (NaN / all ones)."""
    if value is None:
        if reg.type.is_float:
            return _pack(reg, math.nan)
        return [0xFFFF] * reg.words
    if reg.type is ValueType.STRING:
        if not isinstance(value, str):
            raise BadValue(reg.name, f"expected text, got {value!r}")
        size = len(value.encode("utf-8"))
        if size > 2 * reg.words:
            raise BadValue(reg.name, f"text longer than {reg.words} registers: {value!r}")
        # Pad by bytes, not characters: "温度" is 6 bytes in UTF-8.
        padded = value + "\x00" * (2 * reg.words - size)
        return list(ModbusClientMixin.convert_to_registers(padded, _DT.STRING))
    if isinstance(value, (str, bool)):
        raise BadValue(reg.name, f"expected a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadValue(reg.name, f"not a finite number: {value!r}")
    if reg.type.is_float:
        try:
            raw = value / reg.scale
        except OverflowError:  # an int beyond any float
            raw = math.inf
        limit = _F32_MAX if reg.type is ValueType.F32 else sys.float_info.max
        if not abs(raw) <= limit:
            raise BadValue(
                reg.name,
                f"{_shown(value)} with scale {reg.scale:g} does not fit a "
                f"{32 if reg.type is ValueType.F32 else 64}-bit float",
            )
        return _pack(reg, float(raw))
    lo, hi = _INT_RANGE[reg.type]
    if isinstance(value, int) and reg.scale == 1.0:
        whole = value  # exact, even beyond 2**53 (64-bit counters)
    else:
        # Decimal keeps 64-bit values exact and scales like 0.01 free of binary rounding.
        whole = round(Decimal(value) / Decimal(repr(reg.scale)))
    if not lo <= whole <= hi:
        unit = f" {reg.unit}" if reg.unit else ""
        raise BadValue(
            reg.name,
            f"{_shown(value)}{unit} is outside what {reg.type} with scale {reg.scale:g} holds "
            f"({lo * reg.scale:g} to {hi * reg.scale:g})",
        )
    return _pack(reg, whole)


def _pack(reg: Register, raw: float | int | str) -> list[int]:
    words = ModbusClientMixin.convert_to_registers(
        raw, _PYMODBUS_TYPE[reg.type], word_order=reg.word_order
    )
    return list(words)


def _shown(value: float | int) -> str:
    """A number for a message; an integer too long for str() is shown by its size."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return str(value)


def decode_block(block: ReadBlock, words: Sequence[int]) -> dict[str, Value | None]:
    """Split the words of one read response into the values of its registers."""
    return {
        reg.name: decode(reg, words[reg.address - block.address : reg.end - block.address])
        for reg in block.registers
    }


@dataclass(frozen=True)
class WriteRequest:
    """One write request: FC6 for a single word, FC16 for one or more contiguous registers."""

    unit_id: int
    function_code: int
    address: int
    words: tuple[int, ...]


def write_plan(
    regmap: RegisterMap, values: Mapping[str, Value | None], unit_id: int | None = None
) -> tuple[WriteRequest, ...]:
    """Encode values and group contiguous FC16 registers into single requests."""
    regs = sorted((regmap.registers[n] for n in values), key=lambda r: r.address)
    requests: list[WriteRequest] = []
    run: list[Register] = []
    run_words: list[int] = []

    def flush() -> None:
        if run:
            unit = regmap.unit_of(run[0], unit_id)
            requests.append(WriteRequest(unit, 16, run[0].address, tuple(run_words)))
            run.clear()
            run_words.clear()

    for reg in regs:
        if not reg.access.writable:
            raise BadValue(regmap.name, f"register {reg.name} is read-only")
        try:
            words = encode(reg, values[reg.name])
        except BadValue as exc:
            raise BadValue(regmap.name, f"{reg.name}: {exc.message}") from None
        if reg.write_fc == 6:
            flush()
            requests.append(
                WriteRequest(regmap.unit_of(reg, unit_id), 6, reg.address, tuple(words))
            )
            continue
        if run and (
            reg.address != run[-1].end
            or regmap.unit_of(reg, unit_id) != regmap.unit_of(run[0], unit_id)
            or reg.end - run[0].address > 123
        ):
            flush()
        run.append(reg)
        run_words.extend(words)
    flush()
    return tuple(requests)


def in_project_units(reg: Register, value: Value | None) -> float | None:
    """A decoded numeric value converted to the project's units (W -> kW, Wh -> kWh, mA -> A)."""
    if value is None:
        return None
    if isinstance(value, str):
        raise BadValue(reg.name, f"expected a number, got text {value!r}")
    return float(value) * UNIT_SCALE[reg.unit][1]


def from_project_units(reg: Register, value: float) -> float:
    """The inverse of `in_project_units`: kW -> the register's unit."""
    return value / UNIT_SCALE[reg.unit][1]
