"""The `flexcharge` command: check a config, run (and reload) the daemon, simulate hardware, demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.logging import RichHandler

from base.config import REFERENCE_STATION, ApiSettings, Station, load_station
from base.loading import ConfigError, Problems, read_toml
from base.mapfile import load_register_map
from base.tarifffile import load_tariff

if TYPE_CHECKING:
    from controller.daemon import Daemon
    from controller.status import Cycle
    from controller.telemetry.writer import TelemetryWriter
    from simulator.fast import Scenario
    from simulator.whatif import TariffCase

log = logging.getLogger("flexcharge")

# Each command imports what only it needs (the simulator, matplotlib, the daemon) inside its
# function, so that `check-config` on an operator's box starts fast and needs none of them.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_CONFIG = 2


def _setup_logging(level: str, console: Console | None = None) -> None:
    handler: logging.Handler
    if console is not None:
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Our drivers report every device failure once, with the device named; pymodbus's own
    # messages about the same failures would only repeat them, every cycle.
    logging.getLogger("pymodbus").setLevel(
        logging.DEBUG if level.upper() == "DEBUG" else logging.CRITICAL
    )


def _print_problems(err: ConfigError, console: Console) -> None:
    console.print(f"[bold red]{len(err.problems)} problem(s):[/]")
    for problem in err.problems:
        console.print(f"  - {problem}", highlight=False, markup=False, soft_wrap=True)


def _load(path: Path, console: Console) -> Station | None:
    try:
        return load_station(path)
    except ConfigError as err:
        _print_problems(err, console)
        return None


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
            station = load_station(path)
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
            if station.certs_dir is not None:
                state = "present" if station.certs_dir.is_dir() else "not created yet"
                console.print(f"certificates: {station.certs_dir} ({state})", highlight=False)
            console.print(
                f"telemetry: {telemetry_target(station)}", highlight=False, soft_wrap=True
            )
    except ConfigError as err:
        _print_problems(err, console)
        return EXIT_BAD_CONFIG
    return EXIT_OK


def cmd_certs_init(args: argparse.Namespace, console: Console) -> int:
    """Create a station CA and the certificates the daemon and the simulator present."""
    from base import certs

    target = Path(args.dir)
    try:
        written = certs.init(
            target, station=args.station, hosts=args.host, days=args.days, force=args.force
        )
    except (certs.CertError, OSError) as exc:
        console.print(f"[bold red]{exc}[/]")
        return EXIT_FAILURE
    console.print(f"station CA and certificates in {target}:", highlight=False)
    for path in written:
        mode = path.stat().st_mode & 0o777
        console.print(f"  {oct(mode)[2:]}  {path}", highlight=False, markup=False)
    console.print(
        "point a station at it with [security] certs = DIR; private keys are readable by "
        "their owner only: keep private/ca.key offline once the devices are enrolled",
        markup=False,
    )
    return EXIT_OK


def _pidfile(args: argparse.Namespace) -> Path:
    """The pidfile given, or var/run/<station file stem>.pid under the working directory."""
    if args.pidfile:
        return Path(args.pidfile)
    return Path("var") / "run" / f"{Path(args.station).stem}.pid"


def state_path(station_path: Path) -> Path:
    """Where `run` keeps a station's state by default: var/state/<station file stem>.sqlite."""
    return Path("var") / "state" / f"{station_path.stem}.sqlite"


