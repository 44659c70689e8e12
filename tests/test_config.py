"""Unit tests for base.config: the reference configs load, and every kind of error is
reported with its file, device and field, all at once. Broken configs are edited copies of the
whole configs/ tree in tmp_path, so relative paths (../tariffs, ../devices) still resolve.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from base.config import CONFIG_ROOT, REFERENCE_STATION, load_station
from base.devicemap import Access, RegisterMap, ValueType
from base.loading import ConfigError, ConfigProblem
from base.mapfile import load_register_map
from base.stationsettings import SecuritySettings
from base.tarifffile import load_tariff
from flexcharge import cli

STATION = "stations/bozhou-depot.toml"
TARIFF = "tariffs/guizhou-tou.toml"
PILE_MAP = "devices/flexcharge-dc-pile.toml"
METER_MAP = "devices/janitza-umg96rm-e.toml"
DC_MAP_DEVICE = "device map flexcharge DC pile regulation device"


@pytest.fixture
def configs(tmp_path: Path) -> Path:
    """A private copy of the whole configs/ tree."""
    root = tmp_path / "configs"
    shutil.copytree(CONFIG_ROOT, root)
    return root


def edit(root: Path, rel: str, old: str, new: str, *, nth: int | None = None) -> Path:
    """Replace `old` in `root/rel` by `new`: its only occurrence, or the `nth` (1-based)."""
    path = root / rel
    text = path.read_text(encoding="utf-8")
    count = text.count(old)
    if nth is None:
        assert count == 1, f"{old!r} occurs {count} times in {rel}"
        nth = 1
    assert count >= nth, f"{old!r} occurs {count} times in {rel}, wanted #{nth}"
    at = -1
    for _ in range(nth):
        at = text.index(old, at + 1)
    path.write_text(text[:at] + new + text[at + len(old) :], encoding="utf-8")
    return path


def station_problems(root: Path) -> list[ConfigProblem]:
    """The problems load_station reports for the copy (fails if it loads)."""
    with pytest.raises(ConfigError) as info:
        load_station(root / STATION)
    assert info.value.problems, "ConfigError without problems"
    return info.value.problems


def same_file(a: Path, b: Path) -> bool:
    """True if two paths name the same file (tmp_path may sit behind a symlink)."""
    return Path(a).resolve() == Path(b).resolve()


def find(
    problems: list[ConfigProblem], file: Path, device: str | None, field: str, contains: str = ""
) -> ConfigProblem:
    """The one problem about `file`, `device`, `field` (message containing `contains`)."""
    hits = [
        p
        for p in problems
        if same_file(p.file, file)
        and p.device == device
        and p.field == field
        and contains in p.message
    ]
    listing = "\n".join(f"  {p.file} | {p.device} | {p.field} | {p.message}" for p in problems)
    assert hits, f"no problem for {file.name} / {device} / {field} ~ {contains!r} in:\n{listing}"
    return hits[0]


# --------------------------------------------------------------------------- reference config


def test_reference_station_loads() -> None:
    """The reference station: 12 piles, limit 5000 x 0.95 x 0.90 = 4275 kW, meter 'grid'."""
    station = load_station(REFERENCE_STATION)
    assert len(station.piles) == 12
    assert [p.id for p in station.piles] == [f"P{i:02d}" for i in range(1, 13)]
    assert station.limit_kw == pytest.approx(4275.0, abs=1e-9)
    assert station.limit_kw == pytest.approx(5000 * 0.95 * 0.90, abs=1e-9)
    assert station.grid_meter.id == "grid"
    assert station.grid_meter.device == "janitza-umg96rm-e"
    assert station.info.timezone == "Asia/Shanghai"
    assert sum(p.max_kw for p in station.piles) == pytest.approx(4560.0)
    p01 = station.pile("P01")
    assert (p01.port, p01.max_kw, p01.min_kw, p01.fallback_kw, p01.comm_timeout_s) == (
        15021,
        480.0,
        20.0,
        100.0,
        10.0,
    )
    assert station.pile("P12").max_kw == 240.0
    assert station.control.period_s == 1.0
    assert station.control.reserve_kw == 80.0


def test_reference_tariff_spread_is_0_63() -> None:
    """Peak minus valley in the reference tariff is 0.63 yuan/kWh."""
    station = load_station(REFERENCE_STATION)
    prices = station.tariff.band_prices
    assert prices["peak"] - prices["valley"] == pytest.approx(0.63, abs=1e-9)
    assert set(prices) == {"valley", "flat", "peak", "critical"}
    assert station.tariff.currency == "CNY"
    assert same_file(station.tariff_path, CONFIG_ROOT / TARIFF)  # type: ignore[arg-type]


def test_reference_station_loads_janitza_meter_map() -> None:
    """The station's meter map is the Janitza map: FC3 (or FC4), f32 power in W at 19026."""
    station = load_station(REFERENCE_STATION)
    meter = station.map_for("janitza-umg96rm-e")
    assert meter.kind == "meter"
    assert meter.title == "Janitza UMG 96RM-E"
    power = meter["power"]
    assert (power.address, power.type, power.unit, power.words) == (19026, ValueType.F32, "W", 2)
    assert power.read_fcs == frozenset({3, 4})
    assert meter["energy_import"].unit == "Wh"


