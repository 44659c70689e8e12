"""Shared fixtures: the reference station on free loopback ports, a simulated station under a
running daemon, and leak checks."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
import pytest_timeout

from base.clock import VirtualClock
from base.config import CONFIG_ROOT, REFERENCE_STATION, Station, load_station
from base.mapfile import load_register_map
from base.programs import system_program
from control.decider import Policy
from control.step import Cycle
from controller.daemon import Daemon
from flexcharge.cli.dirs import RUNTIME_ENV, STATE_ENV, Dirs
from flexcharge.logs import LIBRARY_LEVELS
from simulator.faults import FaultScript
from simulator.fleet import Visit
from simulator.hardware import StationSimulator
from simulator.scenario import Series


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests of an xdist group first (the README's blocks, the suite's longest test, among
    them): on `make test`'s two workers, a long test begun last would run on alone for minutes."""
    items.sort(key=lambda item: item.get_closest_marker("xdist_group") is None)


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports that are free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def on_free_ports(station: Station) -> Station:
    """A copy of `station` whose devices listen on free loopback ports."""
    ids = [device.id for device in station.devices]
    return station.with_endpoints(dict(zip(ids, free_ports(len(ids)), strict=True)))


def station_files_on_free_ports(tmp_path: Path) -> Path:
    """A copy of configs/ in `tmp_path` whose reference station listens on free ports (for tests
    that start `flexcharge` processes); returns the station file."""
    root = tmp_path / "configs"
    shutil.copytree(CONFIG_ROOT, root)
    path = root / "stations" / "bozhou-depot.toml"
    text = path.read_text()
    ports = iter(free_ports(13))
    text = re.sub(r"^port = 150\d\d$", lambda _: f"port = {next(ports)}", text, flags=re.M)
    path.write_text(text)
    return path


def station_with_section(tmp_path: Path, section: str) -> Path:
    """The reference station on free ports (`station_files_on_free_ports`) with `section` (TOML)
    added at its end."""
    path = station_files_on_free_ports(tmp_path)
    path.write_text(path.read_text() + "\n" + section)
    return path


def local_time(station: Station, text: str) -> float:
    """Epoch seconds of a local ISO time at the station, e.g. '2026-11-25T10:00'."""
    zone = ZoneInfo(station.info.timezone)
    return datetime.fromisoformat(text).replace(tzinfo=zone).timestamp()


def truck_visit(start: float, pile: str, *, soc: float = 0.2, capacity: float = 500.0) -> Visit:
    """A truck that plugs into `pile` at `start`, stays six hours and wants to reach 95 %."""
    return Visit(
        vehicle_id=f"test-{pile}",
        arrival=start,
        departure=start + 6 * 3600,
        energy_kwh=(0.95 - soc) * capacity,
        max_kw=450.0,
        capacity_kwh=capacity,
        soc_arrival=soc,
        pile=pile,
    )


@pytest.hookimpl(tryfirst=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """pytest-timeout's thread method, naming the test that ran out of time before the stacks
    (with -q nothing else names it): the run ends there (pyproject.toml says why)."""
    if settings.method != "thread":
        return None

    def expired() -> None:
        sys.stderr.write(f"\n{item.nodeid} still running after {settings.timeout:g} s\n")
        pytest_timeout.timeout_timer(item, settings)

    timer = threading.Timer(settings.timeout, expired)
    timer.name = f"timeout {item.nodeid}"

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # type: ignore[attr-defined]  # as pytest-timeout cancels it
    timer.start()
    return True


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """cli.main() replaces the root logger's handlers; put them (and the libraries' levels)
    back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    libraries = {name: logging.getLogger(name).level for name in LIBRARY_LEVELS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, library_level in libraries.items():
        logging.getLogger(name).setLevel(library_level)


@pytest.fixture(autouse=True)
def flexcharge_dirs(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Dirs:
    """A state and a runtime directory of the test's own, in the environment the `flexcharge`
    commands (and the processes started) read, so that none writes to the user's or the
    system's."""
    root = tmp_path_factory.mktemp("dirs")
    found = Dirs(state=root / "state", runtime=root / "run")
    monkeypatch.setenv(STATE_ENV, str(found.state))
    monkeypatch.setenv(RUNTIME_ENV, str(found.runtime))
    for name in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY", "LOGS_DIRECTORY", "JOURNAL_STREAM"):
        monkeypatch.delenv(name, raising=False)
    return found


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Started processes, killed at the end if a test left them running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


# The console script of the environment the tests run in.
FLEXCHARGE = str(Path(sys.executable).parent / "flexcharge")

# The processes the tests start run this checkout's code, also in a git worktree whose
# environment's editable install points at another checkout.
ROOT = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
)


