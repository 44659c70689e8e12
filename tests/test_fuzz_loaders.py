"""Fuzz tests for everything that reads input: config loaders, scenario loaders, register codec.

Configs start from the shipped files (parsed with tomllib), are mutated (keys deleted or added,
values replaced by values of other types, items duplicated, numbers nudged past their limits) and
written back as TOML into a private copy of `configs/`, so the relative paths the station files
use still resolve. Scenario files (sessions, ACN-Data, series, fault scripts) are random text and
bytes, mutated rows of shipped or sample files, and paths the OS refuses; a what-if case (the
inputs of `simulate` and `tariff compare`) has one of its files fuzzed. The property for every
loader: it returns an object or raises `ConfigError` whose problems name the file (and the row,
device and field) - never any other exception. The register codec round-trips in-range values
and refuses the others with `BadValue` naming the register.

Examples are derandomized so that CI runs the same inputs every time.
"""

from __future__ import annotations

import copy
import gzip
import itertools
import json
import math
import shutil
import struct
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterator
from datetime import date, datetime, time
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from base.config import CONFIG_ROOT, REFERENCE_STATION, Station, load_station
from base.devicemap import Access, Register, RegisterMap, ValueType, WordOrder
from base.loading import ConfigError, ConfigProblem
from base.mapfile import load_register_map
from base.tariff import Tariff
from base.tarifffile import load_tariff
from drivers.codec import decode, encode, write_plan
from drivers.errors import BadValue
from simulator.faults import FaultKind, load_faults
from simulator.scenario import (
    ACN_COLUMNS,
    load_acn_csv,
    load_acn_sessions,
    load_series,
    load_sessions,
)
from simulator.whatif import load_scenario

FUZZ = settings(deadline=None, derandomize=True, max_examples=150)
STATIONS = sorted(CONFIG_ROOT.glob("stations/*.toml"))
TARIFFS = [CONFIG_ROOT / "tariffs" / "guizhou-tou.toml"]
DEVICE_MAPS = sorted(CONFIG_ROOT.glob("devices/*.toml"))
SCENARIOS = sorted(CONFIG_ROOT.glob("scenarios/*.csv"))


def _parsed(paths: list[Path]) -> dict[str, dict[str, Any]]:
    docs = {}
    for path in paths:
        with path.open("rb") as handle:
            docs[path.stem] = tomllib.load(handle)
    return docs


STATION_DOCS = _parsed(STATIONS)
TARIFF_DOCS = _parsed(TARIFFS)
MAP_DOCS = _parsed(DEVICE_MAPS)


# --------------------------------------------------------------------------- a tiny TOML emitter


