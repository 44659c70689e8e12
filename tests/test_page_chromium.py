"""The live page in a real browser: headless Chromium (Debian's `chromium` package, which
`make system-deps` installs) loads it from the daemon's API while the daemon controls the
simulated station over Modbus on loopback.

On the virtual clock, Chromium's `--dump-dom` with a virtual-time budget runs the page's script
(its polls included) and prints the DOM it ends up with; the test reads what the page shows and
compares it with the daemon's own status at the same station time (the test holds the virtual
clock still while the browser loads), then lets station time run while the browser polls.

On the real clock (`flexcharge run --api` controlling `flexcharge sim-hardware`, whose times carry
microseconds), Playwright drives the same Chromium: the time axis, the reasons, the operator's
controls, the narrow layout and, with the simulator stopped, the alarms. Screenshots of the
normal, alarm and narrow layouts go to the directory in FLEXCHARGE_SCREENSHOTS, if set.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, async_playwright
from playwright.async_api import Page as Tab

from base.config import Station
from tests.conftest import StartStation, need_system_program, start_daemon_with_api
from tests.test_api import AUTH, running_site

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]

BROWSER_TIMEOUT_S = 90.0
# An hour label on the chart's time axis.
HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
REAL_TOKEN = "real-clock-token-for-the-page-test-5e2a"
REAL_TOKEN_ENV = "FLEXCHARGE_API_TOKEN"  # the reference station's [api] token_env
# How long the real daemon may take to see the trucks plug in, or the devices go (s).
REAL_WAIT_S = 120.0
NARROW_PX = 760


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path to Debian's chromium (from `make system-deps`), or the test is skipped saying why."""
    return need_system_program("chromium", "the live page's browser test")


async def _dump_dom(
    chromium: str, url: str, profile: Path, budget_ms: int, *more: str, dump: bool = True
) -> str:
    """The DOM of `url` after `budget_ms` of the page's (virtual) time, as Chromium prints it
    (`more`: more of Chromium's options; not `dump`: print nothing, a screenshot, say)."""
    proc = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",  # root in CI; the page is our own
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        *(["--dump-dom"] if dump else []),
        *more,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "HOME": str(profile)},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BROWSER_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


class Element:
    """One element of a dumped page: its tag, attributes and text (its descendants' included)."""

    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag = tag
        self.attrs = attrs
        self.text = ""


class Page(HTMLParser):
    """The elements of a dumped page, in document order."""

    VOID = frozenset({"meta", "link", "br", "img", "input", "hr"})

    def __init__(self, html: str) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self._open: list[Element] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop().tag == tag:
                break

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element.text += data

    def by_id(self, ident: str) -> Element:
        """The element with this id."""
        return next(e for e in self.elements if e.attrs.get("id") == ident)

    def all(self, tag: str, **attrs: str) -> list[Element]:
        """Elements with this tag (and these attribute values; `class_` for class)."""
        wanted = {k.rstrip("_"): v for k, v in attrs.items()}
        return [
            e
            for e in self.elements
            if e.tag == tag and all(e.attrs.get(k) == v for k, v in wanted.items())
        ]


def _shows(page: Page, status: dict[str, object]) -> None:
    """The page shows the daemon's status: time, load, limit and its source, every pile."""
    site = status["site"]
    assert isinstance(site, dict)
    assert float(page.by_id("time").attrs["data-t"]) == status["t"]
    assert page.by_id("time").text == str(status["time"])[:19].replace("T", " ")
    load = page.by_id("load")
    assert float(load.attrs["data-kw"]) == site["load_kw"]
    assert load.text == f"{round(site['load_kw']):,} kW"
    assert page.by_id("limit").text == f"{site['limit_kw']:,.0f} kW"
    source = page.by_id("limit-source").text
    if site["override"] is None:
        assert source == site["limit_source"]
    else:
        assert source == f"operator override until {site['override']['until'][11:16]}"
    piles = status["piles"]
    assert isinstance(piles, list)
    rows = page.all("tr")
    shown = [r.attrs["data-pile"] for r in rows if "data-pile" in r.attrs]
    assert shown == [p["id"] for p in piles]
    for pile, row in zip(piles, [r for r in rows if "data-pile" in r.attrs], strict=True):
        assert row.text.startswith(pile["id"] + pile["state"])
        if pile["session"] is not None:
            assert pile["session"]["vehicle_id"] in row.text


