"""Power to current and back: `AcPile` over a fake AC charger, and `MapCharger`'s rounding.

Pure logic with a fake charger (the makes themselves are tested on loopback in
test_chargers_loopback.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from base.config import CONFIG_ROOT
from base.devicemap import PileState, RegisterMap, Value
from base.mapfile import load_register_map
from base.stationdevices import PileConfig
from drivers.acpile import AcPile
from drivers.alfen import AlfenCharger
from drivers.charger import ChargerReading, MapCharger
from drivers.codec import from_project_units


class FakeCharger:
    """Records what it is told; reads back what the test sets."""

    def __init__(self) -> None:
        self.id = "AC1"
        self.currents: list[float] = []
        self.armed: list[tuple[float, float]] = []
        self.reading = ChargerReading(
            state=PileState.AVAILABLE,
            power_kw=0.0,
            max_current_a=32.0,
            min_current_a=6.0,
            applied_current_a=None,
        )

    async def connect(self) -> None:
        pass

    async def read(self) -> ChargerReading:
        return self.reading

    async def set_current(self, amps: float) -> None:
        self.currents.append(amps)

    async def arm_failsafe(self, timeout_s: float, fallback_a: float) -> None:
        self.armed.append((timeout_s, fallback_a))


def _config(phases: int = 3, phase: str | None = None) -> PileConfig:
    return PileConfig(
        id="AC1",
        device="alfen-ng9xx",
        host="127.0.0.1",
        port=1502,
        max_kw=22.0,
        min_kw=4.14,
        comm_timeout_s=60.0,
        fallback_kw=4.14,
        phases=phases,  # type: ignore[arg-type]
        phase=phase,  # type: ignore[arg-type]
    )


@pytest.mark.asyncio
async def test_power_becomes_current_per_phase() -> None:
    """11.04 kW on three phases at 230 V is 16 A; on one phase 48 A; discharge is 0."""
    charger = FakeCharger()
    pile = AcPile(_config(), charger)
    await pile.command(11.04)
    await pile.command(-5.0)
    single = AcPile(_config(phases=1, phase="L2"), charger)
    await single.command(7.36)
    assert charger.currents == pytest.approx([16.0, 0.0, 32.0])
    await pile.arm_failsafe(60.0, 4.14)
    assert charger.armed == [(60.0, pytest.approx(6.0))]


@pytest.mark.asyncio
async def test_conversion_uses_the_highest_voltage_measured() -> None:
    """At 240 V measured, 11.04 kW is 15.33 A, so the charger never draws above the setpoint."""
    charger = FakeCharger()
    charger.reading = ChargerReading(
        state=PileState.CHARGING,
        power_kw=11.0,
        max_current_a=32.0,
        min_current_a=6.0,
        applied_current_a=16.0,
        voltages_v=(238.0, 240.0, 236.0),
        energy_import_kwh=100.0,
    )
    pile = AcPile(_config(), charger)
    reading = await pile.read()
    await pile.command(11.04)
    assert charger.currents[-1] == pytest.approx(11.04 * 1000 / (3 * 240.0))
    assert charger.currents[-1] * 3 * 240.0 / 1000 <= 11.04 + 1e-9
    assert reading.max_charge_kw == pytest.approx(32 * 3 * 0.240)
    assert reading.min_kw == pytest.approx(6 * 3 * 0.240)
    assert reading.applied_setpoint_kw == pytest.approx(16 * 3 * 0.240)


@pytest.mark.asyncio
async def test_sessions_and_energy_are_derived_from_what_the_charger_reports() -> None:
    """Plug-in starts a session; energy counts from the charger's meter or its session energy."""
    charger = FakeCharger()
    pile = AcPile(_config(), charger)
    assert (await pile.read()).session_id == 0
    charger.reading = ChargerReading(
        state=PileState.CHARGING,
        power_kw=11.0,
        max_current_a=32.0,
        min_current_a=6.0,
        applied_current_a=None,
        commanded_a=16.0,
        energy_import_kwh=100.0,
    )
    first = await pile.read()
    charger.reading = replace(charger.reading, energy_import_kwh=103.5)
    second = await pile.read()
    assert (first.session_id, second.session_id) == (1, 1)
    assert second.session_energy_kwh == pytest.approx(3.5)
    assert first.applied_setpoint_kw == pytest.approx(16 * 3 * 0.23), "no read-back: what we told"


