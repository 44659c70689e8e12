"""`flexcharge sweep` on the local backend: the study file's checks, resume, retries, results.

The sweeps are small (a day of two or three shipped stations); the Ray backend's tests are in
tests/test_sweep_ray.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from base.config import CONFIG_ROOT
from base.loading import ConfigError
from simulator.fleet import Visit
from simulator.study import TaskInput, load_study, run_task, with_v2g_share
from simulator.sweep import LocalPool, read_results_csv, run_sweep, write_results
from tests.conftest import FLEXCHARGE

STATIONS = ("bozhou-depot", "mixed-site", "workplace-ac")
TARIFFS = ("guizhou-tou", "guizhou-flat-demand")


def write_study(
    where: Path,
    *,
    stations: tuple[str, ...] = STATIONS,
    tariffs: tuple[str, ...] = TARIFFS,
    policies: tuple[str, ...] = ("mpc",),
    days: int = 1,
    extra: str = "",
) -> Path:
    """A study of the shipped `stations` (generated sessions) under the shipped `tariffs`."""
    where.mkdir(parents=True, exist_ok=True)
    names = ", ".join(f'"{CONFIG_ROOT / "tariffs" / t}.toml"' for t in tariffs)
    listed = "".join(
        f'[[stations]]\nname = "{s.split("-")[0]}"\n'
        f'station = "{CONFIG_ROOT / "stations" / s}.toml"\nsessions = "generated"\n\n'
        for s in stations
    )
    path = where / "study.toml"
    path.write_text(
        f'[study]\nname = "small"\ntariffs = [{names}]\npolicies = {list(policies)!r}\n\n'
        f"[period]\nstart = 2026-11-02\ndays = {days}\n\n{listed}{extra}",
        encoding="utf-8",
    )
    return path


def sweep_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`flexcharge sweep ARGS`, run to its end."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [FLEXCHARGE, "sweep", *args], capture_output=True, text=True, env=env, timeout=300
    )


def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows without what differs between equal runs (CPU seconds, attempts)."""
    return [{k: v for k, v in r.items() if k not in ("cpu_s", "attempts")} for r in rows]


# -- the study file -----------------------------------------------------------------------------


def test_study_settings_problems_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(
        '[study]\nname = "x"\ntariffs = []\npolicies = ["mpc", "cheapest"]\nstep_s = -5\n'
        '[period]\nmonths = ["2026-13"]\nstart = 2026-11-01\n'
        '[[stations]]\nname = "a b"\nstation = "s.toml"\nsessions = "generated"\ncolour = 1\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_study(path)
    text = "\n".join(map(str, err.value.problems))
    for expected in (
        "study.tariffs: List should have at least 1 item",
        "study.policies: Value error, unknown policy 'cheapest'",
        "study.step_s: Input should be greater than 0",
        "period.months: Value error, '2026-13' is not a month YYYY-MM",
        "stations.0.name: Value error, 'a b': letters, digits",
        "stations.0.colour: unknown field",
    ):
        assert expected in text, text
    assert all(p.file == path for p in err.value.problems)


def test_bad_stations_and_variants_fail_before_anything_runs(tmp_path: Path) -> None:
    """Every problem of every station, variant and sessions file, each naming its file, row and
    field; the command exits 2 with one line each and no traceback, and runs nothing."""
    variants = tmp_path / "variants.csv"
    variants.write_text(
        "variant,rating_kva,piles,pile_kw,v2g_share,background_scale\n"
        "base,,,,,\n"
        "tiny,100,,,,\n"  # piles of 480 kW above a 85 kW limit
        "many,,2.5,,,\n"
        "v2g,,,,0.3,\n"  # the depot has no bidirectional pile
        "base,,,,,2\n",
        encoding="utf-8",
    )
    sessions = tmp_path / "sessions.csv"
    sessions.write_text(
        "arrival,departure,energy_kwh,max_kw,pile\n"
        "2026-11-02T10:00:00+08:00,2026-11-02T12:00:00+08:00,50,100,P99\n",
        encoding="utf-8",
    )
    extra = (
        f'[[stations]]\nname = "variants"\nstation = "{CONFIG_ROOT}/stations/bozhou-depot.toml"\n'
        f'sessions = "generated"\nvariants = "{variants}"\n\n'
        f'[[stations]]\nname = "missing"\nstation = "nowhere.toml"\nsessions = "generated"\n\n'
        f'[[stations]]\nname = "file"\nstation = "{CONFIG_ROOT}/stations/bozhou-depot.toml"\n'
        f'sessions = "{sessions}"\n'
    )
    study = write_study(tmp_path, stations=(), extra=extra)
    with pytest.raises(ConfigError) as err:
        load_study(study)
    text = "\n".join(map(str, err.value.problems))
    for expected in (
        f"{variants}: row 3: the variant 'tiny': ",
        "above the site limit of 85.5 kW",
        f"{variants}: row 4: piles: '2.5' is not a whole number",
        f"{variants}: row 5: v2g_share: Bozhou logistics depot has no bidirectional pile",
        f"{variants}: row 6: variant: 'base' is given twice",
        f"{tmp_path / 'nowhere.toml'}: file not found",
        "stations[1] (missing): station: the station 'nowhere.toml'",
        f"{sessions}: session ",
        "'P99' is not a pile of Bozhou logistics depot",
    ):
        assert expected in text, text
    out = tmp_path / "out"
    done = sweep_cli(str(study), "--out", str(out))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("  - ")]
    assert len(lines) == len(err.value.problems)
    assert not (out / "runs").exists()