async def test_the_live_page_shows_the_station_and_updates(
    station: Station,
    running_station: StartStation,
    monkeypatch: pytest.MonkeyPatch,
    chromium: str,
    tmp_path: Path,
) -> None:
    """What the page shows matches the daemon; the chart has its lines; the page updates."""
    async with running_site(running_station, station, monkeypatch) as site:
        url = site.server.url + "/"

        # Station time stands still while the browser loads (this task holds the clock), and
        # the API's process has the state of now.
        await site.server.synced()
        html = await _dump_dom(chromium, url, tmp_path / "profile", 4000)
        first = Page(html)
        status = await site.get("/api/status")
        _shows(first, status)
        assert int(first.by_id("updated").attrs["data-polls"]) >= 2
        assert first.by_id("error").text == ""
        chart = first.all("polyline")
        lines = {p.attrs["class"]: p for p in chart}
        assert {"load", "limit", "plan"} <= set(lines)
        assert int(lines["load"].attrs["data-points"]) >= 10
        assert len(lines["load"].attrs["points"].split()) >= 10
        assert int(lines["plan"].attrs["data-points"]) > 0
        _times_are_clock_times(first, html)
        bands = [r for r in first.all("rect") if "data-band" in r.attrs]
        assert bands and {b.attrs["data-band"] for b in bands} <= set(station.tariff.band_prices)
        planned = [r for r in first.all("tr") if "data-vehicle" in r.attrs]
        assert len(planned) == len(site.daemon.control.sessions)

        # Ten station minutes later, under an operator's override, a second load shows the new
        # time, figures and limit.
        override = {"limit_kw": 3500, "minutes": 60}
        answer = await site.client.post("/api/limit/override", json=override, headers=AUTH)
        assert answer.status_code == 200, answer.text
        await site.clock.sleep(600)
        await site.server.synced()
        second = Page(await _dump_dom(chromium, url, tmp_path / "profile", 4000))
        later = await site.get("/api/status")
        _shows(second, later)
        assert later["t"] == status["t"] + 600
        assert second.by_id("time").text != first.by_id("time").text
        assert second.by_id("load").text != first.by_id("load").text
        assert second.by_id("limit").text == "3,500 kW"

        # Station time runs while one page is open: the page polls and shows later times.
        browser = asyncio.create_task(
            _dump_dom(chromium, url, tmp_path / "profile", 10000), name="browser"
        )
        while not browser.done():
            await site.clock.sleep(site.daemon.period_s)
            await asyncio.sleep(0.02)  # about 250 times real time, so the page sees it move
        live = Page(await browser)
        updated = live.by_id("updated")
        assert int(updated.attrs["data-polls"]) >= 3
        assert float(updated.attrs["data-last"]) > float(updated.attrs["data-first"])
        assert float(updated.attrs["data-first"]) >= later["t"]


def _times_are_clock_times(page: Page, html: str) -> None:
    """Every label of the chart's time axis is a station time HH:MM, and nothing reads NaN."""
    labels = [t.text for t in page.all("text", class_="time-label")]
    assert len(labels) >= 3, labels
    assert all(HHMM.match(label) for label in labels), labels
    assert "NaN" not in html


# -- the real-time daemon -------------------------------------------------------------------


def _trucks_csv(path: Path, piles: int) -> Path:
    """A sessions CSV: a truck at each of the first `piles` piles, plugging in within the next
    half minute of the real clock, leaving hours later."""
    now = datetime.now(UTC).replace(microsecond=0)
    rows = ["id,arrival,departure,energy_kwh,max_kw,pile,capacity_kwh,soc_arrival,v2g"]
    for n in range(piles):
        arrival = now + timedelta(seconds=15 + 3 * n)
        departure = now + timedelta(hours=3 + 2 * n)
        rows.append(
            f"truck-{n + 1},{arrival.isoformat()},{departure.isoformat()},{250 + 40 * n},480,"
            f"P{n + 1:02d},600,0.1,false"
        )
    path.write_text("\n".join(rows) + "\n")
    return path


async def _until(client: httpx.AsyncClient, ready: Any, what: str) -> dict[str, Any]:
    """The daemon's status, once `ready(status)` holds (polled on the real clock)."""
    deadline = time.monotonic() + REAL_WAIT_S
    while True:
        answer = await client.get("/api/status")
        assert answer.status_code == 200, answer.text
        status: dict[str, Any] = answer.json()
        if ready(status):
            return status
        assert time.monotonic() < deadline, f"no {what} after {REAL_WAIT_S:g} s: {status}"
        await asyncio.sleep(0.5)


@asynccontextmanager
async def _browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield browser
        finally:
            await browser.close()


async def _open(browser: Browser, url: str, width: int) -> Tab:
    """A tab `width` px wide showing the page once it has polled the daemon."""
    tab = await browser.new_page(viewport={"width": width, "height": 1000})
    await tab.goto(url)
    await tab.wait_for_function("Number(document.getElementById('updated').dataset.polls) >= 1")
    return tab


