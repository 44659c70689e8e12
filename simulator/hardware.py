"""The station's hardware, simulated and served on the endpoints its config names.

`StationSimulator` owns the plant's stepping task, one pymodbus server per (host, port) of the
station's Modbus devices and one OPC-UA server per (host, port, path) of its OPC-UA devices
(`protocol = "opcua"`), which serves each device as an object of the flexcharge address space,
and one simulated charge point per OCPP pile (`simulator.ocpp`), which connects to the station's
[ocpp] server as a client, as charge points do. It runs on any clock: the wall clock for `flexcharge sim-hardware`, a paced virtual clock for the
demo, an unpaced one in tests.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from base import certs
from base.clock import Clock, Ticker, stop_task
from base.config import Station
from base.listening import cannot_listen
from base.loading import ConfigError
from base.stationdevices import DeviceEndpoint
from drivers.errors import DriverError
from drivers.modbus import SerialLine
from drivers.tls import client_context, server_context
from simulator.devices import device_models
from simulator.faults import FaultScript
from simulator.fleet import Visit, random_day
from simulator.modbus_server import DeviceServer
from simulator.ocpp.charge_point import Endpoint, SimulatedChargePoint
from simulator.opcua import OpcUaStationServer
from simulator.plant import Plant
from simulator.registers import DeviceModel, RegisterBank
from simulator.rtu_server import RtuServer
from simulator.scenario import Series

log = logging.getLogger(__name__)


class SimulatorError(Exception):
    """The simulator cannot start (a port is taken, the station has no [simulator] section)."""


class StationSimulator:
    """Plant + Modbus and OPC-UA servers for one station."""

    def __init__(
        self,
        station: Station,
        clock: Clock,
        *,
        visits: Iterable[Visit] | None = None,
        limit: Series | None = None,
        faults: FaultScript | None = None,
    ) -> None:
        """`limit`: the utility's limit signal over time, relayed by the metering terminal;
        `faults`: what goes wrong, and when (checked against the station: `ConfigError`)."""
        if station.simulator is None:
            raise SimulatorError(f"{station.path}: the station has no [simulator] section")
        self.station = station
        self.clock = clock
        self.settings = station.simulator
        self.zone = ZoneInfo(station.info.timezone)
        self._random_visits = visits is None
        self.plant = Plant(station, visits or (), limit=limit)
        self.faults = faults or FaultScript()
        self.faults.check(station)
        self._opcua_down: set[int] = set()
        self._opcua_ids: list[list[str]] = []
        self.models: dict[str, DeviceModel] = {}
        self.banks: dict[str, RegisterBank] = {}
        self.opcua_servers: list[OpcUaStationServer] = []
        self.rtu_servers: list[RtuServer] = []
        self._servers: list[DeviceServer] = []
        self.charge_points: dict[str, SimulatedChargePoint] = {}
        self._charge_point_tasks: list[asyncio.Task[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._visits_until: datetime | None = None

    async def start(self) -> None:
        """Listen on every device's endpoint and start stepping the plant."""
        station = self.station
        served = device_models(station, self.plant, self.faults, self.clock)
        endpoints: dict[tuple[str, int], list[tuple[DeviceEndpoint, RegisterBank]]] = {}
        opcua: dict[tuple[str, int, str], list[tuple[DeviceEndpoint, str, DeviceModel]]] = {}
        rtu: dict[tuple[str, int], list[tuple[DeviceEndpoint, RegisterBank]]] = {}
        for device, label, model in ((d.endpoint, d.label, d.model) for d in served):
            if device.protocol == "ocpp":
                continue  # a charge point of its own (`_start_charge_points`)
            self.models[device.id] = model
            if device.protocol == "opcua":
                opcua.setdefault((device.host, device.port, device.path), []).append(
                    (device, label, model)
                )
                continue
            bank = RegisterBank(station.map_for(device.device), model, device.unit)
            self.banks[device.id] = bank
            if device.protocol in ("modbus-rtu", "modbus-rtu-over-tcp"):
                where = (device.address, 0) if device.serial else (device.host, device.port)
                rtu.setdefault(where, []).append((device, bank))
                continue
            endpoints.setdefault((device.host, device.port), []).append((device, bank))
        if self._random_visits:
            self._extend_visits(self.clock.now())
        try:
            for (host, port), banks in endpoints.items():
                self._servers.append(await self._serve(host, port, banks))
            for group in opcua.values():
                await self._serve_opcua(group)
            for line in rtu.values():
                await self._serve_rtu(line)
            self._start_charge_points()
        except BaseException:
            await self._stop_charge_points()
            await self._close_servers()
            raise
        self._task = asyncio.create_task(self._run(), name="simulator plant")
        log.info(
            "simulating %s: %d devices on %d Modbus and %d OPC-UA endpoints, %d OCPP charge points",
            station.name,
            len(served),
            len(self._servers),
            len(self.opcua_servers),
            len(self.charge_points),
        )

    def _start_charge_points(self) -> None:
        """One simulated charge point per OCPP pile, each connecting to the [ocpp] server."""
        station = self.station
        piles = [p for p in station.piles if p.ocpp]
        if not piles:
            return
        shared = sorted(i for i, n in Counter(p.identity for p in piles).items() if n > 1)
        if shared:
            raise SimulatorError(
                f"{station.path}: the simulator runs one connector per charge point; "
                f"identities with several: {', '.join(shared)}"
            )
        for pile in piles:
            assert pile.ocpp_version is not None  # the loader requires it
            point = SimulatedChargePoint(
                self.plant.piles[pile.id],
                self.clock,
                self._ocpp_endpoint(pile.identity),
                version=pile.ocpp_version,
                identity=pile.identity,
                connector=pile.connector,
                supply=pile.supply,
                quirks=self.settings.quirks(pile.id),
                faults=self.faults,
                step_s=self.settings.step_s,
            )
            self.charge_points[pile.id] = point
            task = asyncio.create_task(point.run(), name=f"charge point {pile.id}")
            self._charge_point_tasks.append(task)

    def _ocpp_endpoint(self, identity: str) -> Endpoint:
        """Where the charge point `identity` connects, with the password and certificates the
        station's security profile asks of it: under profile 3 its own certificate (CN the
        identity) from the station's certs directory, issued there on first use."""
        station = self.station
        settings = station.ocpp
        if settings is None:
            raise SimulatorError(f"{station.path}: OCPP piles need an [ocpp] section")
        if settings.port == 0:
            raise SimulatorError(
                f"{station.path}: ocpp.port 0 (any free port): the charge points need the "
                "server's port"
            )
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
        host = f"[{host}]" if ":" in host else host
        scheme = "wss" if settings.tls else "ws"
        context: ssl.SSLContext | None = None
        try:
            password = station.ocpp_password()
            if settings.tls:
                ident = station.identity("simulator")
                if settings.security_profile == 3:
                    assert station.certs_dir is not None  # identity() requires it
                    own = certs.charge_point(station.certs_dir, identity)
                    context = client_context(
                        own.cert_pem, own.key_pem, ident.ca_pem, device=f"charge point {identity}"
                    )
                else:
                    context = ssl.create_default_context(cafile=str(ident.ca_pem))
        except (ConfigError, DriverError, certs.CertError, OSError, ssl.SSLError) as exc:
            raise SimulatorError(str(exc)) from exc
        return Endpoint(f"{scheme}://{host}:{settings.port}", password, context)

    async def _stop_charge_points(self) -> None:
        for task in self._charge_point_tasks:
            await stop_task(task)
        self._charge_point_tasks.clear()

    async def _serve(
        self, host: str, port: int, banks: list[tuple[DeviceEndpoint, RegisterBank]]
    ) -> DeviceServer:
        units = {unit: bank for _, bank in banks for unit in bank.units}
        names = ", ".join(endpoint.id for endpoint, _ in banks)
        sslctx = None
        if any(endpoint.protocol == "modbus-tls" for endpoint, _ in banks):
            try:
                ident = self.station.identity("simulator")
            except ConfigError as exc:
                raise SimulatorError(str(exc)) from exc
            sslctx = server_context(ident.cert_pem, ident.key_pem, ident.ca_pem, device=names)
        maps = [bank.map for _, bank in banks]
        ids = [endpoint.id for endpoint, _ in banks]
        faults, clock = self.faults, self.clock
        limits = [m.max_connections for m in maps if m.max_connections is not None]
        idles = [m.idle_timeout_s for m in maps if m.idle_timeout_s is not None]
        server = DeviceServer(
            units,
            address=(host, port),
            clock=self.clock,
            name=f"{host}:{port} ({names})",
            sslctx=sslctx,
            max_connections=min(limits) if limits else None,
            idle_timeout_s=min(idles) if idles else None,
            # A fault on any device behind an endpoint takes the endpoint down, as a gateway's would.
            gate=(lambda: faults.access(ids, clock.now())) if faults else None,
        )
        try:
            await server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:
            why = exc if isinstance(exc, OSError) else server.listen_error
            raise SimulatorError(cannot_listen(host, port, why or exc, names)) from exc
        return server

    async def _serve_rtu(self, group: list[tuple[DeviceEndpoint, RegisterBank]]) -> None:
        """The devices of one serial line (or one RTU-over-TCP gateway)."""
        units = {unit: bank for _, bank in group for unit in bank.units}
        first = group[0][0]
        names = ", ".join(endpoint.id for endpoint, _ in group)
        ids = {unit: endpoint.id for endpoint, bank in group for unit in bank.units}
        faults, clock = self.faults, self.clock
        server = RtuServer(
            units,
            f"{first.address} ({names})",
            gate=(lambda unit: faults.access([ids[unit]], clock.now())) if faults else None,
        )
        try:
            if first.serial:
                await server.serve_serial(SerialLine.of(first))
            else:
                await server.serve_tcp(first.host, first.port)
        except OSError as exc:  # pyserial's SerialException is one
            raise SimulatorError(f"{first.address}: cannot serve {names}: {exc}") from exc
        self.rtu_servers.append(server)

    async def _serve_opcua(self, group: list[tuple[DeviceEndpoint, str, DeviceModel]]) -> None:
        """One OPC-UA server for the devices that share an endpoint URL."""
        station = self.station
        url = group[0][0].opcua_url
        secure = any(device.opcua_security == "sign-and-encrypt" for device, _, _ in group)
        server = OpcUaStationServer(
            url,
            self.clock,
            identity=station.identity("simulator") if secure else None,
            credentials=station.opcua_credentials(),
            allow_insecure=any(device.opcua_security == "none" for device, _, _ in group),
            refresh_s=self.settings.step_s,
        )
        for device, label, model in group:
            server.add(device.opcua_object, station.map_for(device.device), model, label)
        try:
            await server.start()
        except OSError as exc:
            names = ", ".join(label for _, label, _ in group)
            first = group[0][0]
            raise SimulatorError(
                f"{url}: {cannot_listen(first.host, first.port, exc, names)}"
            ) from exc
        self.opcua_servers.append(server)
        self._opcua_ids.append([device.id for device, _, _ in group])

    async def stop(self) -> None:
        """Stop stepping and close every server."""
        await stop_task(self._task)
        self._task = None
        await self._stop_charge_points()
        await self._close_servers()

    async def __aenter__(self) -> StationSimulator:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def _close_servers(self) -> None:
        for server in self._servers:
            await server.shutdown()
        self._servers.clear()
        for opcua in self.opcua_servers:
            await opcua.stop()
        self.opcua_servers.clear()
        for rtu in self.rtu_servers:
            await rtu.shutdown()
        self.rtu_servers.clear()

    async def _run(self) -> None:
        step = self.settings.step_s
        with self.clock.participant():
            ticker = Ticker(self.clock, step)
            last: float | None = None
            while True:
                await ticker.wait()
                now = self.clock.now()
                if self._random_visits:
                    self._extend_visits(now)
                for note in self.faults.apply(self.plant, now):
                    note.log(log)
                self.plant.step(now, step if last is None else now - last)
                last = now
                await self._opcua_faults(now)
                for server in self._servers:
                    server.close_idle(now)

    async def _opcua_faults(self, now: float) -> None:
        """Stop an OPC-UA server while a device it serves is unreachable; start it again after."""
        if not self.faults:
            return
        for index, server in enumerate(self.opcua_servers):
            down = not all(self.faults.reachable(d, now) for d in self._opcua_ids[index])
            if down and index not in self._opcua_down:
                self._opcua_down.add(index)
                await server.stop()
            elif not down and index in self._opcua_down:
                self._opcua_down.discard(index)
                await server.start()

    def _extend_visits(self, now: float) -> None:
        """Keep random visits drawn until at least a day ahead."""
        today = datetime.fromtimestamp(now, self.zone).replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        if self._visits_until is None:
            day = today - timedelta(days=1)
        elif self._visits_until > today + timedelta(days=1):
            return
        else:
            day = self._visits_until
        while day <= today + timedelta(days=1):
            self.plant.add_visits(random_day(self.settings, day.date(), self.zone))
            day += timedelta(days=1)
        self._visits_until = day
