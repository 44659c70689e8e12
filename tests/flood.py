"""The API flood benchmark (`make bench`): the daemon controls the simulated reference station in
real time on loopback while its API is flooded; does the control loop notice?

`flexcharge sim-hardware` serves the reference station's devices; the daemon is `flexcharge run
--api` as an operator starts it (its state file, its local telemetry, its API from a process of its
own), run by `python -m tests.flood daemon OUT -- run ...`, which only adds an observer noting when
each cycle started and ended and writes them to OUT when the daemon exits. This process is the
crowd of clients, on raw sockets (a client library would spend more CPU than the server):

- idle: no client, before the floods and after them (together, the baseline);
- bodies: 20 request bodies of 10 MB without a token, two at a time, a burst each second (a
  burst the server refuses at once ends in a fraction of a second; one each second gives the phase
  as many cycles as the others);
- slow: 200 clients each sending half a request and holding on (reconnecting a second after the
  server drops them);
- gets: 20,000 GETs over 20 keep-alive connections, spread over /api/status, /api/plan,
  /api/sessions, /api/history and /metrics.

During each phase a probe asks for /api/status once a second on a connection of its own. Per
phase: the cycles (each from its start to its last write) p50/p99/max, how late the latest one
started after its tick, the cycles missed (a tick with no cycle), and what the clients and the
probe got. Target: with each flood, cycle p99 at most 1.5x the idle p99, and no missed cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOKEN = "flood-bench-token"
BODY_BYTES = 10 * 1024 * 1024
GET_PATHS = ("/api/status", "/api/plan", "/api/sessions", "/api/history", "/metrics")
TARGET_RATIO = 1.5


# -- the daemon, recorded --------------------------------------------------------------------


def recorded_daemon(out: Path, argv: list[str]) -> int:
    """Run `flexcharge ARGV` with every daemon it starts noting each cycle's start and end (wall
    clock) into a list, written to `out` as JSON when it returns."""
    from controller.daemon import Daemon
    from flexcharge.cli import main

    cycles: list[tuple[float, float]] = []
    original = Daemon.start

    async def start(self: Daemon) -> None:
        self.watch(lambda cycle: cycles.append((cycle.time, time.time())))
        await original(self)

    Daemon.start = start  # type: ignore[method-assign]
    try:
        return main(argv)
    finally:
        out.write_text(json.dumps({"cycles": cycles}))


# -- the clients -----------------------------------------------------------------------------


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if value:
            headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers


def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()


@dataclass
class Tally:
    """What the clients of a phase got."""

    outcomes: Counter[str] = field(default_factory=Counter)
    megabytes: float = 0.0
    slowest_ms: float = 0.0

    def add(self, outcome: str) -> None:
        """Count one outcome."""
        self.outcomes[outcome] += 1

    def text(self) -> str:
        """The outcomes, most frequent first."""
        text = ", ".join(f"{n:,} {what}" for what, n in self.outcomes.most_common())
        if self.megabytes:
            text += f" ({self.megabytes:,.0f} MB sent)"
        if self.slowest_ms:
            text += f" (slowest {self.slowest_ms:.0f} ms)"
        return text


async def large_bodies(port: int, until: float, tally: Tally) -> None:
    """20 bodies of 10 MB without a token, two at a time; again each second until `until`."""
    head = (
        "POST /api/limit/override HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
        f"Content-Length: {BODY_BYTES}\r\n\r\n"
    ).encode()
    chunk = b"[" * 65536

    async def one() -> None:
        reader, writer = await _connect(port)
        sent = 0
        try:
            writer.write(head)
            while sent < BODY_BYTES:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            status, _ = await asyncio.wait_for(_response(reader), 30)
            tally.add(f"{status} after the whole body")
        except (ConnectionError, asyncio.IncompleteReadError):
            try:
                status, _ = await asyncio.wait_for(_response(reader), 5)
                tally.add(f"{status} before the whole body")
            except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
                tally.add("dropped by the server before the whole body")
        finally:
            _close(writer)
            tally.megabytes += sent / 2**20

    # A server that refuses them at once is done with 20 in a fraction of a second: the burst
    # comes back every second, so that the phase has as many cycles as the others.
    began = time.time()
    while True:
        for _ in range(10):
            await asyncio.gather(one(), one())
        began += 1.0
        if began >= until:
            return
        await asyncio.sleep(max(0.0, began - time.time()))


async def slow_clients(port: int, until: float, tally: Tally, clients: int = 200) -> None:
    """`clients` connections each sending half a request and holding on until the server acts;
    a second later they come back, until `until`."""
    half = b"GET /api/status HTTP/1.1\r\nHost: api\r\nX-Slow: "

    async def one() -> None:
        while time.time() < until:
            try:
                reader, writer = await _connect(port)
            except ConnectionError:
                tally.add("refused")
                await asyncio.sleep(1)
                continue
            try:
                writer.write(half)
                await writer.drain()
                status, _ = await asyncio.wait_for(
                    _response(reader), max(until - time.time(), 0.01)
                )
                tally.add(f"{status}")
            except TimeoutError:
                tally.add("held to the end")
            except (ConnectionError, asyncio.IncompleteReadError):
                tally.add("closed")
            finally:
                _close(writer)
            await asyncio.sleep(1)

    await asyncio.gather(*(one() for _ in range(clients)))


async def gets(port: int, total: int, concurrent: int, until: float, tally: Tally) -> None:
    """`total` GETs over `concurrent` keep-alive connections (until `until` at the latest)."""
    counter = iter(range(total))

    async def worker() -> None:
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        for n in counter:
            if time.time() > until:
                tally.add("not sent (out of time)")
                continue
            path = GET_PATHS[n % len(GET_PATHS)]
            try:
                if connection is None:
                    connection = await _connect(port)
                reader, writer = connection
                writer.write(f"GET {path} HTTP/1.1\r\nHost: api\r\n\r\n".encode())
                status, headers = await _response(reader)
                tally.add(str(status))
                if headers.get("connection") == "close":
                    _close(writer)
                    connection = None
            except (ConnectionError, asyncio.IncompleteReadError):
                tally.add("connection lost")
                if connection is not None:
                    _close(connection[1])
                connection = None
        if connection is not None:
            _close(connection[1])

    await asyncio.gather(*(worker() for _ in range(concurrent)))


async def probe(port: int, stop: asyncio.Event, tally: Tally) -> None:
    """GET /api/status once a second on a fresh connection, until `stop`."""
    while not stop.is_set():
        began = time.perf_counter()
        try:
            reader, writer = await _connect(port)
            try:
                writer.write(b"GET /api/status HTTP/1.1\r\nHost: api\r\n\r\n")
                status, _ = await asyncio.wait_for(_response(reader), 10)
                tally.add(str(status))
                tally.slowest_ms = max(tally.slowest_ms, 1000 * (time.perf_counter() - began))
            finally:
                _close(writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
            tally.add(type(exc).__name__)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


# -- the phases ------------------------------------------------------------------------------


@dataclass
class Phase:
    """One stretch of the run: when, and what the clients and the probe got."""

    name: str
    load: str
    start: float = 0.0
    end: float = 0.0
    clients: Tally = field(default_factory=Tally)
    probe: Tally = field(default_factory=Tally)


async def run_phase(
    phase: Phase, port: int, flood: Callable[[float], Awaitable[None]], seconds: float
) -> None:
    """Run `flood` (given its end time) with the probe beside it; note the phase's times."""
    stop = asyncio.Event()
    phase.start = time.time()
    probing = asyncio.create_task(probe(port, stop, phase.probe))
    try:
        await flood(phase.start + seconds)
    finally:
        phase.end = time.time()
        stop.set()
        await probing


