"""Where telemetry points go: the `Sink` a writer writes its batches to, and `InfluxSink`.

A sink takes a batch whole or (raising `SinkError`) not at all; `SinkError.retry` tells a sink
that is down (the writer buffers and retries) from one that refused the points (they are dropped).
The embedded store, `controller.telemetry.local.LocalStore`, is a sink too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from controller.telemetry.points import Point


class SinkError(Exception):
    """A write failed; `retry` is False when sending the same points again cannot succeed."""

    def __init__(self, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class Sink(Protocol):
    """Where the writer's batches go."""

    description: str

    def write(self, points: Sequence[Point]) -> None:
        """Write a batch, all of it or (raising `SinkError`) none of it, as far as it knows."""
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...


class InfluxSink:
    """An InfluxDB 2.x write endpoint (`/api/v2/write`), through `influxdb-client`."""

    def __init__(
        self, url: str, *, org: str, bucket: str, token: str | None, timeout_s: float
    ) -> None:
        from influxdb_client import InfluxDBClient
        from influxdb_client.client.write_api import SYNCHRONOUS

        self.url, self.org, self.bucket = url, org, bucket
        self.description = f"InfluxDB at {url} (org {org}, bucket {bucket})"
        # The writer retries and buffers itself: the client must fail fast, not retry inside.
        self._client = InfluxDBClient(
            url=url, token=token or "", org=org, timeout=int(timeout_s * 1000), retries=False
        )
        self._api = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, points: Sequence[Point]) -> None:
        """Write one batch in line protocol; `SinkError` names what the server said."""
        from influxdb_client.rest import ApiException

        try:
            # Line protocol at the client's default precision, nanoseconds (as `Point.line`).
            self._api.write(
                bucket=self.bucket,
                org=self.org,
                record=[p.line() for p in points],
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            reason = f"HTTP {status} {exc.reason or ''}".strip()
            body = (exc.body or "")[:200] if isinstance(exc.body, str) else ""
            if status in (401, 403):
                raise SinkError(f"{reason}: check [telemetry] token / token_env") from None
            if status == 404:
                raise SinkError(f"{reason}: check [telemetry] org and bucket ({body})") from None
            if status in (400, 413, 422):
                raise SinkError(
                    f"{reason}: the server refused the points ({body})", retry=False
                ) from None
            raise SinkError(f"{reason} {body}".strip()) from None
        except Exception as exc:
            # urllib3 connection errors and timeouts: the database is down or unreachable.
            raise SinkError(_short(exc)) from None

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()


def _short(exc: BaseException) -> str:
    text = str(exc)
    if "Connection refused" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "timed out"
    return f"{type(exc).__name__}: {text[:200]}"
