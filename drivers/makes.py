"""Which driver class speaks for which charger make (a map's `[device] driver`)."""

from __future__ import annotations

from drivers.abb import AbbTerraCharger
from drivers.alfen import AlfenCharger
from drivers.charger import MapCharger
from drivers.vestel import VestelCharger

CHARGER_MAKES: dict[str, type[MapCharger]] = {
    "alfen": AlfenCharger,
    "vestel": VestelCharger,
    "abb-terra-ac": AbbTerraCharger,
}
