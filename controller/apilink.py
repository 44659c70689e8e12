"""The channel between the daemon and its API process: the daemon's state one way, writes the other.

The API runs in a process of its own (`controller.apiapp`), so that serving strangers, however
many and however slow, never takes the control loop's interpreter. Over one socket pair:

- daemon → API, pickled frames: the station config (when it changes), the plan (when a new one is
  adopted), after every cycle a `StationStatus` naming those two by reference together with the
  cycles since the last one (a few kB), the answer to each write, `sync` and `stop`;
- API → daemon, JSON frames (the API process parses what strangers send, so the daemon never
  unpickles anything it says): `ready`, `synced`, a write (`session`, `override`, `withdraw`)
  with the fields the API validated, and log records.

A frame is its length (4 bytes, big-endian) and its payload. `Publisher` is the daemon's end;
`DaemonLink` the API process's: a `StatusSource` serving the last state handed over, and the
writes, one at a time, each answered by the daemon after it applied it and handed over the state
that follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import pickle
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from base.config import Station
from base.stationsettings import ApiSettings
from control.sensing import LimitOverride
from control.sessions import Session
from control.step import Cycle
from controller.apimodels import EVENTS_SHOWN, LimitOverrideIn, Refusal, SessionInfo
from controller.status import StationStatus
from scheduler.plan import Plan

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
# A frame larger than this is a broken peer, not a message.
FRAME_MAX = 256 * 1024 * 1024
# Past this much unsent state (the API process too busy to read) a cycle's state is not handed
# over: the next one replaces it.
BACKLOG_BYTES = 1024 * 1024
# Cycles kept for an API process that reads too slowly (the page's history loses older ones).
CYCLES_KEPT = 120
# How long a write waits for the daemon's answer.
WRITE_TIMEOUT_S = 5.0


def frame(payload: bytes) -> bytes:
    """`payload` with its length in front."""
    return _HEADER.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's payload; None when the other end has closed."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > FRAME_MAX:
            raise ConnectionError(f"a frame of {size:,} bytes")
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        return None


@dataclass(frozen=True)
class Launch:
    """What the API process is started with (pickled to it by multiprocessing)."""

    settings: ApiSettings
    token: str | None
    log_level: int


def serve_api(listener: socket.socket, channel: socket.socket, launch: Launch) -> None:
    """The API process's entry: serve on `listener`, talking to the daemon over `channel`.

    Imports the web stack only here, so that the daemon's process never loads it.
    """
    from controller.apiapp import serve

    serve(listener, channel, launch)


# -- the daemon's end ------------------------------------------------------------------------


class _StatusPickler(pickle.Pickler):
    """Pickles a status that names the station and the plan the API process already has."""

    def __init__(self, file: io.BytesIO, station: Station, plan: Plan | None) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.station = station
        self.plan = plan

    def persistent_id(self, obj: Any) -> str | None:
        if obj is self.station:
            return "station"
        if obj is self.plan and obj is not None:
            return "plan"
        return None


class Publisher:
    """The daemon's end of the channel: hands over its state, and answers."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._station: Station | None = None
        self._plan: Plan | None = None
        self._cycles: list[Cycle] = []
        self.skipped = 0

    def cycle(self, cycle: Cycle) -> None:
        """Keep a cycle to hand over with the next state."""
        self._cycles.append(cycle)
        del self._cycles[:-CYCLES_KEPT]

    def publish(self, status: StationStatus) -> bool:
        """Hand over `status` and the cycles kept; False if the API process is behind (it will
        have the next one instead)."""
        if self.writer.is_closing():
            return False
        if self.writer.transport.get_write_buffer_size() > BACKLOG_BYTES:
            self.skipped += 1
            return False
        if status.station is not self._station:
            self._send(("station", status.station))
            self._station = status.station
        if status.plan is not self._plan:
            self._send(("plan", status.plan))
            self._plan = status.plan
        buffer = io.BytesIO()
        shown = replace(status, events=status.events[-EVENTS_SHOWN:])
        _StatusPickler(buffer, status.station, self._plan).dump(
            ("status", shown, tuple(self._cycles))
        )
        self.writer.write(frame(buffer.getvalue()))
        self._cycles.clear()
        return True

    def answer(self, request: int, result: object) -> None:
        """The outcome of a write: its result, or a `Refusal`."""
        if isinstance(result, Refusal):
            self._send(("refused", request, result.status, result.detail))
        else:
            self._send(("done", request, result))

    def sync(self, serial: int) -> None:
        """Ask the API process to say `synced` once it has everything sent before."""
        self._send(("sync", serial))

    def stop(self) -> None:
        """Ask the API process to end."""
        self._send(("stop",))

    def _send(self, message: tuple[Any, ...]) -> None:
        if not self.writer.is_closing():
            self.writer.write(frame(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)))


def parse_write(message: dict[str, Any]) -> tuple[str, str, SessionInfo | LimitOverrideIn | None]:
    """A write the API process sent, validated again: (op, pile, request). `Refusal` if it is
    not one."""
    op = message.get("op")
    try:
        if op == "session":
            pile = message.get("pile")
            if not isinstance(pile, str):
                raise Refusal(400, "a session write names its pile")
            return op, pile, SessionInfo.model_validate(message.get("info"))
        if op == "override":
            return op, "", LimitOverrideIn.model_validate(message.get("request"))
        if op == "withdraw":
            return op, "", None
    except ValueError as exc:  # pydantic's ValidationError is one
        raise Refusal(422, str(exc)) from None
    raise Refusal(400, f"no write {op!r}")


