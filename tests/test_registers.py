"""Unit tests for base.devicemap: codecs, read/write plans, map checks and unit conversion.

Expected register words are computed independently with `struct` (big-endian bytes split into
16-bit words; "little" word order is the same words reversed), never with the code under test.
"""

from __future__ import annotations

import asyncio
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from base.config import CONFIG_ROOT
from base.devicemap import Access, ReadBlock, Register, RegisterMap, Value, ValueType, WordOrder
from base.mapfile import load_register_map
from drivers.codec import (
    BlockDecoder,
    WritePlan,
    WriteRequest,
    decode,
    decode_block,
    encode,
    encoder,
    from_project_units,
    in_project_units,
    run_encoder,
    write_plan,
)
from drivers.errors import BadValue
from drivers.modbus import ModbusDevice

ORDERS: tuple[WordOrder, ...] = ("big", "little")

# struct format of each numeric type (big-endian).
FMT: dict[ValueType, str] = {
    ValueType.U16: ">H",
    ValueType.I16: ">h",
    ValueType.U32: ">I",
    ValueType.I32: ">i",
    ValueType.U64: ">Q",
    ValueType.I64: ">q",
    ValueType.F32: ">f",
    ValueType.F64: ">d",
}
WORDS: dict[ValueType, int] = {
    ValueType.U16: 1,
    ValueType.I16: 1,
    ValueType.U32: 2,
    ValueType.I32: 2,
    ValueType.U64: 4,
    ValueType.I64: 4,
    ValueType.F32: 2,
    ValueType.F64: 4,
}
INT_TYPES = (
    ValueType.U16,
    ValueType.I16,
    ValueType.U32,
    ValueType.I32,
    ValueType.U64,
    ValueType.I64,
)
FLOAT_TYPES = (ValueType.F32, ValueType.F64)
LIMITS: dict[ValueType, tuple[int, int]] = {
    ValueType.U16: (0, 0xFFFF),
    ValueType.I16: (-0x8000, 0x7FFF),
    ValueType.U32: (0, 0xFFFF_FFFF),
    ValueType.I32: (-0x8000_0000, 0x7FFF_FFFF),
    ValueType.U64: (0, 0xFFFF_FFFF_FFFF_FFFF),
    ValueType.I64: (-0x8000_0000_0000_0000, 0x7FFF_FFFF_FFFF_FFFF),
}


def split_words(data: bytes) -> list[int]:
    """Big-endian bytes as a list of 16-bit words, high byte first."""
    assert len(data) % 2 == 0
    return [(data[i] << 8) | data[i + 1] for i in range(0, len(data), 2)]


def ordered(words: Sequence[int], order: WordOrder) -> list[int]:
    """Words as a device with `order` word order sends them."""
    return list(words) if order == "big" else list(reversed(words))


def expected_words(vtype: ValueType, raw: float | int, order: WordOrder) -> list[int]:
    """The words `raw` (already divided by the scale) occupies, computed with struct."""
    return ordered(split_words(struct.pack(FMT[vtype], raw)), order)


def reg(
    vtype: ValueType,
    order: WordOrder = "big",
    *,
    name: str = "x",
    address: int = 0,
    words: int | None = None,
    scale: float = 1.0,
    unit: str = "",
    unavailable_all_ones: bool = False,
    access: Access = Access.R,
    write_fc: int | None = None,
    unit_id: int | None = None,
    read_fcs: frozenset[int] = frozenset({3}),
) -> Register:
    """A register built directly, without a map file."""
    return Register(
        name=name,
        address=address,
        type=vtype,
        words=WORDS[vtype] if words is None else words,
        access=access,
        scale=scale,
        unit=unit,
        word_order=order,
        read_fcs=read_fcs if access.readable else frozenset(),
        write_fc=write_fc,
        unit_id=unit_id,
        unavailable_all_ones=unavailable_all_ones,
    )


# --------------------------------------------------------------------------- helpers check


def test_helper_words_match_known_constants() -> None:
    """The struct-based helper itself gives the textbook words for 1.5 (f32) and 0x12345678."""
    assert expected_words(ValueType.F32, 1.5, "big") == [0x3FC0, 0x0000]
    assert expected_words(ValueType.F32, 1.5, "little") == [0x0000, 0x3FC0]
    assert expected_words(ValueType.U32, 0x12345678, "big") == [0x1234, 0x5678]
    assert expected_words(ValueType.U32, 0x12345678, "little") == [0x5678, 0x1234]


# --------------------------------------------------------------------------- numeric codecs

NUMERIC_CASES: list[tuple[ValueType, float | int]] = [
    (ValueType.U16, 0),
    (ValueType.U16, 4660),
    (ValueType.I16, -5),
    (ValueType.I16, 12345),
    (ValueType.U32, 0x12345678),
    (ValueType.U32, 70000),
    (ValueType.I32, -2),
    (ValueType.I32, -123456789),
    (ValueType.U64, 0x0012_3456_789A_BCDE),  # below 2**53: exact as a float too
    (ValueType.U64, 1),
    (ValueType.I64, -3),
    (ValueType.I64, -0x0012_3456_789A_BCDE),
    (ValueType.F32, 1.5),
    (ValueType.F32, -1234.5),
    (ValueType.F32, 0.0),
    (ValueType.F64, -1234.5678),
    (ValueType.F64, 1e300),
]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("vtype", "value"), NUMERIC_CASES)
def test_encode_numeric_matches_struct(
    vtype: ValueType, value: float | int, order: WordOrder
) -> None:
    """encode() gives the same words as struct.pack, with little word order reversing them."""
    assert encode(reg(vtype, order), value) == expected_words(vtype, value, order)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(("vtype", "value"), NUMERIC_CASES)
def test_decode_numeric_matches_struct(
    vtype: ValueType, value: float | int, order: WordOrder
) -> None:
    """decode() of struct-made words gives the original value back (type preserved for ints)."""
    decoded = decode(reg(vtype, order), expected_words(vtype, value, order))
    assert decoded == value
    if vtype.is_integer:
        assert isinstance(decoded, int)