class RawToml(str):
    """TOML text emitted as it is: values no Python object writes (5000-digit integers, deep
    nesting), to reach the parser's own limits."""


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, RawToml):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_string(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no TOML for {value!r}")


def dump_toml(doc: dict[str, Any]) -> str:
    """`doc` as TOML: one `key = value` line per top-level key, tables written inline."""
    return "".join(f"{_toml_string(k)} = {_toml_value(v)}\n" for k, v in doc.items())


@pytest.mark.parametrize("doc", [*STATION_DOCS.values(), *TARIFF_DOCS.values(), *MAP_DOCS.values()])
def test_the_emitter_writes_what_tomllib_reads(doc: dict[str, Any]) -> None:
    """Every shipped config survives dump_toml -> tomllib unchanged (the fuzzers rely on it)."""
    assert tomllib.loads(dump_toml(doc)) == doc


# --------------------------------------------------------------------------- mutations

SPECIAL_TEXT = st.sampled_from(
    [
        "",
        " ",
        "00:00",
        "24:00",
        "12:30",
        "25:00",
        "23:60",
        "7:5",
        "no-such-map",
        "../tariffs/guizhou-tou",
        "../tariffs/guizhou-tou.toml",
        "../devices",
        "/",
        "x" * 300,
        "a\x00b",
        "Mars/Olympus",
        "Asia/Shanghai",
        "u16",
        "f64",
        "string",
        "rw",
        "w",
        "big",
        "little",
        "charger",
        "meter",
        "pile",
        "opcua",
        "modbus-tls",
        "flexcharge-dc-pile",
        "abb-terra-ac",
        "carlo-gavazzi-em24",
        "P01",
        "L1",
        "kW",
        "mA",
    ]
)
SPECIAL_NUMBERS = st.sampled_from(
    [
        *(0, -1, 1, 3, 4, 6, 16, 65535, 65536, -65536, 2**31, 2**63 - 1, -(2**63), 2**64, 10**30),
        *(0.0, -0.0, 0.5, 1e-300, 1e308, -1e308, math.nan, math.inf, -math.inf),
    ]
)
RAW = st.sampled_from(
    [
        RawToml("1" * 5000),
        RawToml("-" + "9" * 4400),
        RawToml("[" * 1500 + "]" * 1500),
        RawToml("{a = " * 1200 + "1" + "}" * 1200),
    ]
)
LEAVES = st.one_of(
    st.text(max_size=12),
    SPECIAL_TEXT,
    st.integers(),
    SPECIAL_NUMBERS,
    st.floats(),
    st.booleans(),
    st.datetimes(),
    st.dates(),
    RAW,
)
JUNK = st.recursive(
    LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=5,
)
NUDGES = st.sampled_from([-1, 1, -65536, 65536, 0.5, -1e9, 1e9, 2**64])


def _pick(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[dict[str, Any] | list[Any], Any]:
    """A container somewhere in `doc` and one key (or index) of it; the key is None if empty."""
    node: dict[str, Any] | list[Any] = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return node, None
        key = draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, (dict, list)) and child and draw(st.integers(0, 3)) > 0:
            node = child
            continue
        return node, key


def _mutate(draw: st.DrawFn, doc: dict[str, Any]) -> None:
    node, key = _pick(draw, doc)
    action = draw(st.sampled_from(["delete", "replace", "add", "duplicate", "nudge"]))
    if key is None or action == "add":
        if isinstance(node, dict):
            node[draw(st.text(max_size=10) | SPECIAL_TEXT)] = draw(JUNK)
        else:
            node.append(draw(JUNK))
    elif action == "delete":
        del node[key]
    elif action == "replace":
        node[key] = draw(JUNK)
    elif action == "duplicate":
        # Copies of list items (piles, tariff periods, seasons) and of values under other keys
        # (register addresses) make ids clash and ranges overlap.
        if isinstance(node, list):
            node.append(copy.deepcopy(node[key]))
        else:
            other = draw(st.sampled_from(list(node)))
            node[other] = copy.deepcopy(node[key])
    else:
        value = node[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node[key] = value + draw(NUDGES)
        elif isinstance(value, str):
            node[key] = f"{draw(st.integers(0, 30)):02d}:{draw(st.integers(0, 70)):02d}"
        else:
            node[key] = draw(JUNK)


@st.composite
def mutated(draw: st.DrawFn, docs: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """(name, document): one of `docs`, changed in one to three places."""
    name = draw(st.sampled_from(sorted(docs)))
    doc = copy.deepcopy(docs[name])
    for _ in range(draw(st.integers(1, 3))):
        _mutate(draw, doc)
    return name, doc


FILE_CONTENT = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    st.sampled_from([b"", b"\xef\xbb\xbf", b"\x00", b"\xff\xfe[x]", b"[station]\na = \xc3\x28\n"]),
    RAW.map(lambda raw: f"x = {raw}\n"),
)


@pytest.fixture(scope="module")
def tree() -> Iterator[Path]:
    """A private copy of configs/ (hypothesis runs each test many times per fixture)."""
    with tempfile.TemporaryDirectory() as name:
        root = Path(name) / "configs"
        shutil.copytree(CONFIG_ROOT, root)
        yield root


def write_file(path: Path, content: dict[str, Any] | str | bytes) -> Path:
    """Write a document as TOML, or text or bytes as they are."""
    if isinstance(content, dict):
        content = dump_toml(content)
    if isinstance(content, str):
        content = content.encode("utf-8")
    path.write_bytes(content)
    return path


def refused(load: Callable[[Path], object], path: Path) -> list[ConfigProblem] | None:
    """None if `load` accepts the file, else its problems (after checking their form).

    Anything raised but ConfigError fails the test, as does a ConfigError without problems or
    a problem without a file, a field-or-device and a message.
    """
    try:
        load(path)
    except ConfigError as err:
        assert err.problems, "ConfigError without problems"
        for problem in err.problems:
            assert isinstance(problem, ConfigProblem)
            assert isinstance(problem.file, Path)
            assert problem.device is None or (isinstance(problem.device, str) and problem.device)
            assert isinstance(problem.field, str)
            assert isinstance(problem.message, str) and problem.message
            assert str(problem).startswith(str(problem.file))
        assert f"{len(err.problems)} problem(s)" in str(err)
        return err.problems
    return None


def resolved(path: Path) -> Path:
    """The path resolved, or as it is if the OS refuses it (a NUL, a name too long)."""
    try:
        return path.resolve()
    except (OSError, ValueError):
        return path


def same(a: Path, b: Path) -> bool:
    """True if the two paths name the same file (tmp dirs may sit behind symlinks)."""
    return resolved(a) == resolved(b)


# --------------------------------------------------------------------------- device maps


@FUZZ
@given(case=mutated(MAP_DOCS))
def test_mutated_device_map_loads_or_names_file_and_device(
    tree: Path, case: tuple[str, dict[str, Any]]
) -> None:
    """A changed register map loads (and is sound) or every problem names it and its device."""
    _, doc = case
    path = write_file(tree / "devices" / "fuzz-map.toml", doc)
    found = refused(load_register_map, path)
    if found is None:
        regmap = load_register_map(path)
        assert isinstance(regmap, RegisterMap)
        assert regmap.problems() == []
        assert all(r.address >= 0 and r.end <= 65536 for r in regmap.registers.values())
        return
    for problem in found:
        assert problem.file == path
        if problem.device is None:  # the file as a whole: unreadable, not TOML
            assert problem.field == ""
        else:
            assert problem.device.startswith("device map") and problem.field, problem


@FUZZ
@given(content=FILE_CONTENT)
def test_any_bytes_as_device_map_raise_config_error(tree: Path, content: str | bytes) -> None:
    """Random bytes or text as a register map: only ConfigError, naming the file."""
    path = write_file(tree / "devices" / "fuzz-raw.toml", content)
    found = refused(load_register_map, path)
    assert found is not None
    assert all(p.file == path for p in found)


@FUZZ
@given(
    name=st.sampled_from(sorted(MAP_DOCS)),
    address=st.one_of(st.integers(-(2**70), -1), st.integers(65536, 2**70)),
)
def test_register_outside_the_modbus_space_is_named(tree: Path, name: str, address: int) -> None:
    """A register address outside 0-65535 is a problem naming the device and that register."""
    doc = copy.deepcopy(MAP_DOCS[name])
    register = sorted(doc["registers"])[0]
    doc["registers"][register]["address"] = address
    path = write_file(tree / "devices" / "fuzz-address.toml", doc)
    found = refused(load_register_map, path)
    assert found is not None
    assert any(
        p.field == f"registers.{register}.address"
        and p.device
        and p.device.startswith("device map")
        for p in found
    ), found


# --------------------------------------------------------------------------- tariffs


@FUZZ
@given(case=mutated(TARIFF_DOCS))
def test_mutated_tariff_loads_or_names_file_and_field(
    tree: Path, case: tuple[str, dict[str, Any]]
) -> None:
    """A changed tariff loads (covering every minute of every day) or names the file and field."""
    _, doc = case
    path = write_file(tree / "tariffs" / "fuzz-tariff.toml", doc)
    found = refused(load_tariff, path)
    if found is None:
        tariff = load_tariff(path)
        assert isinstance(tariff, Tariff)
        for season in tariff.seasons:
            for day_type in season.day_types:
                minutes = sorted((p.start_min, p.end_min) for p in day_type.periods)
                assert minutes[0][0] == 0 and minutes[-1][1] == 24 * 60
                assert all(a[1] == b[0] for a, b in itertools.pairwise(minutes))
        return
    for problem in found:
        assert problem.file == path
        if not problem.message.startswith("not valid TOML"):
            assert problem.field or problem.device


@FUZZ
@given(
    season=st.integers(0, 10),
    day_type=st.integers(0, 10),
    start=st.integers(0, 24 * 60),
    length=st.integers(1, 24 * 60),
)
def test_overlapping_tariff_period_is_named(
    tree: Path, season: int, day_type: int, start: int, length: int
) -> None:
    """A period added over the others is an overlap named by season, day type and field."""
    doc = copy.deepcopy(TARIFF_DOCS["guizhou-tou"])
    chosen_season = doc["seasons"][season % len(doc["seasons"])]
    chosen_day = chosen_season["day_types"][day_type % len(chosen_season["day_types"])]
    end = min(start + length, 24 * 60)
    if end <= start:
        start, end = 0, length
    band = sorted(doc["bands"])[0]
    chosen_day["periods"].append(
        {
            "start": f"{start // 60:02d}:{start % 60:02d}",
            "end": f"{end // 60:02d}:{end % 60:02d}",
            "band": band,
        }
    )
    path = write_file(tree / "tariffs" / "fuzz-overlap.toml", doc)
    found = refused(load_tariff, path)
    assert found is not None
    assert any(
        "overlaps" in p.message
        and p.device == f"season {chosen_season['name']}, day type {chosen_day['name']}"
        and p.field.startswith("seasons[")
        for p in found
    ), found


@FUZZ
@given(content=FILE_CONTENT)
def test_any_bytes_as_tariff_raise_config_error(tree: Path, content: str | bytes) -> None:
    """Random bytes or text as a tariff: only ConfigError, naming the file."""
    path = write_file(tree / "tariffs" / "fuzz-raw.toml", content)
    found = refused(load_tariff, path)
    assert found is not None
    assert all(p.file == path for p in found)


# --------------------------------------------------------------------------- stations


def _referenced(station: Path, doc: dict[str, Any]) -> tuple[Path | None, set[Path]]:
    """The tariff and the register map files a station document names (those given as text)."""
    info = doc.get("station")
    if not isinstance(info, dict):
        return None, set()
    tariff, devices = info.get("tariff"), info.get("devices", "../devices")
    entries = [doc.get("grid_meter"), doc.get("terminal"), doc.get("pile_defaults")]
    piles = doc.get("piles")
    entries += piles if isinstance(piles, list) else []
    names = {
        e["device"] for e in entries if isinstance(e, dict) and isinstance(e.get("device"), str)
    }
    tariff_file = resolved(station.parent / tariff) if isinstance(tariff, str) else None
    map_files = (
        {resolved(station.parent / devices / f"{name}.toml") for name in names}
        if isinstance(devices, str)
        else set()
    )
    return tariff_file, map_files


def _check_station_problems(path: Path, doc: dict[str, Any], found: list[ConfigProblem]) -> None:
    """Every problem is about the station file, its tariff or a map one of its devices names,
    and the station file names the entry that pulled in each broken file."""
    tariff, maps = _referenced(path, doc)
    station_fields = {(p.device, p.field) for p in found if same(p.file, path)}
    for problem in found:
        if same(problem.file, path):
            continue
        file = resolved(problem.file)
        assert file in maps or file == tariff, f"{problem}: not {path}, nor a file it names"
        named_as_map = file in maps and any(
            field == "device" and device for device, field in station_fields
        )
        named_as_tariff = file == tariff and (None, "station.tariff") in station_fields
        assert named_as_map or named_as_tariff, f"{problem}: {path} names no entry for it"


@settings(FUZZ, max_examples=250)
@given(
    case=mutated(STATION_DOCS),
    tariff=st.none() | mutated(TARIFF_DOCS),
    regmap=st.none() | mutated(MAP_DOCS),
)
def test_mutated_station_loads_or_names_the_file(
    tree: Path,
    case: tuple[str, dict[str, Any]],
    tariff: tuple[str, dict[str, Any]] | None,
    regmap: tuple[str, dict[str, Any]] | None,
) -> None:
    """A changed station (maybe with a changed tariff or device map of its own) loads or raises
    ConfigError whose problems each name the station, its tariff or one of its maps.
    """
    _, doc = case
    if tariff is not None and isinstance(doc.get("station"), dict):
        write_file(tree / "tariffs" / "fuzz-station-tariff.toml", tariff[1])
        doc["station"]["tariff"] = "../tariffs/fuzz-station-tariff.toml"
    if regmap is not None and isinstance(doc.get("piles"), list) and doc["piles"]:
        write_file(tree / "devices" / "fuzz-station-map.toml", regmap[1])
        if isinstance(doc["piles"][0], dict):
            doc["piles"][0]["device"] = "fuzz-station-map"
    path = write_file(tree / "stations" / "fuzz-station.toml", doc)
    found = refused(load_station, path)
    if found is None:
        station = load_station(path)
        assert isinstance(station, Station)
        assert all(p.max_kw <= station.limit_kw for p in station.piles)
        return
    _check_station_problems(path, doc, found)


PATHS = st.one_of(
    st.sampled_from(
        [
            "",
            ".",
            "..",
            "/",
            "a\x00b",
            "x" * 300,
            "y/" * 3000,
            "../tariffs",
            "../tariffs/guizhou-tou",
            "../tariffs/guizhou-tou.toml",
            "../devices/abb-terra-ac.toml",
            "../stations/bozhou-depot",
            "flexcharge-dc-pile",
        ]
    ),
    st.text(max_size=20),
)


@settings(FUZZ)
@given(
    name=st.sampled_from(sorted(STATION_DOCS)),
    where=st.sampled_from(["tariff", "devices", "meter", "pile"]),
    value=PATHS,
)
def test_station_paths_and_map_names_load_or_are_named(
    tree: Path, name: str, where: str, value: str
) -> None:
    """The tariff path, the devices dir or a device's map name changed to any text (paths the
    OS refuses included): the station loads, or its own file names what is wrong."""
    doc = copy.deepcopy(STATION_DOCS[name])
    if where in ("tariff", "devices"):
        doc["station"][where] = value
    else:
        (doc["grid_meter"] if where == "meter" else doc["piles"][0])["device"] = value
    path = write_file(tree / "stations" / "fuzz-paths.toml", doc)
    found = refused(load_station, path)
    if found is None:
        return
    _check_station_problems(path, doc, found)
    assert any(
        same(p.file, path) and p.field in ("station.tariff", f"station.{where}", "device")
        for p in found
    ), "\n".join(map(str, found))


PILE_FIELDS = [
    "device",
    "host",
    "port",
    "unit",
    "protocol",
    "max_kw",
    "min_kw",
    "comm_timeout_s",
    "fallback_kw",
    "max_discharge_kw",
    "phases",
    "phase",
    "voltage_v",
    "path",
    "object",
    "opcua_security",
    "no_such_field",
]


@settings(FUZZ)
@given(
    name=st.sampled_from(sorted(STATION_DOCS)),
    index=st.integers(0, 100),
    field=st.sampled_from(PILE_FIELDS),
    value=JUNK | st.just("delete"),
)
def test_a_bad_pile_or_meter_field_names_that_device(
    tree: Path, name: str, index: int, field: str, value: Any
) -> None:
    """One field of one pile (or of the grid meter) changed: the station loads, or a problem
    names that device (as its device, or in the message of a clash with another device)."""
    doc = copy.deepcopy(STATION_DOCS[name])
    devices: list[tuple[str, dict[str, Any]]] = [("meter", doc["grid_meter"])]
    devices += [("pile", pile) for pile in doc["piles"]]
    kind, entry = devices[index % len(devices)]
    label = f"{kind} {entry['id']}"
    if value == "delete":
        entry.pop(field, None)
    else:
        entry[field] = value
    path = write_file(tree / "stations" / "fuzz-device.toml", doc)
    found = refused(load_station, path)
    if found is None:
        return
    _check_station_problems(path, doc, found)
    # Sums over all piles are a property of the station, not of one pile; a value TOML cannot
    # hold (a 5000-digit integer) makes the whole file unreadable.
    aggregate = {("piles", "fallback_kw"), ("phase_limits", ""), (None, "")}
    assert any(
        p.device == label or label in p.message or (p.device, p.field) in aggregate for p in found
    ), "\n".join(map(str, found))


@FUZZ
@given(content=FILE_CONTENT)
def test_any_bytes_as_station_raise_config_error(tree: Path, content: str | bytes) -> None:
    """Random bytes or text as a station: only ConfigError, naming the file."""
    path = write_file(tree / "stations" / "fuzz-raw.toml", content)
    found = refused(load_station, path)
    assert found is not None
    assert all(p.file == path for p in found)


# --------------------------------------------------------------------------- scenario files

GOOD_ROW = "S1,2026-11-25T17:40:00+08:00,2026-11-26T06:10:00+08:00,455,480,,600,0.18,false"
SESSION_HEADER = "id,arrival,departure,energy_kwh,max_kw,pile,capacity_kwh,soc_arrival,v2g"
CELLS = st.one_of(
    st.sampled_from(
        [
            "",
            " ",
            '"',
            '""',
            "\x00",
            "\ufeff",
            "nan",
            "-inf",
            "1e400",
            "-0",
            "1" * 400,
            "9" * 5000,
            "0.5",
            "true",
            "maybe",
            "2026-11-25T17:40:00",
            "2026-11-25T17:40:00Z",
            "2026-11-25T17:40:00+08:00",
            "2026-02-30T00:00:00+08:00",
            "0001-01-01T00:00:00+08:00",
            "9999-12-31T23:59:59-08:00",
            "2026-11-25T17:40:00+24:00",
            "2026-11-25 17:40+08",
            "arrival",
            "time",
            "kw",
        ]
    ),
    st.text(max_size=8),
    st.floats().map(repr),
    st.integers().map(str),
)


@st.composite
def mutated_lines(
    draw: st.DrawFn,
    lines: list[str],
    cells: st.SearchStrategy[str],
    *,
    rounds: tuple[int, int],
    swap: int,
) -> str:
    """`lines` split at commas, changed between `rounds` times (a cell replaced by one of
    `cells`, dropped or added, a row duplicated, the cells at `swap` and `swap + 1` exchanged:
    a departure or an end before its start), and joined again with some line ending."""
    table = [line.split(",") for line in lines]
    for _ in range(draw(st.integers(*rounds))):
        row = table[draw(st.integers(0, len(table) - 1))]
        action = draw(st.sampled_from(["cell", "drop-cell", "add-cell", "dup-row", "swap"]))
        if action == "cell" and row:
            row[draw(st.integers(0, len(row) - 1))] = draw(cells)
        elif action == "drop-cell" and row:
            del row[draw(st.integers(0, len(row) - 1))]
        elif action == "add-cell":
            row.insert(draw(st.integers(0, len(row))), draw(cells))
        elif action == "dup-row":
            table.append(list(row))
        elif action == "swap" and len(row) > swap + 1:
            row[swap], row[swap + 1] = row[swap + 1], row[swap]
    return "\n".join(",".join(row) for row in table) + draw(st.sampled_from(["", "\n", "\r\n"]))


@st.composite
def mutated_csv(draw: st.DrawFn, least: int = 1) -> str:
    """A shipped scenario (first rows), with cells replaced, columns added or removed, rows
    duplicated or swapped, and the header changed (at least `least` times)."""
    lines = SCENARIOS[draw(st.integers(0, len(SCENARIOS) - 1))].read_text().splitlines()[:6]
    return draw(mutated_lines(lines, CELLS, rounds=(least, 4), swap=1))


SERIES_TEXT = st.lists(st.tuples(CELLS, CELLS).map(",".join) | CELLS, max_size=6).map(
    lambda rows: "time,kw\n" + "\n".join(rows)
)
SCENARIO_CONTENT = st.one_of(
    mutated_csv(),
    SERIES_TEXT,
    st.text(max_size=300),
    st.binary(max_size=300),
    st.lists(CELLS, max_size=12).map(lambda cells: SESSION_HEADER + "\n" + ",".join(cells)),
    st.sampled_from(
        [
            b"",
            b"\xef\xbb\xbf",
            b"\xef\xbb\xbf" + GOOD_ROW.encode(),
            b"\xff\xfe",
        ]
    ),
)
SCENARIO_LOADERS: list[Callable[[Path], object]] = [
    load_sessions,
    load_series,
    lambda path: load_series(path, kind="step", allow_negative=True),
]


def _check_rows(path: Path, found: list[ConfigProblem]) -> None:
    """Problems about rows name the row and the field (a column, or the whole row)."""
    for problem in found:
        assert problem.file == path
        if problem.device is not None and problem.device.startswith("row "):
            number = problem.device.removeprefix("row ")
            assert number.isdigit() and int(number) >= 2, problem
            if "values" not in problem.message:
                assert problem.field, problem


@FUZZ
@given(content=SCENARIO_CONTENT)
def test_any_scenario_csv_loads_or_names_file_row_and_field(
    tree: Path, content: str | bytes
) -> None:
    """Sessions and series CSVs: a result, or ConfigError naming the file, row and field."""
    path = write_file(tree / "scenarios" / "fuzz.csv", content)
    for load in SCENARIO_LOADERS:
        found = refused(load, path)
        if found is not None:
            _check_rows(path, found)


@FUZZ
@given(cell=CELLS, column=st.integers(1, 8))
def test_a_bad_session_cell_names_its_row_and_column(tree: Path, cell: str, column: int) -> None:
    """One bad value in row 3 of a good file: the file loads or row 3 and that column are named."""
    names = SESSION_HEADER.split(",")
    cells = GOOD_ROW.replace("S1", "S2").split(",")
    cells[column] = cell.replace(",", ";").replace("\n", " ").replace("\r", " ").replace('"', "'")
    path = write_file(
        tree / "scenarios" / "fuzz-cell.csv", f"{SESSION_HEADER}\n{GOOD_ROW}\n{','.join(cells)}\n"
    )
    found = refused(load_sessions, path)
    if found is None:
        return
    assert {p.device for p in found} == {"row 3"}, found
    # A bad time or energy may show as the departure or energy check, not the cell itself.
    related = {names[column], "departure", "energy_kwh"}
    assert any(p.field in related for p in found), found


ACN_ITEMS = st.fixed_dictionaries(
    {},
    optional={
        "connectionTime": CELLS | JUNK,
        "disconnectTime": CELLS | JUNK,
        "kWhDelivered": CELLS | JUNK,
        "sessionID": JUNK,
        "spaceID": JUNK,
    },
)


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


ACN_CONTENT = st.one_of(
    st.lists(ACN_ITEMS, max_size=4).map(lambda items: _json({"_items": items})),
    st.lists(
        st.fixed_dictionaries(
            {
                "connectionTime": st.just("Wed, 25 Apr 2018 11:08:04 GMT"),
                "disconnectTime": st.sampled_from(
                    ["Wed, 25 Apr 2018 13:20:10 GMT", "Wed, 25 Apr 2018 10:00:00 GMT"]
                ),
                "kWhDelivered": st.floats() | st.integers(),
            }
        ),
        max_size=3,
    ).map(lambda items: _json({"_items": items})),
    JUNK.map(_json),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.sampled_from(
        [
            "[" * 100_000,
            '{"_items": ' + "[" * 5000 + "]" * 5000 + "}",
            '{"_items": [{"kWhDelivered": ' + "9" * 5000 + "}]}",
            '{"_items": [{"kWhDelivered": NaN}]}',
            '{"_items": [{"kWhDelivered": Infinity}]}',
        ]
    ),
)


@FUZZ
@given(content=ACN_CONTENT)
def test_any_acn_json_loads_or_names_file_session_and_field(
    tree: Path, content: str | bytes
) -> None:
    """ACN-Data JSON: a result, or ConfigError naming the file, the session and one field."""
    path = write_file(tree / "scenarios" / "fuzz.json", content)
    for load in (load_sessions, load_acn_sessions):
        found = refused(load, path)
        if found is None:
            continue
        for problem in found:
            assert problem.file == path
            if problem.device is not None and problem.device.startswith("session "):
                assert problem.device.removeprefix("session ").isdigit()
                if problem.message != "not an object":
                    assert problem.field in {"connectionTime", "disconnectTime", "kWhDelivered"}


ACN_DAY = Path(__file__).parent / "data" / "acn-jpl-2019-10-08.csv.gz"
ACN_LINES = gzip.decompress(ACN_DAY.read_bytes()).decode().splitlines()[:6]
ACN_CELLS = CELLS | st.sampled_from(
    ["True", "False", "TRUE", "2019-10-08 05:00:39-07:00", "2019-10-08 04:00:00", "AG-1F09"]
)


# The first rows of the JPL day, unchanged or with cells replaced, dropped or added, rows
# duplicated (the same session twice) and arrival and departure swapped.
MUTATED_ACN_CSV = mutated_lines(ACN_LINES, ACN_CELLS, rounds=(0, 4), swap=0)


@st.composite
def damaged_gzip(draw: st.DrawFn, inner: st.SearchStrategy[str | bytes]) -> bytes:
    """`inner` gzipped, then maybe cut short or with one byte changed."""
    content = draw(inner)
    packed = bytearray(gzip.compress(content.encode() if isinstance(content, str) else content))
    damage = draw(st.sampled_from(["none", "cut", "flip"]))
    if damage == "cut":
        del packed[draw(st.integers(0, len(packed) - 1)) :]
    elif damage == "flip":
        at = draw(st.integers(0, len(packed) - 1))
        packed[at] ^= draw(st.integers(1, 255))
    return bytes(packed)


ACN_TEXT = st.one_of(
    MUTATED_ACN_CSV,
    st.lists(ACN_CELLS, max_size=10).map(
        lambda cells: ",".join(ACN_COLUMNS) + "\n" + ",".join(cells)
    ),
)
ACN_CSV_CONTENT = st.one_of(
    ACN_TEXT,
    damaged_gzip(ACN_TEXT | st.binary(max_size=200)),
    st.text(max_size=200),
    st.binary(max_size=200),
    st.binary(max_size=100).map(lambda tail: b"\x1f\x8b" + tail),
    st.sampled_from(
        [b"", b"\xef\xbb\xbf", gzip.compress(b"", mtime=0), gzip.compress(b"\xff\xfe", mtime=0)]
    ),
)


@FUZZ
@given(content=ACN_CSV_CONTENT, name=st.sampled_from(["fuzz-acn.csv", "fuzz-acn.csv.gz"]))
def test_any_acn_csv_loads_or_names_file_row_and_field(
    tree: Path, content: str | bytes, name: str
) -> None:
    """ACN-Data CSV, plain or gzipped, whole or damaged: visits at their station, or
    ConfigError naming the file, the row and one column."""
    path = write_file(tree / "scenarios" / name, content)
    loaders: list[Callable[[Path], object]] = [load_acn_csv]
    if name.endswith(".gz"):
        loaders.append(load_sessions)
    for load in loaders:
        found = refused(load, path)
        if found is None:
            visits = load_acn_csv(path)
            assert all(v.pile and v.arrival < v.departure and v.energy_kwh >= 0 for v in visits)
            continue
        for problem in found:
            assert problem.file == path
            if problem.device is not None and problem.device.startswith("row "):
                assert problem.device.removeprefix("row ").isdigit()
                if "values" not in problem.message:
                    assert problem.field in ACN_COLUMNS, problem


# --------------------------------------------------------------------------- fault scripts

FAULT_HEADER = "start,end,kind,target,value"
FAULT_LINES = [
    FAULT_HEADER,
    "2026-11-10T23:10:00+08:00,2026-11-10T23:20:00+08:00,silent,grid,",
    "2026-11-10T23:15:00+08:00,,limit-step,site,3000",
    "2026-11-10T23:30:00+08:00,2026-11-10T23:40:00+08:00,overshoot,P01,1.3",
    "2026-11-11T01:00:00+08:00,,leaves-early,P02,",
    "2026-11-11T02:00:00+08:00,2026-11-11T02:05:00+08:00,late,P03,4",
]
FAULT_CELLS = CELLS | st.sampled_from(
    [*(kind.value for kind in FaultKind), "grid", "site", "P01", "P99", "Silent", "limit step"]
)
# More than the csv module takes in one field (131072 characters).
HUGE_FIELD = "x" * 200_000


# The fault script above, with cells replaced, dropped or added, rows duplicated, and start
# and end swapped.
MUTATED_FAULTS = mutated_lines(FAULT_LINES, FAULT_CELLS, rounds=(0, 4), swap=0)

FAULT_CONTENT = st.one_of(
    MUTATED_FAULTS,
    st.lists(FAULT_CELLS, max_size=8).map(lambda cells: FAULT_HEADER + "\n" + ",".join(cells)),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b"\xef\xbb\xbf",
            b"\xff\xfe" + FAULT_HEADER.encode("utf-16-le"),
            f"{FAULT_HEADER}\n{FAULT_LINES[1]}\n".encode()[:-3] + b"\xe9\n",
            f'{FAULT_HEADER}\n"{HUGE_FIELD}",,silent,grid,\n',
            f"{FAULT_HEADER}\n{FAULT_LINES[1].replace('grid', HUGE_FIELD)}\n",
            f"{FAULT_HEADER}\n{FAULT_LINES[1]}\x00\n",
            f'{FAULT_HEADER}\n"{FAULT_LINES[1]}\n',
            "start,kind,target\n" * 3,
        ]
    ),
)


