"""Which driver speaks for which pile: a DC pile map's `DcPile`, or the AC driver of a charger
map's make (its `[device] driver`) behind `AcPile`. The daemon and the fast simulation build their
piles' drivers here, over whatever `Device` reaches each pile.
"""

from __future__ import annotations

from typing import assert_never

from base.clock import Clock
from base.devicemap import ChargerDriver, is_charger_driver
from base.stationdevices import PileConfig
from drivers.abb import AbbTerraCharger
from drivers.acpile import AcPile
from drivers.alfen import AlfenCharger
from drivers.charger import MapCharger
from drivers.device import Device
from drivers.pile import DcPile, Pile
from drivers.vestel import VestelCharger


def charger_class(driver: ChargerDriver) -> type[MapCharger]:
    """The driver class for a charger make; every make `base.devicemap.CHARGERS` knows has one."""
    match driver:
        case "alfen":
            return AlfenCharger
        case "vestel":
            return VestelCharger
        case "abb-terra-ac":
            return AbbTerraCharger
        case _:
            assert_never(driver)


def pile_driver(config: PileConfig, device: Device, clock: Clock) -> Pile:
    """The driver for one pile: a DC pile in kW, or an AC charger's make behind `AcPile`."""
    regmap = device.map
    if regmap.kind == "charger":
        assert is_charger_driver(regmap.driver)  # the map loader checked it
        return AcPile(config, charger_class(regmap.driver)(config.id, device, clock.now))
    return DcPile(config.id, device, clock.now)
