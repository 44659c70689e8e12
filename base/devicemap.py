"""Device maps: how a device's values sit in its registers, and what each kind of map must hold.

A `RegisterMap` is the in-memory form of one file in `configs/devices/`; the drivers, the
simulator and the station loader all use it, so a device is described once. This module is the
model only (addresses, types, access, read plans and the contracts of each map kind); turning
words into values is `drivers.codec`'s job.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, TypeGuard

WordOrder = Literal["big", "little"]
TextEncoding = Literal["utf-8", "utf-16"]
Value = float | int | str


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
# The function codes a map may say its device answers: reads of holding and input registers,
# writes of one and of several registers.
FUNCTION_CODES = frozenset({3, 4, 6, 16})


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
    # The bits of the raw integer that hold the value (None: all of them), e.g. 0x7F00 for a
    # state kept in one byte of a 32-bit register pair.
    mask: int | None = None
    # How a string is stored: "utf-8" two bytes a register, "utf-16" one character a register.
    text_encoding: TextEncoding = "utf-8"

    @property
    def end(self) -> int:
        """First address after this register."""
        return self.address + self.words


@dataclass(frozen=True)
class ReadBlock:
    """One read request that covers several registers."""

    unit_id: int
    function_code: int
    address: int
    count: int
    registers: tuple[Register, ...]


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
    # The function codes the device answers; any other is refused with exception 01. Empty:
    # those its registers are read and written with.
    function_codes: frozenset[int] = frozenset()
    _by_address: tuple[Register, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_by_address", tuple(sorted(self.registers.values(), key=lambda r: r.address))
        )
        if not self.function_codes:
            used = {fc for r in self.registers.values() for fc in r.read_fcs}
            used |= {r.write_fc for r in self.registers.values() if r.write_fc is not None}
            object.__setattr__(self, "function_codes", frozenset(used))

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
            found.extend((reg.name, message) for message in _field_problems(reg))
            unanswered = sorted(
                fc
                for fc in (*reg.read_fcs, *(() if reg.write_fc is None else (reg.write_fc,)))
                if fc not in self.function_codes
            )
            if unanswered:
                listed = ", ".join(map(str, sorted(self.function_codes)))
                found.append(
                    (
                        reg.name,
                        f"uses function code {', '.join(map(str, unanswered))}, which the "
                        f"device does not answer (function_codes: {listed})",
                    )
                )
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
        """Group the named registers into as few read requests as the device allows: a request
        may run through registers not asked for (the device serves them; they are not decoded),
        and across at most `max_gap` addresses no register serves."""
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
                    self._hole(unit, fc, current[-1].end, reg.address, unit_id) > self.max_gap
                    or reg.end - current[0].address > self.max_read_words
                ):
                    blocks.append(_block(unit, fc, current))
                    current = []
                current.append(reg)
            if current:
                blocks.append(_block(unit, fc, current))
        return tuple(blocks)

    def _hole(self, unit: int, fc: int, start: int, end: int, unit_id: int | None) -> int:
        """How many addresses from `start` to `end` no register of the map serves to `fc` at
        `unit`: a read may span registers it does not want (the device serves them), but only
        `max_gap` addresses it does not serve."""
        served = sum(
            min(r.end, end) - max(r.address, start)
            for r in self._by_address
            if r.address < end
            and r.end > start
            and r.access.readable
            and fc in r.read_fcs
            and self.unit_of(r, unit_id) == unit
        )
        return end - start - served

    def label(self, enum: str, raw: Value | None) -> str | None:
        """The name an enumeration in the map gives a raw value (None if it has none)."""
        if raw is None or isinstance(raw, str):
            return None
        return self.enums.get(enum, {}).get(int(raw))

    def readable(self) -> tuple[str, ...]:
        """Names of every readable register, in address order."""
        return tuple(r.name for r in self._by_address if r.access.readable)


def _field_problems(reg: Register) -> list[str]:
    """What is wrong with a register's bit mask or text encoding."""
    found = []
    if reg.mask is not None:
        if not reg.type.is_integer or reg.type.words > 2:
            found.append(f"a mask needs a 16- or 32-bit integer, not {reg.type}")
        elif not 0 < reg.mask < 1 << (16 * reg.type.words):
            found.append(f"mask {reg.mask:#x} does not fit {reg.type}")
    if reg.text_encoding != "utf-8" and reg.type is not ValueType.STRING:
        found.append(f"only strings take a text encoding ({reg.type} does not)")
    return found


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


