"""OPC-UA links: one asyncua `Client` session with one server endpoint.

`OpcUaLink` owns one asyncua `Client` (one session with one server endpoint) and turns every way a
request can fail into the `DriverError` tree. `OpcUaDevice` is one object behind a link, read and
written by the names of its `RegisterMap`, so `MapMeter` and `DcPile` work over OPC-UA unchanged.

Reads come from a data-change subscription when it is alive and fresh; otherwise (the
subscription cannot be created, has not delivered yet, or has neither delivered nor kept alive
within `stale_after_s` of the injected clock) they poll with one Read request. A lost transport, a
failed keep-alive probe or a failed request is raised as `ConnectionLost` or `DeviceTimeout`; the
link then drops the session and the next call opens a new one. The link starts no task of its
own; the tasks asyncua starts for a session (keep-alive probe, publish loop) end when the link
closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState, UASocketProtocol
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.common.utils import ServiceError
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.observer import Observer
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary
from cryptography import x509

from drivers.errors import ConnectionLost, DeviceRejected, DeviceTimeout, DriverError
from drivers.opcua.security import (
    POLICIES,
    OpcUaSecurity,
    pem_properties,
    read_identity,
    trust_store,
)
from drivers.opcua.space import NAMESPACE_URI, status_name, string_node

log = logging.getLogger(__name__)


_CERTIFICATE_REFUSALS = {
    ua.StatusCodes.BadCertificateUntrusted,
    ua.StatusCodes.BadCertificateInvalid,
    ua.StatusCodes.BadCertificateUriInvalid,
    ua.StatusCodes.BadCertificateUseNotAllowed,
    ua.StatusCodes.BadCertificateTimeInvalid,
    ua.StatusCodes.BadCertificateRevoked,
    ua.StatusCodes.BadSecurityChecksFailed,
}


_CERTIFICATE_ADVICE = {
    ua.StatusCodes.BadCertificateRevoked: "the station CA has revoked it",
    ua.StatusCodes.BadCertificateUriInvalid: (
        "the application URI this client declares is not the one in its certificate"
    ),
    ua.StatusCodes.BadCertificateTimeInvalid: "it has expired or is not valid yet",
}


_SECURITY_REFUSALS = {
    ua.StatusCodes.BadSecurityPolicyRejected,
    ua.StatusCodes.BadSecurityModeRejected,
}


_USER_REFUSALS = {
    ua.StatusCodes.BadUserAccessDenied,
    ua.StatusCodes.BadIdentityTokenRejected,
    ua.StatusCodes.BadIdentityTokenInvalid,
}


# Answers that mean the session or channel is gone, not that the device refused the request.
_SESSION_LOST = {
    ua.StatusCodes.BadSessionIdInvalid,
    ua.StatusCodes.BadSessionClosed,
    ua.StatusCodes.BadSessionNotActivated,
    ua.StatusCodes.BadSecureChannelIdInvalid,
    ua.StatusCodes.BadSecureChannelClosed,
    ua.StatusCodes.BadConnectionClosed,
    ua.StatusCodes.BadServerNotConnected,
    ua.StatusCodes.BadShutdown,
    ua.StatusCodes.BadCommunicationError,
}


# How long a server keeps a session whose client fell silent (the client keeps it alive).
_SESSION_TIMEOUT_MS = 60_000


def _printable(url: str) -> str:
    """`url` without any user:password@ part, for messages."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=host))


def refused(device: str, url: str, why: str) -> ConnectionLost:
    """The error of a session with the server at `url` that could not be opened (`why`: the
    operating system's word for it, "Connection refused")."""
    return ConnectionLost(device, f"cannot connect to {url}: {why}")


class _NoCommonPolicy(Exception):
    def __init__(self, offered: list[str]) -> None:
        super().__init__(", ".join(offered) or "none")
        self.offered = offered


