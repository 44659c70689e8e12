"""The plant's devices as register banks: what a Modbus client reads and writes.

A `RegisterBank` shows one device of the plant through the same `RegisterMap` the driver uses.
Registers are filled from the model when a client reads them, and writes are decoded and handed
to the model, which may refuse them. The bank answers what real devices answer: exception 01 for
a function code the device does not answer, 02 for an address it does not have or that the
function code cannot read or write (a write-only register read, a read-only one written), 03
for half a multi-register value or a value the device refuses. The Modbus servers
(`simulator.modbus_server`) and the fast simulation's in-process transport
(`simulator.inprocess`) ask the same bank the same requests (`read_words`, `write_words`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from pymodbus.constants import ExcCodes

from base.clock import Clock
from base.devicemap import UNIT_SCALE, PileMode, Register, RegisterMap, Value
from drivers.codec import decode, encoder, in_project_units, run_encoder
from drivers.errors import BadValue
from simulator.faults import FaultScript
from simulator.plant import PileModel, Plant, Rejected


class DeviceModel(Protocol):
    """A simulated device seen through its register map, in the project's units."""

    def values(self) -> Mapping[str, Value | None]:
        """Current value of every readable register (None: unavailable)."""
        ...

    def write(self, values: Mapping[str, float]) -> None:
        """Apply one write request's values; raise `Rejected` to refuse all of them."""
        ...


# A register in a request: its name, its words' place, its encoder, its unit in project units,
# and whether it is a float (where 0.0 and -0.0, equal, are not the same words).
_Field = tuple[str, int, int, Callable[[Value | None], list[int]], float, bool]


@dataclass(frozen=True)
class _Request:
    """An in-process request to a bank, worked out once (see `RegisterBank._request`)."""

    key: tuple[int, int, int]
    touched: list[Register]
    gaps: bool  # it leaves an address no register serves
    read_fcs: frozenset[int]  # the function codes that may read every register it touches
    whole: bool  # it covers every register it touches whole (a write must)
    writable: bool  # every register it touches may be written
    fields: list[_Field]
    names: tuple[str, ...]  # of the registers it touches
    # Where its float registers are among `names`: equal values of those encode alike unless
    # they are zeros of different signs.
    floats: tuple[int, ...]
    # All its registers encoded at once, when they are numbers one after the other.
    at_once: Callable[[Mapping[str, Value | None]], tuple[int, ...] | None] | None


