"""The daemon's HTTP API, Prometheus metrics and live page (FastAPI, served by uvicorn).

`ApiServer` is a service the daemon owns (`Daemon.services`): a uvicorn server running in the
daemon's own event loop, started after the control loops and stopped, and awaited, before them.
Handlers only read the daemon's `StationStatus`, or hand a request to its `StationPort` (a wish,
a limit override) between two cycles, so they never block the loop.

Reads (`GET /api/...`, `/metrics`) are open unless `[api] reads_need_token`; writes need the
bearer token from the environment variable `[api] token_env`, and are refused while it is unset.
The OpenAPI spec is at `/openapi.json`, its browsable form at `/docs`; the live page at `/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import socket
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from importlib import resources
from itertools import pairwise
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from base.config import ApiSettings
from base.events import Event
from base.tariff import Tariff
from control.sensing import LimitOverride
from control.sessions import Session, Wish
from control.step import Cycle
from controller.apimodels import (
    MAX_OVERRIDE_S,
    BandOut,
    EndedOut,
    EventOut,
    HistoryOut,
    LimitOverrideIn,
    OverrideOut,
    PileOut,
    PlanOut,
    PlanVehicleOut,
    SampleOut,
    SessionInfo,
    SessionOut,
    SiteOut,
    SlotOut,
    StatusOut,
    TariffOut,
)
from controller.metrics import metrics_text, registry_for
from controller.status import StationPort, StationStatus

log = logging.getLogger(__name__)

# Samples of the load history the page draws: a few hundred per window, whatever its length.
HISTORY_SAMPLES = 720
PAGE_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


# -- the load history the page draws ---------------------------------------------------------


@dataclass
class _Bucket:
    t: float
    load_kw: float | None
    limit_kw: float
    piles_kw: float

    def out(self) -> SampleOut:
        return SampleOut(
            t=self.t, load_kw=self.load_kw, limit_kw=self.limit_kw, piles_kw=self.piles_kw
        )


class LoadHistory:
    """Site load and limit over the last `window_s`, one sample per `step_s` (a cycle observer).

    Each sample keeps the highest load and the lowest limit of its stretch, so a short peak
    near the limit is not averaged away.
    """

    def __init__(self, window_s: float, step_s: float) -> None:
        self.window_s = window_s
        self.step_s = step_s
        self._samples: deque[_Bucket] = deque()

    def add(self, cycle: Cycle) -> None:
        """Account one control cycle."""
        snap = cycle.snapshot
        last = self._samples[-1] if self._samples else None
        if last is None or cycle.time >= last.t + self.step_s:
            self._samples.append(_Bucket(cycle.time, snap.grid_kw, snap.limit_kw, snap.piles_kw))
        else:
            if snap.grid_kw is not None:
                last.load_kw = max(last.load_kw or -math.inf, snap.grid_kw)
            last.limit_kw = min(last.limit_kw, snap.limit_kw)
            last.piles_kw = snap.piles_kw
        while self._samples and self._samples[0].t < cycle.time - self.window_s:
            self._samples.popleft()

    def since(self, start: float) -> list[SampleOut]:
        """The samples from `start` on."""
        return [b.out() for b in self._samples if b.t >= start]


# -- the application -------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="the token in [api] token_env")
# At module level: FastAPI resolves the handlers' (string) annotations in this module's globals.
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _bands(tariff: Tariff, start: float, end: float) -> list[BandOut]:
    bands: list[BandOut] = []
    t = start
    while t < end and len(bands) < 500:
        until = min(tariff.next_change(t).timestamp(), end)
        band = tariff.band_at(t)
        if bands and bands[-1].band == band:
            bands[-1] = bands[-1].model_copy(update={"t1": until})
        else:
            bands.append(BandOut(t0=t, t1=until, band=band, price=tariff.band_prices[band]))
        t = until
    return bands


class _View:
    """Turns one `StationStatus` into the API's answers."""

    def __init__(self, status: StationStatus) -> None:
        self.now = status.time
        self.status_ = status
        self.zone = ZoneInfo(status.station.info.timezone)

    def time(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.zone)

    def event(self, event: Event) -> EventOut:
        device = event.device
        return EventOut(
            time=self.time(event.time),
            t=event.time,
            text=event.text,
            source=event.source,
            kind=event.kind,
            device=None if device is None else device.label,
        )

    def session(self, session: Session) -> SessionOut:
        plan = self.status_.plan
        planned = None
        if plan is not None and plan.slot_at(self.now) is not None:
            planned = plan.power_at(session.vehicle_id, self.now)
        return SessionOut(
            pile=session.pile,
            vehicle_id=session.vehicle_id,
            session_id=session.session_id,
            plugged_at=self.time(session.plugged_at),
            departure=self.time(session.departure),
            departure_known=session.departure_known,
            need_kwh=session.need_kwh,
            delivered_kwh=session.delivered_kwh,
            remaining_kwh=session.remaining_kwh,
            soc_pct=None if session.soc is None else 100 * session.soc,
            capacity_kwh=session.capacity_kwh,
            max_kw=session.max_kw,
            planned_kw=planned,
        )

    def override(self, override: LimitOverride | None = None) -> OverrideOut | None:
        override = override or self.status_.override
        if override is None:
            return None
        return OverrideOut(
            limit_kw=override.kw,
            until=self.time(override.until),
            set_at=self.time(override.set_at),
            reason=override.reason,
        )

    def status(self) -> StatusOut:
        status = self.status_
        now = status.time
        cycle = status.last_cycle
        snap = None if cycle is None else cycle.snapshot
        station = status.station
        tariff = station.tariff
        views = {} if snap is None else {v.id: v for v in snap.piles}
        piles = []
        for config in station.piles:
            view = views.get(config.id)
            reading = None if view is None else view.reading
            session = status.sessions.get(config.id)
            piles.append(
                PileOut(
                    id=config.id,
                    state="unknown" if reading is None else str(reading.state),
                    online=reading is not None,
                    error=status.pile_errors.get(config.id),
                    power_kw=None if reading is None else reading.power_kw,
                    setpoint_kw=status.setpoints.get(config.id, 0.0),
                    target_kw=None if cycle is None else cycle.targets.get(config.id),
                    max_kw=config.max_kw if view is None else view.max_kw,
                    soc_pct=None if reading is None else reading.soc_pct,
                    fault=status.faults.get(config.id, ""),
                    session=None if session is None else self.session(session),
                )
            )
        limit = station.limit_kw if snap is None else snap.limit_kw
        site = SiteOut(
            load_kw=None if snap is None else snap.grid_kw,
            limit_kw=limit,
            limit_source=status.limit_source,
            transformer_limit_kw=station.limit_kw,
            utility_limit_kw=status.utility_limit_kw,
            override=self.override(),
            background_kw=None if snap is None else snap.background_kw,
            piles_kw=0.0 if snap is None else snap.piles_kw,
            budget_kw=None if cycle is None else cycle.budget_kw,
        )
        band = tariff.band_at(now)
        return StatusOut(
            station=station.name,
            time=self.time(now),
            t=now,
            cycle_time=None if cycle is None else self.time(cycle.time),
            policy=status.policy,
            site=site,
            tariff=TariffOut(
                name=tariff.name,
                band=band,
                price=tariff.band_prices[band],
                currency=tariff.currency,
                next_change=tariff.next_change(now),
            ),
            piles=piles,
            events=[self.event(event) for event in status.events[-20:]],
        )

    def plan(self) -> PlanOut:
        status = self.status_
        plan = status.plan
        if plan is None:
            return PlanOut(
                status="none", message="", planned_at=None, slots=[], vehicles=[], piles_kw=[]
            )
        tariff = status.station.tariff
        edges = [float(t) for t in plan.boundaries]
        slots = []
        for t0, t1 in pairwise(edges):
            band = tariff.band_at((t0 + t1) / 2)
            slots.append(
                SlotOut(
                    start=self.time(t0),
                    end=self.time(t1),
                    t0=t0,
                    t1=t1,
                    band=band,
                    price=tariff.band_prices[band],
                )
            )
        piles = {s.vehicle_id: s.pile for s in status.sessions.values()}
        vehicles = []
        here = [0.0] * len(slots)
        for vid, series in plan.power_kw.items():
            kw = [round(float(x), 3) for x in series]
            if vid in piles:
                here = [a + b for a, b in zip(here, kw, strict=True)]
            vehicles.append(
                PlanVehicleOut(
                    id=vid,
                    pile=piles.get(vid),
                    expected=vid not in piles,
                    kw=kw,
                    unmet_kwh=float(plan.unmet_kwh.get(vid, 0.0)),
                )
            )
        return PlanOut(
            status=str(plan.status),
            message=plan.message,
            planned_at=None if status.planned_at is None else self.time(status.planned_at),
            slots=slots,
            vehicles=vehicles,
            piles_kw=here,
        )


