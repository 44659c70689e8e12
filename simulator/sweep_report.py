"""The tariff study's report: what each tariff does across the stations, as HTML, PNG and tables.

`write_report` leaves in its directory `report.html` (self-contained, in the style of `tariff
compare`'s) and `report.png`: the distribution of the charging cost's change against the first
tariff of the study (per station variant and period, under each tariff and policy), the share
charged in each tariff's cheapest band, and each run's 15-minute peak against its site limit;
with the summary table and the stations that lose most.
"""

from __future__ import annotations

import html
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from rich import box
from rich.table import Table

from simulator.report import MARKERS
from simulator.study import Study
from simulator.sweep import SweepRun
from simulator.whatif import BASELINE
from simulator.whatif_report import REPORT_STYLE, embedded_png

LOSERS = 5
POLICY_COLOURS = ("#757575", "#1e88e5", "#e53935", "#43a047", "#8e24aa", "#fb8c00")


def cost_changes(study: Study, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run under a tariff other than the study's first, with its charging cost's change
    against the same station variant, period and policy under the first tariff (%, and in
    the currency)."""
    reference = study.cases[0].label
    ok = [r for r in rows if r["status"] == "ok"]
    before = {
        (r["station"], r["variant"], r["period"], r["policy"]): r["cost"]
        for r in ok
        if r["tariff"] == reference
    }
    changes = []
    for row in ok:
        base = before.get((row["station"], row["variant"], row["period"], row["policy"]))
        if row["tariff"] == reference or base is None:
            continue
        change = row["cost"] - base
        pct = 100 * change / abs(base) if abs(base) > 1e-9 else 0.0
        changes.append({**row, "cost_change": round(change, 2), "cost_change_pct": round(pct, 2)})
    return changes


def summary(study: Study, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per tariff and policy: runs, failures, cost per kWh, change against the first
    tariff, valley share, runs above their limit, saving against uncontrolled (medians)."""
    changes = cost_changes(study, rows)
    lines = []
    for case in study.cases:
        for policy in study.policies:
            mine = [r for r in rows if r["tariff"] == case.label and r["policy"] == policy]
            ok = [r for r in mine if r["status"] == "ok"]
            moved = [
                c["cost_change_pct"]
                for c in changes
                if c["tariff"] == case.label and c["policy"] == policy
            ]
            lines.append(
                {
                    "tariff": case.label,
                    "policy": policy,
                    "runs": len(ok),
                    "failed": len(mine) - len(ok),
                    "cost_per_kwh": _median([r["cost_per_kwh"] for r in ok]),
                    "change_pct_median": _median(moved) if moved else None,
                    "change_pct_low": min(moved) if moved else None,
                    "change_pct_high": max(moved) if moved else None,
                    "valley_share_pct": _median([r["valley_share_pct"] for r in ok]),
                    "above_limit": sum(1 for r in ok if r["peak_kw"] > r["limit_kw"] + 0.5),
                    "saved_vs_uncontrolled": _median(
                        [r["saved_vs_uncontrolled"] for r in ok if policy != BASELINE]
                    )
                    if policy != BASELINE
                    else None,
                }
            )
    return lines


def losers(
    study: Study, rows: Sequence[dict[str, Any]], count: int = LOSERS
) -> list[dict[str, Any]]:
    """The controlled runs whose charging cost rises most against the first tariff."""
    controlled = [c for c in cost_changes(study, rows) if c["policy"] != BASELINE]
    return sorted(controlled, key=lambda c: -c["cost_change_pct"])[:count]


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 4) if values else None


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


SUMMARY_HEADERS = (
    "tariff",
    "policy",
    "runs",
    "failed",
    "per kWh (median, {c}/kWh)",
    "cost vs first tariff (median, %)",
    "range (%)",
    "valley share (median)",
    "runs above limit",
    "saved vs uncontrolled (median, {c})",
)


def _summary_cells(line: dict[str, Any]) -> list[str]:
    low, high = line["change_pct_low"], line["change_pct_high"]
    return [
        line["tariff"],
        line["policy"],
        str(line["runs"]),
        str(line["failed"]),
        _num(line["cost_per_kwh"], ".3f"),
        _num(line["change_pct_median"], "+.1f"),
        "-" if low is None else f"{low:+.1f} .. {high:+.1f}",
        _num(line["valley_share_pct"], ".0f", "%"),
        str(line["above_limit"]),
        _num(line["saved_vs_uncontrolled"], ",.0f"),
    ]