class RegisterBank:
    """One device's registers, backed by a `DeviceModel`."""

    def __init__(self, regmap: RegisterMap, model: DeviceModel, unit_id: int) -> None:
        self.map = regmap
        self.model = model
        self.unit_id = unit_id
        self._by_unit: dict[int, list[Register]] = {}
        for reg in regmap.registers.values():
            self._by_unit.setdefault(regmap.unit_of(reg, unit_id), []).append(reg)
        for regs in self._by_unit.values():
            regs.sort(key=lambda r: r.address)
        self.rejected_writes = 0
        # Each in-process request: the registers it touches, whether it leaves an address
        # unserved, the function codes that may read all of them, and where each value goes.
        self._requests: dict[tuple[int, int, int], _Request] = {}
        self._encoders = {name: encoder(reg) for name, reg in regmap.registers.items()}
        # Each register's last value and its words, and each request's: most change seldom.
        self._encoded: dict[str, tuple[Value | None, list[int]]] = {}
        self._answered: dict[
            tuple[int, int, int], tuple[tuple[Value | None, ...], tuple[int, ...]]
        ] = {}
        # The last tuple of words written (a driver writes the same request again and again),
        # where, and what it said.
        self._last_written: (
            tuple[tuple[int, ...], tuple[int, int, int], dict[str, float]] | None
        ) = None
        # Each in-process write request's last words, and what they said.
        self._written: dict[tuple[int, int, int], tuple[Sequence[int], int, dict[str, float]]] = {}
        # The model's values the answers in `_fresh` were made from, and those answers by
        # request: a device at rest shows the same values step after step, and is answered the
        # same words (the same tuple) without looking at its registers again.
        self._fresh_for: Mapping[str, Value | None] | None = None
        self._fresh: dict[tuple[int, int, int, int], tuple[int, ...] | ExcCodes] = {}
        # The float registers, whose equal zeros of different signs are not the same words.
        self._floats = tuple(name for name, reg in regmap.registers.items() if reg.type.is_float)

    @property
    def units(self) -> tuple[int, ...]:
        """The unit ids the bank answers for (a map may put registers on several)."""
        return tuple(self._by_unit)

    def read_words(
        self,
        unit: int,
        function_code: int,
        address: int,
        count: int,
        values: Mapping[str, Value | None] | None = None,
    ) -> tuple[int, ...] | ExcCodes:
        """A read request's words, or the exception the device answers (`values`: the model's,
        if already taken this instant). Values equal to the last ones (zeros of the same signs)
        are answered the very same tuple of words as then."""
        if values is None:
            values = self.model.values()
        if values is not self._fresh_for:
            if not self._same_values(values):
                self._fresh = {}
            self._fresh_for = values
        key = (unit, function_code, address, count)
        answer = self._fresh.get(key)
        if answer is None:
            answer = self._fresh[key] = self._answer(unit, function_code, address, count, values)
        return answer

    def _same_values(self, values: Mapping[str, Value | None]) -> bool:
        """Whether `values` encode as the values the fresh answers were made from do."""
        last = self._fresh_for
        if last is None or values != last:
            return False
        for name in self._floats:
            new = values.get(name)
            if not new and new is not None and not _same_zero(last.get(name), new):
                return False
        return True

    def _answer(
        self,
        unit: int,
        function_code: int,
        address: int,
        count: int,
        values: Mapping[str, Value | None],
    ) -> tuple[int, ...] | ExcCodes:
        if function_code not in self.map.function_codes or function_code not in (3, 4):
            return ExcCodes.ILLEGAL_FUNCTION
        request = self._request(unit, address, count)
        if request.gaps or function_code not in request.read_fcs:
            return ExcCodes.ILLEGAL_ADDRESS
        if request.at_once is not None:
            words = request.at_once(values)
            if words is not None:
                return words
        shown = tuple(map(values.get, request.names))
        last = self._answered.get(request.key)
        if last is None:
            registers = [0] * count
            fields = request.fields
        else:
            before, answered = last
            if before == shown and _same_signs(before, shown, request.floats):
                return answered
            # Only the registers whose values changed are encoded again.
            registers = list(answered)
            fields = [
                field
                for field, old, new in zip(request.fields, before, shown, strict=True)
                if old != new or (field[5] and not old and not _same_zero(old, new))
            ]
        self._fill(fields, registers, values)
        words = tuple(registers)
        self._answered[request.key] = (shown, words)
        return words

    def write_words(
        self, unit: int, function_code: int, address: int, words: Sequence[int]
    ) -> ExcCodes | None:
        """A write request handed to the model: None, or the exception the device answers."""
        same = self._last_written
        if same is not None and same[0] is words and same[1] == (unit, function_code, address):
            # The very words written last, from a driver. The model takes the values as a
            # `Mapping` (it does not change them), so the kept ones are handed over as they are.
            return self._apply(same[2])
        if function_code not in self.map.function_codes or function_code not in (6, 16):
            return ExcCodes.ILLEGAL_FUNCTION
        request = self._request(unit, address, len(words))
        if request.gaps or not request.writable:
            return ExcCodes.ILLEGAL_ADDRESS
        last = self._written.get(request.key)
        if last is not None and (last[0] is words or last[0] == words) and last[1] == function_code:
            decoded = last[2]  # what the same words said last time
        else:
            found = self._decode(function_code, address, request.touched, words, request.whole)
            if isinstance(found, ExcCodes):
                return found
            decoded = found
            # A tuple cannot change under the cache; anything else is copied.
            kept = words if type(words) is tuple else list(words)
            self._written[request.key] = (kept, function_code, dict(decoded))
        if type(words) is tuple:
            self._last_written = (words, (unit, function_code, address), dict(decoded))
        return self._apply(decoded)

    def _request(self, unit: int, address: int, count: int) -> _Request:
        key = (unit, address, count)
        request = self._requests.get(key)
        if request is None:
            end = address + count
            touched = [
                r for r in self._by_unit.get(unit, ()) if r.address < end and r.end > address
            ]
            served = sum(min(r.end, end) - max(r.address, address) for r in touched)
            fcs = [r.read_fcs if r.access.readable else frozenset[int]() for r in touched]
            request = self._requests[key] = _Request(
                key,
                touched,
                served < count,
                frozenset[int].intersection(*fcs) if fcs else frozenset[int](),
                _whole(address, count, touched),
                all(r.access.writable for r in touched),
                self._fields(address, touched),
                tuple(r.name for r in touched),
                tuple(i for i, r in enumerate(touched) if r.type.is_float),
                run_encoder(touched, address, count),
            )
        return request

    def _fields(self, start: int, touched: list[Register]) -> list[_Field]:
        """Where each register's words go in a request from `start`, and how it is encoded."""
        return [
            (
                reg.name,
                reg.address - start,
                reg.end - start,
                self._encoders[reg.name],
                UNIT_SCALE[reg.unit][1],
                reg.type.is_float,
            )
            for reg in touched
        ]

    def _fill(
        self, fields: list[_Field], registers: list[int], values: Mapping[str, Value | None]
    ) -> None:
        """Encode `values` into `registers` (model values are in the project's units)."""
        encoded = self._encoded
        for name, start, end, encode, per_unit, is_float in fields:
            value = values.get(name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = float(value) / per_unit  # `from_project_units`
            last = encoded.get(name)
            if (
                last is not None
                and last[0] == value
                and (not is_float or value or _same_zero(last[0], value))
            ):
                words = last[1]
            else:
                words = encode(value)
                encoded[name] = (value, words)
            registers[start:end] = words

    def _decode(
        self,
        function_code: int,
        address: int,
        touched: list[Register],
        words: Sequence[int],
        whole: bool,
    ) -> dict[str, float] | ExcCodes:
        """A write request's values as the model takes them, or the exception it is answered."""
        refusal = None
        if not whole:
            # Half of a multi-register value: real devices refuse it rather than apply garbage.
            refusal = ExcCodes.ILLEGAL_VALUE
        elif function_code == 6 and any(r.words != 1 for r in touched):
            refusal = ExcCodes.ILLEGAL_VALUE
        decoded: dict[str, float] = {}
        try:
            for reg in touched if refusal is None else ():
                value = decode(reg, words[reg.address - address : reg.end - address])
                number = in_project_units(reg, value)
                if number is None:
                    raise Rejected(f"{reg.name}: NaN written")
                decoded[reg.name] = number
        except (Rejected, BadValue):
            refusal = ExcCodes.ILLEGAL_VALUE
        if refusal is not None:
            self.rejected_writes += 1
            return refusal
        return decoded

    def _apply(self, decoded: Mapping[str, float]) -> ExcCodes | None:
        """Hand one write's values to the model, which may refuse them all."""
        try:
            self.model.write(decoded)
        except (Rejected, BadValue):
            self.rejected_writes += 1
            return ExcCodes.ILLEGAL_VALUE
        return None


def _whole(address: int, count: int, touched: list[Register]) -> bool:
    """Whether a request from `address` over `count` words covers each register whole."""
    return all(r.address >= address and r.end <= address + count for r in touched)


def _same_signs(
    a: tuple[Value | None, ...], b: tuple[Value | None, ...], floats: tuple[int, ...]
) -> bool:
    """Whether two equal tuples of values encode alike: their zeros at `floats` (the float
    registers' places) have the same signs."""
    return all(a[i] or _same_zero(a[i], b[i]) for i in floats)


def _same_zero(a: Value | None, b: Value | None) -> bool:
    """Whether two values that compare equal and false encode alike: 0 and 0.0, 0.0 and -0.0
    do not."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return math.copysign(1.0, a) == math.copysign(1.0, b)
    return True


class PileRegisters:
    """A simulated pile as the `flexcharge-dc-pile` register map shows it."""

    def __init__(
        self, pile: PileModel, regmap: RegisterMap, clock: Clock, *, bms: bool = True
    ) -> None:
        """`bms` False: the pile passes on nothing of its vehicle's battery management (no state
        of charge, power demand or capacity), as a plain AC charger does."""
        self.pile = pile
        self.clock = clock
        self.bms = bms
        # By label: a `PileState` or `PileMode` is its label (a `StrEnum`), and finds its code.
        self._state_code = {label: code for code, label in regmap.enums["state"].items()}
        self._mode_code = {label: code for code, label in regmap.enums["mode"].items()}
        self._mode_label = dict(regmap.enums["mode"])
        known = {mode.value for mode in PileMode}
        self._mode_of = {
            code: PileMode(label) for code, label in self._mode_label.items() if label in known
        }
        # What the registers were last made of, and the mapping made of it.
        self._shown: tuple[tuple[object, ...], Mapping[str, Value | None]] | None = None

    def values(self) -> Mapping[str, Value | None]:
        """Every register, from the model: what `PileModel.reading` says, and what was written.

        Worked out from the model directly rather than through a `PileReading`: every pile is
        read every simulated step, and a reading's frozen fields cost more than the rest. A pile
        at rest (all it is made from as it was) shows the very same mapping as last time.
        """
        pile = self.pile
        config = pile.config
        vehicle = pile.vehicle
        power = pile.power_kw
        now = self.clock.now()
        # Everything below is made of (the power's sign too: the current of -0.0 kW is -0.0 A).
        made_of = (
            power,
            math.copysign(1.0, power),
            pile.energy_import_kwh,
            pile.energy_export_kwh,
            pile.session_energy_kwh,
            pile.applied_kw,
            now - pile.last_contact,
            pile.comm_timeout_s,
            pile.fault_code,
            pile.session_id,
            pile.setpoint_kw,
            pile.mode,
            pile.fallback_kw,
            config,
            vehicle,
            None
            if vehicle is None
            else (
                vehicle.soc,
                vehicle.soc_target,
                vehicle.max_kw,
                vehicle.taper_soc,
                vehicle.capacity_kwh,
            ),
        )
        last = self._shown
        if last is not None and last[0] == made_of:
            return last[1]
        if vehicle is None:
            voltage = 0.0
            soc = ev_max = ev_capacity = None
        else:
            voltage = 600.0 + 150.0 * vehicle.soc
            soc, ev_max, ev_capacity = (
                (round(vehicle.soc * 100, 1), vehicle.acceptance_kw(), vehicle.capacity_kwh)
                if self.bms
                else (None, None, None)
            )
        values: dict[str, Value | None] = {
            "state": self._state_code[pile.state()],
            "soc": soc,
            "voltage": voltage,
            "current": power * 1000 / voltage if voltage else 0.0,
            "power": power,
            "energy_import": pile.energy_import_kwh,
            "energy_export": pile.energy_export_kwh,
            "max_charge_power": config.max_kw,
            "max_discharge_power": config.max_discharge_kw,
            "min_power": config.min_kw,
            "ev_max_power": ev_max,
            "ev_capacity": ev_capacity,
            "session_energy": max(0.0, pile.session_energy_kwh),
            "applied_setpoint": pile.applied_kw,
            "fallback_countdown": float(round(min(65535.0, pile.countdown(now)))),
            "fault_code": pile.fault_code,
            "session_id": pile.session_id,
            "setpoint": pile.setpoint_kw,
            "mode": self._mode_code[pile.mode],
            "heartbeat": 0,
            "comm_timeout": pile.comm_timeout_s,
            "fallback_power": pile.fallback_kw,
        }
        self._shown = (made_of, values)
        return values

    def write(self, values: Mapping[str, float]) -> None:
        """Setpoint, mode, heartbeat and fail-safe writes."""
        now = self.clock.now()
        mode: PileMode | None = None
        if "mode" in values:
            code = int(values["mode"])
            mode = self._mode_of.get(code)
            if mode is None:
                label = self._mode_label.get(code)
                if label is None:
                    raise Rejected(f"unknown mode {values['mode']}")
                mode = PileMode(label)  # a label the map has and the model does not know
        if "comm_timeout" in values or "fallback_power" in values:
            self.pile.configure(values.get("comm_timeout"), values.get("fallback_power"))
        commanded = "setpoint" in values or mode is not None
        if commanded:
            self.pile.command(now, values.get("setpoint"), mode)
        if "heartbeat" in values:
            # After a command at the same instant the controller has been in touch all along.
            self.pile.heartbeat(now, continuous=commanded)


# Each phase's voltage, current and power registers (a meter is read every step).
_PHASE_NAMES = tuple((f"voltage_l{p}", f"current_l{p}", f"power_l{p}") for p in (1, 2, 3))


class MeterRegisters:
    """The grid-connection meter: the site load, balanced over three phases."""

    def __init__(
        self,
        plant: Plant,
        phase_voltage_v: float = 230.0,
        *,
        faults: FaultScript | None = None,
        device_id: str = "",
    ) -> None:
        self.plant = plant
        self.phase_voltage_v = phase_voltage_v
        self.faults = faults
        self.device_id = device_id

    def values(self) -> Mapping[str, Value | None]:
        """Every register, from the plant."""
        site_kw = self.plant.site_kw
        # A loaded transformer's secondary sags a little.
        voltage = self.phase_voltage_v * (
            1.02 - 0.04 * max(0.0, site_kw) / self.plant.station.limit_kw
        )
        phase_kw = site_kw / 3
        current = abs(phase_kw) * 1000 / voltage
        values: dict[str, Value | None] = {
            "power": site_kw,
            "energy_import": self.plant.energy_import_kwh,
            "energy_export": self.plant.energy_export_kwh,
            "frequency": 50.0,
            # What the utility allows now, as a terminal relays it; None: no signal in force.
            "utility_limit": self.plant.utility_limit_kw,
            "clock": self.plant.now,
        }
        for voltage_name, current_name, power_name in _PHASE_NAMES:
            values[voltage_name] = voltage
            values[current_name] = current
            values[power_name] = phase_kw
        line = voltage * math.sqrt(3)
        # Balanced phases: line-to-line voltages are sqrt(3) times the phase voltage, and the
        # phase currents' vector sum is 0.
        values.update(voltage_l1_l2=line, voltage_l2_l3=line, voltage_l3_l1=line, current_sum=0.0)
        if self.faults is not None and self.plant.now is not None:
            values = self.faults.meter_values(self.device_id, self.plant.now, values)
        return values

    def write(self, values: Mapping[str, float]) -> None:
        """A meter takes no writes."""
        raise Rejected("the meter has no writable registers")