@pytest.fixture(scope="module")
def depot() -> Station:
    """The reference station, whose devices fault scripts name."""
    return load_station(REFERENCE_STATION)


def _check_faults(path: Path, found: list[ConfigProblem]) -> None:
    """Problems name the file, and a row and its field, or the fault and its target."""
    _check_rows(path, found)
    for problem in found:
        if problem.device is not None and problem.device.startswith("fault "):
            assert problem.field == "target", problem


@FUZZ
@given(content=FAULT_CONTENT)
def test_any_fault_script_loads_or_names_file_row_and_field(
    tree: Path, depot: Station, content: str | bytes
) -> None:
    """Fault scripts, on their own and checked against a station: a script, or ConfigError
    naming the file, the row (or fault) and the field."""
    path = write_file(tree / "scenarios" / "fuzz-faults.csv", content)
    for load in (load_faults, lambda p: load_faults(p, station=depot)):
        found = refused(load, path)
        if found is None:
            script = load_faults(path)
            assert all(f.start < f.end and f.target for f in script.faults)
            continue
        _check_faults(path, found)


FILE_NAMES = st.one_of(
    st.sampled_from(
        ["a\x00b.csv", "\x00", "x" * 300 + ".csv", "", ".", "..", "nowhere/faults.csv"]
        + [path.name for path in SCENARIOS]
    ),
    st.text(max_size=20).filter(lambda name: not name.startswith("/")),
)
PATH_LOADERS: list[Callable[[Path], object]] = [
    *SCENARIO_LOADERS,
    load_faults,
    load_acn_csv,
    load_acn_sessions,
]