def test_little_and_big_order_differ_for_multiword_values() -> None:
    """Word order matters: the same u32 words decode differently in the two orders."""
    words = [0x0001, 0x0002]
    assert decode(reg(ValueType.U32, "big"), words) == 0x00010002
    assert decode(reg(ValueType.U32, "little"), words) == 0x00020001


def test_f32_decode_of_inexact_value_is_float32_rounded() -> None:
    """A value not exact in float32 decodes to struct's float32 rounding of it."""
    words = expected_words(ValueType.F32, 0.1, "big")
    (rounded,) = struct.unpack(">f", struct.pack(">f", 0.1))
    assert decode(reg(ValueType.F32), words) == rounded
    assert encode(reg(ValueType.F32), 0.1) == words


@given(
    vtype=st.sampled_from(INT_TYPES),
    order=st.sampled_from(ORDERS),
    data=st.data(),
)
def test_integer_round_trip_property(
    vtype: ValueType, order: WordOrder, data: st.DataObject
) -> None:
    """Any in-range integer (|v| <= 2**53 for 64-bit) encodes as struct does and decodes back."""
    lo, hi = LIMITS[vtype]
    value = data.draw(st.integers(max(lo, -(2**53)), min(hi, 2**53)))
    register = reg(vtype, order)
    words = encode(register, value)
    assert words == expected_words(vtype, value, order)
    assert decode(register, words) == value


@given(
    value=st.floats(allow_nan=False, allow_infinity=False, width=32),
    order=st.sampled_from(ORDERS),
)
def test_f32_round_trip_property(value: float, order: WordOrder) -> None:
    """Any finite float32 value encodes as struct does and decodes back exactly."""
    register = reg(ValueType.F32, order)
    assert encode(register, value) == expected_words(ValueType.F32, value, order)
    assert decode(register, encode(register, value)) == value


@given(
    value=st.floats(allow_nan=False, allow_infinity=False),
    order=st.sampled_from(ORDERS),
)
def test_f64_round_trip_property(value: float, order: WordOrder) -> None:
    """Any finite float64 value encodes as struct does and decodes back exactly."""
    register = reg(ValueType.F64, order)
    assert encode(register, value) == expected_words(ValueType.F64, value, order)
    assert decode(register, encode(register, value)) == value


# --------------------------------------------------------------------------- scale


@pytest.mark.parametrize("order", ORDERS)
def test_scaled_i32_kw_round_trip(order: WordOrder) -> None:
    """A 0.01 kW i32 register stores 123.45 kW as 12345 and -123.45 kW as -12345."""
    register = reg(ValueType.I32, order, scale=0.01, unit="kW")
    assert encode(register, 123.45) == expected_words(ValueType.I32, 12345, order)
    assert encode(register, -123.45) == expected_words(ValueType.I32, -12345, order)
    assert decode(register, expected_words(ValueType.I32, 12345, order)) == pytest.approx(123.45)
    assert decode(register, expected_words(ValueType.I32, -12345, order)) == pytest.approx(-123.45)


def test_scaled_value_is_rounded_to_nearest_step() -> None:
    """A value between two 0.1 steps is rounded to the nearest raw integer, not truncated."""
    register = reg(ValueType.U16, scale=0.1, unit="%")
    assert encode(register, 55.5) == [555]
    assert encode(register, 55.56) == [556]
    assert encode(register, 55.54) == [555]


def test_scaled_f32_divides_by_scale() -> None:
    """Scale applies to floats too: 2.5 with scale 0.5 is stored as 5.0."""
    register = reg(ValueType.F32, scale=0.5)
    assert encode(register, 2.5) == expected_words(ValueType.F32, 5.0, "big")
    assert decode(register, expected_words(ValueType.F32, 5.0, "big")) == 2.5


def test_scaled_i32_limits() -> None:
    """With scale 0.01, i32 holds up to 21474836.47 and rejects 21474836.48."""
    register = reg(ValueType.I32, scale=0.01, unit="kW")
    assert encode(register, 21474836.47) == expected_words(ValueType.I32, 2**31 - 1, "big")
    assert encode(register, -21474836.48) == expected_words(ValueType.I32, -(2**31), "big")
    with pytest.raises(BadValue):
        encode(register, 21474836.48)
    with pytest.raises(BadValue):
        encode(register, -21474836.49)


# --------------------------------------------------------------------------- integer limits


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize(
    ("vtype", "value"),
    [
        (ValueType.U16, 0),
        (ValueType.U16, 0xFFFF),
        (ValueType.I16, -0x8000),
        (ValueType.I16, 0x7FFF),
        (ValueType.U32, 0),
        (ValueType.U32, 0xFFFF_FFFF),
        (ValueType.I32, -0x8000_0000),
        (ValueType.I32, 0x7FFF_FFFF),
        (ValueType.U64, 0),
        (ValueType.I64, -0x8000_0000_0000_0000),
        (ValueType.U64, 0xFFFF_FFFF_FFFF_FFFF),
        (ValueType.I64, 0x7FFF_FFFF_FFFF_FFFF),
        (ValueType.U64, 2**53 + 1),
        (ValueType.I64, -(2**53 + 1)),
    ],
)
def test_integer_limits_encode_and_decode(vtype: ValueType, value: int, order: WordOrder) -> None:
    """Each integer type's extreme values encode exactly as struct does and decode back."""
    register = reg(vtype, order)
    assert encode(register, value) == expected_words(vtype, value, order)
    assert decode(register, expected_words(vtype, value, order)) == value


