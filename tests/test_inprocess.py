"""The fast simulation's in-process transport: the daemon's drivers, their codecs and checks, with
no socket in between (`simulator.inprocess`).

Against the hardware simulator on loopback sockets, the same drivers over in-process links read
the very same values from the same plant, and fail with the very same errors; without sockets,
what a driver writes and reads is quantised by the device map as a real device's registers are.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import pytest

from base.clock import VirtualClock
from base.config import Station
from base.devicemap import PileMode
from drivers.errors import DeviceTimeout, DriverError
from drivers.meter import MapMeter
from drivers.modbus import ModbusDevice, ModbusLink
from drivers.pile import DcPile, PileReading
from simulator.faults import Fault, FaultKind, FaultScript
from simulator.hardware import StationSimulator
from simulator.inprocess import InProcessStation, StepClock, finish
from simulator.plant import Plant
from simulator.registers import PileRegisters
from tests.conftest import local_time, truck_visit


@contextmanager
def _links(station: Station) -> Iterator[dict[str, ModbusLink]]:
    links = {
        device.id: ModbusLink(device.host, device.port, timeout_s=station.control.io_timeout_s)
        for device in station.devices
    }
    try:
        yield links
    finally:
        for link in links.values():
            link.close()


def _over_modbus(station: Station, links: dict[str, ModbusLink]) -> tuple[MapMeter, DcPile]:
    """The daemon's meter and P01 drivers over loopback sockets."""
    gm, p01 = station.grid_meter, station.pile("P01")
    meter = MapMeter(
        gm.id, ModbusDevice(f"meter {gm.id}", links[gm.id], station.map_for(gm.device), gm.unit)
    )
    pile = DcPile(
        p01.id, ModbusDevice(f"pile {p01.id}", links[p01.id], station.map_for(p01.device), p01.unit)
    )
    return meter, pile


async def _outcome(call: object) -> object:
    try:
        return await call  # type: ignore[misc]
    except DriverError as exc:
        return (type(exc), str(exc))


def _in_process(call: object) -> object:
    try:
        return finish(call)  # type: ignore[arg-type]
    except DriverError as exc:
        return (type(exc), str(exc))


@pytest.mark.asyncio
@pytest.mark.loopback
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_in_process_drivers_read_and_fail_as_over_modbus(station: Station) -> None:
    """The same plant read through the same drivers, over sockets and in-process: the same
    readings, and the same errors for a silent pile and for one that drops its connections."""
    start = local_time(station, "2026-11-25T10:00")
    faults = FaultScript(
        [
            Fault(FaultKind.SILENT, "P01", start + 30, start + 40),
            Fault(FaultKind.DROPPED, "P01", start + 50, start + 60),
        ]
    )
    clock = VirtualClock(start)
    with clock.participant():
        visits = [truck_visit(start, "P01", soc=0.2)]
        async with StationSimulator(station, clock, visits=visits, faults=faults) as sim:
            step = StepClock(start)
            local = InProcessStation(station, sim.plant, faults, step)
            with _links(station) as links:
                meter, pile = _over_modbus(station, links)
                await pile.arm_failsafe(30.0, 100.0)
                await pile.command(250.0)
                # Between the plant's steps: nothing moves while the sockets work.
                for at in (20.5, 35.5, 55.5, 70.5):
                    await clock.sleep_until(start + at)
                    step.time = clock.now()
                    assert _in_process(local.meter.read()) == await _outcome(meter.read())
                    over_modbus = await _outcome(pile.read())
                    # The in-process driver wrote nothing: what it tells the judge differs.
                    in_process = _in_process(local.piles["P01"].read())
                    if not isinstance(over_modbus, PileReading):
                        assert in_process == over_modbus, at
                        assert isinstance(over_modbus, tuple)
                        assert over_modbus[0] is DeviceTimeout
                    else:
                        assert isinstance(in_process, PileReading)
                        assert in_process == replace(
                            over_modbus,
                            commanded_kw=None,
                            commanded_since=in_process.commanded_since,
                        )
                        assert over_modbus.power_kw >= 100.0  # then its fallback power


