"""Tariff what-if (`flexcharge tariff compare`) and `flexcharge tariff show`, through cli.main()."""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from base.config import CONFIG_ROOT, load_station
from base.loading import ConfigError
from base.tariff import DayType, Period, Season, Tariff, coverage_problems
from base.tarifffile import load_tariff
from flexcharge import cli
from simulator.fast import Scenario, repriced, simulate
from simulator.scenario import load_sessions
from simulator.whatif import (
    WHATIF_PLAN_PERIOD_S,
    WHATIF_STEP_S,
    TariffCase,
    compare_tariffs,
    load_cases,
    plan_jobs,
)

STATION = str(CONFIG_ROOT / "stations" / "bozhou-depot.toml")
REFERENCE = CONFIG_ROOT / "tariffs" / "guizhou-tou.toml"
HEADER = "id,arrival,departure,energy_kwh,max_kw,pile,capacity_kwh,soc_arrival,v2g"
# Twelve trucks in for the night that must leave at 04:00 (four hours of valley), and two that
# must leave the same evening.
TRUCKS = [(f"N{k:02d}", f"21:{5 * k:02d}", "04:00", 500) for k in range(12)] + [
    ("S1", "16:50", "19:40", 300),
    ("S2", "17:40", "20:30", 280),
]


def _sessions_csv(path: Path, pile: str = "") -> Path:
    rows = [HEADER]
    for vid, arrive, leave, kwh in TRUCKS:
        day2 = "11" if leave < arrive else "10"
        rows.append(
            f"{vid},2026-11-10T{arrive}:00+08:00,2026-11-{day2}T{leave}:00+08:00,"
            f"{kwh},450,{pile if vid == 'N00' else ''},700,0.1,false"
        )
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _tariff(path: Path, valley: float, flat: float, peak: float, critical: float) -> Path:
    """guizhou-tou with other prices and a demand charge of 0.5 yuan/kW per month.

    With the reference's 35 yuan/kW the demand charge outweighs any spread: the MPC fills the
    valley up to the month's peak, and no further, whatever the prices. A small one lets the
    spread decide how far the valley's load may rise above it.
    """
    text = REFERENCE.read_text(encoding="utf-8")
    for band, price in (("valley", valley), ("flat", flat), ("peak", peak), ("critical", critical)):
        text = re.sub(rf"(?m)^{band} = .*$", f"{band} = {price}", text)
    text = re.sub(
        r"(?m)^demand_charge_per_kw_month = .*$", "demand_charge_per_kw_month = 0.5", text
    )
    text = text.replace('name = "Guizhou', f'name = "{path.stem}: Guizhou', 1)
    path.write_text(text, encoding="utf-8")
    return path


def _wide_tariff(path: Path) -> Path:
    """The reference's prices: 0.63 yuan/kWh from valley to peak."""
    return _tariff(path, 0.3162, 0.6210, 0.9462, 1.1354)


def _narrow_tariff(path: Path) -> Path:
    """A 0.06 yuan/kWh spread from valley to peak."""
    return _tariff(path, 0.6000, 0.6300, 0.6600, 0.6700)


@dataclass
class Compared:
    """A what-if run once for the module: its files and its figures."""

    out: Path
    sessions: Path
    wide: Path
    narrow: Path
    output: str
    figures: list[dict[str, Any]]
    settings: dict[str, Any]

    def row(self, tariff: str, policy: str) -> dict[str, Any]:
        return next(r for r in self.figures if r["tariff"] == tariff and r["policy"] == policy)


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Compared:
    """Two tariffs (a wide and a narrow spread), mpc + uncontrolled, in two processes."""
    root = tmp_path_factory.mktemp("whatif")
    sessions = _sessions_csv(root / "night.csv")
    wide = _wide_tariff(root / "wide.toml")
    narrow = _narrow_tariff(root / "narrow.toml")
    out = root / "report"
    argv = ["tariff", "compare", "--station", STATION, "--sessions", str(sessions)]
    argv += [str(wide), str(narrow), "--out", str(out), "--workers", "2"]
    # capsys is function-scoped: a module fixture captures the command's output itself.
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(argv)
    assert code == cli.EXIT_OK, buffer.getvalue()
    summary = json.loads((out / "whatif.json").read_text(encoding="utf-8"))
    return Compared(
        out, sessions, wide, narrow, buffer.getvalue(), summary["runs"], summary["settings"]
    )


