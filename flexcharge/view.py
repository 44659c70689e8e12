"""What a person watching the daemon sees: a live terminal view and an end-of-run summary.

`LiveView` follows the daemon's cycles. On a terminal it redraws a rich panel (site load against
the limit, tariff band, every pile with its vehicle, recent events) a few times a second of real
time; anywhere else (a CI log, a pipe) it prints one plain status line per `plain_every_s` of
station time and every event as it happens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from zoneinfo import ZoneInfo

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from base.events import Event
from control.step import Cycle
from controller.status import StationPort

_BAND_STYLE = {"valley": "green", "flat": "yellow", "peak": "red", "critical": "bold magenta"}


def _bar(fraction: float, width: int) -> str:
    fraction = max(0.0, min(1.0, fraction))
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


class LiveView:
    """Shows the daemon's cycles as they happen."""

    def __init__(
        self,
        daemon: StationPort,
        console: Console | None = None,
        *,
        title: str = "flexcharge",
        refresh_s: float = 0.25,
        plain_every_s: float = 1800.0,
    ) -> None:
        self.daemon = daemon
        self.console = console or Console()
        self.title = title
        self.refresh_s = refresh_s
        self.plain_every_s = plain_every_s
        self.zone = ZoneInfo(daemon.status().station.info.timezone)
        self._live: Live | None = None
        self._last_draw = 0.0
        self._last_plain: float | None = None
        self._events_seen = 0
        daemon.watch(self.on_cycle)

    def __enter__(self) -> LiveView:
        if self.console.is_terminal:
            self._live = Live(console=self.console, auto_refresh=False, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            last = self.daemon.status().last_cycle
            if last is not None:
                self._live.update(self.render(last), refresh=True)
            self._live.__exit__(None, None, None)
            self._live = None

    def on_cycle(self, cycle: Cycle) -> None:
        """Observer called by the daemon after every cycle."""
        if self._live is not None:
            wall = time.monotonic()
            if wall - self._last_draw >= self.refresh_s:
                self._last_draw = wall
                self._live.update(self.render(cycle), refresh=True)
            return
        status = self.daemon.status()
        new = min(status.event_count - self._events_seen, len(status.events))
        for event in status.events[len(status.events) - new :]:
            self.console.print(self._line(event), highlight=False, soft_wrap=True)
        self._events_seen = status.event_count
        if self._last_plain is None or cycle.time - self._last_plain >= self.plain_every_s:
            self._last_plain = cycle.time
            self.console.print(self.status_line(cycle), highlight=False, soft_wrap=True)

    def _clock(self, when: float) -> str:
        return datetime.fromtimestamp(when, self.zone).strftime("%m-%d %H:%M:%S")

    def _line(self, event: Event) -> str:
        return f"{self._clock(event.time)}  {event.text}"

    def status_line(self, cycle: Cycle) -> str:
        """One line: time, band, site load against the limit, vehicles."""
        snap = cycle.snapshot
        grid = "   n/a" if snap.grid_kw is None else f"{snap.grid_kw:6.0f}"
        vehicles = sum(
            1 for p in snap.piles if p.reading is not None and p.reading.state.vehicle_present
        )
        charging = sum(1 for p in snap.piles if p.reading is not None and p.reading.power_kw > 0.5)
        return (
            f"{self._clock(cycle.time)}  {snap.band:<8} site {grid} / {snap.limit_kw:.0f} kW  "
            f"piles {snap.piles_kw:6.0f} kW  vehicles {vehicles:2d} ({charging} charging)"
        )

    def render(self, cycle: Cycle) -> Panel:
        """The full live panel for one cycle."""
        snap = cycle.snapshot
        status = self.daemon.status()
        band_style = _BAND_STYLE.get(snap.band, "white")
        header = Text.assemble(
            (self._clock(cycle.time), "bold"),
            "   band ",
            (
                f"{snap.band.upper()} {snap.price:.4f} {status.station.tariff.currency}/kWh",
                band_style,
            ),
        )
        grid = snap.grid_kw
        if grid is None:
            site = Text("site load: meter unavailable, assuming the worst", style="bold red")
        else:
            fraction = grid / snap.limit_kw
            style = "green" if fraction < 0.9 else ("yellow" if fraction <= 1.0 else "bold red")
            background = snap.background_kw
            site = Text.assemble(
                "site ",
                (f"{grid:7,.0f} kW", "bold"),
                f" / limit {snap.limit_kw:,.0f} kW  ",
                (_bar(fraction, 30), style),
                f" {fraction:4.0%}   depot {background:,.0f} kW   piles {snap.piles_kw:,.0f} kW"
                if background is not None
                else f" {fraction:4.0%}",
            )
        table = Table(expand=False, box=None, padding=(0, 1))
        for column, justify in (
            ("pile", "left"),
            ("rating", "right"),
            ("state", "left"),
            ("SoC", "right"),
            ("power", "right"),
            ("setpoint", "right"),
            ("", "left"),
        ):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for view in snap.piles:
            reading = view.reading
            if reading is None:
                table.add_row(
                    view.id,
                    f"{view.config.max_kw:.0f}",
                    Text("no answer", style="red"),
                    "",
                    "",
                    "",
                    "",
                )
                continue
            soc = "" if reading.soc_pct is None else f"{reading.soc_pct:.0f}%"
            setpoint = cycle.setpoints.get(view.id, 0.0)
            table.add_row(
                view.id,
                f"{view.config.max_kw:.0f}",
                reading.state.value,
                soc,
                f"{reading.power_kw:6.1f}",
                f"{setpoint:6.1f}",
                Text(_bar(reading.power_kw / max(view.config.max_kw, 1.0), 16), style="cyan"),
            )
        tally = status.tally
        footer = Text(
            f"delivered {tally.energy_kwh:,.0f} kWh   peak {tally.peak_grid_kw:,.0f} kW   "
            f"over the limit {tally.over_limit_s:.0f} s   cycles {tally.cycles}"
        )
        recent = status.events[-6:]
        events = Text(
            "\n".join(self._line(event) for event in recent) or "no events yet",
            style="dim",
        )
        return Panel(
            Group(header, site, Text(""), table, Text(""), footer, Text(""), events),
            title=self.title,
            border_style="blue",
        )


def summary_table(title: str, rows: Sequence[tuple[str, str]]) -> Table:
    """A two-column table of figures."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    for name, value in rows:
        table.add_row(name, value)
    return table