async def _screenshot(chromium: str, url: str, profile: Path, name: str, width: int) -> None:
    """Chromium's own screenshot of the page, `width` px wide, into FLEXCHARGE_SCREENSHOTS."""
    folder = os.environ.get("FLEXCHARGE_SCREENSHOTS")
    if not folder:
        return
    shot = profile.parent / name
    await _dump_dom(
        chromium,
        url,
        profile,
        4000,
        f"--window-size={width},1700",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        dump=False,
    )
    await asyncio.to_thread(_keep, shot, Path(folder))


def _keep(shot: Path, folder: Path) -> None:
    assert shot.stat().st_size > 10_000
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, folder / shot.name)


async def _submit(tab: Tab, form: str, fields: dict[str, str], message: str) -> str:
    """Fill and submit a form of the controls; the message the page then shows beside it."""
    await tab.evaluate(f"document.getElementById('{message}').textContent = ''")
    for selector, value in fields.items():
        if selector.endswith("pile"):
            await tab.select_option(selector, value)
        else:
            await tab.fill(selector, value)
    await tab.click(f"#{form} button[type=submit]")
    await tab.wait_for_function(f"document.getElementById('{message}').textContent !== ''")
    return await tab.inner_text(f"#{message}")


@pytest.mark.timeout(300)
async def test_the_live_page_on_the_real_clock(
    chromium: str,
    tmp_path: Path,
    processes: list[subprocess.Popen[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Against `flexcharge run --api`: station times on the axis (never NaN), a reason per pile,
    the operator's controls through the API with its messages, no horizontal scroll at 760 px,
    and, with the simulator stopped, the alarm banner, every pile marked stale with its error,
    and the repeated failures on one line."""
    monkeypatch.setenv(REAL_TOKEN_ENV, REAL_TOKEN)
    trucks = _trucks_csv(tmp_path / "trucks.csv", 4)
    simulator, daemon, base = start_daemon_with_api(
        tmp_path / "station", processes, REAL_TOKEN_ENV, ["--sessions", str(trucks)]
    )
    url = base + "/"
    shots = tmp_path / "shots" / "profile"
    auth = {"Authorization": f"Bearer {REAL_TOKEN}"}
    async with (
        httpx.AsyncClient(base_url=base, timeout=10) as client,
        _browser(chromium) as browser,
    ):
        status = await _until(
            client,
            lambda s: sum(p["session"] is not None for p in s["piles"]) == 4,
            "trucks at P01-P04",
        )
        assert "." in status["time"]  # real-clock times carry fractions of a second

        tab = await _open(browser, url, 1000)
        html = await tab.content()
        _times_are_clock_times(Page(html), html)
        assert "NaN" not in await tab.inner_text("body")
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", await tab.inner_text("#time"))
        assert await tab.inner_text("#zone") == status["timezone"]
        assert "power, kW" in html and "site load, measured" in html
        assert "planned charging" in html
        rows = await tab.eval_on_selector_all(
            "#piles tbody tr",
            "rows => rows.map(r => [r.dataset.pile, r.dataset.reason,"
            " r.querySelector('td.why').textContent])",
        )
        assert [r[0] for r in rows] == [p["id"] for p in status["piles"]]
        assert all(why for _, _, why in rows)
        reasons = {pid: kind for pid, kind, _ in rows}
        assert {reasons[p] for p in ("P05", "P12")} == {"no vehicle"}
        assert {reasons[p] for p in ("P01", "P02", "P03", "P04")} <= {
            "charging",
            "ramping",
            "waiting",
            "limited",
            "fallback",
            "full",
        }
        assert not await tab.is_visible("#alarms")
        await _screenshot(chromium, url, shots, "normal.png", 1000)

        # The operator's controls: the token typed once, an override set and cleared, a bad
        # value refused with the API's own words, a truck's departure and energy.
        await tab.fill("#token", REAL_TOKEN)
        await tab.click("#token-form button[type=submit]")
        said = await _submit(
            tab,
            "override-form",
            {"#override-kw": "3800", "#override-minutes": "30", "#override-reason": "page test"},
            "override-message",
        )
        assert said.startswith("override set: 3,800 kW until"), said
        site = (await client.get("/api/status")).json()["site"]
        assert site["override"]["limit_kw"] == 3800
        assert site["override"]["reason"] == "page test"

        bad = {"limit_kw": -5, "minutes": 30, "reason": "page test"}
        refusal = await client.post("/api/limit/override", json=bad, headers=auth)
        assert refusal.status_code == 422
        said = await _submit(tab, "override-form", {"#override-kw": "-5"}, "override-message")
        assert said == refusal.json()["message"]
        assert "limit_kw" in said
        assert await tab.get_attribute("#override-message", "class") == "message refused"

        said = await _submit(tab, "override-form", {"#override-kw": "lots"}, "override-message")
        assert "limit_kw" in said and "number" in said

        await tab.click("#override-clear")
        await tab.wait_for_function(
            "document.getElementById('override-message').textContent === 'override ended'"
        )
        assert (await client.get("/api/status")).json()["site"]["override"] is None

        said = await _submit(
            tab,
            "session-form",
            {
                "#session-pile": "P02",
                "#session-departure": (
                    datetime.fromisoformat(status["time"]) + timedelta(hours=5)
                ).strftime("%Y-%m-%dT%H:%M"),
                "#session-energy": "321",
            },
            "session-message",
        )
        assert "at P02" in said and "321 kWh" in said, said
        sessions = {s["pile"]: s for s in (await client.get("/api/sessions")).json()}
        told = sessions["P02"]
        assert told["departure_known"] is True
        assert told["need_kwh"] == pytest.approx(321)
        leaves = datetime.fromisoformat(told["departure"])
        wanted = datetime.fromisoformat(status["time"]) + timedelta(hours=5)
        assert abs((leaves - wanted).total_seconds()) <= 60  # the form has whole minutes

        said = await _submit(tab, "session-form", {"#session-energy": "0"}, "session-message")
        assert "energy_kwh" in said and "greater than 0" in said, said
        await tab.close()

        # 760 px wide: nothing scrolls sideways (wide tables scroll in their own box).
        narrow = await _open(browser, url, NARROW_PX)
        assert await narrow.evaluate("document.body.scrollWidth") <= NARROW_PX
        assert await narrow.evaluate("document.documentElement.scrollWidth") <= NARROW_PX
        await narrow.close()
        await _screenshot(chromium, url, shots, "narrow.png", NARROW_PX)

        # Every device gone: the banner, each pile stale with its error, one line of failures.
        simulator.send_signal(signal.SIGTERM)
        assert simulator.wait(timeout=30) == 0
        lost = await _until(
            client,
            lambda s: (
                {a["kind"] for a in s["alarms"]} >= {"meter", "piles"}
                and not any(p["online"] for p in s["piles"])
            ),
            "alarms for the meter and the piles",
        )
        tab = await _open(browser, url, 1000)
        assert await tab.is_visible("#alarms")
        banner = await tab.inner_text("#alarms")
        assert "grid meter lost" in banner and "12 of 12 piles not read" in banner
        assert re.search(r"since \d\d:\d\d:\d\d", banner)
        rows = await tab.eval_on_selector_all(
            "#piles tbody tr",
            "rows => rows.map(r => [r.dataset.pile, r.className, r.children[1].textContent,"
            " r.children[3].textContent, (r.querySelector('.pile-error') || {}).textContent])",
        )
        errors = {p["id"]: p["error"] for p in lost["piles"]}
        for pid, classes, state, setpoint, error in rows:
            assert "stale" in classes.split(), (pid, classes)
            assert "last seen" in state and "stale" in state, state
            assert setpoint == "stale", setpoint  # no last setpoint shown as current
            assert error == errors[pid] and "cannot connect" in error
        assert await tab.inner_text("#load") == "unknown"
        events = await tab.eval_on_selector_all(
            "#events li", "items => items.map(i => [Number(i.dataset.count), i.textContent])"
        )
        texts = [text for _, text in events]
        assert len(texts) == len(set(texts))
        failed = [(n, text) for n, text in events if "cannot connect" in text]
        assert len(failed) == 1 and failed[0][0] >= 12, events
        assert f"×{failed[0][0]}" in failed[0][1]
        html = await tab.content()
        assert "NaN" not in html
        await tab.close()
        await _screenshot(chromium, url, shots, "alarm.png", 1000)

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0


async def test_the_api_docs_need_nothing_from_the_internet(
    station: Station, running_station: StartStation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/docs (Swagger UI) and /redoc load only files the API itself serves, and it serves them."""
    async with running_site(running_station, station, monkeypatch) as site:
        for path in ("/docs", "/redoc"):
            page = await site.client.get(path)
            assert page.status_code == 200
            assert "text/html" in page.headers["content-type"]
            assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page.text)
            assert assets, page.text
            assert all(a.startswith("/") and not a.startswith("//") for a in assets), assets
            assert "cdn" not in page.text.lower() and "https://" not in page.text
            for asset in assets:
                answer = await site.client.get(asset)
                assert answer.status_code == 200, asset
                assert len(answer.content) > 1000, asset
            spec = re.search(r"""(?:url|spec-url)\s*[:=]\s*['"]([^'"]+)['"]""", page.text)
            assert spec is not None and spec.group(1) == "/openapi.json"
            assert (await site.client.get(spec.group(1))).json()["info"]["title"] == "flexcharge"
