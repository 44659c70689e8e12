"""Unit tests for base.tariff with the reference Guizhou TOU tariff (Asia/Shanghai, UTC+8)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from base.config import CONFIG_ROOT
from base.loading import ConfigError
from base.tariff import Tariff
from base.tarifffile import load_tariff

SHANGHAI = ZoneInfo("Asia/Shanghai")
PRICES = {"valley": 0.3162, "flat": 0.6210, "peak": 0.9462, "critical": 1.1354}


@pytest.fixture(scope="module")
def tariff() -> Tariff:
    """The reference tariff, loaded from configs/tariffs/guizhou-tou.toml."""
    return load_tariff(CONFIG_ROOT / "tariffs" / "guizhou-tou.toml")


def local(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """An aware datetime in Asia/Shanghai."""
    return datetime(year, month, day, hour, minute, tzinfo=SHANGHAI)


BAND_CASES = [
    (local(2024, 11, 15, 3, 0), "valley"),
    (local(2024, 11, 15, 10, 0), "peak"),
    (local(2024, 7, 15, 19, 30), "critical"),
    (local(2024, 11, 15, 19, 30), "peak"),
    (local(2024, 7, 15, 3, 0), "valley"),
    (local(2024, 7, 15, 17, 0), "peak"),
    (local(2024, 1, 6, 8, 30), "flat"),  # a Saturday
    (local(2024, 11, 15, 7, 59), "valley"),
    (local(2024, 11, 15, 8, 0), "flat"),
    (local(2024, 11, 15, 23, 59), "flat"),
    (local(2024, 11, 15, 0, 0), "valley"),
    (local(2024, 8, 31, 20, 59), "critical"),
    (local(2024, 9, 1, 20, 59), "peak"),
]


@pytest.mark.parametrize(("when", "band"), BAND_CASES)
def test_band_at_local_datetime(tariff: Tariff, when: datetime, band: str) -> None:
    """band_at with an aware Asia/Shanghai datetime gives the band of that wall time."""
    assert tariff.band_at(when) == band


@pytest.mark.parametrize(("when", "band"), BAND_CASES)
def test_band_at_epoch_seconds(tariff: Tariff, when: datetime, band: str) -> None:
    """band_at with epoch seconds gives the same band as the equivalent aware datetime."""
    assert tariff.band_at(when.timestamp()) == band
    assert tariff.band_at(int(when.timestamp())) == band


@pytest.mark.parametrize(("when", "band"), BAND_CASES)
def test_band_at_utc_datetime(tariff: Tariff, when: datetime, band: str) -> None:
    """band_at with the same instant expressed in UTC gives the same band."""
    assert tariff.band_at(when.astimezone(UTC)) == band


def test_utc_wall_time_is_converted_not_taken_literally(tariff: Tariff) -> None:
    """11:30 UTC in July is 19:30 in Shanghai (critical), not 11:30 (peak)."""
    assert tariff.band_at(datetime(2024, 7, 15, 11, 30, tzinfo=UTC)) == "critical"
    assert tariff.band_at(local(2024, 7, 15, 11, 30)) == "peak"
    # 20:00 UTC on 14 November is 04:00 on 15 November in Shanghai: valley, not peak
    assert tariff.band_at(datetime(2024, 11, 14, 20, 0, tzinfo=UTC)) == "valley"


def test_other_zone_is_converted(tariff: Tariff) -> None:
    """A datetime in Europe/Berlin is looked up at its Shanghai wall time."""
    berlin = datetime(2024, 1, 10, 2, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # 09:00 Shanghai
    assert tariff.band_at(berlin) == "peak"
    assert tariff.band_at(datetime(2024, 1, 10, 1, 59, tzinfo=ZoneInfo("Europe/Berlin"))) == "flat"


def test_epoch_seconds_known_instant(tariff: Tariff) -> None:
    """Epoch 1721043000 is 2024-07-15 11:30 UTC = 19:30 Shanghai: critical."""
    assert datetime(2024, 7, 15, 11, 30, tzinfo=UTC).timestamp() == 1721043000
    assert tariff.band_at(1721043000) == "critical"
    assert tariff.band_at(1721043000.0) == "critical"


@pytest.mark.parametrize(("when", "band"), BAND_CASES)
def test_price_at_is_the_band_price(tariff: Tariff, when: datetime, band: str) -> None:
    """price_at equals the price of the band in force (from the file's [bands])."""
    assert tariff.price_at(when) == PRICES[band]
    assert tariff.price_at(when.timestamp()) == PRICES[band]


def test_prices_for_epoch_list(tariff: Tariff) -> None:
    """prices() maps each epoch time to its price."""
    times = [local(2024, 11, 15, 3).timestamp(), local(2024, 7, 15, 19, 30).timestamp()]
    assert tariff.prices(times) == [PRICES["valley"], PRICES["critical"]]


def test_next_change_after_valley_is_eight(tariff: Tariff) -> None:
    """After 03:00 the next band boundary is 08:00 the same day."""
    nxt = tariff.next_change(local(2024, 11, 15, 3, 0))
    assert nxt == local(2024, 11, 15, 8, 0)
    assert nxt.utcoffset() == timedelta(hours=8)


def test_next_change_at_a_boundary_is_the_following_one(tariff: Tariff) -> None:
    """Exactly at 08:00 the next change is 09:00 (strictly after), and from 07:59:30 it is 08:00."""
    assert tariff.next_change(local(2024, 11, 15, 8, 0)) == local(2024, 11, 15, 9, 0)
    just_before = local(2024, 11, 15, 7, 59).replace(second=30)
    assert tariff.next_change(just_before) == local(2024, 11, 15, 8, 0)


def test_next_change_after_2130_is_next_midnight(tariff: Tariff) -> None:
    """After 21:30 the next change is midnight starting the next day."""
    assert tariff.next_change(local(2024, 11, 15, 21, 30)) == local(2024, 11, 16, 0, 0)


def test_next_change_in_summer_evening(tariff: Tariff) -> None:
    """In July the peak ends at 19:00 and the critical peak at 21:00."""
    assert tariff.next_change(local(2024, 7, 15, 17, 0)) == local(2024, 7, 15, 19, 0)
    assert tariff.next_change(local(2024, 7, 15, 19, 30)) == local(2024, 7, 15, 21, 0)


def test_next_change_across_month_and_year_end(tariff: Tariff) -> None:
    """Midnight after 31 December is 1 January of the next year."""
    assert tariff.next_change(local(2024, 12, 31, 22, 0)) == local(2025, 1, 1, 0, 0)
    assert tariff.next_change(local(2024, 6, 30, 23, 0)) == local(2024, 7, 1, 0, 0)


def test_next_change_from_utc_and_epoch(tariff: Tariff) -> None:
    """next_change from a UTC datetime or epoch seconds is the same instant as from local time."""
    start = local(2024, 11, 15, 3, 0)
    expected = local(2024, 11, 15, 8, 0)
    assert tariff.next_change(start.astimezone(UTC)) == expected
    assert tariff.next_change(start.timestamp()) == expected
    assert tariff.next_change(start.timestamp()).timestamp() == expected.timestamp()


def test_band_changes_at_next_change(tariff: Tariff) -> None:
    """The band at next_change differs from the band just before it, throughout a July day."""
    when = local(2024, 7, 15, 0, 0)
    seen = []
    for _ in range(7):
        nxt = tariff.next_change(when)
        seen.append((nxt.hour, tariff.band_at(nxt)))
        assert tariff.band_at(nxt - timedelta(seconds=1)) == tariff.band_at(when)
        when = nxt
    assert seen == [
        (8, "flat"),
        (9, "peak"),
        (12, "flat"),
        (16, "peak"),
        (19, "critical"),
        (21, "flat"),
        (0, "valley"),
    ]


def test_naive_datetime_is_rejected(tariff: Tariff) -> None:
    """band_at, price_at and next_change refuse a naive datetime."""
    naive = datetime(2024, 11, 15, 3, 0)
    with pytest.raises(ValueError):
        tariff.band_at(naive)
    with pytest.raises(ValueError):
        tariff.price_at(naive)
    with pytest.raises(ValueError):
        tariff.next_change(naive)


def test_fixed_offset_zone_is_accepted(tariff: Tariff) -> None:
    """A fixed UTC+8 offset is as good as Asia/Shanghai."""
    when = datetime(2024, 7, 15, 19, 30, tzinfo=timezone(timedelta(hours=8)))
    assert tariff.band_at(when) == "critical"


def test_spread_and_metadata(tariff: Tariff) -> None:
    """Spread is critical - valley; the tariff's zone and export price come from the file."""
    assert tariff.spread == pytest.approx(1.1354 - 0.3162)
    assert tariff.timezone == "Asia/Shanghai"
    assert tariff.export_price == 0.3515
    assert tariff.demand_charge_per_kw_month == 35.0


def test_loader_reports_coverage_at_the_files_own_period_index(tmp_path: Path) -> None:
    """A period that does not parse is left out of the schedule, yet an overlap after it is still
    reported at its own place in the file (`coverage_problems` counts only parsed periods)."""
    text = (CONFIG_ROOT / "tariffs" / "guizhou-flat-demand.toml").read_text()
    broken = text.replace(
        '  { start = "00:00", end = "24:00", band = "flat" },',
        '  { start = "25:00", end = "26:00", band = "flat" },\n'
        '  { start = "00:00", end = "12:00", band = "flat" },\n'
        '  { start = "11:00", end = "24:00", band = "flat" },',
    )
    path = tmp_path / "broken.toml"
    path.write_text(broken)
    with pytest.raises(ConfigError) as caught:
        load_tariff(path)
    fields = {(p.device, p.field): p.message for p in caught.value.problems}
    periods = "seasons[0].day_types[0].periods"
    assert "not a time of day" in fields[("season all year, day type every day", f"{periods}[0]")]
    overlap = fields[("season all year, day type every day", f"{periods}[2]")]
    assert overlap.startswith("overlaps the period before it (starts 11:00")
    assert len(caught.value.problems) == 2
