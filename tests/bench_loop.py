"""`make bench`: the daemon's cycle at 200 DC piles on loopback, against a bare Modbus client.

The hardware simulator (`flexcharge sim-hardware`, its own process, real time) serves the
reference station with 200 DC piles, each on its own port. In this process, on the real clock:

- the daemon controls them for a while: each cycle's time from its start to its last write;
- then a bare pymodbus client, one connection per pile, does what a controller must at least do
  each second: one read of the registers `DcPile.read` uses and one write of setpoint, mode and
  heartbeat per pile, all piles at once, the same number of cycles;
- the daemon again, and the operator lowers (and restores) the site limit at random moments
  between ticks: the time from the override to every pile written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from itertools import pairwise
from pathlib import Path

from pymodbus.client import AsyncModbusTcpClient
from rich.console import Console
from rich.table import Table

from base.clock import WallClock
from base.config import CONFIG_ROOT, Station, load_station
from base.devicemap import PileMode
from control.step import Cycle
from controller.daemon import Daemon
from drivers.codec import write_plan
from drivers.pile import _READ
from tests.conftest import free_ports

PILES = 200


def station_file(directory: Path, piles: int) -> Path:
    """The reference station with `piles` DC piles on free loopback ports, as a file the
    simulator's process reads."""
    reference = CONFIG_ROOT / "stations" / "bozhou-depot.toml"
    text = reference.read_text()
    head, _, rest = text.partition("[[piles]]")
    _, _, tail = rest.partition("# How `flexcharge sim-hardware`")
    ports = free_ports(piles + 1)
    head = head.replace("port = 15020", f"port = {ports[0]}")
    head = head.replace("rating_kva = 5000.0", f"rating_kva = {piles * 300.0}")
    tables = "".join(
        f'[[piles]]\nid = "P{i + 1:03d}"\nport = {port}\nmax_kw = 480.0\n\n'
        for i, port in enumerate(ports[1:])
    )
    # Where a station file finds its maps and tariffs: beside its own folder.
    for folder in ("devices", "tariffs"):
        (directory / folder).symlink_to(CONFIG_ROOT / folder)
    (directory / "stations").mkdir()
    path = directory / "stations" / f"depot-{piles}.toml"
    path.write_text(head + tables + "# How `flexcharge sim-hardware`" + tail)
    return path