def test_reference_station_loads_dc_pile_map() -> None:
    """The piles' map is the DC pile map: i32 0.01 kW setpoint at 100, written with FC16."""
    station = load_station(REFERENCE_STATION)
    assert set(station.device_maps) == {"janitza-umg96rm-e", "flexcharge-dc-pile"}
    pile = station.map_for("flexcharge-dc-pile")
    assert pile.kind == "pile"
    setpoint = pile["setpoint"]
    assert (setpoint.address, setpoint.type, setpoint.scale) == (100, ValueType.I32, 0.01)
    assert setpoint.access is Access.RW
    assert setpoint.write_fc == 16
    assert pile["soc"].unavailable_all_ones is True
    assert pile.enums["state"][2] == "charging"
    assert pile.enums["mode"] == {0: "idle", 1: "charge", 2: "discharge"}


def test_all_reference_device_maps_load() -> None:
    """Every file in configs/devices loads on its own with no problems."""
    maps = {p.stem: load_register_map(p) for p in sorted((CONFIG_ROOT / "devices").glob("*.toml"))}
    assert set(maps) == {
        "abb-terra-ac",
        "alfen-ng9xx",
        "carlo-gavazzi-em24",
        "eastron-sdm630",
        "flexcharge-dc-pile",
        "flexcharge-metering-terminal",
        "janitza-umg96rm-e",
        "vestel-evc04",
    }
    assert maps["eastron-sdm630"]["power"].read_fcs == frozenset({4})
    assert all(m.problems() == [] for m in maps.values())


def _facts(regmap: RegisterMap, name: str) -> tuple[object, ...]:
    reg = regmap[name]
    unit = regmap.unit_of(reg)
    fcs = tuple(sorted(reg.read_fcs))
    return (
        reg.address,
        reg.type.value,
        reg.scale,
        reg.unit,
        reg.word_order,
        unit,
        fcs,
        reg.write_fc,
    )


def test_real_device_maps_are_as_documented() -> None:
    """Spot checks against the makers' published register maps: addresses, types, units, scaling,
    word order, unit ids and function codes of the registers the drivers depend on."""
    load = lambda name: load_register_map(CONFIG_ROOT / "devices" / f"{name}.toml")  # noqa: E731
    alfen, vestel, abb, em24 = (
        load(n) for n in ("alfen-ng9xx", "vestel-evc04", "abb-terra-ac", "carlo-gavazzi-em24")
    )
    assert (alfen.driver, alfen.max_connections, alfen.idle_timeout_s) == ("alfen", 2, 60)
    assert _facts(alfen, "station_max_current") == (1100, "f32", 1.0, "A", "big", 200, (3,), None)
    assert _facts(alfen, "scn_max_current_l3")[:2] == (1421, "f32")
    assert _facts(alfen, "setpoint") == (1210, "f32", 1.0, "A", "big", 1, (3,), 16)
    assert _facts(alfen, "energy_import")[:4] == (374, "f64", 1.0, "Wh")
    assert _facts(alfen, "mode3_state")[:2] == (1201, "string") and alfen["mode3_state"].words == 5
    assert _facts(alfen, "validity_time_left")[:2] == (1208, "u32")
    assert _facts(alfen, "phases") == (1215, "u16", 1.0, "", "big", 1, (3,), 6)
    assert (vestel.driver, vestel.default_unit_id) == ("vestel", 255)
    assert _facts(vestel, "current_l1") == (1008, "u16", 1.0, "mA", "big", 255, (3, 4), None)
    assert _facts(vestel, "power") == (1020, "u32", 1.0, "W", "big", 255, (3, 4), None)
    assert _facts(vestel, "energy_import")[:4] == (1036, "u32", 0.1, "kWh")
    # evcc reads the charging current back with FC3.
    assert _facts(vestel, "setpoint") == (5004, "u16", 1.0, "A", "big", 255, (3, 4), 6)
    assert vestel["firmware_version"].address == 230 and vestel["firmware_version"].words == 50
    assert vestel["firmware_version"].text_encoding == "utf-16"
    assert _facts(vestel, "error_code")[:2] == (1006, "u32")
    assert vestel.function_codes == frozenset({3, 4, 6, 16})
    assert alfen.function_codes == frozenset({3, 6, 16})
    assert _facts(vestel, "power_limit") == (5000, "u32", 1.0, "W", "big", 255, (), 16)
    assert _facts(vestel, "life_bit")[0] == 6000 and vestel["life_bit"].access is Access.W
    assert (vestel["failsafe_current"].address, vestel["comm_timeout"].address) == (2000, 2002)
    assert _facts(abb, "setpoint") == (0x4100, "u32", 1.0, "mA", "big", 1, (), 16)
    assert _facts(abb, "voltage_l1") == (0x4016, "u32", 0.1, "V", "big", 1, (3,), None)
    assert _facts(abb, "comm_timeout") == (0x4106, "u16", 1.0, "s", "big", 1, (), 16)
    assert abb.enums["state"][4] == "C2"
    # The state is a byte of the second register: bits 8-15 of the pair, bit 7 of the byte set
    # below the rated current.
    assert _facts(abb, "state")[:2] == (0x400C, "u32") and abb["state"].mask == 0xFF00
    assert abb.enums["state"][0x84] == "C2"
    assert [abb[n].address for n in ("serial_number", "firmware_version", "error_code")] == [
        0x4000,
        0x4004,
        0x4008,
    ]
    assert _facts(em24, "power") == (0x28, "i32", 0.1, "W", "little", 1, (4,), None)
    assert _facts(em24, "current_l1")[:4] == (0x0C, "i32", 0.001, "A")
    assert _facts(em24, "energy_export")[:4] == (0x5C, "i32", 0.1, "kWh")