@FUZZ
@given(name=FILE_NAMES)
def test_any_path_loads_or_names_it(tree: Path, name: str) -> None:
    """Paths the OS refuses (a NUL, a name too long), directories and missing files: every data
    loader answers with a ConfigError naming the path, never an OSError or ValueError."""
    path = tree / "scenarios" / name
    for load in PATH_LOADERS:
        found = refused(load, path)
        if found is not None:
            assert all(p.file == path for p in found), found


# --------------------------------------------------------------------------- what-if cases

BACKGROUND = "time,kw\n2026-11-10T00:00:00+08:00,-50\n2026-11-10T12:00:00+08:00,300\n"
LIMIT = "time,kw\n2026-11-10T00:00:00+08:00,4000\n2026-11-10T18:00:00+08:00,3500\n"
SERIES_CONTENT = st.one_of(
    mutated_lines(BACKGROUND.splitlines(), CELLS, rounds=(0, 3), swap=0), SERIES_TEXT, CELLS
)
# Each input of a what-if: as it is (but for its name), a little or much changed, or junk.
WHATIF_INPUTS: dict[str, st.SearchStrategy[dict[str, Any] | str | bytes]] = {
    "sessions": mutated_csv(least=0) | SCENARIO_CONTENT,
    "tariff": st.just(TARIFF_DOCS[TARIFFS[0].stem])
    | mutated(TARIFF_DOCS).map(lambda case: case[1])
    | FILE_CONTENT,
    "background": SERIES_CONTENT,
    "limit": SERIES_CONTENT,
    "faults": FAULT_CONTENT,
}


