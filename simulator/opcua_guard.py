"""asyncua's OPC-UA server with the checks a conformant server makes on every connection.

asyncua 2.1 leaves these out: a client asking for a security policy or mode the server does not
offer gets no answer at all (the exception ends as a traceback in the server's log and the client
waits for its own timeout); the client certificate is checked only in CreateSession, and only if
the client repeats it there; an unencrypted channel serves CreateSession although no endpoint
offers it. `GuardedServer` is asyncua's `Server` whose connections are checked as OPC-UA Parts 4
and 6 ask:

- OpenSecureChannel with a policy the server does not offer (Basic128Rsa15 and Basic256 are
  never offered) is answered with an Error message BadSecurityPolicyRejected, and one that cannot
  be decrypted or verified with BadSecurityChecksFailed: nothing can be secured for such a client.
- Once the request is verified, a refusal is a ServiceFault in place of the OpenSecureChannel
  response, secured as that response would be (Part 6, 6.7.4; node-opcua's server answers so
  too, and its client reads only such a refusal's status): a mode the server does not offer for that policy (Sign) is
  BadSecurityModeRejected; a client certificate the trusted CAs did not issue is
  BadSecurityChecksFailed (Part 6, 6.7.6: the trust check comes first and says no more), then one
  that has expired (BadCertificateTimeInvalid), lacks the key usages of an application instance
  certificate (BadCertificateUseNotAllowed, BadCertificateInvalid) or is on its CA's revocation
  list (BadCertificateRevoked).
- Either way the connection is then closed.
- An unencrypted channel stays open for discovery (GetEndpoints): clients fetch the endpoints and
  the server certificate that way. CreateSession on it is BadSecurityPolicyRejected unless the
  server offers the None policy.
- CreateSession on an encrypted channel: the client certificate must be the channel's
  (BadSecurityChecksFailed) and pass the full check, its application URI among the certificate's
  SubjectAltName URIs (BadCertificateUriInvalid), answered with a ServiceFault. A refused
  ActivateSession (user name or password) is answered as asyncua answers it, logged as a refusal.

Each refusal is one INFO line naming the endpoint, the peer and the status; none logs a traceback.
"""

from __future__ import annotations

import logging
import math
import socket
from typing import Any

from asyncua import Server, ua
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import Buffer, ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.security_policies import SecurityPolicy, SecurityPolicyNone
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.internal_server import InternalServer
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import struct_from_binary, uatcp_to_binary
from cryptography import x509

log = logging.getLogger(__name__)

_CREATE_SESSION = ua.NodeId(ua.Int32(ua.ObjectIds.CreateSessionRequest_Encoding_DefaultBinary))
_ACTIVATE_SESSION = ua.NodeId(ua.Int32(ua.ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary))
_UNENCRYPTED = SecurityPolicyNone.URI

# What can be checked of a certificate before the client has described itself (CreateSession).
_CHANNEL_CHECKS = (
    CertificateValidatorOptions.TIME_RANGE
    | CertificateValidatorOptions.KEY_USAGE
    | CertificateValidatorOptions.REVOKED
)
_SESSION_CHECKS = (
    CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_CLIENT
)