def summary_table(study: Study, rows: Sequence[dict[str, Any]]) -> Table:
    """The summary for the terminal."""
    table = Table(
        title=f"tariff study {study.name}: {len(rows)} runs, costs against {study.cases[0].label}",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    for index, header in enumerate(SUMMARY_HEADERS):
        table.add_column(header.format(c=study.currency), justify="left" if index < 2 else "right")
    for line in summary(study, rows):
        table.add_row(*_summary_cells(line))
    return table


def loser_lines(study: Study, rows: Sequence[dict[str, Any]]) -> list[str]:
    """The stations that lose most, one line each."""
    return [
        f"{c['station']} {c['variant']} ({c['period']}) under {c['tariff']} with {c['policy']}: "
        f"charging cost {c['cost_change_pct']:+.1f}% ({c['cost_change']:+,.0f} {study.currency}) "
        f"against {study.cases[0].label}"
        for c in losers(study, rows)
    ]


def figure(study: Study, rows: Sequence[dict[str, Any]]) -> Figure:
    """Cost change per tariff, valley share per tariff, and peaks against limits."""
    changes = cost_changes(study, rows)
    ok = [r for r in rows if r["status"] == "ok"]
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 5.2))
    others = [c.label for c in study.cases[1:]]
    width = 0.8 / max(len(study.policies), 1)
    for k, policy in enumerate(study.policies):
        colour = POLICY_COLOURS[k % len(POLICY_COLOURS)]
        offset = (k - (len(study.policies) - 1) / 2) * width
        data = [
            [c["cost_change_pct"] for c in changes if c["tariff"] == t and c["policy"] == policy]
            for t in others
        ]
        _boxes(left, data, np.arange(len(others)) + offset, width, colour, policy)
        shares = [
            [r["valley_share_pct"] for r in ok if r["tariff"] == c.label and r["policy"] == policy]
            for c in study.cases
        ]
        _boxes(middle, shares, np.arange(len(study.cases)) + offset, width, colour, policy)
    left.axhline(0, color="#424242", linewidth=0.8)
    left.set_xticks(np.arange(len(others)))
    left.set_xticklabels(others, fontsize=8)
    left.set_ylabel(f"charging cost against {study.cases[0].label} (%)")
    left.set_title("cost change per station variant and period", fontsize=10)
    middle.set_xticks(np.arange(len(study.cases)))
    middle.set_xticklabels([c.label for c in study.cases], fontsize=8)
    middle.set_ylabel("charged in the tariff's cheapest band (%)")
    middle.set_title("valley share", fontsize=10)
    stations = list(dict.fromkeys(r["station"] for r in ok))
    for k, station in enumerate(stations):
        mine = [r for r in ok if r["station"] == station]
        right.scatter(
            [r["limit_kw"] for r in mine],
            [r["peak_15min_kw"] for r in mine],
            marker=MARKERS[k % len(MARKERS)],
            s=22,
            alpha=0.7,
            label=station,
        )
    if ok:
        top = max(max(r["limit_kw"], r["peak_15min_kw"]) for r in ok) * 1.05
        right.plot([0, top], [0, top], color="#424242", linewidth=0.8, label="at the limit")
        right.set_xlim(0, top)
        right.set_ylim(0, top)
    right.set_xlabel("site limit (kW)")
    right.set_ylabel("highest 15-minute average import (kW)")
    right.set_title("peaks against limits (every run)", fontsize=10)
    for ax in (left, middle, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"tariff study {study.name}", fontsize=11)
    fig.tight_layout()
    return fig


def _boxes(
    ax: Any, data: list[list[float]], where: Any, width: float, colour: str, label: str
) -> None:
    """A box per group, and its points over it (a study may have a handful of runs a group)."""
    kept = [(x, values) for x, values in zip(where, data, strict=True) if values]
    if not kept:
        return
    ax.boxplot(
        [values for _, values in kept],
        positions=[x for x, _ in kept],
        widths=width * 0.8,
        patch_artist=True,
        boxprops={"facecolor": colour, "alpha": 0.25},
        medianprops={"color": colour},
        showfliers=False,
    )
    for x, values in kept:
        ax.scatter([x] * len(values), values, color=colour, s=12, zorder=3)
    ax.scatter([], [], color=colour, s=12, label=label)


