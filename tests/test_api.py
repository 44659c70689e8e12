"""The daemon's HTTP API against the hardware simulator over Modbus on loopback, on one virtual
clock: status, plan and sessions agree with the daemon; a fleet system's session information
reaches `Control`; writes need the token (which is never logged); bad input gets a clear 4xx; an
operator's limit override lowers the limit the controller keeps, expires on the daemon's clock,
and can never raise it above the transformer's.

The test task takes part in the virtual clock while it talks to the API, so station time stands
still during each request and moves only when the test sleeps on the clock. The API is served from
a process of its own, from the state the daemon hands it after each cycle: before each request the
client waits until that process has the state of now (`ApiServer.synced`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from base.clock import VirtualClock
from base.config import Station
from base.events import Kind
from base.stationsettings import ApiSettings
from control.decider import Policy
from controller.api import ApiServer
from controller.daemon import Daemon
from simulator.fleet import Visit
from tests.conftest import StartStation, free_ports, local_time

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]

TOKEN = "s3cret-token-for-tests-7d1f"
TOKEN_ENV = "FLEXCHARGE_TEST_API_TOKEN"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Site:
    """A running daemon with its API, the simulator it controls and a client."""

    daemon: Daemon
    clock: VirtualClock
    client: httpx.AsyncClient
    server: ApiServer
    start: float
    zone: ZoneInfo

    def iso(self, t: float) -> str:
        """Station time `t` as an ISO string with its offset."""
        return datetime.fromtimestamp(t, self.zone).isoformat()

    async def get(self, path: str, **kwargs: Any) -> Any:
        """GET a path that must answer 200, as JSON."""
        response = await self.client.get(path, **kwargs)
        assert response.status_code == 200, response.text
        return response.json()


def _trucks(start: float) -> list[Visit]:
    return [
        Visit(
            vehicle_id=f"truck-{n}",
            arrival=start + 60 * (n + 1),
            departure=start + 8 * 3600,
            energy_kwh=200.0,
            max_kw=300.0,
            capacity_kwh=500.0,
            soc_arrival=0.3,
            pile=f"P{n + 1:02d}",
        )
        for n in range(3)
    ]


def synced(server: ApiServer) -> Callable[[httpx.Request], Awaitable[None]]:
    """A request hook: the API's process has the daemon's state of now before it answers."""

    async def hook(_request: httpx.Request) -> None:
        await server.synced()

    return hook


@asynccontextmanager
async def running_site(
    running_station: StartStation,
    station: Station,
    monkeypatch: pytest.MonkeyPatch,
    *,
    reads_need_token: bool = False,
    policy: Policy = Policy.MPC,
    **limits: Any,
) -> AsyncIterator[Site]:
    """Four piles (three trucks plugging in), the daemon (under MPC by default) with its API
    (`limits`: more [api] settings), 20 station minutes in; the caller takes part in the clock.
    Both stop when the block ends."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    station = replace(station, piles=station.piles[:4]).with_control(period_s=5.0)
    start = local_time(station, "2026-11-25T10:00")
    running = await running_station(station, _trucks(start), start=start, policy=policy)
    daemon, clock = running.daemon, running.clock
    settings = ApiSettings(
        host="127.0.0.1",
        port=free_ports(1)[0],
        token_env=TOKEN_ENV,
        reads_need_token=reads_need_token,
        **limits,
    )
    server = ApiServer(daemon, settings)
    daemon.services.append(server)
    with clock.participant():
        try:
            await clock.sleep_until(start + 20 * 60)
            await server.synced()  # the daemon starts its API after its loops
            async with httpx.AsyncClient(
                base_url=server.url, timeout=10, event_hooks={"request": [synced(server)]}
            ) as client:
                yield Site(daemon, clock, client, server, start, daemon.control.zone)
        finally:
            await running.stop()