@pytest.mark.asyncio
async def test_what_the_charger_was_told_is_reported_in_kw_and_never_judged() -> None:
    """Commanded current, since when, the make's step and what it says of its setpoint come out
    in kW; a charger applying more than it was told is still reported in the state it says."""
    charger = FakeCharger()
    charger.reading = ChargerReading(
        state=PileState.CHARGING,
        power_kw=13.8,
        max_current_a=32.0,
        min_current_a=6.0,
        applied_current_a=20.0,
        commanded_a=16.0,
        commanded_since=1000.0,
        setpoint_unused="does not use its Modbus setpoint (1214 = 0)",
        resolution_a=1.0,
    )
    reading = await AcPile(_config(), charger).read()
    assert reading.commanded_kw == pytest.approx(16 * 3 * 0.23)
    assert reading.applied_setpoint_kw == pytest.approx(20 * 3 * 0.23)
    assert reading.commanded_since == 1000.0
    assert reading.resolution_kw == pytest.approx(3 * 0.23)
    assert reading.setpoint_unused == "does not use its Modbus setpoint (1214 = 0)"
    assert reading.state is PileState.CHARGING and reading.fault_code == 0 and reading.fault == ""
    unwritten = await AcPile(_config(), FakeCharger()).read()
    assert unwritten.commanded_kw is None and unwritten.commanded_since is None


class _Map:
    min_current_a = 6.0
    failsafe_timeout_s = 60.0


class _Device:
    name = "pile X"
    map = _Map()


@pytest.mark.parametrize(
    ("resolution", "wish", "given"),
    [
        (0.1, 5.99, 0.0),
        (0.1, 6.0, 6.0),
        (0.1, 10.97, 10.9),
        (1.0, 10.97, 10.0),
        (1.0, 6.9, 6.0),
        (0.1, -3.0, 0.0),
        (0.1, float("nan"), 0.0),
        (0.1, 40.0, 32.0),
    ],
)
def test_allowed_current_is_floored_capped_and_never_below_the_minimum(
    resolution: float, wish: float, given: float
) -> None:
    """Floors to the make's resolution, caps at the rating, pauses below 6 A."""

    class Make(MapCharger):
        RESOLUTION_A = resolution

    charger = Make("X", _Device(), lambda: 0.0)  # type: ignore[arg-type]
    charger.max_current_a = 32.0
    assert charger.allowed(wish) == pytest.approx(given)


class _AlfenRegisters:
    """An Alfen socket's registers as values in project units; records the writes."""

    def __init__(self) -> None:
        self.name = "pile ALF"
        self.map: RegisterMap = load_register_map(CONFIG_ROOT / "devices" / "alfen-ng9xx.toml")
        self.values: dict[str, Value | None] = dict.fromkeys(self.map.readable(), 0.0)
        self.values.update(
            availability=1, mode3_state="C2", station_max_current=32.0, setpoint_in_use=1
        )
        self.written: list[float] = []

    async def connect(self) -> None:
        pass

    async def read(self, names: object) -> dict[str, Value | None]:
        raw: dict[str, Value | None] = {}
        for name in self.map.readable():
            value = self.values[name]
            numeric = isinstance(value, float)
            raw[name] = from_project_units(self.map[name], value) if numeric else value
        return raw

    async def write(self, values: dict[str, float]) -> None:
        self.written.append(values["setpoint"])


@pytest.mark.asyncio
async def test_a_charger_contradicting_its_setpoint_is_written_again_at_once() -> None:
    """The driver reports, it does not judge: a setpoint is dated from when it changed (not
    from the keep-alive), and a charger that says it lost its setpoint, or applies more than
    it was written, is written again at the next call; one applying less is left alone."""
    clock = [1000.0]
    device = _AlfenRegisters()
    charger = AlfenCharger("ALF", device, lambda: clock[0])  # type: ignore[arg-type]
    await charger.set_current(16.0)
    clock[0] += 40.0
    await charger.set_current(16.0)  # the keep-alive (45 % of 60 s) rewrites the same current
    assert device.written == [16.0, 16.0]

    def reads(applied: float, in_use: int = 1) -> None:
        device.values.update(applied_current=applied, setpoint_in_use=in_use)

    reads(16.0)
    reading = await charger.read()
    assert (reading.commanded_a, reading.commanded_since) == (16.0, 1000.0)
    assert reading.setpoint_unused == "" and reading.resolution_a == 0.1
    await charger.set_current(16.0)
    assert len(device.written) == 2, "following: nothing to write"
    reads(10.0)  # limiting itself
    await charger.read()
    await charger.set_current(16.0)
    assert len(device.written) == 2
    reads(16.04)  # within the make's step
    await charger.read()
    await charger.set_current(16.0)
    assert len(device.written) == 2
    reads(20.0)
    await charger.read()
    await charger.set_current(16.0)
    assert device.written == [16.0, 16.0, 16.0], "more than written: rewritten at once"
    reads(6.0, in_use=0)
    reading = await charger.read()
    assert reading.setpoint_unused == "does not use its Modbus setpoint (1214 = 0)"
    assert reading.commanded_since == 1000.0
    await charger.set_current(16.0)
    assert len(device.written) == 4, "lost its setpoint: rewritten at once"