def test_copy_of_reference_loads(configs: Path) -> None:
    """The unedited copy loads, so every failure below comes from its edit."""
    station = load_station(configs / STATION)
    assert len(station.piles) == 12


# --------------------------------------------------------------------------- station errors


def test_negative_transformer_rating(configs: Path) -> None:
    """A negative rating_kva is reported against transformer.rating_kva in the station file."""
    edit(configs, STATION, "rating_kva = 5000.0", "rating_kva = -5000.0")
    problems = station_problems(configs)
    find(problems, configs / STATION, None, "transformer.rating_kva", "greater than 0")


def test_pile_above_site_limit(configs: Path) -> None:
    """A 6000 kW pile is above the 4275 kW site limit: pile P03, max_kw."""
    edit(
        configs,
        STATION,
        'id = "P03"\nport = 15023\nmax_kw = 480.0',
        'id = "P03"\nport = 15023\nmax_kw = 6000.0',
    )
    problems = station_problems(configs)
    problem = find(problems, configs / STATION, "pile P03", "max_kw")
    assert "4275" in problem.message
    assert "6000" in problem.message


def test_unknown_field_in_control(configs: Path) -> None:
    """A misspelt [control] key is an unknown field (and the real one is then missing)."""
    edit(configs, STATION, "reserve_kw = 80.0", "reserve_kv = 80.0")
    problems = station_problems(configs)
    find(problems, configs / STATION, None, "control.reserve_kv", "unknown field")
    find(problems, configs / STATION, None, "control.reserve_kw", "missing")


def test_unknown_field_in_pile_defaults(configs: Path) -> None:
    """A misspelt [pile_defaults] key is reported as pile_defaults.<key>."""
    edit(configs, STATION, "min_kw = 20.0 ", "minkw = 20.0 ")
    problems = station_problems(configs)
    find(problems, configs / STATION, None, "pile_defaults.minkw", "unknown field")
    # and, since the default never applied, each pile lacks min_kw
    find(problems, configs / STATION, "pile P07", "min_kw", "missing")


def test_unknown_field_in_a_pile(configs: Path) -> None:
    """A misspelt key in one [[piles]] entry names that pile."""
    edit(configs, STATION, 'id = "P05"\nport = 15025', 'id = "P05"\nprot = 15025')
    problems = station_problems(configs)
    find(problems, configs / STATION, "pile P05", "prot", "unknown field")
    find(problems, configs / STATION, "pile P05", "port", "missing")


def test_required_field_missing(configs: Path) -> None:
    """Leaving out [control] ramp_kw_per_s is reported as required but missing."""
    edit(configs, STATION, "ramp_kw_per_s = 20.0", "")
    problems = station_problems(configs)
    problem = find(problems, configs / STATION, None, "control.ramp_kw_per_s")
    assert "missing" in problem.message
    assert len(problems) == 1


def test_required_pile_field_missing(configs: Path) -> None:
    """A pile without max_kw (and no default for it) is reported on pile P12, max_kw."""
    edit(configs, STATION, 'id = "P12"\nport = 15032\nmax_kw = 240.0', 'id = "P12"\nport = 15032')
    problems = station_problems(configs)
    problem = find(problems, configs / STATION, "pile P12", "max_kw")
    assert problem.message == "required, but missing"
    assert len(problems) == 1


def test_required_section_missing(configs: Path) -> None:
    """A station without [transformer] reports the missing section."""
    edit(configs, STATION, "[transformer]\n", "[transformr]\n")
    problems = station_problems(configs)
    find(problems, configs / STATION, None, "transformer", "missing")
    find(problems, configs / STATION, None, "transformr", "unknown section")


def test_unknown_device_map_for_meter(configs: Path) -> None:
    """A meter naming a register map that does not exist: meter grid, device."""
    edit(configs, STATION, 'device = "janitza-umg96rm-e"', 'device = "janitza-umg604"')
    problems = station_problems(configs)
    problem = find(problems, configs / STATION, "meter grid", "device")
    assert "janitza-umg604" in problem.message


def test_unknown_device_map_for_pile(configs: Path) -> None:
    """A pile naming a register map that does not exist: pile P05, device."""
    edit(configs, STATION, 'id = "P05"\n', 'id = "P05"\ndevice = "abb-terra-hp"\n')
    problems = station_problems(configs)
    problem = find(problems, configs / STATION, "pile P05", "device")
    assert "abb-terra-hp" in problem.message


def test_two_devices_on_same_endpoint(configs: Path) -> None:
    """Two piles on the same host, port and unit: the second is reported, naming the first."""
    edit(configs, STATION, 'id = "P02"\nport = 15022', 'id = "P02"\nport = 15021')
    problems = station_problems(configs)
    problem = find(problems, configs / STATION, "pile P02", "port")
    assert "pile P01" in problem.message


def test_pile_on_meter_endpoint(configs: Path) -> None:
    """A pile on the grid meter's host/port/unit is reported, naming the meter."""
    edit(configs, STATION, 'id = "P04"\nport = 15024', 'id = "P04"\nport = 15020')
    problems = station_problems(configs)
    problem = find(problems, configs / STATION, "pile P04", "port")
    assert "meter grid" in problem.message


