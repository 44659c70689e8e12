"""AC chargers of three makes, emulated register by register over the plant's pile physics.

Each model is a `DeviceModel` for `RegisterBank`: it shows one `PileModel` (which works in kW)
through its make's map, in amps per phase, and reacts to writes as the make does
(their makers' Modbus documentation):

- Alfen NG9xx: the setpoint (1210) holds for the validity time (60 s), counted down in 1208;
  then the socket drops to the safe current (1212). 1206 reads back the applied current, 1214
  says whether the Modbus setpoint is in use. A reboot loses the setpoint (1210 reads NaN).
- Vestel EVC04: whole amps in 5004 (0 pauses); a setpoint or life-bit (6000) write restarts the
  communication timer (2002); on expiry the charger falls back to the failsafe current (2000).
- ABB Terra AC: mA in 0x4100 (below 6 A pauses); a setpoint write restarts the communication
  timer (0x4106); on expiry the wallbox falls back to its installer's current.

Like every `DeviceModel`, values are in the project's units (A, V, kW, kWh, s); `RegisterBank`
encodes them in each register's unit. The installer's fallback currents (Alfen's safe current,
ABB's fallback) are taken from the station config's `fallback_kw`, as a commissioning engineer
would set them.

A charger's rating is a current, and its power is that current's rounded product: a 22 kW
three-phase charger is 32 A (3 x 32 A x 230 V = 22.08 kW), an 11 kW one 16 A, a 7.4 kW single-phase
one 32 A. The nameplate current is the whole amp nearest the station's power rating; the charger
takes any current up to it, and the pile's physics holds the power to its rating.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from base.clock import Clock
from base.devicemap import PileMode, RegisterMap, Value
from simulator.plant import PileModel, Rejected
from simulator.registers import DeviceModel, PileRegisters


class AcChargerModel:
    """What the three makes share: amps per phase over a kW pile model."""

    def __init__(self, pile: PileModel, regmap: RegisterMap, clock: Clock) -> None:
        self.pile = pile
        self.map = regmap
        self.clock = clock
        self.phases = pile.config.phases
        self.voltage_v = pile.config.voltage_v
        self.min_current_a = regmap.min_current_a if regmap.min_current_a is not None else 6.0
        self.writes = 0

    @property
    def kw_per_amp(self) -> float:
        """kW per amp per phase."""
        return self.phases * self.voltage_v / 1000

    @property
    def max_current_a(self) -> float:
        """The charger's rated current per phase: its nameplate, in whole amps."""
        return float(round(self.pile.config.max_kw / self.kw_per_amp))

    def amps(self, kw: float) -> float:
        """kW to amps per phase."""
        return kw / self.kw_per_amp

    def values(self) -> Mapping[str, Value | None]:
        """Every readable register (each make says how)."""
        raise NotImplementedError

    def write(self, values: Mapping[str, float]) -> None:
        """One write request's values (each make says how)."""
        raise NotImplementedError

    def apply(self, amps: float) -> None:
        """A new current limit: below the minimum it pauses (IEC 61851)."""
        now = self.clock.now()
        if not math.isfinite(amps) or amps < 0:
            raise Rejected(f"current {amps} A is not a current limit")
        if amps > self.max_current_a + 1e-6:
            raise Rejected(f"current {amps:g} A is above the rating of {self.max_current_a:g} A")
        if amps < self.min_current_a:
            self.pile.command(now, 0.0, PileMode.IDLE)
        else:
            kw = min(amps * self.kw_per_amp, self.pile.max_charge_kw)
            self.pile.command(now, kw, PileMode.CHARGE)
        self.writes += 1

    def electrical(self) -> dict[str, Value | None]:
        """Per-phase voltage (V), current (A) and power (kW), and the total power (kW)."""
        power_kw = max(0.0, self.pile.power_kw)
        per_phase_kw = power_kw / self.phases
        current = per_phase_kw * 1000 / self.voltage_v
        values: dict[str, Value | None] = {"power": power_kw}
        phase_of = self.pile.config.phase
        for index in (1, 2, 3):
            live = self.phases == 3 or phase_of == f"L{index}"
            values[f"voltage_l{index}"] = self.voltage_v
            values[f"current_l{index}"] = current if live else 0.0
            values[f"power_l{index}"] = per_phase_kw if live else 0.0
        return values

    def measurements(self) -> dict[str, Value | None]:
        """`electrical` and what a charger's own meter adds: line-to-line voltages, neutral and
        summed currents, power factors, apparent and reactive powers, energy per phase.

        A vehicle's charger draws at unity power factor: apparent power is real power and
        reactive power is 0; three balanced phases leave no neutral current.
        """
        values = self.electrical()
        line = self.voltage_v * math.sqrt(3)
        currents = [float(values[f"current_l{i}"] or 0.0) for i in (1, 2, 3)]
        energy = self.pile.energy_import_kwh
        exported = self.pile.energy_export_kwh
        live = [
            c > 0 or self.phases == 3 or self.pile.config.phase == f"L{i}"
            for i, c in zip((1, 2, 3), currents, strict=True)
        ]
        shares = sum(live)
        for index, (amps, on) in enumerate(zip(currents, live, strict=True), start=1):
            values[f"power_factor_l{index}"] = 1.0 if amps > 0 else 0.0
            values[f"apparent_power_l{index}"] = 1000 * float(values[f"power_l{index}"] or 0.0)
            values[f"reactive_power_l{index}"] = 0.0
            values[f"energy_import_l{index}"] = energy / shares if on else 0.0
            values[f"energy_export_l{index}"] = exported / shares if on else 0.0
        values.update(
            {
                "voltage_l1_l2": line,
                "voltage_l2_l3": line,
                "voltage_l3_l1": line,
                "current_n": 0.0 if self.phases == 3 else max(currents),
                "current_sum": sum(currents),
                "power_factor": 1.0 if any(currents) else 0.0,
                "frequency": 50.0,
                "apparent_power": 1000 * float(values["power"] or 0.0),
                "reactive_power": 0.0,
            }
        )
        return values