@pytest.mark.parametrize(
    ("vtype", "value"),
    [
        (ValueType.U16, -1),
        (ValueType.U16, 0x1_0000),
        (ValueType.I16, -0x8001),
        (ValueType.I16, 0x8000),
        (ValueType.U32, -1),
        (ValueType.U32, 0x1_0000_0000),
        (ValueType.I32, -0x8000_0001),
        (ValueType.I32, 0x8000_0000),
        (ValueType.U64, -1),
        (ValueType.U64, 2**64),
        (ValueType.I64, 2**63),
        (ValueType.I64, -(2**63) - 1),
    ],
)
def test_integer_just_outside_limits_is_bad_value(vtype: ValueType, value: int) -> None:
    """One past either end of an integer type's range raises BadValue naming the register."""
    with pytest.raises(BadValue) as info:
        encode(reg(vtype, name="limit_reg"), value)
    assert info.value.device == "limit_reg"


@pytest.mark.parametrize("vtype", [*INT_TYPES, *FLOAT_TYPES])
@pytest.mark.parametrize(
    "value", [10**400, -(10**400), 10**5000], ids=["1e400", "-1e400", "1e5000"]
)
def test_integer_beyond_any_float_is_bad_value(vtype: ValueType, value: int) -> None:
    """An integer too big for a float (or for str()) is refused with BadValue, not OverflowError."""
    with pytest.raises(BadValue) as info:
        encode(reg(vtype, name="huge", scale=0.1), value)
    assert info.value.device == "huge"
    with pytest.raises(BadValue):
        encode(reg(vtype, name="huge"), value)


@pytest.mark.parametrize("scale", [1e-300, 1e-10])
def test_f64_value_that_overflows_when_scaled_is_bad_value(scale: float) -> None:
    """1e308 with a tiny scale is inf in registers: refused, not written as infinity."""
    with pytest.raises(BadValue, match="64-bit float"):
        encode(reg(ValueType.F64, name="big", scale=scale), 1e308)


@pytest.mark.parametrize("vtype", list(ValueType))
@pytest.mark.parametrize("word", [-1, 0x1_0000, 2**40])
def test_register_word_outside_0_to_65535_is_bad_value(vtype: ValueType, word: int) -> None:
    """A transport that hands over a word outside 16 bits gets BadValue, not OverflowError."""
    words = 3 if vtype is ValueType.STRING else WORDS[vtype]
    register = reg(vtype, name="w", words=words)
    with pytest.raises(BadValue, match="outside 0-65535") as info:
        decode(register, [word] + [0] * (words - 1))
    assert info.value.device == "w"


def test_u16_rounding_at_the_top_edge() -> None:
    """65535.4 rounds into u16, 65535.5 rounds to 65536 and is rejected."""
    register = reg(ValueType.U16)
    assert encode(register, 65535.4) == [0xFFFF]
    with pytest.raises(BadValue):
        encode(register, 65535.5)


# --------------------------------------------------------------------------- unavailable


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("vtype", FLOAT_TYPES)
def test_nan_decodes_to_none(vtype: ValueType, order: WordOrder) -> None:
    """A float register holding NaN (quiet, negative or with payload) decodes to None."""
    register = reg(vtype, order)
    assert decode(register, expected_words(vtype, math.nan, order)) is None
    assert decode(register, expected_words(vtype, -math.nan, order)) is None
    n = WORDS[vtype]
    payload_nan = [0x7FC0 if vtype is ValueType.F32 else 0x7FF8] + [0] * (n - 2) + [1]
    assert decode(register, ordered(payload_nan, order)) is None


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("vtype", FLOAT_TYPES)
def test_encode_none_gives_nan(vtype: ValueType, order: WordOrder) -> None:
    """encode(None) on a float register writes a NaN that struct reads as NaN and decode as None."""
    register = reg(vtype, order)
    words = encode(register, None)
    assert len(words) == WORDS[vtype]
    big = ordered(words, order)  # undo the word order
    data = b"".join(w.to_bytes(2, "big") for w in big)
    (value,) = struct.unpack(FMT[vtype], data)
    assert math.isnan(value)
    assert decode(register, words) is None


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("vtype", INT_TYPES)
def test_all_ones_is_unavailable_when_flagged(vtype: ValueType, order: WordOrder) -> None:
    """With unavailable_all_ones, all-0xFFFF words decode to None and None encodes to all ones."""
    register = reg(vtype, order, unavailable_all_ones=True, scale=0.1)
    all_ones = [0xFFFF] * WORDS[vtype]
    assert decode(register, all_ones) is None
    assert encode(register, None) == all_ones


@pytest.mark.parametrize("vtype", INT_TYPES)
def test_encode_none_on_int_without_flag_is_all_ones(vtype: ValueType) -> None:
    """encode(None) on an integer register gives all ones even without the flag."""
    assert encode(reg(vtype), None) == [0xFFFF] * WORDS[vtype]


@pytest.mark.parametrize(
    ("vtype", "expected"),
    [
        (ValueType.U16, 0xFFFF),
        (ValueType.I16, -1),
        (ValueType.U32, 0xFFFF_FFFF),
        (ValueType.I32, -1),
        (ValueType.I64, -1),
    ],
)
def test_all_ones_is_a_number_without_the_flag(vtype: ValueType, expected: int) -> None:
    """Without unavailable_all_ones, all-0xFFFF words decode as the number struct gives."""
    assert decode(reg(vtype), [0xFFFF] * WORDS[vtype]) == expected


def test_unavailable_all_ones_only_when_every_word_is_ffff() -> None:
    """0xFFFF in only some words is an ordinary value, not unavailable."""
    register = reg(ValueType.U32, unavailable_all_ones=True)
    assert decode(register, [0xFFFF, 0xFFFE]) == 0xFFFFFFFE
    assert decode(register, [0x0000, 0xFFFF]) == 0xFFFF


# --------------------------------------------------------------------------- rejected input


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
@pytest.mark.parametrize("vtype", INT_TYPES + FLOAT_TYPES)
def test_non_finite_input_is_rejected(vtype: ValueType, bad: float) -> None:
    """inf, -inf and NaN are not encodable values (None is the way to say unavailable)."""
    with pytest.raises(BadValue):
        encode(reg(vtype), bad)


