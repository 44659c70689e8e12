"""AC chargers as the controller sees them: current per phase, in amps, whatever their maker.

An AC charger is told a current limit per phase, not a power: `AcCharger` is that interface, and
`MapCharger` is the part every make shares, over a `Device` and its map:

- the setpoint is floored to what the charger can express and never lies between 0 and the
  charger's minimum current (IEC 61851: below 6 A a vehicle may not charge, so 0 pauses);
- the fail-safe stays armed: the setpoint (and the life bit, where the make has one) is
  rewritten whenever it changes and at the latest every half of the charger's timeout, without
  relying on the caller's rhythm;
- each reading reports what was written and since when, the limit the charger says it applies
  and whether it says it uses its Modbus setpoint: whether it follows is the controller's
  judgement (`control.follow`), not the driver's. A charger that says it ignores its setpoint,
  or applies more than it was written, is written again at once, in case it rebooted and lost
  the setpoint.

The makes (Alfen, Vestel, ABB) are in `drivers.alfen`, `drivers.vestel` and `drivers.abb`.
Converting between power and current is the controller's job: it knows the phases and voltage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, Protocol

from base.devicemap import PileState, Value
from drivers.codec import from_project_units, in_project_units
from drivers.device import Device
from drivers.errors import BadValue

Now = Callable[[], float]

# Half the timeout at most between two writes, as drivers in the field do; a little less, so
# a write that is due in the same cycle as the timer's half does not arrive a cycle late.
KEEPALIVE_SHARE = 0.45


class Mode3(StrEnum):
    """IEC 61851-1 control pilot states, as chargers report them."""

    A = "A"  # no vehicle
    B1 = "B1"  # vehicle connected, charger not ready
    B2 = "B2"  # vehicle connected, charger ready, vehicle not asking
    C1 = "C1"  # vehicle asks, charger does not allow
    C2 = "C2"  # charging
    D1 = "D1"  # as C1, with ventilation
    D2 = "D2"  # as C2, with ventilation
    E = "E"  # no power / short circuit
    F = "F"  # charger fault
    OTHER = "other"

    @property
    def pile_state(self) -> PileState:
        """The controller's view of this state."""
        return _MODE3_STATE[self]


_MODE3_STATE = {
    Mode3.A: PileState.AVAILABLE,
    Mode3.B1: PileState.CONNECTED,
    Mode3.B2: PileState.CONNECTED,
    Mode3.C1: PileState.CONNECTED,
    Mode3.C2: PileState.CHARGING,
    Mode3.D1: PileState.CONNECTED,
    Mode3.D2: PileState.CHARGING,
    Mode3.E: PileState.FAULT,
    Mode3.F: PileState.FAULT,
    Mode3.OTHER: PileState.UNAVAILABLE,
}


@dataclass(frozen=True)
class ChargerReading:
    """One reading of an AC charger. Currents are per phase."""

    state: PileState
    power_kw: float
    max_current_a: float
    min_current_a: float
    applied_current_a: float | None
    currents_a: tuple[float | None, float | None, float | None] = (None, None, None)
    voltages_v: tuple[float | None, float | None, float | None] = (None, None, None)
    energy_import_kwh: float | None = None
    session_energy_kwh: float | None = None
    fallback_countdown_s: float | None = None
    # The current last written and since when (the controller's clock); None: nothing written.
    commanded_a: float | None = None
    commanded_since: float | None = None
    # What the charger says when it does not use its Modbus setpoint (empty: it does).
    setpoint_unused: str = ""
    # The step in which the make takes and reports a current.
    resolution_a: float = 0.0


class AcCharger(Protocol):
    """What the controller needs of an AC charger."""

    id: str

    async def connect(self) -> None:
        """Open the connection to the charger."""
        ...

    async def read(self) -> ChargerReading:
        """Read the charger's state, currents and applied limit."""
        ...

    async def set_current(self, amps: float) -> None:
        """Set the current limit per phase (0 pauses); also keeps the fail-safe armed."""
        ...

    async def arm_failsafe(self, timeout_s: float, fallback_a: float) -> None:
        """Set what the charger does on its own when the controller falls silent."""
        ...