class AlfenModel(AcChargerModel):
    """One socket (and its station unit) of an Alfen NG9xx."""

    def __init__(self, pile: PileModel, regmap: RegisterMap, clock: Clock) -> None:
        super().__init__(pile, regmap, clock)
        self.validity_s = regmap.failsafe_timeout_s or 60.0
        pile.configure(self.validity_s, None)
        self.safe_current_a = self.amps(pile.fallback_kw)
        self.setpoint_a: float | None = None
        self.scn_max_a = [self.max_current_a] * 3
        self.phases_setting: int = self.phases
        self.started = clock.now()

    def reboot(self) -> None:
        """A power cycle: the Modbus setpoint is lost, the socket runs on its safe current."""
        self.setpoint_a = None
        self.pile.last_contact = -math.inf

    def _mode3(self) -> str:
        pile = self.pile
        vehicle = pile.vehicle
        if vehicle is None:
            return "A"
        if pile.power_kw > 0.5:
            return "C2"
        if vehicle.full:
            return "B2"
        return "C1" if pile.applied_kw <= 0 else "B2"

    def values(self) -> Mapping[str, Value | None]:
        """Every register, from the model."""
        now = self.clock.now()
        pile = self.pile
        in_use = self.setpoint_a is not None and not pile.timed_out(now)
        applied = self.amps(pile.applied_kw) if in_use else self.safe_current_a
        values = self.measurements()
        date = time.gmtime(now)
        values.update(
            {
                "name": "ALF_1000",
                "manufacturer": "Alfen NV",
                "table_version": 1,
                "firmware_version": "6.4.0-4210",
                "platform_type": "NG910",
                "serial_number": f"ACE{_digits(self.pile.id, 7)}",
                "date_year": date.tm_year,
                "date_month": date.tm_mon,
                "date_day": date.tm_mday,
                "time_hour": date.tm_hour,
                "time_minute": date.tm_min,
                "time_second": date.tm_sec,
                "uptime": round(1000 * (now - self.started)),
                "time_zone": 0,
                "temperature": 31.5,
                "ocpp_state": 0,
                "sockets": 1,
                "meter_state": 3,  # initialised and updated
                "meter_timestamp": 0,
                "meter_type": 0,
                "station_max_current": float(self.max_current_a),
                "scn_max_current_l1": self.scn_max_a[0],
                "scn_max_current_l2": self.scn_max_a[1],
                "scn_max_current_l3": self.scn_max_a[2],
                "energy_import": pile.energy_import_kwh,
                "energy_export": pile.energy_export_kwh,
                "availability": 1,
                "mode3_state": self._mode3(),
                "applied_current": applied,
                "validity_time_left": round(pile.countdown(now)) if in_use else 0,
                "setpoint": self.setpoint_a,  # None reads as NaN: lost on reboot
                "safe_current": self.safe_current_a,
                "setpoint_in_use": 1 if in_use else 0,
                "phases": self.phases_setting,
            }
        )
        return values

    def write(self, values: Mapping[str, float]) -> None:
        """Setpoint, phases and smart-charging-network limits."""
        if "phases" in values and int(values["phases"]) not in (1, 3):
            raise Rejected(f"phases must be 1 or 3, got {values['phases']:g}")
        if "setpoint" in values:
            self.apply(values["setpoint"])
            self.setpoint_a = values["setpoint"]
        if "phases" in values:
            self.phases_setting = int(values["phases"])
        for index in (1, 2, 3):
            key = f"scn_max_current_l{index}"
            if key in values:
                self.scn_max_a[index - 1] = values[key]


