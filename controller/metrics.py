"""Prometheus metrics of a running daemon, read from its state when scraped.

Nothing is counted twice: the collector reads the daemon's `Tally`, feeds and last cycle at
scrape time, so the control loop does no extra work for it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)

from controller.status import StationStatus, StatusSource


class DaemonCollector:
    """The metrics of one daemon, in the `flexcharge_` namespace."""

    def __init__(self, daemon: StatusSource) -> None:
        self.daemon = daemon

    def collect(self) -> Iterator[Metric]:
        """Every metric, as the daemon sees the site now."""
        status = self.daemon.status()
        cycle = status.last_cycle
        snapshot = None if cycle is None else cycle.snapshot
        site = GaugeMetricFamily(
            "flexcharge_site_load_kw", "Site import measured at the grid connection (kW)"
        )
        if snapshot is not None and snapshot.grid_kw is not None:
            site.add_metric([], snapshot.grid_kw)
        yield site
        limit = GaugeMetricFamily(
            "flexcharge_site_limit_kw",
            "Site limit the controller keeps under, by what set it",
            labels=["source"],
        )
        if snapshot is not None:
            limit.add_metric([status.limit_source], snapshot.limit_kw)
        yield limit
        yield GaugeMetricFamily(
            "flexcharge_transformer_limit_kw",
            "The transformer's limit (kW)",
            value=status.station.limit_kw,
        )
        override = GaugeMetricFamily(
            "flexcharge_limit_override_kw", "Operator override of the site limit in force (kW)"
        )
        if status.override is not None:
            override.add_metric([], status.override.kw)
        yield override
        background = GaugeMetricFamily(
            "flexcharge_background_kw", "The site's own load: grid minus piles (kW)"
        )
        if snapshot is not None and snapshot.background_kw is not None:
            background.add_metric([], snapshot.background_kw)
        yield background
        budget = GaugeMetricFamily("flexcharge_pile_budget_kw", "Power the piles may draw (kW)")
        if cycle is not None:
            budget.add_metric([], cycle.budget_kw)
        yield budget
        price = GaugeMetricFamily(
            "flexcharge_tariff_price", "Import price now (currency per kWh)", labels=["band"]
        )
        if snapshot is not None:
            price.add_metric([snapshot.band], snapshot.price)
        yield price
        yield from self._piles(status)
        yield from self._counters(status)

    def _piles(self, status: StationStatus) -> Iterator[Metric]:
        cycle = status.last_cycle
        power = GaugeMetricFamily(
            "flexcharge_pile_power_kw", "Power a pile measures (kW)", labels=["pile"]
        )
        soc = GaugeMetricFamily(
            "flexcharge_vehicle_soc_ratio",
            "State of charge of the vehicle at a pile",
            labels=["pile"],
        )
        if cycle is not None:
            for view in cycle.snapshot.piles:
                if view.reading is None:
                    continue
                power.add_metric([view.id], view.reading.power_kw)
                if view.reading.soc_pct is not None:
                    soc.add_metric([view.id], view.reading.soc_pct / 100)
        setpoint = GaugeMetricFamily(
            "flexcharge_pile_setpoint_kw", "Setpoint last written to a pile (kW)", labels=["pile"]
        )
        for pid, kw in status.setpoints.items():
            setpoint.add_metric([pid], kw)
        yield from (power, setpoint, soc)
        yield GaugeMetricFamily(
            "flexcharge_sessions", "Vehicles connected", value=len(status.sessions)
        )

    def _counters(self, status: StationStatus) -> Iterator[Metric]:
        tally = status.tally
        yield SummaryMetricFamily(
            "flexcharge_cycle_duration_seconds",
            "Time a control cycle took (read, decide, write)",
            count_value=tally.cycles,
            sum_value=tally.cycle_ms_total / 1000,
        )
        yield GaugeMetricFamily(
            "flexcharge_cycle_duration_max_seconds",
            "Longest control cycle since the start",
            value=tally.cycle_ms_max / 1000,
        )
        yield CounterMetricFamily(
            "flexcharge_plans", "Plans adopted (solver or fallback)", value=tally.plans
        )
        yield CounterMetricFamily(
            "flexcharge_fallback_plans",
            "Plans from the fallback heuristic after the optimiser gave none",
            value=tally.fallbacks,
        )
        yield CounterMetricFamily(
            "flexcharge_over_limit_seconds",
            "Time the measured site load was above the limit",
            value=tally.over_limit_s,
        )
        yield CounterMetricFamily(
            "flexcharge_energy_delivered_kwh",
            "Energy the piles' counters say they delivered",
            value=tally.energy_kwh,
        )
        failures = CounterMetricFamily(
            "flexcharge_device_failures",
            "Times a device started failing (no answer, or an implausible one)",
            labels=["device"],
        )
        up = GaugeMetricFamily(
            "flexcharge_device_up", "1 while a device answers plausibly", labels=["device"]
        )
        for device in status.devices:
            failures.add_metric([device.device], device.episodes)
            up.add_metric([device.device], 1.0 if device.ok else 0.0)
        yield failures
        yield up


def metrics_text(registry: CollectorRegistry) -> bytes:
    """The registry in Prometheus' text format."""
    return generate_latest(registry)


def registry_for(daemon: StatusSource) -> CollectorRegistry:
    """A registry of its own for `daemon` (several daemons may run in one test process)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DaemonCollector(daemon))
    return registry
