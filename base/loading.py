"""The loader toolkit every config and data file goes through.

A loader collects every problem it finds (`Problems`), each naming the file, the device or row
and the field, and raises one `ConfigError` listing them all. Readers here turn raw files and
cells into values or problems, never into a raw `ValueError`, `OSError` or `csv.Error`:

- file readers (`read_bytes`, `gunzip`, `decode_text`, `read_text`, `read_toml`, `read_table`)
  add a problem and raise `ConfigError` when the file cannot be read, since nothing in it can be
  checked then;
- a CSV `Table` checks its header (`check_header`) and yields its rows (`records`), each of
  which reads its cells (`Row.read`) with the cell readers (`read_time`, `read_number`,
  `read_bool`, or any function of the text), every bad cell a problem naming its row and column.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
import tomllib
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from base.tariff import MINUTES_PER_DAY

T = TypeVar("T")

# A whole year of one ACN site is a few MB; more than this is no input file (or a gzip bomb).
MAX_FILE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file."""

    file: Path
    device: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = [str(self.file)]
        if self.device:
            where.append(self.device)
        if self.field:
            where.append(self.field)
        return f"{': '.join(where)}: {self.message}"


class ConfigError(Exception):
    """A config is invalid; `problems` lists everything that is wrong with it."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{len(self.problems)} problem(s) in the configuration:\n{lines}")


class Problems:
    """Collects the problems found while a file (and what it names) is checked."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.items: list[ConfigProblem] = []

    def add(self, device: str | None, field_: str, message: str) -> None:
        """A problem in this file, at `device` (or row; None: the whole file) and `field_`."""
        self.items.append(ConfigProblem(self.file, device, field_, message))

    def add_validation(self, err: ValidationError, device: str | None, prefix: str = "") -> None:
        """Every error pydantic found, at `device`, its field under `prefix`."""
        for item in err.errors():
            loc = ".".join(field_key(part) for part in item["loc"])
            where = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
            kind = item["type"]
            if kind == "missing":
                message = "required, but missing"
            elif kind == "extra_forbidden":
                message = "unknown field (misspelt?)"
            else:
                message = str(item["msg"])
                if "input" in item and not isinstance(item["input"], (dict, list)):
                    message += f" (got {item['input']!r})"
            self.items.append(ConfigProblem(self.file, device, where, message))

    def gather(self, load: Callable[[], T]) -> T | None:
        """What `load()` returns, or None with the problems of its `ConfigError` added here (each
        still naming its own file): several files checked, every problem reported at once."""
        try:
            return load()
        except ConfigError as err:
            self.items.extend(err.problems)
            return None

    def referenced(
        self, load: Callable[[], T], device: str | None, field_: str, what: str
    ) -> T | None:
        """A file this one names: what `load()` returns, or None with its problems added and one
        more naming the field here that points to it (`what`: e.g. "the tariff 'x' (path)")."""
        try:
            return load()
        except ConfigError as err:
            self.items.extend(err.problems)
            self.add(
                device,
                field_,
                f"{what} does not load: {len(err.problems)} problem(s) in that file",
            )
            return None

    def fail(self, device: str | None, field_: str, message: str) -> NoReturn:
        """Add a problem and raise `ConfigError` with every problem so far (nothing after it can
        be checked)."""
        self.add(device, field_, message)
        raise ConfigError(self.items)

    def raise_if_any(self) -> None:
        """Raise `ConfigError` listing every problem, if there is one."""
        if self.items:
            raise ConfigError(self.items)


def field_key(part: object) -> str:
    """A TOML key as a problem's field shows it: an empty key as "", so that it is seen."""
    return str(part) if part != "" else '""'


# -- files --------------------------------------------------------------------------------------


def read_bytes(path: Path, problems: Problems, *, limit: int = MAX_FILE_BYTES) -> bytes:
    """The file's bytes; if it is missing, unreadable or larger than `limit`, a problem and
    `ConfigError`."""
    try:
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        problems.fail(None, "", "file not found")
    except OSError as exc:
        problems.fail(None, "", f"cannot read: {exc.strerror or exc}")
    except ValueError:
        problems.fail(None, "", "cannot read: the path contains a NUL character")
    if len(data) > limit:
        problems.fail(None, "", f"cannot read: larger than {_size(limit)}")
    return data


