"""What stands between a stranger's bytes and the API: limits enforced before anything is parsed.

Two layers, both in the API's process:

- `guarded_protocol`: uvicorn's h11 protocol with a cap on concurrent connections (the next one
  is answered 503 and closed at once) and a deadline for a request's headers, from the connection
  opening or the previous answer (a client that sends half a request is answered 408 and
  dropped; uvicorn itself waits for ever).
- `Gate`: ASGI middleware in front of the application. A write (any method but GET and HEAD) or
  any request that carries a body must show the bearer token before a byte of its body is read;
  a body must be JSON (415 otherwise), no larger than the limit (413: from its Content-Length
  before reading, or as soon as a chunked body passes it), complete within the body deadline
  (408), and standard JSON (422: no NaN or Infinity, which Python's parser accepts, no nesting
  too deep to parse). The application then reads the body the gate has already read.

Every refusal is JSON, `{"detail": "<reason>"}` (422 adds the validation-error shape the API
uses, `{"message": ..., "detail": [...]}`); one that leaves a body unread closes the connection.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from base.stationsettings import ApiSettings
from controller.apimodels import Refusal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

READS = frozenset({"GET", "HEAD"})


def bearer_refusal(
    authorization: str | None, token: str | None, token_env: str, what: str
) -> Refusal | None:
    """Why a request with this Authorization header may not do `what` (None: it may).

    403 while the daemon has no token (nothing can be allowed), 401 without a bearer token,
    403 with a wrong one; the comparison takes the same time whatever the token sent.
    """
    if token is None:
        return Refusal(
            403,
            f"{what} are disabled: the daemon was started without a token in the "
            f"environment variable {token_env}",
        )
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return Refusal(
            401,
            f"{what} need a bearer token (header 'Authorization: Bearer <token>')",
            headers=(("WWW-Authenticate", "Bearer"),),
        )
    if not secrets.compare_digest(credentials.encode(), token.encode()):
        return Refusal(403, "wrong token")
    return None


def refusal_bytes(refusal: Refusal, *, close: bool) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The headers and JSON body of a refusal."""
    body = json.dumps(refusal.content(), ensure_ascii=True).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in refusal.headers]
    if close:
        headers.append((b"connection", b"close"))
    return headers, body


