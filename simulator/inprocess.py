"""The station's devices reached in-process: the daemon's drivers over links without sockets.

Fast simulation reads and writes the plant as the daemon does: a `MapMeter` per meter and each
pile's own driver (`drivers.makes.pile_driver`: `DcPile`, or an AC make behind `AcPile`) over the
`ModbusDevice`s and `OpcUaDevice`s the daemon uses, so every reading is decoded, converted and
checked by the maps exactly as a real device's is. Only the links differ: an `InProcessModbus` per
Modbus server answers each request from the simulator's `RegisterBank`s at once, an
`InProcessOpcUa` per OPC-UA endpoint from the same models as the hardware simulator's address
space. The clock is the simulation's (`StepClock`), and the drivers' coroutines never suspend:
`finish` runs one to its end without an event loop.

The fault script acts where it acts behind the hardware simulator's servers, through the same
rule (`FaultScript.access` over the devices behind one endpoint), and the drivers see what they
see over sockets: a Modbus request to a silent device, or to one that drops its connections (the
server closes each one as it comes), gets no answer (`DeviceTimeout`); an OPC-UA server with an
unreachable device is down (`ConnectionLost`); a late device answers from its values as they were
that long ago (`Endpoint.values`); a meter's scripted values are what its model shows
(`MeterRegisters`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from asyncua import ua
from pymodbus.constants import ExcCodes

from base.config import Station
from base.devicemap import ReadBlock, RegisterMap, Value
from drivers.codec import WriteRequest
from drivers.device import Device
from drivers.errors import DeviceRejected
from drivers.makes import pile_driver
from drivers.meter import MapMeter
from drivers.modbus import ModbusDevice, answered_exception, no_answer, request_name
from drivers.opcua.device import OpcUaDevice
from drivers.opcua.link import refused as opcua_refused
from drivers.opcua.space import status_name
from drivers.pile import Pile
from simulator.devices import SimulatedDevice, device_map, device_models
from simulator.faults import FaultKind, FaultScript
from simulator.opcua import served_value, write_devices
from simulator.plant import Plant
from simulator.registers import DeviceModel, RegisterBank

T = TypeVar("T")


class StepClock:
    """The simulation's clock: the time of the step being simulated. Nothing sleeps on it."""

    def __init__(self, now: float) -> None:
        self.time = now

    def now(self) -> float:
        """The step's time."""
        return self.time

    async def sleep_until(self, deadline: float, wake: asyncio.Future[None] | None = None) -> None:
        """Never: a fast simulation moves its clock itself."""
        raise RuntimeError("nothing sleeps in a fast simulation")

    async def sleep(self, seconds: float) -> None:
        """Never: a fast simulation moves its clock itself."""
        raise RuntimeError("nothing sleeps in a fast simulation")

    @contextmanager
    def participant(self) -> Iterator[None]:
        """Every step is the simulation's own: nothing to wait for."""
        yield


def finish(call: Coroutine[Any, Any, T]) -> T:
    """Run a driver's call over in-process links to its end (it never suspends)."""
    try:
        call.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    call.close()
    raise RuntimeError("a driver call over an in-process link suspended")


class Endpoint:
    """One server of the hardware simulator, in-process: the devices behind it, the fault
    script's gate over them, and what each model shows, taken once an instant (and kept for
    `keep_s`, for a device that answers late)."""

    def __init__(
        self, ids: Sequence[str], faults: FaultScript, clock: StepClock, keep_s: float
    ) -> None:
        self.ids = tuple(ids)
        self.faults = faults
        self._scripted = bool(faults)
        self.clock = clock
        self.keep_s = keep_s
        # What each model showed at `_at`, and over the last `keep_s` before.
        self._at: float | None = None
        self._now: dict[DeviceModel, Mapping[str, Value | None]] = {}
        self._past: dict[DeviceModel, deque[tuple[float, Mapping[str, Value | None]]]] = {}
        # When the values the last answer came from were measured.
        self.as_of = clock.now()
        self._gate: tuple[float, FaultKind | float | None] | None = None

    def gate(self) -> FaultKind | float | None:
        """How a request is treated now (`FaultScript.access`: the same all instant long)."""
        now = self.clock.time
        gate = self._gate
        if gate is None or gate[0] != now:
            gate = self._gate = (now, self.faults.access(self.ids, now) if self._scripted else None)
        return gate[1]

    def observe(self, model: DeviceModel) -> Mapping[str, Value | None]:
        """What `model` shows now, taken once an instant (again after a write)."""
        now = self.clock.time
        if now != self._at:
            self._at = now
            self._now = {}
        shown = self._now.get(model)
        if shown is None:
            shown = self._now[model] = model.values()
            if self.keep_s > 0:
                self._remember(model, now, shown)
        return shown

    def _remember(self, model: DeviceModel, now: float, shown: Mapping[str, Value | None]) -> None:
        past = self._past.setdefault(model, deque())
        if past and past[-1][0] == now:
            past.pop()  # taken again after a write
        past.append((now, shown))
        while len(past) > 1 and past[1][0] <= now - self.keep_s:
            past.popleft()

    def values(self, model: DeviceModel, latency_s: float) -> Mapping[str, Value | None]:
        """What `model` answers now, `latency_s` late (`as_of` says when it measured it)."""
        now = self.clock.time
        # `observe`, in line: every read of a fast simulation asks this.
        shown = None if now != self._at else self._now.get(model)
        if shown is None:
            shown = self.observe(model)
        if latency_s <= 0:
            self.as_of = now
            return shown
        past = self._past[model]
        then = now - latency_s
        self.as_of, shown = next((entry for entry in reversed(past) if entry[0] <= then), past[0])
        return shown

    def changed(self, model: DeviceModel) -> None:
        """`model` took a write: what it shows is to be taken again."""
        self._now.pop(model, None)