class _Refused(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(why)
        self.code = code
        self.why = why


def _status_name(code: int) -> str:
    return ua.StatusCode(ua.UInt32(code)).name


def _leaf(der: bytes) -> bytes:
    """The first certificate of a DER certificate chain (a chain is its certificates' DER
    concatenated): the outer SEQUENCE with its length, in short or long form."""
    if len(der) < 2 or der[0] != 0x30:
        return der
    if der[1] < 0x80:
        return der[: 2 + der[1]]
    size = der[1] & 0x7F
    return der[: 2 + size + int.from_bytes(der[2 : 2 + size], "big")]


class _Guard:
    """What a server offers and trusts, and the checks made of each connection against it."""

    def __init__(
        self, url: str, offered: set[tuple[str, ua.MessageSecurityMode]], trust: TrustStore | None
    ) -> None:
        self.url = url
        self._offered = offered
        self._uris = {uri for uri, _ in offered}
        self._unencrypted_sessions = (_UNENCRYPTED, ua.MessageSecurityMode.None_) in offered
        self._trust = trust
        self._channel_check = (
            CertificateValidator(_CHANNEL_CHECKS, trust) if trust is not None else None
        )
        self._session_check = (
            CertificateValidator(_SESSION_CHECKS, trust) if trust is not None else None
        )
        # Refusals so far, by client host, what was refused, its status and why: a client that
        # keeps asking the same (a daemon reconnecting every cycle) is logged at its first
        # refusal and then at the 10th, 100th..., not once a second, until it opens a session.
        self._refused: dict[tuple[str, str, int, str], int] = {}

    def refused(self, host: str, what: str, refusal: _Refused) -> int | None:
        """Count one refusal; how many of its kind the host has had, if it is one to log."""
        key = (host, what, refusal.code, refusal.why)
        count = self._refused[key] = self._refused.get(key, 0) + 1
        return count if count == 1 or math.log10(count).is_integer() else None

    def opened(self, host: str) -> None:
        """A session of `host` was activated: its next refusal starts a new episode."""
        for key in [k for k in self._refused if k[0] == host]:
            del self._refused[key]

    def check_policy(self, uri: str) -> None:
        """The policy a client opens a channel with (before its request is decrypted)."""
        if uri != _UNENCRYPTED and uri not in self._uris:
            raise _Refused(
                ua.StatusCodes.BadSecurityPolicyRejected, f"policy {uri.rpartition('#')[2]}"
            )

    async def check_channel(
        self, uri: str, mode: ua.MessageSecurityMode, certificate: bytes | None
    ) -> None:
        """The mode and the certificate of a verified OpenSecureChannel request."""
        if uri == _UNENCRYPTED and mode == ua.MessageSecurityMode.None_:
            return  # discovery; a session on it is refused in check_session unless offered
        if (uri, mode) not in self._offered:
            raise _Refused(
                ua.StatusCodes.BadSecurityModeRejected,
                f"mode {mode.name} with policy {uri.rpartition('#')[2]}",
            )
        if self._trust is None or self._channel_check is None:
            return
        cert = _certificate(certificate)
        if not self._trust.is_trusted(cert):
            raise _Refused(
                ua.StatusCodes.BadSecurityChecksFailed,
                f"certificate {cert.subject.rfc4514_string()} is not issued by a trusted CA",
            )
        await _validate(self._channel_check, cert, ua.ApplicationDescription())

    async def check_session(
        self, policy: SecurityPolicy, params: ua.CreateSessionParameters
    ) -> None:
        """A CreateSession request on a channel opened with `policy`."""
        if policy.URI == _UNENCRYPTED:
            if not self._unencrypted_sessions:
                raise _Refused(
                    ua.StatusCodes.BadSecurityPolicyRejected, "a session on an unencrypted channel"
                )
            return
        channel = policy.peer_certificate
        presented = params.ClientCertificate
        if not presented or not channel or _leaf(presented) != _leaf(channel):
            raise _Refused(
                ua.StatusCodes.BadSecurityChecksFailed,
                "the session's certificate is not the channel's",
            )
        if self._session_check is not None:
            description = params.ClientDescription or ua.ApplicationDescription()
            await _validate(self._session_check, _certificate(presented), description)


def _certificate(der: bytes | None) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(_leaf(der or b""))
    except ValueError:
        raise _Refused(ua.StatusCodes.BadCertificateInvalid, "not a certificate") from None


async def _validate(
    validator: CertificateValidator, cert: x509.Certificate, app: ua.ApplicationDescription
) -> None:
    try:
        await validator.validate(cert, app)
    except ServiceError as exc:
        subject = cert.subject.rfc4514_string()
        uri = app.ApplicationUri
        raise _Refused(
            exc.code, f"certificate {subject}" + (f" for {uri}" if uri else "")
        ) from None


class _CheckedChannel(UaProcessor):
    """asyncua's processor of one connection, refusing what `_Guard` refuses."""

    def __init__(
        self, iserver: InternalServer, transport: Any, limits: TransportLimits, guard: _Guard
    ) -> None:
        super().__init__(iserver, transport, limits)
        self._guard = guard

    @property
    def _peer(self) -> str:
        host, port = (self.name or ("?", "?"))[:2]
        return f"{host}:{port}"

    @property
    def _host(self) -> str:
        return str((self.name or ("?",))[0])

    async def process(self, header: ua.Header, body: Buffer) -> bool:
        if header.MessageType != ua.MessageType.SecureOpen or self._connection.is_open():
            return await super().process(header, body)
        # UaProcessor.process's handling of an OpenSecureChannel request, with the checks between
        # its decryption and the channel's opening.
        try:
            algorithm = struct_from_binary(
                ua.AsymmetricAlgorithmHeader, body.copy(header.body_size)
            )
            self._guard.check_policy(algorithm.SecurityPolicyURI)
            message = self._connection.receive_from_header_and_body(header, body)
        except _Refused as refusal:
            return self._refuse_transport(refusal)
        except Exception as exc:
            # Not decrypted, or its signature, certificate or sequence is wrong.
            failed = _Refused(ua.StatusCodes.BadSecurityChecksFailed, type(exc).__name__)
            return self._refuse_transport(failed)
        if not isinstance(message, ua.Message):
            return True  # the first chunks of a request in several
        sequence = message.SequenceHeader()
        request = struct_from_binary(ua.OpenSecureChannelRequest, message.body())
        try:
            await self._guard.check_channel(
                algorithm.SecurityPolicyURI,
                request.Parameters.SecurityMode,
                algorithm.SenderCertificate,
            )
        except _Refused as refusal:
            self._log(refusal, "channel")
            self._send_fault(request.RequestHeader.RequestHandle, sequence, refusal)
            return False
        self.open_secure_channel(message.SecurityHeader(), sequence, message.body())
        return True

    async def _process_message(
        self, typeid: ua.NodeId, requesthdr: ua.RequestHeader, seqhdr: Any, body: Buffer
    ) -> Any:
        try:
            if typeid == _CREATE_SESSION:
                params = struct_from_binary(ua.CreateSessionParameters, body.copy())
                await self._guard.check_session(self._connection.security_policy, params)
            elif typeid == _ACTIVATE_SESSION:
                try:
                    answer = await super()._process_message(typeid, requesthdr, seqhdr, body)
                except (ServiceError, ua.UaStatusCodeError) as exc:
                    # A user name or password refused: asyncua would log it as an error.
                    raise _Refused(exc.code, "the user's identity") from None
                self._guard.opened(self._host)
                return answer
        except _Refused as refusal:
            self._log(refusal, "session")
            self._send_fault(requesthdr.RequestHandle, seqhdr, refusal, opening=False)
            return True
        return await super()._process_message(typeid, requesthdr, seqhdr, body)

    def _send_fault(
        self, handle: int, sequence: Any, refusal: _Refused, *, opening: bool = True
    ) -> None:
        fault = ua.ServiceFault()
        fault.ResponseHeader.ServiceResult = ua.StatusCode(ua.UInt32(refusal.code))
        kind = ua.MessageType.SecureOpen if opening else ua.MessageType.SecureMessage
        self.send_response(handle, sequence, fault, kind)

    def _refuse_transport(self, refusal: _Refused) -> bool:
        """Answer with an Error message; False: the connection is closed after it."""
        self._log(refusal, "channel")
        error = ua.ErrorMessage(
            ua.StatusCode(ua.UInt32(refusal.code)), ua.String(_status_name(refusal.code))
        )
        # asyncua annotates the message type as its MessageType class but takes its bytes.
        self._transport.write(uatcp_to_binary(ua.MessageType.Error, error))  # type: ignore[arg-type]
        return False

    def _log(self, refusal: _Refused, what: str) -> None:
        count = self._guard.refused(self._host, what, refusal)
        if count is None:
            return
        log.info(
            "%s: refused a %s from %s: %s (%s)%s",
            self._guard.url,
            what,
            self._peer,
            _status_name(refusal.code),
            refusal.why,
            "" if count == 1 else f"; {count} such refusals of this host since its last session",
        )


class _CheckedProtocol(OPCUAProtocol):
    """asyncua's connection, processed by a `_CheckedChannel`."""

    def __init__(self, guard: _Guard, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.processor is not None:  # None: refused at max_connections
            self.processor = _CheckedChannel(self.iserver, self.transport, self.limits, self._guard)
            self.processor.set_policies(self.policies)


class _CheckedListener(BinaryServer):
    def __init__(
        self,
        iserver: InternalServer,
        host: str | None,
        port: int | None,
        limits: TransportLimits,
        guard: _Guard,
    ) -> None:
        super().__init__(iserver, host, port, limits)  # type: ignore[arg-type]
        self._guard = guard

    def _make_protocol(self) -> OPCUAProtocol:
        return _CheckedProtocol(
            self._guard,
            iserver=self.iserver,
            policies=self._policies,
            clients=self.clients,
            closing_tasks=self.closing_tasks,
            limits=self.limits,
        )


class GuardedServer(Server):
    """asyncua's `Server` whose every connection is checked (see the module's docstring).

    `set_trust_store` replaces `set_certificate_validator`: client certificates are checked
    against that store (trusted CAs and their revocation lists) when a channel opens and again,
    with the application URI, when a session is created.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._trust: TrustStore | None = None

    def set_trust_store(self, store: TrustStore) -> None:
        """The trusted CAs and revocation lists client certificates are checked against."""
        self._trust = store

    async def start(self) -> None:
        """Listen; asyncua's `Server.start` with a listener whose connections are checked."""
        # asyncua 2.1's Server.start, but for the listener (pyproject pins asyncua below 2.2).
        if self.iserver.certificate is not None:
            uacrypto.check_certificate(
                self.iserver.certificate, self._application_uri, socket.gethostname()
            )
        await self._setup_server_nodes()
        offered = {(factory.cls.URI, factory.mode) for factory in self._policies}
        guard = _Guard(self.endpoint.geturl(), offered, self._trust)
        await self.iserver.start()
        try:
            host, port = self._get_bind_socket_info()
            self.bserver = _CheckedListener(self.iserver, host, port, self.limits, guard)
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except Exception:
            await self.iserver.stop()
            raise