@st.composite
def whatif_case(draw: st.DrawFn) -> tuple[str, dict[str, Any] | str | bytes]:
    """Which input of a what-if is fuzzed, and its content (the others are good files)."""
    which = draw(st.sampled_from(sorted(WHATIF_INPUTS)))
    return which, draw(WHATIF_INPUTS[which])


@settings(FUZZ, max_examples=250)
@given(case=whatif_case(), warmup_days=st.integers(0, 2))
def test_any_whatif_case_loads_or_names_the_file(
    tree: Path, depot: Station, case: tuple[str, dict[str, Any] | str | bytes], warmup_days: int
) -> None:
    """A simulation's or what-if's inputs with one of them fuzzed (sessions, a second tariff,
    background, limit, faults): a scenario, or ConfigError whose every problem names that file."""
    which, content = case
    folder = tree / "scenarios"
    good = {
        "sessions": SCENARIOS[0],
        "tariff": TARIFFS[0],
        "background": write_file(folder / "whatif-background.csv", BACKGROUND),
        "limit": write_file(folder / "whatif-limit.csv", LIMIT),
        "faults": write_file(folder / "whatif-faults.csv", "\n".join(FAULT_LINES)),
    }
    suffix = ".toml" if which == "tariff" else ".csv"
    files = {**good, which: write_file(folder / f"whatif-fuzz-{which}{suffix}", content)}

    def load(_: Path) -> object:
        return load_scenario(
            depot,
            files["sessions"],
            # The fuzzed tariff second: its currency, not the first's, is the odd one out.
            [TARIFFS[0], files["tariff"]] if which == "tariff" else [TARIFFS[0]],
            background=files["background"],
            limit=files["limit"],
            faults=files["faults"],
            warmup_days=warmup_days,
        )

    found = refused(load, files[which])
    if found is None:
        scenario, cases = load(files[which])
        assert scenario.visits and scenario.start < scenario.end
        assert cases[0].tariff is scenario.tariff
        return
    assert all(same(p.file, files[which]) for p in found), found