class VestelModel(AcChargerModel):
    """A Vestel EVC04 / Webasto Next."""

    def __init__(self, pile: PileModel, regmap: RegisterMap, clock: Clock) -> None:
        super().__init__(pile, regmap, clock)
        self.failsafe_current_a: float = math.floor(self.amps(pile.fallback_kw) + 1e-9)
        self.power_limit_kw: float | None = None
        self.setpoint_a: float = 0.0
        self.session_started = clock.now()
        self.session_seen = pile.session_id

    def values(self) -> Mapping[str, Value | None]:
        """Every register, from the model."""
        now = self.clock.now()
        pile = self.pile
        if pile.session_id != self.session_seen:
            self.session_seen, self.session_started = pile.session_id, now
        vehicle = pile.vehicle
        charging = pile.power_kw > 0.5
        if vehicle is None:
            cp_state, cable = 0, 0
        elif charging:
            cp_state, cable = 2, 3
        elif vehicle.full:
            cp_state, cable = 4, 3
        else:
            cp_state, cable = 3, 3
        values = self.electrical()
        values.update(
            {
                "serial_number": f"EVC04{_digits(pile.id, 10)}",
                "brand": "Vestel",
                "model": "EVC04",
                "firmware_version": "v3.187.0",
                "number_of_phases": 1 if self.phases == 3 else 0,
                "equipment_state": 2 if pile.fault_code else 1,
                "rfid_tag": "",
                "setpoint": self.setpoint_a,
                "cp_state": cp_state,
                "charging": 1 if charging else 0,
                "cable_state": cable,
                "error_code": pile.fault_code,
                "energy_import": pile.energy_import_kwh,
                "max_hw_current": self.max_current_a,
                "min_hw_current": self.min_current_a,
                "session_energy": max(0.0, pile.session_energy_kwh) if vehicle else 0.0,
                "session_time": round(now - self.session_started) if vehicle else 0,
                "failsafe_current": self.failsafe_current_a,
                "comm_timeout": round(pile.comm_timeout_s),
            }
        )
        return values

    def write(self, values: Mapping[str, float]) -> None:
        """Setpoint, life bit, power limit and fail-safe settings."""
        now = self.clock.now()
        if "comm_timeout" in values or "failsafe_current" in values:
            current = values.get("failsafe_current")
            if current is not None and 0 < current < self.min_current_a:
                raise Rejected(f"failsafe current {current:g} A is below {self.min_current_a:g} A")
            fallback_kw = None if current is None else current * self.kw_per_amp
            self.pile.configure(values.get("comm_timeout"), fallback_kw)
            if current is not None:
                self.failsafe_current_a = current
        if "power_limit" in values:
            self.power_limit_kw = values["power_limit"]
        if "setpoint" in values:
            amps = values["setpoint"]
            if amps > self.max_current_a:
                raise Rejected(
                    f"current {amps:g} A is above the rating of {self.max_current_a:g} A"
                )
            if self.power_limit_kw is not None:
                amps = min(amps, math.floor(self.power_limit_kw / self.kw_per_amp))
            self.apply(amps)
            self.setpoint_a = values["setpoint"]
        if "life_bit" in values:
            if values["life_bit"] != 1:
                raise Rejected("the life bit takes 1")
            self.pile.heartbeat(now)


