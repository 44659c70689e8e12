"""A real time-series server for the telemetry tests: Debian's VictoriaMetrics (installed by
`make system-deps`), on a free port.

VictoriaMetrics accepts InfluxDB's v2 write API (`/api/v2/write`) and keeps each field as its own
series named `<measurement>_<field>` with the tags as labels; it ignores org and bucket, stores
a boolean as 0/1 and a string field as 0 (the text is lost), and keeps a sample written twice
twice (no deduplication by default), so counting samples shows duplicates. `export` reads the raw samples back (`/api/v1/export`), after
`/internal/force_flush`; new series become searchable a fraction of a second later.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BINARY = "victoria-metrics"


@dataclass
class Series:
    """One exported series: its labels, values and timestamps (ms)."""

    labels: dict[str, str]
    values: list[float]
    timestamps: list[int]

    @property
    def name(self) -> str:
        """The metric name (`<measurement>_<field>`)."""
        return self.labels["__name__"]


class VictoriaMetrics:
    """One VictoriaMetrics process on a port and storage directory; the owner stops it."""

    def __init__(self, binary: str, storage: Path, port: int, log_path: Path) -> None:
        self.binary, self.storage, self.port, self.log_path = binary, storage, port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: object | None = None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until it answers /health."""
        assert self._proc is None
        log = self.log_path.open("ab")
        self._log = log
        self._proc = subprocess.Popen(
            [
                self.binary,
                f"-storageDataPath={self.storage}",
                f"-httpListenAddr=127.0.0.1:{self.port}",
                "-retentionPeriod=100y",
                "-search.latencyOffset=0s",
                "-loggerLevel=WARN",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        poll_until(self._healthy, timeout_s, f"VictoriaMetrics on port {self.port} to start")

    def _healthy(self) -> bool:
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(
                f"VictoriaMetrics exited with {self._proc.returncode}; see {self.log_path}"
            )
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """Terminate the server and wait for it (killed if it lingers)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log, self._log = self._log, None
        if log is not None:
            log.close()  # type: ignore[attr-defined]

    @property
    def running(self) -> bool:
        """True while the process runs."""
        return self._proc is not None and self._proc.poll() is None

    def export(self, match: str) -> list[Series]:
        """Every raw sample of the series `match` selects (a PromQL series selector)."""
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=10):
            pass
        # The export ends at the server's now by default: plans reach a day ahead.
        end = int(time.time()) + 3 * 86400
        query = urllib.parse.urlencode({"match[]": match, "start": 0, "end": end})
        with urllib.request.urlopen(f"{self.url}/api/v1/export?{query}", timeout=30) as answer:
            lines = answer.read().decode().splitlines()
        series = []
        for line in lines:
            if line.strip():
                item = json.loads(line)
                series.append(Series(item["metric"], item["values"], item["timestamps"]))
        return series


def poll_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Wait until `condition()` holds, checking every 50 ms; `TimeoutError` naming `what`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)
