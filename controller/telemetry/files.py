"""The SQLite files telemetry keeps (the local store and the disk buffer), and their error.

Both are versioned SQLite files (`controller.sqlite`) with one application id ("FXTM") and
schema version; a file that cannot be used raises `TelemetryError`, naming the file and the
setting that named it.
"""

from __future__ import annotations

from pathlib import Path

from controller.sqlite import FileKind, SqliteFileError, VersionedFile

# "FXTM": tells a flexcharge telemetry store or buffer from any other SQLite database.
APPLICATION_ID = 0x4658544D
SCHEMA_VERSION = 1


class TelemetryError(Exception):
    """A telemetry file cannot be used; names the file and the setting."""


def telemetry_file(path: Path, what: str, schema: str, setting: str) -> VersionedFile:
    """Open (or create) the telemetry file at `path`: a `what` made by `schema`, named by the
    setting `setting`; `TelemetryError` if it cannot be used."""
    kind = FileKind(what, application_id=APPLICATION_ID, version=SCHEMA_VERSION, schema=schema)
    try:
        return VersionedFile(path, kind)
    except SqliteFileError as exc:
        raise TelemetryError(f"{exc.path} ({setting}): {exc.problem}") from exc
