"""The real-time commands: `run` (the daemon, with its API), `reload` (SIGHUP to it) and
`sim-hardware` (a station's devices served over Modbus and OPC-UA)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from base.config import Station
from base.listening import cannot_listen
from base.loading import ConfigError
from base.stationsettings import ApiSettings

from . import dirs, lock, pidfile
from .common import (
    EXIT_BAD_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    FAULTS_HELP,
    STATION_HELP,
    api_settings,
    load,
    log,
    open_telemetry,
    parse_api,
    path_text,
    positive_float,
    print_error,
    print_problems,
)

if TYPE_CHECKING:
    from control.step import Cycle
    from controller.daemon import Daemon


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `run`, `reload` and `sim-hardware` to the command line."""
    run = sub.add_parser("run", help="run the daemon (real time)")
    run.add_argument("--station", required=True, type=path_text, help=STATION_HELP)
    run.add_argument(
        "--status-every", type=positive_float, default=60.0, help="log a status line every N s"
    )
    run.add_argument(
        "--state",
        type=path_text,
        help="the station's state file (SQLite; created if missing; default "
        "state/<station file stem>.sqlite in the state directory); one daemon at a time holds it",
    )
    _add_dir_options(run)
    run.add_argument(
        "--api",
        type=parse_api,
        metavar="HOST:PORT",
        help="serve the HTTP API, metrics and live page there (default: the station's [api])",
    )
    run.set_defaults(func=cmd_run)

    reload = sub.add_parser(
        "reload", help="check a station file, then make the daemon running it reload it"
    )
    reload.add_argument("--station", required=True, type=path_text, help=STATION_HELP)
    reload.add_argument(
        "--state",
        type=path_text,
        help="the state file the daemon was given (default: as `run` finds it)",
    )
    _add_dir_options(reload)
    reload.set_defaults(func=cmd_reload)

    sim = sub.add_parser(
        "sim-hardware",
        help="serve a station's simulated devices over Modbus and OPC-UA (real time)",
    )
    sim.add_argument("--station", required=True, type=path_text, help=STATION_HELP)
    sim.add_argument(
        "--sessions",
        type=path_text,
        help="replay the vehicles of this sessions CSV instead of the seeded random days",
    )
    sim.add_argument("--faults", type=path_text, help=FAULTS_HELP)
    sim.set_defaults(func=cmd_sim_hardware)


def _add_dir_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=path_text,
        metavar="DIR",
        help=f"the state directory: state files and telemetry (default: ${dirs.STATE_ENV}, "
        f"$STATE_DIRECTORY, else {dirs.SYSTEM_STATE} for root, ~/.local/state/flexcharge for others)",
    )
    parser.add_argument(
        "--runtime-dir",
        type=path_text,
        metavar="DIR",
        help=f"the runtime directory: pidfiles (default: ${dirs.RUNTIME_ENV}, "
        f"$RUNTIME_DIRECTORY, else {dirs.SYSTEM_RUNTIME} for root, $XDG_RUNTIME_DIR/flexcharge "
        "for others)",
    )
    parser.add_argument(
        "--pidfile",
        type=path_text,
        help="the daemon's pidfile (default: <station file stem>.pid in the runtime directory)",
    )


