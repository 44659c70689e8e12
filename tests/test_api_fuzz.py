"""Fuzzing the API of a real daemon: `flexcharge run --api` against `sim-hardware`, as an operator
runs them, is sent requests hypothesis makes up (methods, paths, queries, tokens, content types,
and bodies from well-formed to garbage: NaN and Infinity in any field, numbers out of range,
times from year 1 to 9999, nested values, bytes that are no text). Not one may get a 5xx, every
refusal says why, and the daemon logs no traceback.

The search is derandomized, so `make test` sends the same requests every run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import start_daemon_with_api

TOKEN = "fuzz-token-5b0e"
EXAMPLES = 400


@dataclass(frozen=True)
class Call:
    """One request to send."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes | None

    def __repr__(self) -> str:
        return (
            f"{self.method} {self.path} params={self.params} headers={self.headers} "
            f"body={self.body!r}"
        )


def _iso(moment: datetime) -> str:
    return moment.isoformat()


ZONES = st.sampled_from([None, UTC, timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))])
TIMES = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=ZONES
).map(_iso)
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, 1, 5, 60, 3000, 4275, 10_080, 1e-300, 1e308]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    st.text(max_size=30),
    TIMES,
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "P01", ""]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
OVERRIDE = st.fixed_dictionaries(
    {"limit_kw": NUMBERS | SCALARS},
    optional={
        "minutes": NUMBERS | SCALARS,
        "until": TIMES | SCALARS,
        "reason": st.text(max_size=40),
    },
)
SESSION = st.fixed_dictionaries(
    {},
    optional={
        "vehicle_id": st.text(max_size=70) | SCALARS,
        "departure": TIMES | SCALARS,
        "energy_kwh": NUMBERS | SCALARS,
        "target_soc_pct": NUMBERS | SCALARS,
    },
)
FIELDS = st.sampled_from(
    [
        "limit_kw",
        "minutes",
        "until",
        "reason",
        "energy_kwh",
        "departure",
        "target_soc_pct",
        "vehicle_id",
    ]
)
BODIES = st.one_of(
    st.none(),
    st.just(b""),
    OVERRIDE.map(lambda v: json.dumps(v).encode()),
    SESSION.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(FIELDS | st.text(max_size=8), VALUES, max_size=4).map(
        lambda v: json.dumps(v).encode()
    ),
    VALUES.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=64),
)
PILES = st.one_of(
    st.sampled_from(["P01", "P02", "P12", "P99", "..", "x" * 70]), st.text(min_size=1, max_size=12)
)
PATHS = st.one_of(
    st.sampled_from(
        [
            "/api/status",
            "/api/plan",
            "/api/sessions",
            "/api/history",
            "/api/limit/override",
            "/metrics",
            "/",
            "/page/app.js",
            "/openapi.json",
        ]
    ),
    PILES.map(lambda p: f"/api/piles/{urllib.parse.quote(p, safe='')}/session"),
    st.text(max_size=20).map(lambda t: "/" + urllib.parse.quote(t)),
)
PARAMS = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"hours": st.one_of(NUMBERS, st.text(max_size=8)).map(str)}),
    st.dictionaries(st.text(min_size=1, max_size=6), st.text(max_size=6), max_size=2),
)
AUTHORIZATION = st.sampled_from(
    [None, f"Bearer {TOKEN}", f"bearer {TOKEN}", "Bearer wrong", "Basic eDp5", "Bearer", TOKEN]
)
CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/merge-patch+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ]
)


@st.composite
def writes(draw: st.DrawFn) -> Call:
    """A write as a client means it: the right method and path, mostly the token, JSON."""
    token = draw(st.sampled_from([f"Bearer {TOKEN}"] * 4 + ["Bearer wrong"]))
    headers = {"Authorization": token, "Content-Type": "application/json"}
    kind = draw(st.sampled_from(["override", "withdraw", "session"]))
    if kind == "withdraw":
        return Call("DELETE", "/api/limit/override", {}, headers, None)
    if kind == "override":
        body = json.dumps(draw(OVERRIDE)).encode()
        return Call("POST", "/api/limit/override", {}, headers, body)
    pile = draw(st.sampled_from(["P01", "P02", "P03", "P12"]) | PILES)
    path = f"/api/piles/{urllib.parse.quote(pile, safe='')}/session"
    return Call("POST", path, {}, headers, json.dumps(draw(SESSION)).encode())


@st.composite
def reads(draw: st.DrawFn) -> Call:
    """A read, with any query."""
    path = draw(
        st.sampled_from(["/api/status", "/api/plan", "/api/sessions", "/api/history", "/metrics"])
    )
    return Call("GET", path, draw(PARAMS), {}, None)


@st.composite
def anything(draw: st.DrawFn) -> Call:
    """Any method, path, headers and body, from plausible to garbage."""
    headers = {}
    authorization = draw(AUTHORIZATION)
    if authorization is not None:
        headers["Authorization"] = authorization
    content_type = draw(CONTENT_TYPES)
    if content_type is not None:
        headers["Content-Type"] = content_type
    return Call(
        method=draw(st.sampled_from(["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"])),
        path=draw(PATHS),
        params=draw(PARAMS),
        headers=headers,
        body=draw(BODIES),
    )


@pytest.fixture
def daemon_api(
    tmp_path: Path, processes: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`flexcharge run --api` controlling `sim-hardware`, both processes; the API's base URL and
    the daemon's process (stopped with SIGTERM at the end, its log left to read)."""
    monkeypatch.setenv("FLEXCHARGE_API_TOKEN", TOKEN)
    _, daemon, base = start_daemon_with_api(tmp_path, processes, "FLEXCHARGE_API_TOKEN")
    with httpx.Client(base_url=base, timeout=30) as client:
        deadline = time.monotonic() + 30
        while client.get("/api/status").json()["cycle_time"] is None:
            assert time.monotonic() < deadline, "the daemon ran no cycle"
            time.sleep(0.2)
    yield base, daemon
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
    daemon.wait(timeout=30)


def _reason(response: httpx.Response) -> str:
    content: Any = response.json()
    assert isinstance(content, dict), content
    reason = content.get("message") or content.get("detail")
    return reason if isinstance(reason, str) else json.dumps(reason)


@pytest.mark.loopback
@pytest.mark.timeout(300)
def test_no_request_gets_a_5xx(daemon_api: tuple[str, subprocess.Popen[str]]) -> None:
    """Whatever it is sent, the API answers below 500, and a refusal gives its reason."""
    base, daemon = daemon_api
    seen: dict[int, int] = {}

    with httpx.Client(base_url=base, timeout=30) as client:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(call=st.one_of(writes(), writes(), reads(), anything()))
        def one(call: Call) -> None:
            response = client.request(
                call.method, call.path, params=call.params, headers=call.headers, content=call.body
            )
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (call, response.status_code, response.text)
            if response.status_code >= 400 and call.method != "HEAD":
                assert _reason(response).strip(), (call, response.text)

        one()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert daemon.stderr is not None
    log = daemon.stderr.read()
    assert "Traceback" not in log, log[-3000:]
    # The search reached past the gate: refusals of every kind, and writes that were applied.
    assert {200, 401, 403, 404, 415, 422} <= set(seen), seen
