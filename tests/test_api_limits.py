"""The API's limits against a real server, with requests written byte by byte: every bad input
is a 4xx with a reason; the token and the body's size are checked before the body is read; slow
clients are dropped; connections are capped; and the API answers while the daemon's event loop
is busy, because it is served from a process of its own.

The daemon controls the simulated station over Modbus on loopback on a virtual clock (the
fixture of tests/test_api.py); the API's deadlines are real time, so a test that waits for one
waits for the server to act (a socket read), never for a time of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from dataclasses import dataclass
from typing import Any

import pytest

from base.config import Station
from tests.conftest import StartStation
from tests.test_api import AUTH, TOKEN, running_site

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]

# Longest a test waits for the server to answer or close (it hangs otherwise).
HANG_S = 30.0


@dataclass
class Answer:
    """One raw HTTP response."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    @property
    def reason(self) -> str:
        """The reason a refusal gives ("detail", or a validation error's "message")."""
        content = self.json()
        return str(content.get("message") or content["detail"])


async def _read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(status, headers, body)


class Raw:
    """One connection to the API, for requests written as bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str) -> Raw:
        """Connect to the API at `url` (http://host:port)."""
        host, _, port = url.removeprefix("http://").rpartition(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    async def send(self, data: bytes) -> None:
        """Write `data` now."""
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> Answer:
        """The next response (the test fails if none comes within `HANG_S`)."""
        return await asyncio.wait_for(_read_answer(self.reader), HANG_S)

    async def closed(self) -> bool:
        """Wait for the server to close the connection (True), reading what is left."""
        rest = await asyncio.wait_for(self.reader.read(), HANG_S)
        return rest == b"" or self.reader.at_eof()

    async def close(self) -> None:
        """Close our end."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def head(method: str, path: str, *lines: str) -> bytes:
    """A request's head: its line, Host, the `lines` given, and the blank line."""
    return ("\r\n".join([f"{method} {path} HTTP/1.1", "Host: api", *lines]) + "\r\n\r\n").encode()


async def request(url: str, method: str, path: str, body: bytes = b"", *lines: str) -> Answer:
    """One whole request on a connection of its own."""
    raw = await Raw.open(url)
    try:
        await raw.send(head(method, path, f"Content-Length: {len(body)}", *lines) + body)
        return await raw.answer()
    finally:
        await raw.close()


TOKEN_LINE = f"Authorization: Bearer {TOKEN}"
JSON_LINE = "Content-Type: application/json"


async def test_every_bad_input_gets_a_4xx_with_a_reason(
    station: Station, running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NaN and Infinity anywhere, text that is not JSON, the wrong type, too much: a 4xx saying
    what is wrong, and nothing changes."""
    async with running_site(running_station, station, monkeypatch) as site:
        url = site.server.url
        session = site.daemon.control.sessions["P01"]
        before = (session.need_kwh, session.departure, session.vehicle_id)
        override = "/api/limit/override"
        tell = "/api/piles/P01/session"
        cases: list[tuple[str, bytes, tuple[str, ...], int, str]] = [
            (override, b'{"limit_kw": NaN, "minutes": 5}', (JSON_LINE,), 422, "NaN"),
            (override, b'{"limit_kw": 3000, "minutes": NaN}', (JSON_LINE,), 422, "NaN"),
            (override, b'{"limit_kw": Infinity, "minutes": 5}', (JSON_LINE,), 422, "Infinity"),
            (override, b'{"limit_kw": -Infinity, "minutes": 5}', (JSON_LINE,), 422, "Infinity"),
            (tell, b'{"energy_kwh": NaN}', (JSON_LINE,), 422, "NaN"),
            (tell, b'{"vehicle_id": "x", "extra": [1, {"deep": NaN}]}', (JSON_LINE,), 422, "NaN"),
            (override, b'{"limit_kw": "NaN", "minutes": 5}', (JSON_LINE,), 422, "finite"),
            (tell, b'{"energy_kwh": "Infinity"}', (JSON_LINE,), 422, "finite"),
            (override, b'{"limit_kw": 1e999, "minutes": 5}', (JSON_LINE,), 422, "finite"),
            (tell, b'{"vehicle_id": "a\\nforged log line"}', (JSON_LINE,), 422, "vehicle_id"),
            (tell, b'{"energy_kwh": 10}', ("Content-Type: text/plain",), 415, "JSON"),
            (tell, b'{"energy_kwh": 10}', (), 415, "no Content-Type"),
            (
                tell,
                b"energy_kwh=10",
                ("Content-Type: application/x-www-form-urlencoded",),
                415,
                "JSON",
            ),
            (tell, b"{not json", (JSON_LINE,), 422, "JSON"),
            (tell, b"\xff\xfe\x00garbage", (JSON_LINE,), 422, "JSON"),
            (tell, b"[" * 30_000 + b"]" * 30_000, (JSON_LINE,), 422, "too deep"),
            (tell, b'{"departure": "9999-12-31T23:59:59-12:00"}', (JSON_LINE,), 422, "30 days"),
            (tell, b'{"departure": "0001-01-01T00:00:00+14:00"}', (JSON_LINE,), 422, "future"),
            ("/api/status", b'{"a": 1}', (JSON_LINE,), 401, "bearer token"),
        ]
        for path, body, lines, code, text in cases:
            answer = await request(url, "POST", path, body, TOKEN_LINE, *lines)
            if path == "/api/status":  # a body without the token, even on a read
                answer = await request(url, "GET", path, body, *lines)
            assert answer.status == code, (body[:80], answer)
            assert text in answer.reason, (body[:80], answer.reason)
        history = await request(url, "GET", "/api/history?hours=nan")
        assert history.status == 422 and "hours" in history.reason
        assert (session.need_kwh, session.departure, session.vehicle_id) == before
        assert site.daemon.sensors.override is None


async def test_the_token_and_the_size_are_checked_before_the_body_is_read(
    station: Station, running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 10 MB body is refused on its head alone: without the token 401, with a wrong one 403,
    with the token 413; a chunked body is cut at the limit. None of them is sent a byte of body
    before the answer (the test would hang otherwise)."""
    async with running_site(running_station, station, monkeypatch) as site:
        url = site.server.url
        big = "Content-Length: 10485760"
        cases = [
            ((big, JSON_LINE), 401, "bearer token"),
            ((big, JSON_LINE, "Authorization: Bearer wrong"), 403, "wrong token"),
            ((big, JSON_LINE, TOKEN_LINE), 413, "10,485,760 bytes"),
            ((big, TOKEN_LINE), 415, "JSON"),
        ]
        for lines, code, text in cases:
            raw = await Raw.open(url)
            try:
                await raw.send(head("POST", "/api/limit/override", *lines))
                answer = await raw.answer()
                assert answer.status == code and text in answer.reason, answer
                assert answer.headers["connection"] == "close"
                assert await raw.closed()
            finally:
                await raw.close()
        raw = await Raw.open(url)
        try:
            await raw.send(
                head(
                    "POST",
                    "/api/piles/P01/session",
                    "Transfer-Encoding: chunked",
                    JSON_LINE,
                    TOKEN_LINE,
                )
            )
            # 66,000 bytes, past the limit with the last chunk (the server reads all of them:
            # a close with bytes unread would reset the connection before the answer is read).
            for size in (16_000, 16_000, 16_000, 16_000, 2_000):
                await raw.send(b"%x\r\n%s\r\n" % (size, b"[" * size))
            answer = await raw.answer()
            assert answer.status == 413 and "at most 65,536 bytes" in answer.reason
            assert await raw.closed()
        finally:
            await raw.close()
        # A client that sends its whole (small) body before reading still reads the refusal: the
        # server discards the rest before it closes, instead of resetting the connection.
        body = b'{"limit_kw": 3000, "minutes": 5, "reason": "' + b"r" * 50_000 + b'"}'
        for _ in range(5):
            answer = await request(url, "POST", "/api/limit/override", body, JSON_LINE)
            assert answer.status == 401, answer
        # The limit is the [api] setting's.
        fits = b'{"energy_kwh": 12, "vehicle_id": "' + b"v" * 40 + b'"}'
        answer = await request(url, "POST", "/api/piles/P01/session", fits, TOKEN_LINE, JSON_LINE)
        assert answer.status == 200, answer
        assert site.daemon.control.sessions["P01"].need_kwh == 12


async def test_slow_clients_are_dropped(
    station: Station, running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half a request's head, or half a body, is answered 408 and the connection closed; a
    keep-alive connection that starts a second request and stalls is dropped the same way."""
    async with running_site(
        running_station, station, monkeypatch, header_timeout_s=0.5, body_timeout_s=0.5
    ) as site:
        url = site.server.url
        raw = await Raw.open(url)
        try:
            await raw.send(b"GET /api/status HTTP/1.1\r\nHost: api\r\nX-Slow: ")
            answer = await raw.answer()
            assert answer.status == 408 and "headers" in answer.reason
            assert await raw.closed()
        finally:
            await raw.close()
        raw = await Raw.open(url)
        try:
            await raw.send(
                head("POST", "/api/limit/override", "Content-Length: 100", JSON_LINE, TOKEN_LINE)
                + b'{"limit_kw": '
            )
            answer = await raw.answer()
            assert answer.status == 408 and "body" in answer.reason
            assert await raw.closed()
        finally:
            await raw.close()
        raw = await Raw.open(url)
        try:
            await raw.send(head("GET", "/api/status"))
            assert (await raw.answer()).status == 200
            await raw.send(b"GET /api/plan HTTP/1.1\r\n")
            answer = await raw.answer()
            assert answer.status == 408
            assert await raw.closed()
        finally:
            await raw.close()
        assert site.daemon.sensors.override is None


async def test_connections_are_capped(
    station: Station, running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past `max_connections` a connection is answered 503 and closed at once; when one of
    those held closes, a new one is served."""
    async with running_site(running_station, station, monkeypatch, max_connections=4) as site:
        url = site.server.url
        held = [await Raw.open(url) for _ in range(4)]
        try:
            for raw in held:  # each connection is in, and served
                await raw.send(head("GET", "/api/sessions"))
                assert (await raw.answer()).status == 200
            extra = await Raw.open(url)
            try:
                answer = await extra.answer()
                assert answer.status == 503 and "at most 4 connections" in answer.reason
                assert await extra.closed()
            finally:
                await extra.close()
            await held.pop().close()
            # The server notices the close when it next reads: a fresh connection may still
            # be one too many until then, so ask until one is served.
            for _ in range(100):
                answer = await request(url, "GET", "/api/status")
                if answer.status == 200:
                    break
                assert answer.status == 503
            assert answer.status == 200
        finally:
            for raw in held:
                await raw.close()


async def test_the_api_answers_while_the_control_loop_is_busy(
    station: Station, running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blocking request made from the daemon's own event loop is answered: the API does not
    need that loop (in the daemon's process, the request would wait for ever)."""
    async with running_site(running_station, station, monkeypatch) as site:
        await site.server.synced()
        request_ = urllib.request.Request(site.server.url + "/api/status", headers=AUTH)
        with urllib.request.urlopen(request_, timeout=HANG_S) as answer:  # noqa: ASYNC210
            status = json.load(answer)
        assert status["t"] == site.clock.now()
        assert status["station"] == site.daemon.station.name