class InProcessModbus:
    """One Modbus server's register banks, answered in-process (a `ModbusTransport`)."""

    def __init__(
        self, address: str, endpoint: Endpoint, banks: Mapping[int, RegisterBank], timeout_s: float
    ) -> None:
        """`banks`: the bank that answers for each unit id."""
        self._address = address
        self.endpoint = endpoint
        self.banks = dict(banks)
        self.timeout_s = timeout_s

    @property
    def address(self) -> str:
        """host:port, for messages."""
        return self._address

    async def connect(self, device: str) -> None:
        """Nothing to open: the hardware simulator's server takes every connection (and closes
        one to a dropped device at its first request)."""

    async def read(self, block: ReadBlock, device: str) -> tuple[int, ...]:
        """One block's words, from its bank (the same tuple while the device shows the same)."""
        unit, function_code, address, count = (
            block.unit_id,
            block.function_code,
            block.address,
            block.count,
        )
        endpoint = self.endpoint
        bank = self.banks.get(unit)
        if bank is None or endpoint.gate() is not None:
            bank, latency = self._admit(device, function_code, address, count, unit)
        else:
            latency = 0.0
        values = endpoint.values(bank.model, latency)
        words = bank.read_words(unit, function_code, address, count, values)
        if isinstance(words, ExcCodes):
            raise answered_exception(
                device, request_name(function_code, address, count, unit), int(words)
            )
        return words

    async def write(self, request: WriteRequest, device: str) -> None:
        """One write request, handed to its bank."""
        unit, function_code, address, words = (
            request.unit_id,
            request.function_code,
            request.address,
            request.words,
        )
        bank = self.banks.get(unit)
        if bank is None or self.endpoint.gate() is not None:
            bank, _ = self._admit(device, function_code, address, len(words), unit)
        refusal = bank.write_words(unit, function_code, address, words)
        self.endpoint.changed(bank.model)
        if refusal is not None:
            what = request_name(function_code, address, len(words), unit)
            raise answered_exception(device, what, int(refusal))

    def _admit(
        self, device: str, function_code: int, address: int, count: int, unit: int
    ) -> tuple[RegisterBank, float]:
        """The bank that answers a request and the latency it answers with; or what the driver
        sees instead."""
        access = self.endpoint.gate()
        if access is None:
            bank = self.banks.get(unit)
            if bank is not None:
                return bank, 0.0
        elif access is FaultKind.SILENT or access is FaultKind.DROPPED:
            raise no_answer(
                device, request_name(function_code, address, count, unit), self.timeout_s
            )
        bank = self.banks.get(unit)
        if bank is None:
            # As the hardware simulator's gateway answers for a unit id it does not have.
            code = int(ExcCodes.GATEWAY_NO_RESPONSE)
            raise answered_exception(
                device, request_name(function_code, address, count, unit), code
            )
        return bank, access if isinstance(access, float) else 0.0