def test_f32_overflow_is_rejected() -> None:
    """A finite value beyond float32's range raises BadValue instead of becoming inf."""
    register = reg(ValueType.F32)
    assert encode(register, 3.4028234663852886e38) == expected_words(
        ValueType.F32, 3.4028234663852886e38, "big"
    )
    with pytest.raises(BadValue):
        encode(register, 1e39)
    with pytest.raises(BadValue):
        encode(register, -1e39)


@pytest.mark.parametrize("bad", ["12", True, False])
def test_numeric_register_rejects_text_and_bool(bad: object) -> None:
    """Text and booleans are not numbers for a numeric register."""
    with pytest.raises(BadValue):
        encode(reg(ValueType.U16), bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("vtype", "n"), [(ValueType.U16, 2), (ValueType.U32, 1), (ValueType.F64, 2)]
)
def test_decode_with_wrong_word_count_is_bad_value(vtype: ValueType, n: int) -> None:
    """decode() insists on exactly the register's word count."""
    with pytest.raises(BadValue):
        decode(reg(vtype), [0] * n)


# --------------------------------------------------------------------------- strings


def _text_words(text: str, words: int, order: WordOrder) -> list[int]:
    # Text keeps reading order whatever the register's word order (which is for numbers).
    del order
    return split_words(text.encode("utf-8").ljust(2 * words, b"\x00"))


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("text", ["AB1", "ABCDEFGH", "", "x"])
def test_string_encode_is_nul_padded(text: str, order: WordOrder) -> None:
    """A string is its UTF-8 bytes, in reading order, padded with NULs to the register length."""
    register = reg(ValueType.STRING, order, words=4)
    assert encode(register, text) == _text_words(text, 4, order)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("text", ["AB1", "ABCDEFGH", "x"])
def test_string_decode_strips_nul_padding(text: str, order: WordOrder) -> None:
    """Decoding NUL-padded words gives the text without the padding."""
    register = reg(ValueType.STRING, order, words=4)
    assert decode(register, _text_words(text, 4, order)) == text


def test_string_decode_strips_trailing_spaces() -> None:
    """Space padding (as some devices use) is stripped as well."""
    data = b"SN42    "
    assert decode(reg(ValueType.STRING, words=4), split_words(data)) == "SN42"


def test_string_too_long_is_bad_value() -> None:
    """Text longer than the register holds is rejected, not truncated."""
    with pytest.raises(BadValue):
        encode(reg(ValueType.STRING, words=2), "ABCDE")


def test_string_register_rejects_numbers() -> None:
    """A string register does not accept a number."""
    with pytest.raises(BadValue):
        encode(reg(ValueType.STRING, words=2), 12)


@pytest.mark.parametrize(("text", "words"), [("é", 1), ("éé", 2), ("温度", 4)])
def test_string_with_multibyte_chars_fills_exactly_the_register(text: str, words: int) -> None:
    """Non-ASCII text that fits in bytes is padded to exactly the register's word count."""
    register = reg(ValueType.STRING, words=words)
    assert encode(register, text) == _text_words(text, words, "big")


# --------------------------------------------------------------------------- read_plan


def make_map(
    registers: Sequence[Register], *, max_read_words: int = 125, max_gap: int = 0, unit: int = 1
) -> RegisterMap:
    """A register map built directly from registers."""
    return RegisterMap(
        name="test-map",
        title="Test map",
        kind="meter",
        registers={r.name: r for r in registers},
        default_unit_id=unit,
        max_read_words=max_read_words,
        max_gap=max_gap,
    )


def test_read_plan_groups_contiguous_registers_in_one_block() -> None:
    """u16@0, u32@1, f32@3 are read in one FC3 request of 5 words."""
    regmap = make_map(
        [
            reg(ValueType.U16, name="a", address=0),
            reg(ValueType.U32, name="b", address=1),
            reg(ValueType.F32, name="c", address=3),
        ]
    )
    (block,) = regmap.read_plan(["c", "a", "b"])
    assert (block.unit_id, block.function_code, block.address, block.count) == (1, 3, 0, 5)
    assert [r.name for r in block.registers] == ["a", "b", "c"]


def test_read_plan_splits_at_a_gap_when_max_gap_is_zero() -> None:
    """A one-word hole between registers makes two requests when max_gap is 0."""
    regmap = make_map(
        [
            reg(ValueType.U16, name="a", address=0),
            reg(ValueType.U16, name="b", address=1),
            reg(ValueType.U32, name="c", address=3),
        ]
    )
    blocks = regmap.read_plan(["a", "b", "c"])
    assert [(b.address, b.count) for b in blocks] == [(0, 2), (3, 2)]
    assert [[r.name for r in b.registers] for b in blocks] == [["a", "b"], ["c"]]


def test_read_plan_reads_through_registers_it_was_not_asked_for() -> None:
    """Registers of the map between two wanted ones are no hole: one request reads through them
    (and they are not decoded), while an address no register serves still splits at max_gap 0.
    Only registers the request's function code may read count as served."""
    regmap = make_map(
        [
            reg(ValueType.U16, name="a", address=0),
            reg(ValueType.F32, name="skipped", address=1),
            reg(ValueType.U16, name="b", address=3),
            reg(ValueType.U16, name="c", address=5),  # a hole at 4
            reg(ValueType.U16, name="input_only", address=6, read_fcs=frozenset({4})),
            reg(ValueType.U16, name="d", address=7),
        ]
    )
    blocks = regmap.read_plan(["a", "b", "c", "d"])
    assert [(b.address, b.count) for b in blocks] == [(0, 4), (5, 1), (7, 1)]
    assert [[r.name for r in b.registers] for b in blocks] == [["a", "b"], ["c"], ["d"]]


def test_read_plan_bridges_gaps_up_to_max_gap() -> None:
    """With max_gap 6 a 6-word hole is read through, a 7-word hole is not."""
    regs = [
        reg(ValueType.U16, name="a", address=0),
        reg(ValueType.U16, name="b", address=7),  # gap 6 after a
        reg(ValueType.U16, name="c", address=15),  # gap 7 after b
    ]
    blocks = make_map(regs, max_gap=6).read_plan(["a", "b", "c"])
    assert [(b.address, b.count) for b in blocks] == [(0, 8), (15, 1)]


