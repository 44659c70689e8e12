"""Register maps and their codecs: how a device's values sit in 16-bit Modbus registers.

A `RegisterMap` is the in-memory form of one file in `configs/devices/`; the driver and the
simulator both use it, so a device is described once. This module is pure: no I/O, no asyncio.
Conversion between words and numbers is pymodbus's own (`convert_to_registers` /
`convert_from_registers`); this module adds scaling, ranges, word order and "unavailable".
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Literal

from pymodbus.client.mixin import ModbusClientMixin

from drivers.errors import BadValue

WordOrder = Literal["big", "little"]
Value = float | int | str
_DT = ModbusClientMixin.DATATYPE


class ValueType(StrEnum):
    """How a value is encoded in registers."""

    U16 = "u16"
    I16 = "i16"
    U32 = "u32"
    I32 = "i32"
    U64 = "u64"
    I64 = "i64"
    F32 = "f32"
    F64 = "f64"
    STRING = "string"

    @property
    def words(self) -> int:
        """Registers one value occupies (strings: given per register instead)."""
        return _WORDS[self]

    @property
    def is_float(self) -> bool:
        """True for IEEE-754 types."""
        return self in (ValueType.F32, ValueType.F64)

    @property
    def is_integer(self) -> bool:
        """True for the integer types."""
        return not self.is_float and self is not ValueType.STRING


_WORDS = {
    ValueType.U16: 1,
    ValueType.I16: 1,
    ValueType.U32: 2,
    ValueType.I32: 2,
    ValueType.U64: 4,
    ValueType.I64: 4,
    ValueType.F32: 2,
    ValueType.F64: 4,
    ValueType.STRING: 0,
}
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


class Table(StrEnum):
    """Which Modbus table a register lives in."""

    HOLDING = "holding"
    INPUT = "input"


class Access(StrEnum):
    """What a client may do with a register."""

    R = "r"
    W = "w"
    RW = "rw"

    @property
    def readable(self) -> bool:
        """True if a client may read the register."""
        return self in (Access.R, Access.RW)

    @property
    def writable(self) -> bool:
        """True if a client may write the register."""
        return self in (Access.W, Access.RW)


READ_FC = {Table.HOLDING: 3, Table.INPUT: 4}


@dataclass(frozen=True)
class Register:
    """One named value of a device: where it is, how it is encoded and what it means."""

    name: str
    address: int
    type: ValueType
    words: int
    access: Access = Access.R
    scale: float = 1.0
    unit: str = ""
    word_order: WordOrder = "big"
    read_fcs: frozenset[int] = frozenset({3})
    write_fc: int | None = None
    unit_id: int | None = None
    unavailable_all_ones: bool = False
    description: str = ""

    @property
    def end(self) -> int:
        """First address after this register."""
        return self.address + self.words

    def decode(self, words: Sequence[int]) -> Value | None:
        """Turn raw words into an engineering value; None when the device says "unavailable"."""
        if len(words) != self.words:
            raise BadValue(self.name, f"expected {self.words} registers, got {len(words)}")
        for word in words:
            if not 0 <= word <= 0xFFFF:
                raise BadValue(self.name, f"register value {word} is outside 0-65535")
        if self.type is ValueType.STRING:
            # Text is stored in reading order whatever the device's word order for numbers.
            try:
                text = ModbusClientMixin.convert_from_registers(list(words), _DT.STRING)
            except UnicodeDecodeError as exc:
                raise BadValue(self.name, f"text is not UTF-8: {exc}") from exc
            assert isinstance(text, str)
            return text.rstrip("\x00 ")
        if self.unavailable_all_ones and all(w == 0xFFFF for w in words):
            return None
        raw = ModbusClientMixin.convert_from_registers(
            list(words), _PYMODBUS_TYPE[self.type], word_order=self.word_order
        )
        assert isinstance(raw, (int, float))
        if isinstance(raw, float) and math.isnan(raw):
            return None
        if self.scale == 1.0 and isinstance(raw, int):
            return raw
        return raw * self.scale

    def encode(self, value: Value | None) -> list[int]:
        """Turn an engineering value into raw words; None encodes "unavailable" (NaN / all ones)."""
        if value is None:
            if self.type.is_float:
                return self._pack(math.nan)
            return [0xFFFF] * self.words
        if self.type is ValueType.STRING:
            if not isinstance(value, str):
                raise BadValue(self.name, f"expected text, got {value!r}")
            size = len(value.encode("utf-8"))
            if size > 2 * self.words:
                raise BadValue(self.name, f"text longer than {self.words} registers: {value!r}")
            # Pad by bytes, not characters: "温度" is 6 bytes in UTF-8.
            padded = value + "\x00" * (2 * self.words - size)
            return list(ModbusClientMixin.convert_to_registers(padded, _DT.STRING))
        if isinstance(value, (str, bool)):
            raise BadValue(self.name, f"expected a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadValue(self.name, f"not a finite number: {value!r}")
        if self.type.is_float:
            try:
                raw = value / self.scale
            except OverflowError:  # an int beyond any float
                raw = math.inf
            limit = _F32_MAX if self.type is ValueType.F32 else sys.float_info.max
            if not abs(raw) <= limit:
                raise BadValue(
                    self.name,
                    f"{_shown(value)} with scale {self.scale:g} does not fit a "
                    f"{32 if self.type is ValueType.F32 else 64}-bit float",
                )
            return self._pack(float(raw))
        lo, hi = _INT_RANGE[self.type]
        if isinstance(value, int) and self.scale == 1.0:
            whole = value  # exact, even beyond 2**53 (64-bit counters)
        else:
            # Decimal keeps 64-bit values exact and scales like 0.01 free of binary rounding.
            whole = round(Decimal(value) / Decimal(repr(self.scale)))
        if not lo <= whole <= hi:
            unit = f" {self.unit}" if self.unit else ""
            raise BadValue(
                self.name,
                f"{_shown(value)}{unit} is outside what {self.type} with scale {self.scale:g} holds "
                f"({lo * self.scale:g} to {hi * self.scale:g})",
            )
        return self._pack(whole)

    def _pack(self, raw: float | int | str) -> list[int]:
        words = ModbusClientMixin.convert_to_registers(
            raw, _PYMODBUS_TYPE[self.type], word_order=self.word_order
        )
        return list(words)


def _shown(value: float | int) -> str:
    """A number for a message; an integer too long for str() is shown by its size."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return str(value)


