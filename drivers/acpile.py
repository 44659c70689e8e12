"""An AC charger seen as a pile: the controller's power setpoints turned into amps per phase.

The controller plans and limits in kW; an AC charger takes a current per phase. `AcPile` converts
with the pile's phases and the phase voltage, rounding so that the power it allows is never above
the setpoint: it converts with the higher of the nominal voltage and the highest voltage the
charger measures. It never asks for a current between 0 and the charger's minimum (the charger's
driver floors anything below it to 0, a pause), and fills in what AC chargers do not report
(session numbers, session energy) from what they do.
"""

from __future__ import annotations

from base.stationdevices import PileConfig
from drivers.charger import AcCharger, ChargerReading
from drivers.pile import PileReading


class AcPile:
    """The `Pile` interface over an `AcCharger`."""

    def __init__(self, config: PileConfig, charger: AcCharger) -> None:
        self.id = config.id
        self.config = config
        self.charger = charger
        self.voltage_v = config.voltage_v
        self._session_id = 0
        self._present = False
        self._session_start_kwh: float | None = None
        self._lifetime_kwh = 0.0
        self._last_session_kwh = 0.0
        self.last: ChargerReading | None = None

    def kw_per_amp(self) -> float:
        """kW per amp per phase, at the voltage used to turn setpoints into currents."""
        return self.config.phases * self.voltage_v / 1000

    async def connect(self) -> None:
        """Open the connection to the charger."""
        await self.charger.connect()

    async def read(self) -> PileReading:
        """Read the charger and express it in kW."""
        reading = await self.charger.read()
        self.last = reading
        measured = [v for v in reading.voltages_v if v is not None and v > 0]
        # Converting with the highest voltage seen keeps the power allowed under the setpoint.
        self.voltage_v = max([self.config.voltage_v, *measured])
        per_amp = self.kw_per_amp()
        present = reading.state.vehicle_present
        if present and not self._present:
            self._session_id += 1
            self._session_start_kwh = reading.energy_import_kwh
            self._last_session_kwh = 0.0
        self._present = present
        session = self._session_energy(reading)
        if reading.energy_import_kwh is not None:
            lifetime = reading.energy_import_kwh
        else:
            self._lifetime_kwh += max(0.0, session - self._last_session_kwh)
            lifetime = self._lifetime_kwh
        self._last_session_kwh = session
        # Without a read-back, the limit in force is the last one written.
        applied = (
            reading.applied_current_a
            if reading.applied_current_a is not None
            else reading.commanded_a
        )
        commanded = reading.commanded_a
        return PileReading(
            state=reading.state,
            power_kw=reading.power_kw,
            applied_setpoint_kw=(applied if applied is not None else 0.0) * per_amp,
            max_charge_kw=reading.max_current_a * per_amp,
            max_discharge_kw=0.0,
            min_kw=reading.min_current_a * per_amp,
            energy_import_kwh=lifetime,
            energy_export_kwh=0.0,
            session_energy_kwh=session,
            session_id=self._session_id,
            fallback_countdown_s=reading.fallback_countdown_s,
            commanded_kw=None if commanded is None else commanded * per_amp,
            commanded_since=reading.commanded_since,
            setpoint_unused=reading.setpoint_unused,
            resolution_kw=reading.resolution_a * per_amp,
        )

    def _session_energy(self, reading: ChargerReading) -> float:
        if not self._present:
            return 0.0
        if reading.session_energy_kwh is not None:
            return reading.session_energy_kwh
        if reading.energy_import_kwh is not None and self._session_start_kwh is not None:
            return max(0.0, reading.energy_import_kwh - self._session_start_kwh)
        return 0.0

    def amps_for(self, kw: float) -> float:
        """The current per phase for a power setpoint (0 for discharge: AC chargers cannot)."""
        if kw <= 0:
            return 0.0
        return kw / self.kw_per_amp()

    async def command(self, setpoint_kw: float) -> None:
        """Set the power limit as a current per phase."""
        await self.charger.set_current(self.amps_for(setpoint_kw))

    async def arm_failsafe(self, timeout_s: float, fallback_kw: float) -> None:
        """Set the fail-safe: the fallback power as a current per phase."""
        await self.charger.arm_failsafe(timeout_s, self.amps_for(fallback_kw))