def state_path(args: argparse.Namespace, found: dirs.Dirs) -> Path:
    """The state file `--state` names, or state/<station file stem>.sqlite in the state directory."""
    if args.state:
        return Path(args.state).absolute()
    return found.state_file(Path(args.station).stem)


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    """Run the daemon against the station's real devices, in real time; SIGHUP reloads."""
    station = load(Path(args.station), console)
    if station is None:
        return EXIT_BAD_CONFIG
    station_path = Path(args.station).resolve()
    # `flexcharge reload` may signal as soon as the lock names this process: until the daemon's
    # handler is in place, a SIGHUP must not end the process (its default), only be missed.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        found = dirs.resolve(args.state_dir, args.runtime_dir)
        state = state_path(args, found)
        flag = "--state" if args.state else "--state-dir"
        dirs.make(state.parent, flag, dirs.STATE_ENV)
        if not args.pidfile:
            dirs.make(found.runtime, "--runtime-dir", dirs.RUNTIME_ENV)
    except dirs.DirsError as exc:
        print_error(exc, console)
        return EXIT_BAD_CONFIG
    state_lock = lock.StateLock(state)
    try:
        state_lock.acquire()
    except lock.LockHeld as held:
        who = "another process" if held.pid is None else f"pid {held.pid}"
        console.print(
            f"[bold red]already running[/]: {who} runs this station's state {state} "
            f"(it holds {held.path}); reload it with `flexcharge reload`, or stop it first",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_BAD_CONFIG
    except OSError as exc:
        print_error(OSError(f"cannot lock {state_lock.path}: {exc.strerror or exc}"), console)
        return EXIT_BAD_CONFIG
    try:
        return _run_claimed(args, station, station_path, state, found, console)
    finally:
        state_lock.release()


def _run_claimed(
    args: argparse.Namespace,
    station: Station,
    station_path: Path,
    state: Path,
    found: dirs.Dirs,
    console: Console,
) -> int:
    pid_path = pidfile.path_for(args, found)
    try:
        running = pidfile.claim(pid_path)
    except OSError as exc:
        console.print(f"[bold red]{exc}[/]", highlight=False)
        return EXIT_FAILURE
    if running is not None:
        console.print(
            f"[bold red]already running[/]: pid {running} ({pid_path}); "
            "reload it with `flexcharge reload`, or stop it first",
            highlight=False,
        )
        return EXIT_BAD_CONFIG
    log.info("state %s, pidfile %s, telemetry directory %s", state, pid_path, found.telemetry)
    try:
        return _run_daemon(args, station, station_path, state, found, console)
    finally:
        pidfile.release(pid_path)


def _run_daemon(
    args: argparse.Namespace,
    station: Station,
    station_path: Path,
    state: Path,
    found: dirs.Dirs,
    console: Console,
) -> int:
    from base.clock import WallClock
    from controller.daemon import Daemon
    from controller.store import StateError, StateStore

    async def main(store: StateStore) -> int:
        telemetry = open_telemetry(station, Path(args.station), console, directory=found.telemetry)
        if isinstance(telemetry, int):
            return telemetry
        try:
            daemon = Daemon.for_station(station, WallClock(), store=store, telemetry=telemetry)
        except ConfigError as err:  # certificates or a password an encrypted link needs
            if telemetry is not None:
                telemetry.close()
            print_problems(err, console)
            return EXIT_BAD_CONFIG
        if not _serve_api(daemon, api_settings(args, station), console):
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
        store = StateStore(state, station.name)
        with store:
            return asyncio.run(main(store))
    except StateError as exc:
        print_error(exc, console)
        return EXIT_BAD_CONFIG


def _serve_api(daemon: Daemon, settings: ApiSettings | None, console: Console) -> bool:
    """Give the daemon its API service (if configured); False if its address cannot be had."""
    if settings is None:
        return True
    from controller.api import ApiServer

    server = ApiServer(daemon, settings)
    try:
        server.bind()
    except OSError as exc:
        message = cannot_listen(settings.host, settings.port, exc, "the API")
        console.print(message, style="bold red", highlight=False, markup=False)
        return False
    daemon.services.append(server)
    return True


def cmd_reload(args: argparse.Namespace, console: Console) -> int:
    """Check a station file, then tell the daemon running it to reload it (SIGHUP); the daemon
    is the one in `--pidfile`, else the one holding the lock of the station's state file."""
    path = Path(args.station)
    if load(path, console) is None:
        return EXIT_BAD_CONFIG
    try:
        found = dirs.resolve(args.state_dir, args.runtime_dir)
    except dirs.DirsError as exc:
        print_error(exc, console)
        return EXIT_BAD_CONFIG
    if args.pidfile:
        pid_path = pidfile.path_for(args, found)
        if not pid_path.exists():
            console.print(
                f"[bold red]no pidfile {pid_path}[/]: is `flexcharge run --station {path} "
                f"--pidfile {args.pidfile}` running?",
                highlight=False,
                soft_wrap=True,
            )
            return EXIT_FAILURE
        pid = pidfile.read_pid(pid_path)
        if pid is None:
            console.print(f"[bold red]{pid_path} holds no process id[/]", highlight=False)
            return EXIT_FAILURE
        where = str(pid_path)
    else:
        state = state_path(args, found)
        try:
            pid = lock.holder(state)
        except lock.LockHeld as held:
            console.print(f"[bold red]{held}[/] but names no process", highlight=False)
            return EXIT_FAILURE
        if pid is None:
            console.print(
                f"[bold red]no daemon runs the state {state}[/] (nothing holds "
                f"{lock.lock_path(state)}): is `flexcharge run --station {path}` running? "
                "Give the --state, --state-dir or --pidfile it was started with",
                highlight=False,
                soft_wrap=True,
            )
            return EXIT_FAILURE
        where = str(lock.lock_path(state))
    if not pidfile.is_daemon(pid):
        console.print(
            f"[bold red]no daemon is running as pid {pid}[/] ({where} is stale)", highlight=False
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

    station = load(Path(args.station), console)
    if station is None:
        return EXIT_BAD_CONFIG
    from simulator.faults import FaultScript, load_faults
    from simulator.scenario import load_sessions

    try:
        visits = load_sessions(Path(args.sessions), station=station) if args.sessions else None
        faults = load_faults(Path(args.faults), station=station) if args.faults else FaultScript()
    except ConfigError as err:
        print_problems(err, console)
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
            print_problems(err, console)
            return EXIT_BAD_CONFIG
        log.info(
            "serving %s; stop with Ctrl-C",
            ", ".join(f"{d.id}@{d.address}" for d in station.devices),
        )
        try:
            await stop.wait()
        finally:
            await simulator.stop()
        log.info("simulator stopped")
        return EXIT_OK

    return asyncio.run(main())
