"""The plant's devices as register banks: what a Modbus client reads and writes.

A `RegisterBank` turns one device of the plant into pymodbus `SimDevice`s through the same
`RegisterMap` the driver uses. Registers are filled from the model when a client reads them, and
writes are decoded and handed to the model, which may refuse them. The bank enforces what real
devices enforce: only the function codes the map allows, no write of half a multi-register value,
no write to a read-only register.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimAction, SimData, SimDevice

from base.clock import Clock
from base.devicemap import PileMode, Register, RegisterMap, Value
from drivers.codec import decode, encode, from_project_units, in_project_units
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


class RegisterBank:
    """One device's registers, served by pymodbus and backed by a `DeviceModel`."""

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

    def devices(self) -> list[SimDevice]:
        """One pymodbus `SimDevice` per unit id the map uses."""
        devices = []
        for unit, regs in self._by_unit.items():
            blocks = [
                SimData(
                    address=reg.address,
                    count=reg.words,
                    values=0,
                    datatype=DataType.REGISTERS,
                    readonly=not reg.access.writable,
                )
                for reg in regs
            ]
            devices.append(SimDevice(unit, simdata=blocks, action=self._action_for(unit)))
        return devices

    def _action_for(self, unit: int) -> SimAction:
        regs = self._by_unit[unit]

        async def action(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            touched = [r for r in regs if r.address < address + count and r.end > address]
            if set_values is None and function_code in (6, 16):
                # pymodbus reads the words back to echo a write in its response: not a read.
                return None
            if set_values is None:
                return self._read(function_code, start_address, touched, registers)
            return self._write(function_code, address, count, touched, list(map(int, set_values)))

        return action

    def _read(
        self, function_code: int, start: int, touched: list[Register], registers: list[int]
    ) -> ExcCodes | None:
        if any(not r.access.readable or function_code not in r.read_fcs for r in touched):
            return ExcCodes.ILLEGAL_FUNCTION
        values = self.model.values()
        for reg in touched:
            value = values.get(reg.name)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = from_project_units(reg, float(value))
            words = encode(reg, value)
            registers[reg.address - start : reg.end - start] = words
        return None

    def _write(
        self,
        function_code: int,
        address: int,
        count: int,
        touched: list[Register],
        words: list[int],
    ) -> ExcCodes | None:
        if function_code not in (6, 16):
            return ExcCodes.ILLEGAL_FUNCTION
        end = address + count
        if any(r.address < address or r.end > end for r in touched):
            # Half of a multi-register value: real devices refuse it rather than apply garbage.
            self.rejected_writes += 1
            return ExcCodes.ILLEGAL_VALUE
        if function_code == 6 and any(r.words != 1 for r in touched):
            self.rejected_writes += 1
            return ExcCodes.ILLEGAL_VALUE
        decoded: dict[str, float] = {}
        try:
            for reg in touched:
                value = decode(reg, words[reg.address - address : reg.end - address])
                number = in_project_units(reg, value)
                if number is None:
                    raise Rejected(f"{reg.name}: NaN written")
                decoded[reg.name] = number
            self.model.write(decoded)
        except (Rejected, BadValue):
            self.rejected_writes += 1
            return ExcCodes.ILLEGAL_VALUE
        return None


class PileRegisters:
    """A simulated pile as the `flexcharge-dc-pile` register map shows it."""

    def __init__(self, pile: PileModel, regmap: RegisterMap, clock: Clock) -> None:
        self.pile = pile
        self.clock = clock
        self._state_code = {label: code for code, label in regmap.enums["state"].items()}
        self._mode_code = {label: code for code, label in regmap.enums["mode"].items()}
        self._mode_label = dict(regmap.enums["mode"])

    def values(self) -> Mapping[str, Value | None]:
        """Every register, from the model."""
        pile = self.pile
        reading = pile.reading(self.clock.now())
        vehicle = pile.vehicle
        voltage = 0.0 if vehicle is None else 600.0 + 150.0 * vehicle.soc
        return {
            "state": self._state_code[reading.state.value],
            "soc": reading.soc_pct,
            "voltage": voltage,
            "current": reading.power_kw * 1000 / voltage if voltage else 0.0,
            "power": reading.power_kw,
            "energy_import": reading.energy_import_kwh,
            "energy_export": reading.energy_export_kwh,
            "max_charge_power": reading.max_charge_kw,
            "max_discharge_power": reading.max_discharge_kw,
            "min_power": reading.min_kw,
            "ev_max_power": reading.ev_max_kw,
            "ev_capacity": reading.ev_capacity_kwh,
            "session_energy": reading.session_energy_kwh,
            "applied_setpoint": reading.applied_setpoint_kw,
            "fallback_countdown": reading.fallback_countdown_s,
            "fault_code": reading.fault_code,
            "session_id": reading.session_id,
            "setpoint": pile.setpoint_kw,
            "mode": self._mode_code[pile.mode.value],
            "heartbeat": 0,
            "comm_timeout": pile.comm_timeout_s,
            "fallback_power": pile.fallback_kw,
        }

    def write(self, values: Mapping[str, float]) -> None:
        """Setpoint, mode, heartbeat and fail-safe writes."""
        now = self.clock.now()
        mode: PileMode | None = None
        if "mode" in values:
            label = self._mode_label.get(int(values["mode"]))
            if label is None:
                raise Rejected(f"unknown mode {values['mode']}")
            mode = PileMode(label)
        if "comm_timeout" in values or "fallback_power" in values:
            self.pile.configure(values.get("comm_timeout"), values.get("fallback_power"))
        if "setpoint" in values or mode is not None:
            self.pile.command(now, values.get("setpoint"), mode)
        if "heartbeat" in values:
            self.pile.heartbeat(now)


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
        for phase in (1, 2, 3):
            values[f"voltage_l{phase}"] = voltage
            values[f"current_l{phase}"] = current
            values[f"power_l{phase}"] = phase_kw
        if self.faults is not None and self.plant.now is not None:
            values = self.faults.meter_values(self.device_id, self.plant.now, values)
        return values

    def write(self, values: Mapping[str, float]) -> None:
        """A meter takes no writes."""
        raise Rejected("the meter has no writable registers")