def test_fallback_power_would_overload_site(configs: Path) -> None:
    """fallback_kw = 480 for all: 12 x 480 + the depot's peak exceeds the limit."""
    edit(configs, STATION, "fallback_kw = 100.0", "fallback_kw = 480.0")
    problems = station_problems(configs)
    problem = find(problems, configs / STATION, "piles", "fallback_kw", "overload")
    assert "5760" in problem.message
    assert "4275" in problem.message
    # piles rated below 480 kW also get a per-pile complaint
    find(problems, configs / STATION, "pile P09", "fallback_kw", "above max_kw")


def test_fallback_overload_without_per_pile_errors(configs: Path) -> None:
    """Fallback powers each within their pile but together too much are still caught."""
    edit(configs, STATION, "fallback_kw = 100.0", "fallback_kw = 240.0")
    problems = station_problems(configs)
    assert [(p.device, p.field) for p in problems] == [("piles", "fallback_kw")]


def test_comm_timeout_shorter_than_two_periods(configs: Path) -> None:
    """comm_timeout_s = 1.5 with a 1 s period is reported for every pile."""
    edit(configs, STATION, "comm_timeout_s = 10.0", "comm_timeout_s = 1.5")
    problems = station_problems(configs)
    for index in range(1, 13):
        find(problems, configs / STATION, f"pile P{index:02d}", "comm_timeout_s", "twice")


def test_comm_timeout_of_exactly_two_periods_is_fine(configs: Path) -> None:
    """comm_timeout_s = 2 x period_s is accepted (the limit is 'shorter than twice')."""
    edit(configs, STATION, "comm_timeout_s = 10.0", "comm_timeout_s = 2.0")
    assert load_station(configs / STATION).pile("P01").comm_timeout_s == 2.0


def test_unknown_time_zone(configs: Path) -> None:
    """A misspelt zone name in [station] is reported against station.timezone."""
    edit(configs, STATION, 'timezone = "Asia/Shanghai"', 'timezone = "Asia/Shanghia"')
    problems = station_problems(configs)
    problem = find(problems, configs / STATION, None, "station.timezone")
    assert "Asia/Shanghia" in problem.message


def test_station_and_tariff_zones_differ(configs: Path) -> None:
    """A station in another zone than its tariff is reported."""
    edit(configs, STATION, 'timezone = "Asia/Shanghai"', 'timezone = "Asia/Chongqing"')
    problems = station_problems(configs)
    find(problems, configs / STATION, "station", "timezone", "Asia/Shanghai")


def test_toml_syntax_error(configs: Path) -> None:
    """A broken table header is reported as invalid TOML in the station file."""
    edit(configs, STATION, "[control]", "[control")
    problems = station_problems(configs)
    assert len(problems) == 1
    problem = problems[0]
    assert same_file(problem.file, configs / STATION)
    assert problem.device is None
    assert problem.field == ""
    assert "not valid TOML" in problem.message


def test_missing_station_file(tmp_path: Path) -> None:
    """A station path that does not exist is 'file not found' naming that path."""
    with pytest.raises(ConfigError) as info:
        load_station(tmp_path / "nowhere.toml")
    (problem,) = info.value.problems
    assert problem.file == tmp_path / "nowhere.toml"
    assert problem.message == "file not found"


def test_missing_tariff_file(configs: Path) -> None:
    """A station naming a tariff file that does not exist reports that file as not found."""
    edit(
        configs,
        STATION,
        'tariff = "../tariffs/guizhou-tou.toml"',
        'tariff = "../tariffs/guizhou.toml"',
    )
    problems = station_problems(configs)
    problem = find(problems, configs / "tariffs/guizhou.toml", None, "")
    assert problem.message == "file not found"


# --------------------------------------------------------------------------- tariff errors


MIDDAY_FLAT = '{ start = "12:00", end = "16:00", band = "flat" }'  # 1st: standard season
SEASON_PERIODS = "seasons[0].day_types[0].periods"
STANDARD_DAY = "season standard, day type every day"


def test_tariff_bands_overlap(configs: Path) -> None:
    """A period starting at 11:00 while the one before ends at 12:00 overlaps it."""
    edit(
        configs,
        TARIFF,
        MIDDAY_FLAT,
        '{ start = "11:00", end = "16:00", band = "flat" }',
        nth=1,
    )
    problems = station_problems(configs)
    problem = find(problems, configs / TARIFF, STANDARD_DAY, f"{SEASON_PERIODS}[3]", "overlaps")
    assert "11:00" in problem.message


def test_tariff_gap_in_day(configs: Path) -> None:
    """A period ending at 15:00 with the next at 16:00 leaves a gap, reported with its times."""
    edit(
        configs,
        TARIFF,
        MIDDAY_FLAT,
        '{ start = "12:00", end = "15:00", band = "flat" }',
        nth=1,
    )
    problems = station_problems(configs)
    problem = find(problems, configs / TARIFF, STANDARD_DAY, SEASON_PERIODS)
    assert "15:00" in problem.message
    assert "16:00" in problem.message


def test_tariff_day_not_reaching_midnight(configs: Path) -> None:
    """A summer day whose last period ends at 23:00 is reported as a gap to 24:00."""
    # the second occurrence is the summer season's last period
    edit(configs, TARIFF, 'start = "21:00", end = "24:00"', 'start = "21:00", end = "23:00"', nth=2)
    problems = station_problems(configs)
    find(
        problems,
        configs / TARIFF,
        "season summer, day type every day",
        "seasons[1].day_types[0].periods",
        "23:00 to 24:00",
    )


