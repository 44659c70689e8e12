"""The API's process: the HTTP API, Prometheus metrics and live page (FastAPI, served by uvicorn).

`controller.api.ApiServer`, a service of the daemon, starts this process (`serve`) and hands it
the daemon's state after every cycle (`controller.apilink`); the handlers read that copy, never
the daemon, and a write goes to the daemon over the channel and waits for its answer. The process
runs at a lower CPU priority than the daemon's, so that even a busy API leaves the control loop
the processor. In front of the application, `controller.httpguard` refuses what must not reach
it (oversized, untyped, unauthenticated, slow or malformed requests).

Reads (`GET /api/...`, `/metrics`) are open unless `[api] reads_need_token`; writes need the
bearer token from the environment variable `[api] token_env`, and are refused while it is unset.
Each read is rendered once per state handed over and then served as bytes. The OpenAPI spec is
at `/openapi.json`, its browsable forms at `/docs` (Swagger UI) and `/redoc`, both served from
the files `fastapi-offline` ships (no CDN); the live page at `/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import socket
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from itertools import pairwise
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import TypeAdapter

from base.clock import stop_task
from base.events import DeviceRef, Event
from base.stationsettings import ApiSettings
from base.tariff import Tariff
from control.reasons import PileReason
from control.sensing import LimitOverride
from control.sessions import Session
from control.step import Cycle
from controller.apilink import DaemonLink, Launch, LogForwarder
from controller.apimodels import (
    EVENTS_SHOWN,
    AlarmOut,
    BandOut,
    DeviceOut,
    EndedOut,
    EventOut,
    HistoryOut,
    LimitOverrideIn,
    OverrideOut,
    PileOut,
    PlanOut,
    PlanVehicleOut,
    ReasonOut,
    Refusal,
    SampleOut,
    SessionInfo,
    SessionOut,
    SiteOut,
    SlotOut,
    StatusOut,
    TariffOut,
)
from controller.httpguard import Gate, bearer_refusal, guarded_protocol
from controller.metrics import metrics_text, registry_for
from controller.status import StationStatus

log = logging.getLogger(__name__)

# Samples of the load history the page draws: a few hundred per window, whatever its length.
HISTORY_SAMPLES = 720
PAGE_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The API's process yields the processor to the daemon's (and to anything at normal priority).
API_NICENESS = 10
# Renderings kept per state (the history's depend on the hours asked for).
RENDERINGS_KEPT = 64
# No cycle for this many control periods: the daemon's figures are stale.
STALE_PERIODS = 3


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
        reasons = status.reasons()
        piles = []
        for config in station.piles:
            view = views.get(config.id)
            reading = None if view is None else view.reading
            session = status.sessions.get(config.id)
            health = status.device(DeviceRef.pile(config.id).label)
            seen = None if health is None else health.last_seen
            piles.append(
                PileOut(
                    id=config.id,
                    state="unknown" if reading is None else str(reading.state),
                    online=reading is not None,
                    stale=reading is None or (view is not None and not view.current),
                    last_seen=self.maybe_time(seen),
                    last_seen_t=seen,
                    error=status.pile_errors.get(config.id),
                    reason=self.reason(reasons[config.id]),
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
            timezone=station.info.timezone,
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
            alarms=self.alarms(),
            devices=[
                DeviceOut(
                    device=d.device,
                    ok=d.ok,
                    error=d.error,
                    since=self.maybe_time(d.since),
                    last_seen=self.maybe_time(d.last_seen),
                )
                for d in status.devices
            ],
            events=[self.event(event) for event in status.events[-EVENTS_SHOWN:]],
        )

    def maybe_time(self, t: float | None) -> datetime | None:
        return None if t is None else self.time(t)

    def reason(self, reason: PileReason) -> ReasonOut:
        return ReasonOut(
            kind=reason.kind,
            text=reason.text,
            until=self.maybe_time(reason.until),
            until_t=reason.until,
        )

    def alarms(self) -> list[AlarmOut]:
        """What the operator must act on: devices lost, and a daemon whose data is stale."""
        status = self.status_
        alarms = []
        lost = [d for d in status.devices if not d.ok]
        for device in lost:
            if device.device.startswith("pile "):
                continue
            kind: Literal["meter", "terminal"] = (
                "meter" if device.device.startswith("meter ") else "terminal"
            )
            consequence = (
                "the site load is unknown: the controller assumes the worst background load"
                if kind == "meter"
                else "the utility's limit is not received"
            )
            alarms.append(
                AlarmOut(
                    kind=kind,
                    text=f"{'grid meter' if kind == 'meter' else 'utility terminal'} lost "
                    f"({device.device}: {device.error or 'no answer'}): {consequence}",
                    since=self.maybe_time(device.since),
                    since_t=device.since,
                )
            )
        piles = [d for d in lost if d.device.startswith("pile ")]
        if piles:
            since = min((d.since for d in piles if d.since is not None), default=None)
            names = ", ".join(d.device.removeprefix("pile ") for d in piles)
            alarms.append(
                AlarmOut(
                    kind="piles",
                    text=f"{len(piles)} of {len(status.station.piles)} piles not read ({names}): "
                    "each falls back to its fallback power on its own",
                    since=self.maybe_time(since),
                    since_t=since,
                )
            )
        cycle = status.last_cycle
        period = status.station.control.period_s
        if cycle is None or self.now - cycle.time > STALE_PERIODS * period:
            last = None if cycle is None else cycle.time
            alarms.append(
                AlarmOut(
                    kind="stale",
                    text="no control cycle yet"
                    if cycle is None
                    else f"no control cycle for {self.now - cycle.time:,.0f} s: the figures "
                    "shown are stale",
                    since=self.maybe_time(last),
                    since_t=last,
                )
            )
        return alarms

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


class _Renderings:
    """The answers to reads, rendered once per state the daemon hands over."""

    def __init__(self, link: DaemonLink) -> None:
        self.link = link
        self._of: StationStatus | None = None
        self._bytes: dict[Hashable, bytes] = {}

    def get(self, key: Hashable, render: Callable[[_View], bytes]) -> bytes:
        """The rendering `key` of the state now, made by `render` the first time."""
        status = self.link.status()
        if status is not self._of:
            self._of, self._bytes = status, {}
        rendered = self._bytes.get(key)
        if rendered is None:
            if len(self._bytes) >= RENDERINGS_KEPT:
                self._bytes.clear()
            rendered = self._bytes[key] = render(_View(status))
        return rendered


_SESSIONS = TypeAdapter(list[SessionOut])


def _json(content: bytes) -> Response:
    return Response(content, media_type="application/json")


def build_app(link: DaemonLink, settings: ApiSettings, token: str | None) -> FastAPI:
    """The FastAPI application over `link`: API, metrics and page.

    `token` is the bearer token writes need (None: writes are refused).
    """
    station = link.status().station
    history = LoadHistory(
        settings.history_h * 3600,
        max(settings.history_h * 3600 / HISTORY_SAMPLES, station.control.period_s),
    )
    link.watch(history.add)
    registry = registry_for(link)
    renderings = _Renderings(link)

    def check(credentials: HTTPAuthorizationCredentials | None, what: str) -> None:
        header = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
        refusal = bearer_refusal(header, token, settings.token_env, what)
        if refusal is not None:
            raise HTTPException(refusal.status, refusal.detail, headers=dict(refusal.headers))

    async def writer(credentials: Credentials) -> None:
        check(credentials, "writes")

    async def reader(credentials: Credentials) -> None:
        if settings.reads_need_token:
            check(credentials, "reads")

    # Swagger UI and ReDoc from the package's own files: /docs works without the internet.
    app = FastAPIOffline(
        title="flexcharge",
        summary=f"Station {station.name}: status, plan, sessions, limit override",
        version="1",
    )

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's error list, plus one readable sentence naming every bad field.
        return JSONResponse(
            status_code=422,
            content={"message": _problem_text(exc), "detail": _json_safe(exc.errors())},
        )

    @app.exception_handler(Refusal)
    async def _refused(_request: Request, exc: Refusal) -> JSONResponse:
        return JSONResponse(exc.content(), status_code=exc.status, headers=dict(exc.headers))

    Read = [Depends(reader)]
    Write = [Depends(writer)]

    @app.get("/api/status", dependencies=Read, tags=["read"], response_model=StatusOut)
    async def status() -> Response:
        """The site, its limit and where it comes from, the tariff band and every pile."""
        return _json(
            renderings.get("status", lambda view: view.status().model_dump_json().encode())
        )

    @app.get("/api/plan", dependencies=Read, tags=["read"], response_model=PlanOut)
    async def plan() -> Response:
        """The plan the controller follows: every vehicle's planned power per slot."""
        return _json(renderings.get("plan", lambda view: view.plan().model_dump_json().encode()))

    @app.get("/api/sessions", dependencies=Read, tags=["read"], response_model=list[SessionOut])
    async def sessions() -> Response:
        """The vehicles connected now."""

        def render(view: _View) -> bytes:
            return _SESSIONS.dump_json([view.session(s) for s in view.status_.sessions.values()])

        return _json(renderings.get("sessions", render))

    @app.get("/api/history", dependencies=Read, tags=["read"], response_model=HistoryOut)
    async def history_(
        hours: Annotated[float, Query(gt=0, le=48, allow_inf_nan=False)] = settings.history_h,
    ) -> Response:
        """Site load and limit over the last `hours`, with the tariff bands to the plan's end."""

        def render(view: _View) -> bytes:
            status = view.status_
            now = status.time
            start = now - hours * 3600
            plan = status.plan
            end = max(now + 6 * 3600, plan.end if plan is not None else now)
            out = HistoryOut(
                samples=history.since(start), bands=_bands(status.station.tariff, start, end)
            )
            return out.model_dump_json().encode()

        return _json(renderings.get(("history", hours), render))

    @app.post("/api/piles/{pile_id}/session", dependencies=Write, tags=["write"])
    async def tell_session(
        pile_id: Annotated[str, Path(max_length=64)], info: SessionInfo
    ) -> SessionOut:
        """Tell the station what the vehicle at `pile_id` needs and when it leaves."""
        session = await link.tell_session(pile_id, info)
        return _View(link.status()).session(session)

    @app.post("/api/limit/override", dependencies=Write, tags=["write"])
    async def override_limit(request: LimitOverrideIn) -> OverrideOut:
        """Lower the site limit until a time; it can never raise it above the transformer's."""
        set_ = await link.override_limit(request)
        out = _View(link.status()).override(set_)
        assert out is not None
        return out

    @app.delete("/api/limit/override", dependencies=Write, tags=["write"])
    async def withdraw_override() -> EndedOut:
        """End the operator's override now."""
        ended = await link.clear_override()
        return EndedOut(ended=None if ended is None else _View(link.status()).override(ended))

    @app.get("/metrics", dependencies=Read, tags=["read"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics."""
        text = renderings.get("metrics", lambda _view: metrics_text(registry))
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(_page_file("index.html"))

    @app.get("/page/{name}", include_in_schema=False)
    async def page_file(name: str) -> Response:
        if name not in PAGE_FILES:
            raise HTTPException(404, f"no page file {name!r}")
        return Response(_page_file(name), media_type=PAGE_FILES[name])

    return app


def _json_safe(value: Any) -> Any:
    """`value` with everything JSON cannot hold made text: a validation error carries the
    client's input (a NaN, bytes) and, in `ctx`, exception objects."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return str(value)


def _page_file(name: str) -> str:
    return resources.files("controller").joinpath("page", name).read_text(encoding="utf-8")


# -- serving it ------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: the daemon stops this process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def serve(listener: socket.socket, channel: socket.socket, launch: Launch) -> None:
    """Serve the API on `listener` until the daemon says stop or goes away (`channel` closes)."""
    # Ctrl-C reaches the whole process group: the daemon, not this process, decides when to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(API_NICENESS)
    asyncio.run(_serve(listener, channel, launch))


async def _serve(listener: socket.socket, channel: socket.socket, launch: Launch) -> None:
    reader, writer = await asyncio.open_unix_connection(sock=channel)
    link = DaemonLink(reader, writer)
    root = logging.getLogger()
    root.handlers[:] = [LogForwarder(link, launch.log_level)]
    root.setLevel(launch.log_level)
    listening = asyncio.create_task(link.listen(), name="daemon link")
    serving: asyncio.Task[None] | None = None
    try:
        first = asyncio.ensure_future(link.first_status())
        await asyncio.wait({first, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not first.done():
            await stop_task(first)
            return
        settings = launch.settings
        app = Gate(build_app(link, settings, launch.token), settings, launch.token)
        config = uvicorn.Config(
            app,
            http=guarded_protocol(settings),
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listener]), name="http api")
        while not server.started:
            if serving.done():
                serving.result()
                return
            await asyncio.sleep(0.01)
        link.send({"kind": "ready"})
        await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
    finally:
        await stop_task(serving)
        await stop_task(listening)
        await link.close()