class _ServerCheck:
    """The client's check of the server certificate; remembers a refusal to explain it."""

    def __init__(self, store: TrustStore) -> None:
        self._validator = CertificateValidator(
            CertificateValidatorOptions.TRUSTED_VALIDATION
            | CertificateValidatorOptions.PEER_SERVER,
            store,
        )
        self.refused: int | None = None

    async def __call__(self, cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
        try:
            await self._validator.validate(cert, app)
        except ServiceError as exc:
            self.refused = exc.code
            raise


_SERVICE_FAULT = ua.NodeId(ua.Int32(ua.ObjectIds.ServiceFault_Encoding_DefaultBinary))


class _Transport(UASocketProtocol):
    """asyncua's client protocol, reading the ServiceFault a server answers a refused
    OpenSecureChannel with (OPC-UA Part 6, 6.7.4) as the refusal's status: asyncua 2.1 takes it
    for a malformed response and leaves the client without a reason."""

    def _process_received_message(self, msg: Any) -> None:
        if isinstance(msg, ua.Message) and isinstance(
            self._open_secure_channel_exchange, ua.OpenSecureChannelParameters
        ):
            body = msg.body()
            if nodeid_from_binary(body.copy()) == _SERVICE_FAULT:
                fault = struct_from_binary(ua.ServiceFault, body)
                # Raised here, it fails the pending request as an Error message would.
                fault.ResponseHeader.ServiceResult.check()
        super()._process_received_message(msg)


def read_refusals(client: Client) -> None:
    """Make `client` (before it connects) read a ServiceFault answering its OpenSecureChannel
    as the refusal it is: `UaStatusCodeError` with the server's status."""
    uaclient = client.uaclient

    def make_protocol() -> UASocketProtocol:
        protocol = _Transport(uaclient._timeout, security_policy=uaclient.security_policy)
        protocol.pre_request_hook = uaclient._pre_request_hook
        protocol.on_connection_lost = uaclient._on_transport_lost
        protocol.is_session_closing = uaclient._is_session_closing
        uaclient.protocol = protocol
        return protocol

    # UaClient._make_protocol with this protocol (asyncua 2.1; pyproject pins it below 2.2).
    uaclient._make_protocol = make_protocol  # type: ignore[method-assign]


class _Session(Observer):
    """One connection's state: its client, namespace index and the latest subscribed values.

    It is the client's observer (every publish response, data or keep-alive, and every state
    change) and its subscription's handler (data changes, status changes).
    """

    def __init__(self, client: Client, now: Callable[[], float]) -> None:
        self.client = client
        self.namespace = 0
        self._now = now
        self.latest: dict[str, ua.DataValue] = {}
        self.monitored: set[str] = set()
        self.subscription: Subscription | None = None
        self.ended: Subscription | None = None
        self.subscriptions_unavailable = False
        self.policy: str | None = None
        self.published_at: float | None = None
        self.notifications = 0
        self.lost: str | None = None
        self.established = False
        self.closing = False

    def node(self, identifier: str) -> ua.NodeId:
        return string_node(identifier, self.namespace)

    def fresh(self, now: float, stale_after_s: float) -> bool:
        return self.published_at is not None and now - self.published_at <= stale_after_s

    def remember(self, identifier: str, value: ua.DataValue) -> None:
        """Keep the newer of the held and the given value (a late notification may be older)."""
        if identifier not in self.monitored:
            return
        held = self.latest.get(identifier)
        if held is not None and _stamp(value) < _stamp(held):
            return
        self.latest[identifier] = value

    # -- asyncua Observer ------------------------------------------------------------------

    def observe_request(self, request: Any) -> AbstractContextManager[None]:
        return nullcontext()

    def on_notification(self, subscription_id: int | None, event_count: int) -> None:
        # asyncua hands each data change to the handler in a task it has just scheduled; mark
        # the publish after those tasks have run, so "fresh" never precedes the values it brought.
        asyncio.get_running_loop().call_soon(self._published)

    def _published(self) -> None:
        self.published_at = self._now()

    def on_state_change(self, state: UaClientState) -> None:
        # Discovery before the session opens and our own close pass through DISCONNECTED too.
        if state is UaClientState.DISCONNECTED and self.established and not self.closing:
            self.lost = "the transport closed or stopped answering the keep-alive probe"

    # -- subscription handler ----------------------------------------------------------------

    def datachange_notification(self, node: Any, val: Any, data: DataChangeNotif) -> None:
        identifier = node.nodeid.Identifier
        if isinstance(identifier, str):
            self.notifications += 1
            self.remember(identifier, data.monitored_item.Value)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        if status.Status.is_bad():
            # The server ended the subscription (expired, shut down): poll until a new one runs.
            self.ended, self.subscription = self.subscription, None
            self.monitored.clear()
            self.latest.clear()
            self.published_at = None


def _stamp(value: ua.DataValue) -> datetime:
    stamp = value.ServerTimestamp or value.SourceTimestamp or datetime.min
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)