def write_report(study: Study, sweep: SweepRun, out: Path) -> Path:
    """`report.png` and `report.html` in `out`; returns the HTML file's path."""
    rows = sweep.rows
    fig = figure(study, rows)
    fig.savefig(out / "report.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    page = out / "report.html"
    page.write_text(_html(study, sweep, out), encoding="utf-8")
    return page


def _html(study: Study, sweep: SweepRun, out: Path) -> str:
    e = html.escape
    rows = sweep.rows
    head = "".join(f"<th>{e(h.format(c=study.currency))}</th>" for h in SUMMARY_HEADERS)
    body = []
    for line in summary(study, rows):
        cells = _summary_cells(line)
        tds = "".join(
            f'<td class="{"" if k < 2 else "n"}">{e(cell)}</td>' for k, cell in enumerate(cells)
        )
        kind = ' class="baseline"' if line["policy"] == BASELINE else ""
        body.append(f"<tr{kind}>{tds}</tr>")
    lost = "".join(f"<li>{e(line)}</li>" for line in loser_lines(study, rows))
    failed = [r for r in rows if r["status"] != "ok"]
    failures = "".join(
        f"<li>{e(r['station'])} {e(r['variant'])} {e(r['period'])} {e(r['tariff'])} "
        f"{e(r['policy'])}: {e(str(r['error']))} (after {r['attempts']} attempt(s))</li>"
        for r in failed
    )
    tariffs = "".join(
        f"<tr><td>{e(c.label)}</td><td><code>{e(str(c.path))}</code></td><td>{e(c.tariff.name)}</td>"
        f"<td>{', '.join(f'{e(b)} {p:.4f}' for b, p in c.tariff.band_prices.items())}</td>"
        f'<td class="n">{c.tariff.demand_charge_per_kw_month:.2f}</td></tr>'
        for c in study.cases
    )
    sites = ", ".join(f"{e(s.station)} {e(s.variant)}" for s in study.sites)
    periods = ", ".join(e(p.label) for p in study.periods)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Tariff study: {e(study.name)}</title>
<style>{REPORT_STYLE}</style></head><body>
<h1>Tariff study: {e(study.name)}</h1>
<p>{len(study.sites)} station variants ({sites}) over {periods}; policies
{e(", ".join(study.policies))}; {sweep.total} runs ({sweep.resumed} resumed from an earlier
sweep, {sweep.ran} run now on {e(sweep.backend)} with {sweep.slots} worker(s) in
{sweep.wall_s:.1f} s, {sweep.retried} attempt(s) retried); simulation step {study.step_s:g} s,
MPC re-plans at least every {study.plan_period_s:g} s. Study file <code>{e(str(study.path))}</code>.</p>
<h2>Tariffs</h2>
<table><tr><th>tariff</th><th>file</th><th>name</th><th>import price per band ({e(study.currency)}/kWh)</th>
<th>demand charge ({e(study.currency)}/kW per month)</th></tr>{tariffs}</table>
<h2>Summary</h2>
<table><tr>{head}</tr>
{"".join(body)}</table>
<dl>
<dt>cost vs first tariff</dt><dd>each station variant's charging cost over each period under
the tariff, against the same under {e(study.cases[0].label)} with the same policy; the median
and the range over the station variants and periods.</dd>
<dt>valley share</dt><dd>energy the piles drew while the tariff's cheapest band was in force,
of all they drew.</dd>
<dt>runs above limit</dt><dd>runs whose highest load within a step went above the site limit.</dd>
</dl>
<h2>The stations that lose most</h2>
<ol>{lost or "<li>none: no controlled run under another tariff</li>"}</ol>
{f"<h2>Failed runs</h2><ul>{failures}</ul>" if failures else ""}
<h2>Across the stations</h2>
<img src="{embedded_png(out / "report.png")}" alt="cost change, valley share and peaks across the stations">
<p>Every run's figures: <code>results.parquet</code> and <code>results.csv</code> (one row per
run); each run as it completed: <code>runs/</code>.</p>
</body></html>
"""