# -- the API process's end -------------------------------------------------------------------


class _StatusUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, link: DaemonLink) -> None:
        super().__init__(file)
        self.link = link

    def persistent_load(self, pid: Any) -> Any:
        if pid == "station":
            return self.link.station
        if pid == "plan":
            return self.link.plan
        raise pickle.UnpicklingError(f"unknown reference {pid!r}")


class DaemonLink:
    """The daemon as the API process sees it: its state as last handed over, and its writes.

    `status()` never waits: it is the copy of the last cycle (or write). A write is sent to the
    daemon, one at a time, and waits at most `WRITE_TIMEOUT_S` for the daemon's answer.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.station: Station | None = None
        self.plan: Plan | None = None
        self._status: StationStatus | None = None
        self._observers: list[Callable[[Cycle], None]] = []
        self._first = asyncio.Event()
        self._serial = 0
        self._answers: dict[int, asyncio.Future[object]] = {}
        self._one_write = asyncio.Lock()

    def status(self) -> StationStatus:
        """The daemon's state as last handed over."""
        assert self._status is not None, "no state handed over yet"
        return self._status

    def watch(self, observer: Callable[[Cycle], None]) -> None:
        """Call `observer` with every cycle the daemon hands over."""
        self._observers.append(observer)

    async def first_status(self) -> None:
        """Wait for the daemon's first state (it sends it at once)."""
        await self._first.wait()

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON message to the daemon."""
        if not self.writer.is_closing():
            self.writer.write(frame(json.dumps(message).encode()))

    async def tell_session(self, pile_id: str, info: SessionInfo) -> Session:
        """Hand the daemon a fleet system's session information; the session as it is then."""
        result = await self._write(
            {"op": "session", "pile": pile_id, "info": info.model_dump(mode="json")}
        )
        assert isinstance(result, Session)
        return result

    async def override_limit(self, request: LimitOverrideIn) -> LimitOverride:
        """Ask the daemon to lower the site limit; the override in force then."""
        result = await self._write({"op": "override", "request": request.model_dump(mode="json")})
        assert isinstance(result, LimitOverride)
        return result

    async def clear_override(self) -> LimitOverride | None:
        """Ask the daemon to end the operator's override; the one that ended, if any."""
        result = await self._write({"op": "withdraw"})
        assert result is None or isinstance(result, LimitOverride)
        return result

    async def _write(self, message: dict[str, Any]) -> object:
        async with self._one_write:
            self._serial += 1
            serial = self._serial
            answer: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            self._answers[serial] = answer
            try:
                self.send({"kind": "write", "id": serial, **message})
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    return await answer
            except TimeoutError:
                raise Refusal(
                    503, f"the daemon did not take the write within {WRITE_TIMEOUT_S:g} s"
                ) from None
            finally:
                self._answers.pop(serial, None)

    async def listen(self) -> None:
        """Take the daemon's frames until it says stop or closes the channel."""
        try:
            while (payload := await read_frame(self.reader)) is not None:
                if not self._take(payload):
                    return
        finally:
            for answer in self._answers.values():
                if not answer.done():
                    answer.set_exception(Refusal(503, "the daemon is stopping"))

    def _take(self, payload: bytes) -> bool:
        message = _StatusUnpickler(io.BytesIO(payload), self).load()
        kind = message[0]
        if kind == "status":
            _, status, cycles = message
            self._status = status
            self._first.set()
            for cycle in cycles:
                for observer in self._observers:
                    observer(cycle)
        elif kind == "station":
            self.station = message[1]
        elif kind == "plan":
            self.plan = message[1]
        elif kind in ("done", "refused"):
            answer = self._answers.get(message[1])
            if answer is not None and not answer.done():
                if kind == "done":
                    answer.set_result(message[2])
                else:
                    answer.set_exception(Refusal(message[2], message[3]))
        elif kind == "sync":
            self.send({"kind": "synced", "serial": message[1]})
        elif kind == "stop":
            return False
        return True

    async def close(self) -> None:
        """Close the channel."""
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


class LogForwarder(logging.Handler):
    """Sends the API process's log records to the daemon, which logs them as its own."""

    def __init__(self, link: DaemonLink, level: int) -> None:
        super().__init__(level)
        self.link = link

    def emit(self, record: logging.LogRecord) -> None:
        """Send one record (its text, with any traceback)."""
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            self.link.send(
                {"kind": "log", "name": record.name, "level": record.levelno, "text": text}
            )
        except Exception:
            self.handleError(record)


def log_forwarded(message: dict[str, Any]) -> None:
    """Log a record the API process forwarded, under its logger's name and the daemon's levels."""
    name, level, text = message.get("name"), message.get("level"), message.get("text")
    if not (isinstance(name, str) and isinstance(level, int) and isinstance(text, str)):
        return
    logger = logging.getLogger(name)
    if logger.isEnabledFor(level):
        logger.handle(logger.makeRecord(name, level, "(api process)", 0, text, (), None))