def test_variants_change_the_station(tmp_path: Path) -> None:
    variants = tmp_path / "variants.csv"
    variants.write_text(
        "variant,rating_kva,piles,pile_kw,background_scale\nbig,6000,14,300,0.5\n",
        encoding="utf-8",
    )
    extra = (
        f'[[stations]]\nname = "depot"\nstation = "{CONFIG_ROOT}/stations/bozhou-depot.toml"\n'
        f'sessions = "generated"\nvariants = "{variants}"\n'
    )
    study = load_study(write_study(tmp_path, stations=(), extra=extra))
    (site,) = study.sites
    assert site.variant == "big"
    assert site.model.limit_kw == pytest.approx(6000 * 0.95 * 0.90)
    assert [p.max_kw for p in site.model.piles] == [300.0] * 14
    assert [p.id for p in site.model.piles][-2:] == ["V01", "V02"]
    assert site.model.background.profile_kw[0] == pytest.approx(760 * 0.5)


def test_v2g_share_marks_that_share_of_the_visits_evenly() -> None:
    visits = [Visit(f"v{k}", 0.0, 3600.0, 10.0, 50.0) for k in range(10)]
    marked = with_v2g_share(visits, 0.3)
    expected = [False, False, False, True, False, False, True, False, False, True]
    assert [v.v2g for v in marked] == expected
    assert with_v2g_share(visits, 0.0) == visits


# -- running ------------------------------------------------------------------------------------


def test_resume_runs_only_what_is_missing_and_results_agree(tmp_path: Path) -> None:
    """A finished sweep with three runs lost: --resume runs those three only, leaves the
    others' files untouched, and the results equal the first sweep's; the CSV and the Parquet
    file hold the same table; a used directory without --resume is refused."""
    study = write_study(tmp_path, stations=STATIONS[:2], policies=("edf",))
    out = tmp_path / "out"
    first = sweep_cli(str(study), "--out", str(out), "--workers", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "8 runs in" in first.stdout
    before = pq.read_table(out / "results.parquet").to_pylist()
    assert len(before) == 8 and {r["status"] for r in before} == {"ok"}
    assert read_results_csv(out / "results.csv").equals(pq.read_table(out / "results.parquet"))
    runs = sorted((out / "runs").glob("*.json"))
    lost, kept = runs[:3], runs[3:]
    stamps = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept}
    for path in lost:
        path.unlink()

    again = sweep_cli(str(study), "--out", str(out))
    assert again.returncode == 2
    assert "add --resume" in again.stdout

    resumed = sweep_cli(str(study), "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "3 runs in" in resumed.stdout and "5 already done" in resumed.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in kept} == stamps
    assert all(p.exists() for p in lost)
    assert comparable(pq.read_table(out / "results.parquet").to_pylist()) == comparable(before)


def crash_once(spec: TaskInput) -> dict[str, Any]:
    """Kills its own worker process on the first attempt of each mixed-site edf run."""
    marker = Path(os.environ["SWEEP_TEST_MARKS"]) / spec.task.id
    if spec.task.station == "mixed" and spec.task.policy == "edf" and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return run_task(spec)


def always_fails(spec: TaskInput) -> dict[str, Any]:
    """Raises on every mixed-site run under the flat tariff."""
    if spec.task.station == "mixed" and spec.task.tariff == "guizhou-flat-demand":
        raise RuntimeError("no solver licence on this node")
    return run_task(spec)


def test_a_killed_worker_is_replaced_and_its_task_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_TEST_MARKS", str(tmp_path))
    study = load_study(write_study(tmp_path, stations=STATIONS[:2], policies=("edf",)))
    sweep = run_sweep(study, tmp_path / "out", LocalPool(2, crash_once), retries=1)
    assert sweep.failed == 0 and sweep.retried == 2
    attempts = {(r["station"], r["tariff"], r["policy"]): r["attempts"] for r in sweep.rows}
    assert attempts == {
        (station, tariff, policy): 2 if (station, policy) == ("mixed", "edf") else 1
        for station in ("bozhou", "mixed")
        for tariff in TARIFFS
        for policy in ("uncontrolled", "edf")
    }
    assert {r["status"] for r in sweep.rows} == {"ok"}


def test_a_task_failing_every_attempt_is_reported_not_dropped(tmp_path: Path) -> None:
    study = load_study(write_study(tmp_path, stations=STATIONS[:2], policies=("edf",)))
    out = tmp_path / "out"
    sweep = run_sweep(study, out, LocalPool(2, always_fails), retries=2)
    failed = [r for r in sweep.rows if r["status"] == "failed"]
    assert len(sweep.rows) == 8 and sweep.failed == 2 == len(failed)
    for row in failed:
        assert (row["station"], row["tariff"]) == ("mixed", "guizhou-flat-demand")
        assert row["error"] == "RuntimeError: no solver licence on this node"
        assert row["attempts"] == 3 and row["cost"] is None
    write_results(sweep.rows, out)
    table = pq.read_table(out / "results.parquet")
    assert table.num_rows == 8
    assert read_results_csv(out / "results.csv").equals(table)
