"""The tariff what-if report: one table, the load profiles overlaid, as HTML, PNG and JSON.

`write_report` leaves in its directory `report.html` (self-contained: figures embedded as data
URIs), `report.png` (the average day's site load under each tariff, with each tariff's bands),
`costs.png`, `whatif.json` (settings and every run's figures) and `runs/<tariff>/<policy>.json`
(one run's figures and its full simulation metrics).
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray
from rich import box
from rich.table import Table

from simulator.fast import SimResult
from simulator.report import BAND_COLOURS, MARKERS, STYLES, thousands
from simulator.whatif import BASELINE, WhatIf

PROFILE_BIN_MIN = 15


@dataclass(frozen=True)
class Column:
    """A column of the comparison table: its header and how a run's figures fill it."""

    header: str
    cell: Callable[[dict[str, Any]], str]
    unit: str = ""
    terminal: bool = True


def columns(currency: str) -> list[Column]:
    """The comparison table's columns, for costs in `currency`."""
    return [
        Column("tariff", lambda r: str(r["tariff"])),
        Column("policy", lambda r: str(r["policy"])),
        Column("station bill", lambda r: f"{r['station_bill']:,.0f}", currency),
        Column("of which demand charge", lambda r: f"{r['station_demand_charge']:,.0f}", currency),
        Column("charging cost", lambda r: f"{r['charging_cost']:,.0f}", currency),
        Column("per vehicle", lambda r: f"{r['cost_per_vehicle']:,.1f}", currency),
        Column("per kWh", lambda r: f"{r['cost_per_kwh']:.3f}", f"{currency}/kWh"),
        Column("saved vs uncontrolled", lambda r: f"{r['saved_vs_uncontrolled']:,.0f}", currency),
        Column("peak", lambda r: f"{r['peak_kw']:,.0f}", "kW", terminal=False),
        Column("15-min peak", lambda r: f"{r['peak_15min_kw']:,.0f}", "kW"),
        Column(
            "charged in cheapest band",
            lambda r: (
                f"{r['cheapest_band']}: {r['cheapest_band_kwh']:,.0f}"
                f" ({r['cheapest_band_share_pct']:.0f}%)"
            ),
            "kWh",
        ),
        Column(
            "shifted there vs uncontrolled",
            lambda r: (
                f"{r['shifted_into_cheapest_kwh']:+,.0f} ({r['shifted_into_cheapest_pp']:+.0f} pp)"
            ),
            "kWh",
        ),
        Column("delivered", lambda r: f"{r['delivered_pct']:.1f}%"),
    ]


def _header(column: Column) -> str:
    return f"{column.header} ({column.unit})" if column.unit else column.header


