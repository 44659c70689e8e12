"""Codecs: turning a device's register words into values and back, by its map.

Conversion between words and numbers is pymodbus's (`convert_to_registers` /
`convert_from_registers`), done for numbers with the same `struct` formats directly: every device
read and write of every simulated day goes through here, and pymodbus's general path costs
several times as much (tests check that the two agree bit for bit). This module adds scaling,
ranges, word order, "unavailable" and the project's units. Pure: no I/O, no asyncio. A value a
register cannot carry is a `BadValue`.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any

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
# pymodbus's struct format of each numeric type, and its words as big-endian 16-bit integers.
_NUMBER: dict[ValueType, tuple[struct.Struct, struct.Struct]] = {
    t: (struct.Struct(f">{dt.value[0]}"), struct.Struct(f">{dt.value[1]}H"))
    for t, dt in _PYMODBUS_TYPE.items()
    if t is not ValueType.STRING
}
# Below this every integer is a float, so a scaled value may be divided in floats (`_scaled`).
_EXACT = 2.0**52


def decode(reg: Register, words: Sequence[int]) -> Value | None:
    """Turn raw words into an engineering value; None when the device says "unavailable"."""
    if len(words) != reg.words:
        raise BadValue(reg.name, f"expected {reg.words} registers, got {len(words)}")
    number = _NUMBER.get(reg.type)
    if number is None:
        return _decode_text(reg, words)
    value_struct, words_struct = number
    raw: float | int
    try:
        data = words_struct.pack(*(reversed(words) if reg.word_order == "little" else words))
    except struct.error:
        # Not 16-bit integers: say which word, or let pymodbus say what else is wrong.
        _check_words(reg, words)
        if reg.unavailable_all_ones and all(w == 0xFFFF for w in words):
            return None
        converted = ModbusClientMixin.convert_from_registers(
            list(words), _PYMODBUS_TYPE[reg.type], word_order=reg.word_order
        )
        assert isinstance(converted, (int, float))
        raw = converted
    else:
        if reg.unavailable_all_ones and data.count(0xFF) == len(data):
            return None
        raw = value_struct.unpack(data)[0]
    if isinstance(raw, float) and math.isnan(raw):
        return None
    if reg.mask is not None:
        raw = (int(raw) & reg.mask) >> _shift(reg.mask)
    if reg.scale == 1.0 and isinstance(raw, int):
        return raw
    return raw * reg.scale


def _check_words(reg: Register, words: Sequence[int]) -> None:
    for word in words:
        if not 0 <= word <= 0xFFFF:
            raise BadValue(reg.name, f"register value {word} is outside 0-65535")


def _shift(mask: int) -> int:
    """How far a masked field sits from bit 0."""
    return (mask & -mask).bit_length() - 1


def _decode_text(reg: Register, words: Sequence[int]) -> str:
    _check_words(reg, words)
    if reg.text_encoding == "utf-16":
        data = struct.pack(f">{len(words)}H", *words)
        try:
            return data.decode("utf-16-be").rstrip("\x00 ")
        except UnicodeDecodeError as exc:
            raise BadValue(reg.name, f"text is not UTF-16: {exc}") from exc
    # Text is stored in reading order whatever the device's word order for numbers.
    try:
        text = ModbusClientMixin.convert_from_registers(list(words), _DT.STRING)
    except UnicodeDecodeError as exc:
        raise BadValue(reg.name, f"text is not UTF-8: {exc}") from exc
    assert isinstance(text, str)
    return text.rstrip("\x00 ")


def encode(reg: Register, value: Value | None) -> list[int]:
    """Turn an engineering value into raw words; None encodes "unavailable" (NaN / all ones)."""
    if value is None:
        if reg.type.is_float:
            return _pack(reg, math.nan)
        return [0xFFFF] * reg.words
    if reg.type is ValueType.STRING:
        if not isinstance(value, str):
            raise BadValue(reg.name, f"expected text, got {value!r}")
        if reg.text_encoding == "utf-16":
            data = value.encode("utf-16-be")
            if len(data) > 2 * reg.words:
                raise BadValue(reg.name, f"text longer than {reg.words} characters: {value!r}")
            data += b"\x00" * (2 * reg.words - len(data))
            return list(struct.unpack(f">{reg.words}H", data))
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
    whole = _scaled(value, reg.scale)
    if not lo <= whole <= hi:
        unit = f" {reg.unit}" if reg.unit else ""
        raise BadValue(
            reg.name,
            f"{_shown(value)}{unit} is outside what {reg.type} with scale {reg.scale:g} holds "
            f"({lo * reg.scale:g} to {hi * reg.scale:g})",
        )
    if reg.mask is not None:
        shift = _shift(reg.mask)
        if whole < 0 or (whole << shift) & ~reg.mask:
            raise BadValue(reg.name, f"{_shown(value)} does not fit the bits {reg.mask:#x}")
        whole <<= shift
    return _pack(reg, whole)


def encoder(reg: Register) -> Callable[[Value | None], list[int]]:
    """`encode` for one register, with its type, scale and range worked out once (a device
    written or served every second encodes the same registers again and again)."""
    number = _NUMBER.get(reg.type)
    if number is None or reg.mask is not None:
        return partial(encode, reg)
    pack = number[0].pack
    unpack = number[1].unpack
    little = reg.word_order == "little"
    scale = reg.scale
    if reg.type.is_float:
        limit = _F32_MAX if reg.type is ValueType.F32 else sys.float_info.max

        def encode_float(value: Value | None) -> list[int]:
            if type(value) is float and -limit <= value / scale <= limit:
                words = list(unpack(pack(value / scale)))
                if little:
                    words.reverse()
                return words
            return encode(reg, value)  # None, NaN, ints, what does not fit: say why

        return encode_float
    lo, hi = _INT_RANGE[reg.type]

    def encode_int(value: Value | None) -> list[int]:
        if type(value) is float and -_EXACT < value < _EXACT:
            # `_scaled`'s float path, in line (a device's counters are encoded every read).
            quotient = value / scale
            if -_EXACT < quotient < _EXACT:
                fraction = quotient - math.floor(quotient)
                if abs(fraction - 0.5) > 1e-9 * max(1.0, abs(quotient)):
                    whole = round(quotient)
                else:
                    whole = _scaled(value, scale)
            else:
                whole = _scaled(value, scale)
        elif (type(value) is float and math.isfinite(value)) or type(value) is int:
            whole = _scaled(value, scale)
        else:
            return encode(reg, value)
        if lo <= whole <= hi:
            words = list(unpack(pack(whole)))
            if little:
                words.reverse()
            return words
        return encode(reg, value)

    return encode_int


# What `run_encoder`'s encoders have seen of a value before the first: no value at all.
_UNSEEN = object()


def run_encoder(
    regs: Sequence[Register], address: int, count: int
) -> Callable[[Mapping[str, Value | None]], tuple[int, ...] | None] | None:
    """`encoder` for number registers that fill `count` words from `address` one after the
    other (a block a device is read in), all in one go: named values in the project's units
    (`from_project_units` of each) give the block's words as `encoder` gives each register's,
    or None when one is not a number that fits (None, NaN, text, out of range: `encode` then
    deals with it, one register at a time). None if the registers are not such a run (text,
    bit fields, words turned round, gaps)."""
    layout, at = ">", address
    specs: list[tuple[str, float, bool, float, float, float]] = []
    for reg in sorted(regs, key=lambda r: r.address):
        number = _NUMBER.get(reg.type)
        if number is None or reg.mask is not None or reg.word_order == "little":
            return None
        if reg.address != at:
            return None
        layout += number[0].format.lstrip(">")
        per_unit = UNIT_SCALE[reg.unit][1]
        if reg.type.is_float:
            limit = _F32_MAX if reg.type is ValueType.F32 else sys.float_info.max
            specs.append((reg.name, per_unit, True, reg.scale, -limit, limit))
        else:
            lo, hi = _INT_RANGE[reg.type]
            specs.append((reg.name, per_unit, False, reg.scale, lo, hi))
        at = reg.end
    if at != address + count:
        return None
    pack = struct.Struct(layout).pack
    unpack = struct.Struct(f">{count}H").unpack

    # Each value last encoded and what it packed as: from one read of a device to the next most
    # of its values are the very same objects (its rating, its mode), and an object encodes as
    # it did (a zero keeps its sign). Holding them keeps `is` from matching a new object. A new
    # object equal to the last, of the same type and not zero (whose sign may differ), encodes
    # as it did too (a countdown at rest, a power held at its limit).
    seen: list[object] = [_UNSEEN] * len(specs)
    packed: list[float | int] = [0] * len(specs)

    def encode_run(values: Mapping[str, Value | None]) -> tuple[int, ...] | None:
        raws: list[float | int] = []
        get = values.get
        for i, (name, per_unit, is_float, scale, lo, hi) in enumerate(specs):
            number = get(name)
            last = seen[i]
            if number is last or (number == last and number and type(number) is type(last)):
                raws.append(packed[i])
                continue
            if type(number) is not float and type(number) is not int:
                return None
            value = float(number) / per_unit
            # As `encoder` has each: a float over its scale; an integer scaled and rounded.
            if is_float:
                if not lo <= value / scale <= hi:
                    return None
                seen[i], packed[i] = number, value / scale
                raws.append(value / scale)
                continue
            quotient = value / scale
            # `_scaled`'s common path, in line; it decides the rest.
            if -_EXACT < value < _EXACT and -_EXACT < quotient < _EXACT:
                fraction = quotient - math.floor(quotient)
                if abs(fraction - 0.5) > 1e-9 * max(1.0, abs(quotient)):
                    whole = round(quotient)
                else:
                    whole = _scaled(value, scale)
            elif math.isfinite(value):
                whole = _scaled(value, scale)
            else:
                return None
            if not lo <= whole <= hi:
                return None
            seen[i], packed[i] = number, whole
            raws.append(whole)
        return unpack(pack(*raws))

    return encode_run


def _scaled(value: float | int, scale: float) -> int:
    """`value / scale` rounded to the nearest integer (halves to even), as exactly as Decimal
    arithmetic on the scale as written (0.01, not its binary neighbour) would round it."""
    if isinstance(value, int) and scale == 1.0:
        return value  # exact, even beyond 2**53 (64-bit counters)
    if -_EXACT < value < _EXACT:
        quotient = value / scale
        # The float quotient is within a few parts in 1e16 of the exact one: unless it lies
        # that close to a half, both round to the same integer.
        if -_EXACT < quotient < _EXACT:
            fraction = quotient - math.floor(quotient)
            if abs(fraction - 0.5) > 1e-9 * max(1.0, abs(quotient)):
                return round(quotient)
    # Decimal keeps 64-bit values exact and scales like 0.01 free of binary rounding.
    return round(Decimal(value) / Decimal(repr(scale)))


def _pack(reg: Register, raw: float | int | str) -> list[int]:
    number = _NUMBER.get(reg.type)
    if number is None or isinstance(raw, str):
        words = ModbusClientMixin.convert_to_registers(
            raw, _PYMODBUS_TYPE[reg.type], word_order=reg.word_order
        )
        return list(words)
    value_struct, words_struct = number
    packed = list(words_struct.unpack(value_struct.pack(raw)))
    if reg.word_order == "little":
        packed.reverse()
    return packed


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


class BlockDecoder:
    """`decode_block` for one block, with where and how each register sits worked out once: the
    whole response is unpacked in one go, then each value read from it. A response the same as
    the last one (a device at rest; the very same tuple, from an in-process link) gives the same
    values again without decoding them."""

    def __init__(self, block: ReadBlock) -> None:
        self.block = block
        self._last: tuple[Sequence[int], dict[str, Value | None]] | None = None
        self._words = struct.Struct(f">{block.count}H")
        self._fields: list[tuple[str, int, int, Callable[..., tuple[Any, ...]], float, bool]] = []
        self._others: list[Register] = []
        # All the numbers in one unpacking, where they follow each other without overlapping
        # (as a map's registers do): one format, with pad bytes for what lies between.
        layout: str | None = ">"
        at = 0
        for reg in block.registers:
            number = _NUMBER.get(reg.type)
            if number is None or reg.word_order == "little" or reg.mask is not None:
                # Text, words to turn round or bits to pick out: one at a time.
                self._others.append(reg)
                continue
            offset = 2 * (reg.address - block.address)
            ones = 2 * reg.words if reg.unavailable_all_ones else 0
            self._fields.append(
                (reg.name, offset, ones, number[0].unpack_from, reg.scale, reg.type.is_float)
            )
            if layout is not None and offset >= at:
                layout += "x" * (offset - at) + number[0].format.lstrip(">")
                at = offset + 2 * reg.words
            else:
                layout = None
        self._all = None if layout is None else struct.Struct(layout)
        # For that one unpacking: the names in order, and which values to scale, to check for
        # "unavailable" (all ones) and for NaN, by their place.
        fields = self._fields
        self._names = tuple(f[0] for f in fields)
        self._scaled = tuple((f[0], i, f[4]) for i, f in enumerate(fields) if f[4] != 1.0)
        self._ones = tuple((f[0], f[1], f[2]) for f in fields if f[2])
        self._floats = tuple(f[0] for f in fields if f[5])

    def __call__(self, words: Sequence[int]) -> Mapping[str, Value | None]:
        """The values of the block's registers in `words`, as `decode_block` has them (the
        decoder's own mapping: the same one while the words stay the same)."""
        last = self._last
        if last is not None and (last[0] is words or last[0] == words):
            return last[1]
        values = self._decode(words)
        # A tuple cannot change under the cache; anything else is copied.
        self._last = (words if type(words) is tuple else list(words), values)
        return values

    def _decode(self, words: Sequence[int]) -> dict[str, Value | None]:
        block = self.block
        try:
            data = self._words.pack(*words)
        except struct.error:
            return decode_block(block, words)  # a word count or value that is wrong: say which
        values: dict[str, Value | None]
        if self._all is not None:
            raws = self._all.unpack_from(data)
            values = dict(zip(self._names, raws, strict=True))
            for name, index, scale in self._scaled:
                values[name] = raws[index] * scale
            for name, offset, ones in self._ones:
                if data.count(0xFF, offset, offset + ones) == ones:
                    values[name] = None
            for name in self._floats:
                value = values[name]
                if value != value:  # NaN
                    values[name] = None
        else:
            values = {}
            for name, offset, ones, unpack_from, scale, is_float in self._fields:
                if ones and data.count(0xFF, offset, offset + ones) == ones:
                    values[name] = None
                    continue
                raw = unpack_from(data, offset)[0]
                if is_float and raw != raw:  # NaN
                    values[name] = None
                else:
                    values[name] = raw if scale == 1.0 else raw * scale
        if not self._others:
            return values
        for reg in self._others:
            start = reg.address - block.address
            values[reg.name] = decode(reg, words[start : start + reg.words])
        return {reg.name: values[reg.name] for reg in block.registers}


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
    return WritePlan(regmap, tuple(values), unit_id).requests(values)