def test_read_plan_respects_max_read_words() -> None:
    """Ten contiguous 2-word registers with max_read_words 8 become requests of 8, 8 and 4 words."""
    regs = [reg(ValueType.F32, name=f"r{i}", address=2 * i) for i in range(10)]
    blocks = make_map(regs, max_read_words=8).read_plan([r.name for r in regs])
    assert [(b.address, b.count) for b in blocks] == [(0, 8), (8, 8), (16, 4)]
    covered = [r.name for b in blocks for r in b.registers]
    assert sorted(covered) == sorted(r.name for r in regs)


def test_read_plan_never_splits_a_register_across_blocks() -> None:
    """With max_read_words 5, 2-word registers are packed two per block (4 words), never split."""
    regs = [reg(ValueType.F32, name=f"r{i}", address=2 * i) for i in range(5)]
    blocks = make_map(regs, max_read_words=5).read_plan([r.name for r in regs])
    assert [(b.address, b.count) for b in blocks] == [(0, 4), (4, 4), (8, 2)]


def test_read_plan_puts_other_unit_id_in_its_own_block() -> None:
    """A register addressed at another unit id is read in a separate request to that unit."""
    regmap = make_map(
        [
            reg(ValueType.U16, name="a", address=0),
            reg(ValueType.U16, name="b", address=1, unit_id=7),
            reg(ValueType.U16, name="c", address=2),
        ]
    )
    blocks = regmap.read_plan(["a", "b", "c"], unit_id=3)
    assert sorted((b.unit_id, b.address, b.count) for b in blocks) == [
        (3, 0, 1),
        (3, 2, 1),  # without b, a and c are not contiguous at unit 3
        (7, 1, 1),
    ]
    (other,) = [b for b in blocks if b.unit_id == 7]
    assert [r.name for r in other.registers] == ["b"]


def test_read_plan_uses_default_unit_without_override() -> None:
    """Without a unit_id argument the map's default unit id is used."""
    regmap = make_map([reg(ValueType.U16, name="a", address=0)], unit=9)
    (block,) = regmap.read_plan(["a"])
    assert block.unit_id == 9


def test_read_plan_separates_input_and_holding_registers() -> None:
    """Registers read with FC4 and FC3 are never merged into one request."""
    regmap = make_map(
        [
            reg(ValueType.U16, name="a", address=0, read_fcs=frozenset({3})),
            reg(ValueType.U16, name="b", address=1, read_fcs=frozenset({4})),
        ]
    )
    blocks = regmap.read_plan(["a", "b"])
    assert sorted((b.function_code, b.address) for b in blocks) == [(3, 0), (4, 1)]


def test_read_plan_rejects_write_only_register() -> None:
    """Reading a write-only register is a programming error (KeyError)."""
    regmap = make_map([reg(ValueType.U16, name="w", access=Access.W, write_fc=16)])
    with pytest.raises(KeyError):
        regmap.read_plan(["w"])


def test_read_block_decode_splits_words_per_register() -> None:
    """A block's response words are split at each register's offset, gaps skipped."""
    a = reg(ValueType.U16, name="a", address=10)
    b = reg(ValueType.I32, name="b", address=12, scale=0.01)
    block = ReadBlock(unit_id=1, function_code=3, address=10, count=4, registers=(a, b))
    words = [42, 0xDEAD, *split_words(struct.pack(">i", -15000))]
    values = decode_block(block, words)
    assert values["a"] == 42
    assert values["b"] == pytest.approx(-150.0)


# --------------------------------------------------------------------------- write_plan


def _pile_write_map() -> RegisterMap:
    return make_map(
        [
            reg(
                ValueType.I32,
                name="setpoint",
                address=100,
                scale=0.01,
                unit="kW",
                access=Access.RW,
                write_fc=16,
            ),
            reg(ValueType.U16, name="mode", address=102, access=Access.RW, write_fc=16),
            reg(ValueType.U16, name="heartbeat", address=103, access=Access.RW, write_fc=16),
            reg(ValueType.U16, name="reset", address=104, access=Access.W, write_fc=6),
            reg(ValueType.U16, name="comm_timeout", address=110, access=Access.RW, write_fc=16),
            reg(ValueType.U16, name="state", address=0),
        ]
    )


def test_write_plan_merges_contiguous_fc16_registers() -> None:
    """setpoint@100 (i32), mode@102, heartbeat@103 become one FC16 request of 4 words."""
    plan = write_plan(_pile_write_map(), {"heartbeat": 1, "setpoint": 150.0, "mode": 1})
    expected = (*split_words(struct.pack(">i", 15000)), 1, 1)
    assert plan == (WriteRequest(unit_id=1, function_code=16, address=100, words=expected),)


def test_a_write_plan_repeats_only_what_it_would_encode_alike() -> None:
    """A `WritePlan` made once gives the same requests for the same values again, but encodes
    a value that merely equals the last one (True equals 1) afresh: and refuses it."""
    plan = WritePlan(_pile_write_map(), ("setpoint", "mode", "heartbeat"))
    first = plan.requests({"setpoint": 150.0, "mode": 1, "heartbeat": 1})
    assert plan.requests({"setpoint": 150.0, "mode": 1, "heartbeat": 1}) is first
    assert first == write_plan(_pile_write_map(), {"heartbeat": 1, "setpoint": 150.0, "mode": 1})
    with pytest.raises(BadValue, match="heartbeat"):
        plan.requests({"setpoint": 150.0, "mode": 1, "heartbeat": True})


def test_write_plan_fc6_register_is_written_alone() -> None:
    """An FC6 register is its own request and splits the FC16 run around it."""
    plan = write_plan(_pile_write_map(), {"mode": 2, "heartbeat": 1, "reset": 5})
    assert plan == (
        WriteRequest(1, 16, 102, (2, 1)),
        WriteRequest(1, 6, 104, (5,)),
    )


