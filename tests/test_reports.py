"""The figures and notes of the reports tell the truth: `compare`'s plot draws every policy it
ran (mpc and the offline bound included), the what-if figure shows each tariff in its own panel
with every policy distinguishable, value axes carry plain numbers (no offset, no '1e6'), legends
cover no data, and a controlled peak above the site limit is explained under the table.

The figures are inspected as the matplotlib objects the report code builds, after a draw.
"""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import matplotlib.pyplot as plt
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import Bbox

from base.config import CONFIG_ROOT, REFERENCE_STATION, load_station
from flexcharge.cli.simulate import ALL_POLICIES
from simulator.fast import SimResult, simulate
from simulator.report import comparison_figure
from simulator.whatif import BASELINE, WhatIf, compare_tariffs, load_scenario
from simulator.whatif_report import costs, overlay, peak_notes, write_report

ZONE = ZoneInfo("Asia/Shanghai")
TARIFFS = [CONFIG_ROOT / "tariffs" / n for n in ("guizhou-tou.toml", "guizhou-tou-wide.toml")]
HEADER = "id,arrival,departure,energy_kwh,max_kw,pile,capacity_kwh,soc_arrival,v2g"


def _sessions(path: Path) -> Path:
    """Twelve trucks in for the night (500 kWh each by 04:00), two for the evening."""
    rows = [HEADER]
    for k in range(12):
        rows.append(
            f"N{k:02d},2026-11-10T21:{5 * k:02d}:00+08:00,2026-11-11T04:00:00+08:00,"
            "500,450,,700,0.1,false"
        )
    rows.append("S1,2026-11-10T16:50:00+08:00,2026-11-10T19:40:00+08:00,300,450,,700,0.1,false")
    rows.append("S2,2026-11-10T17:40:00+08:00,2026-11-10T20:30:00+08:00,280,450,,700,0.1,false")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _jumping_background(path: Path) -> Path:
    """The depot's own load at 500 kW, leaping to 3,800 kW within a minute at 00:59 and back at
    02:00: with the trucks charging, the site is over its limit until the controller answers."""
    rows = ["time,kw"]
    for when, kw in (
        ("2026-11-10T00:00:00", 500),
        ("2026-11-11T00:59:00", 500),
        ("2026-11-11T01:00:00", 3800),
        ("2026-11-11T02:00:00", 3800),
        ("2026-11-11T02:01:00", 500),
        ("2026-11-12T00:00:00", 500),
    ):
        rows.append(f"{when}+08:00,{kw}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def _whatif(tmp_path: Path, *, background: Path | None = None) -> WhatIf:
    station = load_station(REFERENCE_STATION)
    scenario, cases = load_scenario(
        station, _sessions(tmp_path / "night.csv"), TARIFFS, background=background
    )
    return compare_tariffs(scenario, cases, ["mpc", "edf"], workers=1)


@pytest.fixture(scope="module")
def whatif(tmp_path_factory: pytest.TempPathFactory) -> WhatIf:
    """Two tariffs, mpc and edf (and uncontrolled), on a quiet depot load."""
    return _whatif(tmp_path_factory.mktemp("whatif"))


@pytest.fixture(scope="module")
def every_policy(tmp_path_factory: pytest.TempPathFactory) -> list[SimResult]:
    """The night under each policy `compare` runs, in its order (the bound last)."""
    station = load_station(REFERENCE_STATION)
    sessions = _sessions(tmp_path_factory.mktemp("compare") / "night.csv")
    scenario, _ = load_scenario(station, sessions)
    return [simulate(scenario, policy, step_s=300.0) for policy in ALL_POLICIES]


def _drawn(fig: Figure) -> Figure:
    fig.canvas.draw()
    return fig


def _box(artist: object, fig: Figure) -> Bbox:
    return artist.get_window_extent(fig.canvas.get_renderer())  # type: ignore[attr-defined]


def _overlaps(a: Bbox, b: Bbox) -> bool:
    # Touching edges are not an overlap.
    return a.x0 < b.x1 - 0.5 and b.x0 < a.x1 - 0.5 and a.y0 < b.y1 - 0.5 and b.y0 < a.y1 - 0.5


def _value_axes(fig: Figure) -> list[Axes]:
    return [ax for ax in fig.axes if ax.get_yticks().size and ax.get_ylabel()]


def _assert_plain_numbers(fig: Figure) -> None:
    """Every value axis is written in plain numbers, also over a range where matplotlib's own
    formatter would write an offset (a month's bills of 1.2 million: '1e6')."""
    axes = _value_axes(fig)
    assert axes
    for span in (None, (1_200_000.0, 1_200_050.0)):
        for ax in axes:
            if span is not None:
                ax.set_ylim(*span)
        fig.canvas.draw()
        for ax in axes:
            assert ax.yaxis.get_offset_text().get_text() == "", ax.get_ylabel()
            labels = [t.get_text() for t in ax.get_yticklabels()]
            assert labels and not any("e" in text.lower() for text in labels), labels


def _legend_outside_every_axes(fig: Figure, legend_ax: Axes) -> None:
    legend = legend_ax.get_legend()
    assert legend is not None
    box = _box(legend, fig)
    for ax in fig.axes:
        assert not _overlaps(box, ax.get_window_extent()), "the legend covers an axes' data"


def test_compare_plot_draws_every_policy_mpc_and_the_bound_included(
    every_policy: list[SimResult],
) -> None:
    """One site-load line per policy run, labelled by policy, each with its own style."""
    fig = _drawn(comparison_figure(every_policy, ZONE))
    top = fig.axes[0]
    loads = [line for line in top.get_lines() if line.get_label().startswith("site load (")]
    assert sorted(line.get_label() for line in loads) == sorted(
        f"site load ({policy})" for policy in ALL_POLICIES
    )
    assert loads[0].get_label() == "site load (mpc)"  # the product's own in front
    styles = {(line.get_color(), line.get_linestyle(), line.get_marker()) for line in loads}
    assert len(styles) == len(ALL_POLICIES)
    legend = top.get_legend()
    assert legend is not None
    texts = {text.get_text() for text in legend.get_texts()}
    assert {"site load (mpc)", "site load (offline-optimal)"} <= texts
    _legend_outside_every_axes(fig, top)
    _assert_plain_numbers(fig)
    plt.close(fig)


def test_whatif_figure_has_a_panel_per_tariff_and_a_line_per_policy(whatif: WhatIf) -> None:
    """Lines that coincide across tariffs are in different panels; within a panel each
    controlled policy has a colour, style and marker of its own; the legend is outside."""
    fig = _drawn(overlay(whatif))
    panels = [ax for ax in fig.axes if ax.get_title(loc="left").startswith("under ")]
    assert [ax.get_title(loc="left") for ax in panels] == [f"under {c.label}" for c in whatif.cases]
    controlled = [p for p in whatif.policies if p != BASELINE]
    for ax in panels:
        labels = [line.get_label() for line in ax.get_lines()]
        for policy in [*controlled, "uncontrolled", "depot's own load"]:
            assert labels.count(policy) == 1, (policy, labels)
        looks = {
            (line.get_color(), line.get_linestyle(), line.get_marker())
            for line in ax.get_lines()
            if line.get_label() in controlled
        }
        assert len(looks) == len(controlled)
    _legend_outside_every_axes(fig, panels[0])
    _assert_plain_numbers(fig)
    plt.close(fig)


def test_cost_chart_plain_numbers_and_legend_covering_no_bar(whatif: WhatIf) -> None:
    """Bills of about a million are written out (no '1e6'); the legend touches no bar, nor a
    total written above one."""
    fig = _drawn(costs(whatif))
    ax = fig.axes[0]
    legend = ax.get_legend()
    assert legend is not None
    box = _box(legend, fig)
    bars = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 2 * len(whatif.figures())
    for artist in [*bars, *ax.texts]:
        assert not _overlaps(box, _box(artist, fig)), artist
    _assert_plain_numbers(fig)
    plt.close(fig)


def test_no_peak_note_when_every_controlled_run_keeps_under_the_limit(
    whatif: WhatIf, tmp_path: Path
) -> None:
    rows = [r for r in whatif.figures() if r["policy"] != BASELINE]
    assert all(r["peak_kw"] <= r["limit_kw"] + 0.5 for r in rows)
    assert peak_notes(whatif) == []
    assert "Note:" not in write_report(whatif, tmp_path / "report").read_text(encoding="utf-8")


def test_a_controlled_peak_above_the_limit_is_explained_under_the_table(tmp_path: Path) -> None:
    """The depot's load leaps at 01:00 with the trucks charging: at the 300 s step the
    controller answers at the step's end, and the report says so with the figures."""
    whatif = _whatif(tmp_path, background=_jumping_background(tmp_path / "jump.csv"))
    over = [r for r in whatif.figures() if r["policy"] != BASELINE and r["peak_kw"] > r["limit_kw"]]
    assert over, "the leap must take a controlled run over the limit"
    notes = peak_notes(whatif)
    assert len(notes) == len(over)
    for row, note in zip(over, notes, strict=True):
        assert f"{row['policy']} under {row['tariff']} peaks at {row['peak_kw']:,.0f} kW" in note
        assert f"{row['limit_kw']:,.0f} kW site limit" in note
        assert "every 300 s" in note and "--step 60" in note
    page = write_report(whatif, tmp_path / "report").read_text(encoding="utf-8")
    table_end = page.index("</table>", page.index("<h2>Results</h2>"))
    assert page.index("Note: ") > table_end
    assert page.count('<p class="note">') == len(notes)