class InProcessOpcUa:
    """One OPC-UA server's objects, answered in-process (an `OpcUaTransport`)."""

    def __init__(self, url: str, host: str, port: int, endpoint: Endpoint) -> None:
        self.url = url
        self.endpoint = endpoint
        # What the operating system says of a connection to a server that is down.
        self._down = f"Connect call failed {(host, port)!r}"
        self.objects: dict[str, tuple[RegisterMap, DeviceModel]] = {}

    @property
    def address(self) -> str:
        """The endpoint URL, for messages."""
        return self.url

    def add(self, object_name: str, regmap: RegisterMap, model: DeviceModel) -> None:
        """Serve `model` as the object `object_name`."""
        self.objects[object_name] = (regmap, model)

    async def connect(self, device: str) -> None:
        """Open the session: refused while the server is down."""
        self._admit(device)

    async def read(
        self, device: str, identifiers: Sequence[str], *, cached: bool = True
    ) -> list[ua.DataValue]:
        """The named variables' values, from their models."""
        latency = self._admit(device)
        answered: list[ua.DataValue] = []
        for identifier in identifiers:
            object_name, _, name = identifier.rpartition(".")
            regmap, model = self.objects[object_name]
            values = self.endpoint.values(model, latency)
            variant, status = served_value(regmap[name], values.get(name), device)
            answered.append(ua.DataValue(variant, StatusCode=ua.StatusCode(ua.UInt32(status))))
        return answered

    async def write(self, device: str, values: Mapping[str, ua.Variant]) -> None:
        """Write the variables as the simulator's server does, a result per item
        (`simulator.opcua.write_devices`); `DeviceRejected` naming the refused ones."""
        self._admit(device)
        items = []
        for identifier, variant in values.items():
            object_name, _, name = identifier.rpartition(".")
            regmap, model = self.objects[object_name]
            items.append((object_name, model, regmap[name], variant))
        statuses, _ = write_devices(items)
        for model in {id(m): m for _, m, _, _ in items}.values():
            self.endpoint.changed(model)
        refused = [
            (identifier, status)
            for identifier, status in zip(values, statuses, strict=True)
            if status != ua.StatusCodes.Good
        ]
        if refused:
            names = ", ".join(f"{i.rpartition('.')[2]}: {status_name(s)}" for i, s in refused)
            raise DeviceRejected(device, f"write refused by {self.url}: {names}", refused[0][1])

    def _admit(self, device: str) -> float:
        access = self.endpoint.gate()
        # The hardware simulator stops an OPC-UA server while a device it serves is unreachable.
        if access is FaultKind.SILENT or access is FaultKind.DROPPED:
            raise opcua_refused(device, self.url, self._down)
        return access if isinstance(access, float) else 0.0


class InProcessStation:
    """A station's devices and their drivers, over in-process links to the plant's models.

    Labels and drivers are the daemon's (`meter`, `terminal`, `piles`); `endpoints` says, for
    each device id, the server it is behind (whose `as_of` dates the device's last answer).
    """

    def __init__(
        self,
        station: Station,
        plant: Plant,
        faults: FaultScript,
        clock: StepClock,
        *,
        bms: bool = True,
    ) -> None:
        self.clock = clock
        keep_s = faults.longest_latency_s
        timeout_s = station.control.io_timeout_s
        simulated = device_models(station, plant, faults, clock, bms=bms)
        # Grouped as the hardware simulator serves them: a server per Modbus host and port, and
        # per OPC-UA endpoint URL.
        groups: dict[tuple[str, int, str], list[SimulatedDevice]] = {}
        for sim in simulated:
            endpoint = sim.endpoint
            path = endpoint.path if endpoint.protocol == "opcua" else ""
            # An OCPP pile (no host, no port) stands alone, as its own charge point does.
            host = f"ocpp:{endpoint.id}" if endpoint.protocol == "ocpp" else endpoint.host
            groups.setdefault((host, endpoint.port, path), []).append(sim)
        self.endpoints: dict[str, Endpoint] = {}
        devices: dict[str, Device] = {}
        for (host, port, path), group in groups.items():
            served = Endpoint([sim.endpoint.id for sim in group], faults, clock, keep_s)
            if path:
                opcua = InProcessOpcUa(group[0].endpoint.opcua_url, host, port, served)
                for sim in group:
                    regmap = device_map(station, sim.endpoint)
                    opcua.add(sim.endpoint.opcua_object, regmap, sim.model)
                    devices[sim.endpoint.id] = OpcUaDevice(
                        sim.label, opcua, regmap, sim.endpoint.opcua_object
                    )
            else:
                banks: dict[int, RegisterBank] = {}
                for sim in group:
                    bank = RegisterBank(
                        device_map(station, sim.endpoint), sim.model, sim.endpoint.unit
                    )
                    banks.update(dict.fromkeys(bank.units, bank))
                link = InProcessModbus(f"{host}:{port}", served, banks, timeout_s)
                for sim in group:
                    regmap = device_map(station, sim.endpoint)
                    devices[sim.endpoint.id] = ModbusDevice(
                        sim.label, link, regmap, sim.endpoint.unit
                    )
            for sim in group:
                self.endpoints[sim.endpoint.id] = served
        self.models = {sim.endpoint.id: sim.model for sim in simulated}
        meter = station.grid_meter
        self.meter = MapMeter(meter.id, devices[meter.id])
        terminal = station.terminal
        self.terminal = None if terminal is None else MapMeter(terminal.id, devices[terminal.id])
        self.piles: dict[str, Pile] = {
            p.id: pile_driver(p, devices[p.id], clock) for p in station.piles
        }

    def observe(self) -> None:
        """Take what every device shows now, for those that will answer late (only when the
        fault script makes one late: otherwise a device is looked at when it is asked)."""
        for device_id, endpoint in self.endpoints.items():
            if endpoint.keep_s > 0:
                endpoint.observe(self.models[device_id])