def telemetry_target(station: Station) -> str:
    """Where a station's telemetry goes, in words (never the token)."""
    settings = station.telemetry
    if not settings.enabled:
        return "off"
    if settings.url is None:
        store = settings.local_store or f"var/telemetry/{station.path.stem}.sqlite"
        return f"local store {store}"
    return (
        f"InfluxDB at {settings.url}, org {settings.org}, bucket {settings.bucket} "
        f"({settings.token_source}); batches of {settings.batch_size}, disk buffer in "
        f"{settings.buffer_dir} up to {settings.buffer_max_mb:g} MB"
    )


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _is_daemon(pid: int) -> bool:
    """True if `pid` is a live process that is (as far as the system tells) flexcharge."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc here: a live process is taken for the daemon
    # A pid the system gave to another program since: signalling it could end that program.
    return b"flexcharge" in cmdline or b"flexcharge.cli" in cmdline


def _claim_pidfile(path: Path) -> int | None:
    """Write this process's pid to `path`; return the pid of a live daemon holding it instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            other = _read_pid(path)
            if other is not None and other != os.getpid() and _is_daemon(other):
                return other
            log.warning("replacing the stale pidfile %s (pid %s is not running)", path, other)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
        return None
    raise OSError(f"cannot create the pidfile {path}: another process keeps replacing it")


def _release_pidfile(path: Path) -> None:
    if _read_pid(path) == os.getpid():
        path.unlink(missing_ok=True)


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    """Run the daemon against the station's real devices, in real time; SIGHUP reloads."""
    station = _load(Path(args.station), console)
    if station is None:
        return EXIT_BAD_CONFIG
    station_path = Path(args.station).resolve()
    # `flexcharge reload` may signal as soon as the pidfile exists: until the daemon's handler
    # is in place, a SIGHUP must not end the process (its default), only be missed.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pidfile = _pidfile(args)
    try:
        running = _claim_pidfile(pidfile)
    except OSError as exc:
        console.print(f"[bold red]{exc}[/]", highlight=False)
        return EXIT_FAILURE
    if running is not None:
        console.print(
            f"[bold red]already running[/]: pid {running} ({pidfile}); "
            "reload it with `flexcharge reload`, or stop it first",
            highlight=False,
        )
        return EXIT_BAD_CONFIG
    try:
        return _run_daemon(args, station, station_path, console)
    finally:
        _release_pidfile(pidfile)


def _run_daemon(
    args: argparse.Namespace, station: Station, station_path: Path, console: Console
) -> int:
    from base.clock import WallClock
    from controller.daemon import Daemon
    from controller.store import StateError, StateStore

    async def main(store: StateStore) -> int:
        telemetry = _telemetry_writer(station, Path(args.station), console)
        if isinstance(telemetry, int):
            return telemetry
        try:
            daemon = Daemon.for_station(station, WallClock(), store=store, telemetry=telemetry)
        except ConfigError as err:  # certificates or a password an encrypted link needs
            if telemetry is not None:
                telemetry.close()
            _print_problems(err, console)
            return EXIT_BAD_CONFIG
        if not _serve_api(daemon, _api_settings(args, station), console):
            if telemetry is not None:
                telemetry.close()
            return EXIT_FAILURE
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, daemon.request_stop)
        loop.add_signal_handler(signal.SIGHUP, daemon.request_reload, station_path)
        status_every = args.status_every

        def status(cycle: Cycle) -> None:
            if cycle.time - getattr(status, "last", -1e18) >= status_every:
                status.last = cycle.time  # type: ignore[attr-defined]
                snap = cycle.snapshot
                grid = "n/a" if snap.grid_kw is None else f"{snap.grid_kw:.0f}"
                log.info(
                    "site %s / %.0f kW, piles %.0f kW, band %s",
                    grid,
                    snap.limit_kw,
                    snap.piles_kw,
                    snap.band,
                )

        daemon.watch(status)
        await daemon.run()
        return EXIT_OK

    # A state file that cannot be read stops the daemon before it touches a device: starting
    # afresh would forget the month's peak and count sessions' energy again.
    try:
        store = StateStore(args.state or state_path(Path(args.station)), station.name)
        with store:
            return asyncio.run(main(store))
    except StateError as exc:
        console.print(str(exc), style="bold red", highlight=False, markup=False, soft_wrap=True)
        return EXIT_BAD_CONFIG