@dataclass
class Figures:
    """The cycles of one phase."""

    cycles: int
    p50: float
    p99: float
    worst: float
    late: float
    missed: int


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def figures(
    cycles: list[tuple[float, float]], period: float, windows: list[tuple[float, float]]
) -> Figures:
    """Cycle times (ms) of the cycles that started within the `windows` (start, end), how late
    the latest started after its tick, and the ticks with no cycle."""

    def within(t: float) -> bool:
        return any(start <= t <= end for start, end in windows)

    # The ticks are a grid (base.clock.Ticker): a start's offset from it, against the earliest
    # offset seen, is how late it started.
    first = cycles[0][0]

    def offset(t: float) -> float:
        return (t - first + period / 2) % period - period / 2

    earliest = min(offset(s) for s, _ in cycles)
    inside = [(s, e) for s, e in cycles if within(s)]
    took = [1000 * (e - s) for s, e in inside]
    late = [1000 * (offset(s) - earliest) for s, _ in inside]
    missed = 0
    for (before, _), (after, _) in itertools.pairwise(cycles):
        if within(after):
            missed += max(0, round((after - before) / period) - 1)
    if not took:
        return Figures(0, 0.0, 0.0, 0.0, 0.0, missed)
    return Figures(
        len(took),
        statistics.median(took),
        _quantile(took, 0.99),
        max(took),
        max(late),
        missed,
    )


