"""The station's devices as drivers: which driver speaks for each entry of the station config.

A pile entry whose map is of kind "pile" is driven as a DC pile in kW; one whose map is of kind
"charger" is driven by its make's AC driver, in amps, through `AcPile`. Modbus devices share one
connection per host and port, encrypted with the station's certificates for `modbus-tls`.
"""

from __future__ import annotations

import ssl

from controller.acpile import AcPile
from controller.clock import Clock
from controller.config import DeviceEndpoint, PileConfig, Station
from drivers.device import Device
from drivers.makes import CHARGER_MAKES
from drivers.modbus import ModbusDevice, ModbusLinks
from drivers.pile import DcPile, Pile
from drivers.tls import client_context


def modbus_device(
    endpoint: DeviceEndpoint, label: str, station: Station, links: ModbusLinks
) -> ModbusDevice:
    """The Modbus device a station entry names, on its (possibly encrypted) link."""
    sslctx: ssl.SSLContext | None = None
    if endpoint.protocol == "modbus-tls":
        ident = station.identity("daemon")
        sslctx = client_context(ident.cert_pem, ident.key_pem, ident.ca_pem, device=label)
    link = links.get(endpoint.host, endpoint.port, sslctx=sslctx)
    return ModbusDevice(label, link, station.map_for(endpoint.device), endpoint.unit)


def pile_driver(config: PileConfig, device: Device, clock: Clock) -> Pile:
    """The driver for one pile: a DC pile in kW, or an AC charger's make behind `AcPile`."""
    regmap = device.map
    if regmap.kind == "charger":
        make = CHARGER_MAKES[regmap.driver or ""]
        return AcPile(config, make(config.id, device, clock.now))
    return DcPile(config.id, device, clock.now)
