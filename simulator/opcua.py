"""The plant's devices served over OPC-UA, as `drivers.opcua` reads and writes them.

`OpcUaStationServer` is one asyncua server at one endpoint URL. It serves `DeviceModel`s (the same
objects `RegisterBank` serves over Modbus) as objects of the flexcharge address space (see
`drivers.opcua.space`): one variable per name of the device's register map, holding the value in the
register's unit. Values are refreshed from `model.values()` every `refresh_s` of the simulator's
clock (which is what subscriptions see) and before every client Read (so a poll is never older
than the plant). A client Write has a result per item, as OPC-UA asks: a variable that is not
writable is `BadNotWritable`, a value of the wrong type `BadTypeMismatch`, one outside what the
register holds `BadOutOfRange`; the device's other items reach `model.write()` as one call, and
if the device refuses them (a discharge on a charge-only pile) they are all `BadOutOfRange` and
change nothing. Items of other devices in the same request are not affected.

Security: the simulator's certificate and key, client certificates checked against the station
CA and its revocation list, the policies Basic256Sha256 and Aes128Sha256RsaOaep with
SignAndEncrypt, and user name and password tokens when the station names a user. Every other
policy or mode, a certificate the CA did not sign or has revoked, and an application URI that is
not the certificate's are refused at once with their status (`simulator.opcua_guard`). An
unencrypted (NoSecurity) endpoint, with anonymous sessions, is offered only when asked for, and
then with a warning.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

from asyncua import Server, ua
from asyncua.common.callback import CallbackService, CallbackType, ServerItemCallback
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import USER_TYPES, SimpleRoleRuleset, User, UserRole
from asyncua.server.address_space import AddressSpace, AttributeService
from asyncua.server.user_managers import UserManager

from base.certs import Identity
from base.clock import Clock, Ticker, stop_task
from base.devicemap import Register, RegisterMap, Value, ValueType
from base.health import Health
from drivers.codec import from_project_units, in_project_units
from drivers.errors import BadValue
from drivers.opcua.security import read_identity, trust_store
from drivers.opcua.space import (
    NAMESPACE_URI,
    engineering_variant,
    node_name,
    string_node,
    variant_type,
)
from simulator.opcua_guard import GuardedServer
from simulator.plant import Rejected
from simulator.registers import DeviceModel

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

_SUBSCRIPTION_SERVICES = {
    ua.NodeId(ua.Int32(request))
    for request in (
        ua.ObjectIds.CreateSubscriptionRequest_Encoding_DefaultBinary,
        ua.ObjectIds.CreateMonitoredItemsRequest_Encoding_DefaultBinary,
        ua.ObjectIds.PublishRequest_Encoding_DefaultBinary,
    )
}


class _Users(UserManager):
    """Accepts the station's one OPC-UA user, on encrypted channels only unless told otherwise.

    asyncua serves sessions on an unencrypted channel even when it offers no NoSecurity
    endpoint (such a channel has no client certificate, and no permission checks run on it), so
    a session without a client certificate is refused here unless `unencrypted` allows it.
    """

    def __init__(
        self, credentials: tuple[str, str] | None, *, anonymous: bool, unencrypted: bool
    ) -> None:
        self._credentials = credentials
        self._anonymous = anonymous
        self._unencrypted = unencrypted

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if not certificate and not self._unencrypted:
            return None
        if username is None:
            return User(role=UserRole.User) if self._anonymous else None
        if self._credentials is None or password is None:
            return None
        user, secret = self._credentials
        if hmac.compare_digest(username.encode(), user.encode()) and hmac.compare_digest(
            password.encode(), secret.encode()
        ):
            return User(role=UserRole.User, name=username)
        return None


class _Permissions(SimpleRoleRuleset):
    """Users may read, write, browse and (unless switched off) subscribe; nobody edits nodes."""

    def __init__(self, *, subscriptions: bool) -> None:
        super().__init__()
        allowed = {ua.NodeId(ua.Int32(request)) for request in USER_TYPES}
        self._allowed = allowed if subscriptions else allowed - _SUBSCRIPTION_SERVICES

    def check_validity(self, user: User | None, action_type_id: ua.NodeId, body: Any) -> bool:
        return (
            user is not None
            and user.role in (UserRole.User, UserRole.Admin)
            and action_type_id in self._allowed
        )


@dataclass(eq=False)
class ServedDevice:
    """One device of the plant as an object of the address space."""

    object_name: str
    label: str
    map: RegisterMap
    model: DeviceModel
    nodes: dict[str, ua.NodeId] = field(default_factory=dict)
    rejected_writes: int = 0
    last_served: dict[str, tuple[object, int]] = field(default_factory=dict)


class OpcUaStationServer:
    """An OPC-UA server for the plant's devices at one endpoint (host, port, path)."""

    def __init__(
        self,
        url: str,
        clock: Clock,
        *,
        identity: Identity | None,
        credentials: tuple[str, str] | None = None,
        allow_insecure: bool = False,
        refresh_s: float = 1.0,
        subscriptions: bool = True,
    ) -> None:
        if identity is None and not allow_insecure:
            raise ValueError(f"{url}: an encrypted endpoint needs the simulator's certificate")
        if refresh_s <= 0:
            raise ValueError("refresh_s must be positive")
        self.url = url
        self.clock = clock
        self.identity = identity
        self.credentials = credentials
        self.allow_insecure = allow_insecure
        self.refresh_s = refresh_s
        self.subscriptions = subscriptions
        self.devices: dict[str, ServedDevice] = {}
        self._by_node: dict[ua.NodeId, tuple[ServedDevice, Register]] = {}
        self._server: Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._refresh_health = Health(f"{url}: refreshing the served values", logger=log)

    def add(self, object_name: str, regmap: RegisterMap, model: DeviceModel, label: str) -> None:
        """Serve `model` as the object `object_name` (before `start`)."""
        if self._server is not None:
            raise RuntimeError("add devices before starting the server")
        if object_name in self.devices:
            raise ValueError(f"{self.url}: two devices are both object {object_name!r}")
        self.devices[object_name] = ServedDevice(object_name, label, regmap, model)

    async def start(self) -> None:
        """Build the address space and listen; `OSError` if the port is taken."""
        server = GuardedServer(
            user_manager=_Users(
                self.credentials,
                anonymous=self.credentials is None or self.allow_insecure,
                unencrypted=self.allow_insecure,
            )
        )
        await server.init()
        server.disable_clock()
        server.set_endpoint(self.url)
        server.set_server_name("flexcharge simulator")
        policies: list[ua.SecurityPolicyType] = []
        identity = self.identity
        if identity is not None:
            certificate, private_key = read_identity(identity.cert_pem, identity.key_pem)
            await server.load_certificate(certificate, format="pem")
            await server.load_private_key(private_key, format="pem")
            await server.set_application_uri(identity.application_uri)
            policies += [
                ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
                ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
            ]
            server.set_trust_store(await trust_store(identity.trust_dir, identity.crl_dir))
        if self.allow_insecure:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        server.set_security_policy(
            policies, permission_ruleset=_Permissions(subscriptions=self.subscriptions)
        )
        tokens: list[type] = []
        if self.credentials is not None:
            tokens.append(ua.UserNameIdentityToken)
        if self.credentials is None or self.allow_insecure:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        namespace = await server.register_namespace(NAMESPACE_URI)
        for device in self.devices.values():
            await self._build(server, namespace, device)
        server.subscribe_server_callback(CallbackType.PreRead, self._before_read)
        server.iserver.attribute_service = _DeviceWrites(server.iserver.aspace, self)
        await server.start()
        self._server = server
        if self.allow_insecure:
            log.warning(
                "%s offers an UNENCRYPTED endpoint (NoSecurity, anonymous sessions) for %s",
                self.url,
                ", ".join(d.label for d in self.devices.values()),
            )
        self._task = asyncio.create_task(self._run(), name=f"opcua refresh {self.url}")

    async def stop(self) -> None:
        """Stop refreshing and close the server and every session (idempotent)."""
        await stop_task(self._task)
        self._task = None
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop()
            # asyncua keeps a session with subscriptions after its connection is gone (so that
            # its client may reactivate it), and Server.stop() leaves those sessions' timeout
            # and publishing tasks running: end them here.
            for session in list(server.iserver._external_sessions.values()):
                await session.close_session(True)

    async def refresh(self) -> None:
        """Copy every device's current values into its variables."""
        for device in self.devices.values():
            await self._refresh(device)

    async def _build(self, server: Server, namespace: int, device: ServedDevice) -> None:
        obj = await server.nodes.objects.add_object(
            string_node(device.object_name, namespace),
            ua.QualifiedName(device.object_name, namespace),
        )
        for name, reg in device.map.registers.items():
            kind = variant_type(reg)
            node_id = string_node(node_name(device.object_name, name), namespace)
            initial: Value = "" if kind is ua.VariantType.String else 0
            variable = await obj.add_variable(
                node_id,
                ua.QualifiedName(name, namespace),
                ua.Variant(float(initial) if kind is ua.VariantType.Double else initial, kind),
            )
            if reg.access.writable:
                await variable.set_writable()
            device.nodes[name] = node_id
            self._by_node[node_id] = (device, reg)
        # A restarted server's variables are new: what the last one served says nothing of them.
        device.last_served.clear()
        await self._refresh(device, server)

    async def _run(self) -> None:
        with self.clock.participant():
            ticker = Ticker(self.clock, self.refresh_s)
            while True:
                await ticker.wait()
                try:
                    await self.refresh()
                except Exception as exc:
                    if self._refresh_health.fail(self.clock.now(), f"failed: {exc!r}"):
                        log.debug("the refresh's traceback", exc_info=True)
                else:
                    self._refresh_health.recover(self.clock.now())

    async def _refresh(self, device: ServedDevice, server: Server | None = None) -> None:
        server = server or self._server
        if server is None:
            return
        values = device.model.values()
        source = ua.DateTime.fromtimestamp(self.clock.now(), UTC)
        for name, node_id in device.nodes.items():
            reg = device.map[name]
            variant, status = served_value(reg, values.get(name), device.label)
            key = (variant.Value, status)
            if device.last_served.get(name) == key:
                continue
            device.last_served[name] = key
            await server.write_attribute_value(
                node_id,
                ua.DataValue(
                    variant,
                    StatusCode=ua.StatusCode(ua.UInt32(status)),
                    SourceTimestamp=source,
                    # The server's own stamp orders a poll against a late notification.
                    ServerTimestamp=ua.DateTime.now(UTC),
                ),
            )

    def _touched(self, node_ids: list[ua.NodeId]) -> dict[ServedDevice, list[str]]:
        touched: dict[ServedDevice, list[str]] = {}
        for node_id in node_ids:
            found = self._by_node.get(node_id)
            if found is not None:
                touched.setdefault(found[0], []).append(found[1].name)
        return touched

    async def _before_read(self, event: ServerItemCallback, _: CallbackService) -> None:
        if not event.is_external:
            return
        params: ua.ReadParameters = event.request_params
        for device in self._touched([r.NodeId for r in params.NodesToRead]):
            await self._refresh(device)

    async def write_items(self, items: list[ua.WriteValue]) -> list[ua.StatusCode | None]:
        """Each item's result, for the items that write a device's value (None for the others):
        the devices' accepted values are handed to their models, one write per device."""
        ours: list[tuple[int, ServedDevice, Register, ua.Variant | None]] = []
        for index, item in enumerate(items):
            found = self._by_node.get(item.NodeId)
            if found is not None and item.AttributeId == ua.AttributeIds.Value:
                variant = None if item.Value is None else item.Value.Value
                ours.append((index, found[0], found[1], variant))
        statuses, refused = write_devices(
            [(device, device.model, reg, variant) for _, device, reg, variant in ours]
        )
        for device, why in refused.items():
            device.rejected_writes += 1
            log.info("%s: write refused: %s", device.label, why)
        results: list[ua.StatusCode | None] = [None] * len(items)
        for (index, *_), status in zip(ours, statuses, strict=True):
            results[index] = ua.StatusCode(ua.UInt32(status))
        return results

    async def written(self, items: list[ua.WriteValue]) -> None:
        """Show what the devices made of a write (a pile clears its heartbeat at once)."""
        for device, names in self._touched([item.NodeId for item in items]).items():
            for name in names:
                device.last_served.pop(name, None)
            await self._refresh(device)