# --------------------------------------------------------------------------- register codec

F32_MAX = struct.unpack(">f", b"\x7f\x7f\xff\xff")[0]
NUMERIC = [t for t in ValueType if t is not ValueType.STRING]
ORDERS: tuple[WordOrder, ...] = ("big", "little")
SCALES = st.sampled_from([1.0, 0.1, 0.01, 0.001, 10.0, 1000.0, 1e-6])
INT_RANGE = {
    ValueType.U16: (0, 2**16 - 1),
    ValueType.I16: (-(2**15), 2**15 - 1),
    ValueType.U32: (0, 2**32 - 1),
    ValueType.I32: (-(2**31), 2**31 - 1),
    ValueType.U64: (0, 2**64 - 1),
    ValueType.I64: (-(2**63), 2**63 - 1),
}


def _register(vtype: ValueType, order: WordOrder, scale: float) -> Register:
    return Register(
        name="fuzzed",
        address=10,
        type=vtype,
        words=vtype.words,
        access=Access.RW,
        scale=scale,
        word_order=order,
        write_fc=16,
    )


@settings(FUZZ, max_examples=300)
@given(
    vtype=st.sampled_from(NUMERIC),
    order=st.sampled_from(ORDERS),
    scale=SCALES,
    data=st.data(),
)
def test_in_range_values_round_trip_within_one_step(
    vtype: ValueType, order: WordOrder, scale: float, data: st.DataObject
) -> None:
    """Every value a type holds encodes to in-range words and decodes back within its step."""
    register = _register(vtype, order, scale)
    if vtype.is_integer:
        lo, hi = INT_RANGE[vtype]
        if scale != 1.0:  # a float holds a scaled value to the step only below 2**53
            lo, hi = max(lo, -(2**50)), min(hi, 2**50)
        steps = data.draw(st.integers(lo, hi))
        value: float = steps if scale == 1.0 else steps * scale
        tolerance = abs(value) * 1e-9 + (0 if scale == 1.0 else abs(scale) / 2)
    else:
        limit = 2.0**127 if vtype is ValueType.F32 else 1e300
        value = data.draw(st.floats(-limit, limit, width=32 if vtype is ValueType.F32 else 64))
        value *= scale
        tolerance = abs(value) * (1e-6 if vtype is ValueType.F32 else 1e-15) + 1e-300
    words = encode(register, value)
    assert len(words) == vtype.words
    assert all(0 <= w <= 0xFFFF for w in words)
    back = decode(register, words)
    assert isinstance(back, (int, float))
    assert abs(back - value) <= tolerance, (value, back)


