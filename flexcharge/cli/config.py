"""`flexcharge check-config`: validate a station (with its tariff and maps), a tariff or a device
map file, and say in a few lines what it holds."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from base.config import Station, load_station
from base.loading import ConfigError, Problems, read_toml
from base.mapfile import load_register_map
from base.tarifffile import load_tariff

from . import dirs
from .common import EXIT_BAD_CONFIG, EXIT_OK, print_problems


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `check-config` to the command line."""
    check = sub.add_parser("check-config", help="validate a station, tariff or device map file")
    check.add_argument("path", help="the file to check: a station, a tariff or a device map")
    check.set_defaults(func=cmd_check_config)


def cmd_check_config(args: argparse.Namespace, console: Console) -> int:
    """Check a station (with its tariff and maps), a tariff, or a device map file."""
    path = Path(args.path)
    try:
        keys = set(read_toml(path, Problems(path)))
    except ConfigError:
        keys = set()  # load_station reports the reason with the file named
    try:
        if "registers" in keys:
            regmap = load_register_map(path)
            console.print(
                f"valid device map: {regmap.title} ({regmap.kind}), {len(regmap.registers)} registers"
            )
        elif "bands" in keys:
            tariff = load_tariff(path)
            bands = ", ".join(f"{band} {price:.4f}" for band, price in tariff.band_prices.items())
            console.print(
                f"valid tariff: {tariff.name}: {bands} {tariff.currency}/kWh, {len(tariff.seasons)} season(s)"
            )
        else:
            _describe_station(load_station(path), console)
    except ConfigError as err:
        print_problems(err, console)
        return EXIT_BAD_CONFIG
    return EXIT_OK


def _describe_station(station: Station, console: Console) -> None:
    console.print(
        f"valid station: {station.name}: limit {station.limit_kw:,.0f} kW "
        f"({station.transformer.rating_kva:g} kVA x {station.transformer.power_factor:g} x "
        f"{station.transformer.margin:g}), {len(station.piles)} piles "
        f"({sum(p.max_kw for p in station.piles):,.0f} kW), meter {station.grid_meter.id} "
        f"({station.grid_meter.device}), tariff {station.tariff.name}",
        highlight=False,
        soft_wrap=True,
    )
    protocols: dict[str, int] = {}
    for device in station.devices:
        protocols[device.protocol] = protocols.get(device.protocol, 0) + 1
    links = ", ".join(f"{count} {name}" for name, count in sorted(protocols.items()))
    console.print(f"devices: {links}", highlight=False)
    ocpp = station.ocpp
    if ocpp is not None:
        scheme = "wss" if ocpp.tls else "ws"
        points = sorted({p.identity for p in station.piles if p.ocpp})
        console.print(
            f"OCPP server: {scheme}://{ocpp.host}:{ocpp.port}/<identity>, security profile "
            f"{ocpp.security_profile}, charge points {', '.join(points)}",
            highlight=False,
            soft_wrap=True,
        )
    if station.certs_dir is not None:
        state = "present" if station.certs_dir.is_dir() else "not created yet"
        console.print(f"certificates: {station.certs_dir} ({state})", highlight=False)
    console.print(f"telemetry: {telemetry_target(station)}", highlight=False, soft_wrap=True)


def telemetry_target(station: Station) -> str:
    """Where a station's telemetry goes, in words (never the token): its files as the daemon,
    run by this user in this environment, would find them."""
    settings = station.telemetry
    if not settings.enabled:
        return "off"
    try:
        directory = dirs.resolve().telemetry
    except dirs.DirsError as exc:
        return f"no telemetry directory ({exc})"
    if settings.url is None:
        store = directory / (settings.local_store or f"{station.path.stem}.sqlite")
        return f"local store {store}"
    buffer = directory / (settings.buffer_dir or ".")
    return (
        f"InfluxDB at {settings.url}, org {settings.org}, bucket {settings.bucket} "
        f"({settings.token_source}); batches of {settings.batch_size}, disk buffer in "
        f"{buffer} up to {settings.buffer_max_mb:g} MB"
    )
