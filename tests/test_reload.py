"""Reloading the config of a running daemon, over real Modbus on loopback, on a virtual clock.

The simulator serves every device of the reference station; the daemon starts with some of them
and is reloaded while trucks charge: a pile added is armed and controlled, a pile removed is left
at its fallback power and not written again, a new tariff is planned with at once, and a bad
config is refused with every problem while the old one keeps controlling. And as an operator
runs it: `flexcharge reload` checks a file before it signals a `flexcharge run` process.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from base.config import CONFIG_ROOT, Station
from base.tarifffile import load_tariff
from control.decider import Policy
from control.reload import StationChange
from flexcharge.cli.dirs import Dirs
from scheduler.problem import Problem
from simulator.fleet import Visit
from tests.conftest import (
    FLEXCHARGE,
    RunningStation,
    StartStation,
    local_time,
    start_process,
    station_files_on_free_ports,
    wait_for_line,
)

pytestmark = [pytest.mark.loopback]

PERIOD_S = 2.0


def _truck(start: float, pile: str) -> Visit:
    return Visit(
        vehicle_id=f"truck-{pile}",
        arrival=start + 60,
        departure=start + 4 * 3600,
        energy_kwh=300.0,
        max_kw=450.0,
        capacity_kwh=600.0,
        soc_arrival=0.3,
        pile=pile,
    )


def _within_limit(site: RunningStation, limit_kw: float) -> None:
    truth = site.simulator.plant.truth
    assert truth.peak_kw <= limit_kw + 1e-6, f"true peak {truth.peak_kw:.0f} kW"
    assert site.daemon.tally.over_limit_s == 0.0


@pytest.mark.asyncio
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_added_pile_is_armed_and_controlled(
    running_station: StartStation, station: Station
) -> None:
    """A pile added by a reload gets its fail-safe, setpoints, and its truck charges."""
    station = station.with_control(period_s=PERIOD_S)
    p12 = station.pile("P12").model_copy(update={"fallback_kw": 50.0, "comm_timeout_s": 20.0})
    without = replace(station, piles=station.piles[:11])
    with_p12 = replace(station, piles=(*station.piles[:11], p12))
    begin = local_time(station, "2026-11-25T10:00")
    site = await running_station(
        station,
        [_truck(begin, "P01"), _truck(begin, "P12")],
        controlled=without,
        policy="equal-share",
    )
    await site.until(300)
    plant_p12 = site.simulator.plant.piles["P12"]
    assert "P12" not in site.daemon.piles
    assert plant_p12.power_kw == pytest.approx(100.0, abs=1.0), "uncontrolled: its own fallback"

    reloaded_at = site.clock.now()
    assert StationChange.between(without, with_p12).added == ("P12",)
    assert await site.daemon.reload(with_p12)
    assert (plant_p12.comm_timeout_s, plant_p12.fallback_kw) == (20.0, 50.0), "armed"
    await site.until(900)

    after = site.cycles_after(reloaded_at)
    assert after and all(c.written.get("P12") for c in after)
    assert max(c.setpoints["P12"] for c in after) > 200.0
    assert plant_p12.power_kw > 200.0, "the truck charges under control, above its fallback"
    assert plant_p12.last_contact >= site.clock.now() - 2 * PERIOD_S
    assert "P12" in site.daemon.control.sessions
    assert any("piles added: P12" in e.text for e in site.daemon.events)
    _within_limit(site, station.limit_kw)


@pytest.mark.asyncio
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_removed_pile_is_left_at_its_fallback(
    running_station: StartStation, station: Station
) -> None:
    """A pile removed by a reload is left at its fallback and never written again."""
    station = station.with_control(period_s=PERIOD_S)
    begin = local_time(station, "2026-11-25T10:00")
    trucks = [_truck(begin, pid) for pid in ("P01", "P02", "P03", "P04")]
    site = await running_station(station, trucks, policy="equal-share")
    await site.until(600)
    plant_p03 = site.simulator.plant.piles["P03"]
    assert plant_p03.power_kw > 300.0, "charging under control before the reload"
    assert "P03" in site.daemon.control.sessions

    without = replace(station, piles=tuple(p for p in station.piles if p.id != "P03"))
    reloaded_at = site.clock.now()
    assert await site.daemon.reload(without)
    contact = plant_p03.last_contact
    fallback = station.pile("P03").fallback_kw
    assert plant_p03.setpoint_kw == pytest.approx(fallback)
    await site.until(1200)

    assert plant_p03.last_contact == contact, "no writes after the reload"
    assert plant_p03.applied_kw == pytest.approx(fallback)
    assert plant_p03.power_kw == pytest.approx(fallback, abs=1.0)
    after = site.cycles_after(reloaded_at)
    assert after and all("P03" not in c.setpoints for c in after)
    assert all(all(c.written.values()) for c in after)
    assert "P03" not in site.daemon.control.sessions
    assert any("P03: removed by a reload" in e.text for e in site.daemon.events)
    for pid in ("P01", "P02", "P04"):
        assert site.simulator.plant.piles[pid].power_kw > 300.0, pid
    _within_limit(site, station.limit_kw)


@pytest.mark.asyncio
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_new_tariff_is_planned_with_at_once(
    running_station: StartStation, station: Station, tmp_path: Path
) -> None:
    """A reloaded tariff is in the next snapshot and the next plan, made at once."""
    station = replace(station, piles=station.piles[:4]).with_control(period_s=5.0)
    assert station.tariff_path is not None
    text = station.tariff_path.read_text(encoding="utf-8")
    text = text.replace("valley = 0.3162", "valley = 0.2000")
    # The standard season's evening flat band becomes valley: it starts at once, at 22:30.
    text = text.replace(
        '{ start = "21:00", end = "24:00", band = "flat" }',
        '{ start = "21:00", end = "24:00", band = "valley" }',
    )
    cheaper = tmp_path / "cheaper.toml"
    cheaper.write_text(text, encoding="utf-8")
    tariff = load_tariff(cheaper)

    begin = local_time(station, "2026-11-25T22:30")
    trucks = [_truck(begin, p.id) for p in station.piles]
    site = await running_station(station, trucks, policy=Policy.MPC)
    problems: list[tuple[float, Problem]] = []
    make_problem = site.daemon.control.problem

    def recording(snapshot: object) -> Problem:
        problem = make_problem(snapshot)  # type: ignore[arg-type]
        problems.append((site.clock.now(), problem))
        return problem

    site.daemon.control.problem = recording  # type: ignore[method-assign]
    await site.until(600)
    assert problems and problems[-1][1].import_price[0] == pytest.approx(0.6210)
    plans_before = site.daemon.tally.plans

    reloaded_at = site.clock.now()
    assert await site.daemon.reload(replace(station, tariff=tariff, tariff_path=cheaper))
    await site.until(660)

    after = site.cycles_after(reloaded_at)
    assert after and all((c.snapshot.band, c.snapshot.price) == ("valley", 0.2) for c in after)
    planned_after = [p for t, p in problems if t > reloaded_at]
    assert planned_after, "a new plan was made after the reload"
    assert planned_after[0].import_price[0] == pytest.approx(0.2)
    first_plan_at = min(t for t, _ in problems if t > reloaded_at)
    assert first_plan_at - reloaded_at <= 2 * 5.0, "re-planned at once, not at the next minute"
    assert site.daemon.tally.plans > plans_before
    planned_at = site.daemon.control.planned_at
    assert planned_at is not None and planned_at > reloaded_at
    assert any("tariff changed" in e.text for e in site.daemon.events)


def _broken_copy(tmp_path: Path, station: Station) -> Path:
    """The reference station file, with a negative rating and a pile whose map does not exist."""
    root = tmp_path / "configs"
    shutil.copytree(CONFIG_ROOT, root)
    path = root / "stations" / "bozhou-depot.toml"
    text = path.read_text(encoding="utf-8").replace("rating_kva = 5000.0", "rating_kva = -5000.0")
    text += '\n[[piles]]\nid = "P13"\nport = 15033\nmax_kw = 240.0\ndevice = "no-such-map"\n'
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.asyncio
@pytest.mark.usefixtures("no_leaked_tasks")
async def test_bad_config_is_refused_and_the_old_one_runs_on(
    running_station: StartStation,
    station: Station,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every problem is logged naming file, device and field; control carries on unchanged."""
    caplog.set_level(logging.INFO, logger="controller.daemon")
    station = station.with_control(period_s=PERIOD_S)
    begin = local_time(station, "2026-11-25T10:00")
    site = await running_station(
        station, [_truck(begin, "P01"), _truck(begin, "P02")], policy="equal-share"
    )
    await site.until(120)

    broken = _broken_copy(tmp_path, station)
    refused_at = site.clock.now()
    assert not await site.daemon.reload_file(broken)
    refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert any(
        f"{broken}: transformer.rating_kva: Input should be greater than 0" in m for m in refused
    ), refused
    assert any(
        re.search(rf"{re.escape(str(broken))}: pile P13: device: no register map", m)
        for m in refused
    ), refused

    # Drivers for an added pile that cannot be made (no certificates for Modbus/TCP Security).
    tls = station.pile("P12").model_copy(update={"id": "P13", "protocol": "modbus-tls"})
    without_certs = replace(station, piles=(*station.piles, tls)).with_security(
        certs=str(tmp_path / "no-certs")
    )
    caplog.clear()
    assert not await site.daemon.reload(without_certs)
    refused = [r.getMessage() for r in caplog.records if "reload refused" in r.getMessage()]
    assert any("security.certs: daemon certificate files missing" in m for m in refused), refused

    caplog.clear()
    assert await site.daemon.reload(station)
    assert any("nothing changed" in r.getMessage() for r in caplog.records)

    await site.until(300)
    assert site.daemon.station is station
    assert set(site.daemon.piles) == {p.id for p in station.piles}
    after = site.cycles_after(refused_at)
    assert len(after) >= (300 - 120) / PERIOD_S - 2, "still cycling every period"
    ids = {p.id for p in station.piles}
    assert all(set(c.setpoints) == ids and all(c.written.values()) for c in after)
    assert site.simulator.plant.piles["P01"].power_kw > 300.0
    _within_limit(site, station.limit_kw)


