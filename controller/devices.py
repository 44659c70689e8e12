"""The station's devices as drivers: which driver speaks for each entry of the station config.

A pile entry whose map is of kind "pile" is driven as a DC pile in kW; one whose map is of kind
"charger" is driven by its make's AC driver, in amps, through `AcPile`. Modbus devices share one
connection per host and port (and framing), encrypted with the station's certificates for
`modbus-tls`, and one link per serial line for `modbus-rtu`; OPC-UA
devices one session per endpoint URL. OCPP piles are connectors of charge points that connect to
the daemon's CSMS server (`drivers.ocpp`), which `StationLinks` makes when the station has any
and the daemon runs as a service (`CsmsService`). `StationLinks` keeps those connections for the
daemon, so a reloaded config reuses the ones still in use.
"""

from __future__ import annotations

import logging
import ssl
from functools import partial

from base.clock import Clock
from base.config import Station
from base.events import DeviceRef
from base.loading import ConfigError, ConfigProblem
from base.stationdevices import DeviceEndpoint, PileConfig
from drivers.device import Device
from drivers.makes import pile_driver
from drivers.modbus import ModbusDevice, ModbusLink, ModbusLinks, SerialLine
from drivers.ocpp.pile import OcppPile
from drivers.ocpp.server import CsmsServer
from drivers.opcua.device import OpcUaDevice, OpcUaLinks
from drivers.opcua.link import OpcUaLink
from drivers.opcua.security import OpcUaSecurity
from drivers.pile import Pile
from drivers.tls import client_context

log = logging.getLogger(__name__)


def modbus_link(
    endpoint: DeviceEndpoint, label: str, station: Station, links: ModbusLinks
) -> ModbusLink:
    """The (possibly encrypted) link a station entry's Modbus device is reached through."""
    if endpoint.serial:
        return links.serial(SerialLine.of(endpoint))
    tls = partial(_client_tls, station, label) if endpoint.protocol == "modbus-tls" else None
    rtu = endpoint.protocol == "modbus-rtu-over-tcp"
    return links.get(endpoint.host, endpoint.port, tls=tls, rtu=rtu)


def _client_tls(station: Station, label: str) -> ssl.SSLContext:
    """The daemon's side of Modbus/TCP Security (raises `ConfigError` without certificates)."""
    ident = station.identity("daemon")
    return client_context(ident.cert_pem, ident.key_pem, ident.ca_pem, device=label)


def opcua_security(station: Station) -> OpcUaSecurity:
    """SignAndEncrypt with the daemon's certificate and the station's OPC-UA user and policies."""
    identity = station.identity("daemon")
    assert station.security is not None  # identity() raises ConfigError without [security]
    credentials = station.opcua_credentials()
    user, password = credentials if credentials is not None else (None, None)
    return OpcUaSecurity(
        encrypt=True,
        certificate=identity.cert_pem,
        private_key=identity.key_pem,
        trust_dir=identity.trust_dir,
        crl_dir=identity.crl_dir,
        application_uri=identity.application_uri,
        policies=tuple(station.security.opcua_policies),
        user=user,
        password=password,
    )


def _link_key(endpoint: DeviceEndpoint) -> tuple[str, int | str, str]:
    if endpoint.protocol == "opcua":
        return ("opcua", endpoint.opcua_url, endpoint.opcua_security)
    if endpoint.serial:
        return (endpoint.address, 0, "serial")
    return (endpoint.host, endpoint.port, endpoint.protocol)