OUT_OF_RANGE = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**400), 10**5000, 1e308, -1e308]),
    st.integers(2**64, 2**200),
    st.integers(-(2**200), -(2**64)),
)


@settings(FUZZ, max_examples=300)
@given(
    vtype=st.sampled_from(NUMERIC),
    order=st.sampled_from(ORDERS),
    scale=SCALES,
    value=OUT_OF_RANGE,
)
def test_values_a_type_cannot_hold_are_bad_values(
    vtype: ValueType, order: WordOrder, scale: float, value: float
) -> None:
    """NaN, inf and values beyond the type (after scaling) raise BadValue naming the register,
    on their own and through a map's write plan (which names the map and the register)."""
    register = _register(vtype, order, scale)
    if vtype.is_float:
        try:
            scaled = abs(value / scale)
        except OverflowError:
            scaled = math.inf
        if scaled <= (F32_MAX if vtype is ValueType.F32 else sys.float_info.max):
            return  # a float type holds large integers, and a double holds 1e308
    elif not isinstance(value, float) or math.isfinite(value):
        lo, hi = INT_RANGE[vtype]
        if lo <= round(Fraction(value) / Fraction(repr(scale))) <= hi:
            return  # a scaled integer type holds more than its range of steps
    with pytest.raises(BadValue) as caught:
        encode(register, value)
    assert caught.value.device == "fuzzed"
    regmap = RegisterMap("fuzz-map", "fuzz", "pile", {"fuzzed": register}, default_unit_id=1)
    with pytest.raises(BadValue) as caught:
        write_plan(regmap, {"fuzzed": value})
    assert caught.value.device == "fuzz-map"
    assert "fuzzed" in caught.value.message


