"""The station's devices as the simulator shows them: one `DeviceModel` per entry of its config.

The hardware simulator serves these models on the endpoints the config names; the fast
simulation's in-process transport answers from the very same models.
"""

from __future__ import annotations

from dataclasses import dataclass

from base.clock import Clock
from base.config import DeviceEndpoint, Station
from base.events import DeviceRef
from simulator.chargers import pile_device_model
from simulator.faults import FaultScript
from simulator.plant import Plant
from simulator.registers import DeviceModel, MeterRegisters


@dataclass(frozen=True)
class SimulatedDevice:
    """One entry of the station config, named as the daemon names it, and its model."""

    endpoint: DeviceEndpoint
    label: str
    model: DeviceModel


def device_models(
    station: Station, plant: Plant, faults: FaultScript, clock: Clock, *, bms: bool = True
) -> list[SimulatedDevice]:
    """The grid meter, the terminal (if any) and every pile of `station`, over `plant`.

    The meters show the scripted meter faults; `bms` False: the piles pass on nothing of their
    vehicles' batteries (`simulator.registers.PileRegisters`).
    """
    meter = station.grid_meter
    devices = [
        SimulatedDevice(
            meter,
            DeviceRef.meter(meter.id).label,
            MeterRegisters(plant, faults=faults, device_id=meter.id),
        )
    ]
    if station.terminal is not None:
        # The utility's terminal measures the same connection as the grid meter.
        terminal = station.terminal
        relay = MeterRegisters(plant, faults=faults, device_id=terminal.id)
        devices.append(SimulatedDevice(terminal, DeviceRef.terminal(terminal.id).label, relay))
    for pile in station.piles:
        model = pile_device_model(
            plant.piles[pile.id], station.map_for(pile.device), clock, bms=bms
        )
        devices.append(SimulatedDevice(pile, DeviceRef.pile(pile.id).label, model))
    return devices