def test_tariff_month_without_season(configs: Path) -> None:
    """Dropping December from the standard season leaves month 12 uncovered."""
    edit(
        configs,
        TARIFF,
        "months = [1, 2, 3, 4, 5, 6, 9, 10, 11, 12]",
        "months = [1, 2, 3, 4, 5, 6, 9, 10, 11]",
    )
    problems = station_problems(configs)
    problem = find(problems, configs / TARIFF, "tariff", "seasons", "month 12")
    assert problem.message.endswith("12")


def test_tariff_month_in_two_seasons(configs: Path) -> None:
    """A month listed in two seasons is reported on the second season's months."""
    edit(configs, TARIFF, "months = [7, 8]", "months = [7, 8, 9]")
    problems = station_problems(configs)
    find(problems, configs / TARIFF, "season summer", "months", "month 9")


def test_tariff_unknown_band(configs: Path) -> None:
    """A period naming a band that [bands] lacks is reported on that period's band."""
    # the first occurrence is in the standard season
    edit(configs, TARIFF, 'end = "09:00", band = "flat"', 'end = "09:00", band = "shoulder"', nth=1)
    problems = station_problems(configs)
    problem = find(problems, configs / TARIFF, STANDARD_DAY, f"{SEASON_PERIODS}[1].band")
    assert "shoulder" in problem.message


def test_tariff_unknown_time_zone(configs: Path) -> None:
    """An unknown zone in the tariff file is reported against the tariff's timezone field."""
    edit(configs, TARIFF, 'timezone = "Asia/Shanghai"', 'timezone = "Mars/Olympus"')
    with pytest.raises(ConfigError) as info:
        load_tariff(configs / TARIFF)
    find(info.value.problems, configs / TARIFF, "tariff", "timezone", "Mars/Olympus")


# --------------------------------------------------------------------------- device map errors


def test_register_address_out_of_range(configs: Path) -> None:
    """A register at 70000 is reported against registers.<name>.address in the map file."""
    edit(configs, PILE_MAP, "address = 110", "address = 70000")
    problems = station_problems(configs)
    problem = find(problems, configs / PILE_MAP, DC_MAP_DEVICE, "registers.comm_timeout.address")
    assert "65535" in problem.message


def test_register_running_past_65535(configs: Path) -> None:
    """A 2-word register at 65535 ends beyond the address space."""
    edit(configs, PILE_MAP, "address = 111", "address = 65535")
    problems = station_problems(configs)
    find(problems, configs / PILE_MAP, DC_MAP_DEVICE, "registers.fallback_power", "65535")


def test_registers_overlap(configs: Path) -> None:
    """fallback_power moved onto comm_timeout's address overlaps it."""
    edit(configs, PILE_MAP, "address = 111", "address = 110")
    problems = station_problems(configs)
    problem = find(problems, configs / PILE_MAP, DC_MAP_DEVICE, "registers.fallback_power")
    assert "overlaps comm_timeout" in problem.message


def test_fc6_on_two_word_register_in_map(configs: Path) -> None:
    """The i32 setpoint declared with write_fc 6 is reported."""
    text = (configs / PILE_MAP).read_text(encoding="utf-8")
    start = text.index("[registers.setpoint]")
    end = text.index("write_fc = 16", start)
    text = text[:end] + "write_fc = 6" + text[end + len("write_fc = 16") :]
    (configs / PILE_MAP).write_text(text, encoding="utf-8")
    problems = station_problems(configs)
    find(problems, configs / PILE_MAP, DC_MAP_DEVICE, "registers.setpoint", "FC16")


def test_unknown_field_in_register(configs: Path) -> None:
    """A misspelt key in a register entry is reported as registers.<name>.<key>."""
    edit(configs, METER_MAP, 'address = 19026\ntype = "f32"', 'address = 19026\ntpye = "f32"')
    problems = station_problems(configs)
    find(
        problems,
        configs / METER_MAP,
        "device map Janitza UMG 96RM-E",
        "registers.power.tpye",
        "unknown field",
    )
    find(
        problems,
        configs / METER_MAP,
        "device map Janitza UMG 96RM-E",
        "registers.power.type",
        "missing",
    )


def test_meter_map_lacking_power(configs: Path) -> None:
    """A meter map without its 'power' register is reported as missing a required register."""
    edit(configs, METER_MAP, "[registers.power]\n", "[registers.total_power]\n")
    problems = station_problems(configs)
    find(
        problems,
        configs / METER_MAP,
        "device map Janitza UMG 96RM-E",
        "registers.power",
        "must define",
    )


# --------------------------------------------------------------------------- all at once


