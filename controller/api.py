"""The daemon's HTTP API as one of its services: served from a process of its own.

`ApiServer` (in `Daemon.services`) takes the API's address, starts the API's process
(`controller.apiapp`: FastAPI on uvicorn, behind `controller.httpguard`) and hands it the
daemon's state after every cycle over a socket pair (`controller.apilink`). Whatever the API is
asked, by however many clients, the control loop only pays for handing over one copy of its
state per cycle (`StationPort.status`, pickled: a fraction of a millisecond) and for the writes
a token holder makes; the API's process runs at a lower CPU priority than the daemon's.

A write (a fleet system's session information, the operator's limit override) arrives as a
message in the daemon's own event loop, which checks it against the live state (`tell_session`,
`override_limit`), applies it through the `StationPort`, hands over the state that follows and
answers; the API's process waits for that answer. Log records of the API's process are logged
here, under their own logger names and the daemon's levels.

Started after the control loops, stopped (and awaited: the process joined, the channel's task
ended) before them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import socket
from dataclasses import replace
from datetime import datetime
from multiprocessing.process import BaseProcess
from zoneinfo import ZoneInfo

from base.clock import stop_task
from base.stationsettings import ApiSettings
from control.sensing import LimitOverride
from control.sessions import Session, Wish
from control.step import Cycle
from controller.apilink import Launch, Publisher, log_forwarded, parse_write, read_frame, serve_api
from controller.apimodels import (
    MAX_DEPARTURE_S,
    MAX_OVERRIDE_S,
    LimitOverrideIn,
    Refusal,
    SessionInfo,
)
from controller.status import StationPort
from controller.worker import Worker

log = logging.getLogger(__name__)

# The API's process imports the web stack before it serves: on a loaded machine, seconds.
START_TIMEOUT_S = 60.0
# After `stop`, how long the API's process has to finish its answers and end.
STOP_TIMEOUT_S = 10.0


# -- writes, checked against the live state --------------------------------------------------


def tell_session(daemon: StationPort, pile_id: str, info: SessionInfo) -> Session:
    """Hand the daemon what a fleet system says of the vehicle at `pile_id`; the session then.

    `Refusal` (404, 409, 422) if the pile, its vehicle or the information does not fit.
    """
    status = daemon.status()
    known = {p.id for p in status.station.piles}
    if pile_id not in known:
        raise Refusal(404, f"no pile {pile_id!r}; the station has {sorted(known)}")
    session = status.sessions.get(pile_id)
    if session is None:
        raise Refusal(409, f"no vehicle is connected at {pile_id}")
    now = status.time
    departure = None if info.departure is None else info.departure.timestamp()
    if departure is not None and departure <= now:
        shown = datetime.fromtimestamp(now, ZoneInfo(status.station.info.timezone))
        raise Refusal(422, f"departure {info.departure} is not in the future (now {shown})")
    if departure is not None and departure > now + MAX_DEPARTURE_S:
        raise Refusal(
            422,
            f"departure {info.departure} is more than {MAX_DEPARTURE_S // 86400} days ahead",
        )
    if info.target_soc_pct is not None and (session.soc is None or session.capacity_kwh is None):
        raise Refusal(
            422,
            f"the vehicle at {pile_id} reports no state of charge or capacity: "
            "give energy_kwh instead of target_soc_pct",
        )
    before = status.wishes.get((pile_id, session.session_id), Wish())
    wish = Wish(
        vehicle_id=info.vehicle_id or before.vehicle_id,
        departure=departure if departure is not None else before.departure,
        v2g=session.v2g,
        min_soc=session.min_soc,
    )
    if info.energy_kwh is not None:
        wish = replace(wish, energy_kwh=info.energy_kwh)
    elif info.target_soc_pct is not None:
        wish = replace(wish, target_soc=info.target_soc_pct / 100)
    else:
        wish = replace(wish, energy_kwh=before.energy_kwh, target_soc=before.target_soc)
    daemon.wish(pile_id, session.session_id, wish)
    log.info("session at %s updated through the API", pile_id)
    return daemon.status().sessions.get(pile_id, session)


def override_limit(daemon: StationPort, request: LimitOverrideIn) -> LimitOverride:
    """Lower the site limit as the operator asks; `Refusal` (422) if it would last over a week
    or raise the limit."""
    now = daemon.status().time
    if request.until is not None:
        until = request.until.timestamp()
    else:
        assert request.minutes is not None
        until = now + request.minutes * 60
    if until - now > MAX_OVERRIDE_S:
        raise Refusal(422, "an override lasts at most a week: give an earlier until")
    try:
        return daemon.override_limit(request.limit_kw, until, request.reason)
    except ValueError as exc:
        raise Refusal(422, str(exc)) from None


# -- the service -----------------------------------------------------------------------------


class ApiServer:
    """The API, served from a process of its own, as one of the daemon's services.

    `bind()` takes the port at once (so a port in use is reported before the daemon starts);
    `start()` starts the API's process and returns once it accepts connections; `stop()` ends it
    and waits for it.
    """

    def __init__(self, daemon: StationPort, settings: ApiSettings) -> None:
        """Reads the token from the environment variable `settings.token_env` now."""
        self.daemon = daemon
        self.settings = settings
        self._token = settings.token()
        self.writes_enabled = self._token is not None
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._worker = Worker("api process")
        self._process: BaseProcess | None = None
        self._publisher: Publisher | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._publishing = False
        self._syncs: dict[int, asyncio.Future[None]] = {}
        self._serial = 0
        self._serving = asyncio.Event()

    @property
    def port(self) -> int:
        """The port served (the one bound, if the settings asked for any free port: 0)."""
        if self._socket is not None:
            return int(self._socket.getsockname()[1])
        return self._port if self._port is not None else self.settings.port

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:8080."""
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    def bind(self) -> None:
        """Take the configured address now; raises `OSError` if it is in use or not ours."""
        if self._socket is not None or self._process is not None:
            return
        host, port = self.settings.host, self.settings.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self._socket = sock

    async def start(self) -> None:
        """Start the API's process; returns once it accepts connections (`RuntimeError` if it
        ended or did not get there within `START_TIMEOUT_S`)."""
        self.bind()
        assert self._socket is not None
        ours, theirs = socket.socketpair()
        launch = Launch(self.settings, self._token, logging.getLogger().getEffectiveLevel())
        process = multiprocessing.get_context("spawn").Process(
            target=serve_api,
            args=(self._socket, theirs, launch),
            name="flexcharge api",
            daemon=True,
        )
        self._worker.start()
        try:
            await self._worker.run(process.start)
        except BaseException:
            ours.close()
            self._worker.stop()
            raise
        finally:
            theirs.close()
        # The API's process holds the listening socket from now on.
        self._port = self.port
        self._socket.close()
        self._socket = None
        self._process = process
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        self._publisher = Publisher(writer)
        self._ready = asyncio.get_running_loop().create_future()
        self._publisher.publish(self.daemon.status())
        self.daemon.watch(self._cycle_done)
        self._task = asyncio.create_task(self._listen(reader), name="api link")
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                await self._ready
        except BaseException as exc:
            await self.stop()
            if isinstance(exc, TimeoutError):
                raise RuntimeError(
                    f"the API's process did not serve within {START_TIMEOUT_S:g} s"
                ) from None
            raise
        self._serving.set()
        log.info(
            "API, metrics and live page at %s (writes %s; served by process %s)",
            self.url,
            "need the bearer token"
            if self.writes_enabled
            else f"disabled: {self.settings.token_env} is not set",
            process.pid,
        )

    async def synced(self) -> None:
        """Return once the API serves the daemon's state as it is now (once it serves at all:
        the daemon starts it after its loops, and it takes a while)."""
        await self._serving.wait()
        publisher = self._publisher
        if publisher is None:
            return
        self._publish()
        self._serial += 1
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._syncs[self._serial] = done
        publisher.sync(self._serial)
        await done

    async def stop(self) -> None:
        """End the API's process (its open answers get `STOP_TIMEOUT_S` to finish) and wait."""
        process, publisher = self._process, self._publisher
        self._process = self._publisher = None
        self._serving.clear()
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if process is None:
            return
        self.daemon.unwatch(self._cycle_done)
        try:
            if publisher is not None:
                publisher.stop()
            await self._worker.run(process.join, STOP_TIMEOUT_S)
            if process.exitcode is None:
                log.warning("the API's process did not stop in time: terminated")
                process.terminate()
                await self._worker.run(process.join, 2.0)
            if process.exitcode is None:
                process.kill()
                await self._worker.run(process.join)
        finally:
            await stop_task(self._task)
            self._task = None
            if publisher is not None:
                publisher.writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await publisher.writer.wait_closed()
            self._worker.stop()
            process.close()
            for done in self._syncs.values():
                done.cancel()
            self._syncs.clear()

    def _cycle_done(self, cycle: Cycle) -> None:
        # In the cycle: keep it, and hand the state over once the cycle has ended.
        if self._publisher is None:
            return
        self._publisher.cycle(cycle)
        if not self._publishing:
            self._publishing = True
            asyncio.get_running_loop().call_soon(self._publish)

    def _publish(self) -> None:
        self._publishing = False
        if self._publisher is not None:
            self._publisher.publish(self.daemon.status())

    async def _listen(self, reader: asyncio.StreamReader) -> None:
        """Take the API process's messages until it closes the channel."""
        while (payload := await read_frame(reader)) is not None:
            try:
                message = json.loads(payload)
                kind = message.get("kind")
            except (ValueError, AttributeError):
                log.error("the API's process sent something that is not a message; ignored")
                continue
            if kind == "write":
                self._write(message)
            elif kind == "log":
                log_forwarded(message)
            elif kind == "ready" and self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            elif kind == "synced":
                done = self._syncs.pop(message.get("serial"), None)
                if done is not None and not done.done():
                    done.set_result(None)
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(RuntimeError("the API's process ended while starting"))
        elif self._process is not None:
            log.error("the API's process ended: the API is down until the daemon restarts")

    def _write(self, message: dict[str, object]) -> None:
        publisher = self._publisher
        if publisher is None:
            return
        request = message.get("id")
        if not isinstance(request, int):
            return
        result: object
        try:
            op, pile, parsed = parse_write(message)
            if op == "session":
                assert isinstance(parsed, SessionInfo)
                result = tell_session(self.daemon, pile, parsed)
            elif op == "override":
                assert isinstance(parsed, LimitOverrideIn)
                result = override_limit(self.daemon, parsed)
            else:
                result = self.daemon.clear_override()
        except Refusal as refusal:
            result = refusal
        except Exception:
            # A bug: the channel, and the API's other writes, must outlive it.
            log.exception("a write through the API failed")
            result = Refusal(500, "the daemon could not apply the write (its log says why)")
        else:
            publisher.publish(self.daemon.status())
        publisher.answer(request, result)