class StationLinks:
    """The station's connections: one per Modbus address and per OPC-UA endpoint (and security),
    shared by the devices behind it, opened on first use.

    A reloaded config asks it for the devices it adds: a device at an address already in use
    shares that connection; `prune` closes the connections no device of the new config uses.
    """

    def __init__(self, station: Station, clock: Clock) -> None:
        """Raises `ConfigError` when the OCPP server's certificates or password are missing."""
        self.station = station
        self.clock = clock
        # The OCPP server, when the station has OCPP piles (the daemon starts and stops it).
        self.csms: CsmsServer | None = (
            CsmsServer(station, clock.now) if any(p.ocpp for p in station.piles) else None
        )
        io_timeout = station.control.io_timeout_s
        self.modbus = ModbusLinks(timeout_s=io_timeout)
        # OPC-UA sessions opened after a reload use that config's certificates and user.
        self.opcua = OpcUaLinks(
            now=clock.now, timeout_s=io_timeout, secure=lambda: opcua_security(self.station)
        )
        self._open: dict[tuple[str, int | str, str], ModbusLink | OpcUaLink] = {}

    def device(self, station: Station, endpoint: DeviceEndpoint, ref: DeviceRef) -> Device:
        """The device a station entry names, on its link (its errors name it by `ref`'s label).

        Raises `ConfigError` when certificates or the password an encrypted link needs are
        missing.
        """
        self.station = station
        regmap = station.map_for(endpoint.device)
        device: ModbusDevice | OpcUaDevice
        link: ModbusLink | OpcUaLink
        if endpoint.protocol == "opcua":
            link = self.opcua.get(
                endpoint.opcua_url, encrypt=endpoint.opcua_security == "sign-and-encrypt"
            )
            device = OpcUaDevice(ref.label, link, regmap, endpoint.opcua_object)
        else:
            link = modbus_link(endpoint, ref.label, station, self.modbus)
            device = ModbusDevice(ref.label, link, regmap, endpoint.unit)
        self._open[_link_key(endpoint)] = link
        return device

    def pile(self, station: Station, config: PileConfig) -> Pile:
        """The driver of one pile of `station`: on the OCPP server for OCPP piles, else on its
        link (see `device`). Raises `ConfigError` like `device`, and for the first OCPP pile of a
        daemon started without any (its server starts with the daemon)."""
        if not config.ocpp:
            return pile_driver(
                config, self.device(station, config, DeviceRef.pile(config.id)), self.clock
            )
        if self.csms is None:
            raise ConfigError(
                [
                    ConfigProblem(
                        station.path,
                        DeviceRef.pile(config.id).label,
                        "protocol",
                        "the daemon was started without OCPP piles: restart it to serve OCPP",
                    )
                ]
            )
        self.csms.reconfigure(station)
        return OcppPile(config, self.csms, self.clock.now)

    async def prune(self, station: Station) -> list[str]:
        """Close the connections no device of `station` uses; return their addresses (the OCPP
        server stays, serving the charge points `station` declares)."""
        if self.csms is not None:
            self.csms.reconfigure(station)
        used = {_link_key(endpoint) for endpoint in station.devices}
        closed: list[str] = []
        for key in [k for k in self._open if k not in used]:
            link = self._open.pop(key)
            if isinstance(link, ModbusLink):
                link.close()
                closed.append(link.address)
            else:
                await link.close()
                closed.append(link.url)
        return closed

    async def close(self) -> None:
        """Close every connection."""
        self.modbus.close()
        await self.opcua.close()


class CsmsService:
    """The OCPP server as a daemon service: started before the fast loop arms the piles,
    stopped after it has left them at their fallback power (each charge point's dynamic profile
    is then cleared, so its fail-safe applies, before the websockets close)."""

    def __init__(self, server: CsmsServer, connect_wait_s: float = 0.0) -> None:
        """`connect_wait_s`: how long `start` waits (real time) for the charge points to connect,
        so that the first cycles do not report as lost the ones that are on their way."""
        self.server = server
        self.connect_wait_s = connect_wait_s

    async def start(self) -> None:
        """Listen for the charge points, and give them `connect_wait_s` to connect."""
        await self.server.start()
        if self.connect_wait_s <= 0:
            return
        total = len(self.server.identities)
        missing = await self.server.wait_all_connected(self.connect_wait_s)
        if missing:
            log.warning(
                "OCPP: %d of %d charge points not connected after %g s: %s (each is reported "
                "as it fails to be read, and again when it connects)",
                len(missing),
                total,
                self.connect_wait_s,
                ", ".join(missing),
            )
        else:
            log.info("OCPP: all %d charge points connected", total)

    async def stop(self) -> None:
        """Leave every charge point at its safe power and close."""
        await self.server.stop()