def test_several_errors_reported_at_once(configs: Path) -> None:
    """Errors in the station, the tariff and a device map all come back in one ConfigError."""
    edit(configs, STATION, "rating_kva = 5000.0", "rating_kva = -5000.0")
    edit(configs, STATION, 'id = "P02"\nport = 15022', 'id = "P02"\nport = 15021')
    edit(configs, STATION, "reserve_kw = 80.0", "reserve_kw = 80.0\nreserv_kw = 1.0")
    edit(
        configs,
        TARIFF,
        "months = [1, 2, 3, 4, 5, 6, 9, 10, 11, 12]",
        "months = [1, 2, 3, 4, 5, 6, 9, 10, 11]",
    )
    edit(configs, TARIFF, 'end = "09:00", band = "flat"', 'end = "09:00", band = "shoulder"', nth=1)
    edit(configs, PILE_MAP, "address = 111", "address = 110")
    edit(configs, METER_MAP, "address = 19076", "address = 90000")
    problems = station_problems(configs)
    find(problems, configs / STATION, None, "transformer.rating_kva")
    find(problems, configs / STATION, "pile P02", "port")
    find(problems, configs / STATION, None, "control.reserv_kw", "unknown field")
    find(problems, configs / TARIFF, "tariff", "seasons", "month 12")
    find(problems, configs / TARIFF, STANDARD_DAY, f"{SEASON_PERIODS}[1].band", "shoulder")
    find(problems, configs / PILE_MAP, DC_MAP_DEVICE, "registers.fallback_power", "overlaps")
    find(
        problems,
        configs / METER_MAP,
        "device map Janitza UMG 96RM-E",
        "registers.energy_export.address",
    )
    # The station also names who pulled in each broken file: its tariff, the first pile, the meter.
    find(problems, configs / STATION, None, "station.tariff", "does not load")
    find(problems, configs / STATION, "pile P01", "device", "does not load")
    find(problems, configs / STATION, "meter grid", "device", "does not load")
    files = {Path(p.file).resolve() for p in problems}
    assert files == {(configs / rel).resolve() for rel in (STATION, TARIFF, PILE_MAP, METER_MAP)}
    assert len(problems) == 10


def test_config_error_message_lists_every_problem(configs: Path) -> None:
    """str(ConfigError) counts the problems and has one line per problem naming the field."""
    edit(configs, STATION, "rating_kva = 5000.0", "rating_kva = -5000.0")
    edit(configs, TARIFF, "months = [7, 8]", "months = [7]")
    with pytest.raises(ConfigError) as info:
        load_station(configs / STATION)
    text = str(info.value)
    assert text.startswith("3 problem(s)")
    assert "transformer.rating_kva" in text
    assert "station.tariff: the tariff '../tariffs/guizhou-tou.toml'" in text
    assert "no season covers month 8" in text
    assert "bozhou-depot.toml" in text
    assert "guizhou-tou.toml" in text


# --------------------------------------------------------------------------- CLI


def test_cli_check_config_reference_station(capsys: pytest.CaptureFixture[str]) -> None:
    """check-config on the reference station exits 0 and summarises it."""
    assert cli.main(["check-config", str(REFERENCE_STATION)]) == 0
    out = capsys.readouterr().out
    assert "valid station" in out
    assert "12 piles" in out
    assert "4,275 kW" in out


def test_cli_check_config_tariff_and_map(capsys: pytest.CaptureFixture[str]) -> None:
    """check-config also accepts a tariff file and a device map file."""
    assert cli.main(["check-config", str(CONFIG_ROOT / TARIFF)]) == 0
    assert cli.main(["check-config", str(CONFIG_ROOT / PILE_MAP)]) == 0
    out = capsys.readouterr().out
    assert "valid tariff" in out
    assert "valid device map" in out