_ADMIN = User(role=UserRole.Admin)  # the default of AttributeService.write: the server itself


class _DeviceWrites(AttributeService):
    """asyncua's attribute service, with the devices' values written through their models.

    Each item of a Write gets its own result: an item the device refused never reaches the
    address space, and neither fails the other items.
    """

    def __init__(self, aspace: AddressSpace, station: OpcUaStationServer) -> None:
        super().__init__(aspace)
        self._station = station

    async def write(self, params: ua.WriteParameters, user: User = _ADMIN) -> list[ua.StatusCode]:
        items = list(params.NodesToWrite)
        results = await self._station.write_items(items)
        passed = [i for i, status in enumerate(results) if status is None or status.is_good()]
        if passed:
            stored = await super().write(
                ua.WriteParameters(NodesToWrite=[items[i] for i in passed]), user
            )
            for index, status in zip(passed, stored, strict=True):
                results[index] = status
        await self._station.written([items[i] for i in passed])
        return [status if status is not None else ua.StatusCode() for status in results]


def write_devices(
    items: Sequence[tuple[K, DeviceModel, Register, ua.Variant | None]],
) -> tuple[list[int], dict[K, Exception]]:
    """The status of each item of one Write (device key, its model, the register, the value),
    and why each device that refused its values refused them.

    A variable that cannot take the value answers for itself (BadNotWritable, BadTypeMismatch,
    BadOutOfRange); each device's other values reach its model as one write, and if the device
    refuses them they are all BadOutOfRange. One device's refusal fails no other device's items.
    """
    statuses = [int(ua.StatusCodes.Good)] * len(items)
    writes: dict[K, tuple[DeviceModel, dict[str, tuple[int, float]]]] = {}
    for index, (key, model, reg, variant) in enumerate(items):
        try:
            number = written_number(reg, variant)
        except ServiceError as exc:
            statuses[index] = exc.code
            continue
        writes.setdefault(key, (model, {}))[1][reg.name] = (index, number)
    refused: dict[K, Exception] = {}
    for key, (model, named) in writes.items():
        try:
            model.write({name: number for name, (_, number) in named.items()})
        except (Rejected, BadValue) as exc:
            refused[key] = exc
            for index, _ in named.values():
                statuses[index] = ua.StatusCodes.BadOutOfRange
    return statuses, refused


