"""A station's log while peers keep failing: the daemon's one line per failure, not the libraries'
line (and traceback) per attempt.

The daemon is logged as `flexcharge run` logs it (`flexcharge.logs.configure`). Its OPC-UA
terminal refuses the daemon's certificate (and the daemon the terminal's: two station CAs), one
Modbus pile is down; for a minute of station time the daemon tries both every cycle.
"""

from __future__ import annotations

import io
import logging
import re
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from base import certs
from base.config import CONFIG_ROOT, Station, load_station
from flexcharge import logs
from tests.conftest import StartStation, free_ports, local_time, on_free_ports

T0 = 1_800_000_000.0


def _record(name: str, level: int, msg: str, *args: object, at: float = T0) -> logging.LogRecord:
    record = logging.LogRecord(name, level, __file__, 1, msg, args, None)
    record.created = at
    return record


def test_a_library_message_is_shown_once_per_episode() -> None:
    repeats = logs.LibraryRepeats(quiet_s=60.0)
    shown = [
        repeats.filter(
            _record("asyncua.client.ua_client", logging.WARNING, "request id %d", n, at=T0 + n)
        )
        for n in range(100)
    ]
    assert shown == [True] + [False] * 99, "numbers aside, the same words: one episode"
    assert repeats.filter(
        _record("asyncua.client.ua_client", logging.WARNING, "request id 7", at=T0 + 200)
    )
    assert repeats.filter(
        _record("asyncua.client.ua_client", logging.ERROR, "another", at=T0 + 200)
    )
    assert repeats.held_back == 99


def test_flexcharge_s_own_lines_pass_untouched() -> None:
    repeats = logs.LibraryRepeats()
    assert all(
        repeats.filter(_record("control.site", logging.ERROR, "pile P01: no answer"))
        for _ in range(3)
    )
    assert logs.library_of("asyncuagds.validate") == "asyncuagds"
    assert logs.library_of("asyncua_extra") is None and logs.library_of("controller.api") is None


def test_a_library_traceback_is_cut_to_its_exception_line() -> None:
    """asyncua logs a stale reply after a stall with a traceback; the log shows one line."""
    try:
        raise KeyError(42)
    except KeyError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "asyncua.client.ua_client.UASocketProtocol",
        logging.ERROR,
        __file__,
        1,
        "Exception raised while parsing message from server",
        (),
        exc_info,
    )
    assert logs.LibraryRepeats().filter(record)
    line = logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert line == (
        "ERROR asyncua.client.ua_client.UASocketProtocol: Exception raised while parsing message "
        "from server (KeyError: 42)"
    )


@pytest.fixture
def two_cas(tmp_path: Path) -> tuple[Path, Path]:
    """Two station CAs: the simulator's devices trust one, the daemon's certificates are from the
    other."""
    certs.init(tmp_path / "served", station="test hub")
    certs.init(tmp_path / "daemon", station="another hub")
    return tmp_path / "served", tmp_path / "daemon"


def _hub(certs_dir: Path) -> Station:
    """The mixed station's grid meter (on plain Modbus TCP), OPC-UA terminal and two DC piles,
    on free ports, with the certificates of `certs_dir`."""
    mixed = load_station(CONFIG_ROOT / "stations" / "mixed-site.toml")
    meter = mixed.grid_meter.model_copy(update={"protocol": "modbus-tcp"})
    piles = tuple(p for p in mixed.piles if p.id in ("DC1", "DC2"))
    return on_free_ports(replace(mixed, grid_meter=meter, piles=piles)).with_security(
        certs=str(certs_dir)
    )


def _station_lines(stream: io.StringIO) -> list[str]:
    """The lines logged so far, but for the simulator's own (here in the same process, it
    stands in for the devices: its lines are not the station's log)."""
    return [
        line
        for line in stream.getvalue().splitlines()
        if not re.match(r"\S+ \S+ \S+\s+simulator\.", line)
    ]


def _logged_as_run_logs() -> tuple[io.StringIO, logs.LibraryRepeats]:
    """Log as `flexcharge run` does, into a string; the library repeats' filter."""
    handler = logs.configure("INFO")
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    (repeats,) = [f for f in handler.filters if isinstance(f, logs.LibraryRepeats)]
    return stream, repeats


@pytest.mark.asyncio
@pytest.mark.loopback
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_a_healthy_minute_says_nothing_of_asyncua_s_publishes(
    two_cas: tuple[Path, Path], running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEXCHARGE_OPCUA_PASSWORD", "correct horse battery staple")
    hub = _hub(two_cas[0])
    stream, _ = _logged_as_run_logs()
    site = await running_station(hub, [], start=local_time(hub, "2026-11-25T13:00"))
    await site.until(60)
    lines = _station_lines(stream)
    links = site.daemon.links
    assert links is not None and hub.terminal is not None
    # Each publish response asyncua would log, in full, at INFO.
    published = links.opcua.get(hub.terminal.opcua_url).notifications
    await site.stop()
    assert published > 10, "the terminal published all along"
    assert [line for line in lines if "asyncua" in line] == [], lines
    assert len(lines) <= 5, "\n".join(lines)


@pytest.mark.asyncio
@pytest.mark.loopback
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_a_minute_of_failing_peers_is_a_few_lines_not_one_a_second(
    two_cas: tuple[Path, Path], running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLEXCHARGE_OPCUA_PASSWORD", "correct horse battery staple")
    served = _hub(two_cas[0])
    # The daemon looks for DC2 where nothing answers, and presents the other CA's certificate.
    controlled = served.with_endpoints({"DC2": free_ports(1)[0]})
    controlled = controlled.with_security(certs=str(two_cas[1]))
    stream, repeats = _logged_as_run_logs()

    start = local_time(served, "2026-11-25T13:00")
    site = await running_station(served, [], start=start, controlled=controlled)
    await site.until(60)
    lines = _station_lines(stream)
    await site.stop()

    said = Counter(line.split(": ", 1)[1] for line in lines)
    # Each failure told once by the daemon, naming the device and why.
    refused = [t for t in said if t.startswith("terminal terminal: ") and "certificate" in t]
    down = [t for t in said if t.startswith("pile DC2: ") and "cannot connect" in t]
    assert len(refused) == 1 and len(down) == 1, lines
    # The libraries tried (and said so) every cycle; the log has each of their messages once.
    assert repeats.held_back >= 60, lines
    assert max(said.values()) == 1, said.most_common(3)
    assert len(lines) <= 15, "\n".join(lines)
    assert "Traceback" not in stream.getvalue()