def test_report_files_name_tariffs_units_and_embed_figures(compared: Compared) -> None:
    out = compared.out
    for name in ("report.html", "report.png", "costs.png", "whatif.json"):
        assert (out / name).stat().st_size > 1000, name
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for tariff in ("wide", "narrow"):
        for policy in ("uncontrolled", "mpc"):
            run = json.loads((out / "runs" / tariff / f"{policy}.json").read_text())
            assert run["figures"]["tariff"] == tariff
            assert run["metrics"]["policy"] == policy
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 2
    assert "<img" in page and 'src="http' not in page and "<script" not in page
    assert str(compared.wide) in page and str(compared.narrow) in page
    assert "station bill (CNY)" in page and "per kWh (CNY/kWh)" in page
    assert "15-min peak (kW)" in page
    assert compared.settings["step_s"] == WHATIF_STEP_S
    assert compared.settings["plan_period_s"] == WHATIF_PLAN_PERIOD_S
    assert compared.settings["simulations"] == 3  # uncontrolled ran once, for both tariffs
    assert "report.html" in compared.output and "wide" in compared.output


@pytest.mark.parametrize("tariff", ["wide", "narrow"])
@pytest.mark.parametrize("policy", ["mpc", "uncontrolled"])
def test_figures_agree_with_separate_simulate_runs(
    compared: Compared, tmp_path: Path, tariff: str, policy: str
) -> None:
    path = compared.wide if tariff == "wide" else compared.narrow
    out = tmp_path / "sim"
    argv = ["simulate", "--station", STATION, "--sessions", str(compared.sessions)]
    argv += ["--tariff", str(path), "--policy", policy, "--out", str(out)]
    argv += ["--step", str(WHATIF_STEP_S), "--plan-period", str(WHATIF_PLAN_PERIOD_S)]
    assert cli.main(argv) == cli.EXIT_OK
    alone = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    row = compared.row(tariff, policy)
    assert row["station_bill"] == alone["site_cost_yuan"]
    assert row["station_demand_charge"] == alone["site_demand_charge_yuan"]
    assert row["charging_cost"] == alone["cost_yuan"]
    assert row["cost_per_vehicle"] == alone["cost_per_vehicle_yuan"]
    assert row["cost_per_kwh"] == alone["cost_per_kwh_yuan"]
    assert row["peak_kw"] == alone["peak_kw"]
    assert row["peak_15min_kw"] == alone["peak_15min_kw"]
    assert row["cheapest_band_share_pct"] == pytest.approx(alone["valley_share_pct"], abs=0.051)
    assert row["energy_delivered_kwh"] == alone["energy_delivered_kwh"]


def test_wider_spread_shifts_more_energy_into_the_valley(compared: Compared) -> None:
    wide, narrow = compared.row("wide", "mpc"), compared.row("narrow", "mpc")
    assert wide["cheapest_band"] == narrow["cheapest_band"] == "valley"
    # The same trucks and the same hours: only the price difference moves them.
    assert wide["shifted_into_cheapest_kwh"] > narrow["shifted_into_cheapest_kwh"] + 100
    assert wide["cheapest_band_share_pct"] > narrow["cheapest_band_share_pct"]
    assert wide["shifted_into_cheapest_kwh"] > 0
    assert compared.row("wide", "uncontrolled")["shifted_into_cheapest_kwh"] == 0
    assert wide["saved_vs_uncontrolled"] > 0


def test_price_blind_policy_runs_once_and_is_billed_under_each_tariff(tmp_path: Path) -> None:
    station = load_station(Path(STATION))
    visits = load_sessions(_sessions_csv(tmp_path / "s.csv"))
    narrow = _narrow_tariff(tmp_path / "narrow.toml")
    cases = load_cases([REFERENCE, narrow])
    scenario = Scenario.around(station, visits, tariff=cases[0].tariff, name="s")
    jobs = plan_jobs(cases, ["equal-share"])
    assert [(j.policy, len(j.serves)) for j in jobs] == [("equal-share", 2), ("uncontrolled", 2)]
    whatif = compare_tariffs(scenario, cases, ["equal-share"], workers=1)
    run = whatif.run("narrow", "equal-share")
    assert run.simulated_under == "guizhou-tou"
    alone = simulate(
        Scenario.around(station, visits, tariff=cases[1].tariff, name="s"),
        "equal-share",
        step_s=whatif.step_s,
    )
    for key in ("cost_yuan", "site_cost_yuan", "peak_15min_kw", "valley_share_pct"):
        assert run.result.metrics[key] == alone.metrics[key], key
    with pytest.raises(ValueError, match="decides on prices"):
        repriced(replace(alone, policy="mpc"), scenario)