async def answer(send: Send, refusal: Refusal, *, close: bool) -> None:
    """Send `refusal` as the response (`close`: and end the connection after it)."""
    headers, body = refusal_bytes(refusal, close=close)
    await send({"type": "http.response.start", "status": refusal.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _raw_response(refusal: Refusal) -> bytes:
    """A whole HTTP/1.1 response, for the protocol to write outside any request."""
    headers, body = refusal_bytes(refusal, close=True)
    phrase = {408: b"Request Timeout", 503: b"Service Unavailable"}.get(refusal.status, b"")
    lines = [b"HTTP/1.1 %d %s" % (refusal.status, phrase)]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows (RFC 8259): send a number or null")


def json_problem(body: bytes) -> str | None:
    """Why `body` is not standard JSON (None: it is)."""
    try:
        json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        return "nested too deep to parse"
    except json.JSONDecodeError as exc:
        return f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    except ValueError as exc:  # a NaN or Infinity, or bytes that are not text
        return str(exc)
    return None


class Gate:
    """ASGI middleware: the token before the body, then the body's type, size, time and JSON."""

    def __init__(self, app: Asgi, settings: ApiSettings, token: str | None) -> None:
        self.app = app
        self.settings = settings
        self.token = token
        self.limit = settings.max_body_kb * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse the request, or pass it on with its body already read."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        # h11 has refused a malformed Content-Length before the request got here.
        length = int(headers["content-length"]) if "content-length" in headers else None
        has_body = chunked or bool(length)
        write = scope["method"] not in READS
        if write or has_body:
            what = "writes" if write else "requests with a body"
            refusal = bearer_refusal(
                headers.get("authorization"), self.token, self.settings.token_env, what
            )
            if refusal is not None:
                await answer(send, refusal, close=has_body)
                return
        if not has_body:
            await self.app(scope, receive, send)
            return
        content_type = headers.get("content-type", "")
        media = content_type.partition(";")[0].strip().lower()
        if media != "application/json" and not (
            media.startswith("application/") and media.endswith("+json")
        ):
            shown = f"Content-Type {content_type!r}" if content_type else "no Content-Type"
            refusal = Refusal(
                415, f"the body must be JSON (Content-Type: application/json), not {shown}"
            )
            await answer(send, refusal, close=True)
            return
        if length is not None and length > self.limit:
            await answer(send, self._too_large(f"{length:,} bytes"), close=True)
            return
        body = await self._read(receive, send)
        if body is None:
            return
        problem = json_problem(body) if body else None
        if problem is not None:
            await answer(send, Refusal.invalid("body", f"not valid JSON: {problem}"), close=False)
            return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self, size: str) -> Refusal:
        return Refusal(413, f"the body is {size}; the API takes at most {self.limit:,} bytes")

    async def _read(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body; None if it was refused (answered) or the client went away."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.limit:
                        await answer(send, self._too_large("larger"), close=True)
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            refusal = Refusal(
                408, f"the body did not arrive within {self.settings.body_timeout_s:g} s"
            )
            await answer(send, refusal, close=True)
            return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives the body read already, then listens to the connection again."""
    given = False

    async def replay() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


# A connection closed with bytes of the client's unread gets a reset, which can destroy the answer
# before the client reads it: after answering, the server stops writing and discards what the
# client still sends, up to this much for this long, before it closes (nginx's lingering close).
LINGER_S = 2.0
LINGER_BYTES = 64 * 1024


class _Lingering:
    """A connection's transport whose `close` is a lingering close (the rest is the transport's)."""

    def __init__(self, transport: asyncio.Transport, protocol: _GuardedH11) -> None:
        self._transport = transport
        self._protocol = protocol

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        """Stop writing, and close once the client has stopped sending (or after a while)."""
        self._protocol.linger()

    def is_closing(self) -> bool:
        """True from the lingering close on."""
        return self._protocol.lingering or self._transport.is_closing()


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a connection cap, a deadline for each request's headers and
    a lingering close."""

    max_connections: ClassVar[int]
    header_timeout_s: ClassVar[float]
    _waiting: asyncio.TimerHandle | None = None
    lingering = False
    _discarded = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """As uvicorn does; then refuse it past the cap, or start its headers' deadline."""
        self._real = transport
        super().connection_made(_Lingering(transport, self))  # type: ignore[arg-type]
        if len(self.connections) > self.max_connections:
            refusal = Refusal(
                503, f"the API serves at most {self.max_connections} connections at once: try again"
            )
            self.transport.write(_raw_response(refusal))
            self.transport.close()
            return
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop waiting for headers, then as uvicorn does."""
        self._stop_waiting()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """As uvicorn does; while lingering, discard (and close past `LINGER_BYTES`)."""
        if self.lingering:
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self._real.close()
            return
        super().data_received(data)

    def eof_received(self) -> None:
        """The client has stopped sending: a lingering close is done."""
        if self.lingering:
            self._real.close()

    def linger(self) -> None:
        """Close after the answer: stop writing, discard what still comes, then close."""
        real = self._real
        if self.lingering or real.is_closing():
            return
        self.lingering = True
        self._stop_waiting()
        if not real.can_write_eof():
            real.close()
            return
        try:
            real.write_eof()
        except (OSError, RuntimeError):
            real.close()
            return
        real.resume_reading()
        self._waiting = self.loop.call_later(LINGER_S, real.close)

    def handle_events(self) -> None:
        """As uvicorn does; once a request's headers are in, stop their deadline."""
        super().handle_events()
        if self._waiting is not None and self.conn.their_state is not h11.IDLE:
            self._stop_waiting()

    def on_response_complete(self) -> None:
        """As uvicorn does; then the next request's headers have their deadline."""
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_headers()

    def _await_headers(self) -> None:
        self._stop_waiting()
        self._waiting = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _stop_waiting(self) -> None:
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None

    def _headers_late(self) -> None:
        self._waiting = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        refusal = Refusal(
            408, f"the request's headers did not arrive within {self.header_timeout_s:g} s"
        )
        self.transport.write(_raw_response(refusal))
        self.transport.close()


def guarded_protocol(settings: ApiSettings) -> type[H11Protocol]:
    """The protocol class for uvicorn's `http` setting, with the limits of `settings`."""
    return type(
        "GuardedH11Protocol",
        (_GuardedH11,),
        {
            "max_connections": settings.max_connections,
            "header_timeout_s": settings.header_timeout_s,
        },
    )