def _start(args: list[str], log: Path, cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {log}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def run_flood(
    idle_s: float = 30.0,
    bodies_s: float = 20.0,
    slow_s: float = 25.0,
    get_count: int = 20_000,
    gets_max_s: float = 120.0,
) -> tuple[list[Phase], dict[str, Figures], float]:
    """Start the simulator and the recorded daemon, run the phases, stop both; the phases,
    their figures and the control period."""
    from base.config import load_station
    from tests.conftest import free_ports, station_files_on_free_ports

    with tempfile.TemporaryDirectory(prefix="flood-") as tmp:
        root = Path(tmp)
        station_path = station_files_on_free_ports(root)
        period = load_station(station_path).control.period_s
        port = free_ports(1)[0]
        env = {**os.environ, "FLEXCHARGE_API_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
        # The daemon's state and telemetry stay in the run's directory.
        env["FLEXCHARGE_STATE_DIR"] = str(root / "state")
        env["FLEXCHARGE_RUNTIME_DIR"] = str(root / "run")
        flexcharge = str(Path(sys.executable).parent / "flexcharge")
        simulator = _start(
            [flexcharge, "sim-hardware", "--station", str(station_path)],
            root / "sim.log",
            root,
            env,
        )
        out = root / "cycles.json"
        daemon: subprocess.Popen[bytes] | None = None
        try:
            _wait_for(root / "sim.log", "serving ", simulator, 60)
            daemon = _start(
                [
                    sys.executable,
                    "-m",
                    "tests.flood",
                    "daemon",
                    str(out),
                    "--",
                    "run",
                    "--station",
                    str(station_path),
                    "--api",
                    f"127.0.0.1:{port}",
                ],
                root / "daemon.log",
                root,
                env,
            )
            _wait_for(root / "daemon.log", "API, metrics and live page at", daemon, 120)
            phases = asyncio.run(_phases(port, idle_s, bodies_s, slow_s, get_count, gets_max_s))
        finally:
            for proc in (daemon, simulator):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in (daemon, simulator):
                if proc is not None:
                    try:
                        proc.wait(timeout=60)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        recorded: dict[str, Any] = json.loads(out.read_text())
        cycles = [(float(s), float(e)) for s, e in recorded["cycles"]]
        by_phase = {p.name: figures(cycles, period, [(p.start, p.end)]) for p in phases}
        idle = [(p.start, p.end) for p in phases if p.name.startswith("idle")]
        by_phase["idle"] = figures(cycles, period, idle)
        return phases, by_phase, period


async def _phases(
    port: int, idle_s: float, bodies_s: float, slow_s: float, get_count: int, gets_max_s: float
) -> list[Phase]:
    async def nothing(until: float) -> None:
        await asyncio.sleep(max(0.0, until - time.time()))

    # Warm up: the first plan, the piles' ramps, the API's first renderings.
    await nothing(time.time() + 10)
    idle = Phase("idle before", "no client")
    await run_phase(idle, port, nothing, idle_s * 2 / 3)
    bodies = Phase("bodies", "20 bodies of 10 MB without a token, 2 at a time, each second")
    await run_phase(bodies, port, lambda until: large_bodies(port, until, bodies.clients), bodies_s)
    await nothing(time.time() + 2)
    slow = Phase("slow", "200 clients sending half a request")
    await run_phase(slow, port, lambda until: slow_clients(port, until, slow.clients), slow_s)
    await nothing(time.time() + 2)
    many = Phase("gets", f"{get_count:,} GETs, 20 at a time, 5 endpoints")
    await run_phase(
        many, port, lambda until: gets(port, get_count, 20, until, many.clients), gets_max_s
    )
    await nothing(time.time() + 2)
    again = Phase("idle after", "no client")
    await run_phase(again, port, nothing, idle_s / 3)
    return [idle, bodies, slow, many, again]


if __name__ == "__main__":
    if len(sys.argv) > 3 and sys.argv[1] == "daemon" and sys.argv[3] == "--":
        sys.exit(recorded_daemon(Path(sys.argv[2]), sys.argv[4:]))
    sys.exit("usage: python -m tests.flood daemon OUT -- run --station ... --api HOST:PORT")