@settings(FUZZ, max_examples=300)
@given(
    vtype=st.sampled_from(NUMERIC),
    order=st.sampled_from(ORDERS),
    scale=SCALES,
    data=st.data(),
)
def test_integers_one_step_outside_the_type_are_bad_values(
    vtype: ValueType, order: WordOrder, scale: float, data: st.DataObject
) -> None:
    """Just past either end of an integer type (in steps of its scale) raises BadValue."""
    if not vtype.is_integer:
        return
    lo, hi = INT_RANGE[vtype]
    steps = data.draw(st.sampled_from([lo - 1, hi + 1]) | st.integers(hi + 1, hi * 4 + 8))
    value = steps if scale == 1.0 else steps * scale
    if scale != 1.0 and lo * scale - scale / 2 <= value <= hi * scale + scale / 2:
        return  # the float product rounded back into the range
    with pytest.raises(BadValue) as caught:
        encode(_register(vtype, order, scale), value)
    assert caught.value.device == "fuzzed"
    assert vtype.value in caught.value.message


@settings(FUZZ, max_examples=300)
@given(
    vtype=st.sampled_from(list(ValueType)),
    words=st.lists(st.integers(-(2**40), 2**40), min_size=0, max_size=6),
)
def test_any_words_decode_or_raise_bad_value(vtype: ValueType, words: list[int]) -> None:
    """Whatever a transport hands over (wrong count, values outside 0-65535, bad UTF-8): a value,
    None, or BadValue naming the register."""
    size = vtype.words or 3
    register = Register(name="fuzzed", address=0, type=vtype, words=size)
    try:
        value = decode(register, words)
    except BadValue as err:
        assert err.device == "fuzzed"
        assert err.message
        return
    assert len(words) == size and all(0 <= w <= 0xFFFF for w in words)
    expected = str if vtype is ValueType.STRING else (int if vtype.is_integer else float)
    assert value is None or isinstance(value, expected)