async def test_status_plan_and_sessions_agree_with_the_daemon(
    station: Station, running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every figure the API gives is the daemon's own, at the same station time."""
    async with running_site(running_station, station, monkeypatch) as site:
        daemon = site.daemon
        status = await site.get("/api/status")
        cycle = daemon.last_cycle
        assert cycle is not None
        snap = cycle.snapshot
        assert status["t"] == site.clock.now()
        assert status["station"] == daemon.station.name
        assert status["policy"] == "mpc"
        assert status["site"]["load_kw"] == snap.grid_kw
        assert status["site"]["limit_kw"] == snap.limit_kw == daemon.station.limit_kw
        assert status["site"]["limit_source"] == "transformer"
        assert status["site"]["transformer_limit_kw"] == daemon.station.limit_kw
        assert status["site"]["override"] is None
        assert status["site"]["background_kw"] == pytest.approx(snap.background_kw)
        assert status["site"]["budget_kw"] == cycle.budget_kw
        assert status["tariff"]["band"] == snap.band
        assert status["tariff"]["price"] == snap.price
        assert [p["id"] for p in status["piles"]] == ["P01", "P02", "P03", "P04"]
        for pile in status["piles"]:
            view = next(v for v in snap.piles if v.id == pile["id"])
            assert view.reading is not None
            assert pile["online"] is True
            assert pile["state"] == str(view.reading.state)
            assert pile["power_kw"] == view.reading.power_kw
            assert pile["setpoint_kw"] == daemon.setpoints[pile["id"]]
            assert pile["soc_pct"] == view.reading.soc_pct
            session = daemon.control.sessions.get(pile["id"])
            if session is None:
                assert pile["session"] is None
            else:
                assert pile["session"]["vehicle_id"] == session.vehicle_id
                assert pile["session"]["need_kwh"] == session.need_kwh
                assert pile["session"]["delivered_kwh"] == session.delivered_kwh
        assert sum(p["session"] is not None for p in status["piles"]) == 3
        assert any("vehicle connected" in e["text"] for e in status["events"])

        sessions = await site.get("/api/sessions")
        assert {s["pile"] for s in sessions} == {"P01", "P02", "P03"}
        for entry in sessions:
            session = daemon.control.sessions[entry["pile"]]
            assert entry["session_id"] == session.session_id
            assert datetime.fromisoformat(entry["departure"]).timestamp() == session.departure
            assert entry["soc_pct"] == pytest.approx(100 * (session.soc or 0))

        plan = await site.get("/api/plan")
        adopted = daemon.control.plan
        assert adopted is not None
        assert plan["status"] == str(adopted.status)
        assert len(plan["slots"]) == len(adopted.boundaries) - 1
        assert plan["slots"][0]["t0"] == adopted.boundaries[0]
        for slot in plan["slots"]:
            assert datetime.fromisoformat(slot["end"]).timestamp() == slot["t1"]
        planned = {v["id"]: v for v in plan["vehicles"]}
        for session in daemon.control.sessions.values():
            vehicle = planned[session.vehicle_id]
            assert vehicle["pile"] == session.pile and not vehicle["expected"]
            assert vehicle["kw"] == pytest.approx(
                list(adopted.power_kw[session.vehicle_id]), abs=1e-3
            )
        assert len(plan["piles_kw"]) == len(plan["slots"])

        history = await site.get("/api/history", params={"hours": 1})
        assert len(history["samples"]) >= 10
        assert all(s["limit_kw"] == daemon.station.limit_kw for s in history["samples"])
        assert history["bands"][0]["t0"] == pytest.approx(site.clock.now() - 3600)
        assert history["bands"][-1]["t1"] >= adopted.end

        metrics = (await site.client.get("/metrics")).text
        assert f"flexcharge_site_load_kw {snap.grid_kw}" in metrics
        assert 'flexcharge_site_limit_kw{source="transformer"}' in metrics
        assert 'flexcharge_pile_setpoint_kw{pile="P01"}' in metrics
        assert "flexcharge_cycle_duration_seconds_count" in metrics
        assert "flexcharge_plans_total" in metrics
        assert 'flexcharge_device_failures_total{device="meter' in metrics

        spec = await site.get("/openapi.json")
        paths = spec["paths"]
        for path in ("/api/status", "/api/plan", "/api/sessions", "/api/history", "/metrics"):
            assert "get" in paths[path], path
        assert "post" in paths["/api/piles/{pile_id}/session"]
        assert {"post", "delete"} <= set(paths["/api/limit/override"])
        page = await site.client.get("/")
        assert page.status_code == 200 and '<svg id="chart"' in page.text
        assert (await site.client.get("/page/app.js")).status_code == 200
        assert (await site.client.get("/page/../api.py")).status_code == 404


async def test_a_fleet_system_tells_the_station_about_a_session(
    station: Station, running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Departure, energy, target SoC and vehicle id reach the pile's current session."""
    async with running_site(running_station, station, monkeypatch) as site:
        control = site.daemon.control
        session = control.sessions["P01"]
        assert not session.departure_known
        leave = site.start + 4 * 3600
        answer = await site.client.post(
            "/api/piles/P01/session",
            json={"vehicle_id": "BZ-1234", "departure": site.iso(leave), "energy_kwh": 320},
            headers=AUTH,
        )
        assert answer.status_code == 200, answer.text
        assert control.sessions["P01"] is session
        assert (session.vehicle_id, session.need_kwh) == ("BZ-1234", 320)
        assert (session.departure, session.departure_known) == (leave, True)
        assert answer.json()["departure"] == site.iso(leave)
        assert answer.json()["vehicle_id"] == "BZ-1234"

        # Told only a new departure, the session keeps the energy it was told.
        later = leave + 1800
        answer = await site.client.post(
            "/api/piles/P01/session", json={"departure": site.iso(later)}, headers=AUTH
        )
        assert answer.status_code == 200, answer.text
        assert (session.departure, session.need_kwh, session.vehicle_id) == (
            later,
            320,
            "BZ-1234",
        )

        # A target state of charge becomes the energy to reach it from the SoC now.
        other = control.sessions["P02"]
        assert other.soc is not None and other.capacity_kwh is not None
        answer = await site.client.post(
            "/api/piles/P02/session", json={"target_soc_pct": 90}, headers=AUTH
        )
        assert answer.status_code == 200, answer.text
        expected = other.delivered_kwh + (0.9 - other.soc) * other.capacity_kwh
        assert other.need_kwh == pytest.approx(expected, rel=0.1)
        assert answer.json()["need_kwh"] == other.need_kwh

        # The next plan is made for what the fleet system said.
        await site.clock.sleep(120)
        plan = await site.get("/api/plan")
        assert "BZ-1234" in {v["id"] for v in plan["vehicles"]}
        listed = {s["pile"]: s for s in await site.get("/api/sessions")}
        assert listed["P01"]["vehicle_id"] == "BZ-1234"
        assert listed["P01"]["departure_known"] is True


async def test_writes_need_the_token_and_it_is_never_logged(
    station: Station,
    running_station: StartStation,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No token: 401; a wrong one: 403; reads stay open unless the config protects them."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="pymodbus")  # its frames are Modbus, and many
    body = {"limit_kw": 3000, "minutes": 10}
    async with running_site(running_station, station, monkeypatch) as site:
        client = site.client
        missing = await client.post("/api/limit/override", json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        assert "bearer token" in missing.json()["detail"]
        wrong = await client.post(
            "/api/limit/override", json=body, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 403 and wrong.json()["detail"] == "wrong token"
        basic = await client.post(
            "/api/piles/P01/session", json={"energy_kwh": 10}, headers={"Authorization": "Basic x"}
        )
        assert basic.status_code == 401
        assert site.daemon.sensors.override is None
        assert site.daemon.control.sessions["P01"].need_kwh != 10
        assert (await client.get("/api/status")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
        ok = await client.post("/api/limit/override", json=body, headers=AUTH)
        assert ok.status_code == 200, ok.text
        assert (await client.delete("/api/limit/override")).status_code == 401
        assert (await client.delete("/api/limit/override", headers=AUTH)).status_code == 200
    async with running_site(running_station, station, monkeypatch, reads_need_token=True) as site:
        for path in ("/api/status", "/api/plan", "/api/sessions", "/api/history", "/metrics"):
            assert (await site.client.get(path)).status_code == 401, path
            assert (await site.client.get(path, headers=AUTH)).status_code == 200, path
        # The page itself holds no data: it loads, and asks for the token.
        assert (await site.client.get("/")).status_code == 200
    assert caplog.records, "the daemon logged"
    assert TOKEN not in caplog.text


async def test_writes_are_refused_without_a_token_configured(
    station: Station,
    running_station: StartStation,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A daemon started without the token refuses every write, and says why."""
    caplog.set_level(logging.INFO)
    async with running_site(running_station, station, monkeypatch) as site:
        monkeypatch.delenv(TOKEN_ENV)
        server = ApiServer(site.daemon, site.server.settings.model_copy(update={"port": 0}))
        await server.start()
        try:
            async with httpx.AsyncClient(base_url=server.url) as client:
                refused = await client.post(
                    "/api/limit/override", json={"limit_kw": 1, "minutes": 1}, headers=AUTH
                )
                assert (await client.get("/api/status")).status_code == 200
        finally:
            await server.stop()
        assert refused.status_code == 403
        assert TOKEN_ENV in refused.json()["detail"]
        assert f"writes disabled: {TOKEN_ENV} is not set" in caplog.text


async def test_bad_input_gets_a_clear_4xx(
    station: Station, running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Malformed or impossible requests are refused, naming what is wrong; nothing changes."""
    async with running_site(running_station, station, monkeypatch) as site:
        post = site.client.post
        session = site.daemon.control.sessions["P01"]
        before = (session.need_kwh, session.departure, session.vehicle_id)
        cases: list[tuple[str, Any, int, str]] = [
            (
                "/api/piles/P01/session",
                {"energy_kwh": -5},
                422,
                "energy_kwh: Input should be greater than 0",
            ),
            ("/api/piles/P01/session", {"energy_kwh": 10, "target_soc_pct": 80}, 422, "not both"),
            ("/api/piles/P01/session", {}, 422, "nothing to tell"),
            ("/api/piles/P01/session", {"target_soc_pct": 120}, 422, "target_soc_pct"),
            ("/api/piles/P01/session", {"departure": "tomorrow"}, 422, "departure"),
            ("/api/piles/P01/session", {"departure": "2026-11-25T18:00"}, 422, "timezone"),
            ("/api/piles/P01/session", {"energy_kwh": 10, "colour": "red"}, 422, "colour"),
            (
                "/api/piles/P01/session",
                {"departure": site.iso(site.start)},
                422,
                "not in the future",
            ),
            ("/api/piles/P99/session", {"energy_kwh": 10}, 404, "no pile 'P99'"),
            ("/api/piles/P04/session", {"energy_kwh": 10}, 409, "no vehicle is connected at P04"),
            ("/api/limit/override", {"limit_kw": 3000}, 422, "exactly one of until"),
            ("/api/limit/override", {"limit_kw": -1, "minutes": 5}, 422, "limit_kw"),
            ("/api/limit/override", {"limit_kw": 3000, "minutes": 0}, 422, "minutes"),
            (
                "/api/limit/override",
                {"limit_kw": 3000, "until": site.iso(site.start)},
                422,
                "future",
            ),
            ("/api/limit/override", {"limit_kw": "lots", "minutes": 5}, 422, "limit_kw"),
            (
                "/api/limit/override",
                {"limit_kw": 3000, "until": site.iso(site.start + 8 * 86400)},
                422,
                "at most a week",
            ),
        ]
        for path, body, code, text in cases:
            answer = await post(path, json=body, headers=AUTH)
            assert answer.status_code == code, (body, answer.text)
            payload = answer.json()
            message = payload.get("message") or payload.get("detail")
            assert text in message, (body, message)
        garbled = await post(
            "/api/piles/P01/session",
            content=b"{not json",
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert garbled.status_code == 422 and "JSON" in garbled.json()["message"]
        assert (session.need_kwh, session.departure, session.vehicle_id) == before
        assert site.daemon.sensors.override is None
        assert (await site.client.get("/api/history", params={"hours": -1})).status_code == 422


async def test_the_operator_override_lowers_the_limit_until_it_expires(
    station: Station, running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The controller keeps the site under the override; it ends on the daemon's clock; a raise
    above the transformer's limit is refused."""
    # Equal shares charge the trucks at once (a plan would wait for the valley).
    async with running_site(
        running_station, station, monkeypatch, policy=Policy.EQUAL_SHARE
    ) as site:
        daemon, clock = site.daemon, site.clock
        transformer = daemon.station.limit_kw
        above = await site.client.post(
            "/api/limit/override", json={"limit_kw": transformer + 1, "minutes": 5}, headers=AUTH
        )
        assert above.status_code == 422
        assert "may only lower the site limit" in above.json()["detail"]
        assert f"{transformer:,.0f} kW" in above.json()["detail"]
        assert daemon.sensors.override is None

        assert daemon.last_cycle is not None
        before = daemon.last_cycle.snapshot
        assert before.grid_kw is not None and before.piles_kw > 200
        # Half the piles' power below the load now: the piles must come down.
        lowered = round(before.grid_kw - before.piles_kw / 2)
        set_at = clock.now()
        answer = await site.client.post(
            "/api/limit/override",
            json={"limit_kw": lowered, "minutes": 10, "reason": "feeder maintenance"},
            headers=AUTH,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["until"] == site.iso(set_at + 600)
        await clock.sleep(60)
        cycle = daemon.last_cycle
        assert cycle is not None
        assert cycle.snapshot.limit_kw == lowered
        assert daemon.control.limit_kw == lowered
        snap = cycle.snapshot
        assert snap.grid_kw is not None and snap.background_kw is not None
        assert cycle.budget_kw <= lowered - snap.background_kw + 1e-6
        assert sum(cycle.setpoints.values()) <= cycle.budget_kw + 1e-6
        assert snap.grid_kw <= lowered
        assert snap.piles_kw < before.piles_kw - 100
        status = await site.get("/api/status")
        assert status["site"]["limit_kw"] == lowered
        assert status["site"]["limit_source"] == "operator"
        assert status["site"]["override"]["reason"] == "feeder maintenance"
        told = [e for e in status["events"] if "operator override" in e["text"]]
        assert told and (told[-1]["source"], told[-1]["kind"], told[-1]["device"]) == (
            "operator",
            "override",
            None,
        )
        metrics = (await site.client.get("/metrics")).text
        assert f'flexcharge_site_limit_kw{{source="operator"}} {float(lowered)}' in metrics

        await clock.sleep_until(set_at + 600 + 2 * daemon.period_s)
        cycle = daemon.last_cycle
        assert cycle is not None and cycle.snapshot.limit_kw == transformer
        status = await site.get("/api/status")
        assert status["site"]["override"] is None
        assert status["site"]["limit_source"] == "transformer"
        assert any("expired" in e.text and e.kind is Kind.OVERRIDE_ENDED for e in daemon.events)

        # Withdrawn early, by the operator.
        await site.client.post(
            "/api/limit/override", json={"limit_kw": 2000, "minutes": 30}, headers=AUTH
        )
        ended = await site.client.delete("/api/limit/override", headers=AUTH)
        assert ended.json()["ended"]["limit_kw"] == 2000
        await clock.sleep(2 * daemon.period_s)
        assert daemon.last_cycle is not None and daemon.last_cycle.snapshot.limit_kw == transformer


async def test_the_daemon_stops_its_api(
    station: Station, running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server is the daemon's: it answers while the daemon runs, and not after it stopped."""
    async with running_site(running_station, station, monkeypatch) as site:
        url = site.server.url
        assert (await site.client.get("/api/status")).status_code == 200
    async with httpx.AsyncClient(base_url=url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/api/status")
