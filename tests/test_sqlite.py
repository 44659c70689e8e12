"""The versioned-SQLite opener: it creates a file once, reopens it, and refuses (naming the file,
never touching it) one that is of a newer or unknown schema, not of its kind, or corrupt."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from controller.sqlite import FileKind, SqliteFileError, VersionedFile, open_versioned

KIND = FileKind(
    "test file",
    application_id=0x54455354,
    version=2,
    schema="CREATE TABLE things (name TEXT PRIMARY KEY);",
    integrity_check=True,
)


def pragma(path: Path, name: str) -> int:
    db = sqlite3.connect(path)
    try:
        (value,) = db.execute(f"PRAGMA {name}").fetchone()
    finally:
        db.close()
    return int(value)


def refused(path: Path, kind: FileKind = KIND) -> str:
    """The message opening `path` as `kind` is refused with; the file is left as it was."""
    before = path.read_bytes()
    with pytest.raises(SqliteFileError) as caught:
        open_versioned(path, kind).close()
    assert caught.value.path == path
    assert str(caught.value) == f"{path}: {caught.value.problem}"
    assert path.read_bytes() == before, "never reset"
    return caught.value.problem


def test_a_missing_file_is_created_with_its_directory_schema_id_and_version(
    tmp_path: Path,
) -> None:
    path = tmp_path / "deep" / "er" / "things.sqlite"
    db = open_versioned(path, KIND, init=lambda db: db.execute("INSERT INTO things VALUES ('a')"))
    try:
        assert db.execute("SELECT name FROM things").fetchall() == [("a",)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert not db.in_transaction
    finally:
        db.close()
    assert pragma(path, "application_id") == KIND.application_id
    assert pragma(path, "user_version") == KIND.version


def test_a_file_is_reopened_as_it_was_and_init_runs_only_once(tmp_path: Path) -> None:
    path = tmp_path / "things.sqlite"
    calls: list[str] = []

    def init(db: sqlite3.Connection) -> None:
        calls.append("init")
        db.execute("INSERT INTO things VALUES ('first')")

    file = VersionedFile(path, KIND, init=init)
    with file.transaction() as db:
        db.execute("INSERT INTO things VALUES ('second')")
    file.close()
    file = VersionedFile(path, KIND, init=init)
    with file.reading() as db:
        assert db.execute("SELECT name FROM things ORDER BY name").fetchall() == [
            ("first",),
            ("second",),
        ]
    file.close()
    assert calls == ["init"]


def test_an_empty_file_is_made_into_one(tmp_path: Path) -> None:
    path = tmp_path / "things.sqlite"
    path.touch()
    open_versioned(path, KIND).close()
    assert pragma(path, "user_version") == KIND.version


def test_a_failed_transaction_is_rolled_back(tmp_path: Path) -> None:
    file = VersionedFile(tmp_path / "things.sqlite", KIND)
    with pytest.raises(sqlite3.IntegrityError), file.transaction() as db:
        db.execute("INSERT INTO things VALUES ('a')")
        db.execute("INSERT INTO things VALUES ('a')")
    with file.reading() as db:
        assert db.execute("SELECT count(*) FROM things").fetchone() == (0,)
        assert not db.in_transaction
    file.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "things.sqlite"
    open_versioned(path, KIND).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 7")
    assert refused(path).startswith(
        "written by a newer flexcharge (schema 7; this one reads up to 2)"
    )


def test_an_older_or_unknown_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "things.sqlite"
    open_versioned(path, KIND).close()
    for version in (1, 0):
        with sqlite3.connect(path) as db:
            db.execute(f"PRAGMA user_version = {version}")
        assert refused(path) == (
            f"schema version {version} is not one this flexcharge reads (schema 2)"
        )


def test_another_application_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE x (y)")
    assert refused(path).startswith("not a flexcharge test file (application id 0)")
    open_versioned(tmp_path / "mine.sqlite", KIND).close()
    other_kind = FileKind("other file", application_id=1, version=2, schema="")
    assert refused(tmp_path / "mine.sqlite", other_kind).startswith(
        f"not a flexcharge other file (application id {KIND.application_id})"
    )


def test_a_file_of_garbage_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "things.sqlite"
    path.write_bytes(b"not a database at all" * 100)
    assert refused(path).startswith("not a usable test file: file is not a database")


def test_a_corrupt_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "things.sqlite"
    file = VersionedFile(path, KIND)
    with file.transaction() as db:
        db.executemany("INSERT INTO things VALUES (?)", [(f"thing {i:05d}",) for i in range(3000)])
    file.close()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 4 * page
    data[2 * page : 4 * page] = b"\xa5" * (2 * page)  # the header and the table's root survive
    path.write_bytes(bytes(data))
    problem = refused(path)
    assert problem.startswith(("corrupt: ", "not a usable test file: ")), problem


def test_a_check_names_what_else_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "things.sqlite"
    open_versioned(path, KIND).close()

    def check(db: sqlite3.Connection) -> str | None:
        (count,) = db.execute("SELECT count(*) FROM things").fetchone()
        return None if count else "holds no things"

    with pytest.raises(SqliteFileError) as caught:
        open_versioned(path, KIND, check=check)
    assert caught.value.problem == "holds no things"


def test_a_directory_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    path = blocker / "things.sqlite"
    with pytest.raises(SqliteFileError) as caught:
        open_versioned(path, KIND)
    assert str(path) in str(caught.value)
    assert caught.value.problem.startswith("cannot create its directory")