class WritePlan:
    """How writes of the same registers go out (`write_plan`), worked out once for them."""

    def __init__(
        self, regmap: RegisterMap, names: Sequence[str], unit_id: int | None = None
    ) -> None:
        self.map = regmap
        regs = sorted((regmap.registers[n] for n in names), key=lambda r: r.address)
        # (unit, function code, address, registers) of each request, in address order.
        self._requests: list[tuple[int, int, int, list[Register]]] = []
        run: list[Register] = []

        def flush() -> None:
            if run:
                unit = regmap.unit_of(run[0], unit_id)
                self._requests.append((unit, 16, run[0].address, list(run)))
                run.clear()

        for reg in regs:
            if reg.write_fc == 6:
                flush()
                self._requests.append((regmap.unit_of(reg, unit_id), 6, reg.address, [reg]))
                continue
            if run and (
                reg.address != run[-1].end
                or regmap.unit_of(reg, unit_id) != regmap.unit_of(run[0], unit_id)
                or reg.end - run[0].address > 123
            ):
                flush()
            run.append(reg)
        flush()
        self._encoders = {reg.name: encoder(reg) for reg in regs}
        # The last values written and their requests: a controller writes the same again and
        # again. Not for floats, whose equal values 0.0 and -0.0 are not the same words.
        self._repeatable = not any(reg.type.is_float for reg in regs)
        self._last: (
            tuple[dict[str, Value | None], tuple[type, ...], tuple[WriteRequest, ...]] | None
        ) = None

    def requests(self, values: Mapping[str, Value | None]) -> tuple[WriteRequest, ...]:
        """The requests that write `values` (the names the plan was made for)."""
        if not self._repeatable:
            return self._encode(values)
        # Equal values are not enough: True equals 1, but is no number to write.
        types = tuple(map(type, values.values()))
        last = self._last
        if last is not None and last[0] == values and last[1] == types:
            return last[2]
        requests = self._encode(values)
        self._last = (dict(values), types, requests)
        return requests

    def _encode(self, values: Mapping[str, Value | None]) -> tuple[WriteRequest, ...]:
        requests = []
        for unit, function_code, address, regs in self._requests:
            words: list[int] = []
            for reg in regs:
                if not reg.access.writable:
                    raise BadValue(self.map.name, f"register {reg.name} is read-only")
                try:
                    words.extend(self._encoders[reg.name](values[reg.name]))
                except BadValue as exc:
                    raise BadValue(self.map.name, f"{reg.name}: {exc.message}") from None
            requests.append(WriteRequest(unit, function_code, address, tuple(words)))
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
