"""A tariff drawn for a utility engineer's sanity check: its bands over a day and over a year.

`day_figure` draws the import price over the day for each season and day type, the bands shaded
and named; `year_figure` a heatmap of the price by day of the year and time of day; `band_rows`
tabulates each band's price and how many hours of the year it is in force.
"""

from __future__ import annotations

import calendar
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from numpy.typing import NDArray

from base.tariff import MINUTES_PER_DAY, WEEKDAY_NAMES, Tariff, hhmm
from simulator.report import BAND_COLOURS

QUARTERS = MINUTES_PER_DAY // 15


def year_prices(tariff: Tariff, year: int) -> tuple[NDArray[np.float64], list[list[str]]]:
    """Price and band of every quarter hour of `year` (local wall time): (days x 96, bands)."""
    days = 366 if calendar.isleap(year) else 365
    prices = np.zeros((days, QUARTERS))
    bands: list[list[str]] = []
    for day in range(days):
        date = datetime.fromordinal(datetime(year, 1, 1).toordinal() + day)
        season = tariff.season(date.replace(tzinfo=tariff.zone))
        day_type = season.day_type(date.weekday())
        row = [day_type.band_at_minute(q * 15) for q in range(QUARTERS)]
        bands.append(row)
        prices[day] = [tariff.band_prices[band] for band in row]
    return prices, bands


def band_rows(tariff: Tariff, year: int) -> list[dict[str, Any]]:
    """Each band: its price, and its hours in `year` (and their share), cheapest band first."""
    _, bands = year_prices(tariff, year)
    quarters: dict[str, int] = dict.fromkeys(tariff.band_prices, 0)
    for row in bands:
        for band in row:
            quarters[band] += 1
    total = sum(quarters.values())
    rows = [
        {
            "band": band,
            "price": price,
            "hours_per_year": quarters[band] / 4,
            "share_pct": 100 * quarters[band] / total,
            "when": _when(tariff, band),
        }
        for band, price in tariff.band_prices.items()
    ]
    return sorted(rows, key=lambda r: r["price"])


def _when(tariff: Tariff, band: str) -> str:
    """Where `band` lies in each season and day type, e.g. 'standard/every day 00:00-08:00'."""
    parts = []
    for season in tariff.seasons:
        for day_type in season.day_types:
            spans = [
                f"{hhmm(p.start_min)}-{hhmm(p.end_min)}" for p in day_type.periods if p.band == band
            ]
            if spans:
                days = (
                    day_type.name
                    if len(season.day_types) == 1
                    else "/".join(WEEKDAY_NAMES[d] for d in sorted(day_type.weekdays))
                )
                parts.append(f"{season.name} ({days}): {', '.join(spans)}")
    return "; ".join(parts) if parts else "never"


def day_figure(tariff: Tariff, path: Path) -> None:
    """The price over the day, one panel per season and day type, bands shaded and named."""
    panels = [(s, d) for s in tariff.seasons for d in s.day_types]
    fig, axes = plt.subplots(
        len(panels), 1, figsize=(12, 1.9 * len(panels) + 0.8), sharex=True, squeeze=False
    )
    top = max(tariff.band_prices.values()) * 1.25 or 1.0
    for ax, (season, day_type) in zip(axes[:, 0], panels, strict=True):
        edges: list[float] = []
        levels: list[float] = []
        for period in day_type.periods:
            lo, hi = period.start_min / 60, period.end_min / 60
            price = tariff.band_prices[period.band]
            ax.axvspan(lo, hi, color=BAND_COLOURS.get(period.band, "#eeeeee"), alpha=0.8, lw=0)
            ax.text(
                (lo + hi) / 2,
                price + top * 0.03,
                f"{period.band}\n{price:.4f}",
                ha="center",
                va="bottom",
                fontsize=7,
            )
            edges += [lo, hi]
            levels += [price, price]
        ax.plot(edges, levels, color="#263238", lw=1.6)
        months = ", ".join(calendar.month_abbr[m] for m in sorted(season.months))
        days = ", ".join(WEEKDAY_NAMES[d] for d in sorted(day_type.weekdays))
        ax.set_title(f"{season.name} ({months}); {day_type.name} ({days})", fontsize=9, loc="left")
        ax.set_ylim(0, top)
        ax.set_ylabel(f"{tariff.currency}/kWh")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlim(0, 24)
    axes[-1, 0].set_xticks(range(0, 25, 2))
    axes[-1, 0].set_xticklabels([f"{h:02d}:00" for h in range(0, 25, 2)])
    axes[-1, 0].set_xlabel(f"local time of day ({tariff.timezone})")
    fig.suptitle(
        f"{tariff.name}: import price by time of day; demand charge "
        f"{tariff.demand_charge_per_kw_month:g} {tariff.currency}/kW per month, export "
        f"{tariff.export_price:g} {tariff.currency}/kWh",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def year_figure(tariff: Tariff, year: int, path: Path) -> None:
    """A heatmap of the import price by day of `year` (rows) and time of day (columns)."""
    prices, _ = year_prices(tariff, year)
    fig, ax = plt.subplots(figsize=(10, 8))
    image = ax.imshow(
        prices,
        aspect="auto",
        interpolation="nearest",
        cmap="RdYlGn_r",
        extent=(0, 24, prices.shape[0], 0),
    )
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(f"import price ({tariff.currency}/kWh)")
    firsts = [datetime(year, m, 1).timetuple().tm_yday - 1 for m in range(1, 13)]
    ax.set_yticks(firsts)
    ax.set_yticklabels([f"{calendar.month_abbr[m]} 1" for m in range(1, 13)])
    ax.set_xticks(range(0, 25, 2))
    ax.set_xticklabels([f"{h:02d}:00" for h in range(0, 25, 2)])
    ax.set_xlabel(f"local time of day ({tariff.timezone})")
    ax.set_ylabel(f"day of {year}")
    ax.set_title(f"{tariff.name}: import price over {year}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