def _broken_tariff(path: Path) -> Path:
    """The reference tariff with a gap (08:00-09:00) and an overlap, and an unknown band."""
    text = REFERENCE.read_text(encoding="utf-8")
    text = text.replace(
        '{ start = "08:00", end = "09:00", band = "flat" },',
        '{ start = "10:00", end = "11:00", band = "shoulder" },',
        1,
    )
    path.write_text(text, encoding="utf-8")
    return path


def test_compare_bad_inputs_exit_2_naming_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = _broken_tariff(tmp_path / "broken.toml")
    sessions = _sessions_csv(tmp_path / "sessions.csv", pile="P99")
    out = tmp_path / "out"
    argv = ["tariff", "compare", "--station", STATION, "--sessions", str(sessions)]
    argv += [str(REFERENCE), str(broken), "--out", str(out)]
    assert cli.main(argv) == cli.EXIT_BAD_CONFIG
    text = " ".join(capsys.readouterr().out.split())
    assert f"{broken}: season standard, day type every day: seasons[0].day_types[0].periods" in text
    assert "no band from 08:00 to 09:00" in text
    assert "overlaps the period before it" in text
    assert "unknown band 'shoulder'" in text
    assert f"{sessions}: session N00: pile: 'P99' is not a pile of" in text
    assert not out.exists()


def test_compare_refuses_tariffs_in_different_currencies(tmp_path: Path) -> None:
    euro = tmp_path / "euro.toml"
    euro.write_text(REFERENCE.read_text().replace('currency = "CNY"', 'currency = "EUR"'))
    with pytest.raises(ConfigError, match=r"euro.toml: tariff: currency: EUR differs from CNY"):
        load_cases([REFERENCE, euro])


def test_tariff_show_draws_and_tabulates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wide = CONFIG_ROOT / "tariffs" / "guizhou-tou-wide.toml"
    assert cli.main(["tariff", "show", str(wide), "--out", str(tmp_path), "--year", "2026"]) == 0
    text = capsys.readouterr().out
    for name in ("guizhou-tou-wide-day.png", "guizhou-tou-wide-year.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name
    for band, price in load_tariff(wide).band_prices.items():
        assert re.search(rf"{band}\s*│\s*{price:.4f}", text), band
    assert "no gaps or overlaps" in text
    # Winter critical peak: 2 h a day over Nov, Dec, Jan; summer: 2 h over Jul-Sep.
    assert re.search(r"critical\s*│\s*1\.2288\s*│\s*368\s*│", text)


def test_tariff_show_broken_file_exits_2_with_the_loader_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = _broken_tariff(tmp_path / "broken.toml")
    assert cli.main(["tariff", "show", str(broken), "--out", str(tmp_path)]) == 2
    text = " ".join(capsys.readouterr().out.split())
    assert f"{broken}: season standard, day type every day" in text
    assert "no band from 08:00 to 09:00" in text and "overlaps the period before it" in text
    assert not list(tmp_path.glob("*.png"))


def test_coverage_problems_lists_gaps_and_overlaps() -> None:
    assert coverage_problems(load_tariff(REFERENCE)) == []
    day = DayType(
        "weekdays",
        frozenset(range(5)),
        (Period(0, 480, "valley"), Period(420, 1200, "peak"), Period(1260, 1440, "valley")),
    )
    tariff = Tariff(
        "made in code",
        "Asia/Shanghai",
        "CNY",
        {"valley": 0.3, "peak": 0.9},
        (Season("all", frozenset(range(1, 12)), (day,)),),
    )
    assert [(g.where(tariff), g.field, g.period, g.message) for g in coverage_problems(tariff)] == [
        (
            "season all, day type weekdays",
            "periods",
            1,
            "overlaps the period before it (starts 07:00, previous ends 08:00)",
        ),
        ("season all, day type weekdays", "periods", None, "no band from 20:00 to 21:00"),
        ("season all", "day_types", None, "no day type covers sat"),
        ("season all", "day_types", None, "no day type covers sun"),
        ("tariff", "seasons", None, "no season covers month 12"),
    ]


def test_tariff_case_labels_are_file_names() -> None:
    cases = load_cases([REFERENCE, CONFIG_ROOT / "tariffs" / "guizhou-flat-demand.toml"])
    assert [c.label for c in cases] == ["guizhou-tou", "guizhou-flat-demand"]
    assert isinstance(cases[0], TariffCase)
    assert cases[1].tariff.demand_charge_per_kw_month > cases[0].tariff.demand_charge_per_kw_month