def test_write_plan_splits_non_contiguous_fc16_registers() -> None:
    """FC16 registers with a hole between them are written in separate requests."""
    plan = write_plan(_pile_write_map(), {"heartbeat": 1, "comm_timeout": 30}, unit_id=4)
    assert plan == (WriteRequest(4, 16, 103, (1,)), WriteRequest(4, 16, 110, (30,)))


def test_write_plan_read_only_register_is_bad_value() -> None:
    """Writing a read-only register raises BadValue naming the map."""
    with pytest.raises(BadValue) as info:
        write_plan(_pile_write_map(), {"state": 1})
    assert "state" in info.value.message
    assert info.value.device == "test-map"


def test_write_plan_propagates_encode_errors() -> None:
    """An out-of-range value in a write plan raises BadValue."""
    with pytest.raises(BadValue):
        write_plan(_pile_write_map(), {"mode": 70000})


def test_write_plan_encode_error_names_the_map_and_register() -> None:
    """A value the register cannot hold names the map as the device and the register."""
    with pytest.raises(BadValue) as info:
        write_plan(_pile_write_map(), {"mode": 70000})
    assert info.value.device == "test-map"
    assert info.value.message.startswith("mode: 70000 is outside")


class _FakeLink:
    """A Modbus link that answers every read with the same words and records writes."""

    def __init__(self, words: list[int]) -> None:
        self.words = words
        self.written: list[WriteRequest] = []

    async def read(self, block: ReadBlock, device: str) -> list[int]:
        return self.words[: block.count]

    async def write(self, request: WriteRequest, device: str) -> None:
        self.written.append(request)


def test_modbus_device_bad_values_name_the_device_and_register() -> None:
    """A Modbus device's BadValue names the device as the station does, and the register."""
    device = ModbusDevice("pile P07", _FakeLink([0x1_0000]), _pile_write_map(), 1)  # type: ignore[arg-type]
    with pytest.raises(BadValue) as read_error:
        asyncio.run(device.read(["state"]))
    assert read_error.value.device == "pile P07"
    assert read_error.value.message.startswith("state: register value 65536")
    with pytest.raises(BadValue) as write_error:
        asyncio.run(device.write({"mode": 70000}))
    assert write_error.value.device == "pile P07"
    assert write_error.value.message.startswith("mode: 70000 is outside")


# --------------------------------------------------------------------------- problems()


def test_problems_empty_for_sound_map() -> None:
    """A consistent map has no problems."""
    assert _pile_write_map().problems() == []


def test_problems_reports_overlap() -> None:
    """A u32 at 0 and a u16 at 1 overlap; the later register is named with the earlier."""
    regmap = make_map(
        [reg(ValueType.U32, name="wide", address=0), reg(ValueType.U16, name="inner", address=1)]
    )
    found = regmap.problems()
    assert len(found) == 1
    name, message = found[0]
    assert name == "inner"
    assert "overlaps wide" in message


def test_problems_no_overlap_across_units() -> None:
    """The same address at another unit id is not an overlap."""
    regmap = make_map(
        [
            reg(ValueType.U16, name="a", address=0),
            reg(ValueType.U16, name="b", address=0, unit_id=5),
        ]
    )
    assert regmap.problems() == []


def test_problems_reports_address_beyond_65535() -> None:
    """A register outside 0-65535 or running past 65535 is reported."""
    regmap = make_map(
        [
            reg(ValueType.U16, name="far", address=70000),
            reg(ValueType.U32, name="edge", address=65535),
            reg(ValueType.U16, name="last", address=65534),
        ]
    )
    found = dict(regmap.problems())
    assert set(found) == {"far", "edge"}
    assert "outside 0-65535" in found["far"]
    assert "beyond register 65535" in found["edge"]


def test_problems_reports_fc6_on_two_word_register() -> None:
    """A 2-word value written with FC6 is reported (it would be half-written)."""
    regmap = make_map(
        [reg(ValueType.I32, name="setpoint", address=100, access=Access.RW, write_fc=6)]
    )
    found = regmap.problems()
    assert [name for name, _ in found] == ["setpoint"]
    assert "FC16" in found[0][1]


def test_problems_reports_wrong_word_count_and_zero_scale() -> None:
    """A u32 declared with 1 word and a zero scale are each reported."""
    regmap = make_map(
        [
            reg(ValueType.U32, name="short", address=0, words=1),
            reg(ValueType.U16, name="zero", address=5, scale=0.0),
        ]
    )
    names = [name for name, _ in regmap.problems()]
    assert "short" in names
    assert "zero" in names


def test_problems_writable_register_needs_write_fc() -> None:
    """A writable register with no write function code is reported."""
    regmap = make_map([reg(ValueType.U16, name="w", access=Access.RW, write_fc=None)])
    assert [name for name, _ in regmap.problems()] == ["w"]


# --------------------------------------------------------------------------- project units


@pytest.mark.parametrize(
    ("unit", "value", "expected"),
    [
        ("W", 1500.0, 1.5),
        ("kW", 1.5, 1.5),
        ("Wh", 2_500_000.0, 2500.0),
        ("kWh", 7.0, 7.0),
        ("mA", 16_000, 16.0),
        ("A", 32.0, 32.0),
        ("V", 230.0, 230.0),
        ("%", 55.5, 55.5),
    ],
)
def test_in_project_units(unit: str, value: float, expected: float) -> None:
    """W -> kW, Wh -> kWh, mA -> A; project units pass through unchanged."""
    register = reg(ValueType.F32, unit=unit)
    assert in_project_units(register, value) == pytest.approx(expected)
    assert from_project_units(register, expected) == pytest.approx(value)


def test_in_project_units_none_and_text() -> None:
    """None stays None; text is a BadValue."""
    register = reg(ValueType.F32, unit="W")
    assert in_project_units(register, None) is None
    with pytest.raises(BadValue):
        in_project_units(register, "12")


