"""The station's devices as the simulator shows them: one `DeviceModel` per entry of its config.

The hardware simulator serves these models on the endpoints the config names; the fast
simulation's in-process transport answers from the very same models. An OCPP pile has no register
map: the hardware simulator runs it as a simulated charge point (`simulator.ocpp`), and the fast
simulation, which does not run the OCPP transport, reads and writes its pile model through the
flexcharge DC pile map (`device_map`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from base.clock import Clock
from base.config import CONFIG_ROOT, Station
from base.devicemap import RegisterMap
from base.events import DeviceRef
from base.mapfile import load_register_map
from base.stationdevices import DeviceEndpoint, PileConfig
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
        model = pile_device_model(plant.piles[pile.id], device_map(station, pile), clock, bms=bms)
        devices.append(SimulatedDevice(pile, DeviceRef.pile(pile.id).label, model))
    return devices


# The map an OCPP pile is read and written through where its transport is not run.
OCPP_STAND_IN_MAP = "flexcharge-dc-pile"


@cache
def _stand_in_map() -> RegisterMap:
    return load_register_map(CONFIG_ROOT / "devices" / f"{OCPP_STAND_IN_MAP}.toml")


def device_map(station: Station, endpoint: DeviceEndpoint) -> RegisterMap:
    """The register map a device is shown through: its own, or for an OCPP pile the flexcharge
    DC pile map."""
    if isinstance(endpoint, PileConfig) and endpoint.ocpp:
        return station.device_maps.get(OCPP_STAND_IN_MAP) or _stand_in_map()
    return station.map_for(endpoint.device)