def gunzip(data: bytes, problems: Problems, *, limit: int = MAX_FILE_BYTES) -> bytes:
    """`data` uncompressed; if it is no valid gzip stream or more than `limit` bytes once
    uncompressed, a problem and `ConfigError`."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            plain = stream.read(limit + 1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        problems.fail(None, "", f"not a valid gzip file: {exc}")
    if len(plain) > limit:
        problems.fail(None, "", f"more than {_size(limit)} once uncompressed")
    return plain


def _size(limit: int) -> str:
    return f"{limit // 2**20} MB" if limit >= 2**20 else f"{limit} bytes"


def decode_text(data: bytes, problems: Problems, *, failure: str = "cannot read") -> str:
    """`data` as UTF-8 text without its byte order mark; if it is not UTF-8, the problem
    "`failure`: not UTF-8 (...)" and `ConfigError`."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.fail(None, "", f"{failure}: not UTF-8 ({exc.reason} at byte {exc.start})")


def read_text(path: Path, problems: Problems, *, limit: int = MAX_FILE_BYTES) -> str:
    """The file as UTF-8 text (`read_bytes`, then `decode_text`)."""
    return decode_text(read_bytes(path, problems, limit=limit), problems)


def read_toml(path: Path, problems: Problems) -> dict[str, Any]:
    """The file's TOML document; if it cannot be read or is not TOML, a problem and
    `ConfigError`."""
    text = decode_text(read_bytes(path, problems), problems, failure="not valid TOML")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems.fail(None, "", f"not valid TOML: {exc}")
    except ValueError as exc:
        # tomllib lets Python's own limits through (an integer of more than 4300 digits).
        problems.fail(None, "", f"not valid TOML: {exc}")
    except RecursionError:
        problems.fail(None, "", "not valid TOML: arrays or tables nested too deeply")


# -- CSV tables ---------------------------------------------------------------------------------

CellReader = Callable[[str], Any]


@dataclass(frozen=True)
class Row:
    """One CSV record: its number (the header is record 1) and its cells by column, stripped
    (a cell the record lacks is "")."""

    number: int
    cells: dict[str, str]

    @property
    def where(self) -> str:
        """How a problem names the row."""
        return f"row {self.number}"

    def read(
        self, readers: Mapping[str, CellReader], problems: Problems, required: Collection[str] = ()
    ) -> tuple[dict[str, Any], bool]:
        """Each column's cell read by its reader: the values of the cells read, and True if
        every cell was good. An empty cell is left out (a problem if its column is `required`);
        a reader refuses a cell by raising `ValueError` (or `OverflowError`), whose message
        becomes the problem, naming this row and the column."""
        values: dict[str, Any] = {}
        good = True
        for name, reader in readers.items():
            text = self.cells.get(name, "")
            if text == "":
                if name in required:
                    problems.add(self.where, name, "required, but empty")
                    good = False
                continue
            try:
                values[name] = reader(text)
            except (ValueError, OverflowError) as exc:
                problems.add(self.where, name, str(exc) or f"cannot read {text!r}")
                good = False
        return values, good