def test_the_maps_quantise_what_the_drivers_read_and_write(reference: Station) -> None:
    """A setpoint is written in the map's steps (0.01 kW), and the readings come back in its
    steps: pile power in 0.01 kW, its energy counter in 0.1 kWh, grid power as a float32 of W."""
    start = local_time(reference, "2026-11-25T10:00")
    plant = Plant(reference, [truck_visit(start, "P01", soc=0.2)], record=False)
    clock = StepClock(start)
    station = InProcessStation(reference, plant, FaultScript(), clock)
    pile = station.piles["P01"]
    model = plant.piles["P01"]

    for now in np.arange(start + 1, start + 61):
        clock.time = float(now)
        plant.step(clock.time, 1.0)
        finish(pile.command(123.456789))
    assert model.setpoint_kw == pytest.approx(123.46, abs=1e-9)

    reading = finish(pile.read())
    assert reading.commanded_kw == 123.456789  # what the driver was asked for
    assert reading.applied_setpoint_kw == model.setpoint_kw  # what it applies, in its steps
    assert model.power_kw == pytest.approx(123.46)
    assert reading.power_kw == pytest.approx(round(model.power_kw, 2), abs=1e-9)
    assert reading.energy_import_kwh == pytest.approx(round(model.energy_import_kwh, 1), abs=1e-9)
    assert reading.energy_import_kwh != model.energy_import_kwh

    grid = finish(station.meter.read())
    as_float32 = float(np.float32(plant.site_kw * 1000)) / 1000
    assert grid.power_kw == pytest.approx(as_float32, rel=1e-12)
    assert not math.isclose(grid.power_kw, plant.site_kw, rel_tol=1e-12, abs_tol=0.0)


def test_the_drivers_run_without_an_event_loop(reference: Station) -> None:
    """A driver's call over in-process links never suspends: no event loop runs it."""
    start = local_time(reference, "2026-11-25T10:00")
    plant = Plant(reference, record=False)
    station = InProcessStation(reference, plant, FaultScript(), StepClock(start))
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    assert finish(station.piles["P02"].read()).power_kw == 0.0


@pytest.mark.parametrize("bms", [True, False])
def test_a_pile_shows_in_its_registers_what_its_model_reads(reference: Station, bms: bool) -> None:
    """`PileRegisters` works its registers out from the model directly: they say what
    `PileModel.reading` says (with nothing of the battery without a BMS), idle, charging, in
    the taper and after a reboot."""
    start = local_time(reference, "2026-11-25T10:00")
    plant = Plant(reference, [truck_visit(start, "P01", soc=0.7)], record=False)
    clock = StepClock(start)
    model = plant.piles["P01"]
    registers = PileRegisters(
        model, reference.map_for(reference.pile("P01").device), clock, bms=bms
    )
    names = {
        "state": "state",
        "soc": "soc_pct",
        "power": "power_kw",
        "energy_import": "energy_import_kwh",
        "energy_export": "energy_export_kwh",
        "max_charge_power": "max_charge_kw",
        "max_discharge_power": "max_discharge_kw",
        "min_power": "min_kw",
        "ev_max_power": "ev_max_kw",
        "ev_capacity": "ev_capacity_kwh",
        "session_energy": "session_energy_kwh",
        "applied_setpoint": "applied_setpoint_kw",
        "fallback_countdown": "fallback_countdown_s",
        "fault_code": "fault_code",
        "session_id": "session_id",
    }
    battery = {"soc", "ev_max_power", "ev_capacity"}
    codes = registers._state_code
    seen = set()
    for k in range(1, 200):
        clock.time = start + 60.0 * k
        plant.step(clock.time, 60.0)
        if k == 3:
            model.command(clock.time, 350.0, PileMode.CHARGE)
        if k == 150:
            model.reboot(clock.time, 120.0)
        shown = registers.values()
        reading = model.reading(clock.time)
        for register, field in names.items():
            expected = getattr(reading, field)
            if register == "state":
                expected = codes[expected]
            elif register in battery and not bms:
                expected = None
            assert shown[register] == expected, (k, register)
            assert type(shown[register]) is type(expected), (k, register)
        assert shown["setpoint"] == model.setpoint_kw
        seen.add(reading.state)
    assert len(seen) >= 2
