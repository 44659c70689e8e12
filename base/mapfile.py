"""Loading and checking device map files (`configs/devices/*.toml`) into `RegisterMap`s.

Beyond the schema: registers that overlap or do not fit, strings without a length, and what
each kind of map (pile, meter, a charger make) must define for its driver.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
)

from base.devicemap import (
    CHARGERS,
    METER,
    PILE,
    UNIT_SCALE,
    Access,
    PileMode,
    PileState,
    Register,
    RegisterMap,
    ValueType,
    is_charger_driver,
)
from base.loading import (
    Problems,
    Strict,
    UnitId,
    field_key,
    read_toml,
)

# --------------------------------------------------------------------------- device maps


class _RegisterSpec(Strict):
    address: int = Field(ge=0, le=65535)
    type: ValueType
    length: int | None = Field(default=None, ge=1, le=123)
    access: Access = Access.R
    scale: float = Field(default=1.0, allow_inf_nan=False)
    unit: str = ""
    word_order: Literal["big", "little"] | None = None
    read_function_codes: list[Literal[3, 4]] | None = None
    write_fc: Literal[6, 16] | None = None
    unit_id: UnitId | None = None
    unavailable_all_ones: bool = False
    description: str = ""
    mask: int | None = Field(default=None, gt=0, le=0xFFFFFFFF)
    encoding: Literal["utf-8", "utf-16"] = "utf-8"

    @field_validator("scale")
    @classmethod
    def _nonzero(cls, value: float) -> float:
        if value == 0:
            raise ValueError("scale must not be 0")
        return value

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, value: str) -> str:
        if value not in UNIT_SCALE:
            raise ValueError(f"unknown unit {value!r}; use one of {sorted(UNIT_SCALE)}")
        return value


class _DeviceSpec(Strict):
    title: str = Field(min_length=1)
    kind: Literal["pile", "meter", "charger"]
    unit_id: UnitId
    word_order: Literal["big", "little"] = "big"
    read_function_codes: list[Literal[3, 4]] = Field(min_length=1)
    function_codes: list[Literal[3, 4, 6, 16]] | None = Field(default=None, min_length=1)
    max_read_words: int = Field(default=125, ge=1, le=125)
    max_gap: int = Field(default=0, ge=0, le=124)
    idle_timeout_s: float | None = Field(default=None, gt=0)
    max_connections: int | None = Field(default=None, ge=1)
    notes: str = ""
    driver: str | None = Field(default=None, min_length=1)
    failsafe_timeout_s: float | None = Field(default=None, gt=0, le=3600)
    min_current_a: float | None = Field(default=None, ge=0, le=80)


class _MapFile(Strict):
    device: _DeviceSpec
    enums: dict[str, dict[str, str]] = Field(default_factory=dict)
    registers: dict[str, _RegisterSpec] = Field(min_length=1)


def load_register_map(path: Path) -> RegisterMap:
    """Load and check one device register map file."""
    path = Path(path)
    problems = Problems(path)
    raw = read_toml(path, problems)
    head = raw.get("device")
    device = (
        f"device map {head.get('title', path.stem)}"
        if isinstance(head, dict)
        else f"device map {path.stem}"
    )
    for key in raw:
        if key not in _MapFile.model_fields:
            problems.add(device, field_key(key), "unknown section (misspelt?)")
    # Each part is checked on its own, so that one bad register does not hide the others.
    try:
        spec_device = _DeviceSpec.model_validate(head if isinstance(head, dict) else {})
    except ValidationError as err:
        problems.add_validation(err, device, "device")
        spec_device = None
    raw_registers = raw.get("registers")
    if not isinstance(raw_registers, dict) or not raw_registers:
        problems.add(device, "registers", "a device map needs at least one register")
        raw_registers = {}
    raw_enums = raw.get("enums", {})
    if not isinstance(raw_enums, dict):
        problems.add(device, "enums", "must be a table of tables")
        raw_enums = {}
    specs: dict[str, _RegisterSpec] = {}
    for name, entry in raw_registers.items():
        try:
            specs[name] = _RegisterSpec.model_validate(entry)
        except ValidationError as err:
            problems.add_validation(err, device, f"registers.{name}")
    if spec_device is None:
        problems.raise_if_any()
    assert spec_device is not None
    spec = _MapFile.model_construct(device=spec_device, enums={}, registers=specs)
    registers: dict[str, Register] = {}
    for name, reg in spec.registers.items():
        if reg.type is ValueType.STRING and reg.length is None:
            problems.add(
                device, f"registers.{name}.length", "a string needs its length in registers"
            )
            continue
        if reg.type is not ValueType.STRING and reg.length is not None:
            problems.add(
                device,
                f"registers.{name}.length",
                f"only strings take a length ({reg.type} does not)",
            )
        registers[name] = Register(
            name=name,
            address=reg.address,
            type=reg.type,
            words=reg.length if reg.type is ValueType.STRING and reg.length else reg.type.words,
            access=reg.access,
            scale=reg.scale,
            unit=reg.unit,
            word_order=reg.word_order or spec.device.word_order,
            read_fcs=frozenset(reg.read_function_codes or spec.device.read_function_codes)
            if reg.access.readable
            else frozenset(),
            write_fc=reg.write_fc,
            unit_id=reg.unit_id,
            unavailable_all_ones=reg.unavailable_all_ones,
            description=reg.description,
            mask=reg.mask,
            text_encoding=reg.encoding,
        )
    enums: dict[str, dict[int, str]] = {}
    for enum_name, table in raw_enums.items():
        codes: dict[int, str] = {}
        if not isinstance(table, dict):
            problems.add(device, f"enums.{enum_name}", 'must be a table of code = "name"')
            continue
        for code, label in table.items():
            if not isinstance(label, str):
                problems.add(device, f"enums.{enum_name}.{code}", "the name must be text")
                continue
            try:
                codes[int(code, 0)] = label
            except ValueError:
                problems.add(
                    device, f"enums.{enum_name}.{code}", "an enumeration key must be a whole number"
                )
        enums[enum_name] = codes
    regmap = RegisterMap(
        name=path.stem,
        title=spec.device.title,
        kind=spec.device.kind,
        registers=registers,
        default_unit_id=spec.device.unit_id,
        max_read_words=spec.device.max_read_words,
        max_gap=spec.device.max_gap,
        idle_timeout_s=spec.device.idle_timeout_s,
        max_connections=spec.device.max_connections,
        enums=enums,
        notes=spec.device.notes,
        driver=spec.device.driver,
        failsafe_timeout_s=spec.device.failsafe_timeout_s,
        min_current_a=spec.device.min_current_a,
        function_codes=frozenset(spec.device.function_codes or ()),
    )
    for reg_name, message in regmap.problems():
        problems.add(device, f"registers.{reg_name}", message)
    for built in registers.values():
        if built.access.readable and built.words > spec.device.max_read_words:
            problems.add(device, f"registers.{built.name}", "longer than max_read_words")
    _check_kind(regmap, problems, device, declared=set(raw_registers))
    problems.raise_if_any()
    return regmap


def _check_kind(regmap: RegisterMap, problems: Problems, device: str, declared: set[str]) -> None:
    if regmap.kind == "pile":
        contract = PILE
    elif regmap.kind == "meter":
        contract = METER
    else:
        if not is_charger_driver(regmap.driver):
            problems.add(
                device,
                "device.driver",
                f"a charger map must name its driver, one of {sorted(CHARGERS)}"
                + (f" (got {regmap.driver!r})" if regmap.driver else ""),
            )
            return
        contract = CHARGERS[regmap.driver]
        if "setpoint" in regmap and regmap["setpoint"].unit not in ("A", "mA"):
            problems.add(
                device, "registers.setpoint", "a charger's setpoint is a current (A or mA)"
            )
    required, enums = contract.required, contract.enums
    for name in required:
        if name not in declared:
            problems.add(device, f"registers.{name}", f"a {regmap.kind} map must define it")
    for name in enums:
        if name not in regmap.enums:
            problems.add(device, f"enums.{name}", f"a {regmap.kind} map must define it")
    if regmap.kind == "pile" and "state" in regmap.enums:
        known = {s.value for s in PileState}
        for code, label in regmap.enums["state"].items():
            if label not in known:
                problems.add(
                    device,
                    f"enums.state.{code}",
                    f"unknown state {label!r}; use one of {sorted(known)}",
                )
    if regmap.kind == "pile" and "mode" in regmap.enums:
        missing = {m.value for m in PileMode} - set(regmap.enums["mode"].values())
        if missing:
            problems.add(device, "enums.mode", f"lacks {sorted(missing)}")