@dataclass(frozen=True)
class Table:
    """A CSV file: its header (each name stripped) and the records after it."""

    header: list[str]
    body: list[list[str]]

    def check_header(
        self, problems: Problems, required: Collection[str], optional: Collection[str] = ()
    ) -> None:
        """Every problem of the header (a column named twice, a required one missing, one not
        known), then `ConfigError` if there is any: rows cannot be read by a wrong header."""
        header = self.header
        known = [*required, *optional]
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            problems.add("header", ", ".join(repeated), "column named more than once")
        missing = [name for name in required if name not in header]
        unknown = [name for name in header if name not in known]
        if missing:
            problems.add(
                "header", ", ".join(missing), f"required column(s) missing; the header is {header}"
            )
        if unknown:
            problems.add(
                "header", ", ".join(unknown), f"unknown column(s) (misspelt?); known: {known}"
            )
        problems.raise_if_any()

    def records(self, problems: Problems) -> Iterator[Row]:
        """The rows with a value, by column; a row with more values than columns is a problem
        and skipped."""
        for number, cells in enumerate(self.body, start=2):
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) > len(self.header):
                problems.add(f"row {number}", "", "more values than columns")
                continue
            yield Row(
                number,
                {
                    name: (cells[k].strip() if k < len(cells) else "")
                    for k, name in enumerate(self.header)
                },
            )


def read_table(text: str, problems: Problems) -> Table:
    """The CSV table in `text` (an empty text: no header, no rows); if it is not CSV (a field
    over the csv module's limit, a stray quote), a problem and `ConfigError`."""
    try:
        # Only \n and \r end a record: str.splitlines() would also split a row at \x1e, \x85
        # or \u2028 inside a value, and break quoted values that span lines.
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        problems.fail(None, "", f"not a CSV file: {exc}")
    header = [name.strip() for name in rows[0]] if rows else []
    return Table(header, rows[1:])


# -- cells --------------------------------------------------------------------------------------


# Times outside these years are typos, and a scenario there could not be turned into local
# dates (Python's years end at 1 and 9999) once its warm-up days or time zone move it.
FIRST_YEAR, LAST_YEAR = 1900, 2199


def read_time(text: str) -> float:
    """An ISO 8601 time with its UTC offset, in epoch seconds; `ValueError` if it is not one."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (write e.g. 2026-11-25T17:40:00+08:00)")
    return instant(value, text)


def instant(value: datetime, text: str) -> float:
    """`value` (read from `text`, with its UTC offset) in epoch seconds; `ValueError` if it is
    not between `FIRST_YEAR` and `LAST_YEAR` in UTC."""
    seconds = value.timestamp()
    earliest = datetime(FIRST_YEAR, 1, 1, tzinfo=UTC).timestamp()
    latest = datetime(LAST_YEAR + 1, 1, 1, tzinfo=UTC).timestamp()
    if not earliest <= seconds < latest:
        raise ValueError(f"{text!r} is not between the years {FIRST_YEAR} and {LAST_YEAR}")
    return seconds


def read_number(
    text: str, *, low: float | None = None, high: float | None = None, positive: bool = False
) -> float:
    """A finite number within [`low`, `high`] (and > 0 if `positive`); `ValueError` if not."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number")
    if positive and value <= 0:
        raise ValueError(f"must be positive, got {value:g}")
    if low is not None and value < low:
        raise ValueError(f"must be at least {low:g}, got {value:g}")
    if high is not None and value > high:
        raise ValueError(f"must be at most {high:g}, got {value:g}")
    return value


TRUE_WORDS = ("true", "1", "yes")
FALSE_WORDS = ("false", "0", "no", "")


def read_bool(text: str) -> bool:
    """true/1/yes or false/0/no (any case; empty is false); `ValueError` if neither."""
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise ValueError(f"{text!r} is not true or false")


# -- config fields ------------------------------------------------------------------------------


class Strict(BaseModel):
    """A config section: unknown fields are problems, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=1, le=65535)]
UnitId = Annotated[int, Field(ge=0, le=255)]
Kw = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveKw = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def minute_of_day(text: str) -> int:
    """HH:MM (00:00 to 24:00) as minutes after midnight; `ValueError` if it is not one."""
    match = _HHMM.match(text)
    if not match:
        raise ValueError(f"not a time of day HH:MM: {text!r}")
    minutes = int(match.group(1)) * 60 + int(match.group(2))
    if minutes > MINUTES_PER_DAY:
        raise ValueError(f"after 24:00: {text!r}")
    return minutes


def zone_name(name: str) -> str:
    """`name` if it is an IANA time zone this machine knows; `ValueError` if not."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: name too long
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name
