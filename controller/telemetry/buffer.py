"""The disk buffer: batches a sink could not take, kept in order in an SQLite file until it can.

It is bounded in bytes (when full, the oldest batches are dropped and counted) and survives a
restart, so that the next run replays what it holds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from controller.sqlite import VersionedFile
from controller.telemetry.files import telemetry_file
from controller.telemetry.points import Point

BUFFER_SCHEMA = """
CREATE TABLE batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    points INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""


class DiskBuffer:
    """Batches the sink could not take, kept on disk in order, at most `max_bytes` of them.

    The bound counts the batches' encoded size (the SQLite file adds a little). When a new
    batch would cross it, the oldest batches are dropped to make room and counted in `dropped`.
    The file is created only when a first batch must be kept, and survives a restart.
    """

    def __init__(self, path: Path | str, max_bytes: int) -> None:
        """A buffer at `path` (opened at once if it exists, so that a restart replays it)."""
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.dropped = 0
        self._file: VersionedFile | None = None
        self._bytes = 0
        self._points = 0
        if self.path.exists():
            self._open()

    def _open(self) -> VersionedFile:
        if self._file is None:
            self._file = telemetry_file(
                self.path, "telemetry buffer", BUFFER_SCHEMA, "telemetry.buffer_dir"
            )
            with self._file.transaction() as db:
                row = db.execute(
                    "SELECT coalesce(sum(bytes), 0), coalesce(sum(points), 0) FROM batches"
                ).fetchone()
            self._bytes, self._points = int(row[0]), int(row[1])
        return self._file

    @property
    def bytes(self) -> int:
        """Encoded size of the batches held."""
        return self._bytes

    @property
    def points(self) -> int:
        """Points held."""
        return self._points

    def __bool__(self) -> bool:
        return self._points > 0

    def append(self, points: Sequence[Point]) -> tuple[int, int]:
        """Keep a batch after those held; returns the points kept and the (oldest) dropped."""
        body = json.dumps([p.to_json() for p in points], separators=(",", ":")).encode()
        if len(body) > self.max_bytes:
            self.dropped += len(points)
            return 0, len(points)
        file = self._open()
        dropped = 0
        with file.transaction() as db:
            while self._bytes + len(body) > self.max_bytes:
                row = db.execute(
                    "SELECT id, points, bytes FROM batches ORDER BY id LIMIT 1"
                ).fetchone()
                if row is None:
                    break
                db.execute("DELETE FROM batches WHERE id = ?", (row[0],))
                dropped += int(row[1])
                self._points -= int(row[1])
                self._bytes -= int(row[2])
            db.execute(
                "INSERT INTO batches (points, bytes, body) VALUES (?, ?, ?)",
                (len(points), len(body), body),
            )
        self._points += len(points)
        self._bytes += len(body)
        self.dropped += dropped
        return len(points), dropped

    def oldest(self) -> tuple[int, list[Point]] | None:
        """The oldest batch held (its id and points), or None."""
        if not self._points or self._file is None:
            return None
        with self._file.transaction() as db:
            row = db.execute("SELECT id, body FROM batches ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        return int(row[0]), [Point.from_json(item) for item in json.loads(row[1])]

    def remove(self, batch_id: int) -> None:
        """Forget a batch once the sink has it."""
        assert self._file is not None
        with self._file.transaction() as db:
            row = db.execute(
                "SELECT points, bytes FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        self._points -= int(row[0])
        self._bytes -= int(row[1])

    def close(self) -> None:
        """Close the file (what it holds stays for the next run)."""
        if self._file is not None:
            self._file.close()
            self._file = None
