"""Versioned SQLite files: how flexcharge opens, creates and checks the SQLite files it keeps.

Each kind of file (the state store, the telemetry store, the telemetry buffer) has an
application id (`PRAGMA application_id`, which tells it from any other SQLite database) and a
schema version (`PRAGMA user_version`). `open_versioned` creates a missing or empty file (and its
directory) with its schema, id and version in one transaction, so a crash never leaves a file
half made; an existing file is opened only if it is one of its kind and of the schema this
flexcharge reads. A file that is unusable (cannot be opened, corrupt, foreign, of a newer or an
unknown schema) raises `SqliteFileError` naming it and saying what is wrong; it is never reset.
Files are opened in write-ahead-log mode, so a killed process loses at most its last transaction.

`VersionedFile` is such a file opened for several threads: one connection behind a lock.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal


class SqliteFileError(Exception):
    """An SQLite file cannot be used: `path` names it, `problem` says what is wrong."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class FileKind:
    """One kind of versioned SQLite file: what it is called, and how it is made and kept.

    `what` names it in messages ("state file"); `schema` is the SQL script that makes a new
    one. `integrity_check` checks an existing one for corruption before use (`PRAGMA
    quick_check`, which reads the whole file). `synchronous` FULL makes each commit durable
    through a power cut, NORMAL only through a crash of the process.
    """

    what: str
    application_id: int
    version: int
    schema: str
    integrity_check: bool = False
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"


def open_versioned(
    path: Path | str,
    kind: FileKind,
    *,
    init: Callable[[sqlite3.Connection], None] | None = None,
    check: Callable[[sqlite3.Connection], str | None] | None = None,
) -> sqlite3.Connection:
    """Open the file at `path` as a file of `kind`, creating it if it is missing or empty.

    A new file gets the kind's schema, application id and version, and `init` fills it, all in
    one transaction. An existing file must carry the kind's application id and version (and,
    with `integrity_check`, be sound); last, `check` may return what else is wrong with it
    (None if nothing).

    The connection runs in autocommit mode (`isolation_level=None`: the caller begins its
    transactions) and may be used from any thread (the caller serialises its use). Raises
    `SqliteFileError` if the file cannot be used.
    """
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    if new:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SqliteFileError(path, f"cannot create its directory: {exc}") from exc
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise SqliteFileError(path, f"cannot open: {exc}") from exc
    try:
        db.execute("PRAGMA busy_timeout = 5000")
        if new:
            with committed(db):
                # executescript commits any open transaction first: it must begin this one.
                db.executescript(f"BEGIN IMMEDIATE; {kind.schema}")
                db.execute(f"PRAGMA application_id = {kind.application_id}")
                db.execute(f"PRAGMA user_version = {kind.version}")
                if init is not None:
                    init(db)
        else:
            problem = _problem(db, kind)
            if problem is None and check is not None:
                problem = check(db)
            if problem is not None:
                raise SqliteFileError(path, problem)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {kind.synchronous}")
    except sqlite3.Error as exc:
        db.close()
        raise SqliteFileError(path, f"not a usable {kind.what}: {exc}") from exc
    except BaseException:
        db.close()
        raise
    return db


def _problem(db: sqlite3.Connection, kind: FileKind) -> str | None:
    """What makes an existing file not a usable file of `kind` (None if nothing)."""
    if kind.integrity_check:
        problems = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            return f"corrupt: {'; '.join(problems[:3])}"
    (found_id,) = db.execute("PRAGMA application_id").fetchone()
    if found_id != kind.application_id:
        return f"not a flexcharge {kind.what} (application id {found_id}); move it away or name another"
    (found,) = db.execute("PRAGMA user_version").fetchone()
    if found > kind.version:
        return (
            f"written by a newer flexcharge (schema {found}; this one reads up to {kind.version}); "
            "upgrade flexcharge or name another file"
        )
    if found != kind.version:
        return f"schema version {found} is not one this flexcharge reads (schema {kind.version})"
    return None


@contextmanager
def committed(db: sqlite3.Connection) -> Iterator[None]:
    """Commit the transaction the block began on `db`; roll it back if the block raises."""
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class VersionedFile:
    """A versioned SQLite file (see `open_versioned`) shared by threads: one connection, one lock."""

    def __init__(
        self,
        path: Path | str,
        kind: FileKind,
        *,
        init: Callable[[sqlite3.Connection], None] | None = None,
        check: Callable[[sqlite3.Connection], str | None] | None = None,
    ) -> None:
        """Open (or create) the file (see `open_versioned`); `SqliteFileError` if unusable."""
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_versioned(self.path, kind, init=init, check=check)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection, alone and in a write transaction (BEGIN IMMEDIATE) for the block:
        committed when the block ends, rolled back if it raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            with committed(self._db):
                yield self._db

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, alone for the block, outside a transaction (each statement is one)."""
        with self._lock:
            yield self._db

    def close(self) -> None:
        """Close the connection (everything committed is already in the file)."""
        with self._lock:
            self._db.close()