def comparison_table(whatif: WhatIf) -> Table:
    """The report's table for the terminal."""
    rows = whatif.figures()
    table = Table(
        title=f"tariff what-if: {whatif.scenario.name} at {whatif.scenario.station.name}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    cols = [c for c in columns(_currency(whatif)) if c.terminal]
    cells = [[column.cell(row) for column in cols] for row in rows]
    for index, column in enumerate(cols):
        # Headers wrap; figures never do.
        header = _header(column)
        widest = max([len(line[index]) for line in cells] + [len(w) for w in header.split()])
        label = column.header in ("tariff", "policy")
        table.add_column(header, justify="left" if label else "right", width=widest)
    for line in cells:
        table.add_row(*line)
    return table


def peak_notes(whatif: WhatIf) -> list[str]:
    """A note for each controlled run whose peak is above the site limit, with the figures and
    why (none when every controlled run kept under it).

    The peak is the highest load within the steps, so it is what the simulated site drew: with a
    step of minutes the controller sees the depot's own load once a step and answers a rise in
    it only at the step's end, where the daemon answers within one control period.
    """
    notes = []
    period = whatif.scenario.station.control.period_s
    for row in whatif.figures():
        if row["policy"] == BASELINE or row["peak_kw"] <= row["limit_kw"] + 0.5:
            continue
        above = row["peak_kw"] - row["limit_kw"]
        notes.append(
            f"{row['policy']} under {row['tariff']} peaks at {row['peak_kw']:,.0f} kW, "
            f"{above:,.0f} kW above the {row['limit_kw']:,.0f} kW site limit "
            f"({row['over_limit_kwh']:,.1f} kWh above it in all). The simulation steps every "
            f"{row['step_s']:g} s: the controller sees the depot's own load once a step, so a "
            f"rise in it at a step's start is answered at the step's end, up to "
            f"{row['step_s']:g} s later; the daemon answers within its {period:g} s control "
            "period. A run with --step 60 shows how much of it is the step's."
        )
    return notes


def _currency(whatif: WhatIf) -> str:
    return whatif.cases[0].tariff.currency


def average_day(
    result: SimResult, zone: ZoneInfo, bin_min: int = PROFILE_BIN_MIN
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """The site load's and the depot's average day: (hours of each bin's start, site kW, depot kW)."""
    bins = _day_bins(result, zone, bin_min)
    count = 24 * 60 // bin_min
    seen = np.bincount(bins, minlength=count).astype(float)
    seen[seen == 0] = np.nan
    site = np.bincount(bins, weights=result.site_kw, minlength=count) / seen
    depot = np.bincount(bins, weights=result.background_kw, minlength=count) / seen
    return np.arange(count) * bin_min / 60, site, depot


def typical_bands(result: SimResult, zone: ZoneInfo, bin_min: int = PROFILE_BIN_MIN) -> list[str]:
    """For each time-of-day bin, the band most often in force there during the run."""
    bins = _day_bins(result, zone, bin_min)
    counts: list[Counter[str]] = [Counter() for _ in range(24 * 60 // bin_min)]
    for index, band in zip(bins, result.bands, strict=True):
        counts[index][band] += 1
    return [c.most_common(1)[0][0] if c else "" for c in counts]


def _day_bins(result: SimResult, zone: ZoneInfo, bin_min: int) -> NDArray[np.int64]:
    # A step is named by its end; its middle says which part of the day it covered.
    middles = result.times - float(result.metrics["step_s"]) / 2
    minutes = [
        (local.hour * 60 + local.minute) // bin_min
        for local in (datetime.fromtimestamp(float(t), zone) for t in middles)
    ]
    return np.asarray(minutes, dtype=np.int64)


def overlay_figure(whatif: WhatIf, path: Path) -> None:
    """The average day's site load under each tariff, one panel each, bands below, as a PNG."""
    fig = overlay(whatif)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def overlay(whatif: WhatIf) -> Figure:
    """The figure `overlay_figure` draws.

    One panel per tariff (on one scale): the uncontrolled load (the same under every tariff),
    the depot's own load, each controlled policy's load and the site limit, so that no tariff's
    line can hide another's; within a panel each policy has its own colour, line style and
    markers. The legend stands right of the panels; each tariff's bands are drawn beneath.
    """
    zone = ZoneInfo(whatif.scenario.station.info.timezone)
    controlled = [p for p in whatif.policies if p != BASELINE]
    cases = whatif.cases
    fig = plt.figure(figsize=(13, 1.2 + 2.6 * len(cases) + 0.45 * len(cases)))
    grid = fig.add_gridspec(
        len(cases) + 1, 1, height_ratios=[2.6] * len(cases) + [0.45 * len(cases)], hspace=0.12
    )
    panels = [fig.add_subplot(grid[0])]
    panels += [
        fig.add_subplot(grid[k], sharex=panels[0], sharey=panels[0]) for k in range(1, len(cases))
    ]
    strips = fig.add_subplot(grid[len(cases)], sharex=panels[0])
    colours = plt.get_cmap("tab10")
    baseline = whatif.run(cases[0].label, BASELINE).result
    hours, site, depot = average_day(baseline, zone)
    limit = float(np.min(baseline.limit_kw)) if len(baseline.limit_kw) else 0.0
    step = PROFILE_BIN_MIN / 60
    marks = max(1, len(hours) // 16)
    highest = float(np.nanmax(site)) if len(site) else 0.0
    for ax, case in zip(panels, cases, strict=True):
        ax.step(hours, site, where="post", color="#424242", lw=1.3, ls="--", label="uncontrolled")
        ax.step(hours, depot, where="post", color="#9e9e9e", lw=1.0, label="depot's own load")
        for p_index, policy in enumerate(controlled):
            _, kw, _ = average_day(whatif.run(case.label, policy).result, zone)
            highest = max(highest, float(np.nanmax(kw)))
            ax.step(
                hours,
                kw,
                where="post",
                color=colours(p_index),
                lw=1.8,
                ls=STYLES[p_index % len(STYLES)],
                marker=MARKERS[p_index % len(MARKERS)],
                markersize=4,
                markevery=(p_index * marks // max(1, len(controlled)), marks),
                label=policy,
            )
        ax.axhline(limit, color="#c62828", lw=1.2, ls="--", label=f"site limit {limit:,.0f} kW")
        ax.set_title(f"under {case.label}", loc="left", fontsize=9)
        ax.yaxis.set_major_formatter(thousands())
        ax.set_ylabel("kW")
        ax.grid(alpha=0.3)
        plt.setp(ax.get_xticklabels(), visible=False)
    panels[0].set_ylim(0, 1.08 * max(limit, highest))
    panels[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    days = (whatif.scenario.end - whatif.scenario.measured_start) / 86400
    fig.suptitle(
        f"{whatif.scenario.station.name}: average day of {whatif.scenario.name} "
        f"({days:.0f} days), site load under each tariff ({PROFILE_BIN_MIN}-min means, "
        f"local time {zone.key})",
        fontsize=10,
    )
    for row, case in enumerate(cases):
        run = whatif.run(case.label, controlled[0] if controlled else BASELINE)
        bands = typical_bands(run.result, zone)
        for k, band in enumerate(bands):
            if band:
                strips.broken_barh(
                    [(k * step, step)],
                    (row - 0.4, 0.8),
                    color=BAND_COLOURS.get(band, "#eeeeee"),
                    lw=0,
                )
        start = 0
        for k in range(1, len(bands) + 1):
            if k == len(bands) or bands[k] != bands[start]:
                if bands[start] and (k - start) * step >= 1.5:
                    price = case.tariff.band_prices[bands[start]]
                    strips.text(
                        (start + k) / 2 * step,
                        row,
                        f"{bands[start]} {price:.3f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                    )
                start = k
    strips.set_yticks(range(len(cases)))
    strips.set_yticklabels([f"{c.label} ({c.tariff.currency}/kWh)" for c in cases], fontsize=8)
    strips.set_ylim(len(cases) - 0.5, -0.5)
    strips.set_xlim(0, 24)
    strips.set_xticks(range(0, 25, 2))
    strips.set_xticklabels([f"{h:02d}:00" for h in range(0, 25, 2)])
    strips.set_xlabel("time of day (bands: the one most often in force in each quarter hour)")
    return fig


def cost_figure(whatif: WhatIf, path: Path) -> None:
    """The station's bill under each tariff and policy, energy and demand charge, as a PNG."""
    fig = costs(whatif)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def costs(whatif: WhatIf) -> Figure:
    """The figure `cost_figure` draws: stacked bars in plain numbers, the legend right of them."""
    rows = whatif.figures()
    currency = _currency(whatif)
    labels = [f"{r['tariff']}\n{r['policy']}" for r in rows]
    energy = np.array([r["station_energy_cost"] for r in rows])
    demand = np.array([r["station_demand_charge"] for r in rows])
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.9 * len(rows)), 5))
    ax.bar(x, energy, color="#90caf9", label="energy")
    ax.bar(x, demand, bottom=energy, color="#ef9a9a", label="demand charge (15-min peak)")
    for k, total in enumerate(energy + demand):
        ax.text(k, total, f"{total:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.margins(y=0.08)  # room for the totals above the bars
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.yaxis.set_major_formatter(thousands())
    ax.set_ylabel(f"station bill for the scenario ({currency})")
    ax.set_title(f"{whatif.scenario.name}: the station's bill under each tariff", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def write_report(whatif: WhatIf, out: Path) -> Path:
    """Write the report into `out` (created if missing); returns the HTML file's path."""
    out.mkdir(parents=True, exist_ok=True)
    overlay_figure(whatif, out / "report.png")
    cost_figure(whatif, out / "costs.png")
    rows = whatif.figures()
    summary = {"settings": settings(whatif), "runs": rows}
    (out / "whatif.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for row in rows:
        run = whatif.run(row["tariff"], row["policy"])
        target = out / "runs" / _safe(row["tariff"]) / f"{row['policy']}.json"
        target.parent.mkdir(parents=True, exist_ok=True)
        body = {"figures": row, "metrics": run.result.metrics}
        target.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    page = out / "report.html"
    page.write_text(_html(whatif, rows, out), encoding="utf-8")
    return page


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def settings(whatif: WhatIf) -> dict[str, Any]:
    """How the what-if was made: scenario, tariffs, step, plan period, simulations and time."""
    scenario = whatif.scenario
    zone = ZoneInfo(scenario.station.info.timezone)
    first = scenario.measured_start
    return {
        "station": scenario.station.name,
        "station_file": str(scenario.station.path),
        "scenario": scenario.name,
        "from": datetime.fromtimestamp(first, zone).isoformat(),
        "to": datetime.fromtimestamp(scenario.end, zone).isoformat(),
        "days": round((scenario.end - first) / 86400, 2),
        "vehicles": sum(1 for v in scenario.visits if v.arrival >= first),
        "energy_requested_kwh": round(
            sum(v.energy_kwh for v in scenario.visits if v.arrival >= first), 1
        ),
        "tariffs": [
            {
                "label": case.label,
                "file": str(case.path),
                "name": case.tariff.name,
                "currency": case.tariff.currency,
                "bands": dict(case.tariff.band_prices),
                "demand_charge_per_kw_month": case.tariff.demand_charge_per_kw_month,
                "export_price": case.tariff.export_price,
            }
            for case in whatif.cases
        ],
        "policies": whatif.policies,
        "step_s": whatif.step_s,
        "plan_period_s": whatif.plan_period_s,
        "simulations": whatif.simulations,
        "workers": whatif.workers,
        "wall_s": round(whatif.wall_s, 1),
    }


def embedded_png(path: Path) -> str:
    """A PNG file as a data URL, so that a report is one self-contained HTML file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


# The reports' look (what-ifs, tariff comparisons, sweeps).
REPORT_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #212121; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bdbdbd; padding: 0.3em 0.6em; }
th { background: #eceff1; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.baseline td { color: #616161; }
img { max-width: 100%; }
dt { font-weight: 600; } dd { margin: 0 0 0.6em 1.5em; }
p.note { background: #fff8e1; border-left: 4px solid #ffb300; padding: 0.4em 0.8em; }
"""


def _html(whatif: WhatIf, rows: Sequence[dict[str, Any]], out: Path) -> str:
    e = html.escape
    info = settings(whatif)
    currency = _currency(whatif)
    cols = columns(currency)
    head = "".join(f"<th>{e(_header(c))}</th>" for c in cols)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="{"" if c.header in ("tariff", "policy") else "n"}">{e(c.cell(row))}</td>'
            for c in cols
        )
        kind = ' class="baseline"' if row["policy"] == BASELINE else ""
        body.append(f"<tr{kind}>{cells}</tr>")
    notes = "".join(f'<p class="note">Note: {e(note)}</p>\n' for note in peak_notes(whatif))
    tariffs = []
    for t in info["tariffs"]:
        bands = ", ".join(f"{e(b)} {p:.4f}" for b, p in t["bands"].items())
        tariffs.append(
            f"<tr><td>{e(t['label'])}</td><td><code>{e(t['file'])}</code></td>"
            f"<td>{e(t['name'])}</td><td>{bands}</td>"
            f'<td class="n">{t["demand_charge_per_kw_month"]:.2f}</td>'
            f'<td class="n">{t["export_price"]:.4f}</td></tr>'
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Tariff what-if: {e(info["scenario"])} at {e(info["station"])}</title>
<style>{REPORT_STYLE}</style></head><body>
<h1>Tariff what-if: {e(info["scenario"])} at {e(info["station"])}</h1>
<p>{info["vehicles"]} vehicles wanting {info["energy_requested_kwh"]:,.0f} kWh, from {e(info["from"])}
to {e(info["to"])} ({info["days"]:g} days), station <code>{e(info["station_file"])}</code>.
Policies: {e(", ".join(info["policies"]))}; {info["simulations"]} simulations in {info["workers"]}
process(es), {info["wall_s"]:g} s; simulation step {info["step_s"]:g} s, MPC re-plans at least
every {info["plan_period_s"]:g} s (and on every arrival, departure and deviation).</p>
<h2>Tariffs</h2>
<table><tr><th>tariff</th><th>file</th><th>name</th><th>import price per band ({e(currency)}/kWh)</th>
<th>demand charge ({e(currency)}/kW per month)</th><th>export price ({e(currency)}/kWh)</th></tr>
{"".join(tariffs)}</table>
<h2>Results</h2>
<table><tr>{head}</tr>
{"".join(body)}</table>
{notes}<dl>
<dt>station bill</dt><dd>what the site pays for the scenario: import energy at each band's price,
minus export credit, plus the demand charge on each month's highest 15-minute average import
(a month simulated in part bears that part of its charge).</dd>
<dt>charging cost</dt><dd>the station bill minus the bill the depot's own load would have had
without the vehicles; per vehicle and per kWh delivered.</dd>
<dt>peak</dt><dd>highest site load within the {info["step_s"]:g} s steps (vehicles arriving and
leaving, and piles ramping, inside a step included); 15-min peak: the highest 15-minute average
import, what the demand charge is billed on.</dd>
<dt>charged in cheapest band</dt><dd>energy the piles drew while the tariff's cheapest band was in
force, and its share of all they drew; shifted: against uncontrolled under the same tariff.</dd>
</dl>
<h2>Site load under each tariff</h2>
<img src="{embedded_png(out / "report.png")}" alt="average day of site load under each tariff">
<h2>The station's bill</h2>
<img src="{embedded_png(out / "costs.png")}" alt="station bill under each tariff and policy">
<p>Per-run figures and simulation metrics: <code>runs/&lt;tariff&gt;/&lt;policy&gt;.json</code>;
all of them with these settings: <code>whatif.json</code>.</p>
</body></html>
"""
