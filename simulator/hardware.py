"""The station's hardware, simulated and served over Modbus TCP (or TLS) on the ports its config
names.

`StationSimulator` owns the plant's stepping task and one pymodbus server per (host, port) of the
station's devices. It runs on any clock: the wall clock for `flexcharge sim-hardware`, a paced
virtual clock for the demo, an unpaced one in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from pymodbus.constants import ExcCodes
from pymodbus.simulator import DataType, SimData, SimDevice

from controller.clock import Clock, Ticker
from controller.config import ConfigError, DeviceEndpoint, Station
from drivers.tls import server_context
from simulator.chargers import pile_device_model
from simulator.fleet import Visit, random_day
from simulator.modbus_server import DeviceServer
from simulator.plant import Plant
from simulator.registers import DeviceModel, MeterRegisters, RegisterBank

log = logging.getLogger(__name__)


class SimulatorError(Exception):
    """The simulator cannot start (a port is taken, the station has no [simulator] section)."""


async def _no_such_unit(
    _fc: int, _start: int, _address: int, _count: int, _regs: list[int], _values: object
) -> ExcCodes | None:
    return ExcCodes.GATEWAY_NO_RESPONSE


class StationSimulator:
    """Plant + Modbus servers for one station."""

    def __init__(
        self, station: Station, clock: Clock, *, visits: Iterable[Visit] | None = None
    ) -> None:
        if station.simulator is None:
            raise SimulatorError(f"{station.path}: the station has no [simulator] section")
        self.station = station
        self.clock = clock
        self.settings = station.simulator
        self.zone = ZoneInfo(station.info.timezone)
        self._random_visits = visits is None
        self.plant = Plant(station, visits or ())
        self.banks: dict[str, RegisterBank] = {}
        self.models: dict[str, DeviceModel] = {}
        self._servers: list[DeviceServer] = []
        self._task: asyncio.Task[None] | None = None
        self._visits_until: datetime | None = None

    async def start(self) -> None:
        """Listen on every device's port and start stepping the plant."""
        station = self.station
        meter = station.grid_meter
        endpoints: dict[tuple[str, int], list[tuple[DeviceEndpoint, RegisterBank]]] = {}
        meter_bank = RegisterBank(
            station.map_for(meter.device), MeterRegisters(self.plant), meter.unit
        )
        self.banks[meter.id] = meter_bank
        endpoints.setdefault((meter.host, meter.port), []).append((meter, meter_bank))
        for pile in station.piles:
            regmap = station.map_for(pile.device)
            model = pile_device_model(self.plant.piles[pile.id], regmap, self.clock)
            self.models[pile.id] = model
            bank = RegisterBank(regmap, model, pile.unit)
            self.banks[pile.id] = bank
            endpoints.setdefault((pile.host, pile.port), []).append((pile, bank))
        if self._random_visits:
            self._extend_visits(self.clock.now())
        try:
            for (host, port), banks in endpoints.items():
                self._servers.append(await self._serve(host, port, banks))
        except BaseException:
            await self._close_servers()
            raise
        self._task = asyncio.create_task(self._run(), name="simulator plant")
        log.info(
            "simulating %s: %d devices on %d ports",
            station.name,
            len(self.banks),
            len(self._servers),
        )

    async def _serve(
        self, host: str, port: int, banks: list[tuple[DeviceEndpoint, RegisterBank]]
    ) -> DeviceServer:
        devices: list[SimDevice] = [d for _, bank in banks for d in bank.devices()]
        if all(d.id != 0 for d in devices):
            # Answer requests for unknown unit ids like a gateway would, not with a crash.
            devices.append(
                SimDevice(
                    0,
                    simdata=[SimData(0, values=0, datatype=DataType.REGISTERS)],
                    action=_no_such_unit,
                )
            )
        names = ", ".join(endpoint.id for endpoint, _ in banks)
        sslctx = None
        if any(endpoint.protocol == "modbus-tls" for endpoint, _ in banks):
            try:
                ident = self.station.identity("simulator")
            except ConfigError as exc:
                raise SimulatorError(str(exc)) from exc
            sslctx = server_context(ident.cert_pem, ident.key_pem, ident.ca_pem, device=names)
        maps = [bank.map for _, bank in banks]
        limits = [m.max_connections for m in maps if m.max_connections is not None]
        idles = [m.idle_timeout_s for m in maps if m.idle_timeout_s is not None]
        server = DeviceServer(
            devices,
            address=(host, port),
            clock=self.clock,
            name=f"{host}:{port} ({names})",
            sslctx=sslctx,
            max_connections=min(limits) if limits else None,
            idle_timeout_s=min(idles) if idles else None,
        )
        try:
            await server.serve_forever(background=True)
        except (RuntimeError, OSError) as exc:
            raise SimulatorError(f"cannot listen on {host}:{port} for {names}: {exc}") from exc
        return server

    async def stop(self) -> None:
        """Stop stepping and close every server."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
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
                self.plant.step(now, step if last is None else now - last)
                last = now
                for server in self._servers:
                    server.close_idle(now)

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