def start_process(
    args: list[str], processes: list[subprocess.Popen[str]], cwd: Path | None = None
) -> subprocess.Popen[str]:
    """Start `flexcharge ARGS` (log on stderr, unbuffered), owned by `processes`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    proc = subprocess.Popen(
        [FLEXCHARGE, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    processes.append(proc)
    return proc


def wait_for_line(proc: subprocess.Popen[str], pattern: str, limit: int = 400) -> list[str]:
    """Read the process's log (stderr) until a line matches; return what was read."""
    assert proc.stderr is not None
    seen: list[str] = []
    for _ in range(limit):
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def start_daemon_with_api(
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    token_env: str,
    simulator_args: Sequence[str] = (),
) -> tuple[subprocess.Popen[str], subprocess.Popen[str], str]:
    """`flexcharge sim-hardware` serving the reference station's files (free ports, under
    `tmp_path`; `simulator_args`: more of its options) and `flexcharge run --api` controlling
    it, its writes open to the token in `token_env`; the simulator's and the daemon's processes,
    and the API's base URL, once it serves."""
    path = station_files_on_free_ports(tmp_path)
    simulator = start_process(["sim-hardware", "--station", str(path), *simulator_args], processes)
    wait_for_line(simulator, r"serving ")
    port = free_ports(1)[0]
    assert token_env in os.environ, "the token the daemon is to read"
    daemon = start_process(
        [
            *("run", "--station", str(path), "--state", str(tmp_path / "state.sqlite")),
            *("--pidfile", str(tmp_path / "flexcharge.pid"), "--api", f"127.0.0.1:{port}"),
        ],
        processes,
    )
    wait_for_line(daemon, r"API, metrics and live page at http://127.0.0.1:\d+ \(writes need")
    return simulator, daemon, f"http://127.0.0.1:{port}"


TERMINAL = "flexcharge-metering-terminal"


def on_one_opcua_endpoint(
    station: Station, certs_dir: Path, user: str, password_env: str
) -> Station:
    """The station with its metering terminal as the grid meter and piles P01, P02 on one
    OPC-UA endpoint (a free port), secured by the certificates in `certs_dir`, `user` with the
    password in `password_env`."""
    (port,) = free_ports(1)
    terminal = load_register_map(CONFIG_ROOT / "devices" / f"{TERMINAL}.toml")
    meter = station.grid_meter.model_copy(
        update={"protocol": "opcua", "device": TERMINAL, "port": port, "object": "terminal"}
    )
    piles = tuple(
        p.model_copy(update={"protocol": "opcua", "port": port}) if p.id in ("P01", "P02") else p
        for p in station.piles
    )
    station = replace(
        station,
        grid_meter=meter,
        piles=piles,
        device_maps={**station.device_maps, TERMINAL: terminal},
    )
    return station.with_security(
        certs=str(certs_dir), opcua_user=user, opcua_password_env=password_env
    )


@pytest.fixture(scope="session")
def reference() -> Station:
    """The reference station, loaded once."""
    return load_station(REFERENCE_STATION)


@pytest.fixture
def station(reference: Station) -> Station:
    """The reference station on free ports."""
    return on_free_ports(reference)