def _flexcharge(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [FLEXCHARGE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=60
    )


def test_reload_command_checks_then_signals_the_daemon(
    tmp_path: Path, processes: list[subprocess.Popen[str]], flexcharge_dirs: Dirs
) -> None:
    """A bad file: exit 2, no signal. A good one: SIGHUP to the daemon holding the station's
    state (found through its lock), and the daemon applies it."""
    path = station_files_on_free_ports(tmp_path)
    good = path.read_text(encoding="utf-8")

    def start(*args: str) -> subprocess.Popen[str]:
        return start_process(list(args), processes, cwd=tmp_path)

    gone = subprocess.Popen(["true"])
    gone.wait()
    pidfile = flexcharge_dirs.pidfile("bozhou-depot")
    pidfile.parent.mkdir(parents=True)
    pidfile.write_text(f"{gone.pid}\n")
    simulator = start("sim-hardware", "--station", str(path))
    wait_for_line(simulator, r"serving ")
    daemon = start("run", "--station", str(path), "--status-every", "600")
    started = wait_for_line(daemon, r"controlling Bozhou")
    assert any("replacing the stale pidfile" in line for line in started)
    assert pidfile.read_text().strip() == str(daemon.pid)
    second = _flexcharge(tmp_path, "run", "--station", str(path))
    assert second.returncode == 2 and "already running" in second.stdout, second.stdout
    assert f"pid {daemon.pid} runs this station's state" in second.stdout, second.stdout

    path.write_text(good.replace("rating_kva = 5000.0", "rating_kva = -5000.0"))
    refused = _flexcharge(tmp_path, "reload", "--station", str(path))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "transformer.rating_kva: Input should be greater than 0" in refused.stdout

    without_p12 = re.sub(r'\[\[piles\]\]\nid = "P12"\nport = \d+\nmax_kw = 240.0\n', "", good)
    assert without_p12 != good
    path.write_text(without_p12)
    nobody = _flexcharge(tmp_path, "reload", "--station", str(path), "--pidfile", "none.pid")
    assert nobody.returncode == 1 and "no pidfile" in nobody.stdout, nobody.stdout
    applied = _flexcharge(tmp_path, "reload", "--station", str(path))
    assert applied.returncode == 0, applied.stdout + applied.stderr
    seen = wait_for_line(daemon, r"config reloaded from .*: piles removed: P12")
    assert sum("reloading" in line for line in seen) == 1, "the bad file was never signalled"
    assert not any("refused" in line for line in seen)

    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0
    assert not pidfile.exists()
    simulator.send_signal(signal.SIGTERM)
    assert simulator.wait(timeout=30) == 0


def test_station_change_tells_reconnected_from_rerated(reference: Station) -> None:
    """A new port or map reconnects a pile; new numbers only re-rate it; a copy changes nothing."""
    piles = list(reference.piles)
    piles[0] = piles[0].model_copy(update={"port": 16021})
    piles[1] = piles[1].model_copy(update={"max_kw": 400.0, "fallback_kw": 80.0})
    new = replace(reference, piles=tuple(piles[:-1]))
    change = StationChange.between(reference, new)
    assert (change.reconnected, change.rerated, change.removed) == (("P01",), ("P02",), ("P12",))
    assert change.summary() == "piles removed: P12; piles reconnected: P01; piles re-rated: P02"
    assert StationChange.between(reference, replace(reference)).empty
    tariff_and_limit = replace(
        reference,
        transformer=reference.transformer.model_copy(update={"rating_kva": 4000.0}),
        tariff=replace(reference.tariff, export_price=0.0),
    )
    change = StationChange.between(reference, tariff_and_limit)
    assert change.summary() == "tariff changed; changed: transformer"
