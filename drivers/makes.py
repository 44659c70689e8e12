"""Which driver class speaks for which charger make (a map's `[device] driver`)."""

from __future__ import annotations

from typing import assert_never

from base.devicemap import ChargerDriver
from drivers.abb import AbbTerraCharger
from drivers.alfen import AlfenCharger
from drivers.charger import MapCharger
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