# ABB's state byte has bit 7 set while the current limit is below the rated current.
_BELOW_RATED = 0x80


class AbbTerraModel(AcChargerModel):
    """An ABB Terra AC wallbox."""

    def __init__(self, pile: PileModel, regmap: RegisterMap, clock: Clock) -> None:
        super().__init__(pile, regmap, clock)
        self.limit_a: float | None = None

    def values(self) -> Mapping[str, Value | None]:
        """Every register, from the model."""
        now = self.clock.now()
        pile = self.pile
        vehicle = pile.vehicle
        if vehicle is None:
            state = 0
        elif pile.power_kw > 0.5:
            state = 4
        elif vehicle.full:
            state = 2
        else:
            state = 3 if pile.applied_kw <= 0 else 2
        if self.limit_a is None or pile.timed_out(now):
            applied = self.amps(pile.fallback_kw)
        else:
            applied = self.limit_a
        if state and applied < self.max_current_a:
            state |= _BELOW_RATED
        values = self.electrical()
        values.update(
            {
                "serial_number": int(_digits(pile.id, 12), 16),
                "firmware_version": 0x01060600,  # 1.6.6
                "error_code": pile.fault_code,
                "socket_lock": 0 if vehicle is None else 0x0111,
                "max_rated_current": float(self.max_current_a),
                "state": state,
                "applied_current": applied,
                "session_energy": max(0.0, pile.session_energy_kwh) if vehicle else 0.0,
            }
        )
        return values

    def write(self, values: Mapping[str, float]) -> None:
        """Current limit and communication timeout."""
        if "comm_timeout" in values:
            self.pile.configure(values["comm_timeout"], None)
        if "setpoint" in values:
            amps = values["setpoint"]
            self.apply(amps)
            self.limit_a = amps


def _digits(text: str, count: int) -> str:
    """`count` decimal digits that stand for `text` (a plausible serial number for a pile)."""
    number = int.from_bytes(text.encode("utf-8")[-8:], "big") % 10**count
    return f"{number:0{count}d}"


CHARGER_MODELS: dict[str, type[AcChargerModel]] = {
    "alfen": AlfenModel,
    "vestel": VestelModel,
    "abb-terra-ac": AbbTerraModel,
}


def pile_device_model(
    pile: PileModel, regmap: RegisterMap, clock: Clock, *, bms: bool = True
) -> DeviceModel:
    """The registers a pile shows: an AC charger's make, or the flexcharge DC pile map (`bms`
    False: one that passes on nothing of its vehicle's battery, see `PileRegisters`)."""
    if regmap.kind == "charger":
        return CHARGER_MODELS[regmap.driver or ""](pile, regmap, clock)
    return PileRegisters(pile, regmap, clock, bms=bms)
