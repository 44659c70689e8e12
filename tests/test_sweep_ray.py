"""`flexcharge sweep --backend ray` on a real Ray cluster on loopback: a head (2 CPUs) and one
more worker node (1 CPU), started with `ray start` as an operator would, stopped at the end.

Checked: the results equal the local backend's while a Ray worker process running a task is
killed by its pid (the task is retried, none is lost); and `--resume` after an interrupted sweep
runs only the tasks that had not finished.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from simulator.study import load_study
from simulator.sweep import LocalPool, run_sweep
from tests.conftest import FLEXCHARGE, free_ports
from tests.test_sweep import comparable, write_study

pytestmark = [pytest.mark.xdist_group("ray"), pytest.mark.timeout(300)]

RAY = str(Path(sys.executable).parent / "ray")
# The test cluster's own environment: token authentication with a token made for it, so that
# a token another Ray left in ~/.ray (which `ray start` would otherwise half use) cannot lock
# the nodes and the sweep out of each other.
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": secrets.token_hex(32),
}


def _ray(*args: str, env: dict[str, str]) -> None:
    subprocess.run([RAY, *args], env=env, check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The address of a Ray head on 127.0.0.1 with a second node joined to it."""
    # Short: Ray's sockets live in it, and a socket's path is limited to about 100 bytes.
    session = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    env = {**os.environ, **RAY_ENV}
    (port,) = free_ports(1)
    address = f"127.0.0.1:{port}"
    try:
        _ray(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={session}",
            env=env,
        )
        _ray(
            "start", f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1", env=env
        )
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(session, ignore_errors=True)


def ray_task_pids() -> list[int]:
    """Ray worker processes running a sweep task now (Ray names them by the task's function)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.strip().startswith("ray::run_task"):
            found.append(int(entry.name))
    return found


def start_sweep(study: Path, out: Path, address: str, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, **RAY_ENV, "COLUMNS": "200"}
    args = ["sweep", str(study), "--out", str(out), "--backend", "ray", "--address", address]
    return subprocess.Popen(
        [FLEXCHARGE, *args, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def wait_until(check: object, what: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_ray_results_equal_local_with_a_worker_killed(cluster: str, tmp_path: Path) -> None:
    """3 stations x 2 tariffs x 2 policies x 2 days on the local pool and on Ray, where a worker
    process running a task is killed by its pid mid-sweep: the same rows, all of them ok."""
    study_file = write_study(tmp_path, days=2)
    study = load_study(study_file)
    local = run_sweep(study, tmp_path / "local", LocalPool(2))
    assert len(local.rows) == 12 and local.failed == 0

    out = tmp_path / "ray"
    proc = start_sweep(study_file, out, cluster)
    try:
        wait_until(lambda: ray_task_pids(), "a Ray worker running a task")
        victim = ray_task_pids()[0]
        os.kill(victim, signal.SIGKILL)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, output
    assert re.search(
        r"12 runs in .* on ray \(3 workers\).* [1-9]\d* attempts retried, 0 failed", output
    ), output
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert max(r["attempts"] for r in rows) == 2
    assert comparable(rows) == comparable(local.rows)


def test_resume_after_an_interrupt_redoes_nothing(cluster: str, tmp_path: Path) -> None:
    study_file = write_study(tmp_path, days=1)
    out = tmp_path / "out"
    proc = start_sweep(study_file, out, cluster)
    try:
        wait_until(lambda: len(list((out / "runs").glob("*.json"))) >= 3, "three runs done")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    done = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "runs").glob("*.json")}
    assert 3 <= len(done) < 12, "the interrupt came too late to leave anything to resume"

    resumed = start_sweep(study_file, out, cluster, "--resume")
    output, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, output
    assert f"{12 - len(done)} runs in" in output and f"{len(done)} already done" in output, output
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done} == done
    rows = pq.read_table(out / "results.parquet").to_pylist()
    assert len(rows) == 12 and {r["status"] for r in rows} == {"ok"}