class MapCharger:
    """The behaviour every AC charger make shares; a make fills in its registers.

    `now` is the controller's clock: the keep-alive and the dates of setpoints never read the
    wall clock.
    """

    # Set by each make.
    REQUIRED_REGISTERS: ClassVar[tuple[str, ...]] = ()
    RESOLUTION_A: ClassVar[float] = 0.1
    DEFAULT_TIMEOUT_S: ClassVar[float] = 60.0

    def __init__(self, charger_id: str, device: Device, now: Now) -> None:
        self.id = charger_id
        self.device = device
        self.now = now
        regmap = device.map
        self.min_current_a = regmap.min_current_a if regmap.min_current_a is not None else 6.0
        self.timeout_s = regmap.failsafe_timeout_s or self.DEFAULT_TIMEOUT_S
        self.max_current_a: float | None = None
        self.written_a: float | None = None
        self.written_at = -math.inf
        self.changed_at = -math.inf
        self.writes = 0
        self._rewrite = False

    # -- what a make provides ---------------------------------------------------------------

    def _state(self, raw: Mapping[str, Value | None]) -> PileState:
        raise NotImplementedError

    def _max_current(self, raw: Mapping[str, Value | None]) -> float:
        raise NotImplementedError

    def _min_current(self, raw: Mapping[str, Value | None]) -> float:
        return self.min_current_a

    def _countdown(self, raw: Mapping[str, Value | None]) -> float | None:
        return None

    def _setpoint_unused(self, raw: Mapping[str, Value | None]) -> str:
        """Non-empty when the charger says it is not using the Modbus setpoint."""
        return ""

    async def _write_current(self, amps: float) -> None:
        """One write of the setpoint (a make with a life bit sets it in the same breath)."""
        await self.device.write({"setpoint": from_project_units(self.device.map["setpoint"], amps)})

    # -- shared -------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection to the charger."""
        await self.device.connect()

    def _names(self) -> tuple[str, ...]:
        regmap = self.device.map
        optional = (
            "current_l1",
            "current_l2",
            "current_l3",
            "voltage_l1",
            "voltage_l2",
            "voltage_l3",
            "energy_import",
            "session_energy",
            "applied_current",
        )
        names = [*self.REQUIRED_REGISTERS, *(n for n in optional if n in regmap)]
        return tuple(n for n in dict.fromkeys(names) if regmap[n].access.readable)

    async def read(self) -> ChargerReading:
        """Read the charger, with what it was told and since when."""
        raw = await self.device.read(self._names())

        def value(name: str) -> float | None:
            if name not in raw:
                return None
            return in_project_units(self.device.map[name], raw[name])

        power = value("power")
        if power is None:
            raise BadValue(self.id, "power: the charger reports it unavailable")
        applied = value("applied_current")
        unused = self._setpoint_unused(raw)
        written = self.written_a
        # A charger that says it lost its setpoint is written again at once: it may have
        # rebooted. One applying less than written is limiting itself (cable, installer), and
        # is left alone.
        self._rewrite = written is not None and (
            bool(unused) or (applied is not None and applied > written + self.RESOLUTION_A / 2)
        )
        self.max_current_a = self._max_current(raw)
        return ChargerReading(
            state=self._state(raw),
            power_kw=power,
            max_current_a=self.max_current_a,
            min_current_a=max(self.min_current_a, self._min_current(raw)),
            applied_current_a=applied,
            currents_a=(value("current_l1"), value("current_l2"), value("current_l3")),
            voltages_v=(value("voltage_l1"), value("voltage_l2"), value("voltage_l3")),
            energy_import_kwh=value("energy_import"),
            session_energy_kwh=value("session_energy"),
            fallback_countdown_s=self._countdown(raw),
            commanded_a=written,
            commanded_since=None if written is None else self.changed_at,
            setpoint_unused=unused,
            resolution_a=self.RESOLUTION_A,
        )

    def allowed(self, amps: float) -> float:
        """The setpoint the charger is actually given for a wish of `amps`: at most its rating
        (once read), floored to its resolution, and 0 below its minimum current."""
        if not math.isfinite(amps) or amps <= 0:
            return 0.0
        if self.max_current_a is not None:
            amps = min(amps, self.max_current_a)
        floored = math.floor(amps / self.RESOLUTION_A + 1e-9) * self.RESOLUTION_A
        floored = round(floored, 6)
        return floored if floored >= self.min_current_a else 0.0

    async def set_current(self, amps: float) -> None:
        """Write the current limit if it changed, or to keep the fail-safe armed."""
        target = self.allowed(amps)
        now = self.now()
        changed = target != self.written_a
        due = now - self.written_at >= KEEPALIVE_SHARE * self.timeout_s
        if changed or due or self._rewrite:
            await self._write_current(target)
            if changed:
                self.changed_at = now
            self.written_a = target
            self.written_at = now
            self.writes += 1
            self._rewrite = False

    async def arm_failsafe(self, timeout_s: float, fallback_a: float) -> None:
        """Makes with a writable fail-safe override this; the rest check what is set."""
        self.timeout_s = min(self.timeout_s, timeout_s)