@contextlib.asynccontextmanager
async def simulator(path: Path, station: Station) -> AsyncIterator[None]:
    """`flexcharge sim-hardware` serving the station, until every pile's port answers."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "flexcharge.cli", "sim-hardware", "--station", str(path)),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        for config in station.piles:
            for _ in range(600):
                if process.returncode is not None:
                    assert process.stderr is not None
                    said = (await process.stderr.read()).decode()
                    raise RuntimeError(f"sim-hardware ended: {said}")
                try:
                    _, writer = await asyncio.open_connection(config.host, config.port)
                except OSError:
                    await asyncio.sleep(0.1)
                else:
                    writer.close()
                    break
        yield
    finally:
        process.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(process.wait(), timeout=20)
        except TimeoutError:
            process.kill()
            await process.wait()


async def daemon_cycles(
    station: Station, cycles: int, *, overrides: int = 0
) -> tuple[list[float], int, list[float]]:
    """Run the daemon for `cycles` cycles: each cycle's time (ms), the ticks it missed, and for
    each of `overrides` limit changes made at random moments, the time to every pile written."""
    daemon = Daemon.for_station(station, WallClock(), policy="equal-share")
    done: list[tuple[Cycle, float]] = []
    armed, finished = asyncio.Event(), asyncio.Event()
    # A limit change, and what the first cycle begun after it tells when it ends.
    waiting: list[tuple[float, asyncio.Future[tuple[Cycle, float]]]] = []

    def seen(cycle: Cycle) -> None:
        ended = time.time()
        done.append((cycle, ended))
        if len(done) >= 5:  # connected and armed
            armed.set()
        if len(done) >= cycles + 5:
            finished.set()
        if waiting and cycle.time >= waiting[0][0]:
            waiting.pop()[1].set_result((cycle, ended))

    daemon.watch(seen)
    task = asyncio.create_task(daemon.run(), name="daemon")
    reactions: list[float] = []
    rng = random.Random(7)
    try:
        await armed.wait()
        for n in range(overrides):
            await asyncio.sleep(rng.uniform(1.1, 1.9))
            changed = time.time()
            written = asyncio.get_running_loop().create_future()
            waiting.append((changed, written))
            if n % 2 == 0:
                daemon.override_limit(0.5 * station.limit_kw, changed + 600, "bench")
            else:
                daemon.clear_override()
            cycle, ended = await written
            assert all(cycle.written.values()) and len(cycle.written) == len(station.piles)
            reactions.append(ended - changed)
        await asyncio.wait_for(finished.wait(), timeout=cycles * 5)
    finally:
        daemon.request_stop()
        await task
    times = [(at - c.time) * 1000 for c, at in done[5:]]
    starts = [c.time for c, _ in done[5:]]
    missed = sum(int(b - a > 1.5 * station.control.period_s) for a, b in pairwise(starts))
    return times, missed, reactions


async def bare_cycles(station: Station, cycles: int) -> list[float]:
    """A bare pymodbus client doing one read and one write per pile each second: cycle ms."""
    regmap = station.map_for(station.piles[0].device)
    used = [regmap[n] for n in _READ if n in regmap]
    first = min(r.address for r in used)
    count = max(r.end for r in used) - first
    idle = next(code for code, label in regmap.enums["mode"].items() if label == PileMode.IDLE)
    (write,) = write_plan(regmap, {"setpoint": 0.0, "mode": idle, "heartbeat": 1}, 1)
    clients = [
        AsyncModbusTcpClient(p.host, port=p.port, timeout=station.control.io_timeout_s)
        for p in station.piles
    ]
    await asyncio.gather(*(c.connect() for c in clients))
    times = []
    try:
        tick = time.monotonic()
        for _ in range(cycles):
            tick += station.control.period_s
            began = time.perf_counter()
            await asyncio.gather(
                *(c.read_holding_registers(first, count=count, device_id=1) for c in clients)
            )
            await asyncio.gather(
                *(c.write_registers(write.address, list(write.words), device_id=1) for c in clients)
            )
            times.append((time.perf_counter() - began) * 1000)
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
    finally:
        for c in clients:
            c.close()
    return times


def _p(values: Sequence[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def cycle_bench(
    console: Console, *, piles: int = PILES, cycles: int = 60
) -> dict[str, tuple[bool, str]]:
    """The daemon's cycle at `piles` DC piles against a bare client's, and its reaction to a
    limit change; the targets (p99 at most 1.3x the bare client's, nothing missed, every limit
    change written within one cycle) with their figures."""
    with tempfile.TemporaryDirectory() as tmp:
        path = station_file(Path(tmp), piles)
        station = load_station(path)

        async def run() -> tuple[list[float], int, list[float], list[float]]:
            async with simulator(path, station):
                daemon, missed, _ = await daemon_cycles(station, cycles)
                bare = await bare_cycles(station, cycles)
                _, _, reactions = await daemon_cycles(station, 12, overrides=10)
            return daemon, missed, bare, reactions

        logging.disable(logging.WARNING)  # the overrides' lines: the table says it all
        try:
            daemon, missed, bare, reactions = asyncio.run(run())
        finally:
            logging.disable(logging.NOTSET)
    regmap = station.map_for(station.piles[0].device)
    reads = len(regmap.read_plan([n for n in _READ if n in regmap], 1))
    table = Table(
        title=f"the cycle at {piles} DC piles on loopback ({cycles} cycles each, same run)",
        title_justify="left",
    )
    for column in ("", "requests per pile", "p50 ms", "p99 ms", "max ms", "missed ticks"):
        table.add_column(column, justify="right")
    table.add_row(
        "daemon",
        f"{reads} read + 1 write",
        f"{statistics.median(daemon):.0f}",
        f"{_p(daemon, 99):.0f}",
        f"{max(daemon):.0f}",
        str(missed),
    )
    table.add_row(
        "bare pymodbus client",
        "1 read + 1 write",
        f"{statistics.median(bare):.0f}",
        f"{_p(bare, 99):.0f}",
        f"{max(bare):.0f}",
        "-",
    )
    console.print(table)
    ratio = _p(daemon, 99) / _p(bare, 99)
    console.print(
        f"  limit lowered or restored between ticks -> all {piles} piles written: "
        f"median {1000 * statistics.median(reactions):.0f} ms, "
        f"longest {1000 * max(reactions):.0f} ms ({len(reactions)} changes)",
        highlight=False,
    )
    checks = {
        "daemon cycle p99 at most 1.3x the bare client's, no tick missed": (
            ratio <= 1.3 and missed == 0,
            f"{ratio:.2f}x (p50 {statistics.median(daemon) / statistics.median(bare):.2f}x), "
            f"{missed} missed",
        ),
        # Within one cycle of its own, not waiting for the next tick: measured against the
        # bare client's cycle in the same run, since the machine's load sets both (the issue's
        # figure for a quiet machine is 0.2 s).
        "a limit change written to every pile within one cycle (1.3x the bare client's p99)": (
            1000 * max(reactions) <= 1.3 * _p(bare, 99),
            f"longest {1000 * max(reactions):.0f} ms against {1.3 * _p(bare, 99):.0f} ms",
        ),
    }
    return checks
