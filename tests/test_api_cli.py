"""`flexcharge run --api HOST:PORT` as an operator runs it: a real daemon process serving its API
against `sim-hardware`, stopped with SIGTERM; the token it was given never reaches its log."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    start_daemon_with_api,
    start_process,
    station_files_on_free_ports,
)

TOKEN = "process-test-token-91c2"


def _call(url: str, *, data: dict[str, Any] | None = None, token: str | None = None) -> Any:
    """The JSON answer and status of a request (an HTTP error's too)."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.loopback
def test_run_serves_the_api(
    tmp_path: Path, processes: list[subprocess.Popen[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status answers while the daemon runs; writes need the token; SIGTERM stops it all."""
    monkeypatch.setenv("FLEXCHARGE_API_TOKEN", TOKEN)
    simulator, daemon, base = start_daemon_with_api(tmp_path, processes, "FLEXCHARGE_API_TOKEN")
    deadline = time.monotonic() + 20
    while True:
        code, status = _call(base + "/api/status")
        assert code == 200
        if status["cycle_time"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status["site"]["limit_kw"] == 4275
    assert len(status["piles"]) == 12
    override = {"limit_kw": 4000, "minutes": 5}
    assert _call(base + "/api/limit/override", data=override)[0] == 401
    code, answer = _call(base + "/api/limit/override", data=override, token=TOKEN)
    assert code == 200, answer

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert daemon.stderr is not None
    log = daemon.stderr.read()
    assert "operator override: site limit at most 4,000 kW" in log
    assert TOKEN not in log and "Traceback" not in log
    with pytest.raises(urllib.error.URLError):
        _call(base + "/api/status")
    simulator.send_signal(signal.SIGTERM)
    assert simulator.wait(timeout=30) == 0


def test_run_refuses_an_api_address_in_use(
    tmp_path: Path, processes: list[subprocess.Popen[str]]
) -> None:
    """A port already taken stops `run` before it controls anything, saying so."""
    path = station_files_on_free_ports(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = start_process(
            [
                "run",
                "--station",
                str(path),
                "--state",
                str(tmp_path / "s.sqlite"),
                "--pidfile",
                str(tmp_path / "f.pid"),
                "--api",
                f"127.0.0.1:{port}",
            ],
            processes,
            cwd=tmp_path,
        )
        assert daemon.wait(timeout=60) == 1
    assert daemon.stdout is not None
    assert f"127.0.0.1:{port} is already in use (for the API)" in daemon.stdout.read()