def test_cli_check_config_broken_station(configs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config on a broken copy exits 2 and prints each problem's file and field."""
    edit(configs, STATION, "rating_kva = 5000.0", "rating_kva = -5000.0")
    edit(configs, PILE_MAP, "address = 111", "address = 110")
    assert cli.main(["check-config", str(configs / STATION)]) == 2
    out = capsys.readouterr().out
    assert "3 problem(s)" in out
    assert "bozhou-depot.toml" in out
    assert "transformer.rating_kva" in out
    assert "flexcharge-dc-pile.toml" in out
    assert "registers.fallback_power" in out


def test_cli_check_config_broken_tariff_file(
    configs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config on a broken tariff file exits 2 naming the file and field."""
    edit(configs, TARIFF, "months = [7, 8]", "months = [7]")
    assert cli.main(["check-config", str(configs / TARIFF)]) == 2
    out = capsys.readouterr().out
    assert "guizhou-tou.toml" in out
    assert "seasons" in out
    assert "month 8" in out


def test_cli_check_config_syntax_error(configs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config on a file with a TOML syntax error exits 2 and says so."""
    edit(configs, STATION, "[control]", "[control")
    assert cli.main(["check-config", str(configs / STATION)]) == 2
    out = capsys.readouterr().out
    assert "bozhou-depot.toml" in out
    assert "not valid TOML" in out


def test_cli_check_config_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check-config on a missing file exits 2 naming the file."""
    assert cli.main(["check-config", str(tmp_path / "nowhere.toml")]) == 2
    out = capsys.readouterr().out
    assert "nowhere.toml" in out
    assert "file not found" in out


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("latin1.toml", b'[station]\nname = "Z\xfcrich"\n', "not valid TOML: not UTF-8"),
        ("a\x00b.toml", b"", "the path contains a NUL character"),
        ("deep.toml", b"x = " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ],
)
def test_cli_check_config_unreadable_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, content: bytes, words: str
) -> None:
    """check-config's look at the file's keys (which loader it is for) went past the loader's
    checks: bytes that are not UTF-8 raised UnicodeDecodeError."""
    path = tmp_path / name
    if "\x00" not in name:
        path.write_bytes(content)
    assert cli.main(["check-config", str(path)]) == 2
    assert words in " ".join(capsys.readouterr().out.split())


# --------------------------------------------------------------------------- real devices, security

MIXED = "stations/mixed-site.toml"


def mixed_problems(root: Path) -> list[ConfigProblem]:
    """The problems load_station reports for the mixed station copy (fails if it loads)."""
    with pytest.raises(ConfigError) as info:
        load_station(root / MIXED)
    return info.value.problems


def test_mixed_station_loads_with_every_protocol() -> None:
    """The mixed reference station: three AC makes, DC piles, TLS, an OPC-UA terminal."""
    station = load_station(CONFIG_ROOT / MIXED)
    protocols = {d.id: d.protocol for d in station.devices}
    assert protocols["grid"] == "modbus-tls" and protocols["terminal"] == "opcua"
    assert {station.map_for(p.device).driver for p in station.piles} == {
        "alfen",
        "vestel",
        "abb-terra-ac",
        None,
    }
    assert sum(p.bidirectional for p in station.piles) == 2
    assert station.terminal is not None and station.terminal.opcua_url.startswith("opc.tcp://")
    assert station.security is not None and station.security.opcua_password_env


def test_secure_devices_need_a_security_section(configs: Path) -> None:
    """TLS and OPC-UA devices without [security] are reported, naming them."""
    edit(configs, MIXED, 'certs = "../../var/certs"', 'certs = "x"')
    path = edit(configs, MIXED, "[security]\n", "[unused]\n")
    problems = mixed_problems(configs)
    find(problems, path, None, "unused", "unknown section")
    edit(configs, MIXED, "[unused]\n", "")
    edit(configs, MIXED, 'certs = "x"\n', "")
    edit(configs, MIXED, 'opcua_user = "flexcharge"\n', "")
    edit(configs, MIXED, "opcua_password_env", "# opcua_password_env")
    problem = find(mixed_problems(configs), path, None, "security", "need [security]")
    assert "grid" in problem.message and "terminal" in problem.message and "DC3" in problem.message


def test_password_source_rules(configs: Path) -> None:
    """A user needs exactly one password source; a source without a user is an error."""
    path = edit(
        configs,
        MIXED,
        'opcua_password_env = "FLEXCHARGE_OPCUA_PASSWORD"',
        'opcua_password_env = "FLEXCHARGE_OPCUA_PASSWORD"\nopcua_password_file = "pw"',
    )
    find(mixed_problems(configs), path, "security", "opcua_user", "exactly one")
    edit(configs, MIXED, 'opcua_user = "flexcharge"\n', "")
    find(mixed_problems(configs), path, "security", "opcua_user", "no user name")


def test_ac_charger_rules(configs: Path) -> None:
    """An AC charger cannot discharge, is not on OPC-UA, and its fallback is 0 or >= 6 A."""
    path = edit(configs, MIXED, "fallback_kw = 4.2", "fallback_kw = 2.0", nth=3)
    edit(
        configs,
        MIXED,
        'device = "abb-terra-ac"\nport = 15215',
        'device = "abb-terra-ac"\nport = 15215\nmax_discharge_kw = 11.0',
    )
    edit(
        configs,
        MIXED,
        'device = "alfen-ng9xx"\nport = 15212',
        'device = "alfen-ng9xx"\nprotocol = "opcua"\nport = 15212',
    )
    problems = mixed_problems(configs)
    find(problems, path, "pile VES1", "fallback_kw", "minimum current")
    find(problems, path, "pile ABB1", "max_discharge_kw", "cannot discharge")
    find(problems, path, "pile ALF2", "protocol", "Modbus map")


def test_opcua_fields_only_on_opcua_devices(configs: Path) -> None:
    """object and opcua_security on a Modbus device are mistakes, not silently ignored."""
    path = edit(configs, MIXED, "port = 15221\n", 'port = 15221\nobject = "dc1"\n')
    edit(configs, MIXED, "port = 15222\n", 'port = 15222\nopcua_security = "none"\n')
    problems = mixed_problems(configs)
    find(problems, path, "pile DC1", "object", "only OPC-UA")
    find(problems, path, "pile DC2", "opcua_security", "only OPC-UA")


def test_charger_map_needs_a_known_driver_and_its_registers(configs: Path) -> None:
    """A charger map names one of the makes flexcharge drives and has that make's registers."""
    path = edit(configs, "devices/vestel-evc04.toml", 'driver = "vestel"', 'driver = "keba"')
    with pytest.raises(ConfigError) as info:
        load_register_map(path)
    find(
        info.value.problems, path, "device map Vestel EVC04 / Webasto Next", "device.driver", "keba"
    )
    edit(configs, "devices/vestel-evc04.toml", 'driver = "keba"', 'driver = "vestel"')
    edit(configs, "devices/vestel-evc04.toml", "[registers.life_bit]", "[registers.lifebit]")
    with pytest.raises(ConfigError) as info:
        load_register_map(path)
    find(info.value.problems, path, "device map Vestel EVC04 / Webasto Next", "registers.life_bit")


def test_check_config_never_prints_secrets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The OPC-UA password is read from the environment and appears in no output."""
    secret = "s3cret-horse-battery"
    monkeypatch.setenv("FLEXCHARGE_OPCUA_PASSWORD", secret)
    assert cli.main(["check-config", str(CONFIG_ROOT / MIXED)]) == 0
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    assert "modbus-tls" in out.out and "opcua" in out.out
    station = load_station(CONFIG_ROOT / MIXED)
    assert station.opcua_credentials() == ("flexcharge", secret)
    assert secret not in repr(station) and secret not in str(station.security)


# --------------------------------------------------------------------------- found by fuzzing

LOADERS = [load_station, load_tariff, load_register_map]
FILES = [STATION, TARIFF, PILE_MAP]


@pytest.mark.parametrize(
    "content",
    [
        b'name = "\xff"\n',
        b"x = " + b"1" * 5000 + b"\n",
        b"x = " + b"[" * 3000 + b"]" * 3000 + b"\n",
        b"x = " + b"{a = " * 2000 + b"1" + b"}" * 2000 + b"\n",
    ],
    ids=["not-utf8", "5000-digit-integer", "deep-array", "deep-table"],
)
@pytest.mark.parametrize(("load", "rel"), list(zip(LOADERS, FILES, strict=True)))
def test_files_tomllib_chokes_on_are_config_errors(
    configs: Path, load: Callable[[Path], object], rel: str, content: bytes
) -> None:
    """Bytes that make tomllib raise UnicodeDecodeError, ValueError or RecursionError are a
    ConfigError naming the file as not valid TOML."""
    path = configs / rel
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load(path)
    [problem] = info.value.problems
    assert (problem.file, problem.device, problem.field) == (path, None, "")
    assert problem.message.startswith("not valid TOML")


def test_time_zone_name_too_long_for_the_os_is_a_config_error(configs: Path) -> None:
    """A time zone name longer than a file name may be (OSError in ZoneInfo) is unknown."""
    zone = "Asia/" + "x" * 300
    edit(configs, STATION, 'timezone = "Asia/Shanghai"', f'timezone = "{zone}"')
    edit(configs, TARIFF, 'timezone = "Asia/Shanghai"', f'timezone = "{zone}"')
    find(station_problems(configs), configs / STATION, None, "station.timezone", "unknown time")
    with pytest.raises(ConfigError) as info:
        load_tariff(configs / TARIFF)
    find(info.value.problems, configs / TARIFF, "tariff", "timezone", "unknown time zone")


def test_empty_section_name_is_shown_quoted(configs: Path) -> None:
    """A section named "" is reported as '""', not as a problem with no field."""
    path = configs / PILE_MAP
    path.write_text('"" = 1\n' + path.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_register_map(path)
    find(info.value.problems, path, DC_MAP_DEVICE, '""', "unknown section")


def test_map_that_does_not_load_is_named_by_the_pile_using_it(configs: Path) -> None:
    """A pile whose device names a file that is no register map: the pile is named too."""
    path = edit(
        configs, STATION, "[[piles]]\n", '[[piles]]\ndevice = "../tariffs/guizhou-tou"\n', nth=1
    )
    problems = station_problems(configs)
    find(problems, path, "pile P01", "device", "'../tariffs/guizhou-tou'")
    find(problems, configs / TARIFF, "device map guizhou-tou", "registers", "at least one")


def test_tariff_that_does_not_load_is_named_by_the_station(configs: Path) -> None:
    """A station whose tariff file is broken or missing says so in its own [station] table."""
    path = edit(configs, STATION, "guizhou-tou.toml", "no-such-tariff.toml")
    problems = station_problems(configs)
    find(problems, path, None, "station.tariff", "does not load")
    find(problems, configs / "tariffs" / "no-such-tariff.toml", None, "", "file not found")


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('tariff = "../tariffs/guizhou-tou.toml"', 'tariff = "a\\u0000b"', "station.tariff"),
        ('tariff = "../tariffs/guizhou-tou.toml"', f'tariff = "{"x" * 300}"', "station.tariff"),
        ('name = "Bozhou logistics depot"', 'name = "B"\ndevices = "a\\u0000b"', "device"),
        ('name = "Bozhou logistics depot"', f'name = "B"\ndevices = "{"x" * 300}"', "device"),
        ('device = "janitza-umg96rm-e"', 'device = "a\\u0000b"', "device"),
        ('device = "janitza-umg96rm-e"', f'device = "{"x" * 300}"', "device"),
    ],
    ids=["tariff-nul", "tariff-too-long", "devices-nul", "devices-too-long", "map-nul", "map-long"],
)
def test_paths_the_os_refuses_are_config_errors(
    configs: Path, old: str, new: str, field: str
) -> None:
    """A NUL or an over-long name in the tariff path, the devices dir or a map name is a problem
    in the station file, not a ValueError or OSError from the OS."""
    path = edit(configs, STATION, old, new)
    problems = station_problems(configs)
    assert any(p.file == path and p.field == field for p in problems), problems


def test_a_password_file_that_is_not_text_names_the_setting(tmp_path: Path) -> None:
    """A binary OPC-UA password file is a ConfigError naming the station's setting, not a raw
    UnicodeDecodeError when the daemon connects."""
    from dataclasses import replace as swap

    station = load_station(REFERENCE_STATION)
    secret = tmp_path / "opcua.pw"
    secret.write_bytes(b"\xff\xfe\x00binary")
    security = SecuritySettings(
        certs="certs", opcua_user="flexcharge", opcua_password_file=str(secret)
    )
    with pytest.raises(ConfigError) as caught:
        swap(station, security=security).opcua_credentials()
    (problem,) = caught.value.problems
    assert problem.field == "security.opcua_password_file"
    assert "not UTF-8" in problem.message and str(secret) in problem.message
