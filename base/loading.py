"""The loader toolkit every config and data file goes through.

A loader collects every problem it finds (`Problems`), each naming the file, the device or row
and the field, and raises one `ConfigError` listing them all. Readers here turn raw files and
cells into values or problems, never into a raw `ValueError`, `OSError` or `csv.Error`.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

from base.tariff import MINUTES_PER_DAY


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
    """Collects problems while a file is checked."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.items: list[ConfigProblem] = []

    def add(self, device: str | None, field_: str, message: str) -> None:
        self.items.append(ConfigProblem(self.file, device, field_, message))

    def add_validation(self, err: ValidationError, device: str | None, prefix: str = "") -> None:
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

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def field_key(part: object) -> str:
    """A TOML key as a problem's field shows it: an empty key as "", so that it is seen."""
    return str(part) if part != "" else '""'


def read_toml(path: Path, problems: Problems) -> dict[str, Any] | None:
    try:
        with path.open("rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        problems.add(None, "", "file not found")
        return None
    except OSError as exc:
        problems.add(None, "", f"cannot read: {exc.strerror}")
        return None
    except ValueError:
        problems.add(None, "", "cannot read: the path contains a NUL character")
        return None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problems.add(None, "", f"not valid TOML: not UTF-8 ({exc.reason} at byte {exc.start})")
    except tomllib.TOMLDecodeError as exc:
        problems.add(None, "", f"not valid TOML: {exc}")
    except ValueError as exc:
        # tomllib lets Python's own limits through (an integer of more than 4300 digits).
        problems.add(None, "", f"not valid TOML: {exc}")
    except RecursionError:
        problems.add(None, "", "not valid TOML: arrays or tables nested too deeply")
    return None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Port = Annotated[int, Field(ge=1, le=65535)]
UnitId = Annotated[int, Field(ge=0, le=255)]
Kw = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveKw = Annotated[float, Field(gt=0, allow_inf_nan=False)]
_HHMM = re.compile(r"^([01]\d|2[0-4]):([0-5]\d)$")


def minute_of_day(text: str) -> int:
    match = _HHMM.match(text)
    if not match:
        raise ValueError(f"not a time of day HH:MM: {text!r}")
    minutes = int(match.group(1)) * 60 + int(match.group(2))
    if minutes > MINUTES_PER_DAY:
        raise ValueError(f"after 24:00: {text!r}")
    return minutes


def zone_name(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:  # OSError: name too long
        raise ValueError(f"unknown time zone {name!r}") from exc
    return name