def need_system_program(name: str, purpose: str) -> str:
    """Where `name` is installed (see `system_program`), or skip the test saying why."""
    found = system_program(name)
    if found is None:
        pytest.skip(
            f"{name} ({purpose}) is not installed: `make system-deps` installs Debian's {name} "
            "(as root, with apt-get)"
        )
    return found


@dataclass
class RunningStation:
    """A simulated station's hardware servers on loopback and a daemon controlling them, on one
    virtual clock that starts at `start`; `cycles` are the daemon's cycles, as it ran them."""

    simulator: StationSimulator
    daemon: Daemon
    clock: VirtualClock
    start: float
    cycles: list[Cycle]
    task: asyncio.Task[None]

    async def until(self, seconds: float) -> None:
        """Let the station run until `seconds` after the start."""
        await self.clock.sleep_until(self.start + seconds)

    def cycles_after(self, when: float) -> list[Cycle]:
        """The cycles run after station time `when`."""
        return [c for c in self.cycles if c.time > when]

    async def stop_daemon(self) -> None:
        """Stop the daemon (it leaves every pile at its fallback power); the simulator runs on."""
        self.daemon.request_stop()
        await self.task

    async def stop(self) -> None:
        """Stop the daemon, then the simulator (again: nothing to do)."""
        await self.stop_daemon()
        await self.simulator.stop()


class StartStation(Protocol):
    """Starts a simulated station and a daemon controlling it (see `running_station`)."""

    async def __call__(
        self,
        served: Station,
        visits: Sequence[Visit],
        *,
        start: float | None = ...,
        controlled: Station | None = ...,
        policy: Policy | str | None = ...,
        limit: Series | None = ...,
        faults: FaultScript | None = ...,
        **daemon: Any,
    ) -> RunningStation: ...


async def start_station(
    stack: contextlib.AsyncExitStack,
    served: Station,
    visits: Sequence[Visit],
    *,
    start: float | None = None,
    controlled: Station | None = None,
    policy: Policy | str | None = None,
    limit: Series | None = None,
    faults: FaultScript | None = None,
    **daemon: Any,
) -> RunningStation:
    """Start the hardware simulator serving `served` and a daemon controlling `controlled` (by
    default the same) on one virtual clock; `stack` stops the daemon, then the simulator."""
    begin = min(v.arrival for v in visits) - 60 if start is None else start
    clock = VirtualClock(begin)
    simulator = StationSimulator(served, clock, visits=visits, limit=limit, faults=faults)
    await simulator.start()
    stack.push_async_callback(simulator.stop)
    control = Daemon.for_station(controlled or served, clock, policy=policy, **daemon)
    cycles: list[Cycle] = []
    control.watch(cycles.append)
    task = asyncio.create_task(control.run(), name="daemon")
    site = RunningStation(simulator, control, clock, begin, cycles, task)
    stack.push_async_callback(site.stop_daemon)
    return site


@pytest_asyncio.fixture
async def running_station() -> AsyncIterator[StartStation]:
    """Start the hardware simulator serving one config of a station (`served`: its meters and
    piles on their loopback endpoints, with `visits`, the utility's `limit` and `faults`) and a
    daemon (`Daemon.for_station`, with `policy` and the other `daemon` options) controlling
    another (`controlled`, by default the same), on a virtual clock from `start` (by default a
    minute before the first arrival). Each call starts one; at the end all are stopped in
    reverse: the last started first, each daemon before its simulator.

    The daemon's task exists but has not run when the call returns: what the test sets before
    it next awaits (observers, hooks, a patched method) is in place from the daemon's start."""
    async with contextlib.AsyncExitStack() as stack:
        yield functools.partial(start_station, stack)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a thread running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert not leaked, f"threads left running: {leaked}"


@pytest_asyncio.fixture
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail an async test that leaves a task running (every task needs an owner)."""
    yield
    for _ in range(3):
        await asyncio.sleep(0)
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not leaked, f"tasks left running: {[t.get_name() for t in leaked]}"
