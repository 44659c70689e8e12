"""The loader toolkit's limits and collector, which the loaders' own tests reach only rarely."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from base.loading import ConfigError, Problems, gunzip, read_bytes, read_table


def test_a_file_over_the_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(b"x" * 11)
    assert read_bytes(path, Problems(path), limit=11) == b"x" * 11
    with pytest.raises(ConfigError, match=r"big.csv: cannot read: larger than 10 bytes"):
        read_bytes(path, Problems(path), limit=10)


def test_a_gzip_stream_that_unpacks_past_the_limit_is_refused() -> None:
    packed = gzip.compress(b"\0" * 10_000)
    assert len(gunzip(packed, Problems(Path("a.gz")), limit=10_000)) == 10_000
    with pytest.raises(ConfigError, match=r"a.gz: more than 9999 bytes once uncompressed"):
        gunzip(packed, Problems(Path("a.gz")), limit=9_999)


def test_gather_keeps_each_problem_with_its_own_file() -> None:
    problems = Problems(Path("sessions.csv"))

    def broken() -> int:
        other = Problems(Path("tariff.toml"))
        other.fail("tariff", "currency", "unknown")

    assert problems.gather(lambda: 3) == 3
    assert problems.gather(broken) is None
    problems.add("row 2", "arrival", "no UTC offset")
    assert [str(p) for p in problems.items] == [
        "tariff.toml: tariff: currency: unknown",
        "sessions.csv: row 2: arrival: no UTC offset",
    ]


def test_rows_are_numbered_as_records_and_named_by_column() -> None:
    problems = Problems(Path("t.csv"))
    table = read_table(' a , b \n1,2\n\n"x\ny",\n1,2,3\n4\n', problems)
    assert table.header == ["a", "b"]
    rows = list(table.records(problems))
    assert [(row.number, row.cells) for row in rows] == [
        (2, {"a": "1", "b": "2"}),
        (4, {"a": "x\ny", "b": ""}),
        (6, {"a": "4", "b": ""}),
    ]
    assert [str(p) for p in problems.items] == ["t.csv: row 5: more values than columns"]
