"""What a simulation leaves behind: metrics.json, timeseries.csv, plot.png, and comparison tables."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter
from rich.table import Table

from simulator.fast import SimResult


def thousands() -> StrMethodFormatter:
    """Plain numbers with thousands separators for a value axis: never an offset or a '1e6'
    above it (a formatter belongs to one axis: a new one each)."""
    return StrMethodFormatter("{x:,.0f}")


BAND_COLOURS = {"valley": "#c8e6c9", "flat": "#fff9c4", "peak": "#ffcdd2", "critical": "#e1bee7"}


def write_outputs(result: SimResult, out: Path, zone: ZoneInfo) -> None:
    """metrics.json, timeseries.csv, events.csv (what the controller noticed, and the simulator's
    scripted faults: time, text, source, kind and device) and plot.png.

    Each row of timeseries.csv is one step, named by its end: the average powers over the step,
    the highest site power within it, and the price and band in force at its start.
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n", encoding="utf-8")
    with (out / "timeseries.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "time",
                "site_kw",
                "site_peak_kw",
                "background_kw",
                "piles_kw",
                "limit_kw",
                "price",
                "band",
            ]
        )
        for k, when in enumerate(result.times):
            writer.writerow(
                [
                    datetime.fromtimestamp(float(when), zone).isoformat(),
                    f"{result.site_kw[k]:.1f}",
                    f"{result.peak_kw[k]:.1f}",
                    f"{result.background_kw[k]:.1f}",
                    f"{result.piles_kw[k]:.1f}",
                    f"{result.limit_kw[k]:.1f}",
                    f"{result.price[k]:.4f}",
                    result.bands[k],
                ]
            )
    with (out / "events.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time", "event", "source", "kind", "device"])
        for event in result.events:
            writer.writerow(
                [
                    datetime.fromtimestamp(event.time, zone).isoformat(),
                    event.text,
                    event.source,
                    event.kind,
                    "" if event.device is None else event.device.label,
                ]
            )
    plot(result, out / "plot.png", zone)


def _band_spans(times: np.ndarray, bands: Sequence[str]) -> list[tuple[float, float, str]]:
    spans: list[tuple[float, float, str]] = []
    start = 0
    for k in range(1, len(bands) + 1):
        if k == len(bands) or bands[k] != bands[start]:
            spans.append((float(times[start]), float(times[min(k, len(times) - 1)]), bands[start]))
            start = k
    return spans


def plot(
    result: SimResult, path: Path, zone: ZoneInfo, *, others: Sequence[SimResult] = ()
) -> None:
    """Site load against the limit over the tariff's bands (under `result`'s policy and each of
    `others`), and energy per vehicle under `result`'s, as a PNG."""
    fig = plot_figure(result, zone, others=others)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_comparison(results: Sequence[SimResult], path: Path, zone: ZoneInfo) -> None:
    """`compare`'s plot.png: every policy that ran, as `comparison_figure` draws it."""
    fig = comparison_figure(results, zone)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def comparison_figure(results: Sequence[SimResult], zone: ZoneInfo) -> Figure:
    """The site load under every policy of `results` (the bound included): mpc, the product's
    own, in front with its energy per vehicle, when it ran; else the first."""
    lead = next((r for r in results if r.policy == "mpc"), results[0])
    return plot_figure(lead, zone, others=[r for r in results if r is not lead])


# Several policies' site loads often coincide for hours (every policy fills the same valley):
# each has a colour, a line style and markers at its own offset, so none hides another.
STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot_figure(result: SimResult, zone: ZoneInfo, *, others: Sequence[SimResult] = ()) -> Figure:
    """The figure `plot` draws: one site-load line per policy, each at its own times."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(13, 8), gridspec_kw={"height_ratios": [3, 2]})
    when = [datetime.fromtimestamp(float(t), zone) for t in result.times]
    for lo, hi, band in _band_spans(result.times, result.bands):
        top.axvspan(
            datetime.fromtimestamp(lo, zone),
            datetime.fromtimestamp(hi, zone),
            color=BAND_COLOURS.get(band, "#eeeeee"),
            alpha=0.6,
            lw=0,
        )
    colours = plt.get_cmap("tab10")
    marks = max(1, len(result.times) // 24)
    for index, run in enumerate([result, *others]):
        top.plot(
            [datetime.fromtimestamp(float(t), zone) for t in run.times],
            run.site_kw,
            color=colours(index),
            lw=1.6 if index == 0 else 1.1,
            ls=STYLES[index % len(STYLES)],
            marker=MARKERS[index % len(MARKERS)],
            markersize=4,
            markevery=(index * marks // max(1, len(others) + 1), marks),
            label=f"site load ({run.policy})",
        )
    top.plot(when, result.background_kw, color="#616161", lw=0.9, label="depot's own load")
    top.plot(when, result.limit_kw, color="#c62828", lw=1.5, ls="--", label="site limit")
    top.set_ylabel("kW")
    policies = f"{result.policy} and {len(others)} other policies" if others else result.policy
    top.set_title(
        f"{result.scenario}: {policies}  (shading: valley green, flat yellow, peak red, "
        "critical purple)"
    )
    top.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    top.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=zone))
    top.yaxis.set_major_formatter(thousands())
    top.grid(alpha=0.3)
    ids = list(result.requested_kwh)
    requested = np.array([result.requested_kwh[i] for i in ids])
    delivered = np.array([result.delivered_kwh.get(i, 0.0) for i in ids])
    x = np.arange(len(ids))
    bottom.bar(x, requested, color="#cfd8dc", label="requested")
    bottom.bar(x, delivered, width=0.5, color="#2e7d32", label=f"delivered ({result.policy})")
    bottom.set_ylabel("kWh per vehicle")
    bottom.yaxis.set_major_formatter(thousands())
    bottom.set_xticks(x[:: max(1, len(x) // 30)])
    bottom.set_xticklabels([ids[i] for i in x[:: max(1, len(x) // 30)]], rotation=60, fontsize=6)
    bottom.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    bottom.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def comparison_table(results: Sequence[SimResult], currency: str = "yuan") -> Table:
    """Policies side by side: cost against offline-optimal, savings against uncontrolled."""
    by_policy = {r.policy: r for r in results}
    best = by_policy.get("offline-optimal")
    base = by_policy.get("uncontrolled")
    table = Table(title=f"policies compared ({results[0].scenario})", title_justify="left")
    for column in (
        "policy",
        f"cost {currency}",
        "vs offline",
        "saved vs uncontrolled",
        "per vehicle",
        "delivered",
        "valley",
        "peak kW",
        "over limit kWh",
        "ramp kW/min",
        "solve ms p50/p95",
    ):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for result in results:
        m = result.metrics
        cost = float(m["cost_yuan"])
        versus = (
            "" if best is None else f"{100 * (cost / float(best.metrics['cost_yuan']) - 1):+.1f}%"
        )
        saved = saved_each = ""
        if base is not None:
            delta = float(base.metrics["cost_yuan"]) - cost
            saved = f"{delta:,.0f}"
            saved_each = f"{delta / max(int(m['vehicles']), 1):,.1f}"
        table.add_row(
            result.policy,
            f"{cost:,.0f}",
            versus,
            saved,
            saved_each,
            f"{float(m['delivered_pct']):.2f}%",
            f"{float(m['valley_share_pct']):.0f}%",
            f"{float(m['peak_kw']):,.0f}",
            f"{float(m['over_limit_kwh']):.2f}",
            f"{float(m['max_ramp_kw_per_min']):,.0f}",
            f"{float(m['solve_ms_p50']):.1f}/{float(m['solve_ms_p95']):.1f}",
        )
    return table