class PileState(StrEnum):
    """What a pile is doing, in the words of the pile maps' `state` enumeration."""

    AVAILABLE = "available"
    CONNECTED = "connected"
    CHARGING = "charging"
    DISCHARGING = "discharging"
    FINISHED = "finished"
    FAULT = "fault"
    UNAVAILABLE = "unavailable"

    @property
    def vehicle_present(self) -> bool:
        """True when a vehicle is plugged in."""
        return self in _VEHICLE_PRESENT


# The states with a vehicle plugged in (asked of every pile many times a cycle).
_VEHICLE_PRESENT = frozenset(
    (PileState.CONNECTED, PileState.CHARGING, PileState.DISCHARGING, PileState.FINISHED)
)


class PileMode(StrEnum):
    """The direction a pile is told to work in."""

    IDLE = "idle"
    CHARGE = "charge"
    DISCHARGE = "discharge"


@dataclass(frozen=True)
class Contract:
    """What a map of one kind (or one charger make) must and may define for its driver."""

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    enums: tuple[str, ...] = ()


PILE = Contract(
    required=(
        "state",
        "power",
        "applied_setpoint",
        "max_charge_power",
        "energy_import",
        "setpoint",
        "mode",
        "heartbeat",
        "comm_timeout",
        "fallback_power",
    ),
    optional=(
        "soc",
        "ev_max_power",
        "ev_capacity",
        "max_discharge_power",
        "min_power",
        "energy_export",
        "session_energy",
        "session_id",
        "fallback_countdown",
        "fault_code",
    ),
    enums=("state", "mode"),
)
METER_PHASES = (
    "voltage_l1",
    "voltage_l2",
    "voltage_l3",
    "current_l1",
    "current_l2",
    "current_l3",
    "power_l1",
    "power_l2",
    "power_l3",
)
# `utility_limit`: the import limit the utility currently allows at the connection point, as a
# smart metering terminal relays it (None or NaN: no limit signal in force). `clock`: the device's
# own time (epoch seconds), which says whether its readings move on.
METER = Contract(
    required=("power",),
    optional=(
        *METER_PHASES,
        "energy_import",
        "energy_export",
        "frequency",
        "utility_limit",
        "clock",
    ),
)
ChargerDriver = Literal["alfen", "vestel", "abb-terra-ac"]
# Each AC charger make's own registers (a charger map names its make as `[device] driver`).
CHARGERS: Mapping[ChargerDriver, Contract] = {
    "alfen": Contract(
        required=(
            "power",
            "availability",
            "mode3_state",
            "applied_current",
            "validity_time_left",
            "setpoint",
            "safe_current",
            "setpoint_in_use",
            "station_max_current",
        )
    ),
    "vestel": Contract(
        required=(
            "cp_state",
            "charging",
            "cable_state",
            "power",
            "max_hw_current",
            "min_hw_current",
            "setpoint",
            "life_bit",
            "comm_timeout",
            "failsafe_current",
        )
    ),
    "abb-terra-ac": Contract(
        required=(
            "state",
            "power",
            "applied_current",
            "max_rated_current",
            "setpoint",
            "comm_timeout",
        )
    ),
}


def is_charger_driver(name: object) -> TypeGuard[ChargerDriver]:
    """True when flexcharge has a driver for the charger make `name`."""
    return name in CHARGERS