@dataclass(frozen=True)
class ReadBlock:
    """One read request that covers several registers."""

    unit_id: int
    function_code: int
    address: int
    count: int
    registers: tuple[Register, ...]

    def decode(self, words: Sequence[int]) -> dict[str, Value | None]:
        """Split the words of one response into the values of its registers."""
        return {
            reg.name: reg.decode(words[reg.address - self.address : reg.end - self.address])
            for reg in self.registers
        }


@dataclass(frozen=True)
class WriteRequest:
    """One write request: FC6 for a single word, FC16 for one or more contiguous registers."""

    unit_id: int
    function_code: int
    address: int
    words: tuple[int, ...]


@dataclass(frozen=True)
class RegisterMap:
    """A device's registers by name, as loaded from one file in `configs/devices/`."""

    name: str
    title: str
    kind: str
    registers: Mapping[str, Register]
    default_unit_id: int
    max_read_words: int = 125
    max_gap: int = 0
    idle_timeout_s: float | None = None
    max_connections: int | None = None
    enums: Mapping[str, Mapping[int, str]] = field(default_factory=dict)
    driver: str | None = None
    failsafe_timeout_s: float | None = None
    min_current_a: float | None = None
    notes: str = ""
    _by_address: tuple[Register, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_by_address", tuple(sorted(self.registers.values(), key=lambda r: r.address))
        )

    def __getitem__(self, name: str) -> Register:
        return self.registers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.registers

    def problems(self) -> list[tuple[str, str]]:
        """Inconsistencies of the map as (register name, message) pairs; empty when sound."""
        found: list[tuple[str, str]] = []
        for reg in self.registers.values():
            if not 0 <= reg.address <= 65535:
                found.append((reg.name, f"address {reg.address} is outside 0-65535"))
            elif reg.end > 65536:
                found.append((reg.name, f"ends at {reg.end - 1}, beyond register 65535"))
            if reg.words < 1:
                found.append((reg.name, "occupies no register"))
            if reg.type is not ValueType.STRING and reg.words != reg.type.words:
                found.append((reg.name, f"{reg.type} takes {reg.type.words} registers"))
            if reg.scale == 0 or not math.isfinite(reg.scale):
                found.append((reg.name, f"scale must be a non-zero number, got {reg.scale}"))
            if reg.access.writable:
                if reg.write_fc not in (6, 16):
                    found.append((reg.name, "a writable register needs write_fc 6 or 16"))
                elif reg.write_fc == 6 and reg.words != 1:
                    found.append(
                        (reg.name, "a multi-register value must be written with FC16, not FC6")
                    )
            if reg.access.readable and not reg.read_fcs:
                found.append((reg.name, "a readable register needs a read function code"))
        by_table: dict[tuple[int, int], list[Register]] = {}
        for reg in self._by_address:
            unit = reg.unit_id if reg.unit_id is not None else self.default_unit_id
            # Registers overlap only if they share a unit and a table; a shared holding/input
            # space (devices that answer FC3 and FC4 alike) is checked as one table.
            for fc in reg.read_fcs or {3}:
                by_table.setdefault((unit, fc), []).append(reg)
        for (unit, fc), regs in by_table.items():
            for before, after in itertools.pairwise(regs):
                if after.address < before.end:
                    found.append(
                        (
                            after.name,
                            f"overlaps {before.name} (unit {unit}, FC{fc}: "
                            f"{before.address}-{before.end - 1})",
                        )
                    )
        return found

    def unit_of(self, reg: Register, unit_id: int | None = None) -> int:
        """The unit id a register is addressed at, given the device's configured unit id."""
        if reg.unit_id is not None:
            return reg.unit_id
        return self.default_unit_id if unit_id is None else unit_id

    def read_plan(self, names: Iterable[str], unit_id: int | None = None) -> tuple[ReadBlock, ...]:
        """Group the named registers into as few read requests as the device allows."""
        wanted = sorted((self.registers[n] for n in names), key=lambda r: r.address)
        blocks: list[ReadBlock] = []
        groups: dict[tuple[int, int], list[Register]] = {}
        for reg in wanted:
            if not reg.access.readable:
                raise KeyError(f"{self.name}: register {reg.name} is not readable")
            fc = min(reg.read_fcs)
            groups.setdefault((self.unit_of(reg, unit_id), fc), []).append(reg)
        for (unit, fc), regs in groups.items():
            current: list[Register] = []
            for reg in regs:
                if current and (
                    reg.address - current[-1].end > self.max_gap
                    or reg.end - current[0].address > self.max_read_words
                ):
                    blocks.append(_block(unit, fc, current))
                    current = []
                current.append(reg)
            if current:
                blocks.append(_block(unit, fc, current))
        return tuple(blocks)

    def write_plan(
        self, values: Mapping[str, Value | None], unit_id: int | None = None
    ) -> tuple[WriteRequest, ...]:
        """Encode values and group contiguous FC16 registers into single requests."""
        regs = sorted((self.registers[n] for n in values), key=lambda r: r.address)
        requests: list[WriteRequest] = []
        run: list[Register] = []
        run_words: list[int] = []

        def flush() -> None:
            if run:
                unit = self.unit_of(run[0], unit_id)
                requests.append(WriteRequest(unit, 16, run[0].address, tuple(run_words)))
                run.clear()
                run_words.clear()

        for reg in regs:
            if not reg.access.writable:
                raise BadValue(self.name, f"register {reg.name} is read-only")
            try:
                words = reg.encode(values[reg.name])
            except BadValue as exc:
                raise BadValue(self.name, f"{reg.name}: {exc.message}") from None
            if reg.write_fc == 6:
                flush()
                requests.append(
                    WriteRequest(self.unit_of(reg, unit_id), 6, reg.address, tuple(words))
                )
                continue
            if run and (
                reg.address != run[-1].end
                or self.unit_of(reg, unit_id) != self.unit_of(run[0], unit_id)
                or reg.end - run[0].address > 123
            ):
                flush()
            run.append(reg)
            run_words.extend(words)
        flush()
        return tuple(requests)

    def label(self, enum: str, raw: Value | None) -> str | None:
        """The name an enumeration in the map gives a raw value (None if it has none)."""
        if raw is None or isinstance(raw, str):
            return None
        return self.enums.get(enum, {}).get(int(raw))

    def readable(self) -> tuple[str, ...]:
        """Names of every readable register, in address order."""
        return tuple(r.name for r in self._by_address if r.access.readable)


def _block(unit: int, fc: int, regs: list[Register]) -> ReadBlock:
    start = regs[0].address
    return ReadBlock(unit, fc, start, max(r.end for r in regs) - start, tuple(regs))


UNIT_SCALE = {
    # engineering unit -> factor to the project's units (kW, kWh, A, V, %, s)
    "W": ("kW", 1e-3),
    "kW": ("kW", 1.0),
    "Wh": ("kWh", 1e-3),
    "kWh": ("kWh", 1.0),
    "mA": ("A", 1e-3),
    "A": ("A", 1.0),
    "V": ("V", 1.0),
    "%": ("%", 1.0),
    "s": ("s", 1.0),
    "Hz": ("Hz", 1.0),
    "": ("", 1.0),
}


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