def served_value(reg: Register, value: Value | None, label: str) -> tuple[ua.Variant, int]:
    """The variant and status a model value (in project units) is served as (`label`: the
    device, for the log)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ua.Variant(None, ua.VariantType.Null), ua.StatusCodes.BadNoData
    if isinstance(value, (int, float)) and reg.type is not ValueType.STRING:
        value = from_project_units(reg, float(value))
    try:
        return engineering_variant(reg, value), ua.StatusCodes.Good
    except BadValue as exc:
        log.debug("%s: %s cannot be served: %s", label, reg.name, exc)
        return ua.Variant(None, ua.VariantType.Null), ua.StatusCodes.BadOutOfRange


def written_number(reg: Register, variant: ua.Variant | None) -> float:
    """A written variant as the model takes it (project units); `ServiceError` with the status
    the server answers if the variable cannot take it."""
    if not reg.access.writable or reg.type is ValueType.STRING:
        raise ServiceError(ua.StatusCodes.BadNotWritable)
    if variant is None or variant.VariantType != variant_type(reg):
        raise ServiceError(ua.StatusCodes.BadTypeMismatch)
    number = in_project_units(reg, variant.Value)
    if number is None or not math.isfinite(number):
        raise ServiceError(ua.StatusCodes.BadOutOfRange)
    return number