def test_decode_then_project_units_of_a_w_register() -> None:
    """A Janitza-style f32 W register reading 123456.0 W is 123.456 kW."""
    register = reg(ValueType.F32, unit="W")
    raw = decode(register, expected_words(ValueType.F32, 123456.0, "big"))
    assert in_project_units(register, raw) == pytest.approx(123.456)


def test_every_charger_make_the_maps_know_has_a_driver_with_its_contract() -> None:
    """`base.devicemap.CHARGERS` (what the loader checks) and the driver classes name one set."""
    from base.devicemap import CHARGERS
    from drivers.makes import charger_class

    for driver, contract in CHARGERS.items():
        assert contract.required == charger_class(driver).REQUIRED_REGISTERS


# ------------------------------------------------- the codec's fast paths against pymodbus's


def _pymodbus_encode(register: Register, value: float | int) -> list[int]:
    """What `encode` gave before its fast path: pymodbus's conversion, Decimal for scaling."""
    from decimal import Decimal

    from pymodbus.client.mixin import ModbusClientMixin

    # pymodbus's type of the same struct format.
    kind = next(t for t in ModbusClientMixin.DATATYPE if t.value[0] == FMT[register.type][1])
    if register.type.is_float:
        raw: float | int = float(value / register.scale)
        if not math.isfinite(raw):
            raise OverflowError(f"{value} / {register.scale} is no float")
    elif isinstance(value, int) and register.scale == 1.0:
        raw = value
    else:
        raw = round(Decimal(value) / Decimal(repr(register.scale)))
    words = ModbusClientMixin.convert_to_registers(raw, kind, word_order=register.word_order)
    return list(words)


SCALES = (1.0, 0.1, 0.01, 0.001, 10.0, 0.5, 0.25)


@given(
    vtype=st.sampled_from(INT_TYPES + FLOAT_TYPES),
    order=st.sampled_from(ORDERS),
    scale=st.sampled_from(SCALES),
    data=st.data(),
)
def test_fast_encode_and_decode_agree_with_pymodbus(
    vtype: ValueType, order: WordOrder, scale: float, data: st.DataObject
) -> None:
    """encode, the compiled `encoder` and a `BlockDecoder` give bit for bit what pymodbus's
    conversion (and Decimal scaling) give, halves rounded to even included."""
    register = reg(vtype, order, scale=scale, unavailable_all_ones=vtype.is_integer)
    value: float | int
    if vtype.is_float:
        width = 32 if vtype is ValueType.F32 else 64
        value = data.draw(st.floats(allow_nan=False, allow_infinity=False, width=width))
    else:
        lo, hi = LIMITS[vtype]
        step = data.draw(st.integers(max(lo, -(2**53)), min(hi, 2**53)))
        # On a step, half a step off it (a tie to round to even), or an integer as it is.
        value = data.draw(st.sampled_from([step * scale, (step + 0.5) * scale, step]))
    try:
        expected = _pymodbus_encode(register, value)
    except (OverflowError, struct.error):
        with pytest.raises(BadValue):
            encode(register, value)
        with pytest.raises(BadValue):
            encoder(register)(value)
        return
    assert encode(register, value) == expected
    assert encoder(register)(value) == expected
    block = ReadBlock(1, 3, 0, register.words, (register,))
    assert BlockDecoder(block)(expected) == decode_block(block, expected)


@given(
    types=st.lists(st.sampled_from(INT_TYPES + FLOAT_TYPES), min_size=1, max_size=6),
    scale=st.sampled_from(SCALES),
    data=st.data(),
)
def test_a_run_of_numbers_encodes_at_once_as_one_by_one(
    types: list[ValueType], scale: float, data: st.DataObject
) -> None:
    """A run of number registers one after the other (a block a device is read in) encoded in
    one go from values in the project's units gives the words `encode` gives them one by one
    (each value `from_project_units` first); with a value that is not a number that fits (None,
    NaN, text, out of range), it gives none (the bank then encodes one by one)."""
    regs, at = [], 100
    for k, vtype in enumerate(types):
        unit = data.draw(st.sampled_from(["", "W", "kWh", "V"]))
        regs.append(reg(vtype, name=f"r{k}", address=at, scale=scale, unit=unit))
        at += WORDS[vtype]
    at_once = run_encoder(regs, 100, at - 100)
    assert at_once is not None
    values: dict[str, Value | None] = {
        r.name: data.draw(
            st.one_of(
                st.floats(width=32 if r.type is ValueType.F32 else 64, allow_infinity=False),
                st.floats(-1e5, 1e5),
                st.integers(-(2**40), 2**40),
                st.sampled_from([None, "text", True, 0.5 * scale, 1.7 * scale, 1e300]),
            )
        )
        for r in regs
    }
    one_by_one: list[int] | None = []
    for r in regs:
        value = values[r.name]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = from_project_units(r, float(value))
        try:
            one_by_one += encode(r, value)
        except BadValue:
            one_by_one = None
            break
    words = at_once(values)
    assert words is None or list(words) == one_by_one
    if one_by_one is not None and all(type(v) in (float, int) for v in values.values()):
        assert words is not None  # every number that fits, in one go
    # Not a run: a gap before it, text, words turned round.
    assert run_encoder(regs, 99, at - 99) is None
    text = reg(ValueType.STRING, name="t", address=at, words=2)
    assert run_encoder([*regs, text], 100, at + 2 - 100) is None
    assert run_encoder([reg(ValueType.F32, "little", address=100)], 100, 2) is None