def _api_settings(args: argparse.Namespace, station: Station) -> ApiSettings | None:
    """The station's [api] settings, with `--api HOST:PORT` (which also enables it) applied."""
    settings = station.api
    if args.api is None:
        return settings
    host, port = args.api
    return (settings or ApiSettings()).model_copy(update={"host": host, "port": port})


def _parse_api(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def _serve_api(daemon: Daemon, settings: ApiSettings | None, console: Console) -> bool:
    """Give the daemon its API service (if configured); False if its address cannot be had."""
    if settings is None:
        return True
    from controller.api import ApiServer

    server = ApiServer(daemon, settings)
    try:
        server.bind()
    except OSError as exc:
        console.print(
            f"[bold red]cannot serve the API on {settings.host}:{settings.port}: "
            f"{exc.strerror or exc}[/]",
            highlight=False,
        )
        return False
    daemon.services.append(server)
    return True


def _telemetry_writer(
    station: Station, station_file: Path, console: Console
) -> TelemetryWriter | int | None:
    """The writer [telemetry] asks for (None if disabled), or EXIT_BAD_CONFIG after printing why
    (a token variable unset, a store or buffer file that is not one)."""
    from controller.telemetry.files import TelemetryError
    from controller.telemetry.writer import writer_for

    try:
        return writer_for(station, station_file)
    except ConfigError as err:
        _print_problems(err, console)
    except TelemetryError as exc:
        console.print(str(exc), style="bold red", highlight=False, markup=False, soft_wrap=True)
    return EXIT_BAD_CONFIG


def cmd_reload(args: argparse.Namespace, console: Console) -> int:
    """Check a station file, then tell the daemon running it to reload it (SIGHUP)."""
    path = Path(args.station)
    if _load(path, console) is None:
        return EXIT_BAD_CONFIG
    pidfile = _pidfile(args)
    if not pidfile.exists():
        console.print(
            f"[bold red]no pidfile {pidfile}[/]: is `flexcharge run --station {path}` running "
            "from this directory? (give --pidfile if it was started with one)",
            highlight=False,
        )
        return EXIT_FAILURE
    pid = _read_pid(pidfile)
    if pid is None:
        console.print(f"[bold red]{pidfile} holds no process id[/]", highlight=False)
        return EXIT_FAILURE
    if not _is_daemon(pid):
        console.print(
            f"[bold red]no daemon is running as pid {pid}[/] ({pidfile} is stale)", highlight=False
        )
        return EXIT_FAILURE
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        console.print(f"[bold red]cannot signal pid {pid}: {exc.strerror}[/]", highlight=False)
        return EXIT_FAILURE
    console.print(
        f"{path} is valid; daemon pid {pid} asked to reload it (its log says what changed)",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_OK


def cmd_sim_hardware(args: argparse.Namespace, console: Console) -> int:
    """Serve the station's devices (Modbus TCP, OPC-UA) on loopback, in real time, until stopped."""
    from base.clock import WallClock
    from simulator.hardware import SimulatorError, StationSimulator

    station = _load(Path(args.station), console)
    if station is None:
        return EXIT_BAD_CONFIG
    from simulator.faults import FaultScript, load_faults
    from simulator.scenario import load_sessions

    try:
        visits = load_sessions(Path(args.sessions), station=station) if args.sessions else None
        faults = load_faults(Path(args.faults), station=station) if args.faults else FaultScript()
    except ConfigError as err:
        _print_problems(err, console)
        return EXIT_BAD_CONFIG

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        simulator = StationSimulator(station, WallClock(), visits=visits, faults=faults)
        try:
            await simulator.start()
        except SimulatorError as exc:
            log.error("%s", exc)
            return EXIT_FAILURE
        except ConfigError as err:  # certificates or a password an encrypted endpoint needs
            _print_problems(err, console)
            return EXIT_BAD_CONFIG
        log.info(
            "serving %s; stop with Ctrl-C",
            ", ".join(f"{d.id}@{d.host}:{d.port}" for d in station.devices),
        )
        try:
            await stop.wait()
        finally:
            await simulator.stop()
        log.info("simulator stopped")
        return EXIT_OK

    return asyncio.run(main())


def cmd_demo(args: argparse.Namespace, console: Console) -> int:
    """Simulated station + daemon over real Modbus on loopback, faster than real time."""
    from flexcharge.demo import demo_start, print_summary, run_demo
    from simulator.hardware import SimulatorError

    station = _load(Path(args.station), console)
    if station is None:
        return EXIT_BAD_CONFIG
    if args.period is not None:
        station = station.with_control(period_s=args.period)
    start = demo_start(station, args.start)
    console.print(
        f"[bold]flexcharge demo[/]: {station.name}, {len(station.piles)} piles, limit {station.limit_kw:,.0f} kW; "
        f"{args.hours:g} h of station time from {args.start} at up to {args.speed:g}x real time "
        f"(at most {args.duration:g} s), control period {station.control.period_s:g} s of station time, "
        "over Modbus TCP on loopback",
        highlight=False,
        soft_wrap=True,
    )
    try:
        result = asyncio.run(
            run_demo(
                station,
                start=start,
                hours=args.hours,
                speed=args.speed,
                duration_s=args.duration,
                console=console,
                api=_api_settings(args, station) if args.api else None,
            )
        )
    except SimulatorError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    except OSError as exc:  # the API's address (the simulator reports its own)
        log.error("cannot serve the API: %s", exc)
        return EXIT_FAILURE
    print_summary(result, station, console)
    return EXIT_OK


ALL_POLICIES = ("uncontrolled", "equal-share", "edf", "llf", "mpc", "offline-optimal")


def _scenario(
    args: argparse.Namespace, console: Console, tariffs: Sequence[str]
) -> tuple[Station, Scenario, list[TariffCase]] | None:
    """The station, the scenario and the tariff cases a simulate, compare or tariff compare
    command names (under the first of `tariffs`, or the station's), or None after printing
    every problem of every file."""
    from simulator.whatif import load_scenario

    station = _load(Path(args.station), console)
    if station is None:
        return None
    # tariff compare takes no fault script.
    faults = getattr(args, "faults", None)
    try:
        scenario, cases = load_scenario(
            station,
            Path(args.sessions),
            [Path(t) for t in tariffs],
            background=Path(args.background) if args.background else None,
            limit=Path(args.limit) if args.limit else None,
            faults=Path(faults) if faults else None,
            warmup_days=args.warmup_days,
        )
    except ConfigError as err:
        _print_problems(err, console)
        return None
    return station, scenario, cases


def _run_policies(args: argparse.Namespace, console: Console, policies: Sequence[str]) -> int:
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    from simulator.fast import simulate
    from simulator.report import comparison_table, plot, write_outputs

    loaded = _scenario(args, console, [args.tariff] if args.tariff else [])
    if loaded is None:
        return EXIT_BAD_CONFIG
    station, scenario, _ = loaded
    zone = ZoneInfo(station.info.timezone)
    out = Path(args.out)
    telemetry = _simulation_telemetry(args, station, policies, console)
    if isinstance(telemetry, int):
        return telemetry
    results = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
    )
    with Progress(
        *columns, console=console, disable=not console.is_terminal, transient=True
    ) as progress:
        for policy in policies:
            task = progress.add_task(f"{policy:<16}", total=1.0)

            def advance(done: float, task: TaskID = task) -> None:
                progress.update(task, completed=done)

            result = simulate(
                scenario,
                policy,
                step_s=args.step,
                plan_period_s=args.plan_period,
                progress=advance,
                telemetry=telemetry,
            )
            results.append(result)
            target = out if len(policies) == 1 else out / policy
            write_outputs(result, target, zone)
            if not console.is_terminal:
                m = result.metrics
                console.print(
                    f"{policy}: cost {m['cost_yuan']} {station.tariff.currency}, delivered {m['delivered_pct']}%, "
                    f"peak {m['peak_kw']} kW, over limit {m['over_limit_kwh']} kWh ({m['wall_s']} s)",
                    highlight=False,
                    soft_wrap=True,
                )
    if len(results) > 1:
        plot(results[0], out / "plot.png", zone, others=results[1:3])
        (out / "comparison.json").write_text(
            json.dumps([r.metrics for r in results], indent=2) + "\n", encoding="utf-8"
        )
    if telemetry is not None:
        counts = telemetry.close()
        console.print(
            f"telemetry to {telemetry.sink.description}: {counts.summary()}",
            highlight=False,
            soft_wrap=True,
        )
    console.print(comparison_table(results, currency=scenario.tariff.currency))
    where = out / "metrics.json" if len(results) == 1 else out
    console.print(f"written to {where}", highlight=False, soft_wrap=True)
    return EXIT_OK


def _simulation_telemetry(
    args: argparse.Namespace, station: Station, policies: Sequence[str], console: Console
) -> TelemetryWriter | int | None:
    """The started writer `simulate --telemetry` asks for (None without the flag), or an exit
    code after printing why not."""
    if not getattr(args, "telemetry", False):
        return None
    if len(policies) != 1:
        console.print(
            "[bold red]--telemetry: give one --policy (runs would overwrite each other)[/]"
        )
        return EXIT_BAD_CONFIG
    from controller.telemetry.files import TelemetryError
    from controller.telemetry.writer import writer_for

    out = Path(args.out)
    try:
        telemetry = writer_for(
            station.with_telemetry(enabled=True),
            Path(args.station),
            local_store=out / "telemetry.sqlite",
            buffer_dir=out,
        )
    except ConfigError as err:
        _print_problems(err, console)
        return EXIT_BAD_CONFIG
    except TelemetryError as exc:
        console.print(str(exc), style="bold red", highlight=False, markup=False, soft_wrap=True)
        return EXIT_BAD_CONFIG
    assert telemetry is not None
    telemetry.start()
    return telemetry


def cmd_simulate(args: argparse.Namespace, console: Console) -> int:
    """Run the station through a scenario on the simulated clock, under one or more policies."""
    return _run_policies(args, console, args.policy or ["mpc"])


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    """Every policy (or those named) on the same scenario, side by side."""
    return _run_policies(args, console, args.policy or list(ALL_POLICIES))


def cmd_sessions(args: argparse.Namespace, console: Console) -> int:
    """Write a seeded random sessions CSV from the station's [simulator] section."""

    from simulator.fleet import random_days
    from simulator.scenario import write_sessions

    station = _load(Path(args.station), console)
    if station is None:
        return EXIT_BAD_CONFIG
    if station.simulator is None:
        console.print(f"[bold red]{station.path}: the station has no [simulator] section[/]")
        return EXIT_BAD_CONFIG
    zone = ZoneInfo(station.info.timezone)
    try:
        first = datetime.fromisoformat(args.start).replace(tzinfo=zone)
    except ValueError:
        console.print(f"[bold red]--start: not a date: {args.start!r} (write e.g. 2026-11-10)[/]")
        return EXIT_BAD_CONFIG
    start = first.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    end = start + args.days * 86400
    visits = [
        v for v in random_days(station.simulator, start, end, zone) if start <= v.arrival < end
    ]
    write_sessions(Path(args.out), visits, zone)
    energy = sum(v.energy_kwh for v in visits)
    console.print(
        f"{len(visits)} sessions, {energy:,.0f} kWh wanted, written to {args.out}", highlight=False
    )
    return EXIT_OK


def cmd_tariff_compare(args: argparse.Namespace, console: Console) -> int:
    """The same scenario under several tariffs (and policies): a report for utility engineers."""
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

    from simulator.whatif import (
        WHATIF_PLAN_PERIOD_S,
        WHATIF_STEP_S,
        compare_tariffs,
        plan_jobs,
    )
    from simulator.whatif_report import comparison_table, write_report

    # Every input is checked before anything runs, and every problem is reported at once.
    loaded = _scenario(args, console, args.tariffs)
    if loaded is None:
        return EXIT_BAD_CONFIG
    _, scenario, cases = loaded
    step = WHATIF_STEP_S if args.step is None else args.step
    plan_period = WHATIF_PLAN_PERIOD_S if args.plan_period is None else args.plan_period
    policies = args.policy or ["mpc"]
    jobs = plan_jobs(cases, policies)
    console.print(
        f"{len(cases)} tariffs x {len(dict.fromkeys([*policies, 'uncontrolled']))} policies: "
        f"{len(jobs)} simulations of {scenario.name} ({(scenario.end - scenario.measured_start) / 86400:g} days), "
        f"step {step:g} s, re-plan at least every {plan_period:g} s",
        highlight=False,
        soft_wrap=True,
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(),
    )
    with Progress(
        *columns, console=console, disable=not console.is_terminal, transient=True
    ) as progress:
        tasks: dict[str, TaskID] = {
            job.title: progress.add_task(f"{job.title:<32}", total=1.0) for job in jobs
        }

        def advance(title: str, done: float) -> None:
            progress.update(tasks[title], completed=done)

        whatif = compare_tariffs(
            scenario,
            cases,
            policies,
            step_s=step,
            plan_period_s=plan_period,
            workers=args.workers,
            progress=advance,
        )
    page = write_report(whatif, Path(args.out))
    console.print(comparison_table(whatif))
    console.print(
        f"{whatif.simulations} simulations in {whatif.wall_s:.1f} s ({whatif.workers} processes); "
        f"report: {page} and {Path(args.out) / 'report.png'}",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_OK


def cmd_tariff_show(args: argparse.Namespace, console: Console) -> int:
    """Draw a tariff's bands over a day and a year, tabulate them, and check for gaps/overlaps."""
    from rich.table import Table

    from base.tariff import coverage_problems
    from simulator.tariff_view import band_rows, day_figure, year_figure

    path = Path(args.path)
    try:
        tariff = load_tariff(path)
    except ConfigError as err:
        _print_problems(err, console)
        return EXIT_BAD_CONFIG
    year = args.year or datetime.now().year
    table = Table(title=f"{tariff.name} ({path})", title_justify="left")
    for column in (
        "band",
        f"price ({tariff.currency}/kWh)",
        f"hours in {year}",
        "share of the year",
        "when",
    ):
        table.add_column(column, justify="left" if column in ("band", "when") else "right")
    for row in band_rows(tariff, year):
        table.add_row(
            row["band"],
            f"{row['price']:.4f}",
            f"{row['hours_per_year']:,.0f}",
            f"{row['share_pct']:.1f}%",
            row["when"],
        )
    console.print(table)
    console.print(
        f"demand charge {tariff.demand_charge_per_kw_month:g} {tariff.currency}/kW per month on "
        f"the highest 15-minute average import; export {tariff.export_price:g} "
        f"{tariff.currency}/kWh; highest - lowest band {tariff.spread:.4f} {tariff.currency}/kWh; "
        f"time zone {tariff.timezone}",
        highlight=False,
        soft_wrap=True,
    )
    problems = [f"{gap.where(tariff)}: {gap.message}" for gap in coverage_problems(tariff)]
    checked = (
        "every month in one season, every weekday in one day type of its season, every minute "
        "of 00:00-24:00 in one period"
    )
    if problems:
        console.print(f"[bold red]{len(problems)} gap(s) or overlap(s):[/]")
        for problem in problems:
            console.print(f"  - {problem}", highlight=False, markup=False)
    else:
        console.print(f"no gaps or overlaps: {checked}", highlight=False, soft_wrap=True)
    out = Path(args.out) if args.out else Path(".")
    out.mkdir(parents=True, exist_ok=True)
    day_png, year_png = out / f"{path.stem}-day.png", out / f"{path.stem}-year.png"
    day_figure(tariff, day_png)
    year_figure(tariff, year, year_png)
    console.print(f"drawn: {day_png}, {year_png}", highlight=False, soft_wrap=True)
    return EXIT_BAD_CONFIG if problems else EXIT_OK


def _scenario_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--station", required=True)
    parser.add_argument("--tariff", help="a tariff file (default: the station's)")
    parser.add_argument("--sessions", required=True, help="sessions CSV, or ACN-Data JSON")
    parser.add_argument(
        "--background", help="the site's own load, CSV time,kw (default: the station's profile)"
    )
    parser.add_argument("--limit", help="the utility's limit signal, CSV time,kw")
    parser.add_argument(
        "--faults", help="faults to inject, CSV start,end,kind,target,value (see README)"
    )
    parser.add_argument(
        "--policy", action="append", choices=ALL_POLICIES, help="repeat for several"
    )
    parser.add_argument(
        "--out", required=True, help="directory for metrics.json, timeseries.csv, plot.png"
    )
    parser.add_argument("--step", type=float, default=60.0, help="simulation step, s (default 60)")
    parser.add_argument(
        "--plan-period",
        type=float,
        default=300.0,
        help="re-plan at least this often, s (default 300; the daemon uses 60)",
    )
    parser.add_argument(
        "--warmup-days",
        type=int,
        default=0,
        help="repeat the first day this many times before, unmeasured (default 0)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(prog="flexcharge", description=__doc__)
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check-config", help="validate a station, tariff or device map file")
    check.add_argument("path")
    check.set_defaults(func=cmd_check_config)

    run = sub.add_parser("run", help="run the daemon (real time)")
    run.add_argument("--station", required=True)
    run.add_argument("--status-every", type=float, default=60.0, help="log a status line every N s")
    run.add_argument(
        "--pidfile", help="where to write the process id (default: var/run/<station>.pid)"
    )
    run.add_argument(
        "--state",
        help="the station's state file (SQLite; created if missing; default "
        "var/state/<station file stem>.sqlite under the working directory)",
    )
    run.add_argument(
        "--api",
        type=_parse_api,
        metavar="HOST:PORT",
        help="serve the HTTP API, metrics and live page there (default: the station's [api])",
    )
    run.set_defaults(func=cmd_run)

    reload = sub.add_parser(
        "reload", help="check a station file, then make the daemon running it reload it"
    )
    reload.add_argument("--station", required=True)
    reload.add_argument("--pidfile", help="the daemon's pidfile (default: var/run/<station>.pid)")
    reload.set_defaults(func=cmd_reload)

    sim = sub.add_parser(
        "sim-hardware",
        help="serve a station's simulated devices over Modbus and OPC-UA (real time)",
    )
    sim.add_argument("--station", required=True)
    sim.add_argument(
        "--sessions",
        help="replay the vehicles of this sessions CSV instead of the seeded random days",
    )
    sim.add_argument(
        "--faults", help="faults to inject, CSV start,end,kind,target,value (see README)"
    )
    sim.set_defaults(func=cmd_sim_hardware)

    simulate = sub.add_parser("simulate", help="run a scenario on the simulated clock (no sockets)")
    _scenario_arguments(simulate)
    simulate.add_argument(
        "--telemetry",
        action="store_true",
        help="write the run to the station's [telemetry] database, or (without one) to "
        "OUT/telemetry.sqlite; one policy only",
    )
    simulate.set_defaults(func=cmd_simulate)

    compare = sub.add_parser("compare", help="every policy on one scenario, side by side")
    _scenario_arguments(compare)
    compare.set_defaults(func=cmd_compare)

    sessions = sub.add_parser("sessions", help="write a seeded random sessions CSV for a station")
    sessions.add_argument("--station", required=True)
    sessions.add_argument("--start", required=True, help="first local date, e.g. 2026-11-10")
    sessions.add_argument("--days", type=int, default=1)
    sessions.add_argument("--out", required=True)
    sessions.set_defaults(func=cmd_sessions)

    tariff = sub.add_parser("tariff", help="what a tariff does: draw it, or compare tariffs")
    tariff_sub = tariff.add_subparsers(dest="tariff_command", required=True)
    tcompare = tariff_sub.add_parser(
        "compare", help="one scenario under several tariffs (and policies), as a report"
    )
    tcompare.add_argument("--station", required=True)
    tcompare.add_argument("--sessions", required=True, help="sessions CSV, or ACN-Data JSON")
    tcompare.add_argument("tariffs", nargs="+", metavar="TARIFF", help="tariff files to compare")
    tcompare.add_argument(
        "--policy",
        action="append",
        choices=ALL_POLICIES,
        help="repeat for several (default mpc; uncontrolled always runs, as the baseline)",
    )
    tcompare.add_argument(
        "--background", help="the site's own load, CSV time,kw (default: the station's profile)"
    )
    tcompare.add_argument("--limit", help="the utility's limit signal, CSV time,kw")
    tcompare.add_argument(
        "--out", required=True, help="directory for report.html, report.png, whatif.json, runs/"
    )
    tcompare.add_argument(
        "--step", type=float, help="simulation step, s (default 300; see README, Tariff what-if)"
    )
    tcompare.add_argument(
        "--plan-period",
        type=float,
        help="MPC re-plans at least this often, s (default 3600; see README, Tariff what-if)",
    )
    tcompare.add_argument(
        "--workers", type=int, help="simulations at once, in processes (default: one per CPU)"
    )
    tcompare.add_argument(
        "--warmup-days",
        type=int,
        default=0,
        help="repeat the first day this many times before, unmeasured (default 0)",
    )
    tcompare.set_defaults(func=cmd_tariff_compare)
    tshow = tariff_sub.add_parser(
        "show", help="a tariff's bands over a day and a year, as PNGs and a table"
    )
    tshow.add_argument("path")
    tshow.add_argument("--out", help="directory for the PNGs (default: the working directory)")
    tshow.add_argument("--year", type=int, help="the year to draw (default: this year)")
    tshow.set_defaults(func=cmd_tariff_show)

    certs = sub.add_parser("certs", help="the station's certificates for TLS and OPC-UA")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    init = certs_sub.add_parser(
        "init", help="create a station CA and the daemon's and simulator's certificates in DIR"
    )
    init.add_argument("dir")
    init.add_argument("--station", default="flexcharge station", help="name in the certificates")
    init.add_argument(
        "--host",
        action="append",
        default=[],
        help="another host name or address the certificates must be valid for (repeatable)",
    )
    init.add_argument("--days", type=int, default=825, help="validity in days")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=cmd_certs_init)

    demo = sub.add_parser("demo", help="simulated station + daemon, faster than real time")
    demo.add_argument("--station", default=str(REFERENCE_STATION))
    demo.add_argument(
        "--speed", type=float, default=960.0, help="station seconds per real second, at most"
    )
    demo.add_argument("--duration", type=float, default=85.0, help="real seconds, at most")
    demo.add_argument(
        "--api", type=_parse_api, metavar="HOST:PORT", help="serve the API and live page there"
    )
    demo.add_argument("--hours", type=float, default=15.0, help="station hours to simulate")
    demo.add_argument("--start", default="16:00", help="local station time to start at (HH:MM)")
    demo.add_argument(
        "--period",
        type=float,
        default=8.0,
        help="control period in station seconds (a 1 s loop at 480x would need a Modbus "
        "round every 2 ms of real time)",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `flexcharge` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console()
    if not console.is_terminal:
        # Logs and pipes are read later, in wider windows than the 80 columns rich assumes.
        console = Console(width=160)
    if args.command == "demo":
        _setup_logging("WARNING" if args.log_level == "INFO" else args.log_level, console)
    else:
        _setup_logging(args.log_level)
    try:
        return int(args.func(args, console))
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