class OpcUaLink:
    """One OPC-UA session with one server endpoint, shared by the devices (objects) behind it.

    `now` is the controller's clock; subscription freshness is judged on it. The link counts
    how reads were served (`polls`, `subscription_reads`) so operators and tests can see which
    path is in use.
    """

    def __init__(
        self,
        url: str,
        security: OpcUaSecurity,
        *,
        now: Callable[[], float],
        timeout_s: float = 1.0,
        connect_timeout_s: float = 5.0,
        publish_interval_s: float = 0.2,
        keepalive_s: float = 1.0,
        stale_after_s: float | None = None,
        subscribe: bool = True,
    ) -> None:
        if not url.startswith("opc.tcp://"):
            raise ValueError(f"not an OPC-UA endpoint URL (opc.tcp://host:port/path): {url!r}")
        if min(timeout_s, connect_timeout_s, publish_interval_s, keepalive_s) <= 0:
            raise ValueError("timeouts and intervals must be positive")
        self.url = url
        self.security = security
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.publish_interval_s = publish_interval_s
        self.keepalive_s = keepalive_s
        self.stale_after_s = 3 * keepalive_s if stale_after_s is None else stale_after_s
        self.subscribe = subscribe
        self.polls = 0
        self.subscription_reads = 0
        self._now = now
        self._session: _Session | None = None
        # What the log has been told once (the device's feed tells each failure and recovery).
        self._opened_before = False
        self._told_no_subscription = False
        self._connecting = asyncio.Lock()
        self._subscribing = asyncio.Lock()

    @property
    def address(self) -> str:
        """The endpoint URL, for messages."""
        return _printable(self.url)

    @property
    def connected(self) -> bool:
        """True while a session is open and its transport has not been lost."""
        session = self._session
        return session is not None and session.lost is None

    @property
    def subscribed(self) -> bool:
        """True while a data-change subscription feeds reads."""
        session = self._session
        return session is not None and session.subscription is not None

    @property
    def fresh(self) -> bool:
        """True while reads are served from the subscription (it published within the bound)."""
        session = self._session
        return (
            session is not None
            and session.subscription is not None
            and session.fresh(self._now(), self.stale_after_s)
        )

    @property
    def policy(self) -> str | None:
        """The security policy of the open session ("Basic256Sha256", ...; "None" unencrypted)."""
        return None if self._session is None else self._session.policy

    @property
    def notifications(self) -> int:
        """Data-change notifications received in the current session."""
        return 0 if self._session is None else self._session.notifications

    async def connect(self, device: str) -> None:
        """Open the session if it is not open; raise a `DriverError` naming `device` if that fails."""
        await self._open_session(device)

    async def close(self) -> None:
        """Close the session and end every task asyncua started for it (idempotent)."""
        session = self._session
        if session is not None:
            await self._drop(session)
            log.info("session with %s closed", self.address)

    async def read(
        self, device: str, identifiers: Sequence[str], *, cached: bool = True
    ) -> list[ua.DataValue]:
        """The values of the named variables: from the subscription when it is alive and fresh
        (and `cached`), else from one Read request."""
        session = await self._open_session(device)
        if (
            cached
            and session.subscription is not None
            and session.fresh(self._now(), self.stale_after_s)
            and all(i in session.latest for i in identifiers)
        ):
            self.subscription_reads += 1
            return [session.latest[i] for i in identifiers]
        nodes = [session.node(i) for i in identifiers]
        values = await self._request(
            session,
            device,
            "read",
            lambda: session.client.uaclient.read_attributes(nodes, ua.AttributeIds.Value),
        )
        self.polls += 1
        if len(values) != len(identifiers):
            raise DeviceRejected(
                device, f"read: {self.address} answered {len(values)} values, not {len(nodes)}", 0
            )
        for identifier, value in zip(identifiers, values, strict=True):
            session.remember(identifier, value)
        if self.subscribe:
            await self._monitor(session, device, identifiers)
        return values

    async def write(self, device: str, values: Mapping[str, ua.Variant]) -> None:
        """Write the variables in one Write request; `DeviceRejected` if the server refuses any."""
        session = await self._open_session(device)
        identifiers = list(values)
        nodes = [session.node(i) for i in identifiers]
        data = [ua.DataValue(values[i]) for i in identifiers]
        results = await self._request(
            session,
            device,
            "write",
            lambda: session.client.uaclient.write_attributes(nodes, data, ua.AttributeIds.Value),
        )
        refused = [
            (identifier, status)
            for identifier, status in zip(identifiers, results, strict=True)
            if not status.is_good()
        ]
        if refused:
            names = ", ".join(f"{i.rpartition('.')[2]}: {s.name}" for i, s in refused)
            raise DeviceRejected(
                device, f"write refused by {self.address}: {names}", refused[0][1].value
            )

    # -- session lifecycle ---------------------------------------------------------------------

    async def _open_session(self, device: str) -> _Session:
        session = self._session
        if session is not None and session.lost is not None:
            reason = session.lost
            await self._drop(session)
            raise ConnectionLost(device, f"connection to {self.address} lost: {reason}")
        if session is not None:
            return session
        async with self._connecting:
            if self._session is None:
                self._session = await self._open(device)
            return self._session

    async def _open(self, device: str) -> _Session:
        security = self.security
        client = Client(self.url, timeout=self.timeout_s, watchdog_intervall=self.keepalive_s)
        client.application_uri = security.application_uri
        client.name = client.description = "flexcharge"
        client.session_timeout = _SESSION_TIMEOUT_MS
        read_refusals(client)
        session = _Session(client, self._now)
        client.uaclient.observer = session
        check: _ServerCheck | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if security.encrypt:
                    session.policy, check = await self._secure(client, device)
                else:
                    session.policy = "None"
                if security.user is not None and security.password is not None:
                    client.set_user(security.user)
                    client.set_password(security.password)
                await client.connect()
                session.namespace = await client.get_namespace_index(NAMESPACE_URI)
                session.established = True
        except (Exception, asyncio.CancelledError) as exc:
            session.closing = True
            await _close(client)
            if isinstance(exc, asyncio.CancelledError):
                raise
            if isinstance(exc, DriverError):
                raise
            raise self._refusal(device, exc, check) from None
        # A session opened again after a loss is the device's recovery, which its feed tells.
        log.log(
            logging.DEBUG if self._opened_before else logging.INFO,
            "%s: session open with %s (%s)",
            device,
            self.address,
            session.policy,
        )
        self._opened_before = True
        return session

    async def _secure(self, client: Client, device: str) -> tuple[str, _ServerCheck]:
        """Pick the first configured policy the server offers with SignAndEncrypt and set it up."""
        security = self.security
        assert security.certificate and security.private_key and security.trust_dir
        try:
            certificate, private_key = read_identity(security.certificate, security.private_key)
        except OSError as exc:
            raise DriverError(
                device, f"cannot read the client certificate or key: {exc.strerror}: {exc.filename}"
            ) from None
        try:
            check = _ServerCheck(await trust_store(security.trust_dir, security.crl_dir))
        except (OSError, ValueError) as exc:
            raise DriverError(
                device, f"cannot load the trusted CAs or their revocation lists: {exc}"
            ) from None
        endpoints = await client.connect_and_get_server_endpoints()
        encrypted = [
            e
            for e in endpoints
            if e.SecurityMode == ua.MessageSecurityMode.SignAndEncrypt
            and e.EndpointUrl.startswith("opc.tcp://")
        ]
        offered = {e.SecurityPolicyUri: e for e in encrypted}
        name = next((n for n in security.policies if POLICIES[n].URI in offered), None)
        if name is None:
            raise _NoCommonPolicy(sorted(uri.rpartition("#")[2] for uri in offered))
        chosen = offered[POLICIES[name].URI]
        await client.set_security(
            POLICIES[name],
            certificate=pem_properties(certificate),
            private_key=pem_properties(private_key),
            server_certificate=chosen.ServerCertificate,
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        client.certificate_validator = check
        return name, check

    def _refusal(self, device: str, exc: BaseException, check: _ServerCheck | None) -> DriverError:
        """The `DriverError` that explains why a session could not be opened."""
        url = self.address
        if check is not None and check.refused is not None:
            why = (
                "its certificate is revoked"
                if check.refused == ua.StatusCodes.BadCertificateRevoked
                else "its certificate is not trusted"
            )
            return ConnectionLost(
                device,
                f"refused the server at {url}: {why} "
                f"({status_name(check.refused)}; trusted CAs are in {self.security.trust_dir})",
            )
        if isinstance(exc, _NoCommonPolicy):
            return ConnectionLost(
                device,
                f"{url} offers none of {', '.join(self.security.policies)} with SignAndEncrypt "
                f"(it offers: {', '.join(exc.offered) or 'no encrypted endpoint'})",
            )
        if isinstance(exc, ua.UaStatusCodeError):
            code = exc.code
            if code in _CERTIFICATE_REFUSALS:
                return ConnectionLost(
                    device,
                    f"the server at {url} refused this client's certificate ({status_name(code)}); "
                    + _CERTIFICATE_ADVICE.get(code, "it must be issued by the station CA"),
                )
            if code in _SECURITY_REFUSALS:
                asked = (
                    "this client's security policy and mode"
                    if self.security.encrypt
                    else "an unencrypted session"
                )
                return ConnectionLost(
                    device, f"the server at {url} refused {asked} ({status_name(code)})"
                )
            if code in _USER_REFUSALS:
                who = (
                    f"user {self.security.user!r}" if self.security.user else "an anonymous session"
                )
                return ConnectionLost(
                    device,
                    f"the server at {url} refused {who} ({status_name(code)}): wrong user name "
                    "or password?",
                )
            return ConnectionLost(device, f"cannot open a session with {url}: {status_name(code)}")
        if isinstance(exc, TimeoutError):
            return DeviceTimeout(
                device, f"no answer from {url} within {self.connect_timeout_s:g} s while connecting"
            )
        if isinstance(exc, OSError):
            return refused(device, url, str(exc.strerror or exc))
        if isinstance(exc, ValueError):
            return DriverError(device, f"{url} does not serve the namespace {NAMESPACE_URI}")
        if isinstance(exc, ua.UaError):
            return ConnectionLost(device, f"cannot connect to {url}: {exc}")
        return DriverError(device, f"cannot connect to {url}: unexpected {type(exc).__name__}")

    async def _drop(self, session: _Session) -> None:
        """Forget the session and close it; the next call opens a new one."""
        if self._session is session:
            self._session = None
        if session.closing:
            return
        session.closing = True
        await _close(session.client)
        log.debug("session with %s closed", self.address)

    async def _request(
        self, session: _Session, device: str, what: str, send: Callable[[], Any]
    ) -> Any:
        try:
            return await send()
        except TimeoutError:
            await self._drop(session)
            raise DeviceTimeout(
                device, f"{what}: no answer from {self.address} within {self.timeout_s:g} s"
            ) from None
        except ua.UaStatusCodeError as exc:
            if exc.code in _SESSION_LOST:
                await self._drop(session)
                raise ConnectionLost(
                    device, f"{what}: session with {self.address} lost ({status_name(exc.code)})"
                ) from None
            raise DeviceRejected(
                device, f"{what}: {self.address} answered {status_name(exc.code)}", exc.code
            ) from None
        except (ConnectionError, OSError) as exc:
            await self._drop(session)
            raise ConnectionLost(
                device, f"{what}: connection to {self.address} lost ({exc})"
            ) from None

    # -- subscription --------------------------------------------------------------------------

    async def _monitor(self, session: _Session, device: str, identifiers: Sequence[str]) -> None:
        """Add the variables to the session's subscription (creating it first), if possible."""
        async with self._subscribing:
            if session.subscriptions_unavailable or session.closing:
                return
            missing = [i for i in dict.fromkeys(identifiers) if i not in session.monitored]
            if not missing:
                return
            if session.ended is not None:
                # Deleted, asyncua's own watchdog stops trying to revive it.
                ended, session.ended = session.ended, None
                with contextlib.suppress(ua.UaError, ConnectionError, OSError, TimeoutError):
                    await ended.delete()
            try:
                if session.subscription is None:
                    session.subscription = await session.client.create_subscription(
                        self._subscription_parameters(), session
                    )
                results = await session.subscription.subscribe_data_change(
                    [session.client.get_node(session.node(i)) for i in missing]
                )
            except (ua.UaError, ConnectionError, OSError, TimeoutError) as exc:
                session.subscriptions_unavailable = True
                what = status_name(exc.code) if isinstance(exc, ua.UaStatusCodeError) else exc
                log.log(
                    logging.DEBUG if self._told_no_subscription else logging.WARNING,
                    "%s: %s takes no subscription (%s); polling instead",
                    device,
                    self.address,
                    what,
                )
                self._told_no_subscription = True
                return
            for identifier, result in zip(missing, results, strict=True):
                if isinstance(result, int):
                    session.monitored.add(identifier)

    def _subscription_parameters(self) -> ua.CreateSubscriptionParameters:
        interval_ms = self.publish_interval_s * 1000
        keepalive = max(1, math.ceil(self.keepalive_s / self.publish_interval_s))
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = interval_ms
        params.RequestedMaxKeepAliveCount = keepalive
        # The server ends a subscription nobody has asked to publish for this many intervals.
        params.RequestedLifetimeCount = max(3 * keepalive, math.ceil(60 / self.publish_interval_s))
        params.MaxNotificationsPerPublish = 0
        params.PublishingEnabled = True
        params.Priority = 0
        return params


async def _close(client: Client) -> None:
    """Close a client's session, channel and socket and end its tasks; never raises."""
    try:
        await client.disconnect()
    except (Exception, asyncio.CancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError):
            raise
        log.debug("closing an OPC-UA client failed", exc_info=True)
