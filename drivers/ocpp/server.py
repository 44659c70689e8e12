"""The CSMS server: OCPP 1.6J and 2.0.1 on one websocket port, by subprotocol.

Only the charge points the station file declares may connect (at `/<identity>`; any other path
is answered 404 before the websocket opens). With security profile 1 or 2 each must give HTTP
basic auth, user = its identity and the station's OCPP password (401 otherwise); 2 and 3 are
TLS with the station's "daemon" certificate, and 3 asks each charge point for a certificate the
station CA signed instead of a password, which must name the identity it connects as (403
otherwise, see `certificate_names`) and not be on the CA's revocation list, read again whenever
it changes (`base.certs.Revocations`). At each BootNotification the server probes the charge
point's smart charging, asks for meter values every `meter_values_s` and installs each of its
piles' fail-safe profile. `stop` leaves every connected charge point at its safe power before
it closes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import logging
import ssl
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from base import certs
from base.config import Station
from base.stationdevices import OcppSettings
from drivers.errors import DriverError
from drivers.ocpp.connection import LINKS, Link
from drivers.tls import server_context

if TYPE_CHECKING:
    from drivers.ocpp.pile import OcppPile

log = logging.getLogger(__name__)
SUBPROTOCOLS = tuple(LINKS)
# How long a charge point may take to answer the calls made at boot and at stop.
BOOT_TIMEOUT_S = 5.0
# A refused profile purpose is tried again after this long, and in a transaction it was not
# refused in: a refusal may be passing (a TxProfile before the charge point knew the transaction).
REFUSAL_RETRY_S = 600.0


class CsmsServer:
    """flexcharge's OCPP server for one station's charge points."""

    def __init__(self, station: Station, now: Callable[[], float]) -> None:
        """`now`: the controller's clock. Raises `ConfigError` when the security profile needs
        certificates or a password the station does not have."""
        assert station.ocpp is not None  # the loader requires [ocpp] with OCPP piles
        self.settings: OcppSettings = station.ocpp
        self.station = station
        self.now = now
        self.stale_after_s = station.control.stale_after_s
        self.io_timeout_s = max(station.control.io_timeout_s, 1.0)
        self.boot_timeout_s = BOOT_TIMEOUT_S
        self.identities = {p.identity for p in station.piles if p.ocpp}
        self.password = station.ocpp_password()
        self.station_name = ""  # the station CA's, for certificates `certs issue` made
        self.revocations: certs.Revocations | None = None  # profile 3: the CA's list
        self.tls = self._tls_context(station) if self.settings.tls else None
        self.piles: dict[tuple[str, int], OcppPile] = {}
        self.links: dict[str, Link] = {}
        self.no_composite: set[str] = set()
        # identity -> purpose -> (first refused at, the transactions it was refused in)
        self._refused: dict[str, dict[str, tuple[float, set[int | str | None]]]] = {}
        self._sessions = 0
        self._server: Server | None = None
        self._changed = asyncio.Condition()
        self.port = self.settings.port

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen (the port actually bound is `port`)."""
        if self.settings.security_profile == 0:
            log.warning(
                "OCPP server on %s:%d without authentication (security_profile 0): for "
                "loopback and tests only",
                self.settings.host,
                self.settings.port,
            )
        self._server = await serve(
            self._serve,
            self.settings.host,
            self.settings.port,
            subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            process_request=self._check_request,
            ssl=self.tls,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        scheme = "wss" if self.tls else "ws"
        log.info(
            "OCPP server listening on %s://%s:%d/<identity> for %d charge point(s)",
            scheme,
            self.settings.host,
            self.port,
            len(self.identities),
        )

    async def stop(self) -> None:
        """Leave every connected charge point at its safe power, then close."""
        if self._server is None:
            return
        await self.release(self.piles.values())
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        for link in list(self.links.values()):
            for task in list(link.tasks):
                task.cancel()
        self.links.clear()

    async def release(self, piles: Iterable[OcppPile]) -> None:
        """Leave `piles` at their safe power (their dynamic profiles cleared)."""
        results = await asyncio.gather(*(p.release() for p in piles), return_exceptions=True)
        for pile, result in zip(piles, results, strict=False):
            if isinstance(result, BaseException):
                log.error(
                    "%s: could not leave it at its safe power (%s); its profile expires "
                    "within %g s",
                    pile.label,
                    result,
                    self.settings.profile_validity_s,
                )

    def reconfigure(self, station: Station) -> None:
        """Take a reloaded station's charge points (the ones removed may no longer connect)."""
        self.station = station
        self.identities = {p.identity for p in station.piles if p.ocpp}
        if station.ocpp is not None:
            self.settings = station.ocpp.model_copy(
                update={"host": self.settings.host, "port": self.settings.port}
            )
        kept = {(p.identity, p.connector) for p in station.piles if p.ocpp}
        for key in [k for k in self.piles if k not in kept]:
            del self.piles[key]

    # -- what piles and connections ask ---------------------------------------------------------

    def attach(self, pile: OcppPile) -> None:
        """A pile to drive on its charge point's connector."""
        self.piles[(pile.config.identity, pile.config.connector)] = pile

    def link(self, identity: str) -> Link | None:
        """The connection of a charge point (None when it is not connected)."""
        return self.links.get(identity)

    async def wait_all_connected(self, timeout_s: float) -> list[str]:
        """Wait (real time, at most `timeout_s`) until every charge point of the station is
        connected; the identities still missing then, sorted."""

        def missing() -> list[str]:
            return sorted(self.identities - set(self.links))

        async def all_there() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: not missing())

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_there(), timeout_s)
        return missing()

    async def wait_connected(self, identity: str, connected: bool = True) -> None:
        """Return once the charge point is connected (or, with `connected` False, is not)."""
        async with self._changed:
            await self._changed.wait_for(lambda: (identity in self.links) == connected)

    async def _tell_changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def next_session(self) -> int:
        """A new session id, unique while the daemon runs."""
        self._sessions += 1
        return self._sessions

    def refused(self, identity: str, transaction: int | str | None = None) -> set[str]:
        """The profile purposes a charge point has refused in the last REFUSAL_RETRY_S (with a
        `transaction`: only those refused in that transaction)."""
        now = self.now()
        known = self._refused.get(identity, {})
        for purpose in [p for p, (at, _) in known.items() if now - at >= REFUSAL_RETRY_S]:
            del known[purpose]
        return {
            purpose
            for purpose, (_, transactions) in known.items()
            if transaction is None or transaction in transactions
        }

    def refuse(
        self, identity: str, purpose: str, status: str, transaction: int | str | None = None
    ) -> None:
        """Remember that a charge point refused a purpose (in `transaction`), logged once until
        it is tried again."""
        known = self._refused.setdefault(identity, {})
        if purpose in self.refused(identity):
            known[purpose][1].add(transaction)
            return
        known[purpose] = (self.now(), {transaction})
        log.warning(
            "charge point %s: %s answered %s; using another purpose for %.0f s",
            identity,
            purpose,
            status,
            REFUSAL_RETRY_S,
        )

    def booted(self, link: Link) -> None:
        """After BootNotification: probe, set the meter interval, install the fail-safes."""
        link.spawn(self._boot(link))

    async def _boot(self, link: Link) -> None:
        timeout = self.boot_timeout_s
        try:
            link.caps = await link.probe(timeout)
        except DriverError as exc:
            log.warning("charge point %s: capabilities unknown (%s)", link.identity, exc)
        else:
            log.info(
                "charge point %s (OCPP %s): units %s, %s periods, stack level %s%s",
                link.identity,
                link.version,
                "/".join(link.caps.units),
                link.caps.max_periods,
                link.caps.max_stack_level,
                ", bidirectional" if link.caps.bidirectional else "",
            )
        try:
            if not await link.set_sample_interval(self.settings.meter_values_s, timeout):
                log.warning("charge point %s: refused the meter value interval", link.identity)
        except DriverError as exc:
            log.warning("charge point %s: meter value interval not set (%s)", link.identity, exc)
        for (identity, _), pile in list(self.piles.items()):
            if identity != link.identity:
                continue
            pile.rebooted()
            try:
                await pile.install_failsafe(link, pile.config.fallback_kw)
            except DriverError as exc:
                log.error("%s: fail-safe not installed: %s", pile.label, exc)

    # -- websockets ------------------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        identity = request.path.strip("/").split("?")[0]
        if identity not in self.identities:
            log.warning("OCPP connection refused: unknown charge point %r", identity)
            return connection.respond(HTTPStatus.NOT_FOUND, "unknown charge point\n")
        if self.settings.basic_auth and not self._authenticated(identity, request):
            log.warning("OCPP connection refused: charge point %s failed basic auth", identity)
            response = connection.respond(HTTPStatus.UNAUTHORIZED, "authentication failed\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="flexcharge"'
            return response
        if self.tls is not None and self.tls.verify_mode == ssl.CERT_REQUIRED:
            peercert = connection.transport.get_extra_info("peercert")
            revoked = self._revoked(peercert)
            if revoked:
                log.warning("charge point %s: %s: refused", identity, revoked)
                return connection.respond(HTTPStatus.FORBIDDEN, "certificate refused\n")
            named = _common_names(peercert)
            if not self.certificate_names(named, identity):
                log.warning(
                    "charge point %s presented a certificate for %r: refused",
                    identity,
                    ", ".join(named),
                )
                return connection.respond(
                    HTTPStatus.FORBIDDEN, "the certificate does not name this charge point\n"
                )
        return None

    def _revoked(self, peercert: object) -> str:
        """Why a client certificate may not connect for the station CA's revocation list ("" if
        it may)."""
        serial = peercert.get("serialNumber") if isinstance(peercert, dict) else None
        if self.revocations is None or not isinstance(serial, str):
            return "" if self.revocations is None else "a certificate without a serial number"
        return self.revocations.refusal(int(serial, 16))

    def certificate_names(self, common_names: list[str], identity: str) -> bool:
        """Whether a client certificate with these subject common names belongs to the charge
        point `identity` (security profile 3): its one CN is the identity (OCPP's rule, e.g. a
        charge point certificate from `flexcharge certs issue --charge-point` or another CA's
        tooling), or "<station> <identity>", as `flexcharge certs issue` names an application,
        where <station> is the station CA's name (its CN without " CA"). The station's own
        parties' certificates (its daemon's, its simulator's) name no charge point, whatever
        one is called."""
        if len(common_names) != 1:
            return False
        [name] = common_names
        return name == identity or (
            bool(self.station_name)
            and identity not in certs.PARTIES
            and name == f"{self.station_name} {identity}"
        )

    def _authenticated(self, identity: str, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or self.password is None:
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == identity and hmac.compare_digest(password.encode(), self.password.encode())

    async def _serve(self, connection: ServerConnection) -> None:
        identity = connection.request.path.strip("/").split("?")[0] if connection.request else ""
        make = LINKS.get(connection.subprotocol or "")
        if make is None:
            log.warning("charge point %s offered no OCPP version we speak", identity)
            await connection.close(1002, "no supported OCPP subprotocol")
            return
        link = make(identity, connection, self)
        old = self.links.get(identity)
        self.links[identity] = link
        if old is not None:
            log.warning(
                "charge point %s connected again: the older connection is dropped", identity
            )
            await old.close()
        log.info("charge point %s connected (OCPP %s)", identity, link.version)
        await self._tell_changed()
        try:
            await link.run()
        except ConnectionClosed:
            pass
        finally:
            if self.links.get(identity) is link:
                del self.links[identity]
            for task in list(link.tasks):
                task.cancel()
            log.info("charge point %s disconnected", identity)
            await self._tell_changed()

    def _tls_context(self, station: Station) -> ssl.SSLContext:
        ident = station.identity("daemon")
        context = server_context(ident.cert_pem, ident.key_pem, ident.ca_pem, device="OCPP server")
        if self.settings.security_profile == 2:
            context.verify_mode = ssl.CERT_NONE  # profile 2: the password authenticates
        else:
            self.station_name = certs.station_name(ident.ca_pem)
            assert ident.crl_dir is not None  # a station's certificates directory has one
            self.revocations = certs.Revocations(ident.ca_pem, ident.crl_dir / certs.CRL_NAME)
        return context


def _common_names(peercert: object) -> list[str]:
    """The subject CNs of a certificate as `ssl.SSLSocket.getpeercert` gives it."""
    if not isinstance(peercert, dict):
        return []
    return [
        str(value)
        for rdn in peercert.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    ]