def _problem_text(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        message = str(error.get("msg", "invalid"))
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def build_app(daemon: StationPort, settings: ApiSettings, token: str | None) -> FastAPI:
    """The FastAPI application for `daemon`: API, metrics and page.

    `token` is the bearer token writes need (None: writes are refused).
    """
    station = daemon.status().station
    history = LoadHistory(
        settings.history_h * 3600,
        max(settings.history_h * 3600 / HISTORY_SAMPLES, station.control.period_s),
    )
    daemon.watch(history.add)
    registry = registry_for(daemon)

    def check(credentials: HTTPAuthorizationCredentials | None, what: str) -> None:
        if token is None:
            raise HTTPException(
                403,
                f"{what} are disabled: the daemon was started without a token in the "
                f"environment variable {settings.token_env}",
            )
        if credentials is None:
            raise HTTPException(
                401,
                f"{what} need a bearer token (header 'Authorization: Bearer <token>')",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(403, "wrong token")

    async def writer(credentials: Credentials) -> None:
        check(credentials, "writes")

    async def reader(credentials: Credentials) -> None:
        if settings.reads_need_token:
            check(credentials, "reads")

    app = FastAPI(
        title="flexcharge",
        summary=f"Station {station.name}: status, plan, sessions, limit override",
        version="1",
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's error list, plus one readable sentence naming every bad field.
        return JSONResponse(
            status_code=422,
            content={"message": _problem_text(exc), "detail": _jsonable(exc.errors())},
        )

    Read = [Depends(reader)]
    Write = [Depends(writer)]

    @app.get("/api/status", dependencies=Read, tags=["read"])
    async def status() -> StatusOut:
        """The site, its limit and where it comes from, the tariff band and every pile."""
        return _View(daemon.status()).status()

    @app.get("/api/plan", dependencies=Read, tags=["read"])
    async def plan() -> PlanOut:
        """The plan the controller follows: every vehicle's planned power per slot."""
        return _View(daemon.status()).plan()

    @app.get("/api/sessions", dependencies=Read, tags=["read"])
    async def sessions() -> list[SessionOut]:
        """The vehicles connected now."""
        view = _View(daemon.status())
        return [view.session(s) for s in view.status_.sessions.values()]

    @app.get("/api/history", dependencies=Read, tags=["read"])
    async def history_(
        hours: Annotated[float, Query(gt=0, le=48)] = settings.history_h,
    ) -> HistoryOut:
        """Site load and limit over the last `hours`, with the tariff bands to the plan's end."""
        status = daemon.status()
        now = status.time
        start = now - hours * 3600
        plan = status.plan
        end = max(now + 6 * 3600, plan.end if plan is not None else now)
        return HistoryOut(
            samples=history.since(start), bands=_bands(status.station.tariff, start, end)
        )

    @app.post("/api/piles/{pile_id}/session", dependencies=Write, tags=["write"])
    async def tell_session(
        pile_id: Annotated[str, Path(max_length=64)], info: SessionInfo
    ) -> SessionOut:
        """Tell the station what the vehicle at `pile_id` needs and when it leaves."""
        status = daemon.status()
        view = _View(status)
        known = {p.id for p in status.station.piles}
        if pile_id not in known:
            raise HTTPException(404, f"no pile {pile_id!r}; the station has {sorted(known)}")
        session = status.sessions.get(pile_id)
        if session is None:
            raise HTTPException(409, f"no vehicle is connected at {pile_id}")
        now = status.time
        departure = None if info.departure is None else info.departure.timestamp()
        if departure is not None and departure <= now:
            raise HTTPException(
                422, f"departure {info.departure} is not in the future (now {view.time(now)})"
            )
        if info.target_soc_pct is not None and (
            session.soc is None or session.capacity_kwh is None
        ):
            raise HTTPException(
                422,
                f"the vehicle at {pile_id} reports no state of charge or capacity: "
                "give energy_kwh instead of target_soc_pct",
            )
        key = (pile_id, session.session_id)
        before = status.wishes.get(key, Wish())
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
        updated = _View(daemon.status())
        return updated.session(updated.status_.sessions.get(pile_id, session))

    @app.post("/api/limit/override", dependencies=Write, tags=["write"])
    async def override_limit(request: LimitOverrideIn) -> OverrideOut:
        """Lower the site limit until a time; it can never raise it above the transformer's."""
        now = daemon.status().time
        if request.until is not None:
            until = request.until.timestamp()
        else:
            assert request.minutes is not None
            until = now + request.minutes * 60
        if until - now > MAX_OVERRIDE_S:
            raise HTTPException(422, "an override lasts at most a week: give an earlier until")
        try:
            set_ = daemon.override_limit(request.limit_kw, until, request.reason)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        out = _View(daemon.status()).override(set_)
        assert out is not None
        return out

    @app.delete("/api/limit/override", dependencies=Write, tags=["write"])
    async def withdraw_override() -> EndedOut:
        """End the operator's override now."""
        view = _View(daemon.status())
        ended = daemon.clear_override()
        return EndedOut(ended=view.override(ended) if ended is not None else None)

    @app.get("/metrics", dependencies=Read, tags=["read"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        return Response(metrics_text(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page_file("index.html"))

    @app.get("/page/{name}", include_in_schema=False)
    async def page_file(name: str) -> Response:
        if name not in PAGE_FILES:
            raise HTTPException(404, f"no page file {name!r}")
        return Response(_page_file(name), media_type=PAGE_FILES[name])

    return app


def _jsonable(errors: Any) -> Any:
    # Pydantic puts the exception object of a failed validator in `ctx`: not JSON.
    out = []
    for error in errors:
        error = dict(error)
        if "ctx" in error:
            error["ctx"] = {k: str(v) for k, v in error["ctx"].items()}
        out.append(error)
    return out


def _page_file(name: str) -> str:
    return resources.files("controller").joinpath("page", name).read_text(encoding="utf-8")


# -- serving it ------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: the daemon owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """The API served in the daemon's event loop, as one of its services.

    `bind()` takes the port at once (so a port in use is reported before the daemon starts);
    `start()` serves, `stop()` closes the connections and waits for the server's task.
    """

    def __init__(self, daemon: StationPort, settings: ApiSettings) -> None:
        """Reads the token from the environment variable `settings.token_env` now."""
        self.settings = settings
        token = settings.token()
        self.writes_enabled = token is not None
        self.app = build_app(daemon, settings, token)
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port served (the one bound, if the settings asked for any free port: 0)."""
        if self._socket is not None:
            return int(self._socket.getsockname()[1])
        return self.settings.port

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:8080."""
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    def bind(self) -> None:
        """Take the configured address now; raises `OSError` if it is in use or not ours."""
        if self._socket is not None:
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
        """Serve until `stop`; returns once the server accepts connections."""
        self.bind()
        assert self._socket is not None
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        server = self._server = _Server(config)
        self._task = asyncio.create_task(server.serve(sockets=[self._socket]), name="http api")
        while not server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("the API server stopped while starting")
            await asyncio.sleep(0.01)
        log.info(
            "API, metrics and live page at %s (writes %s)",
            self.url,
            "need the bearer token"
            if self.writes_enabled
            else f"disabled: {self.settings.token_env} is not set",
        )

    async def stop(self) -> None:
        """Close every connection and wait for the server to end."""
        task, server = self._task, self._server
        self._task = self._server = None
        if task is None or server is None:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            return
        server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=5)
        except TimeoutError:
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        finally:
            self._socket = None