def test_a_run_encoder_read_again_encodes_each_value_anew_unless_it_is_the_same_object() -> None:
    """Read after read, a block's encoder gives the words `encode` gives one by one, whether a
    value is the very object of the last read, an equal one of another sign (0.0 and -0.0 are
    not the same words) or a new number; a read it cannot encode changes nothing after it."""
    regs = [
        reg(ValueType.F32, name="power", address=100, unit="W"),
        reg(ValueType.I32, name="energy", address=102, scale=0.1, unit="Wh"),
        reg(ValueType.U16, name="mode", address=104),
    ]
    at_once = run_encoder(regs, 100, 5)
    assert at_once is not None
    zero, rating = 0.0, 150.0
    reads: list[dict[str, Value | None]] = [
        {"power": zero, "energy": rating, "mode": 1},
        {"power": zero, "energy": rating, "mode": 1},  # the very same objects
        {"power": -0.0, "energy": rating, "mode": 2},  # equal to 0.0, other words
        {"power": None, "energy": 12.5, "mode": 2},  # not encodable: one by one
        {"power": zero, "energy": 12.5, "mode": 2},
        {"power": zero, "energy": rating, "mode": 1},
    ]
    for values in reads:
        one_by_one: list[int] | None = []
        for r in regs:
            value = values[r.name]
            if value is None:
                one_by_one = None
                break
            one_by_one += encode(r, from_project_units(r, float(value)))
        words = at_once(values)
        assert (None if words is None else list(words)) == one_by_one, values


SHIPPED_MAPS = sorted((CONFIG_ROOT / "devices").glob("*.toml"))


@pytest.mark.parametrize("path", SHIPPED_MAPS, ids=lambda p: p.stem)
@given(data=st.data())
def test_a_block_decoder_decodes_as_decode_block(path: Path, data: st.DataObject) -> None:
    """Every block a shipped map is read in, decoded in one go by a `BlockDecoder`, gives what
    `decode_block` gives register by register: the same values, of the same types, "unavailable"
    and NaN as None."""
    regmap = load_register_map(path)
    for block in regmap.read_plan(regmap.readable()):
        word = st.one_of(st.sampled_from([0, 0xFFFF, 0x7FC0, 0x8000]), st.integers(0, 0xFFFF))
        words = data.draw(st.lists(word, min_size=block.count, max_size=block.count))
        try:
            expected = decode_block(block, words)
        except BadValue as exc:
            with pytest.raises(BadValue, match=re.escape(exc.message)):
                BlockDecoder(block)(words)
            continue
        got = BlockDecoder(block)(words)
        assert list(got) == list(expected)
        assert [(type(v), repr(v)) for v in got.values()] == [
            (type(v), repr(v)) for v in expected.values()
        ]


# --------------------------------------------------------------------------- bit fields and UTF-16


def test_masked_field_is_its_bits_shifted_down() -> None:
    """A field in bits 8-14 of a register pair: 0x0000_8400 holds 4 (bit 15 is not part of it,
    as ABB's "below the rated current" flag is not part of the IEC 61851 state)."""
    state = replace(reg(ValueType.U32), mask=0x7F00)
    assert decode(state, [0x0000, 0x8400]) == 4
    assert decode(state, [0xFFFF, 0x03FF]) == 3
    assert encode(state, 4) == [0x0000, 0x0400]
    assert encoder(state)(2.0) == [0x0000, 0x0200]
    block = ReadBlock(1, 3, 0, 2, (state,))
    assert (
        BlockDecoder(block)([0x0000, 0x8300]) == decode_block(block, [0x0000, 0x8300]) == {"x": 3}
    )


@pytest.mark.parametrize("bad", [0x80, -1, 1000])
def test_a_value_outside_its_bits_is_bad_value(bad: int) -> None:
    """A value the mask's bits cannot hold is refused, not written into neighbouring bits."""
    state = replace(reg(ValueType.U32), mask=0x7F00)
    with pytest.raises(BadValue, match="does not fit the bits 0x7f00"):
        encode(replace(state, type=ValueType.I32), bad)


@given(
    st.text(alphabet=st.characters(max_codepoint=0xFFFF, exclude_categories=("Cs",)), max_size=10)
)
def test_utf16_text_is_one_character_a_register(text: str) -> None:
    """Vestel's strings: each register one UTF-16 code unit, NUL-padded (checked with
    `str.encode`, not the codec)."""
    text = text.rstrip("\x00 ")
    field = replace(reg(ValueType.STRING, words=10), text_encoding="utf-16")
    words = encode(field, text)
    units = split_words(text.encode("utf-16-be"))
    assert words == units + [0] * (10 - len(units))
    assert decode(field, words) == text


def test_utf16_text_too_long_is_bad_value() -> None:
    """Eleven characters do not fit ten registers."""
    field = replace(reg(ValueType.STRING, words=10), text_encoding="utf-16")
    with pytest.raises(BadValue, match="longer than 10 characters"):
        encode(field, "v3.187.0-xx")


def test_problems_report_a_mask_or_encoding_where_none_fits() -> None:
    """A mask on a float or a 64-bit integer, one wider than its type, and a text encoding on a
    number are each reported."""
    regmap = make_map(
        [
            replace(reg(ValueType.F32, name="f", address=0), mask=0xFF),
            replace(reg(ValueType.U64, name="wide", address=2), mask=0xFF),
            replace(reg(ValueType.U16, name="narrow", address=6), mask=0x1_0000),
            replace(reg(ValueType.U16, name="text", address=7), text_encoding="utf-16"),
        ]
    )
    found = dict(regmap.problems())
    assert set(found) == {"f", "wide", "narrow", "text"}
    assert "16- or 32-bit integer" in found["f"] and "does not fit" in found["narrow"]
    assert "text encoding" in found["text"]


def test_problems_report_a_function_code_the_device_does_not_answer() -> None:
    """A register read with FC4 or written with FC6 on a device said to answer FC3 and FC16
    only; without `function_codes` the device answers what its registers use."""
    regs = [
        reg(ValueType.U16, name="in", address=0, read_fcs=frozenset({4})),
        reg(ValueType.U16, name="w", address=1, access=Access.RW, write_fc=6),
    ]
    regmap = replace(make_map(regs), function_codes=frozenset({3, 16}))
    found = dict(regmap.problems())
    assert "function code 4" in found["in"] and "function code 6" in found["w"]
    assert make_map(regs).function_codes == frozenset({3, 4, 6})
    assert make_map(regs).problems() == []
