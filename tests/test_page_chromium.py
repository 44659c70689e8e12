"""The live page in a real browser: headless Chromium (Debian's `chromium` package, which
`make system-deps` installs) loads it from the daemon's API while the daemon controls the
simulated station over Modbus on loopback.

Chromium's `--dump-dom` with a virtual-time budget runs the page's script (its polls included)
and prints the DOM it ends up with; the test reads what the page shows and compares it with the
daemon's own status at the same station time (the test holds the virtual clock still while the
browser loads), then lets station time run while the browser polls, to see the page update.
"""

from __future__ import annotations

import asyncio
import os
from html.parser import HTMLParser
from pathlib import Path

import pytest

from base.config import Station
from tests.conftest import StartStation, need_system_program
from tests.test_api import AUTH, running_site

pytestmark = [pytest.mark.asyncio, pytest.mark.loopback, pytest.mark.usefixtures("no_leaked_tasks")]

BROWSER_TIMEOUT_S = 90.0


@pytest.fixture(scope="session")
def chromium() -> str:
    """Path to Debian's chromium (from `make system-deps`), or the test is skipped saying why."""
    return need_system_program("chromium", "the live page's browser test")


async def _dump_dom(chromium: str, url: str, profile: Path, budget_ms: int) -> str:
    """The DOM of `url` after `budget_ms` of the page's (virtual) time, as Chromium prints it."""
    proc = await asyncio.create_subprocess_exec(
        chromium,
        "--headless",
        "--no-sandbox",  # root in CI; the page is our own
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        "--dump-dom",
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
        first = Page(await _dump_dom(chromium, url, tmp_path / "profile", 4000))
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
